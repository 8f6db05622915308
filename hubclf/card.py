"""A saved model's ``config.json`` -> its model card (``README.md``), rendered with huggingface_hub's
``ModelCard.from_template`` from ``model_cards/hubclf_model_card.md``. Rendering only: the caller writes the file.

    card = render_model_card(json.loads(Path("out/best/config.json").read_text()), "me/flowers-alexnet")
    card.save("out/best/README.md")
"""

from __future__ import annotations

import importlib.metadata
import math
import re
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hubclf.refs import is_hub_id
from hubclf.text import license_id, md_cell, md_code, md_text

__all__ = ["CARD_TEMPLATE", "model_title", "project_url", "render_model_card"]

# The template lives in model_cards/ at the repository root; a wheel ships it as hubclf/model_cards/
# (see pyproject.toml). A source checkout or editable install reads it in place.
_CARD_LOCATIONS = [Path(__file__).parent / "model_cards", Path(__file__).parent.parent / "model_cards"]
CARD_TEMPLATE = next(
    (d / "hubclf_model_card.md" for d in _CARD_LOCATIONS if (d / "hubclf_model_card.md").is_file()),
    _CARD_LOCATIONS[-1] / "hubclf_model_card.md",
)
# How the card says where the starting weights came from (config.json's "provenance", written by hubclf train).
INIT_RANDOM, INIT_PRETRAINED, INIT_SAVED, INIT_FILE = "random", "pretrained", "saved model", "weights file"
# Metrics whose value is a fraction of the scored images: the card also says how many that is.
_FRACTION_METRICS = {"accuracy", "top5_accuracy"}
# What DataSource.display_name adds after a local folder's name: " (local image folder)", " (saved dataset)"...
_LOCAL_KIND = re.compile(r" \((?:local|saved) [^)]*\)$")


def render_model_card(config: dict[str, Any], model_id: str) -> ModelCard:
    """Render the model card for a saved ``config.json``; ``model_id`` (Hub repo or folder) goes into the snippets.

    Everything the card states comes from ``config``: where the starting weights came from (its ``provenance``
    block, which ``hubclf train`` writes; without it the card says what it does not know), how many images each
    number was measured on, the licence only of weights that were loaded. Text from others is escaped
    (``hubclf.text``).

        card = render_model_card(json.loads(Path("out/flowers/config.json").read_text()), "me/flowers-alexnet")
    """
    if not CARD_TEMPLATE.is_file():
        raise FileNotFoundError(f"model card template {CARD_TEMPLATE} is missing from this hubclf install")
    meta = config.get("hubclf", {})
    provenance = config.get("provenance") or {}
    pretrained_cfg = config["pretrained_cfg"]
    architecture = config["architecture"]
    dataset, base_model = meta.get("dataset"), meta.get("base_model")
    is_hub_repo = is_hub_id(model_id)
    title = model_title(model_id, architecture, dataset)
    eval_results = meta.get("eval_results") or {}
    transferred = provenance.get("init", INIT_PRETRAINED) != INIT_RANDOM
    licence = provenance.get("license") if provenance else pretrained_cfg.get("license")
    card_data = ModelCardData(
        library_name="timm",
        pipeline_tag="image-classification",
        license=license_id(licence) if licence else "unknown",
        tags=["image-classification", "timm", "hubclf", *(["transfer-learning"] if transferred else []), architecture],
        # The Hub checks these against existing repos, so only Hub ids go in the metadata (all go in the body).
        datasets=[dataset] if dataset and is_hub_id(dataset) else None,
        base_model=base_model if base_model and is_hub_id(base_model) else None,
        model_name=title,
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
    scored = provenance.get("images_scored")
    hyperparameters = meta.get("hyperparameters") or {}
    return ModelCard.from_template(
        card_data,
        template_path=str(CARD_TEMPLATE),
        model_title=md_text(title),
        model_id=model_id,
        timm_name=f"hf-hub:{model_id}" if is_hub_repo else f"local-dir:{model_id}",
        architecture=architecture,
        needs_hubclf=_is_hubclf_architecture(architecture),
        remote_code="auto_map" in config,
        project_url=project_url(),
        origin_sentence=_origin_sentence(provenance, base_model, meta.get("freeze"), hyperparameters),
        weights_description=_describe_weights(provenance, base_model),
        pretrained_source=transferred and bool(provenance or base_model),
        head_description=_describe_head(config),
        num_classes=config["num_classes"],
        input_channels=pretrained_cfg["input_size"][0],
        input_height=height,
        input_width=width,
        mean=_fmt(tuple(pretrained_cfg.get("mean", ()))),
        std=_fmt(tuple(pretrained_cfg.get("std", ()))),
        interpolation=pretrained_cfg.get("interpolation"),
        crop_pct=pretrained_cfg.get("crop_pct"),
        freeze_description=_describe_freeze(meta.get("freeze"), provenance, hyperparameters),
        total_params=_fmt_count(meta.get("total_params")),
        trainable_params=_fmt_count(meta.get("trainable_params")) if meta.get("trainable_params") is not None else None,
        dataset=md_text(dataset) if dataset else None,
        data_counts=_data_counts(provenance),
        unreadable=provenance.get("unreadable_images"),
        license_text=_describe_license(licence, provenance),
        labels=[(i, md_cell(name)) for i, name in enumerate(labels)],
        hyperparameters=[(md_cell(k), md_cell(_fmt(v))) for k, v in hyperparameters.items() if k != "recipe"],
        recipe=[md_text(decision) for decision in hyperparameters.get("recipe") or []],
        epoch_columns=[md_cell(c) for c in epoch_columns],
        epoch_rows=[[md_cell(_fmt(row.get(c, ""))) for c in epoch_columns] for row in epoch_metrics],
        eval_rows=[(md_cell(k), md_cell(_fmt(v)), _images(k, v, scored)) for k, v in eval_results.items()],
        scored=scored,
        images=meta.get("images") or [],
        images_skipped=meta.get("images_skipped"),
        strategy=config.get("strategy"),  # "Why this strategy": hubclf.train.strategy.add_card_section
    )


def model_title(model_id: str, architecture: str, dataset: str | None) -> str:
    """The model's name on its card and in its model-index: the Hub repo id, or for a local folder what it is,
    ``architecture on dataset`` (a folder's own name, such as ``best``, says nothing).

        model_title("me/flowers-alexnet", "hubclf_alexnet", None)                        # "me/flowers-alexnet"
        model_title("/runs/out/best", "hubclf_alexnet", "photos (local image folder)")  # "hubclf_alexnet on photos"
    """
    if is_hub_id(model_id):
        return model_id
    if not dataset:
        return f"{architecture} image classifier"
    return f"{architecture} on {_LOCAL_KIND.sub('', dataset)}"


def project_url() -> str | None:
    """Where hubclf lives, from its package metadata (pyproject.toml's ``[project.urls]``), or None: the card links
    only to a real address."""
    try:
        entries = importlib.metadata.metadata("hubclf").get_all("Project-URL") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    urls = dict(entry.split(", ", 1) for entry in entries if ", " in entry)
    return next((urls[key] for key in ("Documentation", "Homepage", "Repository", "Source") if key in urls), None)


def _origin_sentence(provenance: dict[str, Any], base_model: str | None, freeze: str | None, hyper: dict) -> str:
    init = provenance.get("init")
    if init == INIT_RANDOM:
        return "trained from random initialisation (no pretrained weights: no transfer learning)"
    source = _source(provenance, base_model)
    if not source:
        return "(where its starting weights came from was not recorded)"
    how = "feature extraction on" if freeze == "backbone" and not hyper.get("unfreeze_after") else "fine-tuned from"
    return f"made by transfer learning, {how} {source}"


def _describe_weights(provenance: dict[str, Any], base_model: str | None) -> str:
    init = provenance.get("init")
    if init == INIT_RANDOM:
        return "none: random initialisation"
    source = _source(provenance, base_model)
    return source or "not recorded"


def _source(provenance: dict[str, Any], base_model: str | None) -> str | None:
    """The starting weights, as the card names them (escaped: names and URLs come from others' configs)."""
    init, name = provenance.get("init"), provenance.get("weights") or base_model
    if not name:
        return None
    what = {INIT_SAVED: "the model", INIT_FILE: "the weights file", INIT_PRETRAINED: "the pretrained weights"}
    text = f"{what.get(init, 'the weights')} `{md_code(name)}`"
    origin = provenance.get("origin_url")
    return f"{text} (from {md_text(origin)})" if origin else text


def _describe_freeze(freeze: str | None, provenance: dict[str, Any], hyper: dict[str, Any]) -> str:
    if freeze is None:
        return "not recorded"
    random = provenance.get("init") == INIT_RANDOM
    backbone = "randomly initialised backbone" if random else "pretrained backbone"
    if hyper.get("unfreeze_after"):
        return (
            f"the new classifier alone for {hyper['unfreeze_after']} epoch(s) on the frozen {backbone}, then every "
            "layer"
        )
    if freeze == "none":
        return "every layer trained from random initialisation" if random else "fine-tuned end to end (no layer frozen)"
    if freeze == "backbone":
        if random:
            return "only the classifier trained, on a frozen randomly initialised backbone (random features)"
        return "feature extraction: the pretrained backbone was frozen and only the new classifier trained"
    frozen = "at their random initialisation" if random else "as pretrained"
    return f"layers up to and including `{md_code(freeze)}` frozen {frozen}, the rest trained"


def _describe_license(licence: str | None, provenance: dict[str, Any]) -> str:
    if provenance.get("init") == INIT_RANDOM:
        return "unknown: no pretrained weights were used, so none is inherited; the owner of the data decides"
    if not licence:
        return "unknown (none recorded with the starting weights)"
    if license_id(licence) == "other":
        return f"other; the starting weights state: {md_text(licence)}"
    return f"{licence}, the licence of the starting weights"


def _data_counts(provenance: dict[str, Any]) -> str | None:
    train, evaluation = provenance.get("train_images"), provenance.get("eval_images")
    if train is None or evaluation is None:
        return None
    return f"{train} training images, {evaluation} validation images"


def _images(metric: str, value: Any, scored: int | None) -> str:
    """How many images a metric was measured on; for an accuracy also how many of them were right."""
    if scored is None:
        return "not recorded"
    if metric in _FRACTION_METRICS and isinstance(value, (int, float)) and math.isfinite(value):
        return f"{round(value * scored)} of {scored} right"
    return str(scored)


def _describe_head(config: dict[str, Any]) -> str:
    if not _is_hubclf_architecture(config["architecture"]):
        pool = config.get("global_pool")
        pooled = f", global {pool} pool" if pool else ""
        return f"timm's own architecture: {config.get('num_features', '?')}-channel features{pooled}, classifier"
    if config["architecture"].endswith("_slim"):
        return f"conv features, global {config.get('global_pool', 'avg')} pool and one linear classifier"
    return "conv features, torchvision's two 4096-wide hidden layers and a linear classifier"


def _is_hubclf_architecture(architecture: str) -> bool:
    """Registered by ``import hubclf`` (timm needs that import), rather than shipped with timm."""
    return architecture.startswith("hubclf_")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    return str(value)


def _fmt_count(count: int | None) -> str:
    return "unknown" if count is None else f"{count:,}"
