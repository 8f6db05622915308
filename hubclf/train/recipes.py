"""Training recipes: augmentation presets, label smoothing, mixup/cutmix, class weights, a balanced sampler, early
stopping and EMA weights, built from timm's pieces, with defaults chosen from the data.

``choose_recipe`` looks at the train split (images per class, class balance, greyscale or colour, whether a
left-right flip changes what the classes look like) and fills in every setting the user left on ``auto``; each
decision comes with a one-line reason that the run logs and the model card records.

    recipe = choose_recipe(config, data)          # config: TrainConfig, data: ImageClassificationData
    config = recipe.config                        # every "auto" resolved, e.g. config.augment == "light"
    train_tf, eval_tf = build_transforms(data_config, augment=recipe.augments, **recipe.transform_options)
    criterion = recipe.criterion(device)          # per-image losses, smoothing and class weights included
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import Mixup
from timm.utils import ModelEmaV3

from hubclf.atomic import atomic_write_text
from hubclf.data.dataset import EpochSampler, EpochShuffleSampler, iter_ints
from hubclf.data.images import decode_image
from hubclf.data.labels import label_values, undecoded_images
from hubclf.data.splits import ImageClassificationData
from hubclf.train.config import FREEZE_BACKBONE, TrainConfig

# ---- augmentation presets ------------------------------------------------------------------------------------
# Train-transform keyword arguments for timm.data.create_transform (through data.build_transforms). "light" is for
# small datasets: random-resized crops that keep most of the image, flips, no colour changes. "default" is timm's
# ImageNet training augmentation; "strong" adds RandAugment and random erasing (timm's train.py recipes).
AUGMENT_PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "light": {"scale": (0.7, 1.0), "hflip": 0.5, "vflip": 0.0, "color_jitter": None},
    "default": {"scale": (0.08, 1.0), "hflip": 0.5, "vflip": 0.0, "color_jitter": 0.4},
    "strong": {
        "scale": (0.08, 1.0), "hflip": 0.5, "vflip": 0.0, "color_jitter": 0.4,
        "auto_augment": "rand-m9-mstd0.5-inc1", "re_prob": 0.25,
    },
}  # fmt: skip
# Fewer train images per class than this: "light" (timm's crops down to 8% of the image would cut the object out
# of most of the few examples there are); otherwise "default".
SMALL_DATA_IMAGES_PER_CLASS = 500
DEFAULT_SMOOTHING = 0.1
# Largest / smallest class of the train split from which --class-weights auto weights the loss.
IMBALANCE_RATIO = 1.5
# How much more a class-mean image changes under a left-right flip than between two halves of the class
# (correlation points) before flips count as changing what the images show (digits, letters, text).
MIRROR_ASYMMETRY = 0.15
PROFILE_IMAGES = 512  # at most this many train images are decoded to profile the data
PROFILE_SIDE = 24  # ... at this size, in grey
RECIPE_FILE = "recipe.json"  # in the output directory, next to metrics.jsonl
RECIPE_SETTINGS = (
    "augment", "hflip", "vflip", "color_jitter", "crop_scale", "crop_ratio", "aa", "reprob", "smoothing", "mixup",
    "cutmix", "class_weights", "balanced_sampler", "patience", "model_ema", "model_ema_decay",
)  # fmt: skip


# ---- the data, as far as recipes care ------------------------------------------------------------------------
@dataclass
class DataProfile:
    """What the defaults depend on. ``mirror_asymmetry`` is ``None`` when it was not measured."""

    class_counts: list[int]
    greyscale: bool
    mirror_asymmetry: float | None

    @property
    def median_per_class(self) -> float:
        return float(np.median(self.class_counts))

    @property
    def imbalance(self) -> float:
        counts = [c for c in self.class_counts if c > 0]
        return max(counts) / min(counts) if counts else 1.0


def split_labels(split: Any, label_column: str) -> np.ndarray:
    """The integer labels of a 🤗 split (or a stream's, from its label pass), in row order, without decoding any
    image."""
    if hasattr(split, "shards"):  # hubclf.data.streaming.StreamSplit
        return split.labels
    return label_values(split, label_column).astype(np.int64)


def profile_data(data: ImageClassificationData, max_images: int = PROFILE_IMAGES) -> DataProfile:
    """Class counts of the train split, plus greyscale and mirror-symmetry measured on a few of its images.

    The sample is the first rows of each class (deterministic, so every process decides alike). Example::

        profile_data(load_image_dataset("digits/")).greyscale   # True
    """
    labels = split_labels(data.train, data.label_column)
    counts = np.bincount(labels, minlength=data.num_classes)
    if max_images <= 0:  # counts only: nothing decoded, nothing measured
        return DataProfile(counts.tolist(), greyscale=False, mirror_asymmetry=None)
    per_class = max(4, max_images // max(data.num_classes, 1))
    # A stream is profiled on its first rows only (read in order; a class that starts late is not seen).
    scan = labels[: 10 * max_images] if hasattr(data.train, "shards") else labels
    rows_by_class = [np.flatnonzero(scan == c)[:per_class] for c in range(data.num_classes)]
    rows_by_class = [rows for rows in rows_by_class if len(rows)][: max(1, max_images // per_class)]
    if hasattr(data.train, "shards"):  # a stream reads no row at random: profile its first images, in order
        wanted = {int(row) for rows in rows_by_class for row in rows}
        last = max(wanted) + 1
        values = {row: value for row, value in data.train.read(_pieces_upto(data.train, last)) if row in wanted}
        images = {row: {data.image_column: value} for row, value in values.items()}
    else:
        images = undecoded_images(data.train, data.image_column)
    greyscale, class_images = True, []
    for rows in rows_by_class:
        pixels = []
        for row in rows.tolist():
            try:
                image = decode_image(images[row][data.image_column])
            except ValueError:  # unreadable images are the loop's to report
                continue
            rgb = np.asarray(image.resize((PROFILE_SIDE, PROFILE_SIDE)), dtype=np.float32)
            greyscale = greyscale and bool(np.abs(rgb - rgb.mean(axis=2, keepdims=True)).max() < 2.0)
            pixels.append(rgb.mean(axis=2))
        class_images.append(pixels)
    return DataProfile(counts.tolist(), greyscale, mirror_asymmetry(class_images))


def _pieces_upto(split: Any, last: int) -> list[tuple[int, int, int]]:
    """A stream's rows ``[0, last)`` as ``(shard, start, stop)`` pieces."""
    return [
        (shard, 0, int(min(split.counts[shard], last - split.starts[shard])))
        for shard in range(len(split.shards))
        if split.starts[shard] < last
    ]


def mirror_asymmetry(class_images: list[list[np.ndarray]]) -> float | None:
    """How much a left-right flip changes the classes, beyond sampling noise (about 0 for photos, large for digits).

    Per class: the correlation of the mean images of two halves of its examples, minus the correlation of one half's
    mean with the other half's flipped. Photos of objects seen from either side have near-symmetric class means, so
    a flip changes them no more than another sample would; digits and letters do not. Averaged over the classes
    with at least 4 images; ``None`` if there are none.
    """

    def corr(a: np.ndarray, b: np.ndarray) -> float | None:
        a, b = a - a.mean(), b - b.mean()
        norm = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
        return float((a * b).sum()) / norm if norm > 1e-6 else None

    scores = []
    for pixels in class_images:
        if len(pixels) < 4:
            continue
        first, second = np.mean(pixels[0::2], axis=0), np.mean(pixels[1::2], axis=0)
        same, flipped = corr(first, second), corr(first, second[:, ::-1])
        if same is not None and flipped is not None:
            scores.append(same - flipped)
    return float(np.mean(scores)) if scores else None


# ---- choosing ---------------------------------------------------------------------------------------------------
@dataclass
class Recipe:
    """A run's resolved recipe: ``config`` has no ``auto`` left; ``decisions`` says what was chosen and why."""

    config: TrainConfig
    transform_options: dict[str, Any]
    class_weights: list[float] | None
    decisions: list[str] = field(default_factory=list)

    @property
    def augments(self) -> bool:
        return self.config.augment != "none"

    @property
    def mixes(self) -> bool:
        return self.config.mixup > 0 or self.config.cutmix > 0

    def card_fields(self) -> dict[str, Any]:
        """What the model card's hyperparameters table adds: the decisions, and what the saved weights are."""
        fields: dict[str, Any] = {"recipe": list(self.decisions)}
        if self.config.model_ema:
            fields["weights"] = (
                f"exponential moving average (EMA) of the trained weights, decay {self.config.model_ema_decay}"
            )
        return fields

    def save(self, output_dir: str | Path) -> Path:
        """Write ``recipe.json`` (decisions, resolved settings, transform options, class weights) atomically."""
        path = Path(output_dir) / RECIPE_FILE
        record = {
            "decisions": self.decisions,
            "settings": {key: self.config.to_dict()[key] for key in RECIPE_SETTINGS},
            "transform_options": self.transform_options,
            "class_weights": self.class_weights,
        }
        return atomic_write_text(path, json.dumps(record, indent=2) + "\n")

    def criterion(self, device: torch.device | str = "cpu") -> Criterion:
        weights = torch.tensor(self.class_weights, dtype=torch.float32, device=device) if self.class_weights else None
        return Criterion(self.config.smoothing or 0.0, weights)

    def mixer(self, num_classes: int) -> SeededMixup | None:
        """timm's Mixup/CutMix (label smoothing folded into the soft targets), or ``None`` without them."""
        if not self.mixes:
            return None
        config = self.config
        mixup = Mixup(
            mixup_alpha=config.mixup,
            cutmix_alpha=config.cutmix,
            label_smoothing=config.smoothing or 0.0,
            num_classes=num_classes,
        )
        return SeededMixup(mixup, config.seed)

    def train_sampler(self, labels: np.ndarray) -> BalancedSampler | EpochShuffleSampler:
        if self.config.balanced_sampler:
            return BalancedSampler(labels, self.config.seed)
        return EpochShuffleSampler(len(labels), self.config.seed)

    def model_ema(self, model: nn.Module) -> ModelEmaV3 | None:
        if not self.config.model_ema:
            return None
        # Warm-up: the decay grows with the step, so a short run's average is not stuck near the initial weights.
        return ModelEmaV3(model, decay=self.config.model_ema_decay, use_warmup=True)


def choose_recipe(config: TrainConfig, data: ImageClassificationData, profile: DataProfile | None = None) -> Recipe:
    """Resolve every ``auto`` setting of ``config`` from ``data``; explicit settings are kept and reported as such.

    Example::

        recipe = choose_recipe(TrainConfig(model="hubclf_alexnet_slim", data="digits/", output_dir="out"), data)
        print("\\n".join(recipe.decisions))   # augment light: 90 train images per class ...; hflip 0: ...
    """
    check_auto_augment(config.aa)
    decisions: list[str] = []
    frozen_throughout = config.freeze == FREEZE_BACKBONE and config.unfreeze_after is None
    if profile is None and (config.augment != "none" or config.class_weights == "auto"):
        # Images are decoded only when an augmentation may follow from them (flips, colour jitter).
        fixed = config.augment == "none" or (
            config.augment == "auto"
            and (config.cache_features in ("memory", "disk") or frozen_throughout)
            and not (config.mixup or config.cutmix)
        )
        profile = profile_data(data, max_images=0 if fixed else PROFILE_IMAGES)

    preset = config.augment
    if preset == "auto":
        if config.cache_features in ("memory", "disk"):
            preset, why = "none", f"--cache-features {config.cache_features} needs the same pixels every epoch"
        elif frozen_throughout and not (config.mixup or config.cutmix) and config.cache_features == "auto":
            preset = "none"
            why = (
                "frozen backbone: fixed inputs let its features be computed once and reused (an epoch then takes "
                "well under a second instead of a pass through the backbone), and augmenting did not make the "
                "linear head more accurate on small data (docs/recipes.md); pass --augment light to augment anyway"
            )
        elif profile.median_per_class < SMALL_DATA_IMAGES_PER_CLASS:
            preset = "light"
            why = (
                f"{profile.median_per_class:g} train images per class (< {SMALL_DATA_IMAGES_PER_CLASS}): mild crops "
                "and flips; timm's default crops (down to 8% of the image) would cut the object out of the few "
                "examples there are"
            )
        else:
            preset, why = "default", f"{profile.median_per_class:g} train images per class: timm's default augmentation"
        decisions.append(f"augment {preset}: {why}")
    else:
        decisions.append(f"augment {preset}: given")

    options = dict(AUGMENT_PRESETS[preset])
    hflip, color_jitter = config.hflip, config.color_jitter
    if preset != "none":
        if hflip is None and options["hflip"] > 0 and profile and profile.mirror_asymmetry is not None:
            if profile.mirror_asymmetry > MIRROR_ASYMMETRY:
                hflip = 0.0
                decisions.append(
                    f"hflip 0: a left-right flip changes the class-mean images (asymmetry "
                    f"{profile.mirror_asymmetry:.2f} > {MIRROR_ASYMMETRY}), as with digits or text: flipped images "
                    "would show something else"
                )
            else:
                decisions.append(f"hflip {options['hflip']:g}: the classes look alike mirrored "
                                 f"(asymmetry {profile.mirror_asymmetry:.2f} <= {MIRROR_ASYMMETRY})")  # fmt: skip
        if color_jitter is None and options["color_jitter"] and profile and profile.greyscale:
            color_jitter = 0.0
            decisions.append("color jitter off: the images are greyscale")
        given = {
            "hflip": hflip, "vflip": config.vflip, "color_jitter": color_jitter, "scale": config.crop_scale,
            "ratio": config.crop_ratio, "auto_augment": config.aa, "re_prob": config.reprob,
        }  # fmt: skip
        options.update({key: value for key, value in given.items() if value is not None})
        if not options.get("color_jitter"):
            options["color_jitter"] = None  # timm skips ColorJitter only for None
        explicit = [f"{flag} {value}" for flag, value in _given_augmentations(config).items()]
        if explicit:
            decisions.append(f"augmentation overrides given: {', '.join(explicit)}")
    elif _given_augmentations(config):
        raise ValueError(
            f"{', '.join(_given_augmentations(config))} change(s) the train augmentation, but --augment none "
            "(--no-augment) turns it off"
        )

    smoothing = config.smoothing
    if smoothing is None:
        smoothing = DEFAULT_SMOOTHING
        decisions.append(f"label smoothing {smoothing:g}: softer targets generalise better on few images per class")
    else:
        decisions.append(f"label smoothing {smoothing:g}: given")

    if config.mixup or config.cutmix:
        decisions.append(f"mixup alpha {config.mixup:g}, cutmix alpha {config.cutmix:g}: given")

    class_weights = None
    mode = config.class_weights
    if mode == "auto":
        if config.balanced_sampler:
            mode, why = "none", "--balanced-sampler already balances the classes"
        elif profile.imbalance >= IMBALANCE_RATIO:
            mode = "balanced"
            why = (
                f"the largest class has {profile.imbalance:.1f}x the train images of the smallest "
                f"(>= {IMBALANCE_RATIO:g}x): weights n / (classes x count)"
            )
        else:
            mode, why = "none", f"classes are balanced (largest / smallest = {profile.imbalance:.2f})"
        decisions.append(f"class weights {mode}: {why}")
    elif mode == "balanced":
        decisions.append("class weights balanced: given")
    if mode == "balanced":
        class_weights = balanced_class_weights(split_labels(data.train, data.label_column), data.num_classes)
    if config.balanced_sampler:
        decisions.append("balanced sampler: given (each epoch draws classes equally often, with replacement)")
    if config.patience:
        decisions.append(f"early stopping: given, after {config.patience} epoch(s) without a better val top-1")
    if config.model_ema:
        decisions.append(f"EMA weights (decay {config.model_ema_decay:g}): given; evaluated and saved as the model")
    if frozen_throughout and preset == "none" and not (config.mixup or config.cutmix):
        decisions.append("frozen backbone on fixed inputs: features can be computed once")

    resolved = dataclasses.replace(
        config, augment=preset, hflip=hflip, color_jitter=color_jitter, smoothing=smoothing, class_weights=mode
    )
    return Recipe(resolved, options if preset != "none" else {}, class_weights, decisions)


def _given_augmentations(config: TrainConfig) -> dict[str, Any]:
    flags = {
        "--hflip": config.hflip, "--vflip": config.vflip, "--color-jitter": config.color_jitter,
        "--crop-scale": config.crop_scale, "--crop-ratio": config.crop_ratio, "--aa": config.aa,
        "--reprob": config.reprob,
    }  # fmt: skip
    return {flag: value for flag, value in flags.items() if value is not None}


def check_auto_augment(spec: str | None) -> None:
    """A clear ``ValueError`` for an ``--aa`` string timm cannot parse (timm itself asserts deep inside)."""
    if spec is None:
        return
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

    hparams = {"translate_const": 10, "img_mean": (124, 116, 104)}
    try:
        if spec.startswith("rand"):
            rand_augment_transform(spec, hparams)
        elif spec.startswith("augmix"):
            augment_and_mix_transform(spec, hparams)
        else:
            auto_augment_transform(spec, hparams)
    except (AssertionError, ValueError, KeyError, IndexError) as e:
        raise ValueError(
            f"--aa {spec}: not a timm auto-augment policy (e.g. rand-m9-mstd0.5, augmix-m5-w3, original): {e}"
        ) from e


# ---- loss --------------------------------------------------------------------------------------------------------
def balanced_class_weights(labels: np.ndarray, num_classes: int) -> list[float]:
    """scikit-learn's "balanced" weights, ``n / (classes x count)``: every class weighs as much in total.

    A class without train images gets weight 0 (it never appears in the loss anyway). Example::

        balanced_class_weights(np.array([0, 0, 0, 1]), 2)   # [0.667, 2.0]
    """
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = len(labels) / (present.sum() * counts[present])
    return weights.tolist()


class Criterion:
    """Per-image cross-entropy with label smoothing and class weights; takes class indices or soft targets (mixup).

    Example::

        Criterion(0.1)(logits, labels)   # shape (batch,)
    """

    def __init__(self, smoothing: float = 0.0, class_weights: torch.Tensor | None = None) -> None:
        self.smoothing = smoothing
        self.class_weights = class_weights

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        if targets.ndim == 2:  # mixup/cutmix: smoothing is already in the soft targets
            return F.cross_entropy(logits.float(), targets.float(), weight=weight, reduction="none")
        return F.cross_entropy(logits.float(), targets, weight=weight, label_smoothing=self.smoothing, reduction="none")


# ---- mixup / cutmix ------------------------------------------------------------------------------------------
class SeededMixup:
    """timm's ``Mixup`` with its random draws seeded by ``(seed, epoch, batch, process)``: a resumed run mixes
    exactly like an uninterrupted one. timm's Mixup draws from NumPy's global RNG, which is restored afterwards.

    Example::

        pixels, soft_targets = SeededMixup(Mixup(mixup_alpha=0.2, num_classes=8), seed=0)(x, y, epoch=0, batch=3)
    """

    def __init__(self, mixup: Mixup, seed: int) -> None:
        self.mixup = mixup
        self.seed = seed

    def __call__(
        self, pixels: torch.Tensor, labels: torch.Tensor, *, epoch: int, batch: int, process: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        state = np.random.get_state()
        np.random.seed(np.random.SeedSequence([self.seed, epoch, batch, process]).generate_state(1)[0])
        try:
            even = len(pixels) - len(pixels) % 2  # timm mixes pairs; an odd last image keeps its own target
            mixed, targets = pixels.clone(), _smoothed_one_hot(labels, self.mixup)
            if even:
                mixed[:even], targets[:even] = self.mixup(pixels[:even].clone(), labels[:even])
        finally:
            np.random.set_state(state)
        return mixed, targets


def _smoothed_one_hot(labels: torch.Tensor, mixup: Mixup) -> torch.Tensor:
    off = mixup.label_smoothing / mixup.num_classes
    targets = torch.full((len(labels), mixup.num_classes), off, device=labels.device)
    return targets.scatter_(1, labels[:, None], 1.0 - mixup.label_smoothing + off)


# ---- balanced sampler ------------------------------------------------------------------------------------------
class BalancedSampler(EpochSampler):
    """Draws ``len(labels)`` rows per epoch with replacement, each class equally likely, from ``(seed, epoch)`` only.

    Every process draws the same sequence, and Accelerate's batch sharding gives each its own part of it, so DDP
    needs nothing more (see ``EpochSampler``). Example::

        sampler = BalancedSampler(np.array([0, 0, 0, 1]), seed=0); sampler.start_epoch(0); list(sampler)
    """

    def __init__(self, labels: np.ndarray, seed: int) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        counts = np.bincount(labels)
        self.weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.float64)
        super().__init__(len(labels), seed)

    def __iter__(self):
        draws = torch.multinomial(self.weights, self.rows, replacement=True, generator=self.epoch_generator())
        yield from iter_ints(draws)


def dataset_labels(dataset: Any) -> np.ndarray:
    """Labels of a train set in index order: an ``ImageClassificationDataset``, an ``ImageStream`` (canonical
    order) or a cached ``FeatureDataset``; each holds them as one int64 array."""
    return np.asarray(dataset.labels, dtype=np.int64)


def ema_model(ema: ModelEmaV3, model: nn.Module) -> nn.Module:
    """The EMA weights as the model to evaluate and save, with ``model``'s ``requires_grad`` flags (timm turns them
    all off), so that the card counts the trainable parameters of the run, not zero."""
    for averaged, trained in zip(ema.module.parameters(), model.parameters(), strict=True):
        averaged.requires_grad_(trained.requires_grad)
    return ema.module


# ---- early stopping ----------------------------------------------------------------------------------------------
def should_stop_early(history: list[dict[str, Any]], best_epoch: int | None, patience: int | None) -> bool:
    """True once ``patience`` epochs in a row have not beaten the best val top-1 (``best_epoch`` is 1-based).

    Example::

        should_stop_early(history, best_epoch=3, patience=2)   # True after epoch 5
    """
    if not patience or not history or best_epoch is None:
        return False
    return len(history) - best_epoch >= patience
