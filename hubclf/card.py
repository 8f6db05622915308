"""A saved model's ``config.json`` -> its model card (``README.md``), rendered with huggingface_hub's
``ModelCard.from_template`` from ``model_cards/hubclf_model_card.md``. Rendering only: the caller writes the file.

    card = render_model_card(json.loads(Path("out/best/config.json").read_text()), "me/flowers-alexnet")
    card.save("out/best/README.md")
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hubclf.refs import is_hub_id
from hubclf.text import md_cell

__all__ = ["CARD_TEMPLATE", "render_model_card"]

# The template lives in model_cards/ at the repository root; a wheel ships it as hubclf/model_cards/
# (see pyproject.toml). A source checkout or editable install reads it in place.
_CARD_LOCATIONS = [Path(__file__).parent / "model_cards", Path(__file__).parent.parent / "model_cards"]
CARD_TEMPLATE = next(
    (d / "hubclf_model_card.md" for d in _CARD_LOCATIONS if (d / "hubclf_model_card.md").is_file()),
    _CARD_LOCATIONS[-1] / "hubclf_model_card.md",
)
FREEZE_DESCRIPTIONS = {
    "none": "fine-tuned end to end (no layer frozen)",
    "backbone": "feature extraction: the pretrained backbone was frozen and only the new classifier trained",
}


def render_model_card(config: dict[str, Any], model_id: str) -> ModelCard:
    """Render the model card for a saved ``config.json``; ``model_id`` (Hub repo or folder) goes into the snippets.

    card = render_model_card(json.loads(Path("out/flowers/config.json").read_text()), "me/flowers-alexnet")
    """
    if not CARD_TEMPLATE.is_file():
        raise FileNotFoundError(f"model card template {CARD_TEMPLATE} is missing from this hubclf install")
    meta = config.get("hubclf", {})
    pretrained_cfg = config["pretrained_cfg"]
    dataset, base_model = meta.get("dataset"), meta.get("base_model")
    is_hub_repo = is_hub_id(model_id)
    model_name = model_id.rstrip("/").split("/")[-1]
    eval_results = meta.get("eval_results") or {}
    card_data = ModelCardData(
        library_name="timm",
        pipeline_tag="image-classification",
        license=pretrained_cfg.get("license") or "unknown",
        tags=["image-classification", "timm", "hubclf", "transfer-learning", config["architecture"]],
        # The Hub checks these against existing repos, so only Hub ids go in the metadata (all go in the body).
        datasets=[dataset] if dataset and is_hub_id(dataset) else None,
        base_model=base_model if base_model and is_hub_id(base_model) else None,
        model_name=model_name,
        eval_results=[
            EvalResult(
                task_type="image-classification",
                dataset_type=dataset if dataset and is_hub_id(dataset) else "imagefolder",
                dataset_name=dataset or "image folder",
                dataset_split="validation",
                # The Hub's metric type for F1 is "f1"; hubclf reports its macro average over the classes.
                metric_type="f1" if name == "macro_f1" else name,
                metric_name="macro F1" if name == "macro_f1" else None,
                metric_value=value,
            )
            for name, value in eval_results.items()
            if value is not None  # a metric that was NaN/inf, stored as null
        ]
        or None,
    )
    labels = config.get("label_names") or []
    epoch_metrics = meta.get("epoch_metrics") or []
    epoch_columns = list(dict.fromkeys(key for row in epoch_metrics for key in row))
    _, height, width = pretrained_cfg["input_size"]
    return ModelCard.from_template(
        card_data,
        template_path=str(CARD_TEMPLATE),
        model_title=model_name,
        model_id=model_id,
        is_hub_repo=is_hub_repo,
        architecture=config["architecture"],
        needs_hubclf=_is_hubclf_architecture(config["architecture"]),
        head_description=_describe_head(config),
        num_classes=config["num_classes"],
        input_channels=pretrained_cfg["input_size"][0],
        input_height=height,
        input_width=width,
        mean=_fmt(tuple(pretrained_cfg.get("mean", ()))),
        std=_fmt(tuple(pretrained_cfg.get("std", ()))),
        interpolation=pretrained_cfg.get("interpolation"),
        crop_pct=pretrained_cfg.get("crop_pct"),
        freeze_description=_describe_freeze(meta.get("freeze")),
        total_params=_fmt_count(meta.get("total_params")),
        trainable_params=_fmt_count(meta.get("trainable_params")) if meta.get("trainable_params") is not None else None,
        dataset=dataset,
        base_model=base_model,
        labels=[(i, md_cell(name)) for i, name in enumerate(labels)],
        hyperparameters=[(md_cell(k), md_cell(_fmt(v))) for k, v in (meta.get("hyperparameters") or {}).items()],
        epoch_columns=[md_cell(c) for c in epoch_columns],
        epoch_rows=[[md_cell(_fmt(row.get(c, ""))) for c in epoch_columns] for row in epoch_metrics],
        eval_rows=[(md_cell(k), _fmt(v)) for k, v in eval_results.items()],
        images=meta.get("images") or [],
        images_skipped=meta.get("images_skipped"),
        strategy=config.get("strategy"),  # "Why this strategy": hubclf.train.strategy.add_card_section
    )


def _describe_head(config: dict[str, Any]) -> str:
    if not _is_hubclf_architecture(config["architecture"]):
        pool = config.get("global_pool")
        pooled = f", global {pool} pool" if pool else ""
        return f"timm's own architecture: {config.get('num_features', '?')}-channel features{pooled}, classifier"
    if config["architecture"].endswith("_slim"):
        return f"conv features, global {config.get('global_pool', 'avg')} pool and one linear classifier"
    return "conv features, torchvision's two 4096-wide hidden layers and a linear classifier"


def _is_hubclf_architecture(architecture: str) -> bool:
    """Registered by ``import hubclf`` (timm and transformers need that import), rather than shipped with timm."""
    return architecture.startswith("hubclf_")


def _describe_freeze(freeze: str | None) -> str:
    if freeze is None:
        return "not recorded"
    return FREEZE_DESCRIPTIONS.get(freeze, f"layers up to and including `{freeze}` frozen, the rest fine-tuned")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    return str(value)


def _fmt_count(count: int | None) -> str:
    return "unknown" if count is None else f"{count:,}"
