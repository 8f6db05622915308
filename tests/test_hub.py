"""hubclf.hub: save_pretrained / push_to_hub / from_pretrained, the model card and ``hubclf push``.

Hub traffic goes to the local test Hub (``tests/hubserver.py``, fixtures in ``tests/hub_fixtures.py``) over real
HTTP, to olah for the independent read path, and to huggingface.co only when ``HUBCLF_LIVE_HUB_TOKEN`` is set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import HfApi, ModelCard, constants, snapshot_download
from safetensors.torch import load_file, save_file
from timm.models import PretrainedCfg

from hubclf.cli import main
from hubclf.hub import from_pretrained, push_to_hub, save_pretrained, update_card, verify_push
from tests.hub_fixtures import point_hub_clients_at, set_hub_offline

ARCH = "hubclf_alexnet_slim"
MODELING = "modeling_hubclf.py"  # hubclf.remote_code: a hubclf architecture's folder and repo carry it
IMG_SIZE = (96, 64)  # H×W, deliberately not square so a swapped H/W shows up
LABELS = ["daisy", "rose", "tulip"]
CARD_KWARGS = dict(
    label_names=LABELS,
    dataset="hubclf-test/flowers",
    base_model="hubclf_alexnet_slim.tv_in1k",
    freeze="backbone",
    hyperparameters={"lr": 0.001, "epochs": 2, "batch_size": 4},
    eval_results={"accuracy": 0.75, "top5_accuracy": 1.0},
    epoch_metrics=[
        {"epoch": 1, "train_loss": 1.02, "val_accuracy": 0.5},
        {"epoch": 2, "train_loss": 0.61, "val_accuracy": 0.75},
    ],
)


# ---- helpers ---------------------------------------------------------------------------------------------------
def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(ARCH, num_classes=len(LABELS), img_size=IMG_SIZE).eval()


def logits(model: torch.nn.Module) -> torch.Tensor:
    x = torch.randn((2, 3, *IMG_SIZE), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        return model.eval()(x)


def assert_same_logits(a: torch.nn.Module, b: torch.nn.Module) -> None:
    torch.testing.assert_close(logits(a), logits(b), rtol=0, atol=0)


def usage_snippet(card_text: str) -> str:
    """The first python block of the card: the one the card promises works as pasted."""
    match = re.search(r"```python\n(.*?)```", card_text, re.S)
    assert match, "the model card has no python usage snippet"
    return match.group(1)


def run_snippet(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<model card snippet>", "exec"), {"__name__": "__snippet__"})
    return out.getvalue()


def file_digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return make_model()


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory) -> Path:
    return save_pretrained(model, tmp_path_factory.mktemp("saved") / "flowers", **CARD_KWARGS)


# ---- save_pretrained: files, config, card ---------------------------------------------------------------------
def test_save_writes_exactly_three_files_with_bare_timm_keys(model, saved):
    # plus modeling_hubclf.py, which transformers loads without hubclf (tests/test_remote_code.py)
    assert sorted(p.name for p in saved.iterdir()) == ["README.md", "config.json", "model.safetensors", MODELING]
    tensors = load_file(saved / "model.safetensors")
    assert set(tensors) == set(model.state_dict())
    assert all(torch.equal(tensors[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("wrap", [torch.nn.DataParallel, torch.compile], ids=["DataParallel", "compile"])
def test_save_unwraps_parallel_and_compiled_models(model, tmp_path, wrap):
    folder = save_pretrained(wrap(model), tmp_path / "wrapped", label_names=CARD_KWARGS["label_names"])
    assert set(load_file(folder / "model.safetensors")) == set(model.state_dict())  # no module. / _orig_mod.


def test_config_is_timm_hub_format_that_transformers_can_read(saved):
    config = json.loads((saved / "config.json").read_text())
    assert config["architecture"] == ARCH
    assert config["num_classes"] == 3 and config["label_names"] == LABELS
    assert config["num_features"] == 256 and config["global_pool"] == "avg"
    assert config["model_args"]["img_size"] == list(IMG_SIZE)
    assert "num_classes" not in config["model_args"]  # transformers' TimmWrapper passes it again otherwise
    pretrained_cfg = config["pretrained_cfg"]
    assert set(pretrained_cfg) <= {f.name for f in dataclasses.fields(PretrainedCfg)}
    assert pretrained_cfg["input_size"] == [3, *IMG_SIZE]
    for key in ("mean", "std", "crop_pct", "interpolation", "first_conv", "classifier"):
        assert pretrained_cfg[key] is not None, key
    assert pretrained_cfg["classifier"] == "head.fc"
    assert not {"file", "url", "hf_hub_id", "source", "label_names"} & set(pretrained_cfg)
    assert config["hubclf"]["eval_results"] == CARD_KWARGS["eval_results"]  # extra metadata: top level only


def test_model_card_metadata_and_body(saved):
    card = ModelCard.load(saved / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "timm" and data["pipeline_tag"] == "image-classification"
    assert data["license"] == "bsd-3-clause"  # from the torchvision weights' pretrained_cfg
    assert {"image-classification", "timm", "hubclf", ARCH} <= set(data["tags"])
    assert data["datasets"] == ["hubclf-test/flowers"]
    assert "base_model" not in data  # "hubclf_alexnet_slim.tv_in1k" is not a Hub repo: body only
    metrics = {m["type"]: m["value"] for m in data["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"accuracy": 0.75, "top5_accuracy": 1.0}
    body = card.text
    assert "96×64 pixels (H×W)" in body and "backbone was frozen" in body
    assert "hubclf_alexnet_slim.tv_in1k" in body
    for index, name in enumerate(LABELS):
        assert f"| {index} | {name} |" in body
    assert "| lr | 0.001 |" in body and "| epoch | train_loss | val_accuracy |" in body
    assert "| 2 | 0.61 | 0.75 |" in body and "| accuracy | 0.75 |" in body
    assert "## Intended use and limitations" in body
    assert usage_snippet(body).startswith("import hubclf\n")


def test_card_without_optional_inputs_says_so(model, tmp_path):
    save_pretrained(model, tmp_path, label_names=LABELS)
    card = ModelCard.load(tmp_path / "README.md")
    assert "model-index" not in card.data.to_dict()
    assert "No training hyperparameters were recorded" in card.text
    assert "No evaluation results were recorded" in card.text
    assert "**Training:** not recorded" in card.text


def test_card_snippet_runs_as_pasted_for_a_folder(saved):
    printed = run_snippet(usage_snippet((saved / "README.md").read_text()))
    lines = printed.strip().splitlines()
    assert len(lines) == 3 and {line.split(":")[0] for line in lines} == set(LABELS)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(label_names=["a", "b"]), "2 label_names for a model with num_classes=3"),
        (dict(label_names=["a", "a", "b"]), "unique"),
        (dict(label_names=LABELS, hyperparameters={"lr": torch.tensor(1.0)}), "JSON-serialisable"),
        (dict(label_names=LABELS, extra_config={"architecture": "x"}), "may not set"),
    ],
)
def test_save_rejects_bad_input(model, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        save_pretrained(model, tmp_path, **kwargs)
    assert not (tmp_path / "model.safetensors").exists()


# ---- pictures in the folder, the card and the push ---------------------------------------------------------------
@pytest.fixture(scope="module")
def pictured(model, tmp_path_factory) -> Path:
    """A folder saved with both pictures (drawn by hubclf.plots) and a macro-F1 result."""
    from hubclf.plots import model_pictures

    history = [
        {"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "train_top1": 0.4, "val_top1": 0.5},
        {"epoch": 2, "train_loss": 0.6, "val_loss": 0.8, "train_top1": 0.7, "val_top1": 0.75},
    ]
    images, skipped = model_pictures([[3, 1, 0], [0, 2, 0], [1, 0, 1]], LABELS, history)
    assert skipped is None and sorted(images) == ["confusion_matrix.png", "training_curves.png"]
    kwargs = {**CARD_KWARGS, "eval_results": {**CARD_KWARGS["eval_results"], "macro_f1": 0.7}}
    return save_pretrained(model, tmp_path_factory.mktemp("pictured") / "flowers", images=images, **kwargs)


def test_pictures_are_saved_listed_and_shown_in_the_card(pictured):
    assert sorted(p.name for p in pictured.iterdir()) == [
        "README.md", "config.json", "confusion_matrix.png", "model.safetensors", MODELING, "training_curves.png",
    ]  # fmt: skip
    assert json.loads((pictured / "config.json").read_text())["hubclf"]["images"] == [
        "confusion_matrix.png", "training_curves.png",
    ]  # fmt: skip
    card = ModelCard.load(pictured / "README.md")
    assert "![Confusion matrix](confusion_matrix.png)" in card.text
    assert "![Training curves](training_curves.png)" in card.text
    assert "skipped" not in card.text
    metrics = card.data.to_dict()["model-index"][0]["results"][0]["metrics"]
    assert {"type": "f1", "value": 0.7, "name": "macro F1"} in metrics


def test_card_says_why_pictures_were_skipped(model, tmp_path):
    save_pretrained(model, tmp_path, label_names=LABELS, images_skipped="matplotlib is not installed")
    text = (tmp_path / "README.md").read_text()
    assert "plots were skipped: matplotlib is not installed" in text and "](confusion_matrix.png)" not in text


@pytest.mark.parametrize(
    "images,message",
    [({"../x.png": b"\x89PNG\r\n\x1a\n"}, "plain .png file names"), ({"a.png": b"GIF89a"}, "not PNG data")],
)
def test_save_rejects_bad_pictures(model, tmp_path, images, message):
    with pytest.raises(ValueError, match=message):
        save_pretrained(model, tmp_path, label_names=LABELS, images=images)


def test_update_card_rewrites_the_record_and_keeps_the_weights_file(pictured, tmp_path):
    from hubclf.plots import model_pictures

    folder = tmp_path / "flowers"
    shutil.copytree(pictured, folder)
    weights = (folder / "model.safetensors").read_bytes()
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_top1": 0.2 * e} for e in (1, 2, 3)]
    images, _ = model_pictures([[3, 1, 0], [0, 2, 0], [1, 0, 1]], LABELS, history)
    assert images["training_curves.png"] != (folder / "training_curves.png").read_bytes()

    update_card(folder, epoch_metrics=history, images=images)

    assert (folder / "model.safetensors").read_bytes() == weights
    assert (folder / "training_curves.png").read_bytes() == images["training_curves.png"]
    config = json.loads((folder / "config.json").read_text())
    assert [row["epoch"] for row in config["hubclf"]["epoch_metrics"]] == [1, 2, 3]
    assert config["hubclf"]["eval_results"]["macro_f1"] == 0.7  # the rest of the record is kept
    assert "| 3 |" in (folder / "README.md").read_text()
    assert_same_logits(from_pretrained(folder), from_pretrained(pictured))
    assert not list(tmp_path.glob(".flowers.tmp-*"))


def test_update_card_copies_the_weights_where_hard_links_fail(pictured, tmp_path, monkeypatch):
    folder = tmp_path / "flowers"
    shutil.copytree(pictured, folder)

    def no_hard_links(*args, **kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_hard_links)
    update_card(folder, epoch_metrics=[{"epoch": 1, "val_top1": 0.5}], images={})
    assert (folder / "model.safetensors").read_bytes() == (pictured / "model.safetensors").read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors", MODELING]


def test_push_uploads_the_pictures_the_card_shows(use_hub, new_repo_id, pictured, tmp_path):
    repo_id = new_repo_id("pictures")
    push_to_hub(pictured, repo_id, token=use_hub.token)
    api = HfApi(token=use_hub.token)
    assert {"confusion_matrix.png", "training_curves.png", "README.md"} <= set(api.list_repo_files(repo_id))
    for name in ("confusion_matrix.png", "training_curves.png"):
        downloaded = Path(api.hf_hub_download(repo_id, name, cache_dir=tmp_path))
        assert downloaded.read_bytes() == (pictured / name).read_bytes()
    card = ModelCard.load(repo_id)
    assert "![Confusion matrix](confusion_matrix.png)" in card.text
    assert "![Training curves](training_curves.png)" in card.text


def test_push_refuses_a_folder_missing_a_listed_picture(use_hub, new_repo_id, pictured, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in pictured.iterdir():
        if p.name != "training_curves.png":
            (broken / p.name).write_bytes(p.read_bytes())
    requests_before = len(use_hub.requests)
    with pytest.raises(FileNotFoundError, match="no training_curves.png, which config.json lists"):
        push_to_hub(broken, new_repo_id("broken"), token=use_hub.token)
    assert len(use_hub.requests) == requests_before  # checked before any request


# ---- from_pretrained from a folder -----------------------------------------------------------------------------
@pytest.mark.parametrize("spelling", ["path", "str", "local-dir:"])
def test_load_folder_restores_weights_labels_and_input_size(model, saved, spelling):
    name = {"path": saved, "str": str(saved), "local-dir:": f"local-dir:{saved}"}[spelling]
    loaded = from_pretrained(name)
    assert_same_logits(model, loaded)
    assert loaded.label_names == LABELS and loaded.pretrained_cfg["label_names"] == LABELS
    assert tuple(loaded.pretrained_cfg["input_size"]) == (3, *IMG_SIZE)
    assert timm.data.resolve_data_config(model=loaded)["input_size"] == (3, *IMG_SIZE)


def test_a_loaded_model_saves_again_with_its_labels(model, saved, tmp_path):
    again = save_pretrained(from_pretrained(saved), tmp_path / "again")
    assert json.loads((again / "config.json").read_text())["label_names"] == LABELS
    assert_same_logits(model, from_pretrained(again))


def test_timm_local_dir_gives_identical_logits(model, saved):
    assert_same_logits(model, timm.create_model(f"local-dir:{saved}", pretrained=True))


def test_num_classes_reheads_and_keeps_the_backbone(model, saved):
    loaded = from_pretrained(saved, num_classes=5)
    assert loaded.num_classes == 5 and loaded.get_classifier().out_features == 5
    assert loaded.label_names is None and "label_names" not in loaded.pretrained_cfg
    backbone = {k: v for k, v in model.state_dict().items() if not k.startswith("head.fc.")}
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in backbone.items())
    assert logits(loaded).shape == (2, 5)


def test_tampered_weights_give_an_error_listing_the_tensors(saved, tmp_path):
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for name in ("config.json", "README.md"):
        (tampered / name).write_bytes((saved / name).read_bytes())
    tensors = load_file(saved / "model.safetensors")
    tensors["features.3.bias"] = torch.zeros(7)  # wrong shape (a wrong head shape is refused earlier, from the header)
    del tensors["features.0.bias"]
    tensors["features.99.weight"] = torch.zeros(1)
    save_file(tensors, tampered / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError) as error:  # hubclf.config_check.ConfigError, from the header: nothing was built
        from_pretrained(tampered)
    message = str(error.value)
    assert "features.3.bias: file (7,) vs model (192,)" in message
    assert "features.0.bias" in message and "features.99.weight" in message and "nothing was built" in message


@pytest.mark.parametrize(
    "architecture,message",
    [
        ("mystery_net", r"'mystery_net', which is not registered with timm: timm .* does not know it.*`import hubclf`"),
        ("hubclf_alexnet_v2", r"not one of the architectures this hubclf .* registers.*needs a newer hubclf"),
    ],
)
def test_unknown_architecture_is_explained(saved, tmp_path, architecture, message):
    for name in ("model.safetensors", "README.md"):
        (tmp_path / name).write_bytes((saved / name).read_bytes())
    config = json.loads((saved / "config.json").read_text())
    config["architecture"] = architecture
    if not architecture.startswith("hubclf_"):
        del config["auto_map"]  # hubclf writes it for its own architectures only (config_check refuses it elsewhere)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        from_pretrained(tmp_path)


def test_invalid_config_is_explained(saved, tmp_path):
    (tmp_path / "model.safetensors").write_bytes((saved / "model.safetensors").read_bytes())
    config = json.loads((saved / "config.json").read_text())
    config["pretrained_cfg"]["input_size"] = [96, 64]
    config["pretrained_cfg"]["dataset"] = "flowers"
    config["model_args"]["num_classes"] = 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"input_size must be \[C, H, W\].*'dataset'.*num_classes"):
        from_pretrained(tmp_path)


def test_pickle_only_folder_is_refused(saved, tmp_path):
    (tmp_path / "config.json").write_bytes((saved / "config.json").read_bytes())
    torch.save(load_file(saved / "model.safetensors"), tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"no model.safetensors.*pytorch_model.bin.*arbitrary code"):
        from_pretrained(tmp_path)


def test_transformers_pipeline_from_a_folder(saved):
    pytest.importorskip("transformers")
    from PIL import Image
    from transformers import pipeline

    classifier = pipeline("image-classification", model=str(saved))
    predictions = classifier(Image.new("RGB", IMG_SIZE[::-1], "gray"))
    assert {p["label"] for p in predictions} == set(LABELS)


# ---- push_to_hub / from_pretrained over HTTP (tests/hubserver.py) --------------------------------------------
def test_push_is_one_commit_and_loads_three_ways(use_hub, new_repo_id, model, caplog):
    hub = use_hub
    repo_id = new_repo_id("push")
    caplog.set_level(logging.DEBUG)
    url = push_to_hub(model, repo_id, token=hub.token, verify=True, **CARD_KWARGS)
    assert "verified" in caplog.text and hub.token not in caplog.text

    api = HfApi(token=hub.token)
    sha = url.rstrip("/").split("/")[-1]
    assert url.endswith(f"{repo_id}/commit/{sha}")
    assert sorted(api.list_repo_files(repo_id)) == [
        ".gitattributes", "README.md", "config.json", "model.safetensors", MODELING,
    ]  # fmt: skip
    commits = api.list_repo_commits(repo_id)
    assert commits[0].commit_id == sha and len(commits) == 2  # the repo's initial commit + exactly one upload

    loaded = from_pretrained(repo_id)
    assert_same_logits(model, loaded)
    assert loaded.label_names == LABELS and loaded.pretrained_cfg["hf_hub_id"] == repo_id
    assert tuple(loaded.pretrained_cfg["input_size"]) == (3, *IMG_SIZE)
    assert_same_logits(model, from_pretrained(f"hf-hub:{repo_id}"))
    via_timm = timm.create_model(f"hf-hub:{repo_id}", pretrained=True)
    assert_same_logits(model, via_timm)
    assert via_timm.pretrained_cfg["label_names"] == LABELS


def test_pushed_card_snippet_runs_as_pasted(use_hub, new_repo_id, saved):
    repo_id = new_repo_id("card")
    push_to_hub(saved, repo_id, token=use_hub.token)
    card = ModelCard.load(repo_id)
    assert f'hubclf.from_pretrained("{repo_id}")' in card.text and str(saved) not in card.text
    assert card.data.to_dict()["model-index"][0]["name"] == repo_id  # the model's name, never a folder's
    lines = run_snippet(usage_snippet(card.text)).strip().splitlines()
    assert {line.split(":")[0] for line in lines} == set(LABELS)


def test_token_is_in_no_pushed_file_and_no_request_but_auth(use_hub, new_repo_id, saved):
    hub = use_hub
    repo_id = new_repo_id("secret")
    push_to_hub(saved, repo_id, token=hub.token, private=True, verify=True)
    assert HfApi(token=hub.token).model_info(repo_id).private
    snapshot = Path(snapshot_download(repo_id, token=hub.token))
    for path in snapshot.rglob("*"):
        if path.is_file():
            assert hub.token.encode() not in path.read_bytes(), path.name
    assert hub.find_secret(hub.token) == []  # every git/LFS object, request path, header and body


def test_second_push_and_loading_by_revision(use_hub, new_repo_id, saved):
    hub = use_hub
    repo_id = new_repo_id("revisions")
    first_url = push_to_hub(saved, repo_id, token=hub.token, commit_message="first")
    retrained = make_model(seed=1)
    second_url = push_to_hub(retrained, repo_id, token=hub.token, label_names=LABELS)
    first_sha, second_sha = first_url.split("/")[-1], second_url.split("/")[-1]
    assert first_sha != second_sha

    assert_same_logits(from_pretrained(saved), from_pretrained(repo_id, revision=first_sha))
    assert_same_logits(retrained, from_pretrained(repo_id))
    assert_same_logits(retrained, from_pretrained(f"hf-hub:{repo_id}@{second_sha}"))

    # a named branch, created on the fly, and the main branch left alone
    push_to_hub(saved, repo_id, token=hub.token, revision="v1")
    assert_same_logits(from_pretrained(saved), from_pretrained(repo_id, revision="v1"))
    assert_same_logits(retrained, from_pretrained(repo_id, revision="main"))


def test_second_load_works_offline_from_the_cache(use_hub, new_repo_id, saved, monkeypatch):
    hub = use_hub
    repo_id = new_repo_id("offline")
    push_to_hub(saved, repo_id, token=hub.token)
    online = from_pretrained(repo_id)

    set_hub_offline(monkeypatch)
    requests_before = len(hub.requests)
    offline = from_pretrained(repo_id)
    assert len(hub.requests) == requests_before  # served from the cache, not the server
    assert_same_logits(online, offline)
    assert offline.label_names == LABELS


def test_failed_push_keeps_the_local_save_and_says_why(use_hub, new_repo_id, saved, caplog):
    repo_id = new_repo_id("denied")
    before = file_digests(saved)
    bad_token = "hf_" + "0" * 32
    caplog.set_level(logging.DEBUG)
    with pytest.raises(
        RuntimeError,
        match=rf"push to {repo_id} failed \(the local save .* is unchanged\): .*401.*Nothing was written to the Hub",
    ) as error:
        push_to_hub(saved, repo_id, token=bad_token)
    assert bad_token not in str(error.value) and bad_token not in caplog.text
    assert file_digests(saved) == before
    assert not HfApi(token=use_hub.token).repo_exists(repo_id)


def test_pickle_only_repo_is_refused(use_hub, new_repo_id, saved, tmp_path):
    repo_id = new_repo_id("pickle")
    api = HfApi(token=use_hub.token)
    api.create_repo(repo_id)
    torch.save(load_file(saved / "model.safetensors"), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_bytes((saved / "config.json").read_bytes())
    api.upload_folder(repo_id=repo_id, folder_path=tmp_path)
    with pytest.raises(ValueError, match=r"no model.safetensors.*\['pytorch_model.bin'\].*arbitrary code"):
        from_pretrained(repo_id)


def test_push_uses_the_login_cache_when_no_token_is_given(use_hub, new_repo_id, saved, tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text(use_hub.token)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(token_file))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    repo_id = new_repo_id("login")
    push_to_hub(saved, repo_id)
    assert HfApi(token=use_hub.token).file_exists(repo_id, "model.safetensors")


def test_cli_push_verifies_by_default(use_hub, new_repo_id, saved, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", use_hub.token)
    repo_id = new_repo_id("cli")
    assert main(["push", str(saved), repo_id, "--private", "--message", "from the CLI"]) == 0
    captured = capsys.readouterr()
    assert f"{repo_id}/commit/" in captured.out
    assert "verified" in captured.err and use_hub.token not in captured.out + captured.err
    api = HfApi(token=use_hub.token)
    assert api.model_info(repo_id).private and api.list_repo_commits(repo_id)[0].title == "from the CLI"

    assert main(["push", str(saved), repo_id, "--create-pr", "--no-verify"]) == 0
    assert "verified" not in capsys.readouterr().err
    monkeypatch.delenv("HF_TOKEN")
    assert main(["push", str(saved / "missing"), repo_id]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_transformers_pipeline_from_the_hub(use_hub, new_repo_id, saved):
    pytest.importorskip("transformers")
    from PIL import Image
    from transformers import pipeline

    repo_id = new_repo_id("pipeline")
    push_to_hub(saved, repo_id, token=use_hub.token)
    classifier = pipeline("image-classification", model=repo_id)
    predictions = classifier(Image.new("RGB", IMG_SIZE[::-1], "gray"))
    assert {p["label"] for p in predictions} == set(LABELS)
    # same scores as hubclf's own preprocessing + model
    model = from_pretrained(repo_id)
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    with torch.inference_mode():
        probabilities = model.eval()(transform(Image.new("RGB", IMG_SIZE[::-1], "gray")).unsqueeze(0)).softmax(-1)[0]
    for p in predictions:
        assert p["score"] == pytest.approx(probabilities[LABELS.index(p["label"])].item(), abs=1e-5)


def test_verify_reports_a_mismatch(use_hub, new_repo_id, saved):
    repo_id = new_repo_id("verify")
    sha = push_to_hub(saved, repo_id, token=use_hub.token).split("/")[-1]
    assert verify_push(from_pretrained(saved), repo_id, sha).ok
    result = verify_push(make_model(seed=1), repo_id, sha)
    assert not result.ok and result.max_abs_diff > result.tolerance
    assert str(result).startswith(f"MISMATCH: {repo_id}@{sha[:12]}")


# ---- an independent server: olah 0.5.4 serving what push_to_hub produced ---------------------------------------
def test_olah_serves_the_pushed_repo(use_hub, olah_server, new_repo_id, saved, monkeypatch, tmp_path):
    repo_id = new_repo_id("olah")
    sha = push_to_hub(saved, repo_id, token=use_hub.token).split("/")[-1]
    # From here on every client reads from olah (read-only, offline mirror of the same git repos), with a cache of
    # its own so no file comes from what the push left in the session cache.
    point_hub_clients_at(monkeypatch, olah_server.endpoint)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "olah-cache"))
    requests_before = len(use_hub.requests)

    assert HfApi().model_info(repo_id, revision="main").sha == sha  # olah needs an explicit revision here
    reference = from_pretrained(saved)
    loaded = from_pretrained(repo_id, revision=sha)
    assert_same_logits(reference, loaded)
    assert loaded.label_names == LABELS
    assert_same_logits(reference, from_pretrained(f"hf-hub:{repo_id}"))
    assert_same_logits(reference, timm.create_model(f"hf-hub:{repo_id}", pretrained=True))
    assert len(use_hub.requests) == requests_before  # all of it came through olah


# ---- the live Hub ---------------------------------------------------------------------------------------------
@pytest.mark.live
@pytest.mark.skipif(
    not os.environ.get("HUBCLF_LIVE_HUB_TOKEN"), reason="set HUBCLF_LIVE_HUB_TOKEN to push to huggingface.co"
)
def test_live_hub_private_push_load_delete(model):
    token = os.environ["HUBCLF_LIVE_HUB_TOKEN"]
    api = HfApi(token=token)
    repo_id = f"{api.whoami()['name']}/hubclf-live-test-{uuid.uuid4().hex[:8]}"
    try:
        push_to_hub(model, repo_id, token=token, private=True, verify=True, **CARD_KWARGS)
        assert api.model_info(repo_id).private
        loaded = from_pretrained(repo_id, token=token)
        assert_same_logits(model, loaded)
        assert loaded.label_names == LABELS
    finally:
        api.delete_repo(repo_id, missing_ok=True)


# ---- save => reload ----------------------------------------------------------------------------------------------
def test_a_config_from_pretrained_would_refuse_is_never_saved(tmp_path):
    """5,000 labels of 220 characters saved fine, and then neither from_pretrained nor push read the 1.1 MB
    config.json back."""
    from hubclf.hub import check_saveable

    names = [f"{i:05d}" + "x" * 215 for i in range(5000)]
    headless = timm.create_model("hubclf_alexnet_slim", num_classes=5000, pretrained=False)
    with pytest.raises(ValueError, match=r"config.json for .*big would be 1,1\d\d,\d{3} bytes, over the 1,048,576"):
        save_pretrained(headless, tmp_path / "big", label_names=names)
    assert not (tmp_path / "big").exists()
    with pytest.raises(ValueError, match=r"the 5,000 class names take 1,140,004 bytes of config.json.*never load back"):
        check_saveable(names, epochs=5)
    with pytest.raises(ValueError, match=r"^100,001 classes: a saved model may have at most 100,000"):
        check_saveable([str(i) for i in range(100_001)])
    with pytest.raises(ValueError, match="at most 256 characters"):
        check_saveable(["a" * 257, "b"])
    check_saveable(names[:3000], epochs=100)  # 0.7 MB of names: room for the rest
    # Non-ASCII names are written escaped ("\u00e9"): six bytes a character, counted as written.
    with pytest.raises(ValueError, match="the 700 class names take"):
        check_saveable([f"{i:03d}" + "é" * 250 for i in range(700)])
