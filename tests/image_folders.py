"""Image folders for tests: noisy solid-colour classes (trivially separable, even by a random conv net) and
files that only look like images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

# Classes differ by colour: trivially separable, even through a randomly initialised conv net.
COLORS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (230, 220, 40), (200, 40, 200), (40, 210, 210)]
HEIGHT, WIDTH = 96, 64  # rectangular and tall, like the seed's 448×224


def make_image_folder(root: Path, num_classes: int, per_class: int, *, split: str | None = None, seed: int = 0) -> Path:
    """``root[/split]/class_<i>/<n>.png``: noisy solid-colour HEIGHT×WIDTH images, one colour per class."""
    rng = np.random.default_rng(seed)
    base = root / split if split else root
    for c in range(num_classes):
        folder = base / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.normal(0, 40, (HEIGHT, WIDTH, 3))
            pixels = np.clip(np.array(COLORS[c])[None, None, :] + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def add_bad_images(folder: Path) -> list[Path]:
    """A zero-byte file, text named .jpg and a truncated PNG: all three look like images by name only."""
    empty, text, truncated = folder / "empty.jpg", folder / "notes.jpg", folder / "truncated.png"
    empty.write_bytes(b"")
    text.write_text("this is not a picture")
    buffer = io.BytesIO()
    Image.fromarray(np.full((HEIGHT, WIDTH, 3), 128, np.uint8)).save(buffer, format="PNG")
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return [empty, text, truncated]


def one_image(folder: Path, name: str = "0.png", value: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(folder / name)
    return folder / name


# Real photographs that ship inside scikit-image (no download): one class per photo.
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def make_photo_folder(
    root: Path, *, per_class: int = 6, aspect: float = 2.0, width: int = 112, classes: int = 2, split: bool = True
) -> Path:
    """``root/{train,validation}/<photo>/<n>.png``: crops of scikit-image's photos with height = ``aspect`` x width,
    each resized to ``width`` wide. Crops of one photo form a class; they differ in position and scale, seeded."""
    import skimage.data

    rng = np.random.default_rng(0)
    for name in PHOTOS[:classes]:
        photo = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        for i in range(per_class):
            crop_w = min(photo.width, round(photo.height / aspect)) * rng.uniform(0.6, 1.0)
            crop_h = crop_w * aspect
            left = rng.uniform(0, photo.width - crop_w)
            top = rng.uniform(0, photo.height - crop_h)
            crop = photo.crop((round(left), round(top), round(left + crop_w), round(top + crop_h)))
            folder = root / ("validation" if split and i % 3 == 2 else "train" if split else "") / name
            folder.mkdir(parents=True, exist_ok=True)
            crop.resize((width, round(width * aspect))).save(folder / f"{i}.png")
    return root


def make_digits_folder(root: Path, per_class: int = 30, side: int = 64) -> Path:
    """``root/{train,validation}/digit_<d>/<n>.png``: scikit-learn's real handwritten digits (8×8, bundled), the first
    ``per_class`` of each digit, one in three held out, scaled up to ``side`` pixels for AlexNet's 63-pixel minimum."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    seen: dict[int, int] = {}
    for pixels, label in zip(digits.images, digits.target, strict=True):
        n = seen.get(int(label), 0)
        seen[int(label)] = n + 1
        if n >= per_class:
            continue
        folder = root / ("validation" if n % 3 == 2 else "train") / f"digit_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray((pixels / 16 * 255).astype(np.uint8)).resize((side, side), Image.BILINEAR)
        image.convert("RGB").save(folder / f"{n}.png")
    return root
