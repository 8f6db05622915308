"""hubclf.data.sizes: image sizes from headers, the input-size rule, and what timm's eval crop keeps."""

from __future__ import annotations

import io

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform

from hubclf.data.sizes import (
    header_size,
    input_size_for,
    kept_fraction,
    median_aspect,
    median_size,
    sample_sizes,
)


def png(height: int, width: int, orientation: int | None = None, fmt: str = "PNG") -> bytes:
    image = Image.new("RGB", (width, height), "gray")
    buffer = io.BytesIO()
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(buffer, format="JPEG", exif=exif)
    else:
        image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_header_size_is_height_width_with_exif_rotation_and_none_for_junk(tmp_path):
    path = tmp_path / "tall.png"
    path.write_bytes(png(448, 224))
    assert header_size(str(path)) == (448, 224)
    assert header_size({"bytes": png(30, 40), "path": None}) == (30, 40)
    assert header_size({"bytes": png(30, 40, orientation=6), "path": None}) == (40, 30)  # a phone photo on its side
    assert header_size({"bytes": b"not an image", "path": None}) is None
    assert header_size(str(tmp_path / "missing.png")) is None


def test_header_size_does_not_decode_the_pixels(monkeypatch, tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(png(64, 32))
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded"))
    assert header_size(str(path)) == (64, 32)


def test_sample_sizes_reads_a_bounded_evenly_spaced_sample():
    images = [png(100 + i, 50) for i in range(200)]
    split = datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in images]}).cast_column(
        "image", datasets.Image()
    )
    sizes = sample_sizes(split, "image", max_images=10)
    assert len(sizes) == 10 and sizes[0] == (100, 50) and sizes[-1] == (299, 50)
    assert median_aspect([(448, 224), (400, 200), (300, 300)]) == 2.0
    assert median_size([(448, 224), (400, 200), (300, 300)]) == (400, 224)
    assert median_aspect([]) is None and median_size([]) is None


@pytest.mark.parametrize(
    "aspect,kwargs,expected",
    [
        (2.0, {}, (448, 224)),  # the seed case: 448 high, 224 wide
        (0.5, {}, (224, 448)),
        (0.75, {}, (224, 288)),  # 4:3 landscape: 298.7 rounds to 288
        (1.5, {}, (352, 224)),  # 336 is a multiple of 32 and a half: up to 352
        (1.1, {}, (224, 224)),  # within 15% of square: the default
        (10.0, {}, (672, 224)),  # capped at 3:1
        (2.0, {"fixed": True}, (224, 224)),  # a ViT keeps its size
        (None, {}, (224, 224)),  # nothing read
        (2.0, {"default": (64, 64), "minimum": (63, 63)}, (128, 64)),
        (0.25, {"default": (32, 32), "minimum": (63, 63)}, (63, 96)),  # never below the architecture's minimum
        (2.0, {"default": (299, 299)}, (608, 299)),
    ],
)
def test_input_size_rule(aspect, kwargs, expected):
    assert input_size_for(aspect, **{"default": (224, 224), **kwargs}) == expected


@pytest.mark.parametrize("input_size", [(224, 224), (448, 224), (336, 224), (224, 448)])
def test_kept_fraction_is_what_timms_eval_transform_keeps(input_size):
    # A 448×224 image whose row r and column c have the values r and c: the transformed tensor shows which survive.
    height, width = 448, 224
    rows = np.repeat(np.arange(height)[:, None], width, axis=1)
    cols = np.repeat(np.arange(width)[None, :], height, axis=0)
    image = Image.fromarray(np.stack([rows % 256, rows // 256 * 100, cols], axis=2).astype(np.uint8))
    transform = create_transform(input_size=(3, *input_size), crop_pct=0.875, interpolation="nearest", mean=(0, 0, 0),
                                 std=(1, 1, 1), is_training=False)  # fmt: skip
    out = torch.round(transform(image) * 255)
    seen_rows = (out[0] + out[1] / 100 * 256).unique().numel()
    seen_cols = out[2].unique().numel()
    kept_h, kept_w = kept_fraction((height, width), input_size, 0.875)
    assert seen_rows == pytest.approx(kept_h * height, abs=2) and seen_cols == pytest.approx(kept_w * width, abs=2)
