"""Image classification data: where images come from, their labels, the splits, decoding and transforms, and the
torch ``Dataset``. Training and inference (predict, eval, the app) both read images through this package.

- ``sources``: image folder, labels CSV (``csv_labels``), ``save_to_disk`` folder, Hub dataset; image files
- ``folders``: class folders read in one walk into ``FileSplit``s, without 🤗 datasets
- ``labels``: image and label columns, class-name normalisation, ``ClassLabel``
- ``splits``: ``load_image_dataset`` -> checked train/eval splits (``ImageClassificationData``)
- ``images``: ``decode_image``, ``build_transforms``, ``eval_preprocessing``
- ``dataset``: ``ImageClassificationDataset``, the pixel cache, the epoch samplers

    from hubclf.data import load_image_dataset
    data = load_image_dataset("photos/")   # photos/<class name>/<image>.jpg
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hubclf.data.dataset import ImageClassificationDataset
    from hubclf.data.images import BadImageError, build_transforms, decode_image, eval_preprocessing
    from hubclf.data.sources import find_images, open_dataset
    from hubclf.data.splits import ImageClassificationData, load_image_dataset

# Imported on first use: the decoding half (PIL, torch) must not pull in 🤗 datasets for `hubclf predict`.
_LAZY = {
    "ImageClassificationDataset": "hubclf.data.dataset",
    "BadImageError": "hubclf.data.images",
    "build_transforms": "hubclf.data.images",
    "decode_image": "hubclf.data.images",
    "eval_preprocessing": "hubclf.data.images",
    "find_images": "hubclf.data.sources",
    "open_dataset": "hubclf.data.sources",
    "ImageClassificationData": "hubclf.data.splits",
    "load_image_dataset": "hubclf.data.splits",
}

__all__ = [
    "ImageClassificationDataset", "BadImageError", "build_transforms", "decode_image", "eval_preprocessing",
    "find_images", "open_dataset", "ImageClassificationData", "load_image_dataset",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'hubclf.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
