"""hubclf.data.folders: the one-walk scan reads exactly what 🤗 datasets' imagefolder reads (as FileSplits, and as
the Dataset they convert to), or leaves the folder to datasets."""

from __future__ import annotations

import os
from pathlib import Path

import datasets
import numpy as np
import pytest
from datasets.data_files import SPLIT_KEYWORDS
from datasets.packaged_modules.imagefolder.imagefolder import IMAGE_EXTENSIONS

from hubclf.data import folders
from hubclf.data.folders import IMAGE_SUFFIXES, FileSplit, scan_class_folders
from hubclf.data.sources import open_dataset
from tests.image_folders import one_image


def _imagefolder(root: Path) -> datasets.DatasetDict:
    """datasets' own reading, with labels where imagefolder drops them for a single class folder (as hubclf does)."""
    datasets.disable_progress_bars()
    loaded = datasets.load_dataset("imagefolder", data_dir=str(root))
    if any("label" not in split.features for split in loaded.values()):
        loaded = datasets.load_dataset("imagefolder", data_dir=str(root), drop_labels=False)
    return loaded


def _paths(split: datasets.Dataset) -> list[str]:
    return [cell["path"] for cell in split.cast_column("image", datasets.Image(decode=False))["image"]]


def _assert_same(scanned: dict[str, FileSplit], reference: datasets.DatasetDict) -> None:
    assert list(scanned) == list(reference)
    for name, split in scanned.items():  # what the training pipeline reads of a split
        raw = reference[name].cast_column("image", datasets.Image(decode=False))
        assert split.label_names == reference[name].features["label"].names
        assert split.labels.tolist() == reference[name]["label"]
        assert len(split) == len(raw)
        assert split[list(range(len(split)))] == raw[list(range(len(raw)))]
        assert split[len(split) - 1] == raw[len(raw) - 1]
        assert split["image"] == raw["image"]
    fast = {name: split.to_dataset() for name, split in scanned.items()}  # and the Dataset hubclf eval reads
    for name in reference:
        assert fast[name].features == reference[name].features
        assert fast[name].split == reference[name].split
        assert _paths(fast[name]) == _paths(reference[name])
        assert fast[name]["label"] == reference[name]["label"]
        assert fast[name].data.schema.equals(reference[name].data.schema, check_metadata=False)


def _classes(root: Path, layout: dict[str, list[str]]) -> Path:
    for folder, names in layout.items():
        for value, name in enumerate(names):
            one_image(root / folder, name, value=value * 20)
    return root


LAYOUTS = {
    # The order of rows is the path order: "cat-x/" sorts before "cat/", the label names before them ('-' < '/').
    "classes": {"cat": ["1.jpg", "10.jpg", "2.PNG", "a.b.jpg"], "cat-x": ["1.jpg"], "cat_b": ["3.jpeg"],
                "dog": ["1.png", "0.png"]},
    "splits": {"train/cat": ["1.png", "2.png"], "train/dog": ["1.png"], "validation/cat": ["1.png"],
               "validation/owl": ["1.png"], "test/dog": ["5.png"]},
    "short split names": {"val/cat": ["1.png"], "train/cat": ["1.png"], "train/dog": ["2.png"]},
    "one class": {"cat": ["1.png", "2.png"]},
    "hidden names": {"cat": ["1.png", ".2.png"], "dog": ["1.png"], ".cache": ["x.png"]},
}  # fmt: skip


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_layout_reads_as_imagefolder_does(tmp_path: Path, layout: str) -> None:
    root = _classes(tmp_path / "photos", LAYOUTS[layout])
    if layout == "splits":
        (root / "done").write_text("a marker beside the split folders")  # not data to datasets either
        (root / "train" / "empty_class").mkdir()  # no image: no label, as in datasets
    fast = scan_class_folders(root)
    assert fast is not None
    _assert_same(fast, _imagefolder(root))


LEFT_TO_DATASETS = {
    "a metadata file": lambda root: (root / "cat" / "metadata.csv").write_text("file_name,text\n1.png,a\n"),
    "a README": lambda root: (root / "README.md").write_text("---\nconfigs: []\n---\n"),
    "a file beside the class folders": lambda root: one_image(root, "loose.png"),
    "a class named like a split": lambda root: one_image(root / "interval", "1.png"),
    "a file named like a split": lambda root: one_image(root / "cat", "test_1.png"),
    "a sharded name": lambda root: one_image(root / "cat", "x-00000-of-00002.png"),
    "a text file": lambda root: (root / "dog" / "notes.txt").write_text("hello"),
    "a nested folder": lambda root: one_image(root / "dog" / "more", "1.png"),
    "a symlink": lambda root: os.symlink(root / "cat" / "1.png", root / "dog" / "2.png"),
    "a special folder": lambda root: one_image(root / "__pycache__", "1.png"),
    "a name that is not UTF-8": lambda root: (root / "dog" / os.fsdecode(b"\xff.png")).write_bytes(b"x"),
    "two folders of one split": lambda root: [one_image(root / s / "cat", "1.png") for s in ("val", "validation")],
}


@pytest.mark.parametrize("case", list(LEFT_TO_DATASETS))
def test_other_layouts_are_left_to_datasets(tmp_path: Path, case: str) -> None:
    root = tmp_path / "photos"
    if case == "two folders of one split":
        root.mkdir()
    else:
        _classes(root, {"cat": ["1.png"], "dog": ["1.png"]})
    LEFT_TO_DATASETS[case](root)
    assert scan_class_folders(root) is None


def test_empty_or_missing_folders_are_left_to_datasets(tmp_path: Path) -> None:
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    assert scan_class_folders(tmp_path / "empty") is None  # datasets says "no images" in its own words
    assert scan_class_folders(tmp_path / "missing") is None


def test_fingerprint_follows_the_files(tmp_path: Path) -> None:
    """Caches keyed on a split's fingerprint (the feature cache) must miss when a file changes, as with datasets."""
    root = _classes(tmp_path / "photos", {"cat": ["1.png"], "dog": ["1.png", "2.png"]})
    first = scan_class_folders(root)["train"].fingerprint
    assert scan_class_folders(root)["train"].fingerprint == first
    image = root / "dog" / "2.png"
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    touched = scan_class_folders(root)["train"].fingerprint
    assert touched != first
    image.unlink()
    assert scan_class_folders(root)["train"].fingerprint not in (first, touched)


def test_open_dataset_reads_class_folders_without_the_builder(tmp_path: Path, monkeypatch) -> None:
    root = _classes(tmp_path / "photos", {"cat": ["1.png"], "dog": ["1.png"]})

    def no_builder(*args, **kwargs):
        raise AssertionError("datasets' builder was used for a plain class-folder layout")

    monkeypatch.setattr(datasets, "load_dataset", no_builder)
    splits = open_dataset(str(root))
    assert splits["train"].features["label"].names == ["cat", "dog"]
    assert len(splits["train"]) == 2


def test_split_keywords_and_image_suffixes_are_datasets_own() -> None:
    """hubclf keeps its own copy so that a class folder's run does not import datasets; the copy must not drift."""
    assert {str(split): tuple(keywords) for split, keywords in SPLIT_KEYWORDS.items()} == folders.SPLIT_KEYWORDS
    assert IMAGE_SUFFIXES == set(IMAGE_EXTENSIONS)


def test_a_selection_reads_its_rows_and_changes_the_fingerprint(tmp_path: Path) -> None:
    root = _classes(tmp_path / "photos", {"cat": ["1.png", "2.png", "3.png"], "dog": ["1.png", "2.png"]})
    split = scan_class_folders(root)["train"]
    part = split.select([4, 0, 2])
    assert [cell["path"] for cell in part["image"]] == [split.path(4), split.path(0), split.path(2)]
    assert part.labels.tolist() == [1, 0, 0] and part[0] == split[4] and part[-1] == split[2]
    again = part.select([1])  # a selection of a selection: rows of the original
    assert again[0] == split[0] and again.fingerprint not in (part.fingerprint, split.fingerprint)
    assert part.fingerprint == split.select(np.array([4, 0, 2])).fingerprint != split.select([0, 2, 4]).fingerprint
    renamed = part.with_label_names(["Cat", "Dog"])
    assert renamed[0] == part[0] and renamed.label_names == ["Cat", "Dog"] and renamed.fingerprint != part.fingerprint
    assert part.to_dataset()["label"] == [1, 0, 0]
    with pytest.raises(IndexError):
        split.select([5])
    with pytest.raises(IndexError):
        part.path(3)
