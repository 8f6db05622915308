"""Resumable, crash-safe checkpoints: the training state (weights, optimizer, EMA weights, gradient scaler, RNG of
every process) as safetensors files, a readable ``trainer_state.json`` (epoch, step, stage, best score, metric
history, lineage) and a ``manifest.json`` in ``output_dir/checkpoints/step_<N>/``.

    path = save_checkpoint(accelerator, output_dir, state, keep=2, ema=ema, record={"config": ...})
    path = find_checkpoint("latest", output_dir); state = TrainerState.load(path)
    load_training_state(accelerator, path, ema=ema)     # verifies the manifest, then restores everything

Nothing in a checkpoint is a pickle, and nothing is ever unpickled from one. Accelerate's ``save_state`` writes the
optimizer, the RNG states and registered objects (the EMA weights) with ``torch.save``, and its ``load_state``
reads the registered objects back with ``torch.load(weights_only=False)``, which runs whatever code a tampered file
holds; so hubclf writes and reads those states itself: tensors in safetensors files, everything else (optimizer
hyperparameters, Python's and NumPy's RNG states) as JSON in their metadata. A folder is resumed only when every
file matches the manifest written with it (names, sizes, checksums), and it names the hubclf version and the run's
config, including the choices that change its numbers (``numerics``), which ``--resume`` reuses.

A checkpoint is written into ``checkpoints/.tmp-step_<N>``, fsynced, and renamed into place only once every file
of every process is on disk, so a kill at any instant leaves the previous checkpoints intact and at most a
temporary folder that ``latest`` skips (and names). With ``writes`` (``hubclf.train.background``), the main process
writes its files from a copy of the state (``snapshot_training_state``) in a background thread while training goes
on; each process's RNG state is written at once. Checkpoints are ordered by ``sequence``, the order in which
they were created, not by step number: after resuming from an older checkpoint, the new timeline is the latest,
and pruning keeps the newest ``keep`` checkpoints of the timeline being trained (``lineage``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import json
import logging
import math
import os
import random
import re
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch

from hubclf._faults import fault_point
from hubclf._version import __version__
from hubclf.atomic import atomic_write_json, file_kind, replace_dir
from hubclf.tensor_file import CHECKSUM, file_checksum, write_model, write_safetensors
from hubclf.text import listing
from hubclf.train.background import BackgroundWrites
from hubclf.train.safety import raise_on_every_process

STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "hubclf-checkpoint/2"
# What each manifest format checksums its files with: /1 (hubclf before the direct writer) used sha256.
MANIFEST_CHECKSUMS = {"hubclf-checkpoint/1": "sha256", MANIFEST_FORMAT: CHECKSUM}
MODEL_FILE = "model.safetensors"  # the trainable module: the whole model, or the classifier in the head stage
OPTIMIZER_FILE = "optimizer.safetensors"
SCALER_FILE = "scaler.safetensors"  # the fp16 gradient scaler
EMA_FILE = "ema.safetensors"  # --model-ema's averaged weights
RNG_FILE = "random_states_{}.safetensors"  # one per process: Python's, NumPy's and torch's generators
CHECKPOINT_DIR = "checkpoints"
TMP_PREFIX = ".tmp-"
MAX_MANIFEST_BYTES = 16 << 20
_NAME = re.compile(r"^step_(\d+)$")

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint folder that is incomplete or unreadable; the message names the file."""


@dataclass
class TrainerState:
    """Where a run stands. ``epoch`` is the next epoch to run (0-based); ``batches_done`` counts the batches of
    that epoch already trained when a checkpoint was written mid-epoch. ``sequence`` orders checkpoints by
    creation; ``lineage`` names the checkpoints of this timeline, oldest first."""

    epoch: int = 0
    batches_done: int = 0
    global_step: int = 0
    stage: str = ""
    best_top1: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    bad_images: list[str] = field(default_factory=list)
    partial_epoch: dict[str, float] = field(default_factory=dict)  # train sums of an unfinished epoch
    backbone_fingerprint: str | None = None  # set in the head stage, whose checkpoints hold the classifier only
    sequence: int = 0
    lineage: list[str] = field(default_factory=list)
    nonfinite_in_a_row: int = 0  # optimizer steps skipped because the loss or a gradient was NaN/inf
    nonfinite_total: int = 0
    stream_position: dict[str, Any] | None = None  # streamed data: each slot's shard and offset (data.streaming)

    def save(self, directory: Path) -> None:
        atomic_write_json(Path(directory) / STATE_FILE, dataclasses.asdict(self))

    def copy(self) -> TrainerState:
        """This instant's state, for a write in the background: its lists and dicts are new, the epoch records in
        them shared (a record is never changed once appended), so that a long history is not copied deeply."""
        return dataclasses.replace(
            self, history=list(self.history), bad_images=list(self.bad_images), lineage=list(self.lineage),
            partial_epoch=dict(self.partial_epoch),
            stream_position=copy.deepcopy(self.stream_position),
        )  # fmt: skip

    @classmethod
    def load(cls, directory: str | Path) -> TrainerState:
        """Read ``directory/trainer_state.json``; a missing, truncated or malformed file is a ``CheckpointError``
        that names it."""
        path = Path(directory) / STATE_FILE
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise CheckpointError(f"{path} is missing: {directory} is not a complete hubclf checkpoint") from e
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path} is unreadable ({e}); the checkpoint is damaged") from e
        if not isinstance(values, dict):
            raise CheckpointError(f"{path} holds a {type(values).__name__}, not a trainer state object")
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            state = cls(**{key: value for key, value in values.items() if key in known})
        except TypeError as e:
            raise CheckpointError(f"{path} is not a hubclf trainer state: {e}") from e
        problems = state._problems()
        if problems:
            raise CheckpointError(f"{path} is not a hubclf trainer state: {'; '.join(problems)}")
        return state

    def _problems(self) -> list[str]:
        """What is of the wrong type or out of range: a tampered file must be an error here, not a crash later."""

        def count(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= 0

        def number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool)

        problems = [
            f"{name} must be a non-negative integer, got {getattr(self, name)!r:.40}"
            for name in ("epoch", "batches_done", "global_step", "sequence", "nonfinite_in_a_row", "nonfinite_total")
            if not count(getattr(self, name))
        ]
        checks = {
            "stage": isinstance(self.stage, str),
            "best_top1": self.best_top1 is None or number(self.best_top1),
            "best_epoch": self.best_epoch is None or (count(self.best_epoch) and self.best_epoch <= len(self.history)
                                                      if isinstance(self.history, list) else False),
            "history": isinstance(self.history, list) and all(isinstance(row, dict) for row in self.history),
            "bad_images": isinstance(self.bad_images, list) and all(isinstance(x, str) for x in self.bad_images),
            "partial_epoch": isinstance(self.partial_epoch, dict) and all(
                isinstance(k, str) and number(v) for k, v in self.partial_epoch.items()
            ),
            "backbone_fingerprint": self.backbone_fingerprint is None or isinstance(self.backbone_fingerprint, str),
            "lineage": isinstance(self.lineage, list) and all(
                isinstance(name, str) and _NAME.match(name) for name in self.lineage
            ),
            # its shards and offsets are checked against the stream's own by ImageStream's sampler on resume
            "stream_position": self.stream_position is None or isinstance(self.stream_position, dict),
        }  # fmt: skip
        problems += [f"{name} has the wrong type or value: {getattr(self, name)!r:.60}" for name, ok in checks.items()
                     if not ok]  # fmt: skip
        return problems


def checkpoint_dir(output_dir: str | Path, global_step: int) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR / f"step_{global_step:08d}"


def _scan(output_dir: str | Path) -> tuple[list[tuple[int, Path]], list[tuple[Path, str]]]:
    """(complete checkpoints as (sequence, path), incomplete ones as (path, why))."""
    root = Path(output_dir) / CHECKPOINT_DIR
    complete: list[tuple[int, Path]] = []
    incomplete: list[tuple[Path, str]] = []
    if not root.is_dir():
        return complete, incomplete
    for path in sorted(root.iterdir()):
        if path.name.startswith(TMP_PREFIX):
            incomplete.append((path, "a save that did not finish"))
        elif _NAME.match(path.name):
            try:
                state = TrainerState.load(path)
            except CheckpointError as e:
                incomplete.append((path, str(e)))
                continue
            # Checkpoints from before `sequence` existed are ordered by step (sequence 0, then the step number).
            complete.append(((state.sequence, int(_NAME.match(path.name).group(1))), path))
    complete.sort(key=lambda item: item[0])
    return [(key[0], path) for key, path in complete], incomplete


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (in the order they were created)."""
    return [path for _, path in _scan(output_dir)[0]]


def incomplete_checkpoints(output_dir: str | Path) -> list[tuple[Path, str]]:
    """Checkpoint folders that a kill left unfinished or that are damaged, with the reason."""
    return _scan(output_dir)[1]


def find_checkpoint(resume: str, output_dir: str | Path) -> Path | None:
    """``"latest"`` -> the newest complete checkpoint of ``output_dir``, or ``None`` when there is none (the run
    starts over); anything else is a checkpoint folder, which must be complete. Skipped incomplete folders are
    named in the log."""
    if resume == "latest":
        complete, incomplete = _scan(output_dir)
        for path, why in incomplete:
            logger.warning("--resume latest: skipping incomplete checkpoint %s (%s)", path, why)
        if not complete:
            logger.warning(
                "--resume latest: no complete checkpoint in %s; starting the run over",
                Path(output_dir) / CHECKPOINT_DIR,
            )
            return None
        return complete[-1][1]
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint folder")
    try:
        TrainerState.load(path)
    except CheckpointError as e:
        raise FileNotFoundError(f"--resume {resume}: not a complete hubclf checkpoint ({e})") from e
    return path


def save_checkpoint(
    accelerator: Any,
    output_dir: str | Path,
    state: TrainerState,
    keep: int,
    *,
    ema: torch.nn.Module | None = None,
    record: dict[str, Any] | None = None,
    writes: BackgroundWrites | None = None,
    first: Callable[[], None] | None = None,
    memo: dict[int, Any] | None = None,
) -> Path:
    """Save on all processes (each writes its own RNG state) into a temporary folder, rename it into place once
    complete, then keep only the newest ``keep`` checkpoints of this timeline. Updates ``state.sequence`` and
    ``state.lineage``. ``ema``: the EMA weights (--model-ema); ``record``: what the manifest says of the run
    (``{"config": ..., "numerics": ...}``).

    With ``writes``, the main process copies the state (``snapshot_training_state``) and ``writes`` writes it in the
    background: this returns once the copy is taken, and the checkpoint is complete after ``writes.wait()``. The
    previous background write is waited for first, and its error raised on every process. ``first``: a write of the
    same moment that must be on disk before the checkpoint marks it done (the epoch's ``best/``), run in the same
    job; ``memo``: the ``cpu_copies`` memo ``first``'s copies were taken with, so that weights are copied once.
    ``start_checkpoint`` + ``finish_checkpoint`` are its two halves, for a save that writes the live tensors.

        save_checkpoint(accelerator, "out", state, keep=2, ema=ema, record={"config": config.to_dict()})
    """
    started = start_checkpoint(accelerator, output_dir, state, ema=ema, writes=writes, memo=memo)
    return finish_checkpoint(accelerator, started, state, keep, record=record, writes=writes, first=first)


@dataclass
class StartedCheckpoint:
    """A checkpoint whose tensor files are being written (``start_checkpoint``); ``finish_checkpoint`` completes it."""

    final: Path
    tmp: Path
    checksums: dict[str, str]  # the tensor files' checksums, filled in as they are written (main process)

    @property
    def model_file(self) -> Path:
        """The model's weights file, once written: what ``best/`` links when it holds the same weights."""
        return self.tmp / MODEL_FILE


def start_checkpoint(
    accelerator: Any,
    output_dir: str | Path,
    state: TrainerState,
    *,
    ema: torch.nn.Module | None = None,
    writes: BackgroundWrites | None = None,
    live: bool = False,
    memo: dict[int, Any] | None = None,
) -> StartedCheckpoint:
    """Every process: the first half of a save. The main process waits for the writes before it, prepares
    ``checkpoints/.tmp-step_N`` and writes its tensor files there (weights, optimizers, scaler, EMA): in the
    foreground without ``writes``; with ``writes``, in the background, from a copy of them, or with ``live`` from the
    tensors themselves, which then must not change until ``writes.wait_for_live()`` returns (the epoch's evaluation,
    which only reads them, runs meanwhile).

        started = start_checkpoint(accelerator, "out", state, writes=writes, live=True)
    """
    final = checkpoint_dir(output_dir, state.global_step)
    started = StartedCheckpoint(final=final, tmp=final.with_name(TMP_PREFIX + final.name), checksums={})
    error = None
    if accelerator.is_main_process:
        try:
            if writes is not None:
                writes.wait()  # the previous checkpoint is on disk before this one starts (and the sequence counts it)
            for stale in final.parent.glob(TMP_PREFIX + "*"):  # left by a killed save; one run per folder (lock)
                shutil.rmtree(stale)
            started.tmp.mkdir(parents=True)
            # In the foreground, or live, nothing changes the state while it is written: no copy is made (the
            # foreground is where a copy would not fit in memory).
            copies = writes is not None and not live
            snapshot = snapshot_training_state(accelerator, ema=ema, memo=memo, copies=copies)
            job = functools.partial(_write_tensor_files, snapshot, started)
            if writes is None:
                job()
            else:
                writes.submit(job, f"the tensors of checkpoint {final.name}", live=live, copy=copies)
        except Exception as e:  # reported on every process below, not left for the others to wait on
            error = e
    raise_on_every_process(accelerator, error, "saving the previous checkpoint or starting this one")
    return started


def finish_checkpoint(
    accelerator: Any,
    started: StartedCheckpoint,
    state: TrainerState,
    keep: int,
    *,
    record: dict[str, Any] | None = None,
    writes: BackgroundWrites | None = None,
    first: Callable[[], None] | None = None,
    first_live: bool = False,
) -> Path:
    """Every process: the second half of a save. Each process writes its RNG state into the started checkpoint; the
    main process then completes it (``first``: the epoch's ``best/``; the trainer state; the manifest), renames it
    into place and prunes, behind the tensor files in ``writes``. ``first_live``: ``first`` reads live tensors
    (``writes.wait_for_live()`` waits for it too). Updates ``state.sequence`` and ``state.lineage``.

        path = finish_checkpoint(accelerator, started, state, keep=2, writes=writes, first=write_best)
    """
    _save_rng_state(accelerator, started.tmp)
    fault_point("checkpoint.after_rng")
    accelerator.wait_for_everyone()
    error = None
    if accelerator.is_main_process:
        try:
            final = started.final
            complete = list_checkpoints(final.parent.parent)
            state.sequence = 1 + max((TrainerState.load(p).sequence for p in complete), default=0)
            state.lineage = [name for name in state.lineage if name != final.name] + [final.name]
            job = functools.partial(_complete_checkpoint, started, state.copy(), copy.deepcopy(record), keep, first)
            if writes is None:
                job()
            else:
                writes.submit(job, f"checkpoint {final.name}", live=first_live)
        except Exception as e:
            error = e
    raise_on_every_process(accelerator, error, "saving the checkpoint")
    return started.final


def _write_tensor_files(snapshot: TrainingSnapshot, started: StartedCheckpoint) -> None:
    started.checksums.update(snapshot.write(started.tmp))
    fault_point("checkpoint.after_save_state")


def _complete_checkpoint(
    started: StartedCheckpoint,
    state: TrainerState,
    record: dict[str, Any] | None,
    keep: int,
    first: Callable[[], None] | None,
) -> None:
    """The main process's part of a checkpoint once its tensor files are written; in the background with ``writes``."""
    tmp, final = started.tmp, started.final
    if first is not None:
        first()
    state.save(tmp)  # the "complete" marker, inside the folder before it gets its real name
    write_manifest(tmp, record, started.checksums)
    fault_point("checkpoint.after_state")
    replace_dir(tmp, final)
    fault_point("checkpoint.after_rename")
    _prune(final.parent.parent, state.lineage, keep)
    logger.info("saved checkpoint %s", final)


# ---- the training state, without pickle ------------------------------------------------------------------------
def save_training_state(accelerator: Any, directory: str | Path, *, ema: torch.nn.Module | None = None) -> None:
    """What ``accelerator.save_state`` saves, as safetensors files (call it on every process): the prepared models
    (``model.safetensors``), optimizers and the fp16 gradient scaler from the main process, each process's RNG
    states (``random_states_<rank>.safetensors``), and ``ema``'s weights.

        save_training_state(accelerator, "out/checkpoints/.tmp-step_00000010", ema=ema)
    """
    if accelerator.is_main_process:
        snapshot_training_state(accelerator, ema=ema, copies=False).write(Path(directory))
    _save_rng_state(accelerator, Path(directory))


@dataclass
class TrainingSnapshot:
    """A copy of the main process's training state at one instant, on the CPU: the run can go on training while
    ``write`` puts it in a checkpoint folder. ``optimizers`` and ``scaler`` are already in ``_save_packed``'s form."""

    models: list[torch.nn.Module]
    optimizers: list[tuple[Any, dict[str, torch.Tensor]]]
    scaler: tuple[Any, dict[str, torch.Tensor]] | None
    ema: torch.nn.Module | None

    def write(self, directory: Path) -> dict[str, str]:
        """Write the files into ``directory``; return their checksums by name (taken as written, for the manifest)."""
        digests = {}
        for index, model in enumerate(self.models):
            name = _numbered(MODEL_FILE, index)
            digests[name] = write_model(directory / name, model, {"format": "pt"}, checksum=True)
        for index, packed in enumerate(self.optimizers):
            name = _numbered(OPTIMIZER_FILE, index)
            digests[name] = _write_packed(directory / name, *packed)
        if self.scaler is not None:
            digests[SCALER_FILE] = _write_packed(directory / SCALER_FILE, *self.scaler)
        if self.ema is not None:
            digests[EMA_FILE] = write_model(directory / EMA_FILE, self.ema, {"format": "pt"}, checksum=True)
        return digests


def snapshot_training_state(
    accelerator: Any,
    *,
    ema: torch.nn.Module | None = None,
    memo: dict[int, Any] | None = None,
    copies: bool = True,
) -> TrainingSnapshot:
    """Copy what ``save_training_state`` saves from the main process (the RNG states excepted: every process writes
    its own at once) to CPU memory: ``snapshot_bytes`` of it. ``copies=False``: the live models and optimizer states
    instead, for a write in the foreground or one that ends before they change, which allocates no second copy.

        snapshot_training_state(accelerator, ema=ema).write(Path("out/checkpoints/.tmp-step_00000010"))
    """
    models = [accelerator.unwrap_model(model) for model in accelerator._models]
    *models, ema_copy = cpu_copies([*models, ema], memo) if copies else [*models, ema]
    optimizers = [_packed(optimizer.state_dict(), copy=copies) for optimizer in accelerator._optimizers]
    scaler = _packed(accelerator.scaler.state_dict(), copy=copies) if accelerator.scaler is not None else None
    return TrainingSnapshot(models=models, optimizers=optimizers, scaler=scaler, ema=ema_copy)


def snapshot_bytes(accelerator: Any, *, ema: torch.nn.Module | None = None, also: tuple = ()) -> int:
    """The memory a ``snapshot_training_state`` (and ``cpu_copies`` of ``also``) takes, known before it is taken:
    the parameters and buffers of the models, each tensor once, and the optimizers' state tensors."""
    modules = [accelerator.unwrap_model(model) for model in accelerator._models] + [ema, *also]
    tensors = {id(t): t for m in modules if m is not None for t in itertools.chain(m.parameters(), m.buffers())}
    for optimizer in accelerator._optimizers:
        for entries in getattr(optimizer, "optimizer", optimizer).state.values():
            tensors.update({id(v): v for v in entries.values() if isinstance(v, torch.Tensor)})
    return sum(t.nelement() * t.element_size() for t in tensors.values())


def cpu_copies(modules: list[torch.nn.Module | None], memo: dict[int, Any] | None = None) -> list[Any]:
    """Copies of ``modules`` (``None`` stays ``None``) whose parameters and buffers are new CPU tensors, so that the
    originals can go on training while the copies are written. One deepcopy for all of them, with ``memo``: a module
    or tensor shared between them (the head stage's classifier is part of the model; tied weights) is copied once,
    also across calls that pass the same ``memo``.

        best, = cpu_copies([model])    # best.state_dict() keeps this instant's weights
    """
    memo = {} if memo is None else memo
    for module in modules:
        for tensor in itertools.chain(module.parameters(), module.buffers()) if module is not None else ():
            if id(tensor) not in memo:
                # The copy is taken in the tensor's memory format, and keeps the parameter's requires_grad: what
                # save_pretrained reports as trainable is this instant's, even if the next epoch unfreezes more.
                copied = tensor.detach().to("cpu", copy=True)
                memo[id(tensor)] = (
                    torch.nn.Parameter(copied, requires_grad=tensor.requires_grad)
                    if isinstance(tensor, torch.nn.Parameter)
                    else copied
                )
    return copy.deepcopy(list(modules), memo)


def _save_rng_state(accelerator: Any, directory: Path) -> None:
    """This process's random generators, in its own file (every process calls it)."""
    rng = {
        "step": accelerator.step,
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    _save_packed(directory / RNG_FILE.format(accelerator.process_index), rng)


def load_training_state(accelerator: Any, directory: str | Path, *, ema: torch.nn.Module | None = None) -> None:
    """Restore what ``save_training_state`` saved (call it on every process), after ``verify_checkpoint``: never an
    unpickler, whatever the folder holds. A file that is missing, damaged or does not fit the run is a
    ``CheckpointError`` naming it (a damaged RNG state included: the resumed run would no longer be reproducible).

        load_training_state(accelerator, "out/checkpoints/step_00000010", ema=ema)
    """
    directory = Path(directory)
    verify_checkpoint(directory)
    for index, model in enumerate(accelerator._models):
        path = directory / _numbered(MODEL_FILE, index)
        with _naming(path):
            safetensors.torch.load_model(accelerator.unwrap_model(model), str(path), strict=True)
    for index, optimizer in enumerate(accelerator._optimizers):
        path = directory / _numbered(OPTIMIZER_FILE, index)
        with _naming(path):
            saved = _load_packed(path)
            _restore_tuples(saved.get("param_groups"), optimizer.state_dict()["param_groups"])
            optimizer.load_state_dict(saved)
            _match_parameter_layouts(getattr(optimizer, "optimizer", optimizer))
    if accelerator.scaler is not None:
        with _naming(directory / SCALER_FILE):
            accelerator.scaler.load_state_dict(_load_packed(directory / SCALER_FILE))
    if ema is not None:
        path = directory / EMA_FILE
        with _naming(path):
            safetensors.torch.load_model(ema, str(path), strict=True)
    path = directory / RNG_FILE.format(accelerator.process_index)
    with _naming(path):
        rng = _load_packed(path)
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
        np.random.set_state(tuple(rng["numpy"]))
        torch.set_rng_state(rng["torch"])
        if torch.cuda.is_available() and rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
        if not (isinstance(rng["step"], int) and rng["step"] >= 0):
            raise ValueError(f"step must be a non-negative integer, got {rng['step']!r:.40}")
        accelerator.step = rng["step"]


class _naming:
    """Turn any failure of reading or restoring ``path`` into one ``CheckpointError`` that names the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> bool:
        if error is None or isinstance(error, CheckpointError) or not isinstance(error, Exception):
            return False
        what = " ".join(f"{type(error).__name__}: {error}".split())
        raise CheckpointError(
            f"{self.path} cannot be restored ({what[:300]}); the checkpoint is damaged or from another run"
        ) from error


def _numbered(name: str, index: int) -> str:
    """``model.safetensors``, ``model_1.safetensors``...: one file per prepared object, as Accelerate numbers them."""
    stem, _, suffix = name.partition(".")
    return name if index == 0 else f"{stem}_{index}.{suffix}"


# A JSON value with its tensors set aside: {"__tensor__": key} marks where one was, {"__tuple__": [...]} a tuple,
# {"__float__": "nan"} a non-finite float, {"__ndarray__": key, "dtype": ...} a NumPy array, {"__items__": [[k, v],
# ...]} a dict with non-string keys (an optimizer's state is keyed by parameter index). The file's metadata holds
# the JSON ("hubclf.state"), its tensors the tensors.
_STATE_KEY = "hubclf.state"


def _save_packed(path: Path, value: Any) -> None:
    _write_packed(path, *_packed(value))


def _packed(value: Any, copy: bool = True) -> tuple[Any, dict[str, torch.Tensor]]:
    """``value`` as JSON with its tensors set aside. ``copy``: copied to the CPU, a snapshot that later changes to
    ``value``'s tensors (an optimizer's next step) do not reach; else the tensors themselves, for a write that ends
    before they change (only a tensor whose storage another one already uses is copied: a file holds each once)."""
    tensors: dict[str, torch.Tensor] = {}
    return _pack(value, tensors, None if copy else set()), tensors


def _write_packed(path: Path, packed: Any, tensors: dict[str, torch.Tensor]) -> str:
    text = json.dumps(packed, allow_nan=False, separators=(",", ":"))
    metadata = {"format": "pt", _STATE_KEY: text}
    return write_safetensors(path, tensors, metadata, checksum=True)


def _pack(value: Any, tensors: dict[str, torch.Tensor], live: set[tuple[torch.device, int]] | None = None) -> Any:
    """``live``: None to copy every tensor to the CPU; else the storages of the tensors kept as they are, so that a
    second tensor on one of them is copied (a file holds each storage once)."""
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensor = value.detach()
        storage = (tensor.device, tensor.untyped_storage().data_ptr()) if tensor.numel() else None
        if live is None or storage in live:
            tensors[key] = tensor.to("cpu", copy=True).contiguous()
        else:
            tensors[key] = tensor
            if storage is not None:
                live.add(storage)
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(value.astype(np.int64 if value.dtype.kind in "iu" else np.float64))
        return {"__ndarray__": key, "dtype": value.dtype.str}
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else {"__float__": repr(float(value))}
    if isinstance(value, tuple):
        return {"__tuple__": [_pack(item, tensors, live) for item in value]}
    if isinstance(value, list):
        return [_pack(item, tensors, live) for item in value]
    if isinstance(value, dict):
        if all(isinstance(key, str) and not key.startswith("__") for key in value):
            return {key: _pack(item, tensors, live) for key, item in value.items()}
        return {"__items__": [[_pack(key, tensors, live), _pack(item, tensors, live)] for key, item in value.items()]}
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint (tensors, numbers, strings, lists, dicts)")


def _load_packed(path: Path) -> Any:
    """The value ``_save_packed`` wrote; nothing but safetensors and JSON is parsed."""
    with safetensors.safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open has no iteration)
    if _STATE_KEY not in metadata:
        raise ValueError(f"no {_STATE_KEY!r} metadata: not a hubclf training-state file")
    return _unpack(json.loads(metadata[_STATE_KEY]), tensors)


def _unpack(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_unpack(item, tensors) for item in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {"__tensor__"}:
        return tensors[value["__tensor__"]]
    if set(value) == {"__ndarray__", "dtype"}:
        return tensors[value["__ndarray__"]].numpy().astype(np.dtype(str(value["dtype"])))
    if set(value) == {"__float__"}:
        if value["__float__"] not in ("nan", "inf", "-inf"):
            raise ValueError(f"bad non-finite float {value['__float__']!r:.20}")
        return float(value["__float__"])
    if set(value) == {"__tuple__"}:
        return tuple(_unpack(item, tensors) for item in value["__tuple__"])
    if set(value) == {"__items__"}:
        return {_unpack(key, tensors): _unpack(item, tensors) for key, item in value["__items__"]}
    return {key: _unpack(item, tensors) for key, item in value.items()}


def _match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor (Adam's moments...) its parameter's memory layout again. A safetensors
    file stores tensors contiguous, but the optimizer made them like its parameters (``zeros_like``): channels-last
    for channels-last convolution weights. Fused kernels walk parameter and state in memory order, so a restored
    moment in the other layout would update the wrong elements."""
    for param, entries in optimizer.state.items():
        for key, value in list(entries.items()):
            if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                entries[key] = torch.empty_like(param, dtype=value.dtype, device=value.device).copy_(value)


def _restore_tuples(saved: Any, current: Any) -> None:
    """Lists where the optimizer's own groups hold tuples (``betas``): JSON has no tuples, and torch's optimizer
    keeps the saved values as given."""
    if not (isinstance(saved, list) and isinstance(current, list)):
        return
    for saved_group, current_group in zip(saved, current, strict=False):
        if isinstance(saved_group, dict) and isinstance(current_group, dict):
            for key, value in current_group.items():
                if isinstance(value, tuple) and isinstance(saved_group.get(key), list):
                    saved_group[key] = tuple(saved_group[key])


# ---- manifest ----------------------------------------------------------------------------------------------------
def write_manifest(
    directory: str | Path, record: dict[str, Any] | None = None, digests: dict[str, str] | None = None
) -> Path:
    """``manifest.json``: every file of the checkpoint folder with its size and ``CHECKSUM``, the hubclf version, and
    ``record`` (the run's config and numerics). Written last, once all files are in the folder. ``digests``: the
    checksums of files this process has just written (taken as they were written); the others are read for theirs.

        write_manifest("out/checkpoints/.tmp-step_00000010", {"config": config.to_dict()})
    """
    directory = Path(directory)
    files = {}
    for path in sorted(directory.iterdir()):
        if path.name != MANIFEST_FILE:
            digest = (digests or {}).get(path.name) or file_checksum(path)
            files[path.name] = {"bytes": path.stat().st_size, CHECKSUM: digest}
    manifest = {"format": MANIFEST_FORMAT, "hubclf_version": __version__, "files": files, **(record or {})}
    return atomic_write_json(directory / MANIFEST_FILE, manifest)


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The checkpoint's manifest (bounded, strict JSON); a ``CheckpointError`` naming it when missing or malformed.

        numerics = read_manifest("out/checkpoints/step_00000010")["numerics"]   # {"mixed_precision": "no", ...}
    """
    path = Path(directory) / MANIFEST_FILE
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise CheckpointError(
            f"{path} is missing: {directory} was written by an older hubclf (whose checkpoints hold pickles) or not "
            "by hubclf, and its files cannot be checked, so it is not resumed. Start the run over"
        ) from None
    if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_MANIFEST_BYTES:
        raise CheckpointError(f"{path} is {file_kind(info.st_mode)} of {info.st_size:,} bytes, not a manifest")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_refuse_constant)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        why = " ".join(str(e).split())[:200]
        raise CheckpointError(f"{path} is unreadable ({why}); the checkpoint is damaged") from e
    files = manifest.get("files") if isinstance(manifest, dict) else None
    algorithm = MANIFEST_CHECKSUMS.get(manifest.get("format")) if isinstance(manifest, dict) else None
    if algorithm is None or not isinstance(files, dict):
        raise CheckpointError(f"{path} is not a {MANIFEST_FORMAT} manifest")
    for name, entry in files.items():
        if (
            not isinstance(entry, dict) or Path(name).name != name or name in ("", ".", "..", MANIFEST_FILE)
            or not isinstance(entry.get("bytes"), int) or not isinstance(entry.get(algorithm), str)
        ):  # fmt: skip
            raise CheckpointError(f"{path}: the entry for {name!r:.80} is not a file name with bytes and {algorithm}")
    return manifest


def verify_checkpoint(directory: str | Path) -> dict[str, Any]:
    """Check every file of a checkpoint folder against its manifest before anything is read from it: exactly the
    listed files, each a regular file (never followed through a link) of the listed size and checksum. Returns the
    manifest; the first file that does not match is a one-line ``CheckpointError`` naming it.

        verify_checkpoint("out/checkpoints/step_00000010")["hubclf_version"]
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    listed, algorithm = manifest["files"], MANIFEST_CHECKSUMS[manifest["format"]]
    present = {path.name for path in directory.iterdir()} - {MANIFEST_FILE}
    extra = sorted(present - set(listed))
    if extra:
        raise CheckpointError(
            f"{directory} holds {listing(extra, show=repr)}, which its manifest does not list: the checkpoint was "
            "changed after it was written, so it is not resumed"
        )
    for name, entry in listed.items():
        path = directory / name
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            raise CheckpointError(f"{path} is missing, but the checkpoint's manifest lists it") from None
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(f"{path} is {file_kind(info.st_mode)}, not the regular file its manifest lists")
        if info.st_size != entry["bytes"]:
            raise CheckpointError(
                f"{path} has {info.st_size:,} bytes, its manifest says {entry['bytes']:,}: the checkpoint was changed "
                "or damaged after it was written"
            )
        if file_checksum(path, algorithm) != entry[algorithm]:
            raise CheckpointError(
                f"{path} does not match its manifest ({algorithm} differs): the checkpoint was changed or damaged "
                "after it was written"
            )
    return manifest


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _prune(output_dir: str | Path, lineage: list[str], keep: int) -> None:
    """Keep the newest ``keep`` checkpoints of ``lineage``; checkpoints of abandoned timelines go too."""
    kept = set(lineage[-keep:])
    for path in list_checkpoints(output_dir):
        if path.name not in kept:
            fault_point("checkpoint.prune")
            shutil.rmtree(path, ignore_errors=True)
