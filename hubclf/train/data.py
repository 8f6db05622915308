"""Image classification data through 🤗 datasets: load, find the columns, split, decode robustly, transform.

    data = load_image_dataset("photos/", val_split=0.1, seed=0)      # imagefolder, Hub id or save_to_disk dir
    train_tf, eval_tf = build_transforms(timm.data.resolve_model_data_config(model), augment=True)
    train_set = ImageClassificationDataset(data.train, data.image_column, data.label_column, train_tf)

``hubclf eval``/``predict`` reuse these pieces: ``open_dataset``, ``find_columns``, ``decode_image``, ``to_rgb``.
"""

from __future__ import annotations

import io
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image, ImageOps
from timm.data import create_transform

logger = logging.getLogger(__name__)

EVAL_SPLIT_NAMES = ("validation", "valid", "val", "test")
LABEL_COLUMN_NAMES = ("label", "labels")
# What PIL raises for files that are not (complete) images: zero bytes, text named .jpg, truncated data.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class BadImageError(ValueError):
    """An image that cannot be decoded; raised only with ``on_bad_image="error"``."""


@dataclass
class ImageClassificationData:
    """A train and an eval split that share one image column and one ``ClassLabel`` column."""

    train: datasets.Dataset
    eval: datasets.Dataset
    image_column: str
    label_column: str
    label_names: list[str]
    source: str
    eval_split_name: str

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


def load_image_dataset(
    data: str,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    train_split: str = "train",
    eval_split: str | None = None,
    val_split: float = 0.1,
    seed: int = 0,
    num_classes: int | None = None,
) -> ImageClassificationData:
    """Load ``data`` and return checked train/eval splits, failing before any training on unusable data.

    The eval split is ``eval_split``, else the dataset's own validation/valid/val/test split, else a stratified,
    seeded ``val_split`` fraction of the train split.

    Example::

        data = load_image_dataset("photos/")   # photos/<class name>/<image>.jpg
        data.label_names, len(data.train), len(data.eval)
    """
    splits = open_dataset(data)
    if train_split not in splits:
        raise ValueError(f"{data} has no {train_split!r} split (splits: {list(splits)}); pass --train-split")
    train = splits[train_split]
    image_column, label_column = find_columns(train.features, image_column, label_column)
    train = _as_class_label(train, label_column, num_classes)
    label_names = list(train.features[label_column].names)

    if eval_split is None:
        eval_split = find_eval_split(splits, exclude=train_split)
    if eval_split is not None:
        if eval_split not in splits:
            raise ValueError(f"{data} has no {eval_split!r} split (splits: {list(splits)})")
        evaluation = splits[eval_split]
        for column in (image_column, label_column):
            if column not in evaluation.column_names:
                raise ValueError(f"the {eval_split!r} split has no {column!r} column like the train split")
        evaluation = _as_class_label(evaluation, label_column, num_classes, names=label_names)
        logger.info("evaluating on the dataset's %r split", eval_split)
    else:
        train, evaluation = _stratified_split(train, label_column, val_split, seed)
        eval_split = f"{val_split:g} of {train_split} (stratified, seed {seed})"

    _check_classes(label_names, num_classes)
    for name, split in ((train_split, train), (eval_split, evaluation)):
        _check_split(split, name, label_column, len(label_names))
    return ImageClassificationData(
        train=train,
        eval=evaluation,
        image_column=image_column,
        label_column=label_column,
        label_names=label_names,
        source=data,
        eval_split_name=eval_split,
    )


def find_eval_split(splits: datasets.DatasetDict, exclude: str | None = None) -> str | None:
    """The dataset's own evaluation split: the first of validation/valid/val/test it has (``None`` if none)."""
    return next((name for name in EVAL_SPLIT_NAMES if name in splits and name != exclude), None)


def open_dataset(data: str) -> datasets.DatasetDict:
    """A ``DatasetDict`` from a ``save_to_disk`` directory, an imagefolder directory or a Hub dataset id."""
    path = Path(data).expanduser()
    if path.is_dir():
        if any((path / marker).is_file() for marker in ("dataset_dict.json", "state.json")):
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
    elif path.exists():
        raise ValueError(f"--data {data} is a file; give an image folder, a saved dataset directory or a Hub id")
    elif data.startswith((".", "/", "~")) or data.count("/") > 1:
        raise FileNotFoundError(f"--data {data}: no such directory (and it does not look like a Hub dataset id)")
    else:
        loaded = datasets.load_dataset(data)
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict(train=loaded)
    if not isinstance(loaded, datasets.DatasetDict):
        raise ValueError(f"--data {data} loaded as {type(loaded).__name__}; streaming datasets are not supported")
    return loaded


def find_columns(
    features: datasets.Features, image_column: str | None = None, label_column: str | None = None
) -> tuple[str, str]:
    """The image column (an ``Image`` feature) and the label column (a ``ClassLabel``, else ``label``/``labels``).

    Example::

        find_columns(dataset.features)   # ("image", "label") for an imagefolder
    """
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


def _as_class_label(
    dataset: datasets.Dataset, column: str, num_classes: int | None, names: list[str] | None = None
) -> datasets.Dataset:
    """Make ``column`` a ``ClassLabel`` (needed for stratified splits and label names), keeping given ``names``."""
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
        values = _labels(dataset, column)
        if values.size and values.min() < 0:
            raise ValueError(f"label column {column!r} holds negative labels ({values.min()}), e.g. unlabeled rows")
        count = num_classes if num_classes is not None else int(values.max()) + 1 if values.size else 0
        names = [str(i) for i in range(count)]
    _check_range(_labels(dataset, column), column, len(names))
    return dataset.cast_column(column, datasets.ClassLabel(names=names))


def _stratified_split(
    train: datasets.Dataset, label_column: str, fraction: float, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    try:
        parts = train.train_test_split(test_size=fraction, stratify_by_column=label_column, seed=seed)
    except ValueError as e:
        raise ValueError(
            f"cannot hold out a stratified {fraction:g} of {len(train)} images for validation ({e}); "
            "add images, raise --val-split, or provide a validation split"
        ) from e
    logger.info("no eval split: holding out a stratified %g of the train split (seed %d)", fraction, seed)
    return parts["train"], parts["test"]


def _check_classes(label_names: list[str], num_classes: int | None) -> None:
    if len(label_names) < 2:
        raise ValueError(f"the data has {len(label_names)} class(es) {label_names}; a classifier needs at least 2")
    if num_classes is not None and num_classes != len(label_names):
        raise ValueError(
            f"--num-classes {num_classes} contradicts the data, which has {len(label_names)} classes: {label_names}"
        )


def _check_split(split: datasets.Dataset, name: str, label_column: str, num_classes: int) -> None:
    if len(split) == 0:
        raise ValueError(f"the {name} split is empty")
    _check_range(_labels(split, label_column), f"{label_column!r} of the {name} split", num_classes)


def _check_range(labels: np.ndarray, where: str, num_classes: int) -> None:
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(
            f"{bad.size} label(s) in {where} fall outside 0..{num_classes - 1}, e.g. {bad[0]} "
            "(-1 marks unlabeled rows in many datasets)"
        )


def _labels(dataset: datasets.Dataset, column: str) -> np.ndarray:
    # Reading one column through the numpy formatter honours select()/split indices and never decodes images.
    return np.asarray(dataset.select_columns([column]).with_format("numpy")[column])


# ---- decoding ------------------------------------------------------------------------------------------------
def decode_image(value: dict[str, Any] | Image.Image | str) -> Image.Image:
    """An RGB PIL image from a ``datasets.Image(decode=False)`` value (``{"bytes", "path"}``), a path or a PIL image.

    Raises ``BadImageError`` for anything PIL cannot fully decode (empty, not an image, truncated).
    """
    if isinstance(value, Image.Image):
        return to_rgb(value)
    if isinstance(value, str):
        value = {"bytes": None, "path": value}
    where = value.get("path") or "<bytes>"
    try:
        source = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value["path"]
        with Image.open(source) as image:
            image.load()  # decode now: truncated files only fail here
            return to_rgb(image)
    except _DECODE_ERRORS as e:
        raise BadImageError(f"cannot read image {where}: {e}") from e


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB the way a person looking at it would expect.

    Applies the EXIF orientation (phone photos), scales 16-bit images instead of clipping them to white,
    puts transparency on white instead of black, and converts palette, grayscale and CMYK images.

    Example::

        to_rgb(Image.open("scan.tif")).mode   # "RGB"
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        # 16-bit grayscale (PNG/TIFF): PIL's convert("L") clips values above 255, so rescale 0..65535 to 0..255.
        pixels = np.asarray(image).astype(np.float32) / 257.0
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8))
    if image.mode == "P" or (image.mode in ("L", "RGB") and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


# ---- torch side ----------------------------------------------------------------------------------------------
def build_transforms(data_config: dict[str, Any], *, augment: bool = True) -> tuple[Callable, Callable]:
    """timm train and eval transforms for ``data_config`` (``timm.data.resolve_model_data_config(model)``).

    Rectangular inputs stay rectangular: the random-resized-crop aspect range is centred on the target's
    aspect ratio, and eval resizes the shorter side then centre-crops to (H, W). ``augment=False`` makes the
    train transform the eval transform (deterministic inputs, required for cached features).
    """
    _, height, width = data_config["input_size"]
    eval_transform = create_transform(**data_config, is_training=False)
    if not augment:
        return eval_transform, eval_transform
    aspect = width / height  # torchvision's RandomResizedCrop ratio is width / height
    train_transform = create_transform(**data_config, is_training=True, ratio=(3 / 4 * aspect, 4 / 3 * aspect))
    return train_transform, eval_transform


class ImageClassificationDataset(torch.utils.data.Dataset):
    """A torch view of a 🤗 split: ``{"pixel_values", "labels", "index", "valid"}`` per row.

    Unreadable images do not stop training: with ``on_bad_image="skip"`` the row comes back with
    ``valid=False`` and a placeholder tensor, which the loss and the metrics mask out; ``"error"`` raises.

    Example::

        ImageClassificationDataset(data.train, "image", "label", eval_tf)[0]["pixel_values"].shape  # (3, H, W)
    """

    def __init__(
        self,
        dataset: datasets.Dataset,
        image_column: str,
        label_column: str,
        transform: Callable[[Image.Image], torch.Tensor],
        *,
        on_bad_image: str = "skip",
        input_size: tuple[int, int, int] = (3, 224, 224),
    ) -> None:
        if on_bad_image not in ("skip", "error"):
            raise ValueError(f"on_bad_image must be 'skip' or 'error', got {on_bad_image!r}")
        # decode=False hands us the raw bytes/path, so that decoding failures are ours to handle.
        self.dataset = dataset.select_columns([image_column, label_column]).cast_column(
            image_column, datasets.Image(decode=False)
        )
        self.image_column = image_column
        self.label_column = label_column
        self.transform = transform
        self.on_bad_image = on_bad_image
        self.input_size = tuple(input_size)
        self.augmentation_seed: tuple[int, int] | None = None

    def seed_augmentation(self, seed: int, epoch: int) -> None:
        """Draw each image's random augmentation from ``(seed, epoch, row)`` instead of the global RNG.

        The augmentation of a row then no longer depends on worker count, process count or the batches before
        it, which is what makes a resumed run (even mid-epoch) see exactly the pixels of an uninterrupted one.
        """
        self.augmentation_seed = (seed, epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.dataset[index]
        try:
            image = decode_image(row[self.image_column])
        except BadImageError:
            if self.on_bad_image == "error":
                raise
            pixels, valid = torch.zeros(self.input_size), False  # zeros = the mean image after normalisation
        else:
            pixels, valid = self._transform(image, index), True
        return {"pixel_values": pixels, "labels": row[self.label_column], "index": index, "valid": valid}

    def _transform(self, image: Image.Image, index: int) -> torch.Tensor:
        if self.augmentation_seed is None:
            return self.transform(image)
        seed = int(np.random.SeedSequence([*self.augmentation_seed, index]).generate_state(1)[0])
        python_state = random.getstate()  # timm's crops draw from `random`, torchvision's flips from torch
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            try:
                return self.transform(image)
            finally:
                random.setstate(python_state)

    def describe(self, index: int) -> str:
        """Where row ``index`` comes from: its file path, or its row number for in-memory images."""
        value = self.dataset[int(index)][self.image_column]
        return value.get("path") or f"row {int(index)}"
