"""hubclf.train.data: loading, column detection, splits, checks, robust decoding, rectangular transforms.

``make_image_folder`` is also used by the other ``test_train_*`` files.
"""

from __future__ import annotations

import io
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hubclf.train.data import (
    BadImageError,
    ImageClassificationDataset,
    build_transforms,
    decode_image,
    find_columns,
    load_image_dataset,
    to_rgb,
)

# Classes differ by colour: trivially separable, even through a randomly initialised conv net.
COLORS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (230, 220, 40), (200, 40, 200), (40, 210, 210)]
HEIGHT, WIDTH = 96, 64  # rectangular and tall, like the seed's 448×224


def make_image_folder(root: Path, num_classes: int, per_class: int, *, split: str | None = None, seed: int = 0) -> Path:
    """``root[/split]/class_<i>/<n>.png``: noisy solid-colour HEIGHT×WIDTH images, one colour per class."""
    rng = np.random.default_rng(seed)
    base = root / split if split else root
    for c in range(num_classes):
        folder = base / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.normal(0, 40, (HEIGHT, WIDTH, 3))
            pixels = np.clip(np.array(COLORS[c])[None, None, :] + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def add_bad_images(folder: Path) -> list[Path]:
    """A zero-byte file, text named .jpg and a truncated PNG: all three look like images by name only."""
    empty, text, truncated = folder / "empty.jpg", folder / "notes.jpg", folder / "truncated.png"
    empty.write_bytes(b"")
    text.write_text("this is not a picture")
    buffer = io.BytesIO()
    Image.fromarray(np.full((HEIGHT, WIDTH, 3), 128, np.uint8)).save(buffer, format="PNG")
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return [empty, text, truncated]


# ---- loading, columns, splits ---------------------------------------------------------------------------------
def test_imagefolder_gets_a_stratified_seeded_split(tmp_path):
    make_image_folder(tmp_path, num_classes=4, per_class=10)
    data = load_image_dataset(str(tmp_path), val_split=0.2, seed=3)
    assert (data.image_column, data.label_column) == ("image", "label")
    assert data.label_names == [f"class_{i}" for i in range(4)]
    assert (len(data.train), len(data.eval)) == (32, 8)
    assert sorted(data.eval["label"]) == [0, 0, 1, 1, 2, 2, 3, 3]  # stratified: 2 per class
    again = load_image_dataset(str(tmp_path), val_split=0.2, seed=3)
    assert list(again.eval["image"]) == list(data.eval["image"])  # seeded


def test_the_datasets_own_validation_split_is_used(tmp_path):
    make_image_folder(tmp_path, num_classes=3, per_class=4, split="train")
    make_image_folder(tmp_path, num_classes=3, per_class=2, split="validation", seed=1)
    data = load_image_dataset(str(tmp_path))
    assert (len(data.train), len(data.eval), data.eval_split_name) == (12, 6, "validation")


def test_saved_dataset_with_string_labels_and_custom_columns(tmp_path):
    images = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (0, 80, 160, 240)] * 3
    table = {"photo": images, "kind": ["b", "a", "b", "a"] * 3, "note": ["x"] * 12}
    features = datasets.Features(
        {"photo": datasets.Image(), "kind": datasets.Value("string"), "note": datasets.Value("string")}
    )
    dataset = datasets.Dataset.from_dict(table, features=features)
    dataset.save_to_disk(str(tmp_path / "saved"))

    with pytest.raises(ValueError, match="no label column.*--label-column"):
        load_image_dataset(str(tmp_path / "saved"))
    data = load_image_dataset(str(tmp_path / "saved"), label_column="kind", val_split=0.5, seed=0)
    assert data.image_column == "photo"
    assert data.label_names == ["a", "b"]
    assert sorted(data.eval["kind"]) == [0, 0, 0, 1, 1, 1]


def test_find_columns_prefers_overrides_and_names_the_fix():
    features = datasets.Features(
        {"a": datasets.Image(), "b": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])}
    )
    with pytest.raises(ValueError, match="several image columns.*--image-column"):
        find_columns(features)
    assert find_columns(features, image_column="b") == ("b", "label")
    with pytest.raises(ValueError, match="not a column"):
        find_columns(features, image_column="c")


@pytest.mark.parametrize(
    ("labels", "kwargs", "error"),
    [
        ([0, 0, 0, 0], {}, "1 class.*at least 2"),
        ([0, 1, -1, 1], {}, "outside 0..1.*unlabeled"),
        ([0, 1, 0, 1], {"num_classes": 3}, "--num-classes 3 contradicts the data, which has 2 classes"),
    ],
)
def test_unusable_labels_fail_before_training(tmp_path, labels, kwargs, error):
    images = [Image.fromarray(np.zeros((8, 8, 3), np.uint8))] * 4
    names = ["only"] if max(labels) == 0 else ["x", "y"]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    train = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    datasets.DatasetDict(train=train, validation=train).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match=error):
        load_image_dataset(str(tmp_path / "saved"), **kwargs)


def test_no_image_column_and_empty_split_fail_clearly(tmp_path):
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["x", "y"])})
    datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}, features=features).save_to_disk(
        str(tmp_path / "text")
    )
    with pytest.raises(ValueError, match="no image column"):
        load_image_dataset(str(tmp_path / "text"))

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])})
    images = [Image.fromarray(np.zeros((8, 8, 3), np.uint8))] * 2
    train = datasets.Dataset.from_dict({"image": images, "label": [0, 1]}, features=features)
    empty = datasets.Dataset.from_dict({"image": [], "label": []}, features=features)
    # num_shards=1: datasets cannot load back an empty split saved with zero shards.
    splits = datasets.DatasetDict(train=train, validation=empty)
    splits.save_to_disk(str(tmp_path / "empty"), num_shards={"train": 1, "validation": 1})
    with pytest.raises(ValueError, match="validation split is empty"):
        load_image_dataset(str(tmp_path / "empty"))


def test_missing_directory_is_a_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_image_dataset(str(tmp_path / "nope" / "data"))


# ---- decoding ---------------------------------------------------------------------------------------------------
def test_to_rgb_handles_every_common_mode(tmp_path):
    gray = Image.fromarray(np.full((4, 6), 200, np.uint8))
    assert to_rgb(gray).getpixel((0, 0)) == (200, 200, 200)

    # 16-bit: 32896/65535 of full scale is mid-grey, not clipped to white.
    sixteen = Image.fromarray(np.full((4, 6), 32896, np.uint16))
    assert to_rgb(sixteen).getpixel((0, 0)) == (128, 128, 128)
    sixteen.save(tmp_path / "16bit.png")  # and as PIL reads a 16-bit PNG back
    assert decode_image(str(tmp_path / "16bit.png")).getpixel((0, 0)) == (128, 128, 128)

    transparent = Image.new("RGBA", (6, 4), (255, 0, 0, 0))
    assert to_rgb(transparent).getpixel((0, 0)) == (255, 255, 255)  # on white, not black

    palette = Image.new("P", (6, 4), 0)
    palette.putpalette([0, 0, 255] + [0] * 765)
    palette.info["transparency"] = 0
    assert to_rgb(palette).getpixel((0, 0)) == (255, 255, 255)

    cmyk = Image.new("CMYK", (6, 4), (0, 255, 255, 0))  # pure red in CMYK
    assert to_rgb(cmyk).getpixel((0, 0)) == (255, 0, 0)

    for image in (gray, sixteen, transparent, palette, cmyk):
        assert to_rgb(image).mode == "RGB"


def test_exif_orientation_is_applied(tmp_path):
    wide = Image.fromarray(np.zeros((4, 6, 3), np.uint8))  # 6 wide, 4 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "phone.jpg"
    wide.save(path, exif=exif)
    assert decode_image(str(path)).size == (4, 6)


def test_unreadable_images_are_skipped_or_fatal(tmp_path):
    bad = add_bad_images(tmp_path)
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((HEIGHT, WIDTH, 3), np.uint8)).save(good)
    for path in bad:
        with pytest.raises(BadImageError, match=path.name):
            decode_image(str(path))

    paths = [str(p) for p in [good, *bad]]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])})
    table = datasets.Dataset.from_dict({"image": paths, "label": [0, 1, 0, 1]}, features=features)
    _, eval_tf = build_transforms({"input_size": (3, HEIGHT, WIDTH)}, augment=False)
    skipping = ImageClassificationDataset(table, "image", "label", eval_tf, input_size=(3, HEIGHT, WIDTH))
    rows = [skipping[i] for i in range(4)]
    assert [row["valid"] for row in rows] == [True, False, False, False]
    assert all(row["pixel_values"].shape == (3, HEIGHT, WIDTH) for row in rows)
    assert skipping.describe(2) == str(bad[1])

    strict = ImageClassificationDataset(table, "image", "label", eval_tf, on_bad_image="error")
    with pytest.raises(BadImageError, match="empty.jpg"):
        strict[1]


# ---- transforms --------------------------------------------------------------------------------------------------
def test_transforms_stay_rectangular():
    square = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 50, 3), dtype=np.uint8))
    train_tf, eval_tf = build_transforms({"input_size": (3, 448, 224), "crop_pct": 0.875}, augment=True)
    assert train_tf(square).shape == eval_tf(square).shape == (3, 448, 224)
    fixed_train, fixed_eval = build_transforms({"input_size": (3, 448, 224)}, augment=False)
    assert fixed_train is fixed_eval


def test_seeded_augmentation_depends_on_seed_epoch_and_row_only(tmp_path):
    make_image_folder(tmp_path, num_classes=2, per_class=2)
    data = load_image_dataset(str(tmp_path), val_split=0.5)
    train_tf, _ = build_transforms({"input_size": (3, HEIGHT, WIDTH)}, augment=True)
    dataset = ImageClassificationDataset(data.train, "image", "label", train_tf, input_size=(3, HEIGHT, WIDTH))
    dataset.seed_augmentation(seed=1, epoch=0)
    torch.manual_seed(123)
    first = dataset[0]["pixel_values"]
    torch.manual_seed(456)  # the global RNG plays no part...
    assert torch.equal(dataset[0]["pixel_values"], first)
    state = torch.get_rng_state()
    dataset[1]
    assert torch.equal(torch.get_rng_state(), state)  # ...and is left untouched (dropout keeps its stream)
    dataset.seed_augmentation(seed=1, epoch=1)
    assert not torch.equal(dataset[0]["pixel_values"], first)  # each epoch sees new augmentations
