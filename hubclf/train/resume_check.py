"""``--resume`` with other settings than the run it continues: each difference named, the ones that cannot continue
refused before any work, the others said once with what they change.

A run writes the settings it was given, its classes and its image counts to ``OUTPUT_DIR/settings.json``; a resumed
run compares its own with them: ``check_resume_settings`` (no data needed, from preflight) and ``check_resume_data``
(its classes and images, once the data is loaded and before the checkpoint is).

    write_settings(Path("out"), given_config, data)
    notes = check_resume_settings(TrainConfig(model="hubclf_alexnet", data="photos/", output_dir="out",
                                              resume="latest", epochs=8))
    # ["--epochs 8 (was 5): the learning-rate schedule is recomputed for 8 epochs ..."]
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hubclf.atomic import atomic_write_json
from hubclf.text import shorts
from hubclf.train.config import TrainConfig

__all__ = ["SETTINGS_FILE", "check_resume_data", "check_resume_settings", "read_settings", "write_settings"]

logger = logging.getLogger(__name__)

SETTINGS_FILE = "settings.json"
# Settings a checkpoint cannot continue under: another model, other data or another split of it (other classes,
# other images), another freezing plan (the checkpoint holds other tensors), another optimizer (other state).
FIXED = (
    "model", "data", "labels", "path_column", "image_column", "label_column", "train_split", "eval_split",
    "val_split", "num_classes", "freeze", "unfreeze_after", "strategy", "opt", "model_ema",
)  # fmt: skip
# Settings that only mattered before the first step: the weights now come from the checkpoint.
START_ONLY = ("pretrained", "weights")
# Settings that change nothing about what is trained (where files go, how often, how fast).
NEUTRAL = ("resume", "output_dir", "num_workers", "cache_images", "cache_features", "feature_cache_dir",
           "keep_checkpoints", "save_every_steps", "log_with", "push_to_hub", "hub_private", "channels_last",
           "compile")  # fmt: skip


def write_settings(output_dir: Path, given: TrainConfig, label_names: list[str], images: dict[str, int]) -> Path:
    """Record what the run was given (not what ``auto`` resolved to), its classes and its image counts.

        write_settings(Path("out"), config, data.label_names, {"train": 192, "eval": 24})
    """
    record = {"settings": given.to_dict(), "label_names": list(label_names), "images": dict(images)}
    return atomic_write_json(Path(output_dir) / SETTINGS_FILE, record)


def read_settings(output_dir: str | Path) -> dict[str, Any] | None:
    """The recorded settings of the run in ``output_dir``, or None (no such file: a run from before they were
    recorded, or none at all; an unreadable file is said once and treated as absent)."""
    path = Path(output_dir) / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        logger.warning(f"--resume: {path} is unreadable ({e}); the settings cannot be compared")
        return None
    return record if isinstance(record, dict) and isinstance(record.get("settings"), dict) else None


def check_resume_settings(config: TrainConfig) -> list[str]:
    """Compare ``config`` (a ``--resume`` run) with the settings its output folder recorded: a ``ValueError`` that
    names every difference the checkpoint cannot continue under, else one note per other difference (also logged
    as a warning), saying what it changes.

        check_resume_settings(config)   # ValueError: --resume: ... --model resnet18 (was hubclf_alexnet) ...
    """
    if config.resume is None:
        return []
    record = read_settings(config.output_dir)
    if record is None:
        return []
    saved, given = record["settings"], config.to_dict()
    refused, notes = [], []
    for key in given:
        if key in NEUTRAL or key not in saved or _same(saved[key], given[key]):
            continue
        change = f"--{key.replace('_', '-')} {_show(given[key])} (was {_show(saved[key])})"
        if key in FIXED:
            refused.append(change)
        elif key in START_ONLY:
            notes.append(f"{change}: ignored, the weights come from the checkpoint")
        elif key == "epochs":
            notes.append(
                f"{change}: the learning-rate schedule is recomputed for {given[key]} epochs, so the rate from "
                "here on is not the one the first part of the run was heading for"
            )
        else:
            notes.append(f"{change}: the rest of the run uses the new value")
    if refused:
        raise ValueError(
            f"--resume: {config.output_dir} holds a run with other settings, which its checkpoint cannot continue "
            f"under: {'; '.join(refused)}. Resume with the original settings, or start a new run in another "
            "--output-dir"
        )
    for note in notes:
        logger.warning(f"--resume with a changed setting: {note}")
    return notes


def check_resume_data(output_dir: str | Path, label_names: list[str], images: dict[str, int]) -> list[str]:
    """Once the data is loaded: refuse other classes than the checkpoint was trained on (its classifier has one
    output per class), and say when the number of images changed. Returns the notes.

        check_resume_data("out", data.label_names, {"train": len(data.train), "eval": len(data.eval)})
    """
    record = read_settings(output_dir)
    saved_labels = record.get("label_names") if record else _labels_of_saved_model(Path(output_dir))
    if saved_labels is not None and list(saved_labels) != list(label_names):
        raise ValueError(
            f"--resume: the checkpoint in {output_dir} was trained on {len(saved_labels)} classes "
            f"{shorts(saved_labels[:8])}{' ...' if len(saved_labels) > 8 else ''}, the data now has "
            f"{len(label_names)}: {shorts(label_names[:8])}{' ...' if len(label_names) > 8 else ''}. A run continues "
            "only on the classes it started with: resume with the original data, or start a new run in another "
            "--output-dir (--model OUTPUT_DIR/best starts from its weights)"
        )
    notes = []
    for split, count in images.items():
        before = (record or {}).get("images", {}).get(split)
        if before is not None and before != count:
            notes.append(f"the {split} split has {count} images, the run started with {before}")
    for note in notes:
        logger.warning(f"--resume: {note}; the run continues on the data as it is now")
    return notes


def _labels_of_saved_model(output_dir: Path) -> list[str] | None:
    """A run from before settings.json: the classes of its best model, if an epoch finished."""
    path = output_dir / "best" / "config.json"
    try:
        names = json.loads(path.read_text(encoding="utf-8")).get("label_names")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return names if isinstance(names, list) else None


def _same(a: Any, b: Any) -> bool:
    return (list(a) if isinstance(a, tuple) else a) == (list(b) if isinstance(b, tuple) else b)


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return "unset" if value is None else str(value)
