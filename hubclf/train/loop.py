"""The training loop, to be read top to bottom like Accelerate's ``examples/cv_example.py``.

    result = run(TrainConfig(model="hubclf_alexnet", data="photos/", output_dir="out", img_size=(448, 224),
                             freeze="backbone", epochs=5))
    result.best_metrics["top1"], result.best_model_dir

``run`` is one run of the loop; ``hubclf.train.train`` (``hubclf.train.api``) checks the settings first and runs
``--strategy auto`` as several of them. The same code runs as ``python``/``hubclf train`` on one CPU or GPU and under
``accelerate launch`` on many. What the run is built from (model, datasets, loaders) comes from
``hubclf.train.setup``; what it writes goes through ``hubclf.train.outputs``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import gather_object, set_seed
from timm.scheduler import create_scheduler_v2
from tqdm.auto import tqdm

from hubclf._faults import fault_point
from hubclf.atomic import restore_dir, to_strict_json
from hubclf.data.dataset import ImageClassificationDataset
from hubclf.data.splits import ImageClassificationData
from hubclf.data.streaming import ImageStream
from hubclf.hub import CONFIG_NAME, check_saveable, push_to_hub, update_card
from hubclf.metrics import evaluate, format_metrics
from hubclf.tensor_file import has_shared_tensors
from hubclf.text import listing, printable
from hubclf.train.background import BackgroundWrites, fits_in_memory
from hubclf.train.checkpoints import (
    StartedCheckpoint,
    TrainerState,
    find_checkpoint,
    finish_checkpoint,
    list_checkpoints,
    load_training_state,
    read_manifest,
    save_checkpoint,
    snapshot_bytes,
    start_checkpoint,
)
from hubclf.train.config import TrainConfig
from hubclf.train.features import weights_fingerprint
from hubclf.train.input_size import choose_input_size
from hubclf.train.outputs import (
    BEST_DIR,
    FINAL_DIR,
    METRICS_FILE,
    TrainResult,
    dataset_name,
    refresh_best_card,
    save_model,
    tracker_config,
    write_metrics,
)
from hubclf.train.recipes import Recipe, choose_recipe, dataset_labels, ema_model, should_stop_early
from hubclf.train.resume_check import check_resume_data, write_settings
from hubclf.train.safety import (
    RunLock,
    StopOnSignal,
    TrainingDiverged,
    TrainingInterrupted,
    main_process_work,
    raise_on_every_process,
)
from hubclf.train.setup import (
    build_loaders,
    build_optimizer,
    create_model,
    decode_device_plan,
    feature_sets,
    image_datasets,
    load_training_data,
    numerics_record,
    resolve_hardware_defaults,
    skip_batches,
)
from hubclf.train.stages import HEAD, batch_logits, prepare_stage, set_stage_modes, stage_for_epoch

logger = get_logger(__name__)  # Accelerate's logger: one line per message, from the main process


def run(config: TrainConfig, *, keep_process_group: bool = False) -> TrainResult:
    """Train ``config.model`` on ``config.data``; write checkpoints, ``metrics.jsonl`` and best/final models.

    The output folder is locked for the run (``OUTPUT_DIR/.lock``); SIGINT/SIGTERM in any phase stop it at the next
    safe point (``TrainingInterrupted``), a second signal aborts. ``keep_process_group=True`` leaves the distributed
    process group alive at the end, for a caller that runs the loop several times in the same processes
    (``--strategy auto``: a second ``init_process_group`` there is unreliable) and destroys it itself.

        result = run(TrainConfig(model="hubclf_vgg11", data="user/flowers", output_dir="out", epochs=3))
    """
    output_dir = Path(config.output_dir)
    given = config  # before anything "auto" is resolved: what a --resume is compared with (settings.json)
    # The checkpoint to resume, found first: its manifest records the choices that change the numbers (precision,
    # channels-last, threads), which the resumed run reuses so that it continues bit-identically.
    checkpoint = find_checkpoint(config.resume, output_dir) if config.resume else None
    recorded = read_manifest(checkpoint).get("numerics") if checkpoint is not None else None
    config, speed_choices = resolve_hardware_defaults(config, recorded if isinstance(recorded, dict) else None)
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
        logger.info("; ".join(speed_choices))  # one line: workers, precision, memory format, each with its why
        lock = RunLock(output_dir)
        try:
            with main_process_work(accelerator, "locking the output folder") as is_main:
                if is_main:
                    lock.acquire()
                    for folder in (BEST_DIR, FINAL_DIR):  # undo a folder swap that a kill interrupted
                        restore_dir(output_dir / folder)
                    _refuse_to_mix_runs(config, output_dir)
            fault_point("train.locked")
            record = {"config": config.to_dict(), "numerics": numerics_record(config, config.mixed_precision,
                                                                              speed_choices)}  # fmt: skip
            return _Run(config, accelerator, stop, output_dir, keep_process_group, given, checkpoint, record).train()
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


@dataclass
class _Parts:
    """What the run trains with, built once (``hubclf.train.setup``)."""

    data: ImageClassificationData
    recipe: Recipe
    model: nn.Module
    train_images: ImageClassificationDataset
    eval_images: ImageClassificationDataset
    train_set: Any  # the images, or their cached features
    eval_set: Any
    sampler: Any
    train_loader: Any
    eval_loader: Any
    optimizer: Any
    criterion: Any
    mixer: Any
    ema: Any
    stages: list[str]
    frozen_fingerprint: str | None


@dataclass
class _Stage:
    """The current stage and its Accelerate wrappers (re-made when the stage changes, see ``prepare_stage``)."""

    name: str
    trainable: nn.Module
    optimizer: Any
    train_loader: Any
    eval_loader: Any


class _Run:
    """One run of the loop: ``train()`` is its spine, the other methods its phases in order."""

    def __init__(
        self,
        config: TrainConfig,
        accelerator: Accelerator,
        stop: StopOnSignal,
        output_dir: Path,
        keep_group: bool,
        given: TrainConfig | None = None,
        checkpoint: Path | None = None,
        record: dict[str, Any] | None = None,
    ) -> None:
        self.config, self.accelerator, self.stop, self.output_dir = config, accelerator, stop, output_dir
        self.keep_process_group = keep_group
        self.given = given or config  # the settings as typed, compared by a later --resume
        self.checkpoint, self.record = checkpoint, record  # the one to resume; what every checkpoint records
        # Checkpoints and best/ are written in the background (hubclf.train.background): an epoch's from the live
        # tensors while it is evaluated, a mid-epoch one from a copy (in the foreground if the copy would not fit).
        self.writes: BackgroundWrites | None = BackgroundWrites()
        self._said_foreground = False  # a mid-epoch checkpoint too big to copy: said once

    def train(self) -> TrainResult:
        # The same seed on every process: identical initial weights and identical shuffling decisions.
        set_seed(self.config.seed)
        state = TrainerState()
        parts = self._build(*self._load_data(), state)
        state, checkpoint = self._resume_point(parts, state)
        stage, scheduler = self._prepare(parts, state, checkpoint)
        config = self.config
        self.run_progress = _run_progress(self.accelerator, config, state, len(stage.train_loader))
        try:
            self._epochs(parts, stage, scheduler, state)
        except BaseException:
            self.run_progress.leave = False  # an error or Ctrl-C is the last line printed, not the bar's last state
            self._let_writes_finish()
            raise
        finally:
            self.run_progress.close()
        hub_url = self._finish(parts, state)
        fault_point("train.done")
        return TrainResult.from_state(self.output_dir, state, hub_url)

    def _epochs(self, parts: _Parts, stage: _Stage, scheduler: Any, state: TrainerState) -> None:
        """Train, evaluate and save epoch after epoch, entering the next stage where the plan says so."""
        config = self.config
        for epoch in range(state.epoch, config.epochs):
            if should_stop_early(state.history, state.best_epoch, config.patience):
                logger.info(f"early stopping: no better val top-1 for {config.patience} epochs (best: epoch "
                            f"{state.best_epoch}); final/ holds epoch {epoch}")  # fmt: skip
                break
            if parts.stages[epoch] != stage.name:
                stage = self._enter_stage(parts, parts.stages[epoch])
                logger.info(f"epoch {epoch + 1}: unfreezing the backbone (its lr = lr x {config.backbone_lr_scale})")
            state.stage = stage.name
            state.backbone_fingerprint = parts.frozen_fingerprint if stage.name == HEAD else None
            started = time.perf_counter()
            totals, bad_rows, lr = self._train_epoch(parts, stage, scheduler, state, epoch)
            checkpoint = self._start_epoch_checkpoint(parts, state)  # its tensors are written while evaluation runs
            record, evaluated = self._evaluate_epoch(parts, stage, state, epoch, totals, bad_rows, lr, started)
            self._save_epoch(parts, state, record, evaluated, checkpoint)
            self._wait_for_writes(live_only=True)  # nothing changes the weights before their checkpoint has read them

    # ---- data ---------------------------------------------------------------------------------------------------
    def _load_data(self) -> tuple[ImageClassificationData, Recipe]:
        # The main process fills the 🤗 datasets cache first; the others then read it instead of racing to write it.
        with self.accelerator.main_process_first():
            data = load_training_data(self.config)
        check_saveable(data.label_names, epochs=self.config.epochs)  # a model that would save but never load back
        logger.info(
            f"{len(data.train)} train / {len(data.eval)} eval images ({data.eval_split_name}), "
            f"{data.num_classes} classes: {listing(data.label_names, show=repr)}"
        )
        fault_point("train.data_loaded")
        self._stop_if_requested("data loading")
        size = choose_input_size(self.config, data)  # without --img-size: the data's shape
        if size.warning:
            logger.warning(size.warning)
        recipe = choose_recipe(size.config, data)  # every "auto" setting resolved from the data, one line each
        recipe.decisions.insert(0, size.decision)  # logged, saved in recipe.json and the card, like the others
        self.config = recipe.config
        if self.record is not None:
            self.record["config"] = self.config.to_dict()  # what every checkpoint's manifest records
        for decision in recipe.decisions:
            logger.info(f"recipe: {decision}")
        processes = self.accelerator.num_processes
        if self.config.batch_size * processes > len(data.train):
            per_process = " per process" if processes > 1 else ""
            logger.info(
                f"note: --batch-size {self.config.batch_size}{per_process} is more than the {len(data.train)} "
                "training images, so each epoch is one optimizer step on all of them; a --batch-size of about "
                f"{max(1, len(data.train) // (4 * processes))} gives 4 steps per epoch"
            )
        return data, recipe

    # ---- model, datasets, loaders, optimizer ----------------------------------------------------------------------
    def _build(self, data: ImageClassificationData, recipe: Recipe, state: TrainerState) -> _Parts:
        config, accelerator = self.config, self.accelerator
        model = create_model(config, data.label_names).to(accelerator.device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)  # convolutions then produce NHWC activations too
        if config.compile:
            model.compile()  # in place: the module, its state_dict keys and timm's methods stay as they are
        train_images, eval_images = image_datasets(config, data, model, recipe, accelerator.num_processes)
        # Where JPEGs are decoded: printed, and recorded in the run's settings (config.decode_device).
        self.config, decode_choice = decode_device_plan(config, train_images, eval_images, accelerator.device)
        config = self.config
        logger.info(decode_choice)
        stages = [stage_for_epoch(config, epoch) for epoch in range(config.epochs)]
        frozen_fingerprint = weights_fingerprint(model) if HEAD in stages else None
        fault_point("train.model_created")
        self._stop_if_requested("model creation")

        # Cached frozen features (--freeze backbone --no-augment): the backbone runs once over both splits.
        train_set, eval_set = train_images, eval_images
        if config.feature_cache_mode != "off":
            train_set, eval_set = feature_sets(
                accelerator, model, config, train_images, eval_images, frozen_fingerprint
            )
            state.bad_images = sorted(set(train_set.bad_images + eval_set.bad_images))
            self._stop_if_requested("feature extraction")
        # --balanced-sampler, else a (seed, epoch) shuffle; a stream orders itself (shards, then blocks).
        sampler = train_set if isinstance(train_set, ImageStream) else recipe.train_sampler(dataset_labels(train_set))
        train_loader, eval_loader = build_loaders(config, train_set, eval_set, sampler, accelerator.device)
        optimizer = build_optimizer(model, config, stages[0], accelerator.device)  # one for the whole run
        criterion, mixer = recipe.criterion(accelerator.device), recipe.mixer(data.num_classes)
        ema = recipe.model_ema(model)  # --model-ema: evaluated and saved (and checkpointed) instead of the raw weights
        return _Parts(
            data=data, recipe=recipe, model=model, train_images=train_images, eval_images=eval_images,
            train_set=train_set, eval_set=eval_set, sampler=sampler, train_loader=train_loader,
            eval_loader=eval_loader, optimizer=optimizer, criterion=criterion, mixer=mixer, ema=ema, stages=stages,
            frozen_fingerprint=frozen_fingerprint,
        )  # fmt: skip

    # ---- resume point ----------------------------------------------------------------------------------------------
    def _resume_point(self, parts: _Parts, state: TrainerState) -> tuple[TrainerState, Path | None]:
        config, checkpoint = self.config, self.checkpoint
        if checkpoint is None:
            return state, None
        # Other classes would reach load_state as "size mismatch for head.fc.weight": say what changed instead.
        check_resume_data(self.output_dir, parts.data.label_names, _image_counts(parts.data))
        saved = TrainerState.load(checkpoint)
        if saved.stage == HEAD and saved.backbone_fingerprint != parts.frozen_fingerprint:
            raise ValueError(
                f"{checkpoint} was trained on a different frozen backbone than --model {config.model} gives now "
                "(head-stage checkpoints store the classifier only); resume with the original weights"
            )
        if isinstance(parts.sampler, ImageStream):  # mid-epoch: the same plan, or one line saying what differs
            parts.sampler.check_resume(saved.stream_position, saved.epoch, saved.batches_done)
        saved.bad_images = sorted(set(saved.bad_images + state.bad_images))
        if checkpoint.name not in saved.lineage[-1:]:  # checkpoints from before lineage was recorded
            saved.lineage.append(checkpoint.name)
        return saved, checkpoint

    # ---- Accelerate wrapping for the resume point's stage, scheduler, restored state -----------------------------
    def _prepare(self, parts: _Parts, state: TrainerState, checkpoint: Path | None) -> tuple[_Stage, Any]:
        config, accelerator = self.config, self.accelerator
        stage = self._enter_stage(parts, state.stage or parts.stages[min(state.epoch, config.epochs - 1)], first=True)
        updates_per_epoch = math.ceil(len(stage.train_loader) / config.grad_accum_steps)
        scheduler, _ = create_scheduler_v2(
            stage.optimizer.optimizer,
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
            load_training_state(accelerator, checkpoint, ema=parts.ema)  # verified first; nothing unpickled
            if scheduler is not None:
                scheduler.step_update(state.global_step)
            logger.info(f"resumed from {checkpoint}: epoch {state.epoch + 1}, step {state.global_step}")
        state.stage = stage.name
        carried = self._best_of_resumed_run(state, checkpoint)
        with main_process_work(accelerator, "writing the metrics file") as is_main:
            if is_main:
                write_metrics(self.output_dir / METRICS_FILE, state.history)  # drops lines newer than the checkpoint
                parts.recipe.save(self.output_dir)
                if carried is not None:
                    update_card(self.output_dir / BEST_DIR, from_dir=carried)  # hard links, one atomic swap
                write_settings(self.output_dir, self.given, parts.data.label_names, _image_counts(parts.data))
        if config.log_with:
            accelerator.init_trackers("hubclf", config=tracker_config(config))
        return stage, scheduler

    def _best_of_resumed_run(self, state: TrainerState, checkpoint: Path | None) -> Path | None:
        """``--resume`` from another run's checkpoint into a new ``--output-dir``: that run's ``best/`` (the best
        epoch's weights are in no checkpoint) is the folder to carry over. Without one, the best so far is
        forgotten, so that the next epoch, or the final model, becomes ``best/``."""
        best = self.output_dir / BEST_DIR
        if checkpoint is None or not state.best_epoch or (best / CONFIG_NAME).is_file():
            return None
        source = checkpoint.resolve().parent.parent / BEST_DIR  # RUN/checkpoints/step_N -> RUN/best
        if (source / CONFIG_NAME).is_file():
            logger.info(f"resuming into {self.output_dir}: best/ (epoch {state.best_epoch}) comes from {source}")
            return source
        logger.warning(f"{source} is missing, so the best model so far (epoch {state.best_epoch}) is not in "
                       f"{self.output_dir}; best/ will hold the best epoch from here on")  # fmt: skip
        state.best_top1 = state.best_epoch = None
        return None

    def _enter_stage(self, parts: _Parts, name: str, first: bool = False) -> _Stage:
        wrapped = prepare_stage(
            self.accelerator, parts.model, name, self.config, parts.optimizer, parts.train_loader, parts.eval_loader,
            first=first,
        )  # fmt: skip
        return _Stage(name, *wrapped)

    # ---- one epoch of training -------------------------------------------------------------------------------------
    def _train_epoch(
        self, parts: _Parts, stage: _Stage, scheduler: Any, state: TrainerState, epoch: int
    ) -> tuple[torch.Tensor, list[int], float]:
        config, accelerator, optimizer = self.config, self.accelerator, stage.optimizer
        # Data order and augmentation depend on (seed, epoch) only, so a resumed epoch replays exactly.
        parts.sampler.start_epoch(epoch)
        if hasattr(parts.train_set, "seed_augmentation") and parts.recipe.augments:
            parts.train_set.seed_augmentation(config.seed, epoch)
        batches = skip_batches(accelerator, stage.train_loader, parts.sampler, epoch, state.batches_done)
        totals = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # loss sum, count, correct
        lr = optimizer.param_groups[0]["lr"]  # the classifier's; reported as the epoch's last step used it
        bad_rows: list[int] = []
        nonfinite = torch.zeros((), dtype=torch.bool, device=accelerator.device)  # in this optimizer step

        set_stage_modes(parts.model, stage.name)
        progress = tqdm(
            batches,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            initial=state.batches_done,
            total=len(stage.train_loader),
            disable=not accelerator.is_local_main_process,
            position=1,  # under the whole run's line (_run_progress)
            leave=False,  # the epoch's result line replaces it
        )
        for batch in progress:
            with accelerator.accumulate(stage.trainable):
                targets = None
                if parts.mixer is not None:  # seeded per (seed, epoch, batch, process): resumes mix alike
                    batch["pixel_values"], targets = parts.mixer(
                        batch["pixel_values"], batch["labels"], epoch=epoch, batch=state.batches_done,
                        process=accelerator.process_index,
                    )  # fmt: skip
                logits = batch_logits(parts.model, stage.trainable, stage.name, batch, accelerator.autocast)
                loss, correct, count = _masked_loss(logits, batch["labels"], batch["valid"], parts.criterion, targets)
                accelerator.backward(loss)
                finite_loss = loss.detach().isfinite()
                nonfinite |= ~finite_loss
                applied = True
                if accelerator.sync_gradients:
                    # A NaN/inf loss or gradient is skipped, not applied: one bad batch cannot poison the weights.
                    applied = _all_finite(accelerator, stage.trainable, nonfinite)
                    nonfinite.zero_()
                    if applied:
                        if config.clip_grad:
                            accelerator.clip_grad_norm_(stage.trainable.parameters(), config.clip_grad)
                        optimizer.step()
                optimizer.zero_grad()
            # Non-finite batches stay out of the train loss/top-1 (they were not trained on).
            totals += torch.stack([loss.detach() * count, count, correct]).double() * finite_loss
            totals.nan_to_num_(0.0)
            bad_rows += batch["index"][~batch["valid"].bool()].tolist()
            state.batches_done += 1
            self.run_progress.update()
            if not accelerator.sync_gradients:
                continue
            state.global_step += 1
            if parts.ema is not None and applied:
                parts.ema.update(parts.model, step=state.global_step)
            lr = optimizer.param_groups[0]["lr"]
            if scheduler is not None:  # --sched none: a constant learning rate
                scheduler.step_update(state.global_step)
            progress.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            fault_point("train.step")
            if applied:
                state.nonfinite_in_a_row = 0
            else:
                self._count_nonfinite_step(state, epoch)

            every = config.save_every_steps
            interrupted = self.stop.requested_on_any_process(accelerator)
            if interrupted or (every and state.global_step % every == 0):
                state.partial_epoch = _add_totals(state.partial_epoch, accelerator.reduce(totals, "sum"))
                totals.zero_()
                _record_stream_position(parts, state, epoch)
                path = self._save_checkpoint(parts, state)
                if interrupted:
                    self._wait_for_writes()
                    self._end_training()
                    raise TrainingInterrupted(path)
        progress.close()
        return totals, bad_rows, lr

    # ---- evaluate and record ---------------------------------------------------------------------------------------
    def _evaluate_epoch(
        self,
        parts: _Parts,
        stage: _Stage,
        state: TrainerState,
        epoch: int,
        totals: torch.Tensor,
        bad_rows: list[int],
        lr: float,
        started: float,
    ) -> tuple[dict[str, Any], nn.Module]:
        """Score the epoch's model on the eval split and append its record to the history; returns the record and
        the model that is saved (the EMA weights with --model-ema)."""
        accelerator, model, ema = self.accelerator, parts.model, parts.ema
        train_totals = _add_totals(state.partial_epoch, accelerator.reduce(totals, "sum"))
        train_loss = train_totals["loss_sum"] / max(train_totals["count"], 1)
        model.eval()
        predictor = accelerator.unwrap_model(stage.trainable)  # no DDP hooks needed without backward
        evaluated = model if ema is None else ema_model(ema, model)  # the model that is saved
        if ema is not None:
            predictor = ema.module.get_classifier() if stage.name == HEAD else ema.module

        def eval_logits(batch: dict[str, Any]) -> torch.Tensor:
            fault_point("eval.batch")
            return batch_logits(evaluated, predictor, stage.name, batch, accelerator.autocast)

        metrics = evaluate(
            accelerator,
            eval_logits,
            stage.eval_loader,
            num_classes=parts.data.num_classes,
            label_names=parts.data.label_names,
            desc="eval",
        )
        new_bad = _collect_bad_images(
            parts.train_images, bad_rows, parts.eval_images, metrics.pop("skipped_rows"), state.bad_images
        )
        state.bad_images = sorted(set(state.bad_images) | set(new_bad))
        record = to_strict_json({
            "epoch": epoch + 1,
            "step": state.global_step,
            "stage": stage.name,
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
        _print_above_bars(
            accelerator,
            f"epoch {epoch + 1}/{self.config.epochs} [{stage.name}] train_loss {train_loss:.4f} "
            f"{format_metrics(metrics, prefix='val_')}"
            + (f" bad_images {len(state.bad_images)}" if state.bad_images else "")
            + (f" non-finite steps skipped {state.nonfinite_total}" if state.nonfinite_total else "")
            + f" ({record['seconds']:.1f}s){' *best*' if is_best else ''}"
        )
        return record, evaluated

    # ---- save -----------------------------------------------------------------------------------------------------
    def _start_epoch_checkpoint(self, parts: _Parts, state: TrainerState) -> StartedCheckpoint:
        """The epoch's checkpoint, first half: its tensor files, written from the live tensors in the background while
        the epoch is evaluated (evaluation only reads them), so the save needs no copy of the state."""
        return start_checkpoint(self.accelerator, self.output_dir, state, ema=parts.ema, writes=self.writes,
                                live=self.writes is not None)  # fmt: skip

    def _save_epoch(
        self, parts: _Parts, state: TrainerState, record: dict[str, Any], evaluated: nn.Module,
        checkpoint: StartedCheckpoint,
    ) -> None:  # fmt: skip
        """metrics.jsonl now; the epoch's best/ (when it is the best) and the rest of its checkpoint in the
        background, best/ first: the checkpoint marks the epoch done, and a kill before it replays the epoch, which
        rewrites both. best/ links the checkpoint's weights file when it holds the same weights."""
        accelerator, output_dir, config = self.accelerator, self.output_dir, self.config
        is_best = state.best_epoch == record["epoch"]
        write_best, best_live = None, False
        with main_process_work(accelerator, "writing the metrics and the best model") as is_main:
            if is_main:
                # The previous epoch's files are complete: start_checkpoint waited for them.
                write_metrics(output_dir / METRICS_FILE, state.history)
                fault_point("epoch.metrics_written")
                if is_best:
                    weights = checkpoint.model_file if self._checkpoint_holds(evaluated) else None
                    write_best = functools.partial(
                        _save_best, evaluated, output_dir / BEST_DIR, config, parts.data, state.copy(),
                        accelerator.num_processes, parts.recipe, weights_from=weights,
                    )  # fmt: skip
                    best_live = weights is None  # best/ then writes the live weights itself
        if config.log_with:
            accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["epoch"])
        _record_stream_position(parts, state, state.epoch)
        path = finish_checkpoint(accelerator, checkpoint, state, config.keep_checkpoints, record=self.record,
                                 writes=self.writes, first=write_best, first_live=best_live)  # fmt: skip
        fault_point("epoch.checkpointed")
        if self.stop.requested_on_any_process(accelerator):
            self._wait_for_writes()
            self._end_training()
            raise TrainingInterrupted(path)

    def _checkpoint_holds(self, model: nn.Module) -> bool:
        """Whether the checkpoint's weights file is exactly what ``save_pretrained`` would write for ``model``: the
        same module (not the EMA's, not the head stage's classifier alone), written by the same writer, without tied
        weights (those go through ``safetensors.torch.save_model``)."""
        models = self.accelerator._models
        return (
            len(models) == 1
            and self.accelerator.unwrap_model(models[0]) is model
            and not has_shared_tensors(model.state_dict())
        )

    def _save_checkpoint(self, parts: _Parts, state: TrainerState) -> Path:
        """A checkpoint inside an epoch (``--save-every-steps``, a signal): training goes on right after it, so it
        is written from a copy in the background, or in the foreground where a copy would not fit in memory."""
        return save_checkpoint(
            self.accelerator, self.output_dir, state, self.config.keep_checkpoints, ema=parts.ema, record=self.record,
            writes=self._writes_for_a_copy(parts),
        )  # fmt: skip

    def _writes_for_a_copy(self, parts: _Parts) -> BackgroundWrites | None:
        """``self.writes``, or None (this save in the foreground) when a copy of the training state would not fit in
        memory (``fits_in_memory``): its size is known before anything is copied. Said once."""
        if self.writes is None or not self.accelerator.is_main_process:
            return self.writes
        needed = snapshot_bytes(self.accelerator, ema=parts.ema)
        if fits_in_memory(needed):
            return self.writes
        self.writes.wait()  # the writes before it are on disk first (the sequence counts them)
        if not self._said_foreground:
            self._said_foreground = True
            logger.info(f"checkpoints inside an epoch are written in the foreground: a copy of the training state "
                        f"({needed / 2**30:.1f} GiB) does not fit in half the memory available")  # fmt: skip
        return None

    def _wait_for_writes(self, live_only: bool = False) -> None:
        """Every process: return once the background writes are on disk, or with ``live_only`` once none reads the
        live tensors any more (before the next step changes them); a failed write fails every process."""
        error = None
        if self.writes is not None and self.accelerator.is_main_process:
            try:
                self.writes.wait_for_live() if live_only else self.writes.wait()
            except Exception as e:
                error = e
        raise_on_every_process(self.accelerator, error, "writing the checkpoint and best/ in the background")

    def _let_writes_finish(self) -> None:
        """The run is failing or interrupted: still let the write in progress finish (it is a complete state), and
        log, not raise, its own error, which would hide the one being raised."""
        if self.writes is None:
            return
        try:
            self.writes.wait()
        except Exception as e:
            logger.error(f"writing {self.writes.what} failed too: {type(e).__name__}: {e}")

    # ---- final model, push (main process only; a failure there fails every process) ----------------------------
    def _finish(self, parts: _Parts, state: TrainerState) -> str | None:
        accelerator, output_dir, config = self.accelerator, self.output_dir, self.config
        self._wait_for_writes()  # the last checkpoint and best/ are complete before final/ and best/'s card
        final_is_best = state.best_epoch is None  # resumed at the very end, without the original run's best/
        if final_is_best:
            state.best_epoch, state.best_top1 = len(state.history), state.history[-1]["val_top1"]
        with main_process_work(accelerator, "saving the final model") as is_main:
            if is_main:
                final = parts.model if parts.ema is None else ema_model(parts.ema, parts.model)
                save_model(final, output_dir / FINAL_DIR, config, parts.data, state, accelerator.num_processes,
                           parts.recipe)  # fmt: skip
                fault_point("final.saved")
                if final_is_best:
                    update_card(output_dir / BEST_DIR, from_dir=output_dir / FINAL_DIR)
                refresh_best_card(output_dir / BEST_DIR, parts.data, state)
                fault_point("final.best_card_saved")
        hub_url = None
        if config.push_to_hub:
            self._stop_if_requested("the final save (best/ and final/ are saved; not pushed)")
            with main_process_work(accelerator, "pushing to the Hub") as is_main:
                if is_main:
                    hub_url = push_to_hub(
                        output_dir / BEST_DIR,
                        config.push_to_hub,
                        private=config.hub_private,
                        commit_message=(
                            f"hubclf train: {config.model} on {dataset_name(config)}, best epoch {state.best_epoch}"
                        ),
                    )
                    logger.info(f"pushed the best model (epoch {state.best_epoch}) to {hub_url}")
        self._end_training()
        return hub_url

    # ---- stopping ---------------------------------------------------------------------------------------------------
    def _end_training(self) -> None:
        """``accelerator.end_training()`` (finish the trackers, destroy the process group), or with
        ``keep_process_group`` only its first half."""
        if not self.keep_process_group:
            self.accelerator.end_training()
            return
        for tracker in self.accelerator.trackers:
            tracker.finish()

    def _stop_if_requested(self, phase: str) -> None:
        """At a safe point outside the step loop: end the run if a signal arrived (on any process)."""
        if self.stop.requested_on_any_process(self.accelerator):
            self._wait_for_writes()
            self._end_training()
            complete = list_checkpoints(self.output_dir)
            raise TrainingInterrupted(complete[-1] if complete else None, phase)

    def _count_nonfinite_step(self, state: TrainerState, epoch: int) -> None:
        config = self.config
        state.nonfinite_in_a_row += 1
        state.nonfinite_total += 1
        logger.warning(
            f"step {state.global_step}: non-finite (NaN/inf) loss or gradient, update skipped "
            f"({state.nonfinite_in_a_row} in a row, limit --max-nonfinite-steps {config.max_nonfinite_steps})"
        )
        if state.nonfinite_in_a_row < config.max_nonfinite_steps:
            return
        self._end_training()
        if state.best_epoch:
            best = (
                f"{self.output_dir / BEST_DIR} holds the model of epoch {state.best_epoch} "
                f"(val top-1 {state.best_top1:.1%}), still loadable"
            )
        else:
            best = "No epoch finished, so there is no best model"
        raise TrainingDiverged(
            f"training diverged: {state.nonfinite_in_a_row} optimizer steps in a row had a NaN/inf loss or gradient "
            f"(the last at step {state.global_step}, epoch {epoch + 1}); they were skipped, not applied. {best}. "
            "Lower --lr, add --clip-grad, or raise --max-nonfinite-steps"
        )


def _run_progress(accelerator: Accelerator, config: TrainConfig, state: TrainerState, steps_per_epoch: int) -> tqdm:
    """One line for the whole run, above each epoch's bar: its ETA counts training, evaluation and saving alike
    (``smoothing=0``: the average pace since the start, not the last batch's)."""
    remaining = (config.epochs - state.epoch) * steps_per_epoch - state.batches_done
    return tqdm(
        total=max(remaining, 0),
        desc=f"run: {config.epochs - state.epoch} epoch(s)",
        unit="step",
        smoothing=0,
        position=0,
        disable=not accelerator.is_local_main_process,
        bar_format="{desc} |{bar:20}| {percentage:3.0f}% [{elapsed} so far, ETA {remaining}]",
    )


def _print_above_bars(accelerator: Accelerator, line: str) -> None:
    """A result line on the main process that does not tear the progress bars (``tqdm.write``)."""
    if accelerator.is_main_process:
        tqdm.write(line)


def _save_best(model: nn.Module, directory: Path, *args: Any, weights_from: Path | None = None) -> None:
    """An epoch's ``best/``, without pictures (drawn once when the run ends, ``refresh_best_card``)."""
    save_model(model, directory, *args, pictures=False, weights_from=weights_from)
    fault_point("epoch.best_saved")


def _image_counts(data: ImageClassificationData) -> dict[str, int]:
    return {"train": len(data.train), "eval": len(data.eval)}


# ---- step arithmetic ---------------------------------------------------------------------------------------------
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


def _record_stream_position(parts: _Parts, state: TrainerState, epoch: int) -> None:
    """A stream's shard and offset per slot, in the checkpoint about to be written (``--resume`` checks them)."""
    if isinstance(parts.sampler, ImageStream):
        state.stream_position = parts.sampler.position(epoch, state.batches_done)


def _collect_bad_images(
    train_images: Any, train_rows: list[int], eval_images: Any, eval_rows: list[int], known: list[str]
) -> list[str]:
    """Gather every process's unreadable rows, and log the ones not reported before (a stream's placeholder rows,
    index -1, are no images)."""
    train_rows = sorted(set(sum(gather_object([train_rows]), [])))
    found = [train_images.describe(r) for r in train_rows if r >= 0 and hasattr(train_images, "describe")]
    found += [eval_images.describe(r) for r in eval_rows if r >= 0 and hasattr(eval_images, "describe")]
    new = sorted(set(found) - set(known))
    for where in new:
        logger.warning(f"skipped unreadable image: {printable(where)}")  # file names from someone's folder
    return new
