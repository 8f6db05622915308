"""Class labels: find the image and label columns, normalise class names, turn labels into a ``ClassLabel``.

    image_column, label_column = find_columns(dataset.features)     # ("image", "label") for an image folder
    normalize_class_name(" cafe\u0301 ")                          # "café" (NFC, stripped)
"""

from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING, Any

import numpy as np

from hubclf.data.folders import FileSplit
from hubclf.text import show_name

if TYPE_CHECKING:  # imported where a 🤗 split is read: a class folder's run never loads datasets (92 MiB)
    import datasets

LABEL_COLUMN_NAMES = ("label", "labels")


def find_columns(
    features: datasets.Features, image_column: str | None = None, label_column: str | None = None
) -> tuple[str, str]:
    """The image column (an ``Image`` feature) and the label column (a ``ClassLabel``, else ``label``/``labels``).

    Example::

        find_columns(dataset.features)   # ("image", "label") for an imagefolder
    """
    import datasets

    columns = list(features)
    if image_column is None:
        images = [name for name, feature in features.items() if isinstance(feature, datasets.Image)]
        if not images:
            raise ValueError(f"the dataset has no image column (columns: {columns}); pass --image-column")
        if len(images) > 1:
            raise ValueError(f"the dataset has several image columns {images}; pick one with --image-column")
        image_column = images[0]
    elif image_column not in features:
        raise ValueError(f"--image-column {image_column!r} is not a column of the dataset (columns: {columns})")
    elif not isinstance(features[image_column], datasets.Image):
        raise ValueError(f"column {image_column!r} holds {features[image_column]}, not images")

    if label_column is None:
        class_labels = [name for name, feature in features.items() if isinstance(feature, datasets.ClassLabel)]
        named = [name for name in LABEL_COLUMN_NAMES if name in features]
        if len(class_labels) == 1:
            label_column = class_labels[0]
        elif len(class_labels) > 1:
            preferred = [name for name in class_labels if name in LABEL_COLUMN_NAMES]
            if len(preferred) != 1:
                raise ValueError(f"several ClassLabel columns {class_labels}; pick one with --label-column")
            label_column = preferred[0]
        elif named:
            label_column = named[0]
        else:
            raise ValueError(f"the dataset has no label column (columns: {columns}); pass --label-column")
    elif label_column not in features:
        raise ValueError(f"--label-column {label_column!r} is not a column of the dataset (columns: {columns})")
    return image_column, label_column

def normalize_class_name(name: str) -> str:
    """The form hubclf keeps a class name in: Unicode NFC, surrounding whitespace stripped.

    Folder names in NFD (macOS) and NFC (Linux, Windows), or ``" cat "`` and ``"cat"``, look the same to a person
    and must not become two classes. Example::

        normalize_class_name(" cafe\u0301 ")   # "café" (one code point for é)
    """
    return unicodedata.normalize("NFC", name).strip()

def normalized_class_names(names: list[str], what: str = "class names") -> list[str]:
    """``names`` normalised, in the same order; an error naming the originals when two normalise alike."""
    first_of: dict[str, str] = {}
    for name in names:
        normal = normalize_class_name(name)
        if normal in first_of and first_of[normal] != name:
            raise ValueError(
                f"{what} {show_name(first_of[normal])} and {show_name(name)} both normalise to {show_name(normal)} "
                "(Unicode NFC, surrounding whitespace stripped): rename or merge one of them"
            )
        if not normal:
            raise ValueError(f"{what}: {show_name(name)} is empty once surrounding whitespace is stripped")
        first_of.setdefault(normal, name)
    return [normalize_class_name(name) for name in names]

def normalize_labels(dataset: datasets.Dataset, column: str) -> datasets.Dataset:
    """``dataset`` with the class names of ``column`` (``ClassLabel`` names or string labels) normalised.

    Integer labels without names are left as they are. Example::

        normalize_labels(splits["train"], "label").features["label"].names
    """
    import datasets

    feature = dataset.features[column]
    if isinstance(feature, datasets.ClassLabel):
        names = normalized_class_names(list(feature.names))
        if names == list(feature.names):
            return dataset
        return dataset.cast_column(column, datasets.ClassLabel(names=names))
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        originals = sorted(value for value in dataset.unique(column) if value is not None)
        normal = dict(zip(originals, normalized_class_names(originals, "labels"), strict=True))
        if all(value == normal[value] for value in originals):
            return dataset
        return dataset.map(
            lambda values: {column: [normal.get(value, value) for value in values]},
            input_columns=column,
            batched=True,
            desc="normalising label names",
        )
    return dataset

def as_class_label(
    dataset: datasets.Dataset, column: str, num_classes: int | None, names: list[str] | None = None
) -> datasets.Dataset:
    """Make ``column`` a ``ClassLabel`` (needed for stratified splits and label names), keeping given ``names``."""
    import datasets

    feature = dataset.features[column]
    if isinstance(feature, datasets.ClassLabel):
        if names is not None and list(feature.names) != names:
            raise ValueError(f"the eval split's label names {feature.names} differ from the train split's {names}")
        return dataset
    if not isinstance(feature, datasets.Value):
        raise ValueError(f"label column {column!r} holds {feature}; expected class labels (ClassLabel, int or str)")
    if feature.dtype in ("string", "large_string"):
        if names is None:
            return dataset.class_encode_column(column)
        unknown = sorted(set(dataset.unique(column)) - set(names))
        if unknown:
            raise ValueError(f"labels {unknown[:5]} of the eval split do not occur in the train split")
        return dataset.cast_column(column, datasets.ClassLabel(names=names))
    if not feature.dtype.startswith(("int", "uint")):
        raise ValueError(f"label column {column!r} has dtype {feature.dtype}; expected integer or string labels")
    if names is None:
        values = label_values(dataset, column)
        if values.size and values.min() < 0:
            raise ValueError(f"label column {column!r} holds negative labels ({values.min()}), e.g. unlabeled rows")
        count = num_classes if num_classes is not None else int(values.max()) + 1 if values.size else 0
        names = [str(i) for i in range(count)]
    check_label_range(label_values(dataset, column), column, len(names))
    return dataset.cast_column(column, datasets.ClassLabel(names=names))

def check_classes(label_names: list[str], num_classes: int | None) -> None:
    if len(label_names) < 2:
        raise ValueError(f"the data has {len(label_names)} class(es) {label_names}; a classifier needs at least 2")
    if num_classes is not None and num_classes != len(label_names):
        raise ValueError(
            f"--num-classes {num_classes} contradicts the data, which has {len(label_names)} classes: {label_names}"
        )

def classes_without_images(split: datasets.Dataset, column: str, names: list[str]) -> list[str]:
    counts = np.bincount(label_values(split, column), minlength=len(names))
    return [name for name, count in zip(names, counts, strict=False) if count == 0]

def check_label_range(labels: np.ndarray, where: str, num_classes: int) -> None:
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(
            f"{bad.size} label(s) in {where} fall outside 0..{num_classes - 1}, e.g. {bad[0]} "
            "(-1 marks unlabeled rows in many datasets)"
        )

def label_values(dataset: datasets.Dataset | FileSplit, column: str) -> np.ndarray:
    """One column as a numpy array, in row order, without decoding any image. Example::

        label_values(splits["train"], "label")   # array([0, 0, 1, ...])
    """
    if isinstance(dataset, FileSplit):
        return dataset.labels
    # One slice through the numpy formatter: it honours select()/split indices and reads the column as one Arrow
    # array. (Indexing by the column name instead gives a lazy Column, read row by row: 9 s for 90k rows.)
    return np.asarray(dataset.select_columns([column]).with_format("numpy")[:][column])

def undecoded_images(dataset: datasets.Dataset | FileSplit, image_column: str, *columns: str) -> Any:
    """``dataset`` reduced to ``image_column`` and ``columns``, whose image cells come back undecoded
    (``{"bytes": ..., "path": ...}``), so that reading a row never decodes an image and decoding errors are
    hubclf's to handle. A ``FileSplit``'s cells are already so. Example::

        undecoded_images(data.train, "image", "label")[[0, 1]]["image"]   # [{"bytes": None, "path": ...}, ...]
    """
    if isinstance(dataset, FileSplit):
        return dataset
    import datasets

    return dataset.select_columns([image_column, *columns]).cast_column(image_column, datasets.Image(decode=False))

def split_fingerprint(dataset: datasets.Dataset | FileSplit) -> str:
    """What identifies a split's rows and their files: it changes when a file changes (keys the feature cache)."""
    return dataset.fingerprint if isinstance(dataset, FileSplit) else dataset._fingerprint
