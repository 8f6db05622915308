"""Cached frozen-backbone features: with ``--freeze backbone --no-augment`` the backbone's output for an image never
changes, so it is computed once and the classifier trains on the stored features (later epochs take seconds).

    train_set = load_or_extract_features(accelerator, model, images, key=key, cache_dir="out/feature_cache")
    train_set[0]["features"]   # float32, read from its shard file

The cache of a split is a folder of shard files (``shard-00000.safetensors``: ``SHARD_ROWS`` rows of features,
labels and a valid flag, each with a ``.json`` sidecar holding its checksum) and a ``manifest.json``. Every process
extracts its own shards (shard ``i`` on process ``i % processes``), each written atomically, so a killed extraction
resumes with the shards still missing. Reading verifies every file against its checksum (xxh3_128) first, then
reads the rows of each batch from the files (``os.preadv``) as it is drawn: a run's memory holds one batch of
features, whatever the number of images. (Not ``mmap``: the pages of a mapped file that a pass touches count as the
process's resident memory, so a mapped cache's RSS grows to its size.)

Training on these features is the uncached path with the backbone call memoised: the same pre-logits
(``model.forward_head(model.forward_features(x), pre_logits=True)`` in eval mode) feed the same classifier.
This is timm's generic model contract, so it holds for any timm model whose ``get_classifier()`` is what
``forward_head`` applies last (ResNet, EfficientNet, ConvNeXt, ViT...); ``check_frozen_head`` verifies it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import struct
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from hubclf._faults import fault_point
from hubclf._version import __version__
from hubclf.atomic import atomic_write_file, atomic_write_json
from hubclf.models.transfer import classifier_modules
from hubclf.tensor_file import CHECKSUM, file_checksum, write_safetensors

logger = logging.getLogger(__name__)


def backbone_features(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The input of ``model.get_classifier()``: everything a frozen backbone computes.

    Example::

        model.get_classifier()(backbone_features(model, x))   # == model(x) in eval mode
    """
    return model.forward_head(model.forward_features(pixel_values), pre_logits=True)


@torch.no_grad()
def check_frozen_head(model: nn.Module, input_size: tuple[int, int, int] | None = None) -> None:
    """Raise a ``ValueError`` unless ``get_classifier()(backbone_features(model, x)) == model(x)`` in eval mode.

    Training only the classifier on frozen (possibly cached) features relies on it. Most timm models satisfy it;
    some do not, e.g. ResNetV2 (its classifier is a 1×1 conv that takes the pooled map, not the flat pre-logits)
    or distilled DeiT/LeViT (two classifiers). One probe image of the model's input size, seeded.

        check_frozen_head(timm.create_model("resnet18", num_classes=8))   # passes silently
    """
    name = model.pretrained_cfg.get("architecture") or type(model).__name__
    modules = classifier_modules(model)
    if len(modules) != 1:
        raise ValueError(
            f"{name} has {len(modules)} classifiers; --freeze backbone trains a single one on the frozen features. "
            "Use --freeze none or --freeze <module name>"
        )
    was_training = model.training
    model.eval()
    try:
        size = tuple(input_size or model.pretrained_cfg["input_size"])
        device = next(model.parameters()).device
        x = torch.randn((1, *size), generator=torch.Generator().manual_seed(0)).to(device)
        features = model.forward_features(x)
        expected = model.forward_head(features)
        try:
            actual = modules[0](model.forward_head(features, pre_logits=True))
        except RuntimeError as e:
            actual, failure = None, f"it fails on them ({str(e).splitlines()[0]})"
        else:
            failure = None
            if actual.shape != expected.shape:
                failure = f"it gives shape {tuple(actual.shape)} instead of {tuple(expected.shape)}"
            elif not torch.allclose(actual, expected, rtol=1e-4, atol=1e-5 * max(1.0, expected.abs().max().item())):
                failure = f"it gives other logits (max |diff| {(actual - expected).abs().max().item():.3g})"
    finally:
        model.train(was_training)
    if failure is not None:
        raise ValueError(
            f"--freeze backbone trains only {name}'s classifier ({type(modules[0]).__name__}) on the frozen "
            f"backbone's pre-logits (forward_head(..., pre_logits=True)), but {failure}. "
            "Use --freeze none or --freeze <module name> for this architecture"
        )


def weights_fingerprint(model: nn.Module) -> str:
    """A hash of every tensor of ``model`` except its classifier: what determines the frozen features."""
    classifiers = {id(module) for module in classifier_modules(model)}
    prefixes = tuple(name + "." for name, module in model.named_modules() if id(module) in classifiers)
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith(prefixes):
            continue
        digest.update(name.encode())
        # hashed through the buffer protocol: no second copy of the weights (0.15 GB for AlexNet) in memory
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


# Bump when what a cache holds, or how features are computed, changes: old caches then stop matching.
FEATURE_CACHE_FORMAT = 4  # 4: shards checksummed with xxh3_128 (3: sha256)
SHARD_ROWS = 1024  # rows per shard file: AlexNet's 4,096 pre-logits make 8 MB in float16, 16 MB while being filled
MANIFEST = "manifest.json"
FP16_MAX = 65504.0
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
                       "U8": torch.uint8}  # fmt: skip


def feature_cache_key(
    *,
    weights: str,
    transform: Any,
    data_fingerprint: str,
    rows: int,
    autocast: str = "no",
    pooling: str | None = None,
    storage: str = "auto",
) -> str:
    """Key of a cache entry: backbone weights (``weights_fingerprint(model)``), input pipeline (size, resize,
    normalisation), the data itself, the autocast dtype (``accelerator.mixed_precision``), the model's pooling
    (``model.global_pool``), the storage dtype (``--feature-dtype``) and the cache format/hubclf version, so that a
    cache is never reused after any of them changes.

    ``data_fingerprint`` is the 🤗 ``Dataset._fingerprint`` of the split (it changes when files change), or a
    stream's ``StreamSplit.fingerprint``.
    """
    parts = {
        "weights": weights,
        "transform": repr(transform),
        "data": data_fingerprint,
        "rows": rows,
        "autocast": autocast,
        "pooling": pooling,
        "storage": storage,
        "shard_rows": SHARD_ROWS,
        "format": FEATURE_CACHE_FORMAT,
        "hubclf": __version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def storage_dtype(features: torch.Tensor, storage: str, autocast: str) -> torch.dtype:
    """The dtype a shard of ``features`` is stored in. ``auto``: bfloat16 when they were computed under bf16
    autocast (stored exactly), else float16 when every value fits it (relative rounding error at most 2^-11, the
    head trains as on float32: ``tests/test_train_features.py``), else float32.

        storage_dtype(torch.tensor([1.0, 7e4]), "auto", "no")   # torch.float32: 7e4 overflows float16
    """
    if storage != "auto":
        return _DTYPES[storage]
    if autocast == "bf16":
        return torch.bfloat16
    finite = bool(torch.isfinite(features).all())
    largest = float(features.abs().max()) if features.numel() else 0.0
    return torch.float16 if finite and largest <= FP16_MAX else torch.float32


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _safetensors_layout(path: Path) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(offset of the data, tensor entries, metadata) from a safetensors header, read as bytes (no unpickling)."""
    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        if size > 1 << 24:
            raise ValueError(f"{path}: implausible safetensors header ({size} bytes)")
        header = json.loads(f.read(size))
    metadata = header.pop("__metadata__", {}) or {}
    return 8 + size, header, metadata


class FeatureShards:
    """A verified feature cache folder, read in place (see the module doc).

    ``labels`` and ``valid`` (readable image or not) are in memory, one entry per row; features are read per batch
    by ``read``. Example::

        shards = FeatureShards.open("out/feature_cache/<key>")
        shards.read(np.array([4, 0, 9]))   # float32 (3, dim)
    """

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.directory, self.manifest = Path(directory), manifest
        self.rows, self.dim = int(manifest["rows"]), int(manifest["dim"])
        self.shard_rows = int(manifest["shard_rows"])
        self._layout: list[tuple[int, torch.dtype]] = []  # per shard: (file offset of features, dtype)
        labels, valid = [], []
        for entry in manifest["shards"]:
            path = self.directory / entry["file"]
            data_start, tensors, _ = _safetensors_layout(path)
            feature = tensors["features"]
            dtype = _SAFETENSORS_DTYPES[feature["dtype"]]
            rows = entry["stop"] - entry["start"]
            if feature["shape"] != [rows, self.dim]:
                raise ValueError(f"{path}: features of shape {feature['shape']}, expected {[rows, self.dim]}")
            self._layout.append((data_start + feature["data_offsets"][0], dtype))
            with open(path, "rb") as f:
                for name, store, kind in (("labels", labels, np.int64), ("valid", valid, np.uint8)):
                    begin, end = tensors[name]["data_offsets"]
                    f.seek(data_start + begin)
                    store.append(np.frombuffer(f.read(end - begin), dtype=kind))
        self.labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        self.valid = np.concatenate(valid).astype(bool) if valid else np.zeros(0, bool)
        self._files: OrderedDict[int, int] = OrderedDict()  # shard -> open file descriptor (a few, reused)

    @classmethod
    def open(cls, directory: str | Path, verify: list[int] | None = None) -> FeatureShards:
        """Read ``manifest.json`` and check the shard files it lists: every size, and the checksum of the shards
        ``verify`` names (all by default). A missing, short or altered file raises ``ValueError`` naming it."""
        directory = Path(directory)
        try:
            manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{directory / MANIFEST}: unreadable ({e})") from e
        if manifest.get("format") != FEATURE_CACHE_FORMAT:
            raise ValueError(f"{directory / MANIFEST}: format {manifest.get('format')}, not {FEATURE_CACHE_FORMAT}")
        for index in range(len(manifest["shards"])) if verify is None else verify:
            check_shard(directory, manifest["shards"][index])
        return cls(directory, manifest)

    @property
    def bad_rows(self) -> np.ndarray:
        return np.flatnonzero(~self.valid)

    def __len__(self) -> int:
        return self.rows

    def read(self, rows: np.ndarray | list[int]) -> torch.Tensor:
        """float32 features of ``rows`` (any order): one ``preadv`` per run of consecutive rows of a shard."""
        rows = np.asarray(rows, dtype=np.int64)
        out = torch.empty((len(rows), self.dim), dtype=torch.float32)
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i, row in enumerate(rows.tolist()):
            by_dtype.setdefault(self._layout[row // self.shard_rows][1], []).append(i)
        for dtype, positions in by_dtype.items():
            width = self.dim * torch.empty((), dtype=dtype).element_size()
            raw = bytearray(len(positions) * width)
            view = memoryview(raw)
            for j, i in enumerate(positions):
                shard, offset = divmod(int(rows[i]), self.shard_rows)
                start = self._layout[shard][0] + offset * width
                if os.preadv(self._fd(shard), [view[j * width : (j + 1) * width]], start) != width:
                    raise ValueError(f"{self.directory / shard_name(shard)}: shorter than its manifest says")
            values = torch.frombuffer(raw, dtype=dtype).view(len(positions), self.dim)
            out[torch.as_tensor(positions)] = values.float()
        return out

    def _fd(self, shard: int) -> int:
        fd = self._files.pop(shard, None)
        if fd is None:
            fd = os.open(self.directory / self.manifest["shards"][shard]["file"], os.O_RDONLY)
            if len(self._files) >= 32:  # a million images make ~1,000 shards: keep few descriptors open
                os.close(self._files.popitem(last=False)[1])
        self._files[shard] = fd
        return fd

    def close(self) -> None:
        while self._files:
            os.close(self._files.popitem()[1])

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers open their own descriptors
        return {**self.__dict__, "_files": OrderedDict()}


def check_shard(directory: Path, entry: dict[str, Any]) -> None:
    path = Path(directory) / entry["file"]
    if not path.is_file():
        raise ValueError(f"{path}: missing")
    if path.stat().st_size != entry["bytes"]:
        raise ValueError(f"{path}: {path.stat().st_size} bytes, its manifest says {entry['bytes']} (truncated?)")
    if file_checksum(path) != entry[CHECKSUM]:
        raise ValueError(f"{path} does not match its {CHECKSUM} checksum: the file was altered or damaged")


class FeatureDataset(torch.utils.data.Dataset):
    """Batches like ``ImageClassificationDataset``'s, with ``features`` in place of ``pixel_values``: every row of
    the split, the unreadable ones with ``valid=False`` (masked out of the loss and the metrics, as uncached).

    ``in_memory=True`` (``--cache-features memory``) reads all rows once into one tensor; otherwise each batch is
    read from the shard files. ``bad_images`` names the unreadable rows.
    """

    def __init__(self, shards: FeatureShards, bad_images: list[str] | None = None, in_memory: bool = False) -> None:
        self.shards = shards
        self.labels = shards.labels
        self.bad_images = list(bad_images or [])
        self.features = shards.read(np.arange(len(shards))) if in_memory else None

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        rows = np.asarray(indices, dtype=np.int64)
        features = self.features[torch.as_tensor(rows)] if self.features is not None else self.shards.read(rows)
        valid = self.shards.valid[rows]
        return [
            {"features": features[k], "labels": int(self.labels[row]), "index": int(row), "valid": bool(valid[k])}
            for k, row in enumerate(rows.tolist())
        ]


# ---- extraction -----------------------------------------------------------------------------------------------------
class _ShardBatches(torch.utils.data.Sampler[list[int]]):
    """Batches of the rows of some shards, in order, never spanning two shards."""

    def __init__(self, ranges: list[tuple[int, int]], batch_size: int) -> None:
        self.ranges, self.batch_size = ranges, batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for start, stop in self.ranges:
            for first in range(start, stop, self.batch_size):
                yield list(range(first, min(first + self.batch_size, stop)))

    def __len__(self) -> int:
        return sum(math.ceil((stop - start) / self.batch_size) for start, stop in self.ranges)


def _rows_loader(images: Any, ranges: list[tuple[int, int]], batch_size: int, num_workers: int) -> Any:
    from hubclf.train.safety import ignore_interrupts_in_worker

    workers = dict(num_workers=num_workers, worker_init_fn=ignore_interrupts_in_worker if num_workers else None)
    if hasattr(images, "rows"):  # a stream: no random access, its workers read whole ranges in turn
        return torch.utils.data.DataLoader(images.rows(ranges), batch_size=batch_size, **workers)
    return torch.utils.data.DataLoader(images, batch_sampler=_ShardBatches(ranges, batch_size), **workers)


def extract_feature_shards(
    accelerator: Any,
    model: nn.Module,
    images: Any,
    directory: str | Path,
    *,
    batch_size: int,
    num_workers: int = 0,
    storage: str = "auto",
    desc: str = "features",
) -> None:
    """Run the frozen backbone (eval mode, ``torch.inference_mode``) over the rows of ``images`` whose shard this
    process owns and that are not on disk yet, writing each shard as soon as it is complete; then the main process
    writes ``manifest.json``. ``images`` is an ``ImageClassificationDataset`` or an ``ImageStream``.

        extract_feature_shards(accelerator, model, train_images, "out/feature_cache/<key>", batch_size=32)
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows = len(images.split) if hasattr(images, "split") else len(images)
    shards = math.ceil(rows / SHARD_ROWS)
    owned = range(accelerator.process_index, shards, accelerator.num_processes)
    mine = [s for s in owned if not _sidecar(directory / shard_name(s)).is_file()]
    if mine:
        ranges = [(s * SHARD_ROWS, min(rows, (s + 1) * SHARD_ROWS)) for s in mine]
        _extract(accelerator, model, _rows_loader(images, ranges, batch_size, num_workers), directory, ranges,
                 storage, desc)  # fmt: skip
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        entries = []
        for s in range(shards):
            sidecar = _sidecar(directory / shard_name(s))
            if not sidecar.is_file():
                raise RuntimeError(f"{desc}: shard {s} of {directory} was not written")
            entries.append(json.loads(sidecar.read_text(encoding="utf-8")))
        dims = {entry["dim"] for entry in entries}
        manifest = {"format": FEATURE_CACHE_FORMAT, "rows": rows, "dim": dims.pop() if len(dims) == 1 else 0,
                    "shard_rows": SHARD_ROWS, "shards": entries}  # fmt: skip
        atomic_write_json(directory / MANIFEST, manifest)
    accelerator.wait_for_everyone()


@torch.inference_mode()  # less bookkeeping than no_grad: no version counters, no view tracking
def _extract(
    accelerator: Any,
    model: nn.Module,
    loader: Any,
    directory: Path,
    ranges: list[tuple[int, int]],
    storage: str,
    desc: str,
) -> None:
    was_training = model.training
    model.eval()
    pending: dict[int, dict[str, Any]] = {}  # shard -> its rows so far (a few shards at a time)
    bounds = {start // SHARD_ROWS: (start, stop) for start, stop in ranges}
    autocast = str(accelerator.mixed_precision)
    show = accelerator.is_local_main_process
    try:
        for batch in tqdm(loader, desc=desc, disable=not show):
            pixels = batch["pixel_values"].to(accelerator.device, non_blocking=True)
            with accelerator.autocast():
                output = backbone_features(model, pixels).float().cpu()
            for k, row in enumerate(batch["index"].tolist()):
                shard = row // SHARD_ROWS
                start, stop = bounds[shard]
                entry = pending.get(shard)
                if entry is None:
                    entry = pending[shard] = {
                        "features": torch.zeros((stop - start, output.shape[1])),
                        "labels": torch.zeros(stop - start, dtype=torch.int64),
                        "valid": torch.zeros(stop - start, dtype=torch.uint8),
                        "seen": 0,
                    }
                valid = bool(batch["valid"][k])
                if valid:
                    entry["features"][row - start] = output[k]
                entry["labels"][row - start] = int(batch["labels"][k])
                entry["valid"][row - start] = int(valid)
                entry["seen"] += 1
                if entry["seen"] == stop - start:
                    _write_shard(directory, shard, start, stop, pending.pop(shard), storage, autocast)
    finally:
        model.train(was_training)
    if pending:
        raise RuntimeError(f"{desc}: the loader left shards {sorted(pending)} incomplete")


def _write_shard(
    directory: Path, shard: int, start: int, stop: int, entry: dict[str, Any], storage: str, autocast: str
) -> None:
    features = entry["features"]
    dtype = storage_dtype(features[entry["valid"].bool()], storage, autocast)
    tensors = {"features": features.to(dtype).contiguous(), "labels": entry["labels"], "valid": entry["valid"]}
    path = directory / shard_name(shard)
    digests = []  # checksummed as written: the shard is not read back

    def write(tmp: Path) -> None:
        digests.append(write_safetensors(tmp, tensors, {"start": str(start), "stop": str(stop)}, checksum=True))

    atomic_write_file(path, write)
    fault_point("features.shard_written")
    sidecar = {"file": path.name, "start": start, "stop": stop, "dim": int(features.shape[1]),
               "dtype": str(dtype).removeprefix("torch."), "bytes": path.stat().st_size, CHECKSUM: digests[0]}
    atomic_write_json(_sidecar(path), sidecar)  # the shard counts as done from here on  # fmt: skip


def load_or_extract_features(
    accelerator: Any,
    model: nn.Module,
    images: Any,
    *,
    key: str,
    cache_dir: str | Path,
    batch_size: int,
    num_workers: int = 0,
    storage: str = "auto",
    in_memory: bool = False,
    desc: str = "features",
) -> FeatureDataset:
    """The features of ``images`` from ``cache_dir/<key>/``: reused when the manifest is there and every file
    matches its checksum (each process checks its share), else extracted (resuming a killed extraction). A damaged
    shard is reported, deleted and extracted again.

        train_set = load_or_extract_features(accelerator, model, images, key=key, cache_dir="c", batch_size=32)
    """
    from accelerate.utils import gather_object

    directory = Path(cache_dir) / key
    for attempt in range(2):
        if not (directory / MANIFEST).is_file():
            extract_feature_shards(accelerator, model, images, directory, batch_size=batch_size,
                                   num_workers=num_workers, storage=storage, desc=desc)  # fmt: skip
        elif attempt == 0:
            logger.info("%s: reusing cached features %s", desc, directory)
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        mine = list(range(accelerator.process_index, len(manifest["shards"]), accelerator.num_processes))
        damaged = []
        for index in mine:
            try:
                check_shard(directory, manifest["shards"][index])
            except ValueError as e:
                damaged.append((manifest["shards"][index]["file"], str(e)))
        if accelerator.num_processes > 1:
            damaged = sorted(sum(gather_object([damaged]), []))
        if not damaged:
            shards = FeatureShards.open(directory, verify=[])
            return FeatureDataset(shards, in_memory=in_memory)
        for _, why in damaged:
            logger.warning("%s: ignoring the damaged feature cache (%s); recomputing it", desc, why)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            for file, _ in damaged:
                (directory / file).unlink(missing_ok=True)
                _sidecar(directory / file).unlink(missing_ok=True)
            (directory / MANIFEST).unlink(missing_ok=True)
        accelerator.wait_for_everyone()
    raise ValueError(f"{desc}: the feature cache {directory} is damaged again after recomputing it")


def remove_feature_cache(directory: str | Path) -> None:
    """Delete a cache folder (``--cache-features`` with a new key leaves the old one for the user to remove)."""
    shutil.rmtree(directory, ignore_errors=True)
