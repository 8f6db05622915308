"""hubclf.train.strategy: the decision statistics, ``--strategy head|finetune|staged`` as freeze settings, and
``--strategy auto`` on two constructed tasks whose answer is known:

* colours: classes differ in mean colour and the (random, He-initialised) "pretrained" backbone sees colour, so its
  frozen features already separate them: auto must keep the head;
* colour-blind: the same kind of classes (three hues of equal brightness), but the backbone's first convolution
  was made colour-blind (it only sums the normalised channels), so frozen features cannot tell the classes apart
  and only training the backbone can: auto must fine-tune.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import hubclf
from hubclf.cli.train_flags import add_train_arguments, config_from_args
from hubclf.stats import mcnemar_p_value, wilson_interval
from hubclf.train import TrainConfig, TrainingInterrupted, train
from hubclf.train.strategy import ALPHA, decide
from tests.launch import cpu_launch_command

loop = importlib.import_module("hubclf.train.loop")
REPO_ROOT = Path(__file__).resolve().parents[1]
SIZE = 64
HUES = [(200, 60, 60), (60, 200, 60), (60, 60, 200)]  # one brightness: only colour tells them apart


# ---- statistics -------------------------------------------------------------------------------------------------
def test_wilson_interval_matches_the_textbook_values():
    low, high = wilson_interval(18, 20)
    assert (round(low, 3), round(high, 3)) == (0.699, 0.972)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(10, 10)[0] == pytest.approx(0.7225, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_mcnemar_p_value_is_the_exact_binomial_tail():
    assert mcnemar_p_value(0, 5) == 1 / 32
    assert mcnemar_p_value(3, 3) == 42 / 64  # P(X >= 3), X ~ Binomial(6, 1/2)
    assert mcnemar_p_value(5, 0) == 1.0  # B never better: no evidence at all
    assert mcnemar_p_value(0, 0) == 1.0
    with pytest.raises(ValueError):
        mcnemar_p_value(-1, 2)


def test_decide_keeps_the_head_unless_fine_tuning_is_significantly_better():
    head = [True] * 10 + [False] * 10
    clear = decide(head, [True] * 19 + [False])  # 9 fixed, 0 broken: p = 1/512
    assert clear.choice == "finetune" and clear.p_value < ALPHA
    assert (clear.head_only, clear.probe_only, clear.num_images) == (0, 9, 20)
    assert "McNemar" in clear.reason and "9" in clear.reason

    small = decide([True] * 9 + [False], [True] * 10)  # one fix could be luck
    assert small.choice == "head" and small.p_value == 0.5
    assert "chance" in small.reason

    worse = decide([True] * 10, [True] * 5 + [False] * 5)
    assert worse.choice == "head" and "did not help" in worse.reason
    assert worse.head_interval[0] < worse.head_top1 == 1.0
    with pytest.raises(ValueError):
        decide([True], [True, False])
    with pytest.raises(ValueError):
        decide([], [])


# ---- --strategy as freeze settings ------------------------------------------------------------------------------
def config(**overrides) -> TrainConfig:
    return TrainConfig(**{"model": "hubclf_alexnet_slim", "data": "d", "output_dir": "o", **overrides})


def test_named_strategies_are_freeze_settings():
    assert (config(strategy="head").freeze, config(strategy="head").unfreeze_after) == ("backbone", None)
    assert (config(strategy="finetune").freeze, config(strategy="finetune").unfreeze_after) == ("none", None)
    assert config(strategy="staged", epochs=8).unfreeze_after == 2  # a quarter of the epochs
    assert config(strategy="staged", epochs=3).unfreeze_after == 1
    assert config().freeze == "none" and config().strategy is None  # without --strategy: as before
    with pytest.raises(ValueError, match="at least 2 epochs"):
        config(strategy="staged", epochs=1)
    with pytest.raises(ValueError, match="sets the freezing itself"):
        config(strategy="finetune", freeze="backbone")
    with pytest.raises(ValueError, match="sets the freezing itself"):
        config(strategy="auto", freeze="features.5")
    with pytest.raises(ValueError, match="strategy must be one of"):
        config(strategy="magic")

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--model", "m", "--data", "d", "--output-dir", "o", "--strategy", "staged"])
    assert config_from_args(args).unfreeze_after == 1
    with pytest.raises(SystemExit):
        parser.parse_args(["--strategy", "sometimes"])


# ---- --strategy auto on tasks with a known answer ---------------------------------------------------------------
def make_hue_folder(root: Path, per_class: int, split: str, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for c, colour in enumerate(HUES):
        folder = root / split / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour)[None, None] + rng.normal(0, 30, (SIZE, SIZE, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


def make_backbone(path: Path, colour_blind: bool) -> Path:
    """A seeded He-initialised slim AlexNet backbone. Colour-blind: the first convolution's weights are the same for
    the three normalised channels up to their std, so it computes one kernel over R+G+B (brightness) only."""
    torch.manual_seed(0)
    model = timm.create_model("hubclf_alexnet_slim", num_classes=0)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    if colour_blind:
        std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
        model.features[0].weight.data = model.features[0].weight.data[:, :1] * std / std.mean()
    save_file(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def hues(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hues")
    make_hue_folder(root, 40, "train", seed=0)
    return make_hue_folder(root, 10, "validation", seed=1)


@pytest.fixture(scope="module")
def sees_colour(tmp_path_factory) -> Path:
    return make_backbone(tmp_path_factory.mktemp("colour") / "backbone.safetensors", colour_blind=False)


@pytest.fixture(scope="module")
def colour_blind(tmp_path_factory) -> Path:
    return make_backbone(tmp_path_factory.mktemp("blind") / "backbone.safetensors", colour_blind=True)


def auto_config(output_dir: Path, data: Path, weights: Path, **overrides) -> TrainConfig:
    settings = dict(
        model="hubclf_alexnet_slim", data=str(data), output_dir=str(output_dir), weights=str(weights),
        img_size=(SIZE, SIZE), strategy="auto", epochs=2, batch_size=8, lr=3e-3, backbone_lr_scale=1.0,
        augment=False, crop_pct=1.0, num_workers=0, seed=0,
    )  # fmt: skip
    return TrainConfig(**{**settings, **overrides})


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_auto_keeps_the_head_when_the_frozen_features_already_separate_the_classes(tmp_path, hues, sees_colour):
    result = train(auto_config(tmp_path / "out", hues, sees_colour))

    decision = result.strategy
    assert decision["choice"] == "head", decision["reason"]
    assert decision["num_images"] == 30 and decision["head_top1"] == 1.0
    assert result.best_metrics["top1"] == 1.0

    records = read_jsonl(tmp_path / "out" / "metrics.jsonl")
    assert records[-1]["event"] == "strategy" and records[-1]["choice"] == "head"
    phases = [r["phase"] for r in records[:-1]]
    assert phases[-4:] == ["head", "head", "head_probe", "finetune_probe"]
    assert sorted(set(phases[:-4])) == sorted({"head_lr_0.003", "head_lr_0.009", "head_lr_0.03"} - {
        f"head_lr_{records[-1]['head_lr']:.3g}"})  # the two head LRs not chosen  # fmt: skip
    assert not (tmp_path / "out" / "phases" / "finetune").exists()  # the loser is not trained further
    extracted = list((tmp_path / "out" / "phases" / "feature_cache").glob("*/manifest.json"))
    assert len(extracted) == 2  # train + eval features, extracted once for the three head LRs

    saved = json.loads((result.best_model_dir / "config.json").read_text())
    assert saved["hubclf"]["freeze"] == "backbone"
    assert saved["hubclf"]["hyperparameters"]["strategy"] == "auto -> head"
    assert saved["hubclf"]["hyperparameters"]["epochs"] == "head 3 (cached features)"  # 2 + the 1-epoch probe
    assert saved["hubclf"]["base_model"] == "hubclf_alexnet_slim (backbone.safetensors)"  # not the phase folder
    assert saved["hubclf"]["trainable_params"] < saved["hubclf"]["total_params"]
    card = (result.best_model_dir / "README.md").read_text()
    assert "## Why this strategy" in card and "chose **the frozen backbone**" in card
    assert decision["reason"] in card
    assert str(result.best_model_dir.resolve()) in card and ".partial" not in card
    assert hubclf.from_pretrained(result.best_model_dir).label_names == ["class_0", "class_1", "class_2"]

    # A plain run's card has no such section.
    plain = train(auto_config(tmp_path / "plain", hues, sees_colour, strategy="head", epochs=1))
    assert "Why this strategy" not in (plain.best_model_dir / "README.md").read_text()
    with pytest.raises(ValueError, match="already holds a training run"):
        train(auto_config(tmp_path / "out", hues, sees_colour))


def test_auto_fine_tunes_when_the_backbone_lacks_the_feature(tmp_path, hues, colour_blind):
    result = train(auto_config(tmp_path / "out", hues, colour_blind))

    decision = result.strategy
    assert decision["choice"] == "finetune", decision["reason"]
    # chance is 1/3; one probe epoch reached 67-100% over seeds 0-4, the finished run 100%
    assert decision["head_top1"] < 0.5 and decision["probe_top1"] > decision["head_top1"] + 0.25
    assert decision["p_value"] < ALPHA and decision["probe_only"] > decision["head_only"]
    records = read_jsonl(tmp_path / "out" / "metrics.jsonl")
    phases = [r["phase"] for r in records[:-1]]
    assert phases[-5:] == ["head", "head", "head_probe", "finetune_probe", "finetune"]
    assert result.best_metrics["top1"] > 0.8

    saved = json.loads((result.best_model_dir / "config.json").read_text())
    assert saved["hubclf"]["freeze"] == "none"
    assert saved["hubclf"]["hyperparameters"]["epochs"] == "head 2, then whole network 2"
    assert saved["strategy"]["rows"][-1][0] == "fine-tuning, continued"
    card = (result.best_model_dir / "README.md").read_text()
    assert "chose **fine-tuning**" in card and "McNemar" in card
    # The backbone really changed: the colour-blind first convolution learnt colour.
    start, tuned = load_file(colour_blind), load_file(result.best_model_dir / "model.safetensors")
    assert not torch.equal(start["features.0.weight"], tuned["features.0.weight"])


@pytest.mark.slow
def test_auto_resumes_in_the_middle_of_the_probe_exactly(tmp_path, hues, colour_blind, monkeypatch):
    reference = train(auto_config(tmp_path / "reference", hues, colour_blind, save_every_steps=4))

    original = loop.save_checkpoint

    def interrupt_in_the_probe(accelerator, output_dir, state, keep, **saved_with):
        path = original(accelerator, output_dir, state, keep, **saved_with)
        if Path(output_dir).name == "finetune_probe" and state.batches_done == 4:  # mid-epoch (15 batches)
            signal.raise_signal(signal.SIGINT)
        return path

    config = auto_config(tmp_path / "resumed", hues, colour_blind, save_every_steps=4)
    with monkeypatch.context() as patch:
        patch.setattr(loop, "save_checkpoint", interrupt_in_the_probe)
        with pytest.raises(TrainingInterrupted) as stopped:
            train(config)
    assert "finetune_probe" in str(stopped.value.checkpoint)
    assert not (tmp_path / "resumed" / "strategy.json").exists()  # stopped before deciding
    with pytest.raises(ValueError, match="--resume latest"):
        train(config)

    config.resume = "latest"
    resumed = train(config)
    assert resumed.strategy == reference.strategy
    expected, actual = load_file(reference.final_model_dir / "model.safetensors"), load_file(
        resumed.final_model_dir / "model.safetensors"
    )
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    assert strip(read_jsonl(resumed.metrics_file)) == strip(read_jsonl(reference.metrics_file))


@pytest.mark.slow
def test_auto_under_two_processes_decides_once_and_pushes_once(tmp_path, hues, sees_colour, use_hub, new_repo_id):
    repo_id = new_repo_id("auto")
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "HF_TOKEN": use_hub.token,
        "HF_ENDPOINT": use_hub.endpoint, "HF_HUB_DISABLE_XET": "1",
    }  # fmt: skip
    command = [
        *cpu_launch_command(2), "-m", "hubclf.cli", "train", "--model", "hubclf_alexnet_slim", "--data", str(hues),
        "--weights", str(sees_colour), "--img-size", str(SIZE), str(SIZE), "--strategy", "auto", "--epochs", "2",
        "--batch-size", "4", "--lr", "3e-3", "--backbone-lr-scale", "1", "--no-augment", "--crop-pct", "1",
        "--num-workers", "0", "--seed", "0", "--output-dir", str(tmp_path / "two"), "--push-to-hub", repo_id,
    ]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("--strategy auto chose head") == 1  # printed by the main process only
    records = read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert sum(r.get("event") == "strategy" for r in records) == 1
    assert records[-1]["num_images"] == 30  # every validation image counted once
    from huggingface_hub import HfApi

    api = HfApi(endpoint=use_hub.endpoint, token=use_hub.token)
    assert sum("--strategy auto" in c.title for c in api.list_repo_commits(repo_id)) == 1
    assert "## Why this strategy" in Path(api.hf_hub_download(repo_id, "README.md")).read_text()


def test_cli_reports_a_bad_strategy_combination_in_one_line(tmp_path, hues):
    done = subprocess.run(
        [sys.executable, "-m", "hubclf.cli", "train", "--model", "hubclf_alexnet_slim", "--data", str(hues),
         "--output-dir", str(tmp_path / "o"), "--strategy", "auto", "--freeze", "backbone"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "hubclf train: error: --strategy auto sets the freezing itself; drop --freeze/--unfreeze-after, "
        "or drop --strategy"
    ]


def test_adding_the_strategy_section_keeps_the_folder_pictures(tmp_path: Path) -> None:
    """update_card replaces the folder whole: the pictures must come along and stay linked in the card."""
    from huggingface_hub import ModelCard

    from hubclf.hub import update_card
    from hubclf.plots import model_pictures

    model = timm.create_model("hubclf_alexnet_slim", num_classes=2, img_size=(64, 64))
    history = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "train_top1": 0.4, "val_top1": 0.5}]
    images, _ = model_pictures([[2, 1], [0, 3]], ["a", "b"], history)
    folder = hubclf.save_pretrained(model, tmp_path / "best", label_names=["a", "b"], images=images)
    section = {"summary": "head wins", "columns": ["strategy"], "rows": [["head"]], "reason": "cheaper"}
    update_card(folder, extra_config={"strategy": section})
    for name, png in images.items():
        assert (folder / name).read_bytes() == png
    card = ModelCard.load(folder / "README.md").text
    assert "![Confusion matrix](confusion_matrix.png)" in card and "Why this strategy" in card
