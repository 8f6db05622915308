"""Classify image files with a saved or published hubclf model: ``hubclf predict`` and ``predict()``.

Images go through the model's own eval transform (``timm.data.resolve_data_config`` + ``create_transform``), so a
448×224 model sees 448×224 inputs. Folders are walked recursively; unreadable files are reported, not fatal.

    from hubclf.predict import predict
    for result in predict("me/flowers-alexnet", ["photos/"], top_k=3):
        print(result.path, result.error or result.predictions[0])
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from hubclf.data.images import BadImageError, decode_image, eval_preprocessing
from hubclf.data.sources import find_images
from hubclf.hardware import resolve_device
from hubclf.hub import from_pretrained
from hubclf.text import printable

__all__ = [
    "ImagePrediction",
    "class_probabilities",
    "find_images",
    "format_predictions",
    "label_names_of",
    "load_model",
    "predict",
]

logger = logging.getLogger(__name__)



@dataclass
class ImagePrediction:
    """The top-k classes of one image (``predictions``, best first), or why it could not be read (``error``)."""

    path: str
    predictions: list[dict[str, Any]] = field(default_factory=list)  # [{"label": "daisy", "score": 0.93}, ...]
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_model(model: nn.Module | str | os.PathLike, *, revision: str | None = None) -> nn.Module:
    """``model`` itself, or the hubclf model at a Hub repo id / folder / ``hf-hub:`` / ``local-dir:`` name."""
    if isinstance(model, nn.Module):
        if revision is not None:
            raise ValueError("revision only applies when the model is given as a Hub repo id")
        return model
    return from_pretrained(model, revision=revision)


def label_names_of(model: nn.Module) -> list[str] | None:
    """The class names a model was saved with (``model.label_names`` or ``pretrained_cfg["label_names"]``)."""
    names = getattr(model, "label_names", None) or getattr(model, "pretrained_cfg", {}).get("label_names")
    if names is None:
        return None
    if len(names) != model.num_classes:
        raise ValueError(f"the model has {len(names)} label names for {model.num_classes} classes")
    return list(names)


def class_probabilities(model: nn.Module, pixel_values: torch.Tensor, *, tta: bool = False) -> torch.Tensor:
    """Softmax over the classes for a batch, in float32; ``tta=True`` averages it with that of the mirror image.

    Test-time augmentation here is the horizontal flip only: the mean of the softmax of each image and of its
    left-right mirror (one forward pass over both). It suits subjects whose mirror image is still the same class
    (animals, flowers, most objects), not text or left/right-specific classes.

        probabilities = class_probabilities(model, batch, tta=True)  # (N, num_classes), rows sum to 1
    """
    if not tta:
        return model(pixel_values).float().softmax(dim=1)
    both = model(torch.cat([pixel_values, pixel_values.flip(-1)])).float().softmax(dim=1)
    original, mirrored = both.chunk(2)
    return (original + mirrored) / 2


class _ImageFiles(Dataset):
    """Decoded, transformed images; an unreadable file yields a zero tensor and its error message."""

    def __init__(self, paths: Sequence[Path], transform: Any, input_size: tuple[int, int, int]) -> None:
        self.paths, self.transform, self.input_size = list(paths), transform, tuple(input_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            image = decode_image(str(self.paths[index]), transform=self.transform)  # budget checked on the header
            pixels, error = self.transform(image), ""
        except BadImageError as e:
            pixels, error = torch.zeros(self.input_size), str(e)
        return {"pixel_values": pixels, "error": error, "index": index}


@torch.inference_mode()
def predict(
    model: nn.Module | str | os.PathLike,
    paths: Iterable[str | os.PathLike],
    *,
    top_k: int = 5,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    revision: str | None = None,
    tta: bool = False,
) -> list[ImagePrediction]:
    """Top-``top_k`` label names and probabilities for every image in ``paths`` (files and/or folders), in order.

    ``model`` is a loaded model or anything ``hubclf.from_pretrained`` takes. ``top_k`` larger than the number of
    classes gives all classes. A file PIL cannot decode (empty, not an image, truncated) comes back with ``error``
    set and no predictions, and is logged; the other images are still classified. ``tta=True`` averages the
    probabilities of each image and its horizontal mirror (see ``class_probabilities``).

        results = predict("out/flowers/best", ["photos/"], top_k=3)
        results[0].predictions   # [{"label": "rose", "score": 0.91}, {"label": "daisy", "score": 0.06}, ...]
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = resolve_device(device)  # before the model download a wrong --device would waste
    files = find_images(paths)
    model = load_model(model, revision=revision)
    names = label_names_of(model)
    if names is None:
        logger.warning("the model has no label names: predictions show class indices")
        names = [str(i) for i in range(model.num_classes)]
    was_training = model.training
    model.eval().to(device)

    data_config, eval_transform = eval_preprocessing(model)
    images = _ImageFiles(files, eval_transform, data_config["input_size"])
    loader = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    k = min(top_k, model.num_classes)

    results: list[ImagePrediction] = []
    try:
        for batch in tqdm(loader, desc="predict", unit="batch", leave=False, disable=len(loader) < 2):
            probabilities = class_probabilities(model, batch["pixel_values"].to(device), tta=tta).cpu()
            scores, classes = probabilities.topk(k, dim=1)
            for index, error, row_scores, row_classes in zip(
                batch["index"].tolist(), batch["error"], scores.tolist(), classes.tolist(), strict=True
            ):
                path = str(files[index])
                if error:
                    logger.warning("%s", printable(error))  # a file name may hold escape sequences
                    results.append(ImagePrediction(path, error=error))
                else:
                    top = [{"label": names[c], "score": s} for c, s in zip(row_classes, row_scores, strict=True)]
                    results.append(ImagePrediction(path, predictions=top))
    finally:
        model.train(was_training)
    return results


def format_predictions(results: Sequence[ImagePrediction]) -> str:
    """One block per image: its path, then ``score  label`` lines, best first (unreadable images are left out).

    Control characters and line breaks in paths and label names are escaped, so each stays on its line.

        photos/rose1.jpg
           91.2%  rose
            6.1%  daisy
    """
    blocks = []
    for result in results:
        if result.error is None:
            lines = [f"  {p['score']:>6.1%}  {printable(p['label'])}" for p in result.predictions]
            blocks.append("\n".join([printable(result.path), *lines]))
    return "\n".join(blocks)
