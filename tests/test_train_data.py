"""hubclf.train.data: loading, column detection, splits, checks, robust decoding, rectangular transforms.

``make_image_folder`` is also used by the other ``test_train_*`` files.
"""

from __future__ import annotations

import io
import json
import unicodedata
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform

from hubclf.train.csv_labels import LabelsCSVError, read_labels_csv
from hubclf.train.data import (
    MAX_IMAGE_PIXELS,
    BadImageError,
    ImageClassificationDataset,
    PixelCache,
    TensorEvalTransform,
    build_transforms,
    check_data_location,
    decode_image,
    find_columns,
    find_empty_class_folders,
    load_image_dataset,
    normalize_class_name,
    normalize_labels,
    split_revision,
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
    # Relative spellings that no Hub id can have: a trailing slash, three parts. (Not sent to the Hub.)
    for missing in ("photos/", "my/photos/train"):
        with pytest.raises(FileNotFoundError, match=f"--data {missing}: no such directory"):
            check_data_location(missing)
    check_data_location("user/flowers")  # could be a Hub dataset id: left to open_dataset
    check_data_location("mnist@main")


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


@pytest.mark.parametrize(
    "config",
    [
        {"input_size": (3, HEIGHT, WIDTH), "crop_pct": 1.0},  # already the input size: no resize at all
        {"input_size": (3, 448, 224), "crop_pct": 0.875},  # rectangular resize (ResizeKeepRatio) + centre crop
        {"input_size": (3, 64, 64), "crop_pct": 0.875, "interpolation": "bicubic"},  # square: shorter-side resize
    ],
)
def test_the_fused_eval_transform_gives_timms_pixels(config):
    """Eval pixels as before: timm's transform and the fused one differ by float rounding only."""
    timm_transform = create_transform(**config, is_training=False)
    _, eval_tf = build_transforms(config, augment=False)
    assert isinstance(eval_tf, TensorEvalTransform)
    rng = np.random.default_rng(1)
    for size in ((HEIGHT, WIDTH), (300, 170), (41, 97)):
        noise = Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        expected, got = timm_transform(noise), eval_tf(noise)
        assert got.shape == expected.shape and got.dtype == torch.float32
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    gray = Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8))  # converted like timm does
    torch.testing.assert_close(eval_tf(gray), timm_transform(gray.convert("RGB")), atol=1e-5, rtol=0)
    assert "TensorEvalTransform" in repr(eval_tf) and repr(timm_transform) in repr(eval_tf)  # the cache key


def test_an_unknown_transform_is_kept_as_it_is():
    odd = create_transform(input_size=(3, 32, 32), is_training=False, normalize=False)  # no Normalize step
    assert TensorEvalTransform.wrap(odd) is odd


def test_rows_are_read_a_batch_at_a_time_with_the_same_samples(tmp_path):
    make_image_folder(tmp_path, num_classes=2, per_class=3)
    data = load_image_dataset(str(tmp_path), val_split=0.5)
    _, eval_tf = build_transforms({"input_size": (3, HEIGHT, WIDTH)}, augment=False)
    dataset = ImageClassificationDataset(data.train, "image", "label", eval_tf, input_size=(3, HEIGHT, WIDTH))
    batch = dataset.__getitems__([2, 0])
    assert [row["index"] for row in batch] == [2, 0]
    for row in batch:
        single = dataset[row["index"]]
        assert torch.equal(single["pixel_values"], row["pixel_values"]) and single["labels"] == row["labels"]
    assert [dataset[i]["labels"] for i in range(len(dataset))] == list(data.train["label"])


def test_persistent_workers_see_each_epochs_augmentation_seed(tmp_path):
    """The (seed, epoch) lives in shared memory: a DataLoader worker started in epoch 0 uses epoch 1's seed."""
    make_image_folder(tmp_path, num_classes=2, per_class=2)
    data = load_image_dataset(str(tmp_path), val_split=0.5)
    train_tf, _ = build_transforms({"input_size": (3, HEIGHT, WIDTH)}, augment=True)
    dataset = ImageClassificationDataset(data.train, "image", "label", train_tf, input_size=(3, HEIGHT, WIDTH))
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=1, persistent_workers=True)
    epochs = []
    for epoch in (0, 1):
        dataset.seed_augmentation(seed=3, epoch=epoch)
        epochs.append(next(iter(loader))["pixel_values"])
    for epoch in (0, 1):  # the same pixels as the main process computes for that epoch
        dataset.seed_augmentation(seed=3, epoch=epoch)
        assert torch.equal(epochs[epoch][0], dataset[0]["pixel_values"])
    assert not torch.equal(epochs[0], epochs[1])


def test_cached_pixels_are_the_decoded_ones_shared_by_workers_and_decoded_once(tmp_path, monkeypatch):
    make_image_folder(tmp_path, num_classes=2, per_class=4)
    bad = add_bad_images(tmp_path / "class_0")
    data = load_image_dataset(str(tmp_path), val_split=0.25)
    _, eval_tf = build_transforms({"input_size": (3, HEIGHT, WIDTH)}, augment=False)
    plain = ImageClassificationDataset(data.train, "image", "label", eval_tf, input_size=(3, HEIGHT, WIDTH))
    cached = ImageClassificationDataset(
        data.train, "image", "label", eval_tf, input_size=(3, HEIGHT, WIDTH), cache_pixels=True
    )
    rows = len(plain)
    assert cached.pixel_cache.nbytes == rows * 3 * HEIGHT * WIDTH
    expected = [plain[i] for i in range(rows)]
    bad_rows = [i for i in range(rows) if cached.describe(i) in map(str, bad)]
    assert bad_rows, "the split should hold some of the unreadable files"

    # The first pass runs in 2 DataLoader workers: the shared cache then holds every row for the main process.
    loader = torch.utils.data.DataLoader(cached, batch_size=3, num_workers=2)
    first = [row for batch in loader for row in _rows(batch)]
    status = cached.pixel_cache.status.tolist()
    assert [i for i, s in enumerate(status) if s == PixelCache.BAD] == bad_rows
    assert status.count(PixelCache.CACHED) == rows - len(bad_rows)

    # Later passes decode nothing, and give the very tensors (and validity) of the uncached dataset.
    monkeypatch.setattr("hubclf.train.data.decode_image", lambda value: pytest.fail(f"decoded {value} again"))
    again = [cached[i] for i in range(rows)]
    for want, got_first, got in zip(expected, first, again, strict=True):
        assert want["valid"] == got_first["valid"] == got["valid"]
        assert torch.equal(want["pixel_values"], got_first["pixel_values"])
        assert torch.equal(want["pixel_values"], got["pixel_values"])


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmRSS from /proc")
def test_an_empty_pixel_cache_costs_the_creating_process_no_memory():
    def resident_mib() -> float:
        line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmRSS"))
        return int(line.split()[1]) / 1024

    before = resident_mib()
    cache = PixelCache(1000, (3, 448, 224))  # 287 MiB of pixels, filled (and made resident) by whoever decodes
    assert cache.nbytes == 1000 * 3 * 448 * 224 and cache.pixels.is_shared()
    assert resident_mib() - before < 16


def test_only_a_fixed_transform_can_cache_pixels(tmp_path):
    make_image_folder(tmp_path, num_classes=2, per_class=2)
    data = load_image_dataset(str(tmp_path), val_split=0.5)
    train_tf, _ = build_transforms({"input_size": (3, HEIGHT, WIDTH)}, augment=True)
    with pytest.raises(ValueError, match="fixed"):
        ImageClassificationDataset(data.train, "image", "label", train_tf, cache_pixels=True)


def _rows(batch: dict) -> list[dict]:
    pairs = zip(batch["pixel_values"], batch["valid"], strict=True)
    return [{"pixel_values": pixels, "valid": bool(valid)} for pixels, valid in pairs]


# ---- class names: normalisation, collisions, classes without images -------------------------------------------
def _one_image(folder: Path, name: str = "0.png", value: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(folder / name)
    return folder / name


def test_class_names_are_normalised_to_nfc_without_surrounding_spaces(tmp_path):
    nfd = unicodedata.normalize("NFD", "café")
    for name in (f" {nfd}", "dog "):
        for i in range(4):
            _one_image(tmp_path / name, f"{i}.png", value=40 * i)
    data = load_image_dataset(str(tmp_path), val_split=0.5)
    assert data.label_names == [unicodedata.normalize("NFC", "café"), "dog"]
    assert normalize_class_name(" cafe\u0301\t") == "caf\u00e9"


@pytest.mark.parametrize(
    ("first", "second"),
    [(" cat ", "cat"), ("caf\u00e9", "cafe\u0301")],  # spaces; NFC and NFD
)
def test_look_alike_class_folders_are_an_error_naming_both(tmp_path, first, second):
    for name in (first, second, "dog"):
        for i in range(2):
            _one_image(tmp_path / name, f"{i}.png")
    with pytest.raises(ValueError, match="both normalise to") as error:
        load_image_dataset(str(tmp_path))
    assert repr(first) in str(error.value) and repr(second) in str(error.value)


def test_look_alike_string_labels_are_an_error_and_lone_variants_are_normalised():
    features = datasets.Features({"image": datasets.Image(), "kind": datasets.Value("string")})
    image = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    spaced = datasets.Dataset.from_dict({"image": [image] * 2, "kind": [" a", "b "]}, features=features)
    assert normalize_labels(spaced, "kind")["kind"] == ["a", "b"]
    clash = datasets.Dataset.from_dict({"image": [image] * 2, "kind": [" a", "a"]}, features=features)
    with pytest.raises(ValueError, match="labels ' a' and 'a' both normalise to 'a'"):
        normalize_labels(clash, "kind")


def test_a_class_without_train_images_and_an_empty_class_folder_are_reported(tmp_path, caplog):
    make_image_folder(tmp_path, num_classes=2, per_class=3, split="train")
    make_image_folder(tmp_path, num_classes=3, per_class=2, split="validation", seed=1)  # class_2: validation only
    (tmp_path / "train" / "tulip").mkdir()  # empty: the imagefolder loader drops it without a word
    (tmp_path / "train" / ".cache").mkdir()  # hidden: not a class folder
    with caplog.at_level("WARNING", logger="hubclf.train.data"):
        data = load_image_dataset(str(tmp_path))
    assert data.label_names == ["class_0", "class_1", "class_2"]
    assert data.classes_without_train_images == ["class_2"]
    assert data.empty_class_folders == ["train/tulip"]
    assert "no image in the 'train' split, so the model never learns them: 'class_2'" in caplog.text
    assert "hold no image and are not classes of this run: 'train/tulip'" in caplog.text
    assert find_empty_class_folders(str(tmp_path / "nope")) == []


# ---- decompression bombs --------------------------------------------------------------------------------------
def test_the_decompression_bomb_limit_is_explicit_and_over_limit_images_are_skipped(tmp_path, monkeypatch):
    assert Image.MAX_IMAGE_PIXELS == MAX_IMAGE_PIXELS == 100_000_000
    # A real bomb: a few KB of PNG that would decode to 110 million pixels.
    bomb = tmp_path / "bomb.png"
    Image.new("1", (11_000, 10_000)).save(bomb)
    assert bomb.stat().st_size < 100_000
    with pytest.raises(BadImageError, match="bomb.png.*exceeds limit"):
        decode_image(str(bomb))
    # Between the limit and twice the limit PIL only warns; hubclf's decoder makes that an error too.
    small = tmp_path / "small.png"
    Image.new("RGB", (64, 64)).save(small)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 4096 pixels: over the limit, under twice the limit
    with pytest.raises(BadImageError, match="small.png.*decompression bomb"):
        decode_image(str(small))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])})
    table = datasets.Dataset.from_dict({"image": [str(small)], "label": [1]}, features=features)
    _, eval_tf = build_transforms({"input_size": (3, 32, 32)}, augment=False)
    row = ImageClassificationDataset(table, "image", "label", eval_tf, input_size=(3, 32, 32))[0]
    assert row["valid"] is False  # skipped and listed like any other unreadable image


# ---- labels in a CSV ----------------------------------------------------------------------------------------------
def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def csv_image_set(root: Path, names: dict[str, int]) -> None:
    """One 8x8 image per name (a path relative to ``root``), coloured by the given class index."""
    for name, label in names.items():
        _one_image((root / name).parent, Path(name).name, value=60 * label)


def test_csv_labels_with_detected_columns_and_a_stratified_split(tmp_path):
    csv_image_set(tmp_path, {f"img/{c}{i}.png": c for c in range(2) for i in range(4)})
    rows = "".join(f"img/{c}{i}.png, {'cat' if c else 'dog'}\n" for c in range(2) for i in range(4))
    labels = write_csv(tmp_path / "labels.csv", "\ufeffFilename, Class\n" + rows)  # BOM, spaces, capitals
    data = load_image_dataset(str(labels), val_split=0.5, seed=0)
    assert (data.image_column, data.label_column, data.label_names) == ("Filename", "Class", ["cat", "dog"])
    assert (len(data.train), len(data.eval)) == (4, 4)
    assert sorted(data.eval["Class"]) == [0, 0, 1, 1]
    first = data.train.cast_column("Filename", datasets.Image(decode=False))[0]["Filename"]["path"]
    assert Path(first).parent == tmp_path / "img"


def test_csv_labels_with_a_split_column_flags_and_an_image_root(tmp_path):
    csv_image_set(tmp_path / "pictures", {"a.png": 0, "b.png": 1, "c.png": 0, "d.png": 1})
    text = "pic,kind,split,note\na.png,x,train,\nb.png,y,TRAIN,\nc.png,x,val,\nd.png,y,validation,\n"
    labels = write_csv(tmp_path / "meta" / "labels.csv", text)
    splits = read_labels_csv(labels, image_root=tmp_path / "pictures", path_column="pic", label_column="kind")
    assert {name: len(split) for name, split in splits.items()} == {"train": 2, "validation": 2}
    assert splits["train"].features["kind"].names == ["x", "y"]
    data = load_image_dataset(str(tmp_path / "pictures"), labels=str(labels), path_column="pic", label_column="kind")
    assert (len(data.train), len(data.eval), data.eval_split_name) == (2, 2, "validation")
    assert read_labels_csv(write_csv(tmp_path / "pictures" / "t.csv", "path,label\na.png,x\nb.png,y\n"),
                           unsplit_name="test").keys() == {"test"}  # fmt: skip


@pytest.mark.parametrize(
    ("text", "kwargs", "error"),
    [
        ("", {}, "is empty; it needs a header row"),
        ("path,label\n", {}, "has a header but no rows"),
        ("a.png,x\nb.png,y\n", {}, "seems to have no header row"),
        ("file,label\na.png,x\n", {"path_column": "photo"}, "--path-column 'photo' is not a column"),
        ("path,label\na.png,x\n", {"label_column": "kind"}, "--label-column 'kind' is not a column"),
        ("name,label\na.png,x\n", {}, "no path column.*--path-column"),
        ("path,file,label\na.png,a.png,x\n", {}, r"several possible path columns \['path', 'file'\]"),
        ("path,label\na.png,x\nb.png, \nc.png,\n", {}, r"2 row\(s\) with an empty label.*line\(s\) 3, 4"),
        ("path,label\na.png,x\n./a.png,y\n", {}, "2 row.*listed more than once.*a.png"),
        ("path,label,split\na.png,x,train\nb.png,y,holdout\n", {}, "'split' value other than.*3 \\('holdout'\\)"),
        ("path,label\na.png,x,extra\n", {}, "line 2: 3 field"),
        ("path,label\na.png, cat\nb.png,cat\n", {}, "labels ' cat' and 'cat' both normalise"),
    ],
)
def test_csv_errors_are_clear(tmp_path, text, kwargs, error):
    csv_image_set(tmp_path, {"a.png": 0, "b.png": 1, "c.png": 0})
    with pytest.raises(ValueError, match=error):
        read_labels_csv(write_csv(tmp_path / "labels.csv", text), **kwargs)


def test_csv_missing_files_are_listed_with_a_count_and_bad_encodings_fail(tmp_path):
    rows = "".join(f"missing/{i}.png,x\n" for i in range(12))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_labels_csv(tmp_path / "nope.csv")
    with pytest.raises(LabelsCSVError, match=r"12 listed file\(s\) do not exist.*missing/9.png and 2 more$"):
        read_labels_csv(write_csv(tmp_path / "labels.csv", "path,label\n" + rows))
    (tmp_path / "latin1.csv").write_bytes("path,label\nb.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(LabelsCSVError, match="not UTF-8"):
        read_labels_csv(tmp_path / "latin1.csv")
    with pytest.raises(ValueError, match="--labels .* needs --data to be the folder"):
        load_image_dataset("user/flowers", labels=str(tmp_path / "labels.csv"))


def test_csv_unreadable_images_follow_the_skip_rule(tmp_path):
    csv_image_set(tmp_path, {"a.png": 0, "b.png": 1})
    (tmp_path / "broken.png").write_bytes(b"not a png")
    splits = read_labels_csv(write_csv(tmp_path / "l.csv", "path,label\na.png,x\nb.png,y\nbroken.png,x\n"))
    _, eval_tf = build_transforms({"input_size": (3, 8, 8)}, augment=False)
    images = ImageClassificationDataset(splits["train"], "path", "label", eval_tf, input_size=(3, 8, 8))
    assert [images[i]["valid"] for i in range(3)] == [True, True, False]
    assert images.describe(2) == str(tmp_path / "broken.png")


def test_hub_ids_may_name_a_revision():
    assert split_revision("user/flowers@v2") == ("user/flowers", "v2")
    assert split_revision("user/flowers") == ("user/flowers", None)
    with pytest.raises(ValueError, match="nothing after '@'"):
        split_revision("user/flowers@")


def test_train_and_eval_on_csv_labels_end_to_end(tmp_path, capsys):
    from hubclf.cli import main

    make_image_folder(tmp_path / "photos", num_classes=2, per_class=6)
    rows = [f"photos/class_{c}/{i}.png,{['red', 'green'][c]}" for c in range(2) for i in range(6)]
    labels = write_csv(tmp_path / "labels.csv", "image_path,category\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    args = ["--model", "hubclf_alexnet_slim", "--no-pretrained", "--img-size", "64", "64", "--epochs", "1"]
    args += ["--batch-size", "4", "--num-workers", "0", "--warmup-epochs", "0", "--val-split", "0.5"]
    assert main(["train", "--data", str(labels), "--output-dir", str(out), *args]) == 0
    card = (out / "best" / "README.md").read_text()
    assert "labels.csv (local labels CSV)" in card and str(labels) not in card
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["label_names"] == ["green", "red"]
    capsys.readouterr()

    assert main(["eval", str(out / "best"), "--data", str(labels), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["split"], result["num_samples"], result["label_names"]) == ("test", 12, ["green", "red"])

    # The same images through --data FOLDER --labels CSV (paths relative to that folder), and a one-line error.
    inner = write_csv(tmp_path / "elsewhere" / "l.csv", "file,label\nclass_0/0.png,red\nclass_1/0.png,green\n")
    assert main(["eval", str(out / "best"), "--data", str(tmp_path / "photos"), "--labels", str(inner)]) == 0
    assert "2 images evaluated" in capsys.readouterr().out
    assert main(["eval", str(out / "best"), "--data", str(tmp_path / "missing.csv")]) == 2
    assert capsys.readouterr().err.strip().endswith("missing.csv does not exist")

    from hubclf.cli import build_parser
    from hubclf.train.config import config_from_args

    argv = ["train", "--data", "photos", "--labels", "l.csv", "--path-column", "file", "--output-dir", "o"]
    config = config_from_args(build_parser().parse_args([*argv, "--model", "m"]))
    assert (config.data, config.labels, config.path_column) == ("photos", "l.csv", "file")


def test_a_class_name_with_a_control_character_is_refused_before_training(tmp_path: Path) -> None:
    """Class names become the model's label_names, which must print safely: refused when the data is loaded."""
    for name in ("rose", "daisy\x1b[31m"):
        folder = tmp_path / "train" / name
        folder.mkdir(parents=True)
        for index in range(2):
            Image.new("RGB", (8, 8), (index * 90, 40, 200)).save(folder / f"{index}.png")
    with pytest.raises(ValueError, match="control characters"):
        load_image_dataset(str(tmp_path))


def test_epoch_shuffle_is_a_permutation_drawn_from_seed_and_epoch_only():
    from hubclf.train.data import EpochShuffleSampler

    sampler = EpochShuffleSampler(50, seed=7)
    sampler.start_epoch(3)
    order = list(sampler)
    assert sorted(order) == list(range(50)) and order != list(range(50)) and len(sampler) == 50
    torch.manual_seed(123)  # the global RNG (dropout, other loaders) does not move it
    torch.rand(1000)
    assert list(sampler) == order
    again = EpochShuffleSampler(50, seed=7)
    again.start_epoch(3)
    assert list(again) == order
    sampler.start_epoch(4)
    assert list(sampler) != order
    other_seed = EpochShuffleSampler(50, seed=8)
    other_seed.start_epoch(3)
    assert list(other_seed) != order


def test_image_folder_layouts_that_give_no_labels_are_named(tmp_path):
    from hubclf.train.data import open_dataset

    stray = make_image_folder(tmp_path / "stray", 2, 3)
    (stray / "class_0" / "0.png").rename(stray / "loose.png")  # one image above the class folders
    # 🤗 imagefolder then silently returns images without a label column
    with pytest.raises(ValueError, match=rf"^--data {stray}: no class labels: an image folder needs one subfolder "
                       rf"per class with every image at the same depth"):  # fmt: skip
        open_dataset(str(stray))
    (tmp_path / "empty" / "nested").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"^--data .*empty: no images found; an image folder holds one"):
        open_dataset(str(tmp_path / "empty"))
    assert open_dataset(str(make_image_folder(tmp_path / "two", 2, 3)))["train"].features["label"].names == [
        "class_0", "class_1"
    ]
    # A single class folder is read with its label (imagefolder drops it): fine to evaluate on; training says no.
    one = make_image_folder(tmp_path / "one", 1, 3)
    assert open_dataset(str(one))["train"].features["label"].names == ["class_0"]
    with pytest.raises(ValueError, match=r"the data has 1 class\(es\) \['class_0'\]; a classifier needs at least 2"):
        load_image_dataset(str(one))


def test_a_name_that_is_neither_a_folder_nor_a_reachable_hub_dataset_says_both(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from hubclf.train.data import open_dataset

    # HF_HUB_OFFLINE=1 as the README advises offline: no retries, and no cached copy of this name
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"^--data Photos: no such folder here, and as a Hub dataset id: "
                       r"Couldn't reach 'Photos' on the Hub \(OfflineModeIsEnabled\)$"):  # fmt: skip
        open_dataset("Photos")
