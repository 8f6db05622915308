"""Decoding and transforms: from a file (or bytes) to the tensor a model takes, the same way in training and in
inference (predict, eval, the app).

    image = decode_image("photo.jpg")                          # RGB, EXIF-rotated; BadImageError if unreadable
    image = decode_image("photo.jpg", transform=eval_tf)       # ...and refused before decoding if it, or what
                                                               # eval_tf would resize it to, is over the budget
    train_tf, eval_tf = build_transforms(timm.data.resolve_model_data_config(model), augment=True)
    data_config, transform = eval_preprocessing(model)         # how the model sees an image outside training
"""

from __future__ import annotations

import io
import math
import os
import stat
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import ExifTags, Image, ImageMode, ImageOps, UnidentifiedImageError
from timm.data import create_transform, resolve_model_data_config
from torchvision.transforms import Normalize
from torchvision.transforms.functional import pil_to_tensor

# Decompression-bomb limit: an image of more pixels is unreadable for hubclf (skipped and listed like a corrupt
# file). 100 megapixels (e.g. 10000 x 10000) is more than any common camera photo; a small file that claims more
# is far more likely an attack or a broken header. hubclf sets PIL's process-wide limit to this value on import
# and turns PIL's DecompressionBombWarning (raised between the limit and twice the limit) into an error inside
# ``decode_image``. Assign ``PIL.Image.MAX_IMAGE_PIXELS`` after importing hubclf to change it.
MAX_IMAGE_PIXELS = 100_000_000

Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

# The memory one image may take on its way to the model, decided from its header before a pixel is decoded: the
# decoded pixels with the copies that conversion to RGB makes (``decode_bytes``), and the images that the
# transform's resizes make (the eval transform scales an image up until it covers the model's input: a 1-pixel-
# high strip 100,000 wide would become 7,300,000 x 73). An image over it is skipped and listed like a corrupt file,
# in train, eval, predict and the app. Per image being decoded, so per DataLoader worker. Assign
# ``hubclf.data.images.MAX_DECODE_BYTES`` to change it.
MAX_DECODE_BYTES = 1 << 30

# Peak bytes per pixel while an image of each mode is decoded and converted to RGB by ``to_rgb``, upright: the
# decoded image and the conversions (transparency goes through RGBA and a white background, 16-bit and float
# through float32 arrays). Measured on 12-megapixel images, plus one byte for the decoders' buffers
# (tests/test_data_images.py measures every mode again). An EXIF-rotated image needs twice its decoded size plus
# 3 bytes instead, when that is more: the orientation is not known before decoding (a PNG may keep it after its
# pixels).
CONVERT_BYTES_PER_PIXEL = {
    "1": 6, "L": 6, "P": 14, "RGB": 5, "YCbCr": 9, "LAB": 9, "HSV": 9, "RGBX": 9, "CMYK": 9,
    "RGBA": 13, "RGBa": 13, "LA": 13, "La": 13, "PA": 14,
    "I;16": 11, "I;16L": 11, "I;16B": 11, "I;16N": 11, "I": 13, "F": 13,
}  # fmt: skip
TRANSPARENCY_BYTES_PER_PIXEL = 14  # an L or RGB image with a transparent colour goes through RGBA, like P
UNKNOWN_MODE_BYTES_PER_PIXEL = 16  # any other mode PIL decodes: more than any mode above takes

# Formats PIL opens. EPS is left out: PIL decodes it by running Ghostscript, an external program, on the file.
SAFE_FORMATS = None  # filled on first use: PIL registers its plugins lazily (Image.init)
_UNSAFE_FORMATS = ("EPS",)

# What PIL raises for files that are not (complete) images: zero bytes, text named .jpg, truncated data, bombs.
_DECODE_ERRORS = (
    OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError, Image.DecompressionBombWarning
)  # fmt: skip


class BadImageError(ValueError):
    """An image that cannot be decoded; raised only with ``on_bad_image="error"``."""


# ---- decoding ------------------------------------------------------------------------------------------------
def decode_image(value: dict[str, Any] | Image.Image | str, transform: Any = None) -> Image.Image:
    """An RGB PIL image from a ``datasets.Image(decode=False)`` value (``{"bytes", "path"}``), a path or a PIL image.

    Raises ``BadImageError`` for anything PIL cannot fully decode (empty, not an image, truncated), for images of
    more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (decompression bombs; see ``MAX_IMAGE_PIXELS``), for a path that
    is not a regular file (a FIFO, device or socket is refused without being opened), and for an image whose
    decoding, or whose resizing by ``transform`` (the transform it is about to go through), would take more than
    ``MAX_DECODE_BYTES``: that is decided from the header (width, height, mode), before any pixel is decoded. Only
    the first frame of an animation is decoded.

        decode_image("photo.jpg", transform=eval_tf)   # BadImageError for a 100000x1 strip, before decoding it
    """
    if isinstance(value, Image.Image):
        _check_budget(value, "<image>", transform)
        return to_rgb(value)
    if isinstance(value, str):
        value = {"bytes": None, "path": value}
    where = value.get("path") or "<bytes>"
    try:
        # No local name keeps the decoded image alive: _to_rgb frees each stage as it makes the next.
        return _to_rgb(_load(value, where, transform))
    except _DECODE_ERRORS as e:
        if isinstance(e, BadImageError):
            raise
        if isinstance(e, UnidentifiedImageError):  # PIL names the open file object ("<_io.BufferedReader name=4>")
            raise BadImageError(f"cannot read image {where}: cannot identify image file") from e
        raise BadImageError(f"cannot read image {where}: {e}") from e


def _load(value: dict[str, Any], where: str, transform: Any) -> Image.Image:
    """The first frame of the image, decoded, once its header has passed ``_check_budget``."""
    with warnings.catch_warnings():
        # PIL only warns between MAX_IMAGE_PIXELS and twice that; for hubclf both are too large.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        if value.get("bytes") is not None:
            source = io.BytesIO(value["bytes"])
        else:
            source = open_regular_file(value["path"], where)
        with source:
            image = Image.open(source, formats=safe_formats())  # reads the header only
            _check_budget(image, where, transform)
            image.load()  # decode now: truncated files only fail here
        return image


def open_regular_file(path: str | os.PathLike, where: str | None = None) -> io.BufferedReader:
    """``path`` opened for reading if it is a regular file. A FIFO, device or socket is refused from its ``stat``,
    without being opened (opening a FIFO waits for a writer forever; opening a device can have effects); the file
    is opened non-blocking and checked again, so nothing swapped in meanwhile blocks either.

        with open_regular_file("photo.jpg") as f: ...
    """
    where = where or str(path)
    try:
        kind = stat.S_IFMT(os.stat(path).st_mode)
    except OSError as e:
        raise BadImageError(f"cannot read image {where}: {e}") from e
    if kind != stat.S_IFREG:
        raise BadImageError(f"cannot read image {where}: it is {_kind(kind)}, not a regular file")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BadImageError(f"cannot read image {where}: it is {_kind(os.fstat(fd).st_mode)}, not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _kind(mode: int) -> str:
    from hubclf.atomic import file_kind  # floor 0: the one description of file kinds

    return file_kind(mode)


def safe_formats() -> list[str]:
    global SAFE_FORMATS
    if SAFE_FORMATS is None:
        Image.init()
        SAFE_FORMATS = [name for name in Image.OPEN if name not in _UNSAFE_FORMATS]
    return SAFE_FORMATS


def decode_bytes(width: int, height: int, mode: str, transparency: bool = False) -> int:
    """Peak bytes of decoding a ``width`` x ``height`` image of PIL ``mode`` and converting it to RGB (an image
    with a transparent colour: ``transparency``), EXIF rotation included.

        decode_bytes(10_000, 10_000, "RGB")   # 900,000,000: 3 bytes decoded + 3 rotated + 3 for the decoder
    """
    try:
        info = ImageMode.getmode(mode)
        decoded = len(info.bands) * np.dtype(info.typestr).itemsize
    except (KeyError, TypeError, ValueError):
        return width * height * UNKNOWN_MODE_BYTES_PER_PIXEL
    convert = CONVERT_BYTES_PER_PIXEL.get(mode, UNKNOWN_MODE_BYTES_PER_PIXEL)
    if transparency and mode in ("L", "RGB"):
        convert = TRANSPARENCY_BYTES_PER_PIXEL
    return width * height * max(convert, 2 * decoded + 3)


def transform_bytes(transform: Any, width: int, height: int) -> int:
    """Peak bytes of ``transform``'s resizes on a ``width`` x ``height`` RGB image: for each resize, its input, PIL's
    intermediate (the horizontal pass) and its output, 3 bytes per pixel. Read from the transform's steps
    (torchvision ``Resize``, timm ``ResizeKeepRatio``, crops); steps it does not know keep the size.

        transform_bytes(eval_tf, 100_000, 1)   # ~1.6e9 for a model whose eval transform fills 109 x 73
    """
    peak, size = 0, (width, height)
    for step in _geometry_steps(transform):
        new = _output_size(step, *size)
        if new is None:
            continue
        (w, h), (new_w, new_h) = size, new
        peak = max(peak, 3 * (w * h + new_w * h + new_w * new_h))
        size = new
    return peak


def _geometry_steps(transform: Any) -> list[Any]:
    if isinstance(transform, TensorEvalTransform):
        return list(transform.geometry)
    steps = getattr(transform, "transforms", None)
    return list(steps) if steps is not None else [transform] if transform is not None else []


def _output_size(step: Any, width: int, height: int) -> tuple[int, int] | None:
    """The (width, height) a geometric step makes of a ``width`` x ``height`` image; None if it keeps the size."""
    name = type(step).__name__
    size = getattr(step, "size", None)
    if isinstance(size, int):
        size = (size, size) if name != "Resize" else [size]
    if name == "Resize" and size is not None:
        if len(size) == 2:
            return int(size[1]), int(size[0])
        short, long = sorted((width, height))
        new_short, new_long = int(size[0]), int(size[0] * long / max(short, 1))
        max_size = getattr(step, "max_size", None)
        if max_size and new_long > max_size:
            new_short, new_long = int(max_size * new_short / new_long), max_size
        return (new_short, new_long) if width <= height else (new_long, new_short)
    if name == "ResizeKeepRatio" and size is not None:  # timm: covers the target (longest=0) or fits it (1)
        ratio_h, ratio_w = height / size[0], width / size[1]
        longest = float(getattr(step, "longest", 0.0))
        ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
        if getattr(step, "random_scale_prob", 0) > 0:  # training's random scales: the largest it may pick
            ratio /= max(getattr(step, "random_scale_range", (1.0, 1.0)))
        return max(1, math.ceil(width / ratio)), max(1, math.ceil(height / ratio))
    if size is not None and ("Crop" in name or "Pad" in name):  # crops and random-resized crops: exactly `size`
        return int(size[1]), int(size[0])
    return None


def _check_budget(image: Image.Image, where: str, transform: Any) -> None:
    """Refuse, from the header alone, an image whose decoding or resizing would take over ``MAX_DECODE_BYTES``."""
    width, height = image.size
    budget = MAX_DECODE_BYTES
    needed = decode_bytes(width, height, image.mode, "transparency" in image.info)
    if needed > budget:
        raise BadImageError(
            f"cannot read image {where}: decoding its {width}x{height} {image.mode} pixels would take "
            f"{needed / 2**20:,.0f} MiB, over hubclf's {budget / 2**20:,.0f} MiB per image "
            "(hubclf.data.images.MAX_DECODE_BYTES)"
        )
    resized = transform_bytes(transform, width, height) + 3 * width * height if transform is not None else 0
    if resized > budget:
        raise BadImageError(
            f"cannot read image {where}: the model's transform would resize its {width}x{height} pixels into "
            f"{resized / 2**20:,.0f} MiB of images (an extreme aspect ratio), over hubclf's "
            f"{budget / 2**20:,.0f} MiB per image (hubclf.data.images.MAX_DECODE_BYTES)"
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB the way a person looking at it would expect.

    Applies the EXIF orientation (phone photos), scales 16-bit images instead of clipping them to white,
    puts transparency on white instead of black, and converts palette, grayscale and CMYK images. ``image`` itself
    is left as it is.

    Example::

        to_rgb(Image.open("scan.tif")).mode   # "RGB"
    """
    rgb = _to_rgb(image)
    return rgb.copy() if rgb is image else rgb


def _to_rgb(image: Image.Image) -> Image.Image:
    """``to_rgb``'s work, freeing each stage as soon as the next exists (callers pass images nothing else holds);
    may return ``image`` itself when it is already upright RGB. ``decode_bytes`` is what this costs."""
    if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:  # only then: exif_transpose copies otherwise
        image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        # 16-bit grayscale (PNG/TIFF): PIL's convert("L") clips values above 255, so rescale 0..65535 to 0..255.
        pixels = np.asarray(image, dtype=np.float32)
        image = None  # freed before the next arrays exist
        pixels /= 257.0
        np.rint(pixels, out=pixels)
        image = Image.fromarray(np.clip(pixels, 0, 255, out=pixels).astype(np.uint8))
        del pixels
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8))
    if image.mode == "P" or (image.mode in ("L", "RGB") and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        if image.mode != "RGBA":
            image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
        del background
    return image if image.mode == "RGB" else image.convert("RGB")


# ---- transforms ----------------------------------------------------------------------------------------------
def build_transforms(
    data_config: dict[str, Any], *, augment: bool = True, **train_options: Any
) -> tuple[Callable, Callable]:
    """timm train and eval transforms for ``data_config`` (``timm.data.resolve_model_data_config(model)``).

    Rectangular inputs stay rectangular: the random-resized-crop aspect range is centred on the target's
    aspect ratio, and eval resizes the shorter side then centre-crops to (H, W). ``augment=False`` makes the
    train transform the eval transform (deterministic inputs, required for cached features). ``train_options``
    go to ``timm.data.create_transform`` for the train transform (``scale``, ``hflip``, ``color_jitter``,
    ``auto_augment``, ``re_prob``...; ``hubclf.train.recipes.AUGMENT_PRESETS`` has the named sets).
    """
    _, height, width = data_config["input_size"]
    eval_transform = create_transform(**data_config, is_training=False)
    eval_transform = TensorEvalTransform.wrap(eval_transform)
    if not augment:
        return eval_transform, eval_transform
    aspect = width / height  # torchvision's RandomResizedCrop ratio is width / height
    train_options = {"ratio": (3 / 4 * aspect, 4 / 3 * aspect), **train_options}
    train_transform = create_transform(**data_config, is_training=True, **train_options)
    return train_transform, eval_transform

class TensorEvalTransform:
    """timm's eval transform with its last two steps (to-tensor, then normalise) fused into one.

    timm's own resize/crop steps run on the PIL image as before, then the uint8 pixels become a tensor without a
    copy and are scaled and normalised in one pass instead of two (``ToTensor`` divides by 255 into a new tensor,
    ``Normalize`` subtracts and divides again). Same pixels up to float rounding (tested). Measured per 448×224
    JPEG, decode included (CPU time): ~1.0-1.2 ms with PIL + timm, ~0.8-0.9 ms this way. (Decoding with
    ``torchvision.io`` instead of PIL measured no faster, and is deprecated in torchvision 0.29, so PIL and
    ``to_rgb`` keep decoding.) ``wrap`` keeps timm's transform for any pipeline it does not recognise.

    Example::

        transform = TensorEvalTransform.wrap(create_transform(**data_config, is_training=False))
        transform(decode_image("photo.jpg"))   # float (3, H, W), normalised
    """

    # Largest difference from timm's pipeline allowed by ``wrap`` (float rounding of the fused arithmetic).
    TOLERANCE = 1e-5

    def __init__(self, transform: Any) -> None:
        steps = list(getattr(transform, "transforms", []))
        if len(steps) < 2 or type(steps[-2]).__name__ not in ("MaybeToTensor", "ToTensor"):
            raise ValueError(f"not a to-tensor + normalise transform: {transform!r}")
        if not isinstance(steps[-1], Normalize):
            raise ValueError(f"not a to-tensor + normalise transform: {transform!r}")
        self.transform = transform
        self.geometry = steps[:-2]
        mean = torch.as_tensor(steps[-1].mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.as_tensor(steps[-1].std, dtype=torch.float32).view(-1, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * std), -mean / std

    @classmethod
    def wrap(cls, transform: Any) -> Any:
        """``TensorEvalTransform(transform)`` if it gives ``transform``'s pixels on test images, else ``transform``."""
        try:
            fast = cls(transform)
            generator = np.random.default_rng(0)
            for size in ((37, 53), (64, 64)):  # one odd size that every resize and crop has to touch
                image = Image.fromarray(generator.integers(0, 256, (*size, 3), dtype=np.uint8))
                if (fast(image) - transform(image)).abs().max() > cls.TOLERANCE:
                    return transform
        except (ValueError, TypeError, AttributeError):
            return transform
        return fast

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.normalize(self.pixels(image))

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """timm's resize and crop, on the PIL image as timm does them: uint8 (3, H, W), what ``PixelCache`` keeps."""
        for step in self.geometry:
            image = step(image)
        if image.mode != "RGB":
            image = image.convert("RGB")
        return pil_to_tensor(image)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (3, H, W) -> normalised float (3, H, W)."""
        return pixels.float().mul_(self.scale).add_(self.shift)

    def __repr__(self) -> str:  # part of the feature-cache key: it must name every setting
        return f"{type(self).__name__}({self.transform!r})"

def eval_preprocessing(model: torch.nn.Module) -> tuple[dict[str, Any], Callable]:
    """How ``model`` sees an image outside training: its timm data config and eval transform (its own input size,
    crop and normalisation). ``predict``, ``eval``, the app and ``--strategy auto`` all go through this.

    Example::

        data_config, transform = eval_preprocessing(model)   # data_config["input_size"] == (3, 448, 224)
    """
    data_config = resolve_model_data_config(model)
    return data_config, build_transforms(data_config, augment=False)[1]
