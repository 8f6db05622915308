"""hubclf.data.csv_labels: labels in a CSV file, checked before any image is decoded."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from hubclf.data.csv_labels import LabelsCSVError, read_labels_csv
from hubclf.data.dataset import ImageClassificationDataset
from hubclf.data.images import build_transforms
from hubclf.data.splits import load_image_dataset
from tests.image_folders import make_image_folder, one_image


# ---- labels in a CSV ----------------------------------------------------------------------------------------------
def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def csv_image_set(root: Path, names: dict[str, int]) -> None:
    """One 8x8 image per name (a path relative to ``root``), coloured by the given class index."""
    for name, label in names.items():
        one_image((root / name).parent, Path(name).name, value=60 * label)


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
    from hubclf.cli.train_flags import config_from_args

    argv = ["train", "--data", "photos", "--labels", "l.csv", "--path-column", "file", "--output-dir", "o"]
    config = config_from_args(build_parser().parse_args([*argv, "--model", "m"]))
    assert (config.data, config.labels, config.path_column) == ("photos", "l.csv", "file")




def test_csv_rows_and_the_csv_itself_must_be_regular_files(tmp_path):
    """A FIFO listed in a CSV hung the first epoch (opening it waits for a writer): refused from its stat."""
    import os

    csv_image_set(tmp_path, {"a.png": 0})
    os.mkfifo(tmp_path / "pipe.png")
    os.symlink("/dev/zero", tmp_path / "zero.png")
    with pytest.raises(LabelsCSVError, match=r"2 listed path\(s\) are not regular files: pipe.png \(a FIFO \(named pipe\)\), zero.png \(a character device\)$"):  # noqa: E501
        read_labels_csv(write_csv(tmp_path / "l.csv", "path,label\na.png,x\npipe.png,y\nzero.png,y\n"))
    os.mkfifo(tmp_path / "labels.csv")
    with pytest.raises(LabelsCSVError, match="labels.csv is a FIFO .*not a regular file"):
        read_labels_csv(tmp_path / "labels.csv")
