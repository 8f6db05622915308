"""Resumable checkpoints: ``accelerator.save_state`` (weights, optimizer, RNG of every process) plus a readable
``trainer_state.json`` (epoch, step, stage, best score, metric history) in ``output_dir/checkpoints/step_<N>/``.

    path = save_checkpoint(accelerator, output_dir, state, keep=2)
    path = find_checkpoint("latest", output_dir); state = TrainerState.load(path)

A checkpoint counts only once its ``trainer_state.json`` exists, which is written last: a run killed while
saving leaves an incomplete folder that ``latest`` skips.
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

STATE_FILE = "trainer_state.json"
CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step_(\d+)$")

logger = logging.getLogger(__name__)


@dataclass
class TrainerState:
    """Where a run stands. ``epoch`` is the next epoch to run (0-based); ``batches_done`` counts the batches of
    that epoch already trained when a checkpoint was written mid-epoch."""

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

    def save(self, directory: Path) -> None:
        (directory / STATE_FILE).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> TrainerState:
        return cls(**json.loads((Path(directory) / STATE_FILE).read_text(encoding="utf-8")))


def checkpoint_dir(output_dir: str | Path, global_step: int) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR / f"step_{global_step:08d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(output_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def find_checkpoint(resume: str, output_dir: str | Path) -> Path:
    """``"latest"`` -> the newest complete checkpoint of ``output_dir``; anything else is a checkpoint folder."""
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(f"--resume latest: no checkpoint in {Path(output_dir) / CHECKPOINT_DIR}")
        return found[-1]
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume {resume}: not a complete hubclf checkpoint (no {STATE_FILE})")
    return path


def save_checkpoint(accelerator: Any, output_dir: str | Path, state: TrainerState, keep: int) -> Path:
    """Save on all processes (each writes its own RNG state), then keep only the newest ``keep`` checkpoints."""
    path = checkpoint_dir(output_dir, state.global_step)
    if accelerator.is_main_process:
        (path / STATE_FILE).unlink(missing_ok=True)  # overwriting a same-step checkpoint: incomplete until the end
    accelerator.wait_for_everyone()
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        state.save(path)
        older = [p for p in list_checkpoints(output_dir) if p != path]
        for old in older[: max(len(older) - (keep - 1), 0)]:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("saved checkpoint %s", path)
    accelerator.wait_for_everyone()
    return path
