"""hubclf.refs: what --model and --data name, decided once for every command."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubclf.refs import DataSource, ModelRef, is_hub_id, split_revision


def test_hub_ids_may_name_a_revision():
    assert split_revision("user/flowers@v2") == ("user/flowers", "v2")
    assert split_revision("user/flowers") == ("user/flowers", None)
    with pytest.raises(ValueError, match="nothing after '@'"):
        split_revision("user/flowers@")


def test_missing_data_that_cannot_be_a_hub_id_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Relative spellings that no Hub id can have: a trailing slash, three parts. (Not sent to the Hub.)
    for missing in ("photos/", "my/photos/train", "./photos", str(tmp_path / "nope")):
        with pytest.raises(FileNotFoundError, match=f"--data {missing}: no such directory"):
            DataSource.parse(missing)
    assert DataSource.parse("user/flowers").kind == "hub"  # could be a Hub dataset id: left to the loader
    assert (DataSource.parse("mnist@main").repo_id, DataSource.parse("mnist@main").revision) == ("mnist", "main")


def test_data_kinds_and_the_names_a_card_shows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "dataset_dict.json").write_text("{}")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n")
    assert (DataSource.parse("photos").kind, DataSource.parse("photos").display_name) == (
        "folder", "photos (local image folder)"
    )
    assert DataSource.parse(str(saved)).display_name == "saved (saved dataset)"
    assert DataSource.parse(str(labels)).display_name == "labels.csv (local labels CSV)"
    with_labels = DataSource.parse("photos", labels=str(labels))
    assert (with_labels.kind, with_labels.path, with_labels.labels) == ("csv", Path("photos"), labels)
    assert DataSource.parse("user/flowers@v2").display_name == "user/flowers"  # no revision: a Hub id
    with pytest.raises(ValueError, match="needs --data to be the folder"):
        DataSource.parse("user/flowers", labels=str(labels))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="--data notes.txt is a file"):
        DataSource.parse("notes.txt")


def test_a_bare_owner_name_is_a_hub_repo_for_every_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ModelRef.parse("hubclf_alexnet").kind == "architecture"
    assert ModelRef.parse("resnet18.a1_in1k").kind == "architecture"
    ref = ModelRef.parse("me/flowers")
    assert (ref.kind, ref.repo_id, ref.revision, ref.display_name) == ("hub", "me/flowers", None, "me/flowers")
    assert ModelRef.parse("hf-hub:me/flowers@v1").revision == "v1"
    assert ModelRef.parse("me/flowers", revision="v2").revision == "v2"
    with pytest.raises(ValueError, match="two revisions"):
        ModelRef.parse("hf-hub:me/flowers@v1", revision="v2")
    (tmp_path / "out" / "best").mkdir(parents=True)
    folder = ModelRef.parse("out/best")  # out/ is a local folder: a path, not a Hub id
    assert (folder.kind, folder.display_name) == ("folder", "best (local model folder)")
    assert ModelRef.parse("local-dir:missing").kind == "folder"
    assert ModelRef.parse("./missing").kind == "folder" and not is_hub_id("out/best")
    assert ModelRef.parse("me//flowers").kind == "folder"  # spelled like a path (three parts): never sent to the Hub
    with pytest.raises(FileNotFoundError, match="neither a folder nor a Hub repo id"):
        ModelRef.parse("me/fl!owers")
    with pytest.raises(ValueError, match="only applies to Hub repos"):
        ModelRef.parse("out/best", revision="v1")
