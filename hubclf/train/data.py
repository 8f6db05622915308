"""Moved to :mod:`hubclf.data` (``sources``, ``labels``, ``splits``, ``images``, ``dataset``). This module re-exports
the old names for one release; import them from ``hubclf.data`` instead.

    from hubclf.data.images import MAX_IMAGE_PIXELS, decode_image   # was hubclf.train.data
"""

from hubclf.data.dataset import EpochSampler, EpochShuffleSampler, ImageClassificationDataset, PixelCache
from hubclf.data.images import (
    MAX_IMAGE_PIXELS,
    BadImageError,
    TensorEvalTransform,
    build_transforms,
    decode_image,
    eval_preprocessing,
    to_rgb,
)
from hubclf.data.labels import (
    LABEL_COLUMN_NAMES,
    find_columns,
    normalize_class_name,
    normalize_labels,
    normalized_class_names,
)
from hubclf.data.sources import find_empty_class_folders, open_dataset
from hubclf.data.splits import EVAL_SPLIT_NAMES, ImageClassificationData, find_eval_split, load_image_dataset
from hubclf.refs import split_revision

__all__ = [
    "EVAL_SPLIT_NAMES", "LABEL_COLUMN_NAMES", "MAX_IMAGE_PIXELS", "BadImageError", "EpochSampler",
    "EpochShuffleSampler", "ImageClassificationData", "ImageClassificationDataset", "PixelCache",
    "TensorEvalTransform", "build_transforms", "decode_image", "eval_preprocessing", "find_columns",
    "find_empty_class_folders", "find_eval_split", "load_image_dataset", "normalize_class_name", "normalize_labels",
    "normalized_class_names", "open_dataset", "split_revision", "to_rgb",
]  # fmt: skip
