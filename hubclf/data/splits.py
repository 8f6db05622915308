"""Train and evaluation splits: load the data a run names, check it, and hold out a stratified validation split
when the data has none.

    data = load_image_dataset("photos/", val_split=0.1, seed=0)      # image folder, CSV, Hub id or saved dataset
    data.label_names, len(data.train), len(data.eval)
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hubclf.config_check import label_name_problems
from hubclf.data.folders import IMAGE_COLUMN, LABEL_COLUMN, FileSplit, scan_class_folders
from hubclf.data.labels import (
    as_class_label,
    check_classes,
    check_label_range,
    classes_without_images,
    find_columns,
    label_values,
    normalize_labels,
    normalized_class_names,
)
from hubclf.data.sources import find_empty_class_folders, open_dataset
from hubclf.refs import DataSource
from hubclf.text import listing, show_name

if TYPE_CHECKING:  # a class folder's splits are FileSplits: a run on one never imports datasets
    import datasets

logger = logging.getLogger(__name__)

EVAL_SPLIT_NAMES = ("validation", "valid", "val", "test")


@dataclass
class ImageClassificationData:
    """A train and an eval split that share one image column and one ``ClassLabel`` column."""

    # A 🤗 Dataset; a FileSplit for a class folder (hubclf.data.folders); a hubclf.data.streaming.StreamSplit for
    # streamed data.
    train: datasets.Dataset | FileSplit
    eval: datasets.Dataset | FileSplit
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
    splits = _class_folders(source, image_column, label_column, path_column)
    if splits is None:
        splits = open_dataset(source, path_column=path_column, label_column=label_column)
    if train_split not in splits:
        raise ValueError(f"{data} has no {train_split!r} split (splits: {list(splits)}); pass --train-split")
    train = splits[train_split]
    if isinstance(train, FileSplit):  # every split of a scan has the class names of all its folders
        image_column, label_column = IMAGE_COLUMN, LABEL_COLUMN
        label_names = normalized_class_names(train.label_names)
        splits = {name: split.with_label_names(label_names) for name, split in splits.items()}
        train = splits[train_split]
    else:
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
        if not isinstance(evaluation, FileSplit):
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


def _class_folders(
    source: DataSource, image_column: str | None, label_column: str | None, path_column: str | None
) -> dict[str, FileSplit] | None:
    """A plain class folder's splits, read in one walk without 🤗 datasets; ``None`` for anything else (read by
    ``open_dataset``, whose messages also cover column options a class folder does not have)."""
    if source.kind != "folder" or path_column is not None:
        return None
    if image_column not in (None, IMAGE_COLUMN) or label_column not in (None, LABEL_COLUMN):
        return None
    return scan_class_folders(source.path)


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (train, held-out) rows of a stratified, seeded split that holds out ``fraction`` of ``labels``' rows.

    The rows are those of ``datasets.Dataset.train_test_split(test_size=fraction, stratify_by_column=...,
    seed=seed)``, drawn the same way from the same generator (scikit-learn's ``StratifiedShuffleSplit``: per class,
    the most likely count under a hypergeometric draw, ties broken at random), so a class folder holds out the same
    images with and without 🤗 datasets (tests/test_data_splits.py compares them). Example::

        train_rows, eval_rows = stratified_holdout(np.array([0, 0, 1, 1, 1, 1]), 0.5, seed=0)   # 3 and 3 rows
    """
    labels = np.asarray(labels)
    if not 0 < fraction < 1:
        raise ValueError(f"test_size={fraction} should be a float in the (0, 1) range")
    n_test = math.ceil(fraction * len(labels))
    n_train = len(labels) - n_test
    if n_train == 0:
        raise ValueError(f"with {len(labels)} samples and test_size={fraction}, the train set would be empty")
    rng = np.random.default_rng(seed)
    classes, class_of_row = np.unique(labels, return_inverse=True)
    class_counts = np.bincount(class_of_row)
    if class_counts.min() < 2:
        raise ValueError(
            "the least populated class has only 1 member, which is too few; each class needs at least 2"
        )
    for wanted, what in ((n_train, "train"), (n_test, "held-out")):
        if wanted < len(classes):
            raise ValueError(f"the {what} part ({wanted}) should hold at least one image of each of the "
                             f"{len(classes)} classes")  # fmt: skip
    rows_of_class = np.split(np.argsort(class_of_row, kind="mergesort"), np.cumsum(class_counts)[:-1])
    train_counts = _most_likely_counts(class_counts, n_train, rng)
    test_counts = _most_likely_counts(class_counts - train_counts, n_test, rng)
    train_rows: list[Any] = []
    test_rows: list[Any] = []
    for rows, count, train_count, test_count in zip(rows_of_class, class_counts, train_counts, test_counts,
                                                     strict=True):  # fmt: skip
        shuffled = rows.take(rng.permutation(count), mode="clip")
        train_rows.extend(shuffled[:train_count])
        test_rows.extend(shuffled[train_count : train_count + test_count])
    return rng.permutation(train_rows), rng.permutation(test_rows)


def _most_likely_counts(class_counts: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """How many of ``draws`` rows to take from each class: the floor of its share, plus one for the classes with
    the largest remainders until ``draws`` are taken (equal remainders: chosen at random)."""
    share = draws * class_counts / class_counts.sum()
    counts = np.floor(share)
    missing = int(draws - counts.sum())
    remainder = share - counts
    for value in np.sort(np.unique(remainder))[::-1]:
        if missing <= 0:
            break
        (tied,) = np.where(remainder == value)
        chosen = rng.choice(tied, size=min(len(tied), missing), replace=False)
        counts[chosen] += 1
        missing -= len(chosen)
    return counts.astype(np.int64)


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


def find_eval_split(splits: datasets.DatasetDict | dict[str, Any], exclude: str | None = None) -> str | None:
    """The dataset's own evaluation split: the first of validation/valid/val/test it has (``None`` if none)."""
    return next((name for name in EVAL_SPLIT_NAMES if name in splits and name != exclude), None)

def _stratified_split(
    train: datasets.Dataset | FileSplit, label_column: str, fraction: float, seed: int
) -> tuple[datasets.Dataset | FileSplit, datasets.Dataset | FileSplit]:
    try:
        if isinstance(train, FileSplit):
            train_rows, eval_rows = stratified_holdout(train.labels, fraction, seed)
            parts = {"train": train.select(train_rows), "test": train.select(eval_rows)}
        else:
            parts = train.train_test_split(test_size=fraction, stratify_by_column=label_column, seed=seed)
    except ValueError as e:
        raise ValueError(
            f"cannot hold out a stratified {fraction:g} of {len(train)} images for validation ({e}); "
            "add images, raise --val-split, or provide a validation split"
        ) from e
    logger.debug("no eval split: holding out a stratified %g of the train split (seed %d)", fraction, seed)
    return parts["train"], parts["test"]


def _check_split(split: datasets.Dataset | FileSplit, name: str, label_column: str, num_classes: int) -> None:
    if len(split) == 0:
        raise ValueError(f"the {name} split is empty")
    check_label_range(label_values(split, label_column), f"{label_column!r} of the {name} split", num_classes)
