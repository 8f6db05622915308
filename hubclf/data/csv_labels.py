"""Labels in a CSV file (Kaggle-style ``train.csv``): ``path,label`` rows read into a 🤗 ``DatasetDict``.

The result has an ``Image()`` column (named after the CSV's path column) and a ``ClassLabel`` column (named after its
label column), so the rest of hubclf treats it like any other dataset. Everything is checked before a single image is
decoded: UTF-8, size, header, columns, empty labels, duplicate paths and missing files, each a one-line error.

    splits = read_labels_csv("labels.csv")                       # paths relative to the CSV's folder
    splits = read_labels_csv("train.csv", image_root="train/")   # paths relative to train/
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from pathlib import Path

import datasets

from hubclf.atomic import file_kind
from hubclf.data.labels import normalize_class_name, normalized_class_names

# Recognised header names, compared case-insensitively; a flag (--path-column / --label-column) overrides them.
PATH_COLUMN_NAMES = ("path", "file", "filename", "file_name", "filepath", "file_path", "image", "image_path", "img")
LABEL_COLUMN_NAMES = ("label", "labels", "class", "class_name", "category", "target")
SPLIT_COLUMN_NAME = "split"
# What a split column may hold, and the split each value becomes.
SPLIT_VALUES = {
    "train": "train", "validation": "validation", "valid": "validation", "val": "validation", "test": "test"
}  # fmt: skip
MAX_CSV_BYTES = 200 * 1024 * 1024  # ~2 million rows of typical length; a bigger file is almost surely not labels
MAX_LISTED = 10  # errors list this many offending rows, then a count


class LabelsCSVError(ValueError):
    """A labels CSV that cannot be used; the message names the file, the problem and the offending rows."""


def read_labels_csv(
    csv_path: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    path_column: str | None = None,
    label_column: str | None = None,
    unsplit_name: str = "train",
) -> datasets.DatasetDict:
    """Read ``path,label`` rows into a ``DatasetDict`` of ``Image()`` + ``ClassLabel`` columns.

    Relative paths start from ``image_root`` (default: the CSV's folder); absolute paths are used as they are.
    Columns are found by name (``PATH_COLUMN_NAMES``, ``LABEL_COLUMN_NAMES``) unless given. A ``split`` column
    (train/validation/valid/val/test) splits the rows; without one, all rows form the split ``unsplit_name``.
    Labels are normalised like folder names (``normalize_class_name``); classes are sorted by name.

    Example::

        read_labels_csv("labels.csv")["train"].features   # {"path": Image(), "label": ClassLabel([...])}
    """
    csv_path = Path(csv_path).expanduser()
    root = Path(image_root).expanduser() if image_root is not None else csv_path.parent
    header, rows = _read_rows(csv_path)
    path_column = _pick_column(header, path_column, PATH_COLUMN_NAMES, "path", "--path-column", csv_path)
    label_column = _pick_column(header, label_column, LABEL_COLUMN_NAMES, "label", "--label-column", csv_path)
    if path_column == label_column:
        raise LabelsCSVError(f"{csv_path}: column {path_column!r} cannot hold both the paths and the labels")
    split_column = next((name for name in header if name.lower() == SPLIT_COLUMN_NAME), None)
    at = {name: header.index(name) for name in (path_column, label_column, split_column) if name is not None}

    paths, labels, splits, line_of = [], [], [], []
    for line, row in rows:
        paths.append(row[at[path_column]].strip())
        labels.append(row[at[label_column]])
        splits.append(row[at[split_column]].strip().lower() if split_column else unsplit_name)
        line_of.append(line)

    _fail_if_any(csv_path, [line for line, path in zip(line_of, paths, strict=True) if not path], "an empty path")
    empty_labels = [line for line, label in zip(line_of, labels, strict=True) if not label.strip()]
    _fail_if_any(csv_path, empty_labels, f"an empty label (column {label_column!r})")
    if split_column:
        bad = [f"{line} ({value!r})" for line, value in zip(line_of, splits, strict=True) if value not in SPLIT_VALUES]
        _fail_if_any(csv_path, bad, f"a {split_column!r} value other than {'/'.join(SPLIT_VALUES)}")
        splits = [SPLIT_VALUES[value] for value in splits]

    files = [Path(path) if Path(path).is_absolute() else root / path for path in paths]
    seen = Counter(os.path.normpath(file) for file in files)
    duplicates = [
        f"{line} ({path})" for line, path, file in zip(line_of, paths, files, strict=True)
        if seen[os.path.normpath(file)] > 1
    ]  # fmt: skip
    _fail_if_any(csv_path, duplicates, "a path listed more than once")
    missing = [str(path) for path, file in zip(paths, files, strict=True) if not file.exists()]
    if missing:
        raise LabelsCSVError(f"{csv_path}: {len(missing)} listed file(s) do not exist in {root}: {_listing(missing)}")
    # A FIFO would block the first read of it forever, a device could be endless: refused from their stat, unopened.
    special = [f"{path} ({file_kind(file.stat().st_mode)})" for path, file in zip(paths, files, strict=True)
               if not file.is_file()]  # fmt: skip
    if special:
        raise LabelsCSVError(f"{csv_path}: {len(special)} listed path(s) are not regular files: {_listing(special)}")

    originals = sorted(set(labels))
    normal = dict(zip(originals, normalized_class_names(originals, f"{csv_path}: labels"), strict=True))
    names = sorted(set(normal.values()))
    index = {name: i for i, name in enumerate(names)}
    features = datasets.Features({path_column: datasets.Image(), label_column: datasets.ClassLabel(names=names)})
    result = {}
    for split in dict.fromkeys(splits):  # in order of first appearance
        chosen = [i for i, name in enumerate(splits) if name == split]
        table = {path_column: [str(files[i]) for i in chosen], label_column: [index[normal[labels[i]]] for i in chosen]}
        result[split] = datasets.Dataset.from_dict(table, features=features)
    return datasets.DatasetDict(result)


def _read_rows(csv_path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The stripped header and the non-blank rows with their line numbers, after the file-level checks."""
    if not csv_path.exists():
        raise FileNotFoundError(f"labels CSV {csv_path} does not exist")
    if not csv_path.is_file():
        raise LabelsCSVError(f"labels CSV {csv_path} is {file_kind(csv_path.stat().st_mode)}, not a regular file")
    size = csv_path.stat().st_size
    if size > MAX_CSV_BYTES:
        limit = MAX_CSV_BYTES // 2**20
        raise LabelsCSVError(f"{csv_path} is {size / 2**20:.0f} MiB; a labels CSV may be at most {limit} MiB")
    try:
        text = csv_path.read_bytes().decode("utf-8-sig")  # -sig: Excel's UTF-8 files start with a byte-order mark
    except UnicodeDecodeError as e:
        raise LabelsCSVError(f"{csv_path} is not UTF-8 text (bad byte at offset {e.start}); save it as UTF-8") from e
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None or not any(cell.strip() for cell in header):
            raise LabelsCSVError(f"{csv_path} is empty; it needs a header row such as path,label")
        header = [cell.strip() for cell in header]
        repeated = sorted(name for name, count in Counter(header).items() if count > 1)
        if repeated:
            raise LabelsCSVError(f"{csv_path}: the header names column(s) {repeated} more than once")
        rows = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise LabelsCSVError(
                    f"{csv_path}, line {reader.line_num}: {len(row)} field(s) where the header has {len(header)}"
                )
            rows.append((reader.line_num, row))
    except csv.Error as e:
        raise LabelsCSVError(f"{csv_path}, line {reader.line_num}: not valid CSV ({e})") from e
    if not rows:
        raise LabelsCSVError(f"{csv_path} has a header but no rows")
    return header, rows


def _pick_column(
    header: list[str], given: str | None, known: tuple[str, ...], what: str, flag: str, csv_path: Path
) -> str:
    if given is not None:
        if given not in header:  # exact: the same name then names the dataset's column (--label-column)
            raise LabelsCSVError(f"{csv_path}: {flag} {given!r} is not a column (columns: {header})")
        return given
    found = [name for name in header if name.lower() in known]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise LabelsCSVError(f"{csv_path}: several possible {what} columns {found}; pick one with {flag}")
    if what == "path" and any(Path(cell).suffix and "." in cell for cell in header):
        raise LabelsCSVError(
            f"{csv_path} seems to have no header row (its first line is {','.join(header)!r}); "
            "add one such as path,label"
        )
    raise LabelsCSVError(
        f"{csv_path}: no {what} column among {header}; name it one of {', '.join(known)} or pass {flag}"
    )


def _fail_if_any(csv_path: Path, offending: list, problem: str) -> None:
    if not offending:
        return
    raise LabelsCSVError(f"{csv_path}: {len(offending)} row(s) with {problem}, at line(s) {_listing(offending)}")


def _listing(items: list) -> str:
    """The first MAX_LISTED items, then how many more."""
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return ", ".join(map(str, items[:MAX_LISTED])) + more


__all__ = ["LabelsCSVError", "read_labels_csv", "normalize_class_name"]
