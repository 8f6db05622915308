"""The input size a run trains at: the data's own shape unless ``--img-size`` is given.

``hubclf train``, ``lr-find`` and ``compare`` call ``choose_input_size`` once the data is loaded and before the model
is built; its ``decision`` is logged and recorded with the recipe decisions (``recipe.json``, the model card), its
``warning`` says when an explicit ``--img-size`` makes the eval crop cut off much of each image.

    choice = choose_input_size(TrainConfig(model="hubclf_alexnet", data="photos/", output_dir="out"), data)
    choice.config.img_size   # (448, 224) for 448×224 photos
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import timm

from hubclf.data.sizes import (
    ASPECT_TOLERANCE,
    aspect_mismatch,
    input_size_for,
    kept_fraction,
    median_aspect,
    median_size,
    sample_sizes,
)
from hubclf.data.splits import ImageClassificationData
from hubclf.hub import fetch_config
from hubclf.models._base import architecture_class, min_input_size
from hubclf.refs import ModelRef
from hubclf.train.config import TrainConfig

__all__ = ["InputSizeChoice", "choose_input_size", "input_defaults"]


@dataclass
class InputSizeChoice:
    """The run's config with ``img_size`` set, why (one line), and a warning when the eval crop drops much."""

    config: TrainConfig
    decision: str
    warning: str | None = None


@dataclass(frozen=True)
class InputDefaults:
    """What an architecture (or a saved model) says about its input."""

    architecture: str
    size: tuple[int, int]  # (H, W) its weights were made at
    minimum: tuple[int, int] | None
    fixed: bool  # only that size works (ViTs' position embeddings)
    crop_pct: float


def choose_input_size(config: TrainConfig, data: ImageClassificationData) -> InputSizeChoice:
    """Without ``--img-size``, the input of the data's shape (``hubclf.data.sizes.input_size_for``, the rule of
    docs/train.md "Input size"), from the headers of up to 64 train images; with it, the given size, and a warning
    if its aspect differs from the data's by more than 15%.

        choose_input_size(config, data).decision   # "input size 448×224 (H×W): the train images are 448×224 ..."
    """
    defaults = input_defaults(config)
    sizes = sample_sizes(data.train, data.image_column)
    aspect = median_aspect(sizes)
    typical = median_size(sizes)
    seen = f"the train images are {typical[0]}×{typical[1]} (median of {len(sizes)})" if typical else ""
    name, default = defaults.architecture, defaults.size
    if config.img_size is not None:
        size, why = tuple(config.img_size), "given"
    elif aspect is None:
        size, why = default, f"no image header could be read: {name}'s default"
    else:
        size = input_size_for(aspect, default=default, minimum=defaults.minimum, fixed=defaults.fixed)
        if defaults.fixed:
            why = f"{name} takes only this size; {seen}"
        elif size == default:
            why = f"{seen}, within {ASPECT_TOLERANCE - 1:.0%} of the shape of {name}'s default"
        else:
            why = f"{seen}: their shape, at the short side of {name}'s default {default[0]}×{default[1]}"
    decision = f"input size {size[0]}×{size[1]} (H×W): {why}"
    warning = None
    if aspect is not None and aspect_mismatch(aspect, size) > ASPECT_TOLERANCE:
        kept_h, kept_w = kept_fraction(typical, size, defaults.crop_pct)
        side, kept = ("height", kept_h) if kept_h < kept_w else ("width", kept_w)
        ends = "top and bottom" if side == "height" else "left and right"
        if defaults.fixed:
            shape = "square" if size[0] == size[1] else f"{size[0]}:{size[1]}"
            fix = f"crop or pad the images to {shape} first, or use an architecture without a fixed input size"
        else:
            better = input_size_for(aspect, default=default, minimum=defaults.minimum)
            fix = f"leave --img-size out, or pass --img-size {better[0]} {better[1]}"
        warning = (
            f"input size {size[0]}×{size[1]} (H×W) on {typical[0]}×{typical[1]} images: the eval crop keeps "
            f"{kept:.0%} of each image's {side} (the {ends} are cut off); to keep whole images, {fix}"
        )
    return InputSizeChoice(dataclasses.replace(config, img_size=size), decision, warning)


def input_defaults(config: TrainConfig) -> InputDefaults:
    """The input facts of ``config.model``: an architecture's from timm's pretrained config, a saved model's from its
    config.json (for a Hub repo, that file alone is downloaded).

        input_defaults(config).size   # (224, 224) for hubclf_alexnet
    """
    ref = ModelRef.parse(config.model)
    if ref.is_saved:
        saved = fetch_config(ref)
        architecture, cfg = saved["architecture"], dict(saved.get("pretrained_cfg") or {})
    else:
        architecture = config.model.partition(".")[0]
        known = timm.models.get_pretrained_cfg(config.model)
        cfg = known.to_dict() if known else {}
    _, height, width = cfg.get("input_size") or (3, 224, 224)
    minimum = min_input_size(architecture_class(architecture))
    if minimum is None and cfg.get("min_input_size"):
        minimum = tuple(cfg["min_input_size"][1:])
    crop_pct = float(config.crop_pct or cfg.get("crop_pct") or 0.875)
    return InputDefaults(architecture, (int(height), int(width)), minimum, bool(cfg.get("fixed_input_size")), crop_pct)
