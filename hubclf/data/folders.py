"""Class folders read in one walk, without 🤗 datasets: the layouts nearly every image folder has.

datasets' imagefolder finds its files by trying about 46 glob patterns on the folder (split names in folder and
file names, sharded files, logs), and each glob walks the whole tree and stats every file again. On 192 images
that is 0.3–0.5 s of every run's start-up; it grows with the number of images times the number of patterns. And
importing datasets (with pyarrow and pandas) costs a training run 92 MiB and 0.6–0.9 s before it reads a file.

For the two layouts below, ``scan_class_folders`` lists the tree once and returns ``FileSplit`` splits: the same
splits, rows in the same order and the same labels as ``datasets.load_dataset("imagefolder", data_dir=...)``
(tests/test_data_folders.py compares the two on each layout), held as a path per row and an int64 label per row.
``FileSplit.to_dataset()`` gives the 🤗 ``Dataset`` for code that wants one.

- ``photos/<class>/<image>``: one ``train`` split;
- ``photos/<split>/<class>/<image>``, where each top folder is exactly one of datasets' split keywords (``train``,
  ``validation``, ``val``, ``test``, ...; ``SPLIT_KEYWORDS``), one per split.

Anything else returns ``None`` and is left to datasets, which knows the rest: a file that is not an image
(metadata files, archives, a README whose YAML may configure the dataset), a symlink, an image beside the class
folders, a name in which datasets might read a split (any split keyword inside a folder or file name, a sharded
``-00000-of-00001`` name) or that it treats as special (``__pycache__``). Hidden names (``.``) are skipped, as
datasets skips them. One class folder gets its one label (imagefolder needs two to infer labels;
``hubclf.data.sources`` reloads it with ``drop_labels=False``, which gives the same).

    splits = scan_class_folders(Path("photos"))   # None: read it with datasets' imagefolder
    splits["train"].label_names, len(splits["train"]), splits["train"][0]["image"]["path"]
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xxhash

if TYPE_CHECKING:
    import datasets

# datasets' split keywords (datasets.data_files.SPLIT_KEYWORDS) and the extensions its imagefolder reads
# (IMAGE_EXTENSIONS), as of datasets 5.2; tests/test_data_folders.py checks them against the installed datasets,
# so that a folder is read the same way with and without it.
SPLIT_KEYWORDS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "dev", "val"),
    "test": ("test", "testing", "eval", "evaluation"),
}
IMAGE_SUFFIXES = frozenset(
    ".apng .blp .bmp .bufr .bw .cur .dcx .dds .dib .emf .eps .fit .fits .flc .fli .ftc .ftu .gbr .gif .grib .icb "
    ".icns .ico .iim .im .j2c .j2k .jfif .jp2 .jpc .jpe .jpeg .jpf .jpg .jpx .mpeg .mpg .msp .pbm .pcd .pcx .pgm "
    ".png .pnm .ppm .ps .psd .pxr .ras .rgb .rgba .sgi .tga .tif .tiff .vda .vst .webp .wmf .xbm .xpm".split()
)
# Each keyword names its split (`val` -> validation); the splits come out in datasets' order (train, validation, test).
_SPLIT_OF_KEYWORD = {keyword: split for split, keywords in SPLIT_KEYWORDS.items() for keyword in keywords}
_SPLIT_ORDER = list(SPLIT_KEYWORDS)
_SHARDED_NAME = re.compile(r"-\d{5}-of-\d{5}")
FINGERPRINT_FORMAT = "hubclf-class-folders/2"  # in each split's fingerprint: a new format never reuses an old cache
IMAGE_COLUMN, LABEL_COLUMN = "image", "label"  # imagefolder's column names


class FileSplit:
    """One split of a class folder: a file path and a class index per row, in numpy arrays.

    It answers the reads the training pipeline makes of a 🤗 ``Dataset`` split, with the same values: ``split[rows]``
    (an int, a list of ints or a column name) gives ``{"image": {"bytes": None, "path": ...}, "label": int}`` rows
    or columns, as an imagefolder split with ``Image(decode=False)`` does. The paths are one UTF-8 buffer and an
    offset per row rather than a Python string each: 100k rows hold about 6 MB, and loader workers forked from
    the training process read them without touching (and so copying) each other's pages.

        split = scan_class_folders(Path("photos"))["train"]
        split.label_names, split.labels[:3], split[[0, 1]]["image"]
    """

    column_names = [IMAGE_COLUMN, LABEL_COLUMN]

    def __init__(
        self, name: str, paths: bytes | np.ndarray, ends: np.ndarray, labels: np.ndarray, label_names: Sequence[str],
        fingerprint: str, rows: np.ndarray | None = None,
    ) -> None:  # fmt: skip
        self.name = name
        self._paths = np.frombuffer(paths, dtype=np.uint8) if isinstance(paths, bytes) else paths
        self._ends = np.asarray(ends, dtype=np.int64)  # path i is _paths[_ends[i - 1]:_ends[i]]
        self._rows = rows  # select(): which of those paths this split's rows are, in order (None: all of them)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.label_names = list(label_names)
        self.fingerprint = fingerprint

    @classmethod
    def from_rows(cls, name: str, paths: Sequence[str], labels: Sequence[int], label_names: Sequence[str],
                  fingerprint: str) -> FileSplit:  # fmt: skip
        """A split from its paths and class indices. Example::

            FileSplit.from_rows("train", ["a/cat/1.jpg"], [0], ["cat", "dog"], "f0")
        """
        encoded = [path.encode() for path in paths]
        ends = np.cumsum([len(path) for path in encoded], dtype=np.int64)
        return cls(name, b"".join(encoded), ends, np.asarray(labels, dtype=np.int64), label_names, fingerprint)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"FileSplit({self.name!r}, {len(self)} rows, {len(self.label_names)} classes)"

    def path(self, row: int) -> str:
        """The file of ``row``."""
        if not -len(self) <= row < len(self):
            raise IndexError(f"row {row} of a split of {len(self)} rows")
        row %= len(self)
        stored = int(self._rows[row]) if self._rows is not None else row
        start = int(self._ends[stored - 1]) if stored > 0 else 0
        return self._paths[start : int(self._ends[stored])].tobytes().decode()

    def __getitem__(self, key: int | str | slice | Sequence[int] | np.ndarray) -> dict[str, Any] | list[Any]:
        """A row (``split[3]``), rows (``split[[3, 5]]``, ``split[:4]``) as columns, or a column (``split["label"]``),
        as a 🤗 ``Dataset`` with ``Image(decode=False)`` gives them."""
        if isinstance(key, str):
            if key not in self.column_names:
                raise KeyError(f"column {key!r} not in {self.column_names}")
            rows = range(len(self))
            return [self._image(row) for row in rows] if key == IMAGE_COLUMN else self.labels.tolist()
        if isinstance(key, (int, np.integer)):
            return {IMAGE_COLUMN: self._image(int(key)), LABEL_COLUMN: int(self.labels[key])}
        rows = range(len(self))[key] if isinstance(key, slice) else [int(row) for row in key]
        return {IMAGE_COLUMN: [self._image(row) for row in rows], LABEL_COLUMN: self.labels[list(rows)].tolist()}

    def _image(self, row: int) -> dict[str, Any]:
        return {"bytes": None, "path": self.path(row)}

    def select(self, rows: Sequence[int] | np.ndarray) -> FileSplit:
        """The split of ``rows`` (in that order), with a fingerprint derived from this one's and the rows."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows outside 0..{len(self) - 1}")
        hasher = xxhash.xxh3_128(f"{self.fingerprint}\0select\0".encode())
        hasher.update(rows.tobytes())
        stored = rows if self._rows is None else self._rows[rows]
        return FileSplit(self.name, self._paths, self._ends, self.labels[rows], self.label_names, hasher.hexdigest(),
                         stored)  # fmt: skip

    def with_label_names(self, label_names: Sequence[str]) -> FileSplit:
        """The same rows and class indices under other names (hubclf's normalised class names)."""
        if len(label_names) != len(self.label_names):
            raise ValueError(f"{len(label_names)} names for {len(self.label_names)} classes")
        fingerprint = self.fingerprint
        if list(label_names) != self.label_names:  # the names are part of what a cache keyed on it holds
            fingerprint = xxhash.xxh3_128(f"{fingerprint}\0{chr(0).join(label_names)}".encode()).hexdigest()
        return FileSplit(self.name, self._paths, self._ends, self.labels, label_names, fingerprint, self._rows)

    def to_dataset(self) -> datasets.Dataset:
        """This split as the 🤗 ``Dataset`` datasets' imagefolder would build (``image`` and ``label`` features)."""
        import datasets
        import pyarrow as pa

        features = datasets.Features({
            IMAGE_COLUMN: datasets.Image(), LABEL_COLUMN: datasets.ClassLabel(names=self.label_names),
        })  # fmt: skip
        table = pa.Table.from_pydict(
            {IMAGE_COLUMN: self[IMAGE_COLUMN], LABEL_COLUMN: self.labels.tolist()}, schema=features.arrow_schema
        )
        return datasets.Dataset(
            datasets.table.InMemoryTable(table),
            info=datasets.DatasetInfo(features=features),
            split=datasets.NamedSplit(self.name),
            fingerprint=self.fingerprint,
        )


def scan_class_folders(root: Path) -> dict[str, FileSplit] | None:
    """The splits of ``root`` as datasets' imagefolder reads them (as ``FileSplit``), or ``None`` where its layout
    is not one this module reads the same way (then use datasets). Example::

        splits = scan_class_folders(Path("photos"))   # photos/cat/1.jpg, photos/dog/2.jpg
        splits["train"].label_names                   # ['cat', 'dog']
    """
    try:
        split_folders = _split_folders(root)
        if split_folders is None:
            return None
        rows: dict[str, list[tuple[str, str, os.stat_result]]] = {}
        for split, folder in split_folders.items():
            found = _images_by_class(folder)
            if found is None:
                return None
            if found:  # datasets has no split whose folder holds no image
                rows[split] = sorted(found, key=lambda row: row[0])  # its glob's order: by path
    except OSError:  # unreadable or changing under us: datasets' own errors say what it is
        return None
    if not rows:
        return None
    names = sorted({label for split_rows in rows.values() for _, label, _ in split_rows})
    index = {name: i for i, name in enumerate(names)}
    return {split: _file_split(split, split_rows, names, index) for split, split_rows in rows.items()}


def _split_folders(root: Path) -> dict[str, str] | None:
    top = _visible(str(root))
    folders = [entry for entry in top if entry.is_dir(follow_symlinks=False)]
    if folders and all(entry.name in _SPLIT_OF_KEYWORD for entry in folders):
        # Files beside split folders are not data to datasets (its split patterns match inside the folders only),
        # unless their name holds a split keyword, or it is a README (whose YAML can configure a dataset).
        others = [entry.name for entry in top if entry not in folders]
        if any(_may_be_special(name) or name.lower() == "readme.md" for name in others):
            return None
        by_split = {_SPLIT_OF_KEYWORD[entry.name]: entry.path for entry in folders}
        if len(by_split) < len(folders):  # `val` and `validation` side by side: datasets merges them
            return None
        return {split: by_split[split] for split in _SPLIT_ORDER if split in by_split}
    if not folders or len(folders) < len(top):
        return None
    return {"train": str(root)}


def _images_by_class(folder: str) -> list[tuple[str, str, os.stat_result]] | None:
    rows = []
    for class_folder in _visible(folder):
        if not class_folder.is_dir(follow_symlinks=False) or _may_be_special(class_folder.name):
            return None
        for entry in _visible(class_folder.path):
            if not entry.is_file(follow_symlinks=False) or _may_be_special(entry.name):
                return None
            if os.path.splitext(entry.name)[1].lower() not in IMAGE_SUFFIXES:
                return None
            rows.append((entry.path, class_folder.name, entry.stat(follow_symlinks=False)))
    return rows


def _visible(folder: str) -> list[os.DirEntry]:
    with os.scandir(folder) as entries:
        return [entry for entry in entries if not entry.name.startswith(".")]


def _may_be_special(name: str) -> bool:
    """A name datasets might read as a split or a shard, or skip as special; conservative (any keyword inside it,
    in any case), because a wrong guess here would change the data."""
    if not name.isprintable() or name != name.encode("utf-8", "surrogateescape").decode("utf-8", "replace"):
        return True  # not UTF-8 on disk, or a control character: datasets' own handling, whatever it is
    lowered = name.lower()
    return (
        any(keyword in lowered for keyword in _SPLIT_OF_KEYWORD)
        or _SHARDED_NAME.search(name) is not None
        or name.startswith("__")
    )


def _file_split(
    split: str, rows: list[tuple[str, str, os.stat_result]], names: list[str], index: dict[str, int]
) -> FileSplit:
    # The fingerprint changes when a file is added, removed, moved, rewritten or touched, as datasets' does (from each
    # file's modification time), so caches keyed on it (hubclf's feature cache) never serve stale data.
    hasher = xxhash.xxh3_128(f"{FINGERPRINT_FORMAT}\0{split}\0{' '.join(index)}".encode())
    for path, _, status in rows:
        hasher.update(f"\0{path}\0{status.st_size}\0{status.st_mtime_ns}".encode())
    return FileSplit.from_rows(
        split, [path for path, _, _ in rows], [index[label] for _, label, _ in rows], names, hasher.hexdigest()
    )
