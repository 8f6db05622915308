"""hubclf.train.config: TrainConfig checks, YAML/JSON files, and `hubclf train` flags overriding a file."""

from __future__ import annotations

import json

import pytest

from hubclf.cli import build_parser
from hubclf.cli.train_flags import config_from_args
from hubclf.train import TrainConfig

REQUIRED = dict(model="hubclf_alexnet", data="photos", output_dir="out")


def test_yaml_and_json_files_with_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("model: hubclf_vgg11\ndata: photos\noutput-dir: out\nimg_size: [448, 224]\n")
    config = TrainConfig.from_file(tmp_path / "c.yaml", epochs=7)
    assert (config.model, config.output_dir, config.img_size, config.epochs) == ("hubclf_vgg11", "out", (448, 224), 7)

    (tmp_path / "c.json").write_text(json.dumps({**REQUIRED, "freeze": "backbone", "log_with": "tensorboard"}))
    config = TrainConfig.from_file(tmp_path / "c.json")
    assert (config.freeze, config.log_with) == ("backbone", ["tensorboard"])
    assert TrainConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({**REQUIRED, "epoch": 3}, "unknown setting.*epoch"),
        ({"model": "x"}, "missing required setting.*data, output_dir"),
        ({**REQUIRED, "unfreeze_after": 2}, "needs a frozen start"),
        ({**REQUIRED, "freeze": "backbone", "unfreeze_after": 5, "epochs": 5}, "between 1 and epochs-1"),
        ({**REQUIRED, "freeze": "backbone", "cache_features": "memory", "augment": "light"}, "--no-augment"),
        ({**REQUIRED, "img_size": [448, 224, 3]}, r"img_size must be \(height, width\) or one size"),
        ({**REQUIRED, "img_size": [448, 0]}, r"img_size must be \(height, width\) or one size"),
        ({**REQUIRED, "img_size": "448x224"}, r"img_size must be \(height, width\) or one size"),
        ({**REQUIRED, "num_classes": 1}, "at least 2"),
        ({**REQUIRED, "on_bad_image": "ignore"}, "skip.*error"),
        ({**REQUIRED, "cache_images": "disk"}, r"cache_images must be one of \('auto', 'off'\)"),
        ({**REQUIRED, "crop_pct": 0}, r"crop_pct.*\(0, 1\]"),
        ({**REQUIRED, "crop_pct": 1.2}, r"crop_pct.*\(0, 1\]"),
        # optimisation values the optimizer or scheduler would take silently, or refuse only after the data loads
        ({**REQUIRED, "lr": 0.0}, "lr must be positive, got 0.0"),
        ({**REQUIRED, "lr": float("nan")}, "lr must be a finite number, got nan"),
        ({**REQUIRED, "backbone_lr_scale": float("nan")}, "backbone_lr_scale must be a finite number"),
        ({**REQUIRED, "mixup": float("inf")}, "mixup must be a finite number, got inf"),
        ({**REQUIRED, "min_lr": -1e-5}, "min_lr must be at least 0"),
        ({**REQUIRED, "weight_decay": -0.01}, "weight_decay must be at least 0"),
        ({**REQUIRED, "warmup_epochs": -1}, "warmup_epochs must be at least 0"),
        ({**REQUIRED, "clip_grad": -1.0}, "clip_grad is the largest gradient norm, above 0"),
        ({**REQUIRED, "save_every_steps": 0}, "save_every_steps must be at least 1"),
        ({**REQUIRED, "seed": -1}, r"seed must be between 0 and 2\*\*32 - 1"),
        ({**REQUIRED, "seed": 2**32}, r"seed must be between 0 and 2\*\*32 - 1"),
    ],
)
def test_contradictions_are_clear_errors(values, error):
    with pytest.raises(ValueError, match=error):
        TrainConfig.from_dict(values)


def test_one_size_means_a_square_as_in_timm(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("model: hubclf_vgg11\ndata: photos\noutput_dir: out\nimg_size: 224\n")
    assert TrainConfig.from_file(tmp_path / "c.yaml").img_size == (224, 224)
    parser = build_parser()
    for command in (["train"], ["compare"], ["export", "me/model", "out.onnx"]):
        assert parser.parse_args([*command, "--img-size", "224"]).img_size == (224, 224)
        assert parser.parse_args([*command, "--img-size", "448", "224"]).img_size == (448, 224)
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([*command, "--img-size", "448", "224", "3"])
        assert exit_info.value.code == 2
        assert "--img-size: give HEIGHT WIDTH, or one SIZE for a square; got 3 numbers" in capsys.readouterr().err


def test_feature_cache_is_used_exactly_when_it_is_exact():
    assert TrainConfig(**REQUIRED, freeze="backbone", augment=False).feature_cache_mode == "disk"
    assert TrainConfig(**REQUIRED, freeze="backbone").feature_cache_mode == "off"  # augmentation changes inputs
    assert TrainConfig(**REQUIRED, freeze="backbone", unfreeze_after=1, augment=False).feature_cache_mode == "off"


def test_cli_flags_override_the_config_file(tmp_path):
    (tmp_path / "c.yaml").write_text("model: hubclf_alexnet\ndata: photos\noutput_dir: out\nepochs: 9\nlr: 0.1\n")
    args = build_parser().parse_args(
        ["train", "--config", str(tmp_path / "c.yaml"), "--epochs", "2", "--img-size", "448", "224", "--no-augment"]
    )
    config = config_from_args(args)
    assert (config.epochs, config.lr, config.img_size, config.augment) == (2, 0.1, (448, 224), "none")
    assert config.cache_images == "auto"
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "c.yaml"), "--cache-images", "off"])
    assert config_from_args(args).cache_images == "off"

    args = build_parser().parse_args(["train", "--model", "hubclf_alexnet", "--data", "photos"])
    with pytest.raises(ValueError, match="missing required setting.*output_dir"):
        config_from_args(args)


def test_backbone_lr_scale_defaults_to_protecting_only_pretrained_weights():
    assert TrainConfig(**REQUIRED).backbone_lr_scale == 0.1
    assert TrainConfig(**REQUIRED, pretrained=False).backbone_lr_scale == 1.0
    assert TrainConfig(**REQUIRED, pretrained=False, backbone_lr_scale=0.5).backbone_lr_scale == 0.5
    with pytest.raises(ValueError, match="backbone_lr_scale must be positive"):
        TrainConfig(**REQUIRED, backbone_lr_scale=0)


def test_speed_flags_default_to_the_hardware_and_parse_from_the_cli():
    base = {"model": "m", "data": "d", "output_dir": "o"}
    config = TrainConfig(**base)
    assert config.num_workers == "auto" and config.mixed_precision == "auto"
    assert config.channels_last is None and not config.compile  # None: decided from the device
    assert TrainConfig(**base, num_workers="3").num_workers == 3  # YAML/CLI strings become numbers
    for bad, error in (({"num_workers": "many"}, "num_workers"), ({"num_workers": -1}, "num_workers"),
                       ({"mixed_precision": "fp64"}, "mixed_precision")):  # fmt: skip
        with pytest.raises(ValueError, match=error):
            TrainConfig(**base, **bad)
    args = build_parser().parse_args(
        ["train", "--model", "m", "--data", "d", "--output-dir", "o", "--num-workers", "2", "--channels-last",
         "--compile", "--mixed-precision", "no"]
    )  # fmt: skip
    config = config_from_args(args)
    assert (config.num_workers, config.channels_last, config.compile, config.mixed_precision) == (2, True, True, "no")
    args = build_parser().parse_args(
        ["train", "--model", "m", "--data", "d", "--output-dir", "o", "--no-channels-last"]
    )
    assert config_from_args(args).channels_last is False


@pytest.mark.parametrize(
    ("yaml_text", "error"),
    [
        ("lr: [1]", r"^lr must be a number, got \[1\] \(list\)$"),
        ("epochs: 3.5", r"^epochs must be an integer, got 3.5 \(float\)$"),
        ("lr: fast", r"^lr must be a number, got 'fast' \(str\)$"),
        ("freeze: 5", r"^freeze must be a string, got 5 \(int\)$"),
        ("pretrained: maybe", r"^pretrained must be true or false, got 'maybe' \(str\)$"),
        ("crop_scale: {min: 0.5}", r"^crop_scale must be a list of 2 numbers \(or unset\), got \{'min': 0.5\}"),
        ("log_with: [1, 2]", r"^log_with must be a list of strings, got \[1, 2\] \(list\)$"),
        ("seed: true", r"^seed must be an integer, got True \(bool\)$"),
    ],
)
def test_yaml_values_are_type_checked_like_the_flags(tmp_path, yaml_text, error, capsys):
    """A YAML --config with `lr: [1]` reached a comparison and came out as "internal error ... please report it"."""
    from hubclf.cli import main

    (tmp_path / "c.yaml").write_text(f"model: hubclf_alexnet\ndata: photos\noutput_dir: out\n{yaml_text}\n")
    with pytest.raises(ValueError, match=error):
        TrainConfig.from_file(tmp_path / "c.yaml")
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hubclf train: error: ") and "internal error" not in err and err.count("\n") == 1


def test_values_are_converted_the_way_the_flags_convert_them(tmp_path):
    # PyYAML reads 1e-3 (no dot) as text; --lr 1e-3 is a number: so is this.
    (tmp_path / "c.yaml").write_text("model: m\ndata: d\noutput_dir: o\nlr: 1e-3\nepochs: '4'\nlog_with: tensorboard\n")
    config = TrainConfig.from_file(tmp_path / "c.yaml")
    assert (config.lr, config.epochs, config.log_with) == (0.001, 4, ["tensorboard"])
