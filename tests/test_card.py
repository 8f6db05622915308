"""hubclf.card: the model card says what happened (starting weights, freezing, licence, how many images each number
is measured on, skipped images), names the model, shows the three ways to load it first, and escapes text from others.

Two real runs on a tiny colour task (96×64) give the cards: one from random weights with a frozen backbone and three
unreadable files, one from a weights file with a frozen backbone. The rest renders hand-made config.json records.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import re
from pathlib import Path

import pytest
import yaml

from hubclf.card import render_model_card
from hubclf.cli import main
from tests.image_folders import add_bad_images, make_image_folder
from tests.test_train_loop import pretrained_stand_in

ARGS = ["--model", "hubclf_alexnet_slim", "--img-size", "96", "64", "--epochs", "1", "--batch-size", "8",
        "--num-workers", "0", "--warmup-epochs", "0", "--freeze", "backbone", "--lr", "0.01"]  # fmt: skip


def front_matter(text: str) -> dict:
    return yaml.safe_load(re.match(r"---\n(.*?)\n---\n", text, re.S).group(1))


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("colours")
    make_image_folder(root, 3, per_class=6, split="train")
    make_image_folder(root, 3, per_class=3, split="validation", seed=1)
    add_bad_images(root / "validation" / "class_0")
    return root


@pytest.fixture(scope="module")
def scratch_run(colours, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scratch") / "out"
    assert main(["train", "--data", str(colours), "--output-dir", str(out), "--no-pretrained", *ARGS]) == 0
    return out


@pytest.fixture(scope="module")
def weights_run(colours, tmp_path_factory) -> Path:
    weights = pretrained_stand_in("hubclf_alexnet_slim", tmp_path_factory.mktemp("w") / "alexnet_slim.safetensors")
    out = tmp_path_factory.mktemp("frozen") / "out"
    assert main(["train", "--data", str(colours), "--output-dir", str(out), "--weights", str(weights), *ARGS]) == 0
    return out


# ---- provenance: from what happened -------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_no_pretrained_run_says_random_initialisation_and_inherits_no_licence(scratch_run):
    text = (scratch_run / "best" / "README.md").read_text()
    assert "transfer learning" not in text.replace("no transfer learning", "")  # was "made by transfer learning"
    assert "pretrained backbone" not in text  # was "the pretrained backbone was frozen" under --no-pretrained
    assert "trained from random initialisation" in text and "**Starting weights:** none: random initialisation" in text
    assert "on a frozen randomly initialised backbone (random features)" in text
    meta = front_matter(text)
    assert meta["license"] == "unknown" and "transfer-learning" not in meta["tags"]  # was bsd-3-clause, torchvision's
    saved = json.loads((scratch_run / "best" / "config.json").read_text())
    assert not {"tag", "license", "origin_url"} & set(saved["pretrained_cfg"])  # was tv_in1k, torchvision's origin
    assert saved["provenance"]["init"] == "random" and saved["provenance"]["license"] is None


@pytest.mark.slow
def test_every_metric_says_how_many_images_and_skipped_images_are_counted(scratch_run):
    text = (scratch_run / "best" / "README.md").read_text()
    provenance = json.loads((scratch_run / "best" / "config.json").read_text())["provenance"]
    assert provenance["images_scored"] == 9 and provenance["unreadable_images"] == 3
    accuracy = json.loads((scratch_run / "best" / "config.json").read_text())["hubclf"]["eval_results"]["accuracy"]
    assert f"| {round(accuracy * 9)} of 9 right |" in text  # was a bare "accuracy 0.333"
    assert re.search(r"\| loss \| [0-9.]+ \| 9 \|", text)
    assert "**Unreadable images:** 3 skipped: neither trained on nor scored" in text
    assert ": 18 training images, 12 validation images" in text


@pytest.mark.slow
def test_a_local_card_is_titled_by_what_the_model_is_never_by_its_folder(scratch_run, colours):
    for folder in ("best", "final"):
        text = (scratch_run / folder / "README.md").read_text()
        name = f"hubclf_alexnet_slim on {colours.name}"
        assert text.split("\n# ", 1)[1].splitlines()[0] == name  # was "# best"
        assert front_matter(text)["model-index"][0]["name"] == name  # was "best"


@pytest.mark.slow
def test_a_frozen_run_from_loaded_weights_says_pretrained_backbone(weights_run):
    text = (weights_run / "best" / "README.md").read_text()
    assert "feature extraction: the pretrained backbone was frozen and only the new classifier trained" in text
    assert "made by transfer learning, feature extraction on the weights file `alexnet_slim.safetensors`" in text
    # The weights came from a file: timm's default weights' licence and origin describe other weights.
    assert front_matter(text)["license"] == "unknown" and "torchvision" not in text and "tv_in1k" not in text


def test_pretrained_weights_give_their_tag_origin_and_licence():
    origin = "https://github.com/pytorch/vision"
    weights = {"init": "pretrained", "weights": "hubclf_alexnet_slim.tv_in1k", "origin_url": origin}
    config = record(provenance={**weights, "license": "bsd-3-clause"})
    text = str(render_model_card(config, "me/flowers"))
    assert front_matter(text)["license"] == "bsd-3-clause" and "transfer-learning" in front_matter(text)["tags"]
    assert "the pretrained weights `hubclf_alexnet_slim.tv_in1k` (from https://github.com/pytorch/vision)" in text
    assert "**License:** bsd-3-clause, the licence of the starting weights" in text


def test_staged_unfreezing_is_not_called_a_frozen_backbone():
    config = record(freeze="backbone", hyperparameters={"unfreeze_after": 2},
                    provenance={"init": "pretrained", "weights": "w"})  # fmt: skip
    text = str(render_model_card(config, "me/flowers"))
    assert "the new classifier alone for 2 epoch(s) on the frozen pretrained backbone, then every layer" in text
    assert "feature extraction" not in text


# ---- "Use it" first: the three ways to load --------------------------------------------------------------------------
def test_use_it_comes_first_with_pip_install_and_the_three_loaders():
    text = str(render_model_card(record(), "me/flowers"))
    body = text.split("\n---\n", 1)[1]
    headings = re.findall(r"^## (.*)$", body, re.M)
    assert headings[0] == "Use it"
    use_it = body.split("## Use it", 1)[1].split("\n## ", 1)[0]
    assert use_it.index("pip install hubclf") < use_it.index("hubclf.from_pretrained(")
    blocks = python_blocks(use_it)
    assert [b.splitlines()[0] for b in blocks] == ["import hubclf", "import hubclf  # registers the hubclf_* "
                                                   "architectures with timm", "from transformers import pipeline"]
    assert 'timm.create_model("hf-hub:me/flowers", pretrained=True)' in blocks[1]
    assert 'pipeline("image-classification", model="me/flowers", trust_remote_code=True)' in blocks[2]
    assert "`import hubclf` must come first" in use_it and "load with timm alone" in use_it
    assert "a regular [timm]" not in text  # it is not, for timm alone


def test_without_auto_map_transformers_is_not_offered_remote_code():
    config = record()
    del config["auto_map"]
    text = str(render_model_card(config, "me/flowers"))
    assert "trust_remote_code" not in text and "needs `import hubclf` before" in text


def test_a_timm_architecture_loads_without_hubclf():
    config = record(architecture="resnet18")
    del config["auto_map"]
    blocks = python_blocks(str(render_model_card(config, "me/flowers")))
    assert blocks[1] == 'import timm\n\nmodel = timm.create_model("hf-hub:me/flowers", pretrained=True)\n'
    assert "import hubclf" not in blocks[2] and "trust_remote_code" not in blocks[2]


def test_the_card_links_only_to_where_hubclf_really_lives(monkeypatch):
    assert "github.com/hubclf" not in str(render_model_card(record(), "me/flowers"))

    class Metadata:
        def get_all(self, name):
            return ["Bug Tracker, https://example.org/issues", "Documentation, https://example.org/docs"]

    monkeypatch.setattr(importlib.metadata, "metadata", lambda name: Metadata())
    assert "[hubclf](https://example.org/docs)" in str(render_model_card(record(), "me/flowers"))


def test_a_pushed_card_is_named_by_its_repo_id():
    text = str(render_model_card(record(), "me/flowers"))
    assert front_matter(text)["model-index"][0]["name"] == "me/flowers" and "\n# me/flowers\n" in text


# ---- text from others is escaped ------------------------------------------------------------------------------------
def test_labels_dataset_and_licence_from_others_cannot_break_the_card():
    hostile = "MIT\n---\nlicense: apache-2.0\n<img src=x onerror=alert(1)> **bold**"
    config = record(
        labels=["a|b", "<script>alert(1)</script>", "*x*"],
        dataset="[click](http://evil) (local image folder)",
        provenance={"init": "saved model", "weights": "me/base`x", "license": hostile},
    )
    text = str(render_model_card(config, "/models/flowers"))
    meta = front_matter(text)
    assert meta["license"] == "other"  # the YAML header holds an id, never prose
    assert set(meta) == {"library_name", "license", "pipeline_tag", "tags", "model-index"}
    body = text.split("\n---\n", 1)[1]
    assert not re.search(r"(?<!\\)<(script|img)|(?<!\\)\]\(http://evil", body)  # all escaped: shown, not run
    rows = [line for line in text.splitlines() if re.match(r"\| [0-9] \|", line)]
    assert [len(re.findall(r"(?<!\\)\|", row)) for row in rows] == [3, 3, 3]  # "a|b" stays in its cell
    assert "**License:** other; the starting weights state: MIT --- license: apache-2.0 \\<img" in text
    assert "`me/base'x`" in text  # a backtick cannot close the code span


def record(**changes) -> dict:
    """A config.json as hubclf train writes it, with ``changes`` (labels, dataset, freeze, provenance...)."""
    config = copy.deepcopy(_RECORD)
    for key in ("architecture", "provenance"):
        if key in changes:
            config[key] = changes.pop(key)
    if "labels" in changes:
        config["label_names"] = changes.pop("labels")
        config["num_classes"] = len(config["label_names"])
    config["hubclf"].update(changes)
    return config


_RECORD = {
    "architecture": "hubclf_alexnet_slim",
    "num_classes": 3,
    "num_features": 256,
    "global_pool": "avg",
    "label_names": ["daisy", "rose", "tulip"],
    "pretrained_cfg": {"input_size": [3, 448, 224], "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 0.875,
                       "interpolation": "bilinear", "license": "bsd-3-clause"},  # fmt: skip
    "auto_map": {"AutoModelForImageClassification": "modeling_hubclf.TimmWrapperForImageClassification"},
    "provenance": {"init": "random", "train_images": 30, "eval_images": 12, "images_scored": 12,
                   "unreadable_images": 0},  # fmt: skip
    "hubclf": {"dataset": "flowers (local image folder)", "freeze": "none", "eval_results": {"accuracy": 0.75},
               "hyperparameters": {"lr": 0.001}},  # fmt: skip
}

