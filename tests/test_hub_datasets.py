"""Training and evaluating from Hub dataset repos over real HTTP: ``hubclf train --data user/name[@revision]`` and
``hubclf eval --data user/name`` against the local test Hub (``tests/hubserver.py``), for an imagefolder layout
uploaded with ``HfApi.upload_folder`` and for parquet shards written by ``DatasetDict.push_to_hub``.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml
from huggingface_hub import HfApi
from huggingface_hub.errors import RepositoryNotFoundError
from PIL import Image

from hubclf.cli import main
from hubclf.data.splits import load_image_dataset
from tests.image_folders import make_image_folder

TINY_TRAIN = ["--model", "hubclf_alexnet_slim", "--no-pretrained", "--img-size", "64", "64", "--epochs", "1"]
TINY_TRAIN += ["--batch-size", "4", "--num-workers", "0", "--warmup-epochs", "0"]


def card_metadata(model_dir: Path) -> dict:
    text = (model_dir / "README.md").read_text()
    return yaml.safe_load(text.split("---")[1])


def test_an_imagefolder_dataset_repo_trains_and_evaluates_at_a_revision(use_hub, new_repo_id, tmp_path, capsys):
    api = HfApi(token=use_hub.token)
    repo_id = new_repo_id("colours")
    folder = make_image_folder(tmp_path / "v1", num_classes=2, per_class=4, split="train")
    make_image_folder(folder, num_classes=2, per_class=2, split="validation", seed=1)
    api.create_repo(repo_id, repo_type="dataset")
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset", commit_message="two classes")
    api.create_branch(repo_id, branch="v1", repo_type="dataset")
    # main moves on to three classes; v1 keeps two.
    make_image_folder(tmp_path / "v2", num_classes=3, per_class=2, split="train", seed=2)
    api.upload_folder(folder_path=str(tmp_path / "v2" / "train" / "class_2"), path_in_repo="train/class_2",
                      repo_id=repo_id, repo_type="dataset")  # fmt: skip
    assert load_image_dataset(repo_id).label_names == ["class_0", "class_1", "class_2"]
    with pytest.raises(FileNotFoundError, match="Revision 'nope' doesn't exist"):  # the CLI's one-line error
        load_image_dataset(f"{repo_id}@nope")

    out = tmp_path / "out"
    assert main(["train", "--data", f"{repo_id}@v1", "--output-dir", str(out), *TINY_TRAIN]) == 0
    assert json.loads((out / "best" / "config.json").read_text())["label_names"] == ["class_0", "class_1"]
    assert card_metadata(out / "best")["datasets"] == [repo_id]  # the Hub id, without "@v1"
    capsys.readouterr()

    assert main(["eval", str(out / "best"), "--data", f"{repo_id}@v1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["data"], result["split"], result["num_samples"]) == (f"{repo_id}@v1", "validation", 4)
    # Every file came over HTTP from the dataset routes.
    paths = [request.path for request in use_hub.requests]
    assert any(path.startswith(f"/datasets/{repo_id}/resolve/") for path in paths)
    assert any(path.startswith(f"/api/datasets/{repo_id}/tree/") for path in paths)


def test_a_parquet_dataset_pushed_with_push_to_hub_loads_with_its_splits(use_hub, new_repo_id, tmp_path, capsys):
    repo_id = new_repo_id("parquet")
    features = datasets.Features({"img": datasets.Image(), "kind": datasets.ClassLabel(names=["dark", "light"])})
    images = [Image.fromarray(np.full((64, 64, 3), value, np.uint8)) for value in (10, 240, 30, 220, 50, 200)]
    table = {"img": images, "kind": [0, 1, 0, 1, 0, 1]}
    splits = datasets.DatasetDict(
        train=datasets.Dataset.from_dict(table, features=features),
        test=datasets.Dataset.from_dict({k: v[:4] for k, v in table.items()}, features=features),
    )
    splits.push_to_hub(repo_id, token=use_hub.token)

    data = load_image_dataset(repo_id)
    assert (data.image_column, data.label_column, data.label_names) == ("img", "kind", ["dark", "light"])
    assert (len(data.train), len(data.eval), data.eval_split_name) == (6, 4, "test")
    assert any(path.endswith(".parquet") for path in HfApi().list_repo_files(repo_id, repo_type="dataset"))

    out = tmp_path / "out"
    assert main(["train", "--data", repo_id, "--output-dir", str(out), *TINY_TRAIN]) == 0
    capsys.readouterr()
    assert main(["eval", str(out / "best"), "--data", repo_id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_samples"] == 4


def test_dataset_repos_are_separate_from_model_repos_and_private_ones_stay_hidden(use_hub, new_repo_id, tmp_path):
    api = HfApi(token=use_hub.token)
    repo_id = new_repo_id("twin")
    api.create_repo(repo_id, repo_type="dataset", private=True)
    (tmp_path / "notes.txt").write_text("dataset side")
    api.upload_file(path_or_fileobj=str(tmp_path / "notes.txt"), path_in_repo="notes.txt", repo_id=repo_id,
                    repo_type="dataset")  # fmt: skip
    api.create_repo(repo_id)  # a model repo of the same name is another repo
    assert "notes.txt" not in api.list_repo_files(repo_id)
    assert api.dataset_info(repo_id).private is True
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).dataset_info(repo_id)
    assert (use_hub.root / "datasets" / repo_id / ".git").is_dir()
    assert use_hub.find_secret(use_hub.token) == []


def test_a_hub_dataset_cannot_make_hubclf_open_local_files(use_hub, new_repo_id, tmp_path, capsys):
    """Parquet image cells ``{bytes: null, path: "/abs/local"}`` were opened on the user's machine; a FIFO there hung
    ``train`` and ``eval``. Remote data is read from its own bytes only; a local path in it is a one-line error."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    secret = tmp_path / "home" / "secret.png"
    secret.parent.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(secret)
    fifo = tmp_path / "home" / "pipe.png"
    os.mkfifo(fifo)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    png = (tmp_path / "home" / "secret.png").read_bytes()
    cells = [{"bytes": png, "path": "fine.png"}] * 2 + [{"bytes": None, "path": str(p)} for p in (secret, fifo)]
    pq.write_table(pa.table({"image": cells, "label": [0, 1, 0, 1]}, schema=features.arrow_schema),
                   tmp_path / "train.parquet")  # fmt: skip
    api = HfApi(token=use_hub.token)
    repo_id = new_repo_id("local-paths")
    api.create_repo(repo_id, repo_type="dataset")
    api.upload_file(path_or_fileobj=str(tmp_path / "train.parquet"), path_in_repo="data/train-00000.parquet",
                    repo_id=repo_id, repo_type="dataset")  # fmt: skip

    import timm

    import hubclf

    model = hubclf.save_pretrained(timm.create_model("hubclf_alexnet_slim", num_classes=2), tmp_path / "model",
                                   label_names=["a", "b"])  # fmt: skip
    out = tmp_path / "out"
    for argv in (["train", "--data", repo_id, "--output-dir", str(out), *TINY_TRAIN],
                 ["eval", str(model), "--data", repo_id]):  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err.splitlines()[-1]  # after the download's progress bars
        assert err.startswith(f"hubclf {argv[0]}: error: --data {repo_id}: 2 image(s) of the 'train' split carry no ")
        assert f"row 2: {str(secret)!r}, 3: {str(fifo)!r}" in err and "does not open local files" in err
    assert [p.name for p in out.iterdir()] == [".lock"]  # refused before anything was written
    # Rows 0 and 1 carry their bytes: their paths ("fine.png") are only names, and were not refused.
