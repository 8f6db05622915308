"""Cached frozen-backbone features: with ``--freeze backbone --no-augment`` the backbone's output for an image never
changes, so it is computed once and the classifier trains on the stored features (later epochs take seconds).

    features = load_or_extract_features(accelerator, model, loader, key=feature_cache_key(model, ...), cache_dir=None)
    train_set = FeatureDataset(features)

Training on these features is the uncached path with the backbone call memoised: the same pre-logits
(``model.forward_head(model.forward_features(x), pre_logits=True)`` in eval mode) feed the same classifier.
This is timm's generic model contract, so it holds for any timm model whose ``get_classifier()`` is what
``forward_head`` applies last (ResNet, EfficientNet, ConvNeXt, ViT...); ``check_frozen_head`` verifies it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from hubclf._version import __version__
from hubclf.atomic import atomic_write_file
from hubclf.models.transfer import classifier_modules

logger = logging.getLogger(__name__)


def backbone_features(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The input of ``model.get_classifier()``: everything a frozen backbone computes.

    Example::

        model.get_classifier()(backbone_features(model, x))   # == model(x) in eval mode
    """
    return model.forward_head(model.forward_features(pixel_values), pre_logits=True)


@torch.no_grad()
def check_frozen_head(model: nn.Module, input_size: tuple[int, int, int] | None = None) -> None:
    """Raise a ``ValueError`` unless ``get_classifier()(backbone_features(model, x)) == model(x)`` in eval mode.

    Training only the classifier on frozen (possibly cached) features relies on it. Most timm models satisfy it;
    some do not, e.g. ResNetV2 (its classifier is a 1×1 conv that takes the pooled map, not the flat pre-logits)
    or distilled DeiT/LeViT (two classifiers). One probe image of the model's input size, seeded.

        check_frozen_head(timm.create_model("resnet18", num_classes=8))   # passes silently
    """
    name = model.pretrained_cfg.get("architecture") or type(model).__name__
    modules = classifier_modules(model)
    if len(modules) != 1:
        raise ValueError(
            f"{name} has {len(modules)} classifiers; --freeze backbone trains a single one on the frozen features. "
            "Use --freeze none or --freeze <module name>"
        )
    was_training = model.training
    model.eval()
    try:
        size = tuple(input_size or model.pretrained_cfg["input_size"])
        device = next(model.parameters()).device
        x = torch.randn((1, *size), generator=torch.Generator().manual_seed(0)).to(device)
        features = model.forward_features(x)
        expected = model.forward_head(features)
        try:
            actual = modules[0](model.forward_head(features, pre_logits=True))
        except RuntimeError as e:
            actual, failure = None, f"it fails on them ({str(e).splitlines()[0]})"
        else:
            failure = None
            if actual.shape != expected.shape:
                failure = f"it gives shape {tuple(actual.shape)} instead of {tuple(expected.shape)}"
            elif not torch.allclose(actual, expected, rtol=1e-4, atol=1e-5 * max(1.0, expected.abs().max().item())):
                failure = f"it gives other logits (max |diff| {(actual - expected).abs().max().item():.3g})"
    finally:
        model.train(was_training)
    if failure is not None:
        raise ValueError(
            f"--freeze backbone trains only {name}'s classifier ({type(modules[0]).__name__}) on the frozen "
            f"backbone's pre-logits (forward_head(..., pre_logits=True)), but {failure}. "
            "Use --freeze none or --freeze <module name> for this architecture"
        )


@dataclass
class FeatureSet:
    """Features of one split, in row order. ``bad_rows`` lists rows whose image could not be read."""

    features: torch.Tensor
    labels: torch.Tensor
    rows: torch.Tensor
    bad_rows: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


class FeatureDataset(torch.utils.data.Dataset):
    """Batches like ``ImageClassificationDataset``'s, with ``features`` in place of ``pixel_values``.

    ``bad_images`` names the rows left out because their image could not be read.
    """

    def __init__(self, feature_set: FeatureSet, bad_images: list[str] | None = None) -> None:
        self.feature_set = feature_set
        self.bad_images = list(bad_images or [])

    def __len__(self) -> int:
        return len(self.feature_set)

    def __getitem__(self, i: int) -> dict[str, Any]:
        fs = self.feature_set
        return {"features": fs.features[i], "labels": fs.labels[i], "index": fs.rows[i], "valid": True}


def weights_fingerprint(model: nn.Module) -> str:
    """A hash of every tensor of ``model`` except its classifier: what determines the frozen features."""
    classifiers = {id(module) for module in classifier_modules(model)}
    prefixes = tuple(name + "." for name, module in model.named_modules() if id(module) in classifiers)
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith(prefixes):
            continue
        digest.update(name.encode())
        # hashed through the buffer protocol: no second copy of the weights (0.15 GB for AlexNet) in memory
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


# Bump when what a cache file holds, or how features are computed, changes: old files then stop matching.
FEATURE_CACHE_FORMAT = 2
_CHECKSUM_KEY = "hubclf_sha256"


def feature_cache_key(
    *,
    weights: str,
    transform: Any,
    data_fingerprint: str,
    rows: int,
    autocast: str = "no",
    pooling: str | None = None,
) -> str:
    """Key of a cache entry: backbone weights (``weights_fingerprint(model)``), input pipeline (size, resize,
    normalisation), the data itself, the autocast dtype (``accelerator.mixed_precision``), the model's pooling
    (``model.global_pool``) and the cache format/hubclf version, so that a cache is never reused after any of them
    changes.

    ``data_fingerprint`` is the 🤗 ``Dataset._fingerprint`` of the split (it changes when files change).
    """
    parts = {
        "weights": weights,
        "transform": repr(transform),
        "data": data_fingerprint,
        "rows": rows,
        "autocast": autocast,
        "pooling": pooling,
        "format": FEATURE_CACHE_FORMAT,
        "hubclf": __version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _tensors_checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_feature_cache(path: str | Path, feature_set: FeatureSet) -> Path:
    """Write ``feature_set`` atomically, with the sha256 of its tensors in the safetensors metadata."""
    tensors = {name: getattr(feature_set, name).contiguous() for name in FeatureSet.__dataclass_fields__}
    metadata = {_CHECKSUM_KEY: _tensors_checksum(tensors), "format": str(FEATURE_CACHE_FORMAT)}
    return atomic_write_file(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_feature_cache(path: str | Path) -> FeatureSet:
    """Read a cache file and verify its checksum; a truncated, altered or foreign file raises ``ValueError``."""
    path = Path(path)
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(path)
    except Exception as e:  # safetensors raises its own error types for a bad header or short data
        raise ValueError(f"cannot read {path}: {e}") from e
    expected = metadata.get(_CHECKSUM_KEY)
    if expected is None:
        raise ValueError(f"{path} has no checksum (written by an older hubclf)")
    if set(tensors) != set(FeatureSet.__dataclass_fields__) or _tensors_checksum(tensors) != expected:
        raise ValueError(f"{path} does not match its checksum: the file was altered or damaged")
    return FeatureSet(**tensors)


def extract_features(accelerator: Any, model: nn.Module, dataloader: Any, *, desc: str = "features") -> FeatureSet:
    """One pass of the frozen backbone (eval mode, ``torch.inference_mode``) over a prepared, unshuffled loader.

    Every process gets the full feature set: ``gather_for_metrics`` collects all shards without duplicates.
    """
    was_training = model.training
    model.eval()
    features, labels, rows, valid = [], [], [], []
    with torch.inference_mode():  # less bookkeeping than no_grad: no version counters, no view tracking
        for batch in tqdm(dataloader, desc=desc, disable=not accelerator.is_local_main_process):
            with accelerator.autocast():
                output = backbone_features(model, batch["pixel_values"]).float()
            # Integers rather than bools: not every collective backend (gloo) gathers bool tensors.
            gathered = (output, batch["labels"], batch["index"], batch["valid"].long())
            if accelerator.num_processes > 1:
                gathered = accelerator.gather_for_metrics(gathered)
            for store, tensor in zip((features, labels, rows, valid), gathered, strict=True):
                store.append(tensor.cpu())
    model.train(was_training)
    # Concatenated outside inference mode: the classifier trains on these, and autograd may save its inputs.
    features, labels, rows, valid = (torch.cat(store) for store in (features, labels, rows, valid))
    order = rows.argsort()  # restore row order whatever the process interleaving
    features, labels, rows, valid = features[order], labels[order], rows[order], valid[order].bool()
    return FeatureSet(features[valid], labels[valid], rows[valid], rows[~valid])


def load_or_extract_features(
    accelerator: Any, model: nn.Module, dataloader: Any, *, key: str, cache_dir: str | Path | None, desc: str
) -> FeatureSet:
    """Features from ``cache_dir/<key>.safetensors`` if present and intact, else extracted (and stored there by the
    main process). A damaged cache file is reported, deleted and recomputed. ``cache_dir=None`` keeps them in
    memory only."""
    path = Path(cache_dir) / f"{key}.safetensors" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            feature_set = load_feature_cache(path)
        except ValueError as e:
            logger.warning("%s: ignoring the damaged feature cache (%s); recomputing", desc, e)
            if accelerator.is_main_process:
                path.unlink(missing_ok=True)
        else:
            logger.info("%s: reusing cached features %s", desc, path)
            return feature_set
    feature_set = extract_features(accelerator, model, dataloader, desc=desc)
    if path is not None:
        if accelerator.is_main_process:
            save_feature_cache(path, feature_set)
            logger.info("%s: cached %d features in %s", desc, len(feature_set), path)
        accelerator.wait_for_everyone()
    return feature_set
