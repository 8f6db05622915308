"""What a training run leaves in its output folder, and how it is written: ``best/`` and ``final/`` (model folders
through ``hubclf.hub``), ``metrics.jsonl`` (one JSON record per epoch; this module is its only writer) and the
card fields that describe the run. ``TrainResult`` is what ``train()`` returns about them.

    write_metrics(output_dir / METRICS_FILE, history)
    save_model(model, output_dir / BEST_DIR, config, data, state, num_processes, recipe)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn as nn

from hubclf.atomic import atomic_write_text, strict_json_dumps
from hubclf.card import INIT_FILE, INIT_PRETRAINED, INIT_RANDOM, INIT_SAVED
from hubclf.data.splits import ImageClassificationData
from hubclf.hub import save_pretrained, update_card
from hubclf.plots import model_pictures
from hubclf.refs import DataSource, ModelRef
from hubclf.train.checkpoints import TrainerState
from hubclf.train.config import TrainConfig
from hubclf.train.recipes import Recipe

METRICS_FILE = "metrics.jsonl"
BEST_DIR, FINAL_DIR = "best", "final"
# Per-epoch columns that go into the model card (metrics.jsonl keeps everything, confusion matrices included).
CARD_COLUMNS = ("epoch", "stage", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5")
# What best/'s card says in place of its pictures until the run ends (a killed run's best/ keeps saying it).
BEST_PICTURES_LATER = "they are drawn when the run ends"


@dataclass
class TrainResult:
    """What a finished run produced. Metrics use the keys of ``hubclf.metrics.ClassificationMetrics``."""

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

    @classmethod
    def from_state(cls, output_dir: Path, state: TrainerState, hub_url: str | None = None) -> TrainResult:
        """The result of the run in ``output_dir`` whose (last) state is ``state``.

            result = TrainResult.from_state(Path("out"), TrainerState.load(checkpoint))
        """
        return cls(
            output_dir=output_dir,
            best_model_dir=output_dir / BEST_DIR,
            final_model_dir=output_dir / FINAL_DIR,
            metrics_file=output_dir / METRICS_FILE,
            best_metrics=val_metrics(state.history[state.best_epoch - 1]),
            final_metrics=val_metrics(state.history[-1]),
            history=state.history,
            bad_images=state.bad_images,
            hub_url=hub_url,
        )


def val_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """The ``val_*`` entries of an epoch record, without the prefix.

        val_metrics({"epoch": 1, "val_top1": 0.5})   # {"top1": 0.5}
    """
    return {key.removeprefix("val_"): value for key, value in record.items() if key.startswith("val_")}


def write_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    """``metrics.jsonl``, the whole file at once and atomically: a kill mid-write never leaves half a line (NaN/inf
    are written as null). The only writer of that file.

        write_metrics(Path("out/metrics.jsonl"), [{"epoch": 1, "val_top1": 0.5}])
    """
    atomic_write_text(path, "".join(strict_json_dumps(record) + "\n" for record in records))


def card_rows(history: list[dict]) -> list[dict]:
    """The per-epoch table of the card: the ``CARD_COLUMNS`` of each record (and its ``phase``, if any)."""
    return [{k: row[k] for k in ("phase", *CARD_COLUMNS) if k in row} for row in history]


def save_model(
    model: nn.Module,
    directory: Path,
    config: TrainConfig,
    data: ImageClassificationData,
    state: TrainerState,
    num_processes: int,
    recipe: Recipe | None = None,
    pictures: bool = True,
    weights_from: Path | None = None,
) -> None:
    """``save_pretrained`` with the run's card; ``pictures=False`` leaves the plots to ``refresh_best_card``;
    ``weights_from``: a file that already holds ``model``'s weights as ``save_pretrained`` writes them (linked).

        save_model(model, Path("out/final"), config, data, state, accelerator.num_processes, recipe)
    """
    history = state.history
    best = history[state.best_epoch - 1] if state.best_epoch else history[-1]
    # The epoch whose weights these are: the best one, or the last one for final/. Its metrics, its confusion matrix.
    shown = history[-1] if directory.name == FINAL_DIR else best
    eval_results = {"accuracy": shown["val_top1"], "loss": shown["val_loss"]}
    if "val_top5" in shown:
        eval_results["top5_accuracy"] = shown["val_top5"]
    if "val_macro_f1" in shown:
        eval_results["macro_f1"] = shown["val_macro_f1"]
    if pictures:
        images, images_skipped = model_pictures(shown.get("val_confusion_matrix"), data.label_names, history)
    else:
        images, images_skipped = {}, BEST_PICTURES_LATER
    save_pretrained(
        model,
        directory,
        label_names=data.label_names,
        dataset=dataset_name(config),
        base_model=base_model(config, model),
        freeze=config.freeze,
        hyperparameters=hyperparameters(config, num_processes, recipe),
        eval_results=eval_results,
        epoch_metrics=card_rows(history),
        images=images,
        images_skipped=images_skipped,
        extra_config={"provenance": provenance(config, model, data, state, shown)},
        weights_from=weights_from,
    )


def provenance(
    config: TrainConfig, model: nn.Module, data: ImageClassificationData, state: TrainerState, record: dict[str, Any]
) -> dict[str, Any]:
    """What the card says about where the model came from, from what happened: the starting weights (random, timm's
    pretrained weights, a weights file or a saved model) with the tag, origin and licence of weights that were
    loaded only; how many images were trained on, validated on and scored (``record``: the epoch whose metrics the
    card shows), and how many were unreadable and skipped.

        provenance(config, model, data, state, state.history[-1])["init"]   # "random" with --no-pretrained
    """
    ref, cfg = ModelRef.parse(config.model), model.pretrained_cfg
    if ref.is_saved:
        init, weights = INIT_SAVED, ref.display_name
    elif not config.pretrained:
        init, weights = INIT_RANDOM, None
    elif config.weights:
        init, weights = INIT_FILE, Path(config.weights).name  # a local file: its name, never its path
    else:
        init, weights = INIT_PRETRAINED, base_model(config, model)
    loaded = init != INIT_RANDOM
    return {
        "init": init,
        "weights": weights,
        "tag": cfg.get("tag") if loaded else None,
        "origin_url": cfg.get("origin_url") if loaded else None,
        "license": cfg.get("license") if loaded else None,
        "train_images": len(data.train),
        "eval_images": len(data.eval),
        "images_scored": record.get("val_num_samples"),
        "unreadable_images": len(state.bad_images),
    }


def refresh_best_card(directory: Path, data: ImageClassificationData, state: TrainerState) -> None:
    """Give the best model's card the whole run's per-epoch table, and its pictures: the best epoch's confusion
    matrix and the whole run's curves, drawn once here instead of at every new best (~1 s each with 24 classes).
    Its weights stay on disk (loading them would hold a second copy of the model in memory)."""
    best = state.history[state.best_epoch - 1]
    images, images_skipped = model_pictures(best.get("val_confusion_matrix"), data.label_names, state.history)
    saved = json.loads((directory / "config.json").read_text(encoding="utf-8")).get("provenance") or {}
    counted = {"provenance": {**saved, "unreadable_images": len(state.bad_images)}}  # also those found after best
    update_card(
        directory, epoch_metrics=card_rows(state.history), images=images, images_skipped=images_skipped,
        extra_config=counted if saved else None,
    )  # fmt: skip


def dataset_name(config: TrainConfig) -> str:
    """How the card names the data: a Hub id without its ``@revision``; a local folder or CSV by its name only, so a
    published card does not reveal local paths."""
    return DataSource.parse(config.data, labels=config.labels).display_name


def base_model(config: TrainConfig, model: nn.Module) -> str | None:
    """Where the starting weights came from, for the card (a Hub id when there is one, never a local path)."""
    ref = ModelRef.parse(config.model)
    if ref.is_saved:
        return ref.display_name
    if not config.pretrained:
        return None
    if config.weights:
        return f"{config.model} ({Path(config.weights).name})"
    architecture, tag = config.model.partition(".")[0], model.pretrained_cfg.get("tag")
    return model.pretrained_cfg.get("hf_hub_id") or (f"{architecture}.{tag}" if tag else architecture)


def hyperparameters(config: TrainConfig, num_processes: int, recipe: Recipe | None = None) -> dict[str, Any]:
    """The settings the card's hyperparameter table shows (unset ones left out)."""
    keys = (
        "epochs", "batch_size", "grad_accum_steps", "lr", "backbone_lr_scale", "opt", "weight_decay", "sched",
        "warmup_epochs", "min_lr", "clip_grad", "seed", "augment", "crop_pct", "freeze", "unfreeze_after",
        "mixed_precision", "hflip", "color_jitter", "aa", "reprob", "smoothing", "class_weights", "patience",
        "drop_rate", "drop_path_rate", "crop_scale", "crop_ratio",
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


def tracker_config(config: TrainConfig) -> dict[str, Any]:
    """The run's settings for ``accelerator.init_trackers``: TensorBoard's hparams accept scalars and strings only."""
    return {k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool))}
