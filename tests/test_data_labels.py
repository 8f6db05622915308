"""hubclf.data.labels: class names normalised, look-alikes refused, classes without images reported."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from hubclf.data.labels import label_values, normalize_class_name, normalize_labels
from hubclf.data.sources import find_empty_class_folders
from hubclf.data.splits import load_image_dataset
from tests.image_folders import make_image_folder, one_image


# ---- class names: normalisation, collisions, classes without images -------------------------------------------
def test_class_names_are_normalised_to_nfc_without_surrounding_spaces(tmp_path):
    nfd = unicodedata.normalize("NFD", "café")
    for name in (f" {nfd}", "dog "):
        for i in range(4):
            one_image(tmp_path / name, f"{i}.png", value=40 * i)
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
            one_image(tmp_path / name, f"{i}.png")
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


def test_a_class_name_with_a_control_character_is_refused_before_training(tmp_path: Path) -> None:
    """Class names become the model's label_names, which must print safely: refused when the data is loaded."""
    for name in ("rose", "daisy\x1b[31m"):
        folder = tmp_path / "train" / name
        folder.mkdir(parents=True)
        for index in range(2):
            Image.new("RGB", (8, 8), (index * 90, 40, 200)).save(folder / f"{index}.png")
    with pytest.raises(ValueError, match="control characters"):
        load_image_dataset(str(tmp_path))




def test_label_values_reads_a_column_in_row_order_through_split_indices():
    """One Arrow read of the column (not a row-by-row walk), honouring select()/shuffle() indices."""
    split = datasets.Dataset.from_dict({"label": [3, 1, 4, 1, 5, 9, 2, 6], "other": list("abcdefgh")})
    assert label_values(split, "label").tolist() == [3, 1, 4, 1, 5, 9, 2, 6]
    picked = split.shuffle(seed=0).select([5, 0, 2])
    assert label_values(picked, "label").tolist() == [row["label"] for row in picked]
    assert label_values(split.select([]), "label").size == 0
