"""Train and evaluation splits: load the data a run names, check it, and hold out a stratified validation split
when the data has none.

    data = load_image_dataset("photos/", val_split=0.1, seed=0)      # image folder, CSV, Hub id or saved dataset
    data.label_names, len(data.train), len(data.eval)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import datasets
import numpy as np

from hubclf.config_check import label_name_problems
from hubclf.data.labels import (
    as_class_label,
    check_classes,
    check_label_range,
    classes_without_images,
    find_columns,
    label_values,
    normalize_labels,
)
from hubclf.data.sources import find_empty_class_folders, open_dataset
from hubclf.refs import DataSource
from hubclf.text import listing, show_name

logger = logging.getLogger(__name__)

EVAL_SPLIT_NAMES = ("validation", "valid", "val", "test")


@dataclass
class ImageClassificationData:
    """A train and an eval split that share one image column and one ``ClassLabel`` column."""

    train: datasets.Dataset  # or a hubclf.data.streaming.StreamSplit for streamed data
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
    streaming: bool = False,
) -> ImageClassificationData:
    """Load ``data`` and return checked train/eval splits, failing before any training on unusable data.

    ``data`` is an image folder, a ``save_to_disk`` directory, a Hub dataset id (``user/name[@revision]``) or a
    CSV file of ``path,label`` rows; ``labels`` is a CSV whose paths are relative to the ``data`` folder (see
    ``hubclf.data.csv_labels``). Class names are normalised (Unicode NFC, surrounding whitespace stripped); two
    names that normalise alike are an error. The eval split is ``eval_split``, else the dataset's own
    validation/valid/val/test split, else a stratified, seeded ``val_split`` fraction of the train split.

    Example::

        data = load_image_dataset("photos/")   # photos/<class name>/<image>.jpg
        data.label_names, len(data.train), len(data.eval)

    Streamed data (WebDataset or parquet shards, a Hub dataset with ``streaming=True``: ``hubclf.refs.STREAM_KINDS``)
    comes back as ``hubclf.data.streaming.StreamSplit`` splits, after one pass over its labels.
    """
    source = DataSource.parse(data, labels=labels, streaming=streaming)
    if source.is_stream:
        return _load_stream(source, image_column=image_column, label_column=label_column, train_split=train_split,
                            eval_split=eval_split, val_split=val_split, seed=seed, num_classes=num_classes,
                            path_column=path_column)  # fmt: skip
    splits = open_dataset(source, path_column=path_column, label_column=label_column)
    if train_split not in splits:
        raise ValueError(f"{data} has no {train_split!r} split (splits: {list(splits)}); pass --train-split")
    train = splits[train_split]
    image_column, label_column = find_columns(train.features, image_column, label_column)
    train = as_class_label(normalize_labels(train, label_column), label_column, num_classes)
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
        evaluation = as_class_label(evaluation, label_column, num_classes, names=label_names)
        logger.debug("evaluating on the dataset's %r split", eval_split)  # the run's data line says it
    else:
        train, evaluation = _stratified_split(train, label_column, val_split, seed)
        eval_split = f"{val_split:g} of {train_split} (stratified, seed {seed})"

    check_classes(label_names, num_classes)
    for name, split in ((train_split, train), (eval_split, evaluation)):
        _check_split(split, name, label_column, len(label_names))
    untrained = classes_without_images(train, label_column, label_names)
    if untrained:
        logger.warning(
            "%d class(es) have no image in the %r split, so the model never learns them: %s",
            len(untrained), train_split, listing(untrained, show=show_name),
        )  # fmt: skip
    empty_folders = find_empty_class_folders(data) if labels is None else []
    if empty_folders:
        logger.warning(
            "%d class folder(s) hold no image and are not classes of this run: %s",
            len(empty_folders), listing(empty_folders, show=show_name),
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

def _load_stream(source: DataSource, *, num_classes: int | None, **options) -> ImageClassificationData:
    from hubclf.data.streaming import load_stream_data  # pyarrow and tarfile only for streamed data

    stream = load_stream_data(source, num_classes=num_classes, **options)
    names = stream.label_names
    problems = label_name_problems(names, len(names))
    if problems:
        raise ValueError(f"{source.text}: class names " + "; ".join(problems))
    check_classes(names, num_classes)
    for split in (stream.train, stream.eval):
        if len(split) == 0:
            raise ValueError(f"the {split.name} split is empty")
        check_label_range(split.labels, f"the labels of the {split.name} split", len(names))
    counts = np.bincount(stream.train.labels, minlength=len(names))
    untrained = [name for name, count in zip(names, counts, strict=True) if count == 0]
    if untrained:
        logger.warning(
            "%d class(es) have no image in the train stream, so the model never learns them: %s",
            len(untrained), ", ".join(map(show_name, untrained)),
        )  # fmt: skip
    return ImageClassificationData(
        train=stream.train, eval=stream.eval, image_column=stream.image_column, label_column=stream.label_column,
        label_names=names, source=source.text if source.labels is None else str(source.labels),
        eval_split_name=stream.eval_split_name, classes_without_train_images=untrained,
    )  # fmt: skip


def find_eval_split(splits: datasets.DatasetDict, exclude: str | None = None) -> str | None:
    """The dataset's own evaluation split: the first of validation/valid/val/test it has (``None`` if none)."""
    return next((name for name in EVAL_SPLIT_NAMES if name in splits and name != exclude), None)

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
    logger.debug("no eval split: holding out a stratified %g of the train split (seed %d)", fraction, seed)
    return parts["train"], parts["test"]

def _check_split(split: datasets.Dataset, name: str, label_column: str, num_classes: int) -> None:
    if len(split) == 0:
        raise ValueError(f"the {name} split is empty")
    check_label_range(label_values(split, label_column), f"{label_column!r} of the {name} split", num_classes)
