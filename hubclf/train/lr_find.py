"""An LR range test (Leslie Smith; fastai's ``lr_find``): ``hubclf lr-find`` and ``lr_find()``.

The learning rate grows exponentially from ``start_lr`` to ``end_lr`` over ``steps`` training steps, looping over the
training images as often as that takes (as fastai's does); the loss of every step is recorded and smoothed, and the
sweep stops early once the smoothed loss exceeds ``diverge_factor`` times the best one. Fewer than ``MIN_STEPS``
steps, or fewer than two batches of training images, give no curve worth reading: refused. The model, data,
transforms, freezing and optimizer are built exactly as ``hubclf train`` builds them from the same ``TrainConfig``;
the weights and optimizer state are restored afterwards.

    from hubclf.train import TrainConfig
    from hubclf.train.lr_find import lr_find
    result = lr_find(TrainConfig(model="hubclf_alexnet", data="photos/", output_dir="out", freeze="backbone"))
    result.suggested_lr, result.method   # e.g. 0.0031, "steepest descent"

The suggestion is the learning rate where the smoothed loss falls fastest (steepest descent against log(lr)),
looked for where the curve really falls: from the last point still within a tenth of the fall from its start, to
its minimum. There training makes the most progress per step while still well below the rate where it blows up;
before it, at tiny learning rates, the loss only jitters. When the curve has no falling stretch (the loss only
rises), it is the LR of the minimum divided by 10 instead; ``method`` says which. A curve that is flat (the smoothed
loss falls by less than 5% of where it started) or noisy (its fall is within the step-to-step noise) gives no
confident suggestion: ``confident`` is False, ``caveat`` says why, and ``suggested_lr`` is ``config.lr``
(``hubclf train``'s default unless set).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate import PartialState
from timm.optim import create_optimizer_v2
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hubclf.atomic import atomic_write_json
from hubclf.hardware import resolve_device, resolve_num_workers
from hubclf.plots import matplotlib_missing, plot_lr_find
from hubclf.train.config import TrainConfig
from hubclf.train.input_size import choose_input_size
from hubclf.train.preflight import preflight_checks
from hubclf.train.recipes import choose_recipe
from hubclf.train.setup import create_model, image_dataset, load_training_data, transforms_for
from hubclf.train.stages import HEAD, apply_stage, batch_logits, param_groups, set_stage_modes, stage_for_epoch

__all__ = ["LRFindResult", "lr_find", "suggest_lr"]

logger = logging.getLogger(__name__)

PLOT_FILE, CURVE_FILE = "lr_find.png", "lr_find.json"
STEEPEST, MINIMUM_OVER_10, NOT_CONFIDENT = "steepest descent", "minimum / 10", "no confident suggestion"
MIN_STEPS = 20  # fewer points than this make no curve: a falling stretch needs several points to be told from noise
FLAT_DROP = 0.05  # the smoothed loss must fall by 5% of its starting value before its minimum ...
NOISE_RATIO = 2.0  # ... and by more than twice the steps' scatter around it


@dataclass
class LRFindResult:
    """The sweep: one ``lrs``/``losses``/``smoothed_losses`` entry per step, and the suggested learning rate.

    ``lrs`` are the classifier's learning rates (the backbone's are ``lr × backbone_lr_scale``, as in training).
    """

    lrs: list[float]
    losses: list[float]
    smoothed_losses: list[float]
    suggested_lr: float
    method: str  # STEEPEST, MINIMUM_OVER_10 or NOT_CONFIDENT
    steepest_lr: float | None
    min_loss_lr: float
    stopped_early: bool
    stop_reason: str
    confident: bool = True
    caveat: str | None = None  # why there is no confident suggestion (a flat or noisy curve)
    settings: dict[str, Any] = field(default_factory=dict)
    plot_path: Path | None = None
    curve_path: Path | None = None
    plot_skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able values; a loss that blew up (inf/nan) becomes ``None``, as strict JSON has no infinity."""
        values = asdict(self)
        for key in ("losses", "smoothed_losses"):
            values[key] = [v if math.isfinite(v) else None for v in values[key]]
        for key in ("plot_path", "curve_path"):
            values[key] = str(values[key]) if values[key] is not None else None
        return values


def lr_find(
    config: TrainConfig,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    smoothing: float = 0.9,
    diverge_factor: float = 4.0,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    device: str | torch.device | None = None,
    save: bool = True,
    progress: bool = True,
) -> LRFindResult:
    """Run the LR range test for ``config`` (its model, data, freezing, optimizer, batch size and seed).

    ``steps`` (at least ``MIN_STEPS``) loop over the training split as often as needed. ``smoothing`` is the β of
    the bias-corrected exponential moving average of the loss (``--loss-smoothing``). Pass ``model`` (and
    ``optimizer``) to sweep an existing model instead of ``create_model(config, ...)``; both are restored bit for
    bit afterwards (weights, buffers, ``requires_grad``, train/eval mode, device, optimizer state), and the global
    RNG is left untouched. ``save`` writes ``lr_find.json`` and (with matplotlib) ``lr_find.png`` into
    ``config.output_dir``. The sweep runs in one process, in float32 (``mixed_precision`` is not used: fp16 without
    loss scaling would distort it), one optimizer step per batch (``grad_accum_steps`` is ignored).

        result = lr_find(config, steps=50)
        print(f"use --lr {result.suggested_lr:.2g}")
    """
    if not 0 < start_lr < end_lr:
        raise ValueError(f"need 0 < start_lr < end_lr, got start_lr={start_lr}, end_lr={end_lr}")
    if steps < MIN_STEPS:
        raise ValueError(f"lr-find needs at least {MIN_STEPS} steps to draw a curve worth reading, got {steps}")
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing is the moving average's beta, in [0, 1); got {smoothing}")
    if diverge_factor <= 1:
        raise ValueError(f"diverge_factor must be above 1, got {diverge_factor}")
    if optimizer is not None and model is None:
        raise ValueError("an optimizer needs the model it optimizes: pass model= too")
    if PartialState().num_processes > 1:  # also sets up the Accelerate logging that create_model uses
        raise RuntimeError("lr-find runs in one process: start it with python/hubclf, not accelerate launch")
    if model is None:
        preflight_checks(config)
    device = resolve_device(device)

    data = load_training_data(config)
    if model is None:
        size = choose_input_size(config, data)  # as train() chooses it: the data's shape without --img-size
        logger.info(size.decision)
        if size.warning:
            logger.warning(size.warning)
        config = size.config
        with torch.random.fork_rng(devices=[]):  # the initial weights train() would draw, the caller's RNG untouched
            torch.manual_seed(config.seed)
            model = create_model(config, data.label_names)  # as train() creates it: the same input size and crop
    elif model.num_classes != data.num_classes:
        raise ValueError(f"the model has {model.num_classes} classes, the data {data.num_classes}")
    recipe = choose_recipe(config, data)  # the augmentation `hubclf train` would choose for this data
    data_config, train_transform, _ = transforms_for(model, recipe)
    images = image_dataset(config, data, data.train, train_transform, data_config["input_size"], cache=False)
    if recipe.augments:
        images.seed_augmentation(config.seed, 0)
    loader = DataLoader(
        images, batch_size=config.batch_size, shuffle=True, num_workers=resolve_num_workers(config.num_workers),
        generator=torch.Generator().manual_seed(config.seed), pin_memory=device.type == "cuda",
    )  # fmt: skip
    if len(loader) < 2:  # one batch seen over and over measures how fast the net memorises it, nothing more
        raise ValueError(
            f"lr-find needs at least 2 batches of training images: {len(images)} images at --batch-size "
            f"{config.batch_size} are {len(loader)}; use --batch-size {max(1, len(images) // 2)} or less"
        )
    if steps > len(loader):
        logger.info(f"{steps} steps over {len(loader)} batches: each training image is seen about "
                    f"{steps / len(loader):.1f} times")  # fmt: skip

    stage = stage_for_epoch(config, 0)
    saved = _Snapshot(model, optimizer)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(config.seed)
            model.to(device)
            apply_stage(model, stage, config)
            sweep_optimizer = optimizer or create_optimizer_v2(
                model, opt=config.opt, lr=start_lr, weight_decay=config.weight_decay,
                param_group_fn=lambda m: param_groups(m, config),
            )  # fmt: skip
            curve = _sweep(
                model, sweep_optimizer, stage, loader, device, config,
                lrs=np.geomspace(start_lr, end_lr, steps).tolist(), smoothing=smoothing,
                diverge_factor=diverge_factor, progress=progress,
            )  # fmt: skip
    finally:
        saved.restore()

    lrs, losses, smoothed, stopped_early, reason = curve
    if len(lrs) < 2:
        raise RuntimeError(f"the sweep stopped after {len(lrs)} step(s) ({reason}): lower --start-lr")
    suggested, method, steepest, minimum = suggest_lr(lrs, smoothed)
    caveat = curve_caveat(losses, smoothed)
    if caveat is not None:
        suggested, method = config.lr, NOT_CONFIDENT
    settings = {
        "model": config.model, "data": config.data, "freeze": config.freeze, "opt": config.opt,
        "batch_size": config.batch_size, "weight_decay": config.weight_decay,
        "backbone_lr_scale": config.backbone_lr_scale, "start_lr": start_lr, "end_lr": end_lr, "steps": steps,
        "smoothing": smoothing, "diverge_factor": diverge_factor, "stage": stage,
    }  # fmt: skip
    result = LRFindResult(
        lrs=lrs, losses=losses, smoothed_losses=smoothed, suggested_lr=suggested, method=method,
        steepest_lr=steepest, min_loss_lr=minimum, stopped_early=stopped_early, stop_reason=reason, settings=settings,
        confident=caveat is None, caveat=caveat,
    )  # fmt: skip
    if save:
        _save(result, Path(config.output_dir))
    return result


def suggest_lr(lrs: list[float], smoothed: list[float]) -> tuple[float, str, float | None, float]:
    """``(suggested_lr, method, steepest_lr, min_loss_lr)`` for a smoothed loss curve (see the module docstring).

        suggest_lr([1e-4, 1e-3, 1e-2, 1e-1], [2.0, 1.5, 0.8, 3.0])   # (0.001, "steepest descent", 0.001, 0.01)
    """
    values = np.asarray(smoothed, dtype=float)
    finite = np.isfinite(values)
    if not finite.any():
        raise ValueError("the loss was never finite: no learning rate to suggest")
    lowest = int(np.nanargmin(np.where(finite, values, np.nan)))
    min_loss_lr = float(lrs[lowest])
    begin = _fall_begins(values, lowest)
    steepest = None
    if lowest - begin >= 2:  # need a falling stretch of at least 3 points
        log_lrs = np.log(np.asarray(lrs[: lowest + 1], dtype=float))
        slopes = np.gradient(values[: lowest + 1], log_lrs)
        index = begin + 1 + int(np.argmin(slopes[begin + 1 :]))  # past the last point of the flat start
        if slopes[index] < 0:
            steepest = float(lrs[index])
    if steepest is not None:
        return steepest, STEEPEST, steepest, min_loss_lr
    return min_loss_lr / 10, MINIMUM_OVER_10, None, min_loss_lr


def _fall_begins(values: np.ndarray, lowest: int) -> int:
    """Where the fall to the minimum begins: the last point before it still within a tenth of the fall from the
    start. Before it, at tiny learning rates, the loss only jitters, and its steepest wobble there is noise (it was
    the suggestion once: lr 2.5e-7 on 200 digits, where training needs about 1e-3)."""
    start = values[0]
    above = np.flatnonzero(values[:lowest] >= start - 0.1 * (start - values[lowest]))
    return int(above[-1]) if above.size else 0


def curve_caveat(losses: list[float], smoothed: list[float]) -> str | None:
    """Why a sweep's curve supports no suggestion, or None: flat (the smoothed loss falls by less than 5% of its
    start before its minimum) or noisy (the fall is within twice the steps' scatter around the smoothed curve).

        curve_caveat([2.1] * 30, [2.1] * 30)   # "flat: the smoothed loss went from 2.1 to 2.1 (-0.0%) ..."
    """
    values = np.asarray(smoothed, dtype=float)
    finite = np.isfinite(values)
    if finite.sum() < 3:
        return None
    lowest = int(np.nanargmin(np.where(finite, values, np.nan)))
    start = float(np.median(np.asarray(losses[: max(3, len(losses) // 10)], dtype=float)))
    fall = start - float(values[lowest])
    if not math.isfinite(start) or start <= 0 or fall < FLAT_DROP * start:
        return (
            f"flat: the smoothed loss went from {start:.3g} to {values[lowest]:.3g} ({-fall / max(start, 1e-12):+.1%}) "
            "over the whole sweep, so no learning rate stands out"
        )
    raw = np.asarray(losses[: lowest + 1], dtype=float)
    scatter = float(np.nanstd(raw - values[: lowest + 1]))
    if fall < NOISE_RATIO * scatter:
        return (
            f"noisy: the smoothed loss fell by {fall:.3g}, within twice the steps' scatter ({scatter:.3g}), so "
            "where it falls fastest is chance"
        )
    return None


def _sweep(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    stage: str,
    loader: DataLoader,
    device: torch.device,
    config: TrainConfig,
    *,
    lrs: list[float],
    smoothing: float,
    diverge_factor: float,
    progress: bool,
) -> tuple[list[float], list[float], list[float], bool, str]:
    done_lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    average, best = 0.0, math.inf
    batches = _repeat(loader)
    set_stage_modes(model, stage)
    bar = tqdm(lrs, desc="lr-find", unit="step", leave=False, disable=not progress)
    for lr in bar:
        batch = next(batches)
        valid = batch["valid"].bool()
        if not valid.any():
            continue  # every image of this batch was unreadable: nothing to learn from
        for group in optimizer.param_groups:  # timm's lr_scale: the backbone's discriminative LR, as in training
            group["lr"] = lr * group.get("lr_scale", 1.0)
        pixels, labels = batch["pixel_values"][valid].to(device), batch["labels"][valid].to(device)
        trainable = model.get_classifier() if stage == HEAD else model
        loss = F.cross_entropy(batch_logits(model, trainable, stage, {"pixel_values": pixels}).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip_grad:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.clip_grad)
        optimizer.step()

        value = loss.item()
        average = smoothing * average + (1 - smoothing) * value
        smooth = average / (1 - smoothing ** (len(losses) + 1))  # bias correction: no drag towards 0 at the start
        done_lrs.append(lr)
        losses.append(value)
        smoothed.append(smooth)
        bar.set_postfix(lr=f"{lr:.2g}", loss=f"{smooth:.4f}", refresh=False)
        if not math.isfinite(value):
            bar.close()
            return done_lrs, losses, smoothed, True, f"the loss became {value} at lr {lr:.3g}"
        if smooth > diverge_factor * best:
            reason = f"the smoothed loss passed {diverge_factor:g}x its best at lr {lr:.3g}"
            bar.close()
            return done_lrs, losses, smoothed, True, reason
        best = min(best, smooth)
    bar.close()
    return done_lrs, losses, smoothed, False, f"reached the end of the sweep ({len(losses)} steps)"


def _repeat(loader: DataLoader):
    while True:
        yield from loader


class _Snapshot:
    """Everything the sweep changes on a model (and optimizer), copied so that it can be put back exactly."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
        self.model, self.optimizer = model, optimizer
        self.state = copy.deepcopy(model.state_dict())
        self.requires_grad = [p.requires_grad for p in model.parameters()]
        self.modes = [m.training for m in model.modules()]
        first = next(model.parameters(), None)
        self.device = first.device if first is not None else torch.device("cpu")
        self.optimizer_state = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None

    def restore(self) -> None:
        self.model.to(self.device)
        self.model.load_state_dict(self.state)
        for param, flag in zip(self.model.parameters(), self.requires_grad, strict=True):
            param.requires_grad_(flag)
            param.grad = None
        for module, mode in zip(self.model.modules(), self.modes, strict=True):
            module.training = mode
        if self.optimizer is not None:
            self.optimizer.load_state_dict(self.optimizer_state)


def _save(result: LRFindResult, output_dir: Path) -> None:
    result.curve_path = output_dir / CURVE_FILE
    result.plot_skipped = matplotlib_missing()
    if result.plot_skipped is None:
        result.plot_path = output_dir / PLOT_FILE
        note = f" ({result.method})" if result.confident else f" (default: {result.caveat.partition(':')[0]} curve)"
        plot_lr_find(result.lrs, result.losses, result.smoothed_losses, result.suggested_lr, result.plot_path,
                     note=note)  # fmt: skip
    atomic_write_json(result.curve_path, result.to_dict())  # strict: a diverged (NaN) loss is stored as null
