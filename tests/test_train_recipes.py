"""hubclf.train.recipes: presets, flags, data-driven defaults, loss, mixup, sampler, early stopping and EMA, and
the loop with all of them on at once: bit-identical resume and 2 processes.

The loop tests reuse test_train_loop's generated 5-class colour task and slim AlexNet stand-in backbone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate.data_loader import BatchSamplerShard
from PIL import Image
from timm.data import Mixup
from torch.utils.data import BatchSampler

from hubclf.cli.train_flags import add_train_arguments, config_from_args
from hubclf.data.images import build_transforms
from hubclf.data.splits import load_image_dataset
from hubclf.train import TrainConfig, TrainingInterrupted, train
from hubclf.train.recipes import (
    AUGMENT_PRESETS,
    BalancedSampler,
    Criterion,
    DataProfile,
    SeededMixup,
    balanced_class_weights,
    choose_recipe,
    mirror_asymmetry,
    profile_data,
    should_stop_early,
)
from tests.image_folders import HEIGHT, WIDTH, make_image_folder
from tests.launch import cpu_launch_command
from tests.test_train_loop import (
    NUM_CLASSES,
    REPO_ROOT,
    SYNC_CHECK,
    interrupt_after_checkpoint,
    make_config,
    pretrained_stand_in,
    read_jsonl,
    weights_of,
)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    make_image_folder(root, NUM_CLASSES, per_class=8, split="train")
    make_image_folder(root, NUM_CLASSES, per_class=3, split="validation", seed=1)
    return root


@pytest.fixture(scope="module")
def backbone_weights(tmp_path_factory):
    return pretrained_stand_in("hubclf_alexnet_slim", tmp_path_factory.mktemp("weights") / "alexnet_slim.safetensors")


BALANCED_COLOUR = DataProfile(class_counts=[30, 30, 30], greyscale=False, mirror_asymmetry=0.0)


def parse(*flags: str) -> TrainConfig:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return config_from_args(parser.parse_args(["--model", "m", "--data", "d", "--output-dir", "o", *flags]))


def recipe_for(profile: DataProfile = BALANCED_COLOUR, **settings):
    config = TrainConfig(model="m", data="d", output_dir="o", **settings)
    return choose_recipe(config, data=None, profile=profile)


def transform_names(transform) -> list[str]:
    return [type(t).__name__ for t in transform.transforms]


# ---- flags ------------------------------------------------------------------------------------------------------
def test_recipe_flags_parse_into_the_config():
    config = parse(
        "--augment", "strong", "--hflip", "0", "--vflip", "0.5", "--no-color-jitter", "--crop-scale", "0.5", "1",
        "--aa", "rand-m7-mstd0.5", "--reprob", "0.2", "--smoothing", "0.2", "--mixup", "0.4", "--cutmix", "1.0",
        "--class-weights", "balanced", "--balanced-sampler", "--patience", "3", "--model-ema",
        "--model-ema-decay", "0.99",
    )  # fmt: skip
    assert (config.augment, config.hflip, config.vflip, config.color_jitter) == ("strong", 0.0, 0.5, 0.0)
    assert (config.crop_scale, config.aa, config.reprob, config.smoothing) == ((0.5, 1.0), "rand-m7-mstd0.5", 0.2, 0.2)
    assert (config.mixup, config.cutmix, config.class_weights, config.balanced_sampler) == (0.4, 1.0, "balanced", True)
    assert (config.patience, config.model_ema, config.model_ema_decay) == (3, True, 0.99)
    defaults = parse()
    assert (defaults.augment, defaults.smoothing, defaults.class_weights, defaults.model_ema) == (
        "auto", None, "auto", False
    )  # fmt: skip


def test_no_augment_stays_an_alias_and_old_boolean_configs_still_load():
    assert parse("--no-augment").augment == "none"
    assert TrainConfig(model="m", data="d", output_dir="o", augment=False).augment == "none"
    assert TrainConfig(model="m", data="d", output_dir="o", augment=True).augment == "default"
    # Cached features need fixed inputs: --no-augment (or auto, which then picks none), and no mixing.
    cached = TrainConfig(model="m", data="d", output_dir="o", freeze="backbone", cache_features="memory")
    assert recipe_for(freeze="backbone", cache_features="memory").config.augment == "none"
    assert cached.augment == "auto"
    with pytest.raises(ValueError, match="fixed inputs"):
        TrainConfig(model="m", data="d", output_dir="o", freeze="backbone", cache_features="memory", augment="light")
    with pytest.raises(ValueError, match="fixed inputs"):
        TrainConfig(model="m", data="d", output_dir="o", freeze="backbone", cache_features="memory", mixup=0.2)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"augment": "heavy"}, "augment must be one of"),
        ({"hflip": 1.5}, "hflip is a probability"),
        ({"reprob": -0.1}, "reprob is a probability"),
        ({"color_jitter": -1.0}, "color_jitter must be >= 0"),
        ({"crop_scale": (0.9, 0.5)}, "crop_scale is MIN MAX"),
        ({"smoothing": 1.0}, "smoothing must be in"),
        ({"mixup": -0.2}, "mixup is a Beta-distribution alpha"),
        ({"class_weights": "inverse"}, "class_weights must be one of"),
        ({"patience": 0}, "patience must be at least 1"),
        ({"model_ema_decay": 1.0}, "model_ema_decay must be between"),
    ],
)
def test_bad_recipe_settings_are_clear_errors(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(model="m", data="d", output_dir="o", **settings)


def test_bad_auto_augment_policy_and_contradicting_flags_are_clear_errors():
    with pytest.raises(ValueError, match="--aa rand-x9: not a timm auto-augment policy"):
        recipe_for(aa="rand-x9")
    with pytest.raises(ValueError, match="--hflip.*--augment none"):
        recipe_for(augment="none", hflip=0.0)


# ---- presets and per-augmentation switches ------------------------------------------------------------------------
def test_presets_build_the_transforms_they_promise():
    data_config = {"input_size": (3, HEIGHT, WIDTH)}

    def train_transform(**settings):
        recipe = recipe_for(**settings)
        return build_transforms(data_config, augment=recipe.augments, **recipe.transform_options)[0]

    none, eval_transform = build_transforms(data_config, augment=recipe_for(augment="none").augments)
    assert none is eval_transform
    light = train_transform(augment="light")
    assert transform_names(light)[:2] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip"]
    assert "ColorJitter" not in transform_names(light) and light.transforms[0].scale == (0.7, 1.0)
    assert "ColorJitter" in transform_names(train_transform(augment="default"))
    strong = str(train_transform(augment="strong"))
    assert "RandAugment" in strong and "RandomErasing" in strong
    # Each augmentation switches on its own, over any preset.
    no_flip = train_transform(augment="default", hflip=0.0, color_jitter=0.0, crop_scale=(0.5, 1.0), vflip=0.5)
    assert "RandomHorizontalFlip" not in transform_names(no_flip) and "ColorJitter" not in transform_names(no_flip)
    assert "RandomVerticalFlip" in transform_names(no_flip) and no_flip.transforms[0].scale == (0.5, 1.0)
    augmented = str(train_transform(augment="light", aa="rand-m5-mstd0.5", reprob=0.5))
    assert "RandAugment" in augmented and "RandomErasing" in augmented
    assert set(AUGMENT_PRESETS) == {"none", "light", "default", "strong"}


# ---- defaults from the data ----------------------------------------------------------------------------------------
def test_defaults_follow_the_data_and_say_why():
    small = recipe_for()
    assert small.config.augment == "light" and small.config.smoothing == 0.1 and small.class_weights is None
    assert any(d.startswith("augment light: 30 train images per class") for d in small.decisions)
    assert recipe_for(DataProfile([900, 800], False, 0.0)).config.augment == "default"
    frozen = recipe_for(freeze="backbone")
    assert frozen.config.augment == "none" and frozen.config.feature_cache_mode == "disk"
    assert any(d.startswith("augment none: frozen backbone") for d in frozen.decisions)
    assert recipe_for(freeze="backbone", unfreeze_after=1, epochs=2).config.augment == "light"

    digits = recipe_for(DataProfile([40] * 10, greyscale=True, mirror_asymmetry=0.5), augment="default")
    assert digits.transform_options["hflip"] == 0.0 and digits.transform_options["color_jitter"] is None
    assert any(d.startswith("hflip 0: a left-right flip changes") for d in digits.decisions)
    assert "color jitter off: the images are greyscale" in digits.decisions
    given = recipe_for(DataProfile([40] * 10, True, 0.5), augment="default", hflip=0.5, color_jitter=0.3)
    assert (given.transform_options["hflip"], given.transform_options["color_jitter"]) == (0.5, 0.3)


def test_imbalanced_classes_get_class_weights_unless_a_balanced_sampler_draws_them():
    data = _labelled([0] * 30 + [1] * 10)
    imbalanced = choose_recipe(
        TrainConfig(model="m", data="d", output_dir="o"), data, DataProfile([30, 10], False, 0.0)
    )
    assert imbalanced.config.class_weights == "balanced"
    assert imbalanced.class_weights == pytest.approx([40 / 60, 40 / 20])
    assert any(d.startswith("class weights balanced: the largest class has 3.0x") for d in imbalanced.decisions)
    sampled = choose_recipe(
        TrainConfig(model="m", data="d", output_dir="o", balanced_sampler=True), data, DataProfile([30, 10], False, 0.0)
    )
    assert sampled.class_weights is None and sampled.config.class_weights == "none"
    assert recipe_for(class_weights="none").class_weights is None
    assert balanced_class_weights(np.array([0, 0, 0, 1]), 3) == pytest.approx([4 / 6, 2.0, 0.0])


def _labelled(labels: list[int]):
    import datasets

    from hubclf.data.splits import ImageClassificationData

    split = datasets.Dataset.from_dict(
        {"label": labels}, features=datasets.Features({"label": datasets.ClassLabel(num_classes=max(labels) + 1)})
    )
    names = [str(i) for i in range(max(labels) + 1)]
    return ImageClassificationData(split, split, "image", "label", names, "d", "validation")


def test_mirror_asymmetry_tells_digits_from_symmetric_objects():
    rng = np.random.default_rng(0)
    seven = np.zeros((24, 24))
    seven[2:5, 4:20], seven[5:22, 15:18] = 1.0, 1.0  # a "7": a bar and a stroke on the right
    ring = np.zeros((24, 24))
    yy, xx = np.mgrid[:24, :24]
    ring[np.abs(np.hypot(yy - 11.5, xx - 11.5) - 7) < 2] = 1.0  # centred: mirrors onto itself
    noisy = lambda image: [image + rng.normal(0, 0.3, image.shape) for _ in range(8)]  # noqa: E731
    assert mirror_asymmetry([noisy(seven)]) > 0.5
    assert abs(mirror_asymmetry([noisy(ring)])) < 0.15
    assert mirror_asymmetry([[seven] * 3]) is None  # too few images to tell noise from asymmetry


def test_profile_data_sees_greyscale_and_class_counts(tmp_path):
    for label, count in (("a", 6), ("b", 3)):
        folder = tmp_path / "train" / label
        folder.mkdir(parents=True)
        for i in range(count):
            pixels = np.full((16, 16), 40 * i, np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
    for label in ("a", "b"):
        (tmp_path / "validation" / label).mkdir(parents=True)
        Image.fromarray(np.zeros((16, 16), np.uint8), mode="L").save(tmp_path / "validation" / label / "0.png")
    profile = profile_data(load_image_dataset(str(tmp_path)))
    assert profile.class_counts == [6, 3] and profile.greyscale and profile.imbalance == 2.0
    counted = profile_data(load_image_dataset(str(tmp_path)), max_images=0)  # what a run without augmentation needs
    assert counted.class_counts == [6, 3] and counted.mirror_asymmetry is None


# ---- loss, mixup, sampler, early stopping ------------------------------------------------------------------------
def test_criterion_smooths_weights_and_takes_soft_targets():
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    weights = torch.tensor([1.0, 2.0, 0.5])
    expected = F.cross_entropy(logits, labels, weight=weights, label_smoothing=0.1, reduction="none")
    assert torch.allclose(Criterion(0.1, weights)(logits, labels), expected)
    soft = F.one_hot(labels, 3).float()
    assert torch.allclose(Criterion(0.0)(logits, soft), F.cross_entropy(logits, labels, reduction="none"))


def test_seeded_mixup_depends_on_seed_epoch_batch_and_process_only():
    pixels, labels = torch.randn(5, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0])  # odd: the last image is not mixed
    mixer = SeededMixup(Mixup(mixup_alpha=0.4, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=4), seed=7)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first, targets = mixer(pixels, labels, epoch=1, batch=2)
    assert np.array_equal(np.random.get_state()[1], before)  # the global RNG is left as it was
    again, again_targets = mixer(pixels, labels, epoch=1, batch=2)
    assert torch.equal(first, again) and torch.equal(targets, again_targets)
    assert not torch.equal(mixer(pixels, labels, epoch=1, batch=3)[0], first)
    assert not torch.equal(mixer(pixels, labels, epoch=1, batch=2, process=1)[0], first)
    assert torch.equal(first[4], pixels[4]) and targets[4].argmax() == 0
    assert torch.allclose(targets.sum(dim=1), torch.ones(5))


def test_balanced_sampler_is_deterministic_balanced_and_shards_under_ddp():
    labels = np.array([0] * 90 + [1] * 10)
    sampler = BalancedSampler(labels, seed=3)
    sampler.start_epoch(0)
    epoch0 = list(sampler)
    assert epoch0 == list(BalancedSampler(labels, seed=3)) and len(epoch0) == 100
    assert 30 <= sum(labels[epoch0] == 1) <= 70  # ~50, not 10
    sampler.start_epoch(1)
    assert list(sampler) != epoch0
    sampler.start_epoch(0)
    batches = BatchSampler(sampler, batch_size=4, drop_last=False)
    shards = [list(BatchSamplerShard(batches, num_processes=2, process_index=i)) for i in range(2)]
    interleaved = [row for pair in zip(*shards, strict=True) for batch in pair for row in batch]
    # Each process takes every other batch of the same sequence (25 batches: Accelerate pads the last pair).
    assert interleaved[:100] == epoch0


def test_early_stopping_counts_epochs_since_the_best():
    history = [{"val_top1": v} for v in (0.5, 0.7, 0.6, 0.65)]
    assert should_stop_early(history, best_epoch=2, patience=2)
    assert not should_stop_early(history, best_epoch=2, patience=3)
    assert not should_stop_early(history, best_epoch=2, patience=None)


# ---- in the loop ---------------------------------------------------------------------------------------------------
def test_early_stopping_ends_the_run_and_keeps_best_and_last(tmp_path, image_folder, backbone_weights, caplog):
    # lr 1e-12 (0 is refused): updates of about 1e-12 cannot change the val top-1 after epoch 1, so patience 1 stops
    # the run after epoch 2.
    config = make_config(
        tmp_path, image_folder, backbone_weights, "early", freeze="backbone", augment="none", epochs=5, lr=1e-12,
        patience=1,
    )  # fmt: skip
    caplog.set_level("INFO", logger="hubclf.train")
    result = train(config)
    assert [row["epoch"] for row in read_jsonl(result.metrics_file)] == [1, 2]
    assert "early stopping: no better val top-1 for 1 epochs (best: epoch 1); final/ holds epoch 2" in caplog.text
    assert result.best_model_dir.is_dir() and result.final_model_dir.is_dir()
    recipe = json.loads((tmp_path / "early" / "recipe.json").read_text())
    assert recipe["settings"]["patience"] == 1 and any("early stopping" in d for d in recipe["decisions"])


def test_ema_weights_are_evaluated_and_saved_with_a_frozen_backbone_on_cached_features(
    tmp_path, image_folder, backbone_weights
):
    settings = dict(freeze="backbone", augment="none", epochs=2, lr=1e-2)
    plain = train(make_config(tmp_path, image_folder, backbone_weights, "plain", **settings))
    averaged = train(make_config(tmp_path, image_folder, backbone_weights, "ema", model_ema=True, **settings))
    plain_weights, ema_weights = weights_of(plain.final_model_dir), weights_of(averaged.final_model_dir)
    classifier = [key for key in plain_weights if key.startswith("head.")]
    assert classifier and not all(torch.equal(plain_weights[k], ema_weights[k]) for k in classifier)
    backbone = [key for key in plain_weights if key not in classifier]
    assert all(torch.equal(plain_weights[k], ema_weights[k]) for k in backbone)  # frozen: its average is itself
    assert read_jsonl(plain.metrics_file)[-1]["val_top1"] != read_jsonl(averaged.metrics_file)[-1]["val_top1"] or (
        read_jsonl(plain.metrics_file)[-1]["val_loss"] != read_jsonl(averaged.metrics_file)[-1]["val_loss"]
    )  # the EMA, not the raw weights, was evaluated
    counts = [json.loads((r.final_model_dir / "config.json").read_text())["hubclf"] for r in (plain, averaged)]
    assert counts[0]["trainable_params"] == counts[1]["trainable_params"] > 0  # the card counts the head


@pytest.mark.parametrize("where", ["mid_epoch"])
def test_resume_with_every_recipe_on_is_bit_identical(
    tmp_path, image_folder, backbone_weights, monkeypatch, caplog, where
):
    flags = dict(
        augment="strong", aa="rand-m5-mstd0.5", hflip=0.3, smoothing=0.1, mixup=0.4, cutmix=1.0,
        class_weights="balanced", balanced_sampler=True, model_ema=True, model_ema_decay=0.9, patience=5,
    )  # fmt: skip
    caplog.set_level("INFO", logger="hubclf.train")
    reference = train(make_config(tmp_path, image_folder, backbone_weights, "reference", **flags))
    assert "recipe: EMA weights (decay 0.9): given; evaluated and saved as the model" in caplog.text

    config = make_config(tmp_path, image_folder, backbone_weights, "resumed", save_every_steps=3, **flags)
    with monkeypatch.context() as patch:
        interrupt_after_checkpoint(patch)
        with pytest.raises(TrainingInterrupted):
            train(config)
    config.resume = "latest"
    resumed = train(config)
    expected, actual = weights_of(reference.final_model_dir), weights_of(resumed.final_model_dir)
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    assert strip(read_jsonl(resumed.metrics_file)) == strip(read_jsonl(reference.metrics_file))

    card = json.loads((resumed.final_model_dir / "config.json").read_text())["hubclf"]["hyperparameters"]
    assert card["weights"].startswith("exponential moving average (EMA)") and card["mixup"] == 0.4
    assert any(line.startswith("class weights balanced: given") for line in card["recipe"])
    assert "exponential moving average" in (resumed.final_model_dir / "README.md").read_text()


@pytest.mark.slow
def test_two_processes_with_every_recipe_on_stay_in_sync(tmp_path, image_folder, backbone_weights):
    script = tmp_path / "train_checking_sync.py"
    script.write_text(SYNC_CHECK)
    args = [
        "train", "--model", "hubclf_alexnet_slim", "--data", str(image_folder), "--weights", str(backbone_weights),
        "--img-size", str(HEIGHT), str(WIDTH), "--epochs", "2", "--batch-size", "4", "--num-workers", "0",
        "--warmup-epochs", "0", "--output-dir", str(tmp_path / "two"), "--augment", "light", "--aa", "rand-m5",
        "--mixup", "0.4", "--cutmix", "1.0", "--smoothing", "0.1", "--balanced-sampler", "--model-ema",
        "--model-ema-decay", "0.9", "--patience", "3", "--save-every-steps", "2",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    run = subprocess.run(
        [*cpu_launch_command(2), str(script), *args],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "in sync: stage full step 4" in run.stdout and "in sync: stage full step 10" in run.stdout
    assert len(read_jsonl(tmp_path / "two" / "metrics.jsonl")) == 2
    card = json.loads((tmp_path / "two" / "final" / "config.json").read_text())["hubclf"]["hyperparameters"]
    assert card["processes"] == 2 and card["balanced_sampler"] is True and "weights" in card
    ema_files = list((tmp_path / "two" / "checkpoints").glob("step_*/ema.safetensors"))
    assert ema_files, "the EMA weights are not in the checkpoints"
