"""hubclf.data.splits (and sources): loading an image folder, a saved dataset or a Hub id; columns; splits."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from PIL import Image

from hubclf.data.folders import FileSplit
from hubclf.data.labels import find_columns
from hubclf.data.splits import load_image_dataset, stratified_holdout
from tests.image_folders import make_image_folder


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


def test_many_empty_class_folders_make_one_short_log_line(tmp_path, caplog):
    """10,000 empty class folders made one 199 KB log line; 300 show the cut (10,000 take a minute to scan)."""
    make_image_folder(tmp_path, num_classes=2, per_class=3)
    for i in range(300):
        (tmp_path / f"empty_{i:05d}").mkdir()
    with caplog.at_level("WARNING", logger="hubclf.data.splits"):
        data = load_image_dataset(str(tmp_path), val_split=0.34)
    assert len(data.empty_class_folders) == 300  # all of them are still reported to the caller
    (line,) = [r.getMessage() for r in caplog.records if "hold no image" in r.getMessage()]
    assert line.startswith("300 class folder(s) hold no image and are not classes of this run: 'empty_00000', ")
    assert line.endswith("'empty_00009' and 290 more") and len(line) < 400


# ---- class folders without 🤗 datasets ----------------------------------------------------------------------------
@pytest.mark.parametrize("counts", [[10, 10, 10, 10], [2, 3, 50, 7], [5, 2, 2, 2, 9, 31], [100, 3], [4, 4, 4, 4, 4]])
@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
@pytest.mark.parametrize("seed", [0, 7])
def test_stratified_holdout_holds_out_the_rows_datasets_holds_out(counts, fraction, seed):
    """A class folder's validation images must not change with the reader: hubclf's own draw is datasets'."""
    labels = np.random.default_rng(len(counts)).permutation(np.repeat(np.arange(len(counts)), counts))
    table = datasets.Dataset.from_dict(
        {"label": labels.tolist()}, features=datasets.Features({"label": datasets.ClassLabel(num_classes=len(counts))})
    ).add_column("row", list(range(len(labels))))
    try:
        expected = table.train_test_split(test_size=fraction, stratify_by_column="label", seed=seed)
    except ValueError:
        with pytest.raises(ValueError):
            stratified_holdout(labels, fraction, seed)
        return
    train_rows, eval_rows = stratified_holdout(labels, fraction, seed)
    assert train_rows.tolist() == expected["train"]["row"]
    assert eval_rows.tolist() == expected["test"]["row"]


def test_stratified_holdout_refuses_what_datasets_refuses():
    with pytest.raises(ValueError, match="only 1 member"):
        stratified_holdout(np.array([0, 0, 1]), 0.5, 0)
    with pytest.raises(ValueError, match="at least one image of each of the 3 classes"):
        stratified_holdout(np.array([0, 0, 1, 1, 2, 2]), 0.1, 0)


def test_a_class_folder_loads_as_through_datasets_without_importing_it(tmp_path, monkeypatch):
    """The same splits, rows and names as 🤗 datasets' imagefolder and train_test_split give, and `datasets` (92 MiB
    with pandas and pyarrow) is never imported: checked in a fresh interpreter."""
    import subprocess
    import sys

    from hubclf.data import sources, splits

    photos = make_image_folder(tmp_path / "photos", num_classes=3, per_class=7)
    (photos / "class_1" / "caf\u00e9 .png").write_bytes((photos / "class_1" / "0.png").read_bytes())
    (photos / "class_2").rename(photos / "cafe\u0301 ")  # NFD, a trailing space: normalised to "café" both ways
    data = load_image_dataset(str(photos), val_split=0.3, seed=5)
    assert data.label_names == ["caf\u00e9", "class_0", "class_1"]
    assert isinstance(data.train, FileSplit) and isinstance(data.eval, FileSplit)
    for module in (sources, splits):  # every folder read by datasets' own builder
        monkeypatch.setattr(module, "scan_class_folders", lambda root: None)
    reference = load_image_dataset(str(photos), val_split=0.3, seed=5)
    assert isinstance(reference.train, datasets.Dataset)
    assert data.label_names == reference.label_names and data.eval_split_name == reference.eval_split_name
    for ours, theirs in ((data.train, reference.train), (data.eval, reference.eval)):
        assert ours["image"] == theirs.cast_column("image", datasets.Image(decode=False))["image"]
        assert ours["label"] == theirs["label"]
    code = (
        "import sys; from hubclf.data.splits import load_image_dataset; "
        f"data = load_image_dataset({str(photos)!r}); "
        "assert len(data.train) + len(data.eval) == 22; "
        "print(sorted(name for name in ('datasets', 'pandas', 'pyarrow') if name in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
