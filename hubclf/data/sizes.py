"""Image sizes, read from file headers (no pixel is decoded), and the input size they call for.

A model trained at 224×224 on 448×224 photos sees only the middle 44% of each photo's height at evaluation: timm's
eval transform resizes the shorter side and centre-crops. ``input_size_for`` picks an input of the data's own aspect
ratio instead, by one documented rule (docs/train.md, "Input size"); ``kept_fraction`` says how much of an image a
given input size keeps.

    sizes = sample_sizes(data.train, data.image_column)          # [(448, 224), ...]: (H, W), at most 64 headers
    input_size_for(median_aspect(sizes), default=(224, 224), minimum=(63, 63))   # (448, 224)
    kept_fraction((448, 224), (224, 224), crop_pct=0.875)        # (0.4375, 0.875): 44% of the height survives
"""

from __future__ import annotations

import io
import math
import statistics
from typing import Any

import numpy as np
from PIL import Image

from hubclf.data.labels import undecoded_images

__all__ = [
    "ASPECT_TOLERANCE", "MAX_ASPECT", "SAMPLE_IMAGES", "SIZE_STEP", "aspect_mismatch", "header_size",
    "input_size_for", "kept_fraction", "median_aspect", "median_size", "sample_sizes",
]  # fmt: skip

SAMPLE_IMAGES = 64  # headers read per split: enough for a stable median, a fraction of a second on any disk
# Data whose median aspect ratio is within 15% of the model's default input keeps that input (a 4:3 photo at
# 224×224 loses 12% of its width to the crop, as on ImageNet); beyond it the input follows the data.
ASPECT_TOLERANCE = 1.15
SIZE_STEP = 32  # the long side is rounded to a multiple of the networks' usual total stride
MAX_ASPECT = 3.0  # longer panoramas are trained at 3:1 and cropped, rather than at a huge or thin input
_ORIENTATION = 0x0112  # the EXIF tag
_ROTATING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height (phone photos)


def header_size(value: dict[str, Any] | str | bytes) -> tuple[int, int] | None:
    """(height, width) of an image as hubclf will decode it (EXIF rotation applied), from its header alone;
    ``None`` if the header cannot be read (the training loop reports such files). ``value`` is a path, bytes, or a
    ``datasets.Image(decode=False)`` value.

        header_size("photos/cat/1.jpg")   # (448, 224)
    """
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if value is None:
        return None
    from hubclf.data.images import BadImageError, open_regular_file, safe_formats  # torch: only once images are read

    try:
        # A path is opened only if it is a regular file (a FIFO in the folder would wait forever), as decoding does.
        with io.BytesIO(value) if isinstance(value, bytes) else open_regular_file(value) as source:
            with Image.open(source, formats=safe_formats()) as image:  # lazy: header only
                width, height = image.size
                orientation = _orientation(image)
    except (BadImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return None
    if orientation in _ROTATING_ORIENTATIONS:
        width, height = height, width
    return (height, width) if height > 0 and width > 0 else None


def _orientation(image: Image.Image) -> int | None:
    """The EXIF orientation from what ``Image.open`` already read (``getexif()`` decodes a whole PNG to find it)."""
    if image.info.get("exif"):  # JPEG, WebP, and PNGs whose eXIf chunk comes before the pixels
        exif = Image.Exif()
        exif.load(image.info["exif"])
        return exif.get(_ORIENTATION)
    return getattr(image, "tag_v2", {}).get(_ORIENTATION)  # TIFF keeps it among its tags


def sample_sizes(split: Any, image_column: str, max_images: int = SAMPLE_IMAGES) -> list[tuple[int, int]]:
    """(height, width) of up to ``max_images`` images of ``split``, evenly spaced over its rows (deterministic, so
    every process reads the same ones), from their headers; unreadable ones are left out.

        sample_sizes(data.train, data.image_column)   # [(448, 224), (448, 224), ...]
    """
    if len(split) == 0 or max_images <= 0:
        return []
    if hasattr(split, "read"):  # a stream (data.streaming.StreamSplit): the first images of its first shard, in order
        first = int(min(max_images, split.counts[0]))
        return [size for _, value in split.read([(0, 0, first)]) if (size := header_size(value)) is not None]
    rows = np.unique(np.linspace(0, len(split) - 1, min(len(split), max_images)).astype(int)).tolist()
    raw = undecoded_images(split, image_column)
    sizes = (header_size(value) for value in raw.select(rows)[image_column])  # one read, not one per row
    return [size for size in sizes if size is not None]


def median_aspect(sizes: list[tuple[int, int]]) -> float | None:
    """The median height / width of ``sizes``; ``None`` for no sizes.

        median_aspect([(448, 224), (400, 200), (300, 300)])   # 2.0
    """
    return statistics.median(height / width for height, width in sizes) if sizes else None


def median_size(sizes: list[tuple[int, int]]) -> tuple[int, int] | None:
    """The median height and the median width of ``sizes``; ``None`` for no sizes.

        median_size([(448, 224), (400, 200), (300, 300)])   # (400, 224)
    """
    if not sizes:
        return None
    return round(statistics.median(h for h, _ in sizes)), round(statistics.median(w for _, w in sizes))


def aspect_mismatch(aspect: float, size: tuple[int, int]) -> float:
    """How far an input ``size`` (H, W) is from the data's ``aspect`` (H / W), as a factor >= 1.

        aspect_mismatch(2.0, (224, 224))   # 2.0: the data is twice as tall as the input's shape
    """
    ratio = (size[0] / size[1]) / aspect
    return max(ratio, 1 / ratio)


def input_size_for(
    aspect: float | None,
    *,
    default: tuple[int, int],
    minimum: tuple[int, int] | None = None,
    fixed: bool = False,
) -> tuple[int, int]:
    """The model input (H, W) for data of median ``aspect`` (H / W), by the rule in docs/train.md ("Input size"):

    1. an architecture with a ``fixed`` input size (ViTs, ...), unknown data (``aspect`` None), or data within 15%
       (``ASPECT_TOLERANCE``) of the ``default`` input's aspect keep ``default``;
    2. otherwise the short side stays the default's short side (what the weights were trained at), and the long
       side follows the data, its aspect capped at 3:1 (``MAX_ASPECT``) and rounded to a multiple of 32
       (``SIZE_STEP``), never below the short side;
    3. each side is at least the architecture's ``minimum``.

        input_size_for(2.0, default=(224, 224))   # (448, 224): 448 high, 224 wide, like the data
        input_size_for(0.75, default=(224, 224))  # (224, 288)
    """
    if fixed or aspect is None or aspect_mismatch(aspect, default) <= ASPECT_TOLERANCE:
        size = default
    else:
        short = min(default)
        stretch = min(max(aspect, 1 / aspect), MAX_ASPECT)
        long = max(short, SIZE_STEP * math.floor(short * stretch / SIZE_STEP + 0.5))  # halves up, not to even
        size = (long, short) if aspect > 1 else (short, long)
    if minimum is not None and not fixed:
        size = (max(size[0], minimum[0]), max(size[1], minimum[1]))
    return size


def kept_fraction(image_size: tuple[int, int], input_size: tuple[int, int], crop_pct: float) -> tuple[float, float]:
    """The fraction of an image's (height, width) that timm's eval transform keeps at ``input_size``.

    timm resizes the image, keeping its aspect, until it covers ``input_size / crop_pct``, then centre-crops
    ``input_size``: an input of the image's own shape keeps ``crop_pct`` of each side, a square input on a tall
    image far less of its height.

        kept_fraction((448, 224), (224, 224), 0.875)   # (0.4375, 0.875)
    """
    height, width = image_size
    scaled = (math.floor(input_size[0] / crop_pct), math.floor(input_size[1] / crop_pct))
    scale = max(scaled[0] / height, scaled[1] / width)  # timm's ResizeKeepRatio: cover the scaled target
    return min(1.0, input_size[0] / (height * scale)), min(1.0, input_size[1] / (width * scale))
