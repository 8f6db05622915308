"""Class folders read in one walk: the layouts nearly every image folder has, without 🤗 datasets' pattern search.

datasets' imagefolder finds its files by trying about 46 glob patterns on the folder (split names in folder and
file names, sharded files, logs), and each glob walks the whole tree and stats every file again. On 192 images
that is 0.3–0.5 s of every run's start-up; it grows with the number of images times the number of patterns.

For the two layouts below, ``scan_class_folders`` lists the tree once and builds the same ``DatasetDict`` that
``datasets.load_dataset("imagefolder", data_dir=...)`` builds (the same splits, rows in the same order, the same
``image`` and ``label`` features; tests/test_data_folders.py compares the two on each layout):

- ``photos/<class>/<image>``: one ``train`` split;
- ``photos/<split>/<class>/<image>``, where each top folder is exactly one of datasets' split keywords (``train``,
  ``validation``, ``val``, ``test``, ...; ``datasets.data_files.SPLIT_KEYWORDS``), one per split.

Anything else returns ``None`` and is left to datasets, which knows the rest: a file that is not an image
(metadata files, archives, a README whose YAML may configure the dataset), a symlink, an image beside the class
folders, a name in which datasets might read a split (any split keyword inside a folder or file name, a sharded
``-00000-of-00001`` name) or that it treats as special (``__pycache__``). Hidden names (``.``) are skipped, as
datasets skips them. One class folder gets its one label (imagefolder needs two to infer labels;
``hubclf.data.sources`` reloads it with ``drop_labels=False``, which gives the same).

    splits = scan_class_folders(Path("photos"))   # None: read it with datasets' imagefolder
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import datasets
import pyarrow as pa
import xxhash
from datasets.data_files import SPLIT_KEYWORDS
from datasets.packaged_modules.imagefolder.imagefolder import IMAGE_EXTENSIONS

# Each keyword names its split (`val` -> validation); the splits come out in datasets' order (train, validation, test).
_SPLIT_OF_KEYWORD = {keyword: str(split) for split, keywords in SPLIT_KEYWORDS.items() for keyword in keywords}
_SPLIT_ORDER = [str(split) for split in SPLIT_KEYWORDS]
_SHARDED_NAME = re.compile(r"-\d{5}-of-\d{5}")
# The extensions 🤗 datasets' imagefolder reads, so `predict photos/` and `eval --data photos/` see the same files.
IMAGE_SUFFIXES = frozenset(IMAGE_EXTENSIONS)
FINGERPRINT_FORMAT = "hubclf-class-folders/1"  # in each split's fingerprint: a new format never reuses an old cache


def scan_class_folders(root: Path) -> datasets.DatasetDict | None:
    """The ``DatasetDict`` that datasets' imagefolder makes of ``root``, or ``None`` where its layout is not one this
    module reads the same way (then use datasets). Example::

        splits = scan_class_folders(Path("photos"))   # photos/cat/1.jpg, photos/dog/2.jpg
        splits["train"].features["label"].names       # ['cat', 'dog']
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
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    index = {name: i for i, name in enumerate(names)}
    return datasets.DatasetDict({
        split: _split_dataset(split, split_rows, features, index) for split, split_rows in rows.items()
    })  # fmt: skip


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


def _split_dataset(
    split: str, rows: list[tuple[str, str, os.stat_result]], features: datasets.Features, index: dict[str, int]
) -> datasets.Dataset:
    # The fingerprint changes when a file is added, removed, moved, rewritten or touched, as datasets' does (from each
    # file's modification time), so caches keyed on it (hubclf's feature cache) never serve stale data.
    hasher = xxhash.xxh3_128(f"{FINGERPRINT_FORMAT}\0{split}\0{' '.join(index)}".encode())
    for path, _, status in rows:
        hasher.update(f"\0{path}\0{status.st_size}\0{status.st_mtime_ns}".encode())
    table = pa.Table.from_pydict(
        {
            "image": [{"bytes": None, "path": path} for path, _, _ in rows],
            "label": [index[label] for _, label, _ in rows],
        },
        schema=features.arrow_schema,
    )
    return datasets.Dataset(
        datasets.table.InMemoryTable(table),
        info=datasets.DatasetInfo(features=features),
        split=datasets.NamedSplit(split),
        fingerprint=hasher.hexdigest(),
    )
