"""The training loop, to be read top to bottom like Accelerate's ``examples/cv_example.py``.

    from hubclf import TrainConfig, train
    result = train(TrainConfig(model="hubclf_alexnet", data="photos/", output_dir="out", img_size=(448, 224),
                               freeze="backbone", epochs=5))
    result.best_metrics["top1"], result.best_model_dir

The same code runs as ``python``/``hubclf train`` on one CPU or GPU and under ``accelerate launch`` on many.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import math
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate import Accelerator, PartialState
from accelerate.logging import get_logger
from accelerate.state import AcceleratorState
from accelerate.utils import broadcast_object_list, gather_object, parse_flag_from_env, set_seed
from timm.data import resolve_model_data_config
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hubclf._faults import fault_point
from hubclf.atomic import atomic_write_text, restore_dir, strict_json_dumps, to_strict_json
from hubclf.hub import from_pretrained, push_to_hub, save_pretrained, update_card
from hubclf.plots import model_pictures
from hubclf.train.checkpoints import TrainerState, find_checkpoint, list_checkpoints, save_checkpoint
from hubclf.train.config import FREEZE_BACKBONE, TrainConfig
from hubclf.train.data import (
    ImageClassificationData,
    ImageClassificationDataset,
    PixelCache,
    TensorEvalTransform,
    build_transforms,
    load_image_dataset,
)
from hubclf.train.features import (
    FeatureDataset,
    backbone_features,
    check_frozen_head,
    feature_cache_key,
    load_or_extract_features,
    weights_fingerprint,
)
from hubclf.train.hardware import (
    choose_mixed_precision,
    default_num_workers,
    fused_optimizer_kwargs,
    processes_on_this_machine,
    shared_memory_budget,
)
from hubclf.train.metrics import evaluate, format_metrics
from hubclf.train.preflight import check_model_name, preflight_checks
from hubclf.train.recipes import Recipe, choose_recipe, dataset_labels, ema_model, should_stop_early
from hubclf.train.safety import RunLock, StopOnSignal, ignore_interrupts_in_worker, main_process_work
from hubclf.train.stages import HEAD, apply_stage, param_groups, prepare_stage, set_stage_modes, stage_for_epoch

logger = get_logger(__name__)  # Accelerate's logger: one line per message, from the main process

METRICS_FILE = "metrics.jsonl"
BEST_DIR, FINAL_DIR = "best", "final"
# Per-epoch columns that go into the model card (metrics.jsonl keeps everything, confusion matrices included).
CARD_COLUMNS = ("epoch", "stage", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5")


@dataclass
class TrainResult:
    """What a finished run produced. Metrics use the keys of ``hubclf.train.metrics.ClassificationMetrics``."""

    output_dir: Path
    best_model_dir: Path
    final_model_dir: Path
    metrics_file: Path
    best_metrics: dict[str, Any]
    final_metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    bad_images: list[str] = field(default_factory=list)
    hub_url: str | None = None
    strategy: dict[str, Any] | None = None  # --strategy auto: the decision (hubclf.train.strategy.StrategyDecision)


class TrainingInterrupted(RuntimeError):
    """Raised after SIGINT/SIGTERM once the run stopped at a safe point; ``checkpoint`` is the newest complete
    checkpoint (``None`` when the run was stopped before its first one)."""

    def __init__(self, checkpoint: Path | None, phase: str = "training") -> None:
        if checkpoint is None:
            message = (
                f"training interrupted during {phase}, before its first checkpoint: nothing to keep. "
                "Rerun the same command (or add --resume latest, which starts over)"
            )
        else:
            message = f"training interrupted during {phase}; state saved in {checkpoint}. Continue with --resume latest"
        super().__init__(message)
        self.checkpoint = checkpoint
        self.phase = phase


class TrainingDiverged(RuntimeError):
    """Raised after ``config.max_nonfinite_steps`` optimizer steps in a row had a NaN/inf loss or gradient."""


def train(config: TrainConfig) -> TrainResult:
    """Train ``config.model`` on ``config.data``; write checkpoints, ``metrics.jsonl`` and best/final models.

    The output folder is locked for the run (``OUTPUT_DIR/.lock``); SIGINT/SIGTERM in any phase stop it at the next
    safe point (``TrainingInterrupted``), a second signal aborts.

    Example::

        result = train(TrainConfig(model="hubclf_vgg11", data="user/flowers", output_dir="out", epochs=3))
    """
    preflight_checks(config)
    if config.strategy == "auto":  # several runs of this loop, see hubclf.train.strategy
        from hubclf.train.strategy import train_auto

        return train_auto(config)
    output_dir = Path(config.output_dir)
    config, speed_choices = _resolve_hardware_defaults(config)
    with StopOnSignal() as stop:
        accelerator = Accelerator(
            gradient_accumulation_steps=config.grad_accum_steps,
            mixed_precision=config.mixed_precision,
            log_with=config.log_with or None,
            project_dir=str(output_dir),
        )
        if config.mixed_precision is None:  # auto left it to Accelerate (accelerators, accelerate launch)
            config = dataclasses.replace(config, mixed_precision=str(accelerator.mixed_precision))
            speed_choices.append(f"mixed precision: {config.mixed_precision}, Accelerate's setting")
        for choice in speed_choices:
            logger.info(choice)
        lock = RunLock(output_dir)
        try:
            with main_process_work(accelerator, "locking the output folder") as is_main:
                if is_main:
                    lock.acquire()
                    for folder in (BEST_DIR, FINAL_DIR):  # undo a folder swap that a kill interrupted
                        restore_dir(output_dir / folder)
                    _refuse_to_mix_runs(config, output_dir)
            fault_point("train.locked")
            return _train(config, accelerator, stop, output_dir)
        finally:
            lock.release()


def _refuse_to_mix_runs(config: TrainConfig, output_dir: Path) -> None:
    """A new run (no --resume) may not start over a run that left something worth keeping."""
    if config.resume is not None:
        return
    complete = list_checkpoints(output_dir)
    finished = (output_dir / FINAL_DIR / "model.safetensors").is_file()
    if complete or finished:
        # Mixing two runs' checkpoints would make `--resume latest` pick the wrong one.
        what = f"checkpoint {complete[-1].name}" if complete else f"a finished model in {FINAL_DIR}/"
        raise ValueError(
            f"{output_dir} already holds a training run ({what}): continue it with --resume latest, "
            "or use a new --output-dir"
        )


_keep_process_group = contextvars.ContextVar("hubclf_keep_process_group", default=False)


@contextmanager
def process_group_kept() -> Iterator[None]:
    """``train()`` runs inside leave the distributed process group alive when they end; the caller destroys it.

    ``--strategy auto`` runs ``train()`` several times in the same processes, and a second ``init_process_group``
    there is unreliable (gloo ranks then dial the previous group's stale addresses).

        with process_group_kept():
            first, second = train(head_config), train(finetune_config)
        PartialState().destroy_process_group()
    """
    token = _keep_process_group.set(True)
    try:
        yield
    finally:
        _keep_process_group.reset(token)


def _end_training(accelerator: Accelerator) -> None:
    """``accelerator.end_training()`` (finish the trackers, destroy the process group), or, inside
    ``process_group_kept()``, only its first half."""
    if not _keep_process_group.get():
        accelerator.end_training()
        return
    for tracker in accelerator.trackers:
        tracker.finish()


def _stop_if_requested(accelerator: Accelerator, stop: StopOnSignal, output_dir: Path, phase: str) -> None:
    """At a safe point outside the step loop: end the run if a signal arrived (on any process)."""
    if stop.requested_on_any_process(accelerator):
        _end_training(accelerator)
        complete = list_checkpoints(output_dir)
        raise TrainingInterrupted(complete[-1] if complete else None, phase)


def _train(config: TrainConfig, accelerator: Accelerator, stop: StopOnSignal, output_dir: Path) -> TrainResult:
    # The same seed on every process: identical initial weights and identical shuffling decisions.
    set_seed(config.seed)

    # ---- data -------------------------------------------------------------------------------------------------
    # The main process fills the 🤗 datasets cache first; the others then read it instead of racing to write it.
    with accelerator.main_process_first():
        data = load_training_data(config)
    logger.info(
        f"{len(data.train)} train / {len(data.eval)} eval images ({data.eval_split_name}), "
        f"{data.num_classes} classes: {data.label_names}"
    )
    fault_point("train.data_loaded")
    _stop_if_requested(accelerator, stop, output_dir, "data loading")
    recipe = choose_recipe(config, data)  # every "auto" setting resolved from the data, one logged line each
    config = recipe.config
    for decision in recipe.decisions:
        logger.info(f"recipe: {decision}")

    # ---- model and transforms ---------------------------------------------------------------------------------
    model = create_model(config, data.label_names).to(accelerator.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)  # convolutions then produce NHWC activations too
    if config.compile:
        model.compile()  # in place: the module, its state_dict keys and timm's methods stay as they are
    if config.crop_pct is not None:
        # In the pretrained_cfg, so it is saved with the model: predict, eval and timm users then see the images
        # exactly as validation did.
        model.pretrained_cfg = model.default_cfg = {**model.pretrained_cfg, "crop_pct": config.crop_pct}
    data_config = resolve_model_data_config(model)
    train_transform, eval_transform = build_transforms(
        data_config, augment=recipe.augments, **recipe.transform_options
    )
    cache_train, cache_eval = _pixel_cache_plan(
        config, data, data_config, train_transform, eval_transform, accelerator.num_processes
    )
    train_images, eval_images = (
        ImageClassificationDataset(
            split,
            data.image_column,
            data.label_column,
            transform,
            on_bad_image=config.on_bad_image,
            input_size=data_config["input_size"],
            cache_pixels=cache,
        )
        for split, transform, cache in (
            (data.train, train_transform, cache_train),
            (data.eval, eval_transform, cache_eval),
        )
    )
    stages = [stage_for_epoch(config, epoch) for epoch in range(config.epochs)]
    frozen_fingerprint = weights_fingerprint(model) if HEAD in stages else None
    fault_point("train.model_created")
    _stop_if_requested(accelerator, stop, output_dir, "model creation")

    # ---- cached frozen features (--freeze backbone --no-augment) -----------------------------------------------
    state = TrainerState()
    if config.feature_cache_mode != "off":
        train_set, eval_set = _feature_sets(accelerator, model, config, train_images, eval_images, frozen_fingerprint)
        state.bad_images = sorted(set(train_set.bad_images + eval_set.bad_images))
        _stop_if_requested(accelerator, stop, output_dir, "feature extraction")
    else:
        train_set, eval_set = train_images, eval_images
    workers = 0 if isinstance(train_set, FeatureDataset) else config.num_workers
    # The loaders' own draws (worker seeds) come from a private generator: drawn from the global RNG, their number
    # (per epoch, or once with persistent workers) would shift the dropout draws with --num-workers.
    loader_generator = torch.Generator().manual_seed(config.seed)
    # Persistent workers: each epoch's train and eval passes reuse their workers instead of starting new ones;
    # the per-epoch augmentation seed reaches them through shared memory (ImageClassificationDataset).
    loader_args = dict(
        batch_size=config.batch_size,
        num_workers=workers,
        pin_memory=accelerator.device.type == "cuda",
        worker_init_fn=ignore_interrupts_in_worker if workers else None,
        persistent_workers=workers > 0,
        generator=loader_generator,
    )
    sampler = recipe.train_sampler(dataset_labels(train_set))  # --balanced-sampler, else a (seed, epoch) shuffle
    train_loader = DataLoader(train_set, sampler=sampler, **loader_args)
    eval_loader = DataLoader(eval_set, shuffle=False, **loader_args)

    # ---- optimizer (one for the whole run; see stages.param_groups) --------------------------------------------
    apply_stage(model, stages[0], config)  # requires_grad as in the first epoch, which param_groups reads
    optimizer = create_optimizer_v2(
        model,
        opt=config.opt,
        lr=config.lr,
        weight_decay=config.weight_decay,
        param_group_fn=lambda m: param_groups(m, config),
        **fused_optimizer_kwargs(config.opt, accelerator.device),  # no model-sized temporaries per step
    )

    criterion, mixer = recipe.criterion(accelerator.device), recipe.mixer(data.num_classes)
    ema = recipe.model_ema(model)  # --model-ema: evaluated and saved instead of the raw weights
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    # ---- resume point, then Accelerate wrapping for that point's stage -----------------------------------------
    checkpoint = find_checkpoint(config.resume, output_dir) if config.resume else None
    if checkpoint is not None:
        saved = TrainerState.load(checkpoint)
        if saved.stage == HEAD and saved.backbone_fingerprint != frozen_fingerprint:
            raise ValueError(
                f"{checkpoint} was trained on a different frozen backbone than --model {config.model} gives now "
                "(head-stage checkpoints store the classifier only); resume with the original weights"
            )
        saved.bad_images = sorted(set(saved.bad_images + state.bad_images))
        if checkpoint.name not in saved.lineage[-1:]:  # checkpoints from before lineage was recorded
            saved.lineage.append(checkpoint.name)
        state = saved
    stage = state.stage or stages[min(state.epoch, config.epochs - 1)]
    trainable, optimizer, prepared_train_loader, prepared_eval_loader = prepare_stage(
        accelerator, model, stage, config, optimizer, train_loader, eval_loader
    )
    updates_per_epoch = math.ceil(len(prepared_train_loader) / config.grad_accum_steps)
    scheduler, _ = create_scheduler_v2(
        optimizer.optimizer,
        sched=config.sched,
        num_epochs=config.epochs,
        warmup_epochs=config.warmup_epochs,
        min_lr=config.min_lr,
        step_on_epochs=False,  # the LR moves every optimizer update, not in epoch-sized jumps
        updates_per_epoch=updates_per_epoch,
    )
    if checkpoint is not None:
        # Restores weights, optimizer, gradient-accumulation step and every process's RNG. Everything above that
        # consumed randomness (init, feature extraction) ran before this line, so the RNG continues exactly.
        accelerator.load_state(str(checkpoint))
        if scheduler is not None:
            scheduler.step_update(state.global_step)
        logger.info(f"resumed from {checkpoint}: epoch {state.epoch + 1}, step {state.global_step}")
    state.stage = stage
    with main_process_work(accelerator, "writing the metrics file") as is_main:
        if is_main:
            _rewrite_metrics_file(output_dir / METRICS_FILE, state.history)  # drops lines newer than the checkpoint
            recipe.save(output_dir)
    if config.log_with:
        accelerator.init_trackers("hubclf", config=_tracker_config(config))

    # ---- epochs -----------------------------------------------------------------------------------------------
    for epoch in range(state.epoch, config.epochs):
        if should_stop_early(state.history, state.best_epoch, config.patience):
            logger.info(f"early stopping: no better val top-1 for {config.patience} epochs (best: epoch "
                        f"{state.best_epoch}); final/ holds epoch {epoch}")  # fmt: skip
            break
        if stages[epoch] != stage:
            stage = stages[epoch]
            trainable, optimizer, prepared_train_loader, prepared_eval_loader = prepare_stage(
                accelerator, model, stage, config, optimizer, train_loader, eval_loader
            )
            logger.info(f"epoch {epoch + 1}: unfreezing the backbone (its lr = lr x {config.backbone_lr_scale})")
        state.stage = stage
        state.backbone_fingerprint = frozen_fingerprint if stage == HEAD else None
        started = time.perf_counter()

        # Data order and augmentation depend on (seed, epoch) only, so a resumed epoch replays exactly.
        sampler.start_epoch(epoch)
        if isinstance(train_set, ImageClassificationDataset) and recipe.augments:
            train_set.seed_augmentation(config.seed, epoch)
        batches = prepared_train_loader
        if state.batches_done:
            batches = accelerator.skip_first_batches(prepared_train_loader, state.batches_done)
        totals = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # loss sum, count, correct
        lr = optimizer.param_groups[0]["lr"]  # the classifier's; reported as the epoch's last step used it
        bad_rows: list[int] = []
        nonfinite = torch.zeros((), dtype=torch.bool, device=accelerator.device)  # in this optimizer step

        set_stage_modes(model, stage)
        progress = tqdm(
            batches,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            initial=state.batches_done,
            total=len(prepared_train_loader),
            disable=not accelerator.is_local_main_process,
        )
        for batch in progress:
            with accelerator.accumulate(trainable):
                targets = None
                if mixer is not None:  # seeded per (seed, epoch, batch, process): resumes mix alike
                    batch["pixel_values"], targets = mixer(
                        batch["pixel_values"], batch["labels"], epoch=epoch, batch=state.batches_done,
                        process=accelerator.process_index,
                    )  # fmt: skip
                logits = batch_logits(accelerator, model, trainable, stage, batch)
                loss, correct, count = _masked_loss(logits, batch["labels"], batch["valid"], criterion, targets)
                accelerator.backward(loss)
                finite_loss = loss.detach().isfinite()
                nonfinite |= ~finite_loss
                applied = True
                if accelerator.sync_gradients:
                    # A NaN/inf loss or gradient is skipped, not applied: one bad batch cannot poison the weights.
                    applied = _all_finite(accelerator, trainable, nonfinite)
                    nonfinite.zero_()
                    if applied:
                        if config.clip_grad:
                            accelerator.clip_grad_norm_(trainable.parameters(), config.clip_grad)
                        optimizer.step()
                optimizer.zero_grad()
            # Non-finite batches stay out of the train loss/top-1 (they were not trained on).
            totals += torch.stack([loss.detach() * count, count, correct]).double() * finite_loss
            totals.nan_to_num_(0.0)
            bad_rows += batch["index"][~batch["valid"].bool()].tolist()
            state.batches_done += 1
            if not accelerator.sync_gradients:
                continue
            state.global_step += 1
            if ema is not None and applied:
                ema.update(model, step=state.global_step)
            lr = optimizer.param_groups[0]["lr"]
            if scheduler is not None:  # --sched none: a constant learning rate
                scheduler.step_update(state.global_step)
            progress.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            fault_point("train.step")
            if applied:
                state.nonfinite_in_a_row = 0
            else:
                _count_nonfinite_step(accelerator, config, state, epoch, output_dir)

            every = config.save_every_steps
            interrupted = stop.requested_on_any_process(accelerator)
            if interrupted or (every and state.global_step % every == 0):
                state.partial_epoch = _add_totals(state.partial_epoch, accelerator.reduce(totals, "sum"))
                totals.zero_()
                path = save_checkpoint(accelerator, output_dir, state, config.keep_checkpoints)
                if interrupted:
                    _end_training(accelerator)
                    raise TrainingInterrupted(path)
        progress.close()

        # ---- evaluate, record, save --------------------------------------------------------------------------
        train_totals = _add_totals(state.partial_epoch, accelerator.reduce(totals, "sum"))
        train_loss = train_totals["loss_sum"] / max(train_totals["count"], 1)
        model.eval()
        predictor = accelerator.unwrap_model(trainable)  # no DDP hooks needed without backward
        evaluated = model if ema is None else ema_model(ema, model)  # the model that is saved
        if ema is not None:
            predictor = ema.module.get_classifier() if stage == HEAD else ema.module

        def eval_logits(
            batch: dict[str, Any], net: nn.Module = predictor, stage: str = stage, whole: nn.Module = evaluated
        ) -> torch.Tensor:
            fault_point("eval.batch")
            return batch_logits(accelerator, whole, net, stage, batch)

        metrics = evaluate(
            accelerator,
            eval_logits,
            prepared_eval_loader,
            num_classes=data.num_classes,
            label_names=data.label_names,
            desc="eval",
        )
        new_bad = _collect_bad_images(
            train_images, bad_rows, eval_images, metrics.pop("skipped_rows"), state.bad_images
        )
        state.bad_images = sorted(set(state.bad_images) | set(new_bad))
        record = to_strict_json({
            "epoch": epoch + 1,
            "step": state.global_step,
            "stage": stage,
            "lr": lr,
            "train_loss": train_loss,
            "train_top1": train_totals["correct"] / max(train_totals["count"], 1),
            **{f"val_{name}": value for name, value in metrics.items()},
            "bad_images": len(state.bad_images),
            "nonfinite_steps": state.nonfinite_total,
            "seconds": round(time.perf_counter() - started, 2),
        })  # fmt: skip
        state.history.append(record)
        state.epoch, state.batches_done, state.partial_epoch = epoch + 1, 0, {}
        is_best = state.best_top1 is None or metrics["top1"] > state.best_top1
        if is_best:
            state.best_top1, state.best_epoch = metrics["top1"], epoch + 1

        # The checkpoint below marks this epoch done: a kill before it replays the epoch, which rewrites these.
        with main_process_work(accelerator, "writing the metrics and the best model") as is_main:
            if is_main:
                _rewrite_metrics_file(output_dir / METRICS_FILE, state.history)
                fault_point("epoch.metrics_written")
                if is_best:
                    _save_model(
                        evaluated, output_dir / BEST_DIR, config, data, state, accelerator.num_processes, recipe,
                        pictures=False,
                    )  # fmt: skip
                    fault_point("epoch.best_saved")
        if config.log_with:
            accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=epoch + 1)
        accelerator.print(
            f"epoch {epoch + 1}/{config.epochs} [{stage}] train_loss {train_loss:.4f} "
            f"{format_metrics(metrics, prefix='val_')}"
            + (f" bad_images {len(state.bad_images)}" if state.bad_images else "")
            + (f" non-finite steps skipped {state.nonfinite_total}" if state.nonfinite_total else "")
            + f" ({record['seconds']:.1f}s){' *best*' if is_best else ''}"
        )
        path = save_checkpoint(accelerator, output_dir, state, config.keep_checkpoints)
        fault_point("epoch.checkpointed")
        if stop.requested_on_any_process(accelerator):
            _end_training(accelerator)
            raise TrainingInterrupted(path)

    # ---- final model, push (main process only; a failure there fails every process) ----------------------------
    with main_process_work(accelerator, "saving the final model") as is_main:
        if is_main:
            final = model if ema is None else ema_model(ema, model)
            _save_model(final, output_dir / FINAL_DIR, config, data, state, accelerator.num_processes, recipe)
            fault_point("final.saved")
            _refresh_best_card(output_dir / BEST_DIR, data, state)
            fault_point("final.best_card_saved")
    hub_url = None
    if config.push_to_hub:
        _stop_if_requested(accelerator, stop, output_dir, "the final save (best/ and final/ are saved; not pushed)")
        with main_process_work(accelerator, "pushing to the Hub") as is_main:
            if is_main:
                hub_url = push_to_hub(
                    output_dir / BEST_DIR,
                    config.push_to_hub,
                    private=config.hub_private,
                    commit_message=(
                        f"hubclf train: {config.model} on {_dataset_name(data.source)}, best epoch {state.best_epoch}"
                    ),
                )
                logger.info(f"pushed the best model (epoch {state.best_epoch}) to {hub_url}")
    _end_training(accelerator)
    fault_point("train.done")
    best = state.history[state.best_epoch - 1]
    return TrainResult(
        output_dir=output_dir,
        best_model_dir=output_dir / BEST_DIR,
        final_model_dir=output_dir / FINAL_DIR,
        metrics_file=output_dir / METRICS_FILE,
        best_metrics=_val_metrics(best),
        final_metrics=_val_metrics(state.history[-1]),
        history=state.history,
        bad_images=state.bad_images,
        hub_url=hub_url,
    )


def _all_finite(accelerator: Accelerator, trainable: nn.Module, nonfinite_loss: torch.Tensor) -> bool:
    """Whether this optimizer step's loss and (already all-reduced) gradients are finite on every process.

    Under fp16 the gradient scaler handles overflowing gradients itself (skipping and rescaling), so only the loss
    is checked there.
    """
    bad = nonfinite_loss.clone()
    if accelerator.scaler is None:
        grads = [p.grad for p in trainable.parameters() if p.grad is not None]
        if grads:
            # A sum is NaN or inf as soon as one element is, and costs one multi-threaded read of each gradient:
            # isfinite().all() was 170 ms per AlexNet step on 2 cores (a quarter of the step), the sums 4 ms. Only
            # a sum beyond 3.4e38 of finite values reads as non-finite, and such a step is diverging anyway.
            bad |= ~torch.stack([g.sum(dtype=torch.float32) for g in grads]).isfinite().all()
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad.long(), "sum") > 0
    return not bool(bad)


def _count_nonfinite_step(
    accelerator: Accelerator, config: TrainConfig, state: TrainerState, epoch: int, output_dir: Path
) -> None:
    state.nonfinite_in_a_row += 1
    state.nonfinite_total += 1
    logger.warning(
        f"step {state.global_step}: non-finite (NaN/inf) loss or gradient, update skipped "
        f"({state.nonfinite_in_a_row} in a row, limit --max-nonfinite-steps {config.max_nonfinite_steps})"
    )
    if state.nonfinite_in_a_row < config.max_nonfinite_steps:
        return
    _end_training(accelerator)
    if state.best_epoch:
        best = (
            f"{output_dir / BEST_DIR} holds the model of epoch {state.best_epoch} "
            f"(val top-1 {state.best_top1:.1%}), still loadable"
        )
    else:
        best = "No epoch finished, so there is no best model"
    raise TrainingDiverged(
        f"training diverged: {state.nonfinite_in_a_row} optimizer steps in a row had a NaN/inf loss or gradient "
        f"(the last at step {state.global_step}, epoch {epoch + 1}); they were skipped, not applied. {best}. "
        "Lower --lr, add --clip-grad, or raise --max-nonfinite-steps"
    )


def _resolve_hardware_defaults(config: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """``config`` with ``num_workers="auto"`` and ``mixed_precision="auto"`` decided for this machine (see
    ``hubclf.train.hardware``), and one log line per decision saying why."""
    # The state the Accelerator below will share; like AcceleratorState, honour ACCELERATE_USE_CPU, or a multi-CPU
    # launch would be initialised as a single process.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    choices, changes = [], {}
    if config.num_workers == "auto":
        local_processes = processes_on_this_machine(state.num_processes)
        changes["num_workers"] = default_num_workers(processes_per_machine=local_processes)
        choices.append(f"--num-workers auto: {changes['num_workers']} DataLoader worker(s) per process")
    if config.mixed_precision == "auto" and AcceleratorState._shared_state:
        # An earlier run in this process fixed Accelerate's precision; it cannot change until the process restarts.
        changes["mixed_precision"] = AcceleratorState().mixed_precision
        choices.append(f"--mixed-precision auto: {changes['mixed_precision']}, as the earlier run in this process")
    elif config.mixed_precision == "auto":
        decision = [choose_mixed_precision(state.device.type)]
        if state.num_processes > 1:
            broadcast_object_list(decision)  # every process must train in the same precision: the main one decides
        changes["mixed_precision"], why = decision[0]
        choices.append(f"--mixed-precision auto: {changes['mixed_precision'] or 'left to Accelerate'} ({why})")
    if config.channels_last is None:
        changes["channels_last"] = state.device.type == "cpu"
        layout = "on" if changes["channels_last"] else "off"
        choices.append(f"channels-last memory format {layout} (device: {state.device.type})")
    return dataclasses.replace(config, **changes), choices


def _pixel_cache_plan(
    config: TrainConfig,
    data: Any,
    data_config: dict[str, Any],
    train_transform: Any,
    eval_transform: Any,
    num_processes: int,
) -> tuple[bool, bool]:
    """Whether the train and eval splits keep their decoded pixels in memory (``--cache-images auto``).

    Only splits whose every epoch sees the same pixels (``TensorEvalTransform``), only when features are not
    cached instead (those runs read the images once), and only when both fit the shared-memory budget; one line
    in the log either way.
    """
    fixed = [
        (name, len(split))
        for name, split, transform in (("train", data.train, train_transform), ("eval", data.eval, eval_transform))
        if isinstance(transform, TensorEvalTransform)
    ]
    if config.cache_images == "off" or config.feature_cache_mode != "off" or not fixed:
        return False, False
    input_size = tuple(data_config["input_size"])
    needed = sum(PixelCache.nbytes_for(rows, input_size) for _, rows in fixed)
    budget = shared_memory_budget(processes_on_this_machine(num_processes))
    images = " + ".join(f"{rows} {name}" for name, rows in fixed)
    if needed > budget:
        logger.info(
            f"image cache off: the decoded pixels of {images} images would take {needed / 2**20:.1f} MiB, over "
            f"this process's budget of {budget / 2**20:.1f} MiB (a quarter of RAM, half of free /dev/shm)"
        )
        return False, False
    logger.info(
        f"image cache: the decoded {input_size[1]}x{input_size[2]} pixels of {images} images stay in shared "
        f"memory ({needed / 2**20:.1f} MiB); epochs after the first skip decoding and resizing"
    )
    names = {name for name, _ in fixed}
    return "train" in names, "eval" in names


# ---- data -----------------------------------------------------------------------------------------------------
def load_training_data(config: TrainConfig) -> ImageClassificationData:
    """The checked train/eval splits that ``config`` names: the same for ``train``, ``lr-find``, ``--strategy auto``
    and ``compare``.

    Example::

        data = load_training_data(TrainConfig(model="hubclf_alexnet", data="photos/", output_dir="out"))
    """
    return load_image_dataset(
        config.data,
        image_column=config.image_column,
        label_column=config.label_column,
        train_split=config.train_split,
        eval_split=config.eval_split,
        val_split=config.val_split,
        seed=config.seed,
        num_classes=config.num_classes,
        labels=config.labels,
        path_column=config.path_column,
    )


# ---- model ----------------------------------------------------------------------------------------------------
def create_model(config: TrainConfig, label_names: list[str]) -> nn.Module:
    """The model to train, with a fresh ``len(label_names)``-class classifier unless a saved one already fits.

    ``config.model`` is any timm architecture name (``resnet18``, ``hubclf_alexnet``...; ``pretrained`` /
    ``weights`` pick the starting weights), or a model saved by ``hubclf.save_pretrained`` (``hf-hub:user/repo``
    or a folder), whose backbone is kept. ``config.img_size`` becomes the model's input size: an ``img_size``
    argument for architectures that take one (hubclf's, ViTs), ``pretrained_cfg["input_size"]`` for the
    convolutional ones that take any size and no such argument (ResNet, ConvNeXt...).
    """
    num_classes = len(label_names)
    name = config.model
    check_model_name(name)
    if name.startswith(("hf-hub:", "local-dir:")) or Path(name).is_dir():
        if not config.pretrained or config.weights:
            raise ValueError(f"--no-pretrained/--weights apply to architecture names, not to the saved model {name}")
        model = _create_at_size(partial(from_pretrained, name, num_classes=num_classes), config.img_size)
        saved_names = getattr(model, "label_names", None)
        if saved_names and list(saved_names) != list(label_names):
            logger.info(f"{name} was trained on classes {saved_names}; starting a new classifier for these ones")
            model.reset_classifier(num_classes)
    else:
        overlay = {"file": config.weights} if config.weights else None
        if config.pretrained:
            known = timm.models.get_pretrained_cfg(name)
            sources = {**(known.to_dict() if known else {}), **(overlay or {})}
            if not any(sources.get(key) for key in ("url", "file", "hf_hub_id", "state_dict")):
                raise ValueError(f"timm knows no pretrained weights for {name}; pass --weights FILE or --no-pretrained")
        else:
            logger.warning(f"--no-pretrained: {name} starts from random weights")
        create = partial(
            timm.create_model, name, pretrained=config.pretrained, num_classes=num_classes,
            pretrained_cfg_overlay=overlay,
        )  # fmt: skip
        with _missing_pretrained_tensors() as missing:
            model = _create_at_size(create, config.img_size)
        classifier = model.pretrained_cfg.get("classifier") or ()
        prefixes = tuple(f"{c}." for c in ([classifier] if isinstance(classifier, str) else classifier))
        missing = [k for k in missing if not k.startswith(prefixes) and not k.endswith("num_batches_tracked")]
        if missing:
            source = config.weights or "its pretrained weights"
            raise ValueError(
                f"{source} lacks {len(missing)} of {name}'s backbone tensors, which would silently stay random: "
                f"{missing[:8]}{' ...' if len(missing) > 8 else ''}"
            )
    if config.freeze == FREEZE_BACKBONE:
        check_frozen_head(model)  # the head-only stage and cached features rely on timm's classifier contract
    return model


@contextmanager
def _missing_pretrained_tensors() -> Iterator[list[str]]:
    """The tensors timm reports missing while it loads pretrained weights. When it replaces the classifier it loads
    non-strictly and only logs the others (at INFO level); hubclf's own models check this in their checkpoint filter.
    """
    missing: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            found = re.match(r"Missing keys \((.*)\) discovered", record.getMessage())
            missing.extend(found.group(1).split(", ") if found else [])

    timm_logger, handler = logging.getLogger("timm.models._builder"), Collect(logging.INFO)
    level = timm_logger.level
    timm_logger.addHandler(handler)
    timm_logger.setLevel(min(level or logging.INFO, logging.INFO))
    try:
        yield missing
    finally:
        timm_logger.removeHandler(handler)
        timm_logger.setLevel(level)


# pretrained_cfg fields tied to the source input size (e.g. resnet18.a1_in1k: pool_size 7×7, tested at 288×288).
_SOURCE_SIZE_FIELDS = ("pool_size", "test_input_size", "test_crop_pct", "test_pool_size")


def _create_at_size(create: Callable[..., nn.Module], img_size: tuple[int, int] | None) -> nn.Module:
    """``create(img_size=img_size)``, or for an architecture without that argument ``create()`` with the size
    written into its ``pretrained_cfg`` (what timm's data config, the saved config and predict/eval read)."""
    if img_size is None:
        return create()
    try:
        return create(img_size=img_size)
    except TypeError as e:
        if "'img_size'" not in str(e):
            raise
    model = create()
    cfg = dict(model.pretrained_cfg)
    cfg["input_size"] = (cfg["input_size"][0], *img_size)
    for key in _SOURCE_SIZE_FIELDS:  # they describe the source weights' sizes, not this model's
        cfg.pop(key, None)
    model.pretrained_cfg = model.default_cfg = cfg
    logger.info(f"{type(model).__name__} takes no img_size argument: {tuple(img_size)} is its input size for data")
    return model


def batch_logits(
    accelerator: Accelerator, model: nn.Module, trainable: nn.Module, stage: str, batch: dict[str, Any]
) -> torch.Tensor:
    """Logits of a batch (``pixel_values`` or cached ``features``); ``trainable`` is what ``prepare_stage`` wrapped.

    In the head stage the backbone runs outside autograd, so backward stores none of its activations: only the
    classifier's input. That is where feature extraction saves its memory.
    """
    # The classifier runs under the same autocast as the backbone: under bf16 the features are bf16, and a
    # ``trainable`` that Accelerate did not wrap (the EMA model's classifier, a bare module) would not cast them.
    if "features" in batch:  # cached: the frozen backbone already ran
        with accelerator.autocast():
            return trainable(batch["features"])
    if stage == HEAD:
        with torch.no_grad(), accelerator.autocast():
            features = backbone_features(model, batch["pixel_values"])
        with accelerator.autocast():
            return trainable(features)
    return trainable(batch["pixel_values"])


def _masked_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    valid: torch.Tensor,
    criterion: Any = None,
    targets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean per-image loss (``criterion``: the recipe's, else cross-entropy) over the readable images of a batch
    (0 if none, so every process still steps); ``targets``: mixup's soft targets instead of ``labels``."""
    valid = valid.bool()
    if criterion is None:
        losses = F.cross_entropy(logits.float(), labels, reduction="none")
    else:
        losses = criterion(logits, labels if targets is None else targets)
    count = valid.sum()
    loss = (losses * valid).sum() / count.clamp(min=1)
    correct = ((logits.argmax(dim=1) == labels) & valid).sum()
    return loss, correct.float(), count.float()


def _add_totals(previous: dict[str, float], reduced: torch.Tensor) -> dict[str, float]:
    loss_sum, count, correct = reduced.tolist()
    return {
        "loss_sum": previous.get("loss_sum", 0.0) + loss_sum,
        "count": previous.get("count", 0.0) + count,
        "correct": previous.get("correct", 0.0) + correct,
    }


# ---- cached features ------------------------------------------------------------------------------------------
def _feature_sets(
    accelerator: Accelerator,
    model: nn.Module,
    config: TrainConfig,
    train_images: ImageClassificationDataset,
    eval_images: ImageClassificationDataset,
    weights: str,
) -> tuple[FeatureDataset, FeatureDataset]:
    """Run the frozen backbone once over both splits (or load a matching disk cache)."""
    cache_dir = None
    if config.feature_cache_mode == "disk":
        cache_dir = Path(config.feature_cache_dir or Path(config.output_dir) / "feature_cache")
    feature_sets = []
    for name, images in (("train", train_images), ("eval", eval_images)):
        key = feature_cache_key(
            weights=weights,
            transform=images.transform,
            data_fingerprint=images.dataset._fingerprint,
            rows=len(images),
            autocast=str(accelerator.mixed_precision),
            pooling=str(getattr(model, "global_pool", None)),
        )
        loader = accelerator.prepare_data_loader(
            DataLoader(
                images,
                batch_size=config.batch_size,
                shuffle=False,
                num_workers=config.num_workers,
                worker_init_fn=ignore_interrupts_in_worker if config.num_workers else None,
                generator=torch.Generator().manual_seed(config.seed),  # not the global RNG: see loader_generator
            )
        )
        feature_set = load_or_extract_features(
            accelerator, model, loader, key=key, cache_dir=cache_dir, desc=f"{name} features"
        )
        feature_sets.append(FeatureDataset(feature_set, bad_images=[images.describe(r) for r in feature_set.bad_rows]))
        fault_point("train.features_ready")
    accelerator.free_memory()  # forget the extraction loaders
    return feature_sets[0], feature_sets[1]


def _collect_bad_images(
    train_images: Any, train_rows: list[int], eval_images: Any, eval_rows: list[int], known: list[str]
) -> list[str]:
    """Gather every process's unreadable rows, and log the ones not reported before."""
    train_rows = sorted(set(sum(gather_object([train_rows]), [])))
    found = [train_images.describe(r) for r in train_rows if isinstance(train_images, ImageClassificationDataset)]
    found += [eval_images.describe(r) for r in eval_rows if isinstance(eval_images, ImageClassificationDataset)]
    new = sorted(set(found) - set(known))
    for where in new:
        logger.warning(f"skipped unreadable image: {where}")
    return new


# ---- outputs --------------------------------------------------------------------------------------------------
def _save_model(
    model: nn.Module,
    directory: Path,
    config: TrainConfig,
    data: Any,
    state: TrainerState,
    num_processes: int,
    recipe: Recipe | None = None,
    pictures: bool = True,
) -> None:
    """``save_pretrained`` with the run's card; ``pictures=False`` leaves the plots to ``_refresh_best_card``."""
    history = state.history
    best = history[state.best_epoch - 1] if state.best_epoch else history[-1]
    eval_results = {"accuracy": best["val_top1"], "loss": best["val_loss"]}
    if "val_top5" in best:
        eval_results["top5_accuracy"] = best["val_top5"]
    if "val_macro_f1" in best:
        eval_results["macro_f1"] = best["val_macro_f1"]
    # The confusion matrix of the epoch whose weights these are: the best one, or the last one for final/.
    shown = history[-1] if directory.name == FINAL_DIR else best
    if pictures:
        images, images_skipped = model_pictures(shown.get("val_confusion_matrix"), data.label_names, history)
    else:
        images, images_skipped = {}, BEST_PICTURES_LATER
    save_pretrained(
        model,
        directory,
        label_names=data.label_names,
        dataset=_dataset_name(data.source),
        base_model=_base_model(config, model),
        freeze=config.freeze,
        hyperparameters=_hyperparameters(config, num_processes, recipe),
        eval_results=eval_results,
        epoch_metrics=_card_rows(history),
        images=images,
        images_skipped=images_skipped,
    )


def _refresh_best_card(directory: Path, data: Any, state: TrainerState) -> None:
    """Give the best model's card the whole run's per-epoch table, and its pictures: the best epoch's confusion
    matrix and the whole run's curves, drawn once here instead of at every new best (~1 s each with 24 classes).
    Its weights stay on disk (loading them would hold a second copy of the model in memory)."""
    best = state.history[state.best_epoch - 1]
    images, images_skipped = model_pictures(best.get("val_confusion_matrix"), data.label_names, state.history)
    update_card(directory, epoch_metrics=_card_rows(state.history), images=images, images_skipped=images_skipped)


# What best/'s card says in place of its pictures until the run ends (a killed run's best/ keeps saying it).
BEST_PICTURES_LATER = "they are drawn when the run ends"


def _card_rows(history: list[dict]) -> list[dict]:
    return [{k: row[k] for k in CARD_COLUMNS if k in row} for row in history]


def _dataset_name(source: str) -> str:
    """A Hub id without its ``@revision``; a local folder or CSV by its name only, so a published card does not reveal
    local paths."""
    path = Path(source).expanduser()
    if path.suffix.lower() == ".csv":
        return f"{path.resolve().name} (local labels CSV)"
    if not path.is_dir():
        return source.partition("@")[0]
    saved = any((path / marker).is_file() for marker in ("dataset_dict.json", "state.json"))
    return f"{path.resolve().name} ({'saved dataset' if saved else 'local image folder'})"


def _base_model(config: TrainConfig, model: nn.Module) -> str | None:
    """Where the starting weights came from, for the card (a Hub id when there is one, never a local path)."""
    name = config.model
    if name.startswith("hf-hub:"):
        return name.removeprefix("hf-hub:")
    if name.startswith("local-dir:") or Path(name).is_dir():
        return f"{Path(name.removeprefix('local-dir:')).resolve().name} (local model folder)"
    if not config.pretrained:
        return None
    if config.weights:
        return f"{name} ({Path(config.weights).name})"
    architecture, tag = name.partition(".")[0], model.pretrained_cfg.get("tag")
    return model.pretrained_cfg.get("hf_hub_id") or (f"{architecture}.{tag}" if tag else architecture)


def _hyperparameters(config: TrainConfig, num_processes: int, recipe: Recipe | None = None) -> dict[str, Any]:
    keys = (
        "epochs", "batch_size", "grad_accum_steps", "lr", "backbone_lr_scale", "opt", "weight_decay", "sched",
        "warmup_epochs", "min_lr", "clip_grad", "seed", "augment", "crop_pct", "freeze", "unfreeze_after",
        "mixed_precision", "hflip", "color_jitter", "aa", "reprob", "smoothing", "class_weights", "patience",
    )  # fmt: skip
    values = {key: getattr(config, key) for key in keys}
    values.update(
        {key: getattr(config, key) for key in ("mixup", "cutmix", "balanced_sampler") if getattr(config, key)}
    )
    if config.model_ema:
        values["model_ema_decay"] = config.model_ema_decay
    values["img_size"] = list(config.img_size) if config.img_size else None
    values["processes"] = num_processes
    values.update(recipe.card_fields() if recipe else {})
    return {key: value for key, value in values.items() if value is not None}


def _tracker_config(config: TrainConfig) -> dict[str, Any]:
    # TensorBoard's hparams accept scalars and strings only.
    return {k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool))}


def _val_metrics(record: dict[str, Any]) -> dict[str, Any]:
    return {key.removeprefix("val_"): value for key, value in record.items() if key.startswith("val_")}


def _rewrite_metrics_file(path: Path, history: list[dict[str, Any]]) -> None:
    """The whole file, atomically: a kill mid-write never leaves half a line (NaN/inf are written as null)."""
    atomic_write_text(path, "".join(strict_json_dumps(record) + "\n" for record in history))
