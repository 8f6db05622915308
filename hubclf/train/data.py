"""Image classification data through 🤗 datasets: load, find the columns, split, decode robustly, transform.

    data = load_image_dataset("photos/", val_split=0.1, seed=0)      # imagefolder, Hub id or save_to_disk dir
    train_tf, eval_tf = build_transforms(timm.data.resolve_model_data_config(model), augment=True)
    train_set = ImageClassificationDataset(data.train, data.image_column, data.label_column, train_tf)

``hubclf eval``/``predict`` reuse these pieces: ``open_dataset``, ``find_columns``, ``normalize_labels``,
``decode_image``, ``to_rgb``. Labels may also come from a CSV file (``hubclf.train.csv_labels``).
"""

from __future__ import annotations

import io
import logging
import math
import random
import unicodedata
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from huggingface_hub.utils import HFValidationError, validate_repo_id
from PIL import Image, ImageOps
from timm.data import create_transform, resolve_model_data_config
from torchvision.transforms import Normalize
from torchvision.transforms.functional import pil_to_tensor

from hubclf.config_check import label_name_problems

logger = logging.getLogger(__name__)

EVAL_SPLIT_NAMES = ("validation", "valid", "val", "test")
LABEL_COLUMN_NAMES = ("label", "labels")

# Decompression-bomb limit: an image of more pixels is unreadable for hubclf (skipped and listed like a corrupt
# file). 100 megapixels (e.g. 10000 x 10000) is more than any common camera photo and decodes to ~300 MB of RGB
# per DataLoader worker; a small file that claims more is far more likely an attack or a broken header. hubclf
# sets PIL's process-wide limit to this value on import and turns PIL's DecompressionBombWarning (raised between
# the limit and twice the limit) into an error inside ``decode_image``. Assign ``PIL.Image.MAX_IMAGE_PIXELS``
# after importing hubclf to change it.
MAX_IMAGE_PIXELS = 100_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

# What PIL raises for files that are not (complete) images: zero bytes, text named .jpg, truncated data, bombs.
_DECODE_ERRORS = (
    OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError, Image.DecompressionBombWarning
)  # fmt: skip


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
    # Reported, not fatal: classes that exist (e.g. in the eval split) but have no train image, and class folders
    # without any image (which the imagefolder loader drops without a word).
    classes_without_train_images: list[str] = field(default_factory=list)
    empty_class_folders: list[str] = field(default_factory=list)

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
    labels: str | None = None,
    path_column: str | None = None,
) -> ImageClassificationData:
    """Load ``data`` and return checked train/eval splits, failing before any training on unusable data.

    ``data`` is an image folder, a ``save_to_disk`` directory, a Hub dataset id (``user/name[@revision]``) or a
    CSV file of ``path,label`` rows; ``labels`` is a CSV whose paths are relative to the ``data`` folder (see
    ``hubclf.train.csv_labels``). Class names are normalised (Unicode NFC, surrounding whitespace stripped); two
    names that normalise alike are an error. The eval split is ``eval_split``, else the dataset's own
    validation/valid/val/test split, else a stratified, seeded ``val_split`` fraction of the train split.

    Example::

        data = load_image_dataset("photos/")   # photos/<class name>/<image>.jpg
        data.label_names, len(data.train), len(data.eval)
    """
    splits = open_dataset(data, labels=labels, path_column=path_column, label_column=label_column)
    if train_split not in splits:
        raise ValueError(f"{data} has no {train_split!r} split (splits: {list(splits)}); pass --train-split")
    train = splits[train_split]
    image_column, label_column = find_columns(train.features, image_column, label_column)
    train = _as_class_label(normalize_labels(train, label_column), label_column, num_classes)
    label_names = list(train.features[label_column].names)
    problems = label_name_problems(label_names, len(label_names))
    if problems:  # they become the model's label_names: refuse them now, not when the first checkpoint is saved
        raise ValueError(f"{data}: class names " + "; ".join(problems))

    if eval_split is None:
        eval_split = find_eval_split(splits, exclude=train_split)
    if eval_split is not None:
        if eval_split not in splits:
            raise ValueError(f"{data} has no {eval_split!r} split (splits: {list(splits)})")
        evaluation = splits[eval_split]
        for column in (image_column, label_column):
            if column not in evaluation.column_names:
                raise ValueError(f"the {eval_split!r} split has no {column!r} column like the train split")
        evaluation = normalize_labels(evaluation, label_column)
        evaluation = _as_class_label(evaluation, label_column, num_classes, names=label_names)
        logger.info("evaluating on the dataset's %r split", eval_split)
    else:
        train, evaluation = _stratified_split(train, label_column, val_split, seed)
        eval_split = f"{val_split:g} of {train_split} (stratified, seed {seed})"

    _check_classes(label_names, num_classes)
    for name, split in ((train_split, train), (eval_split, evaluation)):
        _check_split(split, name, label_column, len(label_names))
    untrained = _classes_without_images(train, label_column, label_names)
    if untrained:
        logger.warning(
            "%d class(es) have no image in the %r split, so the model never learns them: %s",
            len(untrained), train_split, ", ".join(map(_show, untrained)),
        )  # fmt: skip
    empty_folders = find_empty_class_folders(data) if labels is None else []
    if empty_folders:
        logger.warning(
            "%d class folder(s) hold no image and are not classes of this run: %s",
            len(empty_folders), ", ".join(map(_show, empty_folders)),
        )  # fmt: skip
    return ImageClassificationData(
        train=train,
        eval=evaluation,
        image_column=image_column,
        label_column=label_column,
        label_names=label_names,
        source=labels if labels is not None else data,  # what the model card names (Hub ids only, in full)
        eval_split_name=eval_split,
        classes_without_train_images=untrained,
        empty_class_folders=empty_folders,
    )


def find_eval_split(splits: datasets.DatasetDict, exclude: str | None = None) -> str | None:
    """The dataset's own evaluation split: the first of validation/valid/val/test it has (``None`` if none)."""
    return next((name for name in EVAL_SPLIT_NAMES if name in splits and name != exclude), None)


def split_revision(data: str) -> tuple[str, str | None]:
    """``"user/name@v2"`` -> ``("user/name", "v2")``: the Hub dataset id and the branch, tag or commit after ``@``.

    Example::

        split_revision("user/flowers")   # ("user/flowers", None)
    """
    repo_id, at, revision = data.partition("@")
    if at and not revision:
        raise ValueError(f"--data {data}: nothing after '@'; write user/name@BRANCH_TAG_OR_COMMIT")
    return repo_id, revision or None


def open_dataset(
    data: str,
    *,
    labels: str | None = None,
    path_column: str | None = None,
    label_column: str | None = None,
    unsplit_name: str = "train",
) -> datasets.DatasetDict:
    """A ``DatasetDict`` from a ``save_to_disk`` directory, an imagefolder directory, a CSV of labels or a Hub id.

    A Hub id may name a revision: ``user/name@v2``. ``labels`` (a CSV) gives the labels of the images in the
    ``data`` folder; ``path_column``/``label_column`` name its columns, and a CSV without a split column becomes
    one split called ``unsplit_name``. Example::

        open_dataset("user/flowers@main")["train"]
    """
    from hubclf.train.csv_labels import read_labels_csv  # its own module; it builds on this one's helpers

    path = Path(data).expanduser()
    if labels is not None:
        if not path.is_dir():
            raise ValueError(f"--labels {labels} needs --data to be the folder its paths start from; got {data}")
        return read_labels_csv(
            labels, image_root=path, path_column=path_column, label_column=label_column, unsplit_name=unsplit_name
        )
    if path_column is not None and path.suffix.lower() != ".csv":
        raise ValueError("--path-column names a column of a labels CSV: give the CSV with --data or --labels")
    if path.is_dir():
        if any((path / marker).is_file() for marker in ("dataset_dict.json", "state.json")):
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = _load_image_folder(path, data)
    elif path.suffix.lower() == ".csv":
        return read_labels_csv(path, path_column=path_column, label_column=label_column, unsplit_name=unsplit_name)
    elif path.exists():
        raise ValueError(
            f"--data {data} is a file; give an image folder, a labels .csv, a saved dataset directory or a Hub id"
        )
    else:
        check_data_location(data)
        repo_id, revision = split_revision(data)
        try:
            loaded = datasets.load_dataset(repo_id, revision=revision)
        except ConnectionError as e:  # say both readings: a mistyped folder is the likelier one offline
            raise FileNotFoundError(f"--data {data}: no such folder here, and as a Hub dataset id: {e}") from e
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict(train=loaded)
    if not isinstance(loaded, datasets.DatasetDict):
        raise ValueError(f"--data {data} loaded as {type(loaded).__name__}; streaming datasets are not supported")
    return loaded


def _load_image_folder(path: Path, data: str) -> datasets.DatasetDict:
    """🤗 datasets' imagefolder, with its silent layout outcomes handled: no images is an error; and as it infers
    labels only from at least 2 class folders holding every image at the same depth, a single class folder (fine
    to evaluate on) is read again with its label, and images at mixed depths are an error."""
    try:
        loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
    except datasets.data_files.EmptyDatasetError:
        raise FileNotFoundError(
            f"--data {data}: no images found; an image folder holds one subfolder of images per class "
            f"({Path(data) / 'cat' / '1.jpg'}, {Path(data) / 'dog' / '2.jpg'})"
        ) from None
    if any(list(split.features) != ["image"] for split in loaded.values()):  # labels, or a metadata file's columns
        return loaded
    # Forced labels come from each image's folder: one name means a single class folder; more, mixed depths
    # (photos/cat/1.jpg next to photos/2.jpg would make a class "photos").
    labelled = datasets.load_dataset("imagefolder", data_dir=str(path), drop_labels=False)
    if all(len(split.features["label"].names) == 1 for split in labelled.values()):
        return labelled
    raise ValueError(
        f"--data {data}: no class labels: an image folder needs one subfolder per class with every image at the "
        f"same depth ({Path(data) / 'cat' / '1.jpg'}, {Path(data) / 'dog' / '2.jpg'}); or give the labels in a CSV "
        "with --labels"
    )


def check_data_location(data: str) -> None:
    """Fail fast on a ``--data`` that names no existing path and cannot be a Hub dataset id, before a run spends
    time on anything else; what exists is read and checked later, by ``open_dataset``.

        check_data_location("photos/")   # FileNotFoundError when there is no such folder
    """
    if Path(data).expanduser().exists():
        return
    repo_id, _ = split_revision(data)
    # huggingface_hub's own id rules also refuse "photos/", a missing folder's most likely spelling.
    if data.startswith((".", "/", "~")) or not _is_valid_repo_id(repo_id):
        raise FileNotFoundError(f"--data {data}: no such directory (and it does not look like a Hub dataset id)")


def _is_valid_repo_id(repo_id: str) -> bool:
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return False
    return True


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
                f"{what} {_show(first_of[normal])} and {_show(name)} both normalise to {_show(normal)} "
                "(Unicode NFC, surrounding whitespace stripped): rename or merge one of them"
            )
        if not normal:
            raise ValueError(f"{what}: {_show(name)} is empty once surrounding whitespace is stripped")
        first_of.setdefault(normal, name)
    return [normalize_class_name(name) for name in names]


def normalize_labels(dataset: datasets.Dataset, column: str) -> datasets.Dataset:
    """``dataset`` with the class names of ``column`` (``ClassLabel`` names or string labels) normalised.

    Integer labels without names are left as they are. Example::

        normalize_labels(splits["train"], "label").features["label"].names
    """
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


def _show(name: str) -> str:
    """A name quoted so that whitespace shows, with code points spelled out when it is not plain ASCII."""
    return repr(name) if name.isascii() else f"{name!r} ({ascii(name)})"


def _classes_without_images(split: datasets.Dataset, column: str, names: list[str]) -> list[str]:
    counts = np.bincount(_labels(split, column), minlength=len(names))
    return [name for name, count in zip(names, counts, strict=False) if count == 0]


def find_empty_class_folders(data: str) -> list[str]:
    """Class folders of a local image folder that hold no image, as paths relative to it (``[]`` for other data).

    The imagefolder loader names classes after the folders that hold images, so an empty folder silently is no
    class at all. A class folder is a sibling of a folder that holds images directly (``root/<class>/`` or
    ``root/<split>/<class>/``). Example::

        find_empty_class_folders("photos/")   # ["tulip"] when photos/tulip/ is empty
    """
    root = Path(data).expanduser()
    if not root.is_dir() or any((root / marker).is_file() for marker in ("dataset_dict.json", "state.json")):
        return []
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    extensions = {extension.lower() for extension in ImageFolder.EXTENSIONS}

    def visible(path: Path) -> bool:  # datasets skips hidden files and folders, and __pycache__-like ones
        return not any(part.startswith((".", "__")) for part in path.relative_to(root).parts)

    images = [p for p in root.rglob("*") if p.suffix.lower() in extensions and p.is_file() and visible(p)]
    class_roots = {image.parent.parent for image in images if image.parent != root}
    with_images = {parent for image in images for parent in image.parents}
    empty = [
        folder
        for class_root in class_roots
        for folder in class_root.iterdir()
        if folder.is_dir() and visible(folder) and folder not in with_images
    ]
    return sorted(folder.relative_to(root).as_posix() for folder in empty)


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

    Raises ``BadImageError`` for anything PIL cannot fully decode (empty, not an image, truncated) and for images
    of more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (decompression bombs; see ``MAX_IMAGE_PIXELS``).
    """
    if isinstance(value, Image.Image):
        return to_rgb(value)
    if isinstance(value, str):
        value = {"bytes": None, "path": value}
    where = value.get("path") or "<bytes>"
    try:
        source = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value["path"]
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that; for hubclf both are too large.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
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
def build_transforms(
    data_config: dict[str, Any], *, augment: bool = True, **train_options: Any
) -> tuple[Callable, Callable]:
    """timm train and eval transforms for ``data_config`` (``timm.data.resolve_model_data_config(model)``).

    Rectangular inputs stay rectangular: the random-resized-crop aspect range is centred on the target's
    aspect ratio, and eval resizes the shorter side then centre-crops to (H, W). ``augment=False`` makes the
    train transform the eval transform (deterministic inputs, required for cached features). ``train_options``
    go to ``timm.data.create_transform`` for the train transform (``scale``, ``hflip``, ``color_jitter``,
    ``auto_augment``, ``re_prob``...; ``hubclf.train.recipes.AUGMENT_PRESETS`` has the named sets).
    """
    _, height, width = data_config["input_size"]
    eval_transform = create_transform(**data_config, is_training=False)
    eval_transform = TensorEvalTransform.wrap(eval_transform)
    if not augment:
        return eval_transform, eval_transform
    aspect = width / height  # torchvision's RandomResizedCrop ratio is width / height
    train_options = {"ratio": (3 / 4 * aspect, 4 / 3 * aspect), **train_options}
    train_transform = create_transform(**data_config, is_training=True, **train_options)
    return train_transform, eval_transform


class TensorEvalTransform:
    """timm's eval transform with its last two steps (to-tensor, then normalise) fused into one.

    timm's own resize/crop steps run on the PIL image as before, then the uint8 pixels become a tensor without a
    copy and are scaled and normalised in one pass instead of two (``ToTensor`` divides by 255 into a new tensor,
    ``Normalize`` subtracts and divides again). Same pixels up to float rounding (tested). Measured per 448×224
    JPEG, decode included (CPU time): ~1.0-1.2 ms with PIL + timm, ~0.8-0.9 ms this way. (Decoding with
    ``torchvision.io`` instead of PIL measured no faster, and is deprecated in torchvision 0.29, so PIL and
    ``to_rgb`` keep decoding.) ``wrap`` keeps timm's transform for any pipeline it does not recognise.

    Example::

        transform = TensorEvalTransform.wrap(create_transform(**data_config, is_training=False))
        transform(decode_image("photo.jpg"))   # float (3, H, W), normalised
    """

    # Largest difference from timm's pipeline allowed by ``wrap`` (float rounding of the fused arithmetic).
    TOLERANCE = 1e-5

    def __init__(self, transform: Any) -> None:
        steps = list(getattr(transform, "transforms", []))
        if len(steps) < 2 or type(steps[-2]).__name__ not in ("MaybeToTensor", "ToTensor"):
            raise ValueError(f"not a to-tensor + normalise transform: {transform!r}")
        if not isinstance(steps[-1], Normalize):
            raise ValueError(f"not a to-tensor + normalise transform: {transform!r}")
        self.transform = transform
        self.geometry = steps[:-2]
        mean = torch.as_tensor(steps[-1].mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.as_tensor(steps[-1].std, dtype=torch.float32).view(-1, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * std), -mean / std

    @classmethod
    def wrap(cls, transform: Any) -> Any:
        """``TensorEvalTransform(transform)`` if it gives ``transform``'s pixels on test images, else ``transform``."""
        try:
            fast = cls(transform)
            generator = np.random.default_rng(0)
            for size in ((37, 53), (64, 64)):  # one odd size that every resize and crop has to touch
                image = Image.fromarray(generator.integers(0, 256, (*size, 3), dtype=np.uint8))
                if (fast(image) - transform(image)).abs().max() > cls.TOLERANCE:
                    return transform
        except (ValueError, TypeError, AttributeError):
            return transform
        return fast

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.normalize(self.pixels(image))

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """timm's resize and crop, on the PIL image as timm does them: uint8 (3, H, W), what ``PixelCache`` keeps."""
        for step in self.geometry:
            image = step(image)
        if image.mode != "RGB":
            image = image.convert("RGB")
        return pil_to_tensor(image)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (3, H, W) -> normalised float (3, H, W)."""
        return pixels.float().mul_(self.scale).add_(self.shift)

    def __repr__(self) -> str:  # part of the feature-cache key: it must name every setting
        return f"{type(self).__name__}({self.transform!r})"


def eval_preprocessing(model: torch.nn.Module) -> tuple[dict[str, Any], Callable]:
    """How ``model`` sees an image outside training: its timm data config and eval transform (its own input size,
    crop and normalisation). ``predict``, ``eval``, the app and ``--strategy auto`` all go through this.

    Example::

        data_config, transform = eval_preprocessing(model)   # data_config["input_size"] == (3, 448, 224)
    """
    data_config = resolve_model_data_config(model)
    return data_config, build_transforms(data_config, augment=False)[1]


class PixelCache:
    """Every row's resized and cropped uint8 pixels, in shared memory: decoded once, then read by any process.

    For fixed inputs only (``TensorEvalTransform``: no random augmentation), where every epoch would decode and
    resize the same file to the same pixels again. DataLoader workers fill it during the first pass and see each
    other's rows, because the storage is shared; a row's float pixels are then normalised from the uint8 copy by
    the same operations as without the cache, so the tensors are identical. ``nbytes`` is what it holds.

    Example::

        cache = PixelCache(len(split), (3, 448, 224))   # 0.3 MB per image at 448×224
    """

    UNKNOWN, CACHED, BAD = 0, 1, 2

    def __init__(self, rows: int, input_size: tuple[int, int, int]) -> None:
        # Created in shared memory, untouched: `torch.empty(...).share_memory_()` would copy the whole buffer in,
        # making every page resident in the creating process (the training process, which with loader workers
        # never reads them).
        storage = torch.UntypedStorage._new_shared(self.nbytes_for(rows, input_size))
        self.pixels = torch.empty(0, dtype=torch.uint8).set_(storage).view(rows, *input_size)
        self.status = torch.zeros(rows, dtype=torch.uint8).share_memory_()

    @staticmethod
    def nbytes_for(rows: int, input_size: tuple[int, int, int]) -> int:
        return rows * math.prod(input_size)

    @property
    def nbytes(self) -> int:
        return self.pixels.numel()


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
        cache_pixels: bool = False,
    ) -> None:
        if on_bad_image not in ("skip", "error"):
            raise ValueError(f"on_bad_image must be 'skip' or 'error', got {on_bad_image!r}")
        if cache_pixels and not isinstance(transform, TensorEvalTransform):
            raise ValueError(f"cache_pixels needs a fixed (eval) transform, got {transform!r}")
        # decode=False hands us the raw bytes/path, so that decoding failures are ours to handle.
        self.dataset = dataset.select_columns([image_column, label_column]).cast_column(
            image_column, datasets.Image(decode=False)
        )
        self.image_column = image_column
        self.label_column = label_column
        self.transform = transform
        self.on_bad_image = on_bad_image
        self.input_size = tuple(input_size)
        # Labels are read once (no images decoded); the images are read a batch of rows at a time.
        self.labels = _labels(self.dataset, label_column).tolist()
        # (seed, epoch) in shared memory: persistent DataLoader workers see each new epoch's value (-1: unseeded).
        self._augmentation_seed = torch.full((2,), -1, dtype=torch.int64).share_memory_()
        self.pixel_cache = PixelCache(len(self.labels), self.input_size) if cache_pixels else None

    @property
    def augmentation_seed(self) -> tuple[int, int] | None:
        seed, epoch = self._augmentation_seed.tolist()
        return None if seed < 0 else (seed, epoch)

    def seed_augmentation(self, seed: int, epoch: int) -> None:
        """Draw each image's random augmentation from ``(seed, epoch, row)`` instead of the global RNG.

        The augmentation of a row then no longer depends on worker count, process count or the batches before
        it, which is what makes a resumed run (even mid-epoch) see exactly the pixels of an uninterrupted one.
        """
        if seed < 0 or epoch < 0:
            raise ValueError(f"seed and epoch must be non-negative, got {seed}, {epoch}")
        self._augmentation_seed.copy_(torch.tensor([seed, epoch]))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """A batch of rows: the DataLoader calls this once per batch, so the Arrow table is read once per batch."""
        indices = [int(i) for i in indices]
        values = self.dataset[indices][self.image_column]
        return [self._sample(value, index) for value, index in zip(values, indices, strict=True)]

    def _sample(self, value: dict[str, Any], index: int) -> dict[str, Any]:
        cache = self.pixel_cache
        status = PixelCache.UNKNOWN if cache is None else int(cache.status[index])
        if status == PixelCache.CACHED:
            pixels, valid = self.transform.normalize(cache.pixels[index]), True
        elif status == PixelCache.BAD:
            pixels, valid = torch.zeros(self.input_size), False  # reported on the first pass
        else:
            try:
                image = decode_image(value)
            except BadImageError:
                if self.on_bad_image == "error":
                    raise
                if cache is not None:
                    cache.status[index] = PixelCache.BAD
                pixels, valid = torch.zeros(self.input_size), False  # zeros = the mean image after normalisation
            else:
                pixels, valid = self._transform(image, index), True
        return {"pixel_values": pixels, "labels": self.labels[index], "index": index, "valid": valid}

    def _transform(self, image: Image.Image | torch.Tensor, index: int) -> torch.Tensor:
        cache = self.pixel_cache
        if cache is not None:  # a fixed transform: no augmentation seed to apply
            pixels = self.transform.pixels(image)
            if tuple(pixels.shape) == tuple(cache.pixels.shape[1:]):
                cache.pixels[index] = pixels
                cache.status[index] = PixelCache.CACHED  # after the pixels: a reader never sees a half-written row
            return self.transform.normalize(pixels)
        augmentation_seed = self.augmentation_seed
        if augmentation_seed is None:
            return self.transform(image)
        seed = int(np.random.SeedSequence([*augmentation_seed, index]).generate_state(1)[0])
        # timm's crops draw from `random`, torchvision's flips from torch, timm's RandAugment from NumPy.
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed)
            try:
                return self.transform(image)
            finally:
                random.setstate(python_state)
                np.random.set_state(numpy_state)

    def describe(self, index: int) -> str:
        """Where row ``index`` comes from: its file path, or its row number for in-memory images."""
        value = self.dataset[int(index)][self.image_column]
        return value.get("path") or f"row {int(index)}"


# ---- data order ------------------------------------------------------------------------------------------------
class EpochSampler(torch.utils.data.Sampler[int]):
    """``rows`` indices per epoch, drawn from ``(seed, epoch)`` only; subclasses say how (``__iter__``).

    Nothing else draws from the epoch's generator, so any worker count, a resumed run and every process
    (Accelerate's batch sharding gives each its part of the same sequence) see the same indices. Call
    ``start_epoch`` before each epoch (not ``set_epoch``: Accelerate calls that one with its own count of
    iterations, which restarts at 0 in a resumed run).
    """

    def __init__(self, rows: int, seed: int) -> None:
        self.rows, self.seed, self.epoch = rows, seed, 0

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.rows

    # Not named `generator`: Accelerate takes a sampler's `generator` attribute for a torch.Generator to synchronise.
    def epoch_generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]))


class EpochShuffleSampler(EpochSampler):
    """Every row once per epoch, in an order drawn from ``(seed, epoch)`` only.

    ``DataLoader(shuffle=True, generator=g)`` shares ``g`` with the loader's iterator, which draws its worker seed
    from it every epoch without workers and only once with persistent ones: the order then depended on
    ``--num-workers``. Example::

        sampler = EpochShuffleSampler(4, seed=0); sampler.start_epoch(1); list(sampler)
    """

    def __iter__(self):
        yield from torch.randperm(self.rows, generator=self.epoch_generator()).tolist()
