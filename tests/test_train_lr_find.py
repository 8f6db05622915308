"""hubclf.train.lr_find and ``hubclf lr-find``: the sweep's bounds and early stop, the suggestion, the PNG/JSON it
writes, and a model and optimizer restored bit for bit. Tiny: a 3-class colour task, a slim AlexNet from random
weights, 64×64 inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from hubclf.cli import main
from hubclf.train import TrainConfig
from hubclf.train.lr_find import MINIMUM_OVER_10, STEEPEST, lr_find, suggest_lr
from tests.image_folders import make_image_folder

SIZE = (64, 64)


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("colours"), 3, per_class=8)  # 24 images, 21 train at 0.1


def config(tmp_path: Path, data: Path, **overrides) -> TrainConfig:
    settings = dict(
        model="hubclf_alexnet_slim", data=str(data), output_dir=str(tmp_path / "out"), pretrained=False,
        img_size=SIZE, batch_size=4, num_workers=0, seed=0, augment=False,
    )  # fmt: skip
    return TrainConfig(**{**settings, **overrides})


def test_suggestion_is_the_steepest_descent_before_the_minimum():
    lrs = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    assert suggest_lr(lrs, [2.0, 1.95, 1.2, 0.9, 0.8, 5.0]) == (1e-3, STEEPEST, 1e-3, 1e-1)
    # The loss only rises: no falling stretch, so the minimum's lr / 10.
    assert suggest_lr(lrs, [1.0, 1.1, 1.3, 2.0, 3.0, 9.0]) == (pytest.approx(1e-6), MINIMUM_OVER_10, None, 1e-5)
    with pytest.raises(ValueError, match="never finite"):
        suggest_lr([1e-3, 1e-2], [math.nan, math.inf])


def test_sweep_is_exponential_bounded_by_one_pass_and_writes_plot_and_curve(tmp_path, colours):
    result = lr_find(config(tmp_path, colours, freeze="backbone"), start_lr=1e-5, end_lr=1.0, steps=100)
    passes = math.ceil(21 / 4)  # 21 training images (10% of 24 held out, stratified), batches of 4
    assert len(result.lrs) <= passes and result.settings["steps"] == passes
    assert result.lrs[0] == pytest.approx(1e-5)
    ratios = np.diff(np.log(result.lrs))
    assert np.allclose(ratios, ratios[0])  # evenly spaced on a log axis
    assert result.method in (STEEPEST, MINIMUM_OVER_10) and result.lrs[0] <= result.suggested_lr * 10

    curve = json.loads(result.curve_path.read_text())
    assert curve["lrs"] == result.lrs and curve["suggested_lr"] == result.suggested_lr
    assert curve["settings"]["freeze"] == "backbone" and curve["settings"]["stage"] == "head"
    with Image.open(result.plot_path) as image:
        assert image.format == "PNG" and image.width > 300


def test_repeat_data_allows_more_steps_and_divergence_stops_early(tmp_path, colours):
    # SGD up to lr 1e4 on a randomly initialised net: the loss blows up long before the end.
    settings = config(tmp_path, colours, freeze="backbone", opt="sgd", weight_decay=0.0)
    result = lr_find(settings, start_lr=1e-3, end_lr=1e4, steps=40, allow_repeat=True, save=False)
    assert result.stopped_early and len(result.lrs) < 40
    assert "4x its best" in result.stop_reason or "the loss became" in result.stop_reason
    assert result.curve_path is None and not (tmp_path / "out").exists()
    assert result.suggested_lr < result.lrs[-1]
    json.dumps(result.to_dict(), allow_nan=False)  # a blown-up loss is null in the JSON, not Infinity

    longer = lr_find(settings, start_lr=1e-6, end_lr=1e-3, steps=12, allow_repeat=True, save=False)
    assert len(longer.lrs) == 12 and not longer.stopped_early  # more than the 6 batches of one pass


def test_model_and_optimizer_are_restored_bit_for_bit(tmp_path, colours):
    torch.manual_seed(0)
    model = timm.create_model("hubclf_alexnet_slim", num_classes=3, img_size=SIZE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, *SIZE)).sum().backward()
    optimizer.step()  # real Adam state (step, exp_avg...) to restore
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer_state = {k: {n: t.clone() for n, t in v.items()} for k, v in optimizer.state_dict()["state"].items()}
    rng = torch.get_rng_state()

    lr_find(config(tmp_path, colours), model=model, optimizer=optimizer, start_lr=1e-4, end_lr=1.0, save=False)

    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in weights.items())
    restored = optimizer.state_dict()
    for key, state in optimizer_state.items():
        assert all(torch.equal(restored["state"][key][name], value) for name, value in state.items())
    assert restored["param_groups"][0]["lr"] == 1e-3
    assert not model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random stream is untouched


def test_bad_arguments_are_clear_errors(tmp_path, colours):
    with pytest.raises(ValueError, match="0 < start_lr < end_lr"):
        lr_find(config(tmp_path, colours), start_lr=1.0, end_lr=0.1)
    with pytest.raises(ValueError, match="too few for a sweep"):
        lr_find(config(tmp_path, colours, batch_size=32), save=False)


def test_cli_prints_the_suggestion_and_writes_the_files(tmp_path, colours, capsys):
    out = tmp_path / "cli"
    args = ["lr-find", "--model", "hubclf_alexnet_slim", "--no-pretrained", "--data", str(colours),
            "--output-dir", str(out), "--img-size", "64", "64", "--batch-size", "4", "--num-workers", "0",
            "--freeze", "backbone", "--no-augment", "--start-lr", "1e-5", "--end-lr", "1"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "suggested lr " in printed and "of the smoothed loss" in printed
    assert (out / "lr_find.png").is_file() and (out / "lr_find.json").is_file()

    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["suggested_lr"] > 0 and len(result["lrs"]) == len(result["smoothed_losses"]) <= 6

    assert main([*args, "--json", "--repeat-data", "--steps", "8", "--smoothing", "0", "--diverge-factor", "1e9"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["lrs"]) == 8 and not result["stopped_early"]  # 8 steps > one pass of 6 batches: repeated
    assert result["smoothed_losses"] == result["losses"]  # beta 0: no smoothing
    assert (result["settings"]["smoothing"], result["settings"]["diverge_factor"]) == (0.0, 1e9)

    assert main([*args, "--steps", "1"]) == 2
    assert "steps must be at least 2" in capsys.readouterr().err
