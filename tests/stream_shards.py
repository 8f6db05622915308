"""Streamed test data: WebDataset tar shards and parquet shards of noisy solid-colour images (``image_folders``'
colours), with the same samples in the same order, so a test can compare the two formats and count samples."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from tests.image_folders import COLORS, HEIGHT, WIDTH


def png_bytes(label: int, rng: np.random.Generator) -> bytes:
    noise = rng.normal(0, 40, (HEIGHT, WIDTH, 3))
    pixels = np.clip(np.array(COLORS[label])[None, None, :] + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def samples(num_classes: int, count: int, seed: int = 0) -> list[tuple[str, int, bytes]]:
    """``count`` (key, label, PNG bytes) samples, classes in turn."""
    rng = np.random.default_rng(seed)
    return [(f"s{seed}_{i:05d}", i % num_classes, png_bytes(i % num_classes, rng)) for i in range(count)]


def write_tar_shards(
    folder: Path, prefix: str, rows: list[tuple[str, int, bytes]], per_shard: int, *, label_member: str = "cls",
    names: list[str] | None = None,
) -> list[Path]:
    """``folder/prefix-00000.tar``...: each sample as ``KEY.png`` and ``KEY.<label_member>`` (the class index, or
    its name from ``names``)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard, first in enumerate(range(0, len(rows), per_shard)):
        path = folder / f"{prefix}-{shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for key, label, data in rows[first : first + per_shard]:
                label_text = (names[label] if names else str(label)).encode()
                for name, payload in ((f"{key}.png", data), (f"{key}.{label_member}", label_text)):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        paths.append(path)
    return paths


def write_parquet_shards(
    folder: Path, prefix: str, rows: list[tuple[str, int, bytes]], per_shard: int, names: list[str]
) -> list[Path]:
    """``folder/prefix-00000.parquet``...: an ``image`` column (🤗 ``Image``) and a ``label`` ``ClassLabel``, written
    by 🤗 datasets (its schema metadata names the features), 3 rows per row group."""
    import datasets

    folder.mkdir(parents=True, exist_ok=True)
    features = datasets.Features(image=datasets.Image(), label=datasets.ClassLabel(names=names))
    paths = []
    for shard, first in enumerate(range(0, len(rows), per_shard)):
        part = rows[first : first + per_shard]
        table = datasets.Dataset.from_dict(
            {"image": [{"bytes": data, "path": None} for _, _, data in part], "label": [label for _, label, _ in part]},
            features=features,
        )
        path = folder / f"{prefix}-{shard:05d}.parquet"
        table.to_parquet(str(path), batch_size=3)
        paths.append(path)
    return paths
