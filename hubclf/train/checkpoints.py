"""Resumable, crash-safe checkpoints: ``accelerator.save_state`` (weights, optimizer, RNG of every process) plus a
readable ``trainer_state.json`` (epoch, step, stage, best score, metric history, lineage) in
``output_dir/checkpoints/step_<N>/``.

    path = save_checkpoint(accelerator, output_dir, state, keep=2)
    path = find_checkpoint("latest", output_dir); state = TrainerState.load(path)

A checkpoint is written into ``checkpoints/.tmp-step_<N>``, fsynced, and renamed into place only once every file
of every process is on disk, so a kill at any instant leaves the previous checkpoints intact and at most a
temporary folder that ``latest`` skips (and names). Checkpoints are ordered by ``sequence``, the order in which
they were created, not by step number: after resuming from an older checkpoint, the new timeline is the latest,
and pruning keeps the newest ``keep`` checkpoints of the timeline being trained (``lineage``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubclf._faults import fault_point
from hubclf.atomic import atomic_write_json, replace_dir
from hubclf.train.safety import raise_on_every_process

STATE_FILE = "trainer_state.json"
CHECKPOINT_DIR = "checkpoints"
TMP_PREFIX = ".tmp-"
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
            return cls(**{key: value for key, value in values.items() if key in known})
        except TypeError as e:
            raise CheckpointError(f"{path} is not a hubclf trainer state: {e}") from e


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


def save_checkpoint(accelerator: Any, output_dir: str | Path, state: TrainerState, keep: int) -> Path:
    """Save on all processes (each writes its own RNG state) into a temporary folder, rename it into place once
    complete, then keep only the newest ``keep`` checkpoints of this timeline. Updates ``state.sequence`` and
    ``state.lineage``."""
    final = checkpoint_dir(output_dir, state.global_step)
    tmp = final.with_name(TMP_PREFIX + final.name)
    error = None
    if accelerator.is_main_process:
        try:
            for stale in final.parent.glob(TMP_PREFIX + "*"):  # left by a killed save; one run per folder (lock)
                shutil.rmtree(stale)
            tmp.mkdir(parents=True)
        except Exception as e:  # reported on every process below, not left for the others to wait on
            error = e
    raise_on_every_process(accelerator, error, "preparing the checkpoint folder")
    accelerator.save_state(str(tmp))
    fault_point("checkpoint.after_save_state")
    accelerator.wait_for_everyone()
    error = None
    if accelerator.is_main_process:
        try:
            complete = list_checkpoints(output_dir)
            state.sequence = 1 + max((TrainerState.load(p).sequence for p in complete), default=0)
            state.lineage = [name for name in state.lineage if name != final.name] + [final.name]
            state.save(tmp)  # the "complete" marker, inside the folder before it gets its real name
            fault_point("checkpoint.after_state")
            replace_dir(tmp, final)
            fault_point("checkpoint.after_rename")
            _prune(output_dir, state.lineage, keep)
            logger.info("saved checkpoint %s", final)
        except Exception as e:
            error = e
    raise_on_every_process(accelerator, error, "saving the checkpoint")
    return final


def _prune(output_dir: str | Path, lineage: list[str], keep: int) -> None:
    """Keep the newest ``keep`` checkpoints of ``lineage``; checkpoints of abandoned timelines go too."""
    kept = set(lineage[-keep:])
    for path in list_checkpoints(output_dir):
        if path.name not in kept:
            fault_point("checkpoint.prune")
            shutil.rmtree(path, ignore_errors=True)
