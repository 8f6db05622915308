"""Streamed image data: WebDataset tar shards, parquet shards and Hub datasets read with ``--streaming``, shard by
shard, never loaded whole (what ``--data`` names is parsed once by ``hubclf.refs.DataSource``).

A first pass reads only the labels (a parquet column; a tar's headers and label members, seeking past the images)
and gives every sample a row number in the canonical order: shard after shard, as listed. An epoch then deals the
samples out to ``processes × workers`` slots as contiguous runs of the epoch's shard order (shuffled from
``(seed, epoch)``), so every sample is read exactly once per epoch by exactly one slot, at most one shard is read by
two slots, and slots differ by at most one sample; each slot is padded to the same length with placeholder rows
(``valid=False``, ``index=-1``, left out of the loss and the metrics), so every process runs the same number of
steps. Inside a slot, blocks of ``shuffle_buffer`` consecutive samples are permuted from
``(seed, epoch, slot, block)``: a position in the epoch is then a pure function of the plan, which is what lets
``--resume`` continue mid-epoch from the recorded shard and offset, exactly.

    data = load_stream_data(DataSource.parse("wds:shards/train-{000..009}.tar"))
    stream = ImageStream(data.train, transform, batch_size=32, seed=0, shuffle=True)
    stream.start_epoch(3, skip_batches=120)   # where a checkpoint stopped
"""

from __future__ import annotations

import csv
import glob
import hashlib
import logging
import math
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hubclf.data.images import BadImageError, decode_image
from hubclf.data.labels import find_columns, normalized_class_names
from hubclf.refs import DataSource

logger = logging.getLogger(__name__)

TAR, PARQUET = "tar", "parquet"
# The members a WebDataset sample's label is read from, in order of preference (``--label-column`` names another).
LABEL_MEMBERS = ("cls", "label", "labels", "class", "txt")
DEFAULT_SHUFFLE_BUFFER = 512  # samples per shuffled block: their bytes stay in memory, per DataLoader worker
SPLIT_NAMES = {
    "train": "train", "training": "train", "validation": "validation", "valid": "validation", "val": "validation",
    "dev": "validation", "eval": "validation", "test": "test", "testing": "test",
}  # fmt: skip


def _image_extensions() -> frozenset[str]:
    from datasets.packaged_modules.imagefolder.imagefolder import IMAGE_EXTENSIONS

    return frozenset(ext.lstrip(".").lower() for ext in IMAGE_EXTENSIONS)


# ---- shards -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    """One file of a stream: a local path or an ``hf://`` URL, read as a tar (WebDataset) or a parquet file."""

    url: str
    format: str

    @property
    def name(self) -> str:
        """The file name, as logs and bad-image lists show it (``train-00003.tar``)."""
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def remote(self) -> bool:
        return self.url.startswith("hf://")

    def open(self, seekable: bool = True) -> Any:
        if self.remote:
            from huggingface_hub import HfFileSystem

            # block_size=0: one sequential HTTP stream, for tars; parquet needs ranges (its footer comes last).
            return HfFileSystem().open(self.url, "rb", block_size=None if seekable else 0)
        return open(self.url, "rb")

    def identity(self) -> str:
        """What changes when the file does: the URL (Hub URLs are pinned to a commit), local size and mtime."""
        if self.remote:
            return self.url
        stat = os.stat(self.url)
        return f"{self.url}|{stat.st_size}|{stat.st_mtime_ns}"


def expand_braces(pattern: str) -> list[str]:
    """WebDataset's shard notation: ``train-{000..002}.tar`` -> the three names, zero-padding kept.

        expand_braces("s-{08..10}.tar")   # ["s-08.tar", "s-09.tar", "s-10.tar"]
    """
    match = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not match:
        return [pattern]
    first, last = match.group(1), match.group(2)
    width = len(first) if first.startswith("0") else 0
    names = []
    for number in range(int(first), int(last) + 1):
        names += expand_braces(pattern[: match.start()] + str(number).zfill(width) + pattern[match.end() :])
    return names


def find_shards(source: DataSource) -> dict[str, list[Shard]]:
    """The shard files of a local WebDataset or parquet source, by split: files or folders named after a split
    (``train-0000.tar``, ``validation/0.tar``, 🤗 datasets' naming rules) give that split; everything else is
    ``train``. Example::

        find_shards(DataSource.parse("shards/"))   # {"train": [Shard("shards/train-0.tar", "tar"), ...]}
    """
    fmt = TAR if source.kind == "webdataset" else PARQUET
    suffix = ".tar" if fmt == TAR else ".parquet"
    path = source.path
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob(f"*{suffix}") if p.is_file() and not _hidden(p, path))
    elif path.is_file():
        files = [str(path)]
    else:
        files = sorted({match for name in expand_braces(str(path)) for match in (glob.glob(name) or [name])})
        missing = [name for name in files if not os.path.isfile(name)]
        if missing:
            raise FileNotFoundError(f"--data {source.text}: no such shard file {missing[0]}")
    files = [name for name in files if name.endswith(suffix)]
    if not files:
        raise FileNotFoundError(f"--data {source.text}: no {suffix} shard files found")
    splits: dict[str, list[Shard]] = {}
    root = path if path.is_dir() else None
    for name in files:
        splits.setdefault(_split_of(name, root), []).append(Shard(name, fmt))
    return splits


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith((".", "__")) for part in path.relative_to(root).parts)


def _split_of(name: str, root: Path | None) -> str:
    """A split named by a folder under ``root`` or by the file name's first word (``validation-0003.tar``)."""
    parts = Path(name).relative_to(root).parts if root is not None else (Path(name).name,)
    for part in parts:
        word = re.split(r"[-_.]", part.lower(), maxsplit=1)[0]
        if word in SPLIT_NAMES:
            return SPLIT_NAMES[word]
    return "train"


def hub_shards(source: DataSource) -> tuple[dict[str, list[Shard]], Any]:
    """A Hub dataset's data files by split (pinned to the commit 🤗 datasets resolved) and its features, from
    ``datasets.load_dataset_builder``: nothing is downloaded but the README and the file list."""
    import datasets

    try:
        builder = datasets.load_dataset_builder(source.repo_id, revision=source.revision)
    except ConnectionError as e:
        raise FileNotFoundError(f"--data {source.text}: no such folder here, and as a Hub dataset id: {e}") from e
    splits: dict[str, list[Shard]] = {}
    for split, files in (builder.config.data_files or {}).items():
        for url in files:
            fmt = TAR if url.endswith(".tar") else PARQUET if url.endswith(".parquet") else None
            if fmt is None:
                raise ValueError(
                    f"--data {source.text} --streaming reads parquet or WebDataset (.tar) shards, and this dataset "
                    f"holds {url.rsplit('/', 1)[-1]}: train without --streaming"
                )
            splits.setdefault(str(split), []).append(Shard(url, fmt))
    if not splits:
        raise ValueError(f"--data {source.text}: the dataset lists no data files")
    return splits, builder.info.features


# ---- reading ----------------------------------------------------------------------------------------------------
def _tar_samples(
    shard: Shard, wanted: Callable[[str], bool], skip: int = 0
) -> Iterator[tuple[str, dict[str, bytes | None]]]:
    """``(key, {extension: bytes})`` per WebDataset sample (consecutive members sharing a key, as ``webdataset``
    and 🤗 datasets group them), from the ``skip``-th sample on. Members ``wanted`` rejects, and every member of a
    skipped sample, are listed with ``None`` and never read: a local tar is scanned by seeking from header to
    header."""
    from datasets.packaged_modules.webdataset.webdataset import base_plus_ext

    seekable = not shard.remote
    with shard.open(seekable) as f, tarfile.open(fileobj=f, mode="r:" if seekable else "r|") as tar:
        key, fields, index = None, {}, -1
        while (member := tar.next()) is not None:
            tar.members.clear()  # tarfile keeps every header it read: O(members) objects otherwise
            if not member.isfile():
                continue
            sample_key, extension = base_plus_ext(member.name)
            if sample_key is None or Path(sample_key).name.startswith("."):
                continue
            if sample_key != key:
                if key is not None and index >= skip:
                    yield key, fields
                key, fields, index = sample_key, {}, index + 1
            read = index >= skip and wanted(extension)
            fields[extension] = tar.extractfile(member).read() if read else None
        if key is not None and index >= skip:
            yield key, fields


def _is_image_member(extension: str) -> bool:
    return extension.rsplit(".", 1)[-1].lower() in _image_extensions()


def _parquet_file(f: Any) -> Any:
    import pyarrow.parquet as pq

    return pq.ParquetFile(f)


def _image_value(cell: Any, remote: bool, where: str) -> dict[str, Any]:
    """A ``decode_image`` value from a parquet cell (``{bytes, path}`` struct or raw bytes). Remote data is read from
    its bytes only: a path in it names a file on someone else's machine, never one on this one."""
    if isinstance(cell, (bytes, bytearray)):
        return {"bytes": bytes(cell), "path": where}
    cell = cell or {}
    if cell.get("bytes") is not None:
        return {"bytes": cell["bytes"], "path": where}
    if remote or not cell.get("path"):
        return {"bytes": b"", "path": where}  # unreadable: skipped and listed like a corrupt file
    return {"bytes": None, "path": cell["path"]}


# ---- the label pass and the split ----------------------------------------------------------------------------------
@dataclass
class StreamSplit:
    """One split of a stream: its shards, each shard's sample count and every sample's class, in canonical order
    (shard after shard). Holds no image; ``read`` streams them. ``labels`` is the only per-sample data in memory.

        split.read([(0, 10, 20)])   # rows 10..19 of the first shard: (row, decode_image value)
    """

    name: str
    shards: list[Shard]
    counts: np.ndarray
    labels: np.ndarray
    image_field: str | None  # a parquet column, or a tar member extension (None: the sample's image member)
    keys: list[str] | None = field(default=None, repr=False)  # only kept when labels came from a --labels CSV

    def __post_init__(self) -> None:
        self.counts = np.asarray(self.counts, dtype=np.int64)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def fingerprint(self) -> str:
        """Changes with any shard file, its size or mtime, and the rows read from it (the feature-cache key)."""
        parts = [shard.identity() for shard in self.shards] + [self.image_field or "", *map(str, self.counts)]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]

    def locate(self, row: int) -> tuple[int, int]:
        """``row`` (canonical) -> (shard index, offset in the shard)."""
        shard = int(np.searchsorted(self.starts, row, side="right") - 1)
        return shard, int(row - self.starts[shard])

    def describe(self, row: int) -> str:
        """Where a row comes from: ``train-00003.tar#17`` (the 18th sample of that shard)."""
        shard, offset = self.locate(int(row))
        return f"{self.shards[shard].url}#{offset}"

    def read(self, pieces: list[tuple[int, int, int]]) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(row, image value)`` for each ``(shard, start, stop)`` piece in turn (offsets within the shard)."""
        for shard_index, start, stop in pieces:
            if stop <= start:
                continue
            shard, base = self.shards[shard_index], int(self.starts[shard_index])
            reader = self._read_tar if shard.format == TAR else self._read_parquet
            for offset, value in reader(shard, start, stop):
                yield base + offset, value

    def _read_tar(self, shard: Shard, start: int, stop: int) -> Iterator[tuple[int, dict[str, Any]]]:
        image_field = self.image_field

        def wanted(extension: str) -> bool:
            return extension == image_field if image_field else _is_image_member(extension)

        for position, (key, fields) in enumerate(_tar_samples(shard, wanted, skip=start), start=start):
            if position >= stop:
                return
            image = next((value for ext, value in fields.items() if value is not None and wanted(ext)), None)
            yield position, {"bytes": image if image is not None else b"", "path": f"{shard.url}#{position} ({key})"}

    def _read_parquet(self, shard: Shard, start: int, stop: int) -> Iterator[tuple[int, dict[str, Any]]]:
        with shard.open() as f:
            parquet = _parquet_file(f)
            first = 0
            for group in range(parquet.num_row_groups):
                rows = parquet.metadata.row_group(group).num_rows
                if first + rows <= start:  # seek past whole row groups: nothing of them is read
                    first += rows
                    continue
                if first >= stop:
                    return
                for batch in parquet.iter_batches(batch_size=64, row_groups=[group], columns=[self.image_field]):
                    for cell in batch.column(0).to_pylist():
                        if first >= stop:
                            return
                        if first >= start:
                            yield first, _image_value(cell, shard.remote, f"{shard.url}#{first}")
                        first += 1


class _LabelCoder:
    """Raw labels -> class indices, shard by shard, in O(classes) memory: integers (``ClassLabel``, ``.cls``) are
    kept; names are numbered as first seen, then renumbered in sorted order (as ``class_encode_column`` does)."""

    def __init__(self, names: list[str] | None, integer: bool) -> None:
        self.fixed = names is not None
        self.integer = integer
        self.ids: dict[str, int] = {name: i for i, name in enumerate(names or [])}

    def encode(self, values: list[Any], where: str) -> np.ndarray:
        if self.integer:
            try:
                return np.asarray([int(v) for v in values], dtype=np.int64)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{where}: integer labels expected ({e})") from None
        if values and isinstance(values[0], (int, np.integer)) and not isinstance(values[0], bool):
            return np.asarray(values, dtype=np.int64)  # a ClassLabel column: already indices
        out = np.empty(len(values), dtype=np.int64)
        for i, value in enumerate(values):
            name = normalized_class_names([str(value)], "labels")[0] if value is not None else None
            if name is None:
                raise ValueError(f"{where}: a sample without a label")
            if name not in self.ids:
                if self.fixed:
                    raise ValueError(f"{where}: label {name!r} does not occur in the train split")
                self.ids[name] = len(self.ids)
            out[i] = self.ids[name]
        return out

    def finish(self, num_classes: int | None, arrays: list[np.ndarray]) -> tuple[list[str], list[np.ndarray]]:
        if self.fixed:
            return list(self.ids), arrays
        if self.integer or not self.ids:
            values = np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
            if values.size and values.min() < 0:
                raise ValueError(f"the labels hold negative values ({values.min()}), e.g. unlabeled samples")
            count = num_classes if num_classes is not None else int(values.max()) + 1 if values.size else 0
            return [str(i) for i in range(count)], arrays
        names = sorted(self.ids)
        remap = np.empty(len(names), dtype=np.int64)
        for new, name in enumerate(names):
            remap[self.ids[name]] = new
        return names, [remap[a] for a in arrays]


@dataclass
class StreamData:
    """What ``load_stream_data`` found: the train and eval splits, their columns and the class names."""

    train: StreamSplit
    eval: StreamSplit
    image_column: str
    label_column: str
    label_names: list[str]
    eval_split_name: str


def _read_csv_labels(path: Path, path_column: str | None, label_column: str | None) -> dict[str, str]:
    """``--labels`` for a stream: sample key -> label name (a key may keep its file extension)."""
    from datasets.packaged_modules.webdataset.webdataset import base_plus_ext

    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        key_column = path_column or next((c for c in ("key", "__key__", "path", "file", "filename", "image")
                                          if c in columns), None)  # fmt: skip
        name_column = label_column or next((c for c in ("label", "class", "labels") if c in columns), None)
        if key_column not in columns or name_column not in columns:
            raise ValueError(f"--labels {path}: needs a key and a label column (columns: {columns})")
        found = {}
        for row in reader:
            key = row[key_column]
            found[base_plus_ext(key)[0] or key] = row[name_column]
    return found


def load_stream_data(
    source: DataSource,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    train_split: str = "train",
    eval_split: str | None = None,
    val_split: float = 0.1,
    seed: int = 0,
    num_classes: int | None = None,
    path_column: str | None = None,
) -> StreamData:
    """The train and eval splits of a stream, after one pass over its labels (no image is read).

    The eval split is ``eval_split``, else the stream's own validation split (files named or foldered
    ``validation``/``val``/``test``...), else whole shards of the train split, ``val_split`` of them (at least one),
    drawn from ``seed``: a stream cannot be stratified without reading it, and a sample held out of a shard would
    still be read in every epoch. Example::

        data = load_stream_data(DataSource.parse("wds:shards/"))
        data.label_names, len(data.train), len(data.eval)
    """
    features = None
    if source.kind == "hub-stream":
        splits, features = hub_shards(source)
    else:
        splits = find_shards(source)
    if train_split not in splits:
        raise ValueError(f"{source.text} has no {train_split!r} split (splits: {list(splits)}); pass --train-split")
    if eval_split is None:
        eval_split = next((s for s in ("validation", "valid", "val", "test") if s in splits and s != train_split), None)
    elif eval_split not in splits:
        raise ValueError(f"{source.text} has no {eval_split!r} split (splits: {list(splits)})")
    first = splits[train_split][0]
    csv_labels = _read_csv_labels(source.labels, path_column, label_column) if source.labels else None

    if first.format == PARQUET:
        if features is None or not features:
            with first.open() as f:
                import datasets

                features = datasets.Features.from_arrow_schema(_parquet_file(f).schema_arrow)
        image_column, label_column = find_columns(features, image_column, label_column)
        feature = features[label_column]
        names = normalized_class_names(list(feature.names)) if hasattr(feature, "names") else None
        integer = names is None and getattr(feature, "dtype", "string").startswith(("int", "uint"))
        coder = _LabelCoder(names, integer)
    else:
        image_column = image_column or ""
        if csv_labels is None:
            label_column = label_column or _tar_label_member(first)
        coder = _LabelCoder(None, integer=csv_labels is None and label_column == "cls")

    def labels_of(split: list[Shard]) -> tuple[list[int], list[np.ndarray]]:
        counts, arrays = [], []
        for shard in split:
            values = _shard_labels(shard, label_column, csv_labels)
            counts.append(len(values))
            arrays.append(coder.encode(values, shard.url))
        return counts, arrays

    train_counts, train_arrays = labels_of(splits[train_split])
    train_shards = list(splits[train_split])
    if eval_split is not None:
        coder_names, train_arrays = coder.finish(num_classes, train_arrays)
        eval_coder = _LabelCoder(coder_names, integer=coder.integer)
        eval_counts, eval_arrays = [], []
        for shard in splits[eval_split]:
            values = _shard_labels(shard, label_column, csv_labels)
            eval_counts.append(len(values))
            eval_arrays.append(eval_coder.encode(values, shard.url))
        eval_shards, names = list(splits[eval_split]), coder_names
        eval_name = eval_split
    else:
        if len(train_shards) < 2:
            raise ValueError(
                f"--data {source.text}: a stream's validation data must be a split of its own or whole shards, and "
                f"this one has a single shard and no validation split: add validation-*{_suffix(first)} shard(s), "
                "name one with --eval-split, or write the train data as at least 2 shards"
            )
        names, train_arrays = coder.finish(num_classes, train_arrays)
        held = max(1, round(val_split * len(train_shards)))
        held = min(held, len(train_shards) - 1)
        chosen = set(np.random.default_rng(seed).permutation(len(train_shards))[:held].tolist())
        keep = [i for i in range(len(train_shards)) if i not in chosen]
        picked = sorted(chosen)
        eval_shards = [train_shards[i] for i in picked]
        eval_counts, eval_arrays = [train_counts[i] for i in picked], [train_arrays[i] for i in picked]
        train_shards = [train_shards[i] for i in keep]
        train_counts, train_arrays = [train_counts[i] for i in keep], [train_arrays[i] for i in keep]
        eval_name = f"{held} of {held + len(keep)} {train_split} shards, held out whole (seed {seed})"
        logger.info(
            "no eval split in the stream: holding out %s for validation: %s (%d images); a stream is split by "
            "whole shards, not stratified; give a validation split to choose", eval_name,
            ", ".join(s.name for s in eval_shards), sum(eval_counts),
        )  # fmt: skip
    image_field = image_column or None
    train = StreamSplit(train_split, train_shards, train_counts, _concat(train_arrays), image_field)
    evaluation = StreamSplit(eval_name, eval_shards, eval_counts, _concat(eval_arrays), image_field)
    return StreamData(train, evaluation, image_column or "image", label_column or "label", names, eval_name)


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)


def _suffix(shard: Shard) -> str:
    return ".tar" if shard.format == TAR else ".parquet"


def _tar_label_member(shard: Shard) -> str:
    for _, fields in _tar_samples(shard, lambda ext: False):
        for member in LABEL_MEMBERS:
            if member in fields:
                return member
        raise ValueError(
            f"{shard.url}: its first sample has no label member ({', '.join('.' + m for m in LABEL_MEMBERS)}; "
            f"it holds {sorted(fields)}): name one with --label-column, or give the labels with --labels"
        )
    raise ValueError(f"{shard.url}: no samples in this tar")


def _shard_labels(shard: Shard, label_column: str | None, csv_labels: dict[str, str] | None) -> list[Any]:
    if shard.format == PARQUET:
        with shard.open() as f:
            return _parquet_file(f).read(columns=[label_column]).column(0).to_pylist()
    values = []
    for key, fields in _tar_samples(shard, lambda ext: csv_labels is None and ext == label_column):
        if csv_labels is not None:
            if key not in csv_labels:
                raise ValueError(f"--labels has no row for the sample {key!r} of {shard.url}")
            values.append(csv_labels[key])
            continue
        raw = fields.get(label_column)
        if raw is None:
            raise ValueError(f"{shard.url}: sample {key!r} has no .{label_column} member")
        values.append(raw.decode("utf-8").strip())
    return values


# ---- the epoch plan -------------------------------------------------------------------------------------------------
def shard_order(shards: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The shards in the order an epoch reads them: a permutation drawn from ``(seed, epoch)``, or as listed."""
    if not shuffle:
        return list(range(shards))
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0x5EED]))
    return rng.permutation(shards).tolist()


def slot_pieces(counts: np.ndarray, order: list[int], slot: int, slots: int) -> list[tuple[int, int, int]]:
    """``slot``'s contiguous run of the epoch (shards in ``order``) as ``(shard, start, stop)`` pieces.

        slot_pieces(np.array([3, 3]), [1, 0], 0, 2)   # [(1, 0, 3)]: half of 6 samples, the second shard first
    """
    total = int(sum(counts))
    first, last = slot * total // slots, (slot + 1) * total // slots
    pieces, position = [], 0
    for shard in order:
        n = int(counts[shard])
        start, stop = max(first - position, 0), min(last - position, n)
        if start < stop:
            pieces.append((shard, start, stop))
        position += n
    return pieces


def pieces_from(pieces: list[tuple[int, int, int]], skip: int) -> list[tuple[int, int, int]]:
    """``pieces`` without their first ``skip`` samples."""
    out = []
    for shard, start, stop in pieces:
        take = min(skip, stop - start)
        skip -= take
        if start + take < stop:
            out.append((shard, start + take, stop))
    return out


def batches_before(batches: int, worker: int, workers: int) -> int:
    """How many of a process's first ``batches`` batches came from ``worker``: a DataLoader takes them from its
    workers in turn (in order), and every worker of a stream yields the same number."""
    return 0 if batches <= worker else (batches - worker + workers - 1) // workers


def block_permutation(size: int, seed: int, epoch: int, slot: int, block: int) -> np.ndarray:
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, slot, block])).permutation(size)


# ---- the torch side -------------------------------------------------------------------------------------------------
class ImageStream(torch.utils.data.IterableDataset):
    """A ``StreamSplit`` as a torch ``IterableDataset`` of ``{"pixel_values", "labels", "index", "valid"}`` rows.

    Each DataLoader worker of each process reads its own slot of the epoch (see the module doc); unreadable images
    come back with ``valid=False`` (or raise, with ``on_bad_image="error"``), like ``ImageClassificationDataset``'s.
    ``start_epoch`` sets the epoch and the batches already trained in it, through shared memory, so persistent
    workers see them at the next ``iter(loader)``. Example::

        stream = ImageStream(split, eval_tf, batch_size=32, seed=0, shuffle=True, num_workers=2)
        loader = StreamLoader(stream, device=torch.device("cpu"))
    """

    def __init__(
        self,
        split: StreamSplit,
        transform: Callable[[Any], torch.Tensor],
        *,
        batch_size: int,
        seed: int,
        shuffle: bool,
        num_workers: int = 0,
        process_index: int = 0,
        num_processes: int = 1,
        shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
        on_bad_image: str = "skip",
        input_size: tuple[int, int, int] = (3, 224, 224),
    ) -> None:
        if on_bad_image not in ("skip", "error"):
            raise ValueError(f"on_bad_image must be 'skip' or 'error', got {on_bad_image!r}")
        if shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be at least 1, got {shuffle_buffer}")
        self.split, self.transform = split, transform
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.num_workers, self.process_index, self.num_processes = num_workers, process_index, num_processes
        self.shuffle_buffer, self.on_bad_image, self.input_size = shuffle_buffer, on_bad_image, tuple(input_size)
        self.labels = split.labels  # what recipes and samplers read: the only per-sample array
        # (epoch, batches to skip) and the augmentation (seed, epoch): shared with persistent workers.
        self._epoch = torch.zeros(2, dtype=torch.int64).share_memory_()
        self._augmentation_seed = torch.full((2,), -1, dtype=torch.int64).share_memory_()

    # ---- the plan -------------------------------------------------------------------------------------------------
    @property
    def workers(self) -> int:
        return max(1, self.num_workers)

    @property
    def slots(self) -> int:
        return self.num_processes * self.workers

    @property
    def slot_length(self) -> int:
        """Samples every slot yields per epoch, placeholders included: the largest slot's."""
        return math.ceil(len(self.split) / self.slots)

    def __len__(self) -> int:  # samples per process and epoch: what DataLoader and Accelerate read
        return self.workers * self.slot_length

    def batches_per_epoch(self) -> int:
        """Batches each process trains per epoch (every worker yields ceil(slot_length / batch_size))."""
        return self.workers * math.ceil(self.slot_length / self.batch_size)

    def pieces(self, epoch: int, slot: int) -> list[tuple[int, int, int]]:
        order = shard_order(len(self.split.shards), self.seed, epoch, self.shuffle)
        return slot_pieces(self.split.counts, order, slot, self.slots)

    def start_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """The epoch the next ``iter(loader)`` reads, from its ``skip_batches``-th batch on (a resumed epoch)."""
        self._epoch.copy_(torch.tensor([epoch, skip_batches]))

    def seed_augmentation(self, seed: int, epoch: int) -> None:
        """Each sample's augmentation drawn from ``(seed, epoch, row)`` (see ``ImageClassificationDataset``)."""
        self._augmentation_seed.copy_(torch.tensor([seed, epoch]))

    def position(self, epoch: int, batches_done: int) -> dict[str, Any]:
        """Where every slot stands after ``batches_done`` batches of ``epoch``: the shard and offset its next block
        starts at, and how many of that block's samples were already trained. Saved in checkpoints; ``check_resume``
        compares it with the plan of the resumed run."""
        slots = []
        for slot in range(self.slots):
            done = min(self.slot_length, batches_before(batches_done, slot % self.workers, self.workers)
                       * self.batch_size)  # fmt: skip
            block_start = done // self.shuffle_buffer * self.shuffle_buffer
            rest = pieces_from(self.pieces(epoch, slot), block_start)
            where = {"shard": self.split.shards[rest[0][0]].name, "offset": rest[0][1]} if rest else {"shard": None}
            slots.append({**where, "skip": done - block_start})
        return {
            "epoch": epoch,
            "batches_done": batches_done,
            "layout": {"processes": self.num_processes, "workers": self.workers, "batch_size": self.batch_size,
                       "shuffle_buffer": self.shuffle_buffer},  # fmt: skip
            "data": self.split.fingerprint,
            "slots": slots,
        }

    def check_resume(self, saved: dict[str, Any] | None, epoch: int, batches_done: int) -> None:
        """Refuse, in one line, a checkpoint whose stream plan this run cannot continue exactly."""
        if not saved or not batches_done:
            return  # an epoch boundary: every plan starts the next epoch alike
        mine = self.position(epoch, batches_done)
        if saved.get("data") != mine["data"]:
            raise ValueError("--resume: the stream's shards changed since the checkpoint (files, sizes or counts)")
        if saved.get("layout") != mine["layout"]:
            layout = ", ".join(f"{k} {v}" for k, v in saved.get("layout", {}).items())
            raise ValueError(
                f"--resume: the checkpoint stopped mid-epoch in a stream read by {layout}; resume with the same "
                "processes, --num-workers, --batch-size and --shuffle-buffer"
            )
        if saved.get("slots") != mine["slots"]:
            raise ValueError("--resume: the recorded stream position does not match this run's plan")

    # ---- reading --------------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != self.workers:
            raise RuntimeError(f"ImageStream planned for {self.workers} worker(s) runs under {workers}")
        epoch, skip_batches = self._epoch.tolist()
        slot = self.process_index * self.workers + worker
        pieces = self.pieces(epoch, slot)
        real = sum(stop - start for _, start, stop in pieces)
        done = min(self.slot_length, batches_before(skip_batches, worker, workers) * self.batch_size)
        K = self.shuffle_buffer
        block = done // K
        samples = self.split.read(pieces_from(pieces, block * K))
        position = done
        while block * K < real:
            size = min(K, real - block * K)
            buffer = [next(samples) for _ in range(size)]  # bytes only: decoded one by one below
            order = block_permutation(size, self.seed, epoch, slot, block) if self.shuffle else range(size)
            for j, i in enumerate(order):
                if block * K + j >= position:
                    yield self._sample(*buffer[i])
            position = max(position, block * K + size)
            block += 1
        for _ in range(max(position, real), self.slot_length):
            yield self._placeholder()

    def _placeholder(self) -> dict[str, Any]:
        return {"pixel_values": torch.zeros(self.input_size), "labels": 0, "index": -1, "valid": False}

    def _sample(self, row: int, value: dict[str, Any]) -> dict[str, Any]:
        from hubclf.data.dataset import seeded_transform

        try:
            image = decode_image(value)
        except BadImageError:
            if self.on_bad_image == "error":
                raise
            pixels, valid = torch.zeros(self.input_size), False
        else:
            seed = self._augmentation_seed.tolist()
            pixels = seeded_transform(self.transform, image, None if seed[0] < 0 else tuple(seed), row)
            valid = True
        return {"pixel_values": pixels, "labels": int(self.split.labels[row]), "index": row, "valid": valid}

    def describe(self, row: int) -> str:
        return self.split.describe(row)

    def rows(self, ranges: list[tuple[int, int]]) -> RowRanges:
        """The rows ``[start, stop)`` of each range, in canonical order, unshuffled and unpadded: what feature
        extraction reads (DataLoader workers take whole ranges in turn)."""
        return RowRanges(self, ranges)


class RowRanges(torch.utils.data.IterableDataset):
    """Canonical row ranges of a stream (see ``ImageStream.rows``)."""

    def __init__(self, stream: ImageStream, ranges: list[tuple[int, int]]) -> None:
        self.stream, self.ranges = stream, ranges

    def __len__(self) -> int:  # rows: the DataLoader's length, so extraction's progress bar has a total and an ETA
        return sum(last - first for first, last in self.ranges)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        split = self.stream.split
        for first, last in self.ranges[worker::workers]:
            pieces = []
            for shard in range(len(split.shards)):
                begin, end = int(split.starts[shard]), int(split.starts[shard + 1])
                if begin < last and first < end:
                    pieces.append((shard, max(first, begin) - begin, min(last, end) - begin))
            for row, value in split.read(pieces):
                yield self.stream._sample(row, value)


class StreamLoader:
    """A stream's DataLoader on the training device, and in Accelerate's gradient state (the last batch ends
    gradient accumulation), but not re-sharded by Accelerate: the stream already split itself across processes.

        loader = StreamLoader(stream, device=accelerator.device, batch_size=32, num_workers=2)
        len(loader)   # batches per process and epoch, equal on every process
    """

    def __init__(self, stream: ImageStream, device: torch.device, **loader_args: Any) -> None:
        from accelerate.data_loader import DataLoaderStateMixin
        from accelerate.state import GradientState

        self.stream, self.device = stream, device
        self.loader = torch.utils.data.DataLoader(stream, batch_size=stream.batch_size, **loader_args)
        self.gradient_state = GradientState()
        self._state = type("_StreamState", (DataLoaderStateMixin,), {})()
        self._state.gradient_state, self._state._drop_last, self._state.dataset = self.gradient_state, True, stream
        self.dataset = stream

    def __len__(self) -> int:
        return self.stream.batches_per_epoch()

    @property
    def end_of_dataloader(self) -> bool:
        return self._state.end_of_dataloader

    @property
    def remainder(self) -> int:
        return -1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from accelerate.utils import send_to_device

        state = self._state
        state.begin()
        try:
            batches = iter(self.loader)
            current = next(batches, None)
            while current is not None:
                following = next(batches, None)
                state.end_of_dataloader = following is None
                yield send_to_device(current, self.device, non_blocking=True)
                current = following
        finally:
            state.end()
