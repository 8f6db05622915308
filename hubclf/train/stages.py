"""Which part of the network trains when, and how that meets Accelerate/DDP.

A run goes through at most two stages:

* ``head``: ``--freeze backbone``. Only ``model.get_classifier()`` trains; the backbone runs in eval mode under
  ``torch.no_grad()``, so it stores no activations and its BatchNorm statistics never move.
* ``partial``: ``--freeze <module>``. Everything up to that module is frozen; the rest fine-tunes.
* ``full``: ``--freeze none``, or every epoch from ``--unfreeze-after N`` on (fastai-style staging).

    stage = stage_for_epoch(config, epoch)
    trainable, optimizer, train_loader, eval_loader = prepare_stage(accelerator, model, stage, config, ...)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from hubclf.data.dataset import FinishingLoader
from hubclf.models import freeze, unfreeze
from hubclf.models.transfer import classifier_parameter_ids, keep_frozen_batchnorm_in_eval
from hubclf.train.config import FREEZE_BACKBONE, FREEZE_NONE, TrainConfig
from hubclf.train.features import backbone_features

HEAD, PARTIAL, FULL = "head", "partial", "full"


def stage_for_epoch(config: TrainConfig, epoch: int) -> str:
    """The stage that epoch ``epoch`` (0-based) trains in."""
    if config.freeze == FREEZE_NONE or (config.unfreeze_after is not None and epoch >= config.unfreeze_after):
        return FULL
    return HEAD if config.freeze == FREEZE_BACKBONE else PARTIAL


def apply_stage(model: nn.Module, stage: str, config: TrainConfig) -> nn.Module:
    """Set ``requires_grad`` and train/eval modes for ``stage``; return the module whose parameters train."""
    unfreeze(model)  # start from a clean slate: each stage says everything that is frozen
    if stage == HEAD:
        freeze(model, FREEZE_BACKBONE)
    elif stage == PARTIAL:
        freeze(model, up_to=config.freeze)
    set_stage_modes(model, stage)
    return model.get_classifier() if stage == HEAD else model


def set_stage_modes(model: nn.Module, stage: str) -> None:
    """Train mode for what trains, eval mode for what is frozen (after evaluation put everything in eval).

    In the head stage the whole backbone is in eval mode: its dropout is off and its BatchNorm layers use (and
    never update) their running statistics, exactly as when the features are cached. Elsewhere, BatchNorm layers
    whose parameters are all frozen stay in eval mode too; hubclf models already do this in ``train()``, doing it
    here keeps the statistics of any timm model fixed.
    """
    if stage == HEAD:
        model.eval()
        model.get_classifier().train()
        return
    keep_frozen_batchnorm_in_eval(model.train())


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """Optimizer groups for every parameter that trains in *some* stage of the run.

    The classifier gets ``lr``; the backbone gets ``lr * backbone_lr_scale`` (discriminative LR) through timm's
    ``lr_scale`` group key, which ``timm.scheduler`` honours on every update. Biases and norm weights (1-D) get
    no weight decay. Parameters frozen in the current stage simply have no gradient, so the optimizer skips them
    (no update, no weight decay, no state) until they unfreeze.
    """
    classifier = classifier_parameter_ids(model)
    ever_trains_backbone = config.freeze != FREEZE_BACKBONE or config.unfreeze_after is not None
    no_decay_names = set(getattr(model, "no_weight_decay", lambda: set())())
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        is_head = id(param) in classifier
        if not is_head and not ever_trains_backbone:
            continue
        if not is_head and config.unfreeze_after is None and not param.requires_grad:
            continue  # frozen for the whole run by --freeze <module>
        decay = param.ndim > 1 and name not in no_decay_names
        groups.setdefault((is_head, decay), []).append(param)
    return [
        {
            "params": params,
            "weight_decay": config.weight_decay if decay else 0.0,
            "lr_scale": 1.0 if is_head else config.backbone_lr_scale,
        }
        for (is_head, decay), params in sorted(groups.items(), key=lambda item: (not item[0][0], not item[0][1]))
    ]


def prepare_stage(
    accelerator: Any,
    model: nn.Module,
    stage: str,
    config: TrainConfig,
    optimizer: Any,
    train_loader: Any,
    eval_loader: Any,
    *,
    first: bool = False,
) -> tuple[nn.Module, Any, Any, Any]:
    """Freeze for ``stage`` and (re-)prepare the trainable module, optimizer and loaders with Accelerate.

    Why re-prepare: DistributedDataParallel decides *when it is built* which parameters it synchronises: it
    registers an all-reduce hook on each parameter that requires grad at that moment. A parameter unfrozen later
    would get local gradients that are never averaged, and the processes' weights would silently drift apart.
    So each stage first drops the previous wrappers (``accelerator.free_memory()``), sets ``requires_grad``,
    then wraps again (``first``: nothing is wrapped yet, and free_memory's garbage collection would only cost
    start-up, 0.3 s). In the ``head`` stage only the classifier is wrapped: the frozen backbone runs outside
    DDP, under ``torch.no_grad()``, and has nothing to synchronise. The optimizer is the same object throughout
    (its groups already hold the backbone), so its state carries over; the loaders are plain and re-wrapped as is.
    """
    if not first:
        accelerator.free_memory()
    trainable = apply_stage(model, stage, config)
    optimizer = getattr(optimizer, "optimizer", optimizer)  # the raw torch optimizer under a previous wrapper
    prepared = accelerator.prepare(trainable, optimizer, train_loader, eval_loader)
    trainable, optimizer, train_loader, eval_loader = prepared
    # uint8 pixels are normalised, raw bytes decoded (--decode-device cuda), on the device once Accelerate has sharded
    # the batches and put them there (setup.loader_rows).
    train_loader, eval_loader = (
        FinishingLoader(loader) if hasattr(getattr(loader, "dataset", None), "finish_batch") else loader
        for loader in (train_loader, eval_loader)
    )
    return trainable, optimizer, train_loader, eval_loader


def batch_logits(
    model: nn.Module,
    trainable: nn.Module,
    stage: str,
    batch: dict[str, Any],
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> torch.Tensor:
    """Logits of a batch (``pixel_values`` or cached ``features``); ``trainable`` is what ``prepare_stage`` wrapped
    (the classifier in the head stage, the whole model otherwise); ``autocast`` is ``accelerator.autocast`` in
    training.

    In the head stage the backbone runs outside autograd, so backward stores none of its activations: only the
    classifier's input. That is where feature extraction saves its memory.

        logits = batch_logits(model, model.get_classifier(), HEAD, {"pixel_values": x})
    """
    # The classifier runs under the same autocast as the backbone: under bf16 the features are bf16, and a
    # ``trainable`` that Accelerate did not wrap (the EMA model's classifier, a bare module) would not cast them.
    if "features" in batch:  # cached: the frozen backbone already ran
        with autocast():
            return trainable(batch["features"])
    if stage == HEAD:
        with torch.no_grad(), autocast():
            features = backbone_features(model, batch["pixel_values"])
        with autocast():
            return trainable(features)
    return trainable(batch["pixel_values"])
