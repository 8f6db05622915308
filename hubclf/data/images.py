"""Decoding and transforms: from a file (or bytes) to the tensor a model takes, the same way in training and in
inference (predict, eval, the app).

    image = decode_image("photo.jpg")                          # RGB, EXIF-rotated; BadImageError if unreadable
    train_tf, eval_tf = build_transforms(timm.data.resolve_model_data_config(model), augment=True)
    data_config, transform = eval_preprocessing(model)         # how the model sees an image outside training
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from timm.data import create_transform, resolve_model_data_config
from torchvision.transforms import Normalize
from torchvision.transforms.functional import pil_to_tensor

# Decompression-bomb limit: an image of more pixels is unreadable for hubclf (skipped and listed like a corrupt
# file). 100 megapixels (e.g. 10000 x 10000) is more than any common camera photo and decodes to ~300 MB of RGB
# per DataLoader worker; a small file that claims more is far more likely an attack or a broken header. hubclf
# sets PIL's process-wide limit to this value on import and turns PIL's DecompressionBombWarning (raised between
# the limit and twice the limit) into an error inside ``decode_image``. Assign ``PIL.Image.MAX_IMAGE_PIXELS``
# after importing hubclf to change it.
MAX_IMAGE_PIXELS = 100_000_000

Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

# What PIL raises for files that are not (complete) images: zero bytes, text named .jpg, truncated data, bombs.
_DECODE_ERRORS = (
    OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError, Image.DecompressionBombWarning
)  # fmt: skip


class BadImageError(ValueError):
    """An image that cannot be decoded; raised only with ``on_bad_image="error"``."""


# ---- decoding ------------------------------------------------------------------------------------------------
def decode_image(value: dict[str, Any] | Image.Image | str) -> Image.Image:
    """An RGB PIL image from a ``datasets.Image(decode=False)`` value (``{"bytes", "path"}``), a path or a PIL image.

    Raises ``BadImageError`` for anything PIL cannot fully decode (empty, not an image, truncated) and for images
    of more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (decompression bombs; see ``MAX_IMAGE_PIXELS``).
    """
    if isinstance(value, Image.Image):
        return to_rgb(value)
    if isinstance(value, str):
        value = {"bytes": None, "path": value}
    where = value.get("path") or "<bytes>"
    try:
        source = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value["path"]
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that; for hubclf both are too large.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                image.load()  # decode now: truncated files only fail here
                return to_rgb(image)
    except _DECODE_ERRORS as e:
        raise BadImageError(f"cannot read image {where}: {e}") from e

def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB the way a person looking at it would expect.

    Applies the EXIF orientation (phone photos), scales 16-bit images instead of clipping them to white,
    puts transparency on white instead of black, and converts palette, grayscale and CMYK images.

    Example::

        to_rgb(Image.open("scan.tif")).mode   # "RGB"
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        # 16-bit grayscale (PNG/TIFF): PIL's convert("L") clips values above 255, so rescale 0..65535 to 0..255.
        pixels = np.asarray(image).astype(np.float32) / 257.0
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8))
    if image.mode == "P" or (image.mode in ("L", "RGB") and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


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
