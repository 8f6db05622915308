"""Deterministic, procedurally generated demo datasets in imagefolder layout.

The offline demo needs two datasets and no downloads:

* ``kind="base"`` plays ImageNet (the seed's D_large): many classes of single objects (geometric shapes and
  glyphs, plain or patterned) on textured backgrounds, with colour, lighting, scale, rotation and noise variation.
* ``kind="target"`` plays the user's own data (D_other): **8 new classes of 448 high x 224 wide images**, few per
  class. Each image holds two objects from the same visual vocabulary and its class is the *pair* of shapes, so a
  backbone that learned to see shapes on the base set transfers, while a network trained from scratch on so few
  images, under random colours, patterns, lighting and clutter, does not find the shapes at all (it stays near
  chance, 1/8, even with six times the demo's epoch budget).

Layout: ``<root>/{train,validation}/<class_name>/<index>.png`` plus ``<root>/manifest.json``. Every image gets its
own random stream derived from ``(seed, kind, split, class, index)``, and PNGs are written with fixed settings and
no metadata, so the same seed and ``DEMO_DATA_VERSION`` always give the same bytes (bump the version whenever the
output changes).

    >>> from hubclf.demo.data import generate
    >>> manifest = generate("data/target", kind="target", seed=0, scale="smoke")
    >>> manifest["classes"][:2]
    ['arrow_and_glyph_e', 'circle_and_star']

Command line: ``python -m hubclf.demo.data data/ --scale full`` writes ``data/base`` and ``data/target``.
"""

from __future__ import annotations

import argparse
import colorsys
import concurrent.futures
import functools
import hashlib
import math
import multiprocessing
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm.auto import tqdm

from hubclf.atomic import atomic_write_json
from hubclf.hardware import usable_cores

DEMO_DATA_VERSION = "1"
SPLITS = ("train", "validation")
KINDS = ("base", "target")

# The visual vocabulary shared by both datasets.
GEOMETRIC_SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "arrow", "crescent")
GLYPHS = ("glyph_e", "glyph_h", "glyph_k", "glyph_z")
SHAPES = GEOMETRIC_SHAPES + GLYPHS
FILLS = ("plain", "patterned")
PATTERNS = ("stripes", "checker", "dots", "waves")
BACKGROUNDS = ("flat", "gradient", "noise") + PATTERNS

# Class tuples are sorted, so that their order is the ClassLabel order `datasets` infers from the folder names.
BASE_CLASSES = tuple(sorted(f"{shape}_{fill}" for shape in SHAPES for fill in FILLS))
# Overlapping pairs: every shape takes part in more than one class, so no single shape detector is enough.
TARGET_PAIRS = (
    ("circle", "star"),
    ("circle", "triangle"),
    ("star", "triangle"),
    ("square", "cross"),
    ("cross", "arrow"),
    ("ring", "glyph_k"),
    ("arrow", "glyph_e"),
    ("glyph_e", "glyph_k"),
)
_TARGET_PAIR_BY_CLASS = {f"{a}_and_{b}": (a, b) for a, b in TARGET_PAIRS}
TARGET_CLASSES = tuple(sorted(_TARGET_PAIR_BY_CLASS))

# Glyph strokes as polylines in a [-1, 1] box (y grows downwards, as in PIL).
_GLYPH_STROKES: dict[str, list[list[tuple[float, float]]]] = {
    "glyph_e": [[(0.6, -0.85), (-0.6, -0.85), (-0.6, 0.85), (0.6, 0.85)], [(-0.6, 0.0), (0.35, 0.0)]],
    "glyph_h": [[(-0.6, -0.85), (-0.6, 0.85)], [(0.6, -0.85), (0.6, 0.85)], [(-0.6, 0.0), (0.6, 0.0)]],
    "glyph_k": [[(-0.55, -0.85), (-0.55, 0.85)], [(0.6, -0.85), (-0.55, 0.15)], [(-0.15, -0.2), (0.65, 0.85)]],
    "glyph_z": [[(-0.6, -0.85), (0.6, -0.85), (-0.6, 0.85), (0.6, 0.85)]],
}

# Shapes are rasterised at this multiple of the output size, then box-downsampled: cheap, deterministic antialiasing.
_SUPERSAMPLE = 2
# Fixed PNG settings (zlib level, no optimisation pass, no text chunks) keep the bytes reproducible; level 1
# because the images are noisy: it is twice as fast as the default and only ~8% larger.
_PNG_SAVE_KWARGS = {"format": "PNG", "compress_level": 1, "optimize": False}
# Below this many images per process, starting another process costs more than it saves.
_MIN_IMAGES_PER_PROCESS = 100


@dataclass(frozen=True)
class DemoSpec:
    """Size of one generated dataset: which classes, how many images per class and split, and their (H, W)."""

    classes: tuple[str, ...]
    image_size: tuple[int, int]
    train_per_class: int
    validation_per_class: int
    object_size: tuple[int, int]  # min/max object diameter in pixels, the same scale in both datasets

    def per_class(self, split: str) -> int:
        return self.train_per_class if split == "train" else self.validation_per_class


SPECS: dict[str, dict[str, DemoSpec]] = {
    # What the demo uses: sized to train the base model in ~1 min and all transfer runs in ~40 s on 2 CPU cores.
    # Objects have the same pixel size in both sets: the base model then sees them at the scale it learned,
    # which matters far more for transfer than the base images being large (measured: 90% vs 66% linear-probe
    # accuracy with target objects 32-60 px vs 48-88 px).
    "full": {
        "base": DemoSpec(BASE_CLASSES, (64, 64), 200, 20, (28, 56)),
        "target": DemoSpec(TARGET_CLASSES, (448, 224), 24, 24, (32, 60)),
    },
    # For CI and the demo's smoke mode: every code path, tiny images (AlexNet needs >= 63 px).
    "smoke": {
        "base": DemoSpec(BASE_CLASSES[:6], (64, 64), 4, 2, (28, 52)),
        "target": DemoSpec(TARGET_CLASSES, (128, 64), 2, 1, (24, 36)),
    },
}


def generate(
    root: str | Path,
    kind: str = "base",
    seed: int = 0,
    scale: str = "full",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write one demo dataset to ``root`` in imagefolder layout and return its manifest.

    ``kind`` is ``"base"`` (the D_large stand-in) or ``"target"`` (8 classes, 448x224 at ``scale="full"``);
    ``scale`` is a key of :data:`SPECS` (``"full"`` or ``"smoke"``). An existing non-empty ``root`` is an error
    unless ``overwrite=True``, so that stale images never mix with new ones.

    Example::

        counts = generate("/tmp/demo/target", kind="target", scale="smoke")["counts"]
        counts["train"]["circle_and_star"]   # 2
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if scale not in SPECS:
        raise ValueError(f"scale must be one of {tuple(SPECS)}, got {scale!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    spec = SPECS[scale][kind]
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{root} is not empty; pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(root)

    jobs = [
        (split, class_index, image_index)
        for split in SPLITS
        for class_index in range(len(spec.classes))
        for image_index in range(spec.per_class(split))
    ]
    # Every image has its own random stream (see _image_rng), so processes can share the work and the bytes stay
    # the same. Chunks of consecutive images keep the per-task overhead small.
    processes = min(usable_cores(), max(1, len(jobs) // _MIN_IMAGES_PER_PROCESS))
    chunk = max(1, math.ceil(len(jobs) / (processes * 8)))
    chunks = [jobs[start : start + chunk] for start in range(0, len(jobs), chunk)]
    write = functools.partial(_write_images, root, kind, seed, scale)
    with tqdm(total=len(jobs), desc=f"demo {kind} data", disable=not progress) as bar:
        if processes == 1:
            for part in chunks:
                bar.update(write(part))
        else:
            with concurrent.futures.ProcessPoolExecutor(processes, mp_context=_pool_context()) as pool:
                for written in pool.map(write, chunks):
                    bar.update(written)

    manifest = {
        "name": f"hubclf-demo-{kind}",
        "version": DEMO_DATA_VERSION,
        "kind": kind,
        "scale": scale,
        "seed": seed,
        "image_size": list(spec.image_size),  # (H, W)
        "classes": list(spec.classes),
        "counts": {split: {name: spec.per_class(split) for name in spec.classes} for split in SPLITS},
        "num_images": len(jobs),
        "sha256": dataset_sha256(root),
        "object_size": list(spec.object_size),  # min/max object diameter in pixels
    }
    atomic_write_json(root / "manifest.json", manifest)
    return manifest


def _write_images(root: Path, kind: str, seed: int, scale: str, jobs: list[tuple[str, int, int]]) -> int:
    """Render and write ``jobs`` (split, class index, image index); returns how many were written."""
    spec = SPECS[scale][kind]
    render = render_base_image if kind == "base" else render_target_image
    for split, class_index, image_index in jobs:
        rng = _image_rng(seed, kind, split, spec.classes[class_index], image_index)
        image = render(rng, spec.classes[class_index], spec.image_size, spec.object_size)
        path = root / split / spec.classes[class_index] / f"{image_index:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, **_PNG_SAVE_KWARGS)
    return len(jobs)


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork where there is one: a spawned worker re-imports hubclf and torch (~3 s) before drawing anything, and the
    # workers only use NumPy and PIL. Elsewhere (macOS, Windows) spawn.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def dataset_sha256(root: str | Path) -> str:
    """One sha256 over every image under ``root``: sorted relative paths and their contents (manifest excluded)."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "manifest.json"):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _image_rng(seed: int, kind: str, split: str, class_name: str, image_index: int) -> np.random.Generator:
    # One independent stream per image, keyed by names rather than positions: results don't depend on generation
    # order, and adding images, classes or splits leaves every existing image byte-identical.
    name_key = int.from_bytes(hashlib.sha256(f"{kind}/{split}/{class_name}".encode()).digest()[:8], "little")
    key = [seed, name_key, image_index]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(key)))


# ---- rendering ---------------------------------------------------------------------------------------------------
def render_base_image(
    rng: np.random.Generator, class_name: str, size: tuple[int, int], object_size: tuple[int, int]
) -> Image.Image:
    """One base image: a single ``<shape>_<fill>`` object, randomly placed, on a textured, lit, noisy background."""
    shape, fill = _split_base_class(class_name)
    canvas = _background(rng, size)
    _add_clutter(rng, canvas)
    diameter = rng.uniform(*object_size)
    center = _random_center(rng, size, (0, size[0]), diameter)
    _paste_object(rng, canvas, shape, fill, center, diameter)
    return _finish(rng, canvas)


def render_target_image(
    rng: np.random.Generator, class_name: str, size: tuple[int, int], object_size: tuple[int, int]
) -> Image.Image:
    """One target image: the class's two shapes, one in each half (in random order), with random fills."""
    if class_name not in _TARGET_PAIR_BY_CLASS:
        raise ValueError(f"unknown target class {class_name!r}")
    pair = _TARGET_PAIR_BY_CLASS[class_name]
    canvas = _background(rng, size)
    _add_clutter(rng, canvas)
    height = size[0]
    top, bottom = (pair[0], pair[1]) if rng.random() < 0.5 else (pair[1], pair[0])
    for shape, band in ((top, (0, height // 2)), (bottom, (height // 2, height))):
        diameter = rng.uniform(*object_size)
        center = _random_center(rng, size, band, diameter)
        _paste_object(rng, canvas, shape, FILLS[rng.integers(len(FILLS))], center, diameter)
    return _finish(rng, canvas)


def _split_base_class(class_name: str) -> tuple[str, str]:
    if class_name not in BASE_CLASSES:
        raise ValueError(f"unknown base class {class_name!r}")
    shape, _, fill = class_name.rpartition("_")
    return shape, fill


def _random_center(
    rng: np.random.Generator, size: tuple[int, int], band: tuple[int, int], diameter: float
) -> tuple[float, float]:
    """(x, y) keeping most of the object inside the image and its centre inside the vertical ``band``."""
    height, width = size
    margin = 0.35 * diameter
    y_low, y_high = max(band[0] + margin, margin), min(band[1] - margin, height - margin)
    if y_low > y_high:  # a band narrower than the object: centre it in the band
        y_low = y_high = (band[0] + band[1]) / 2
    return rng.uniform(margin, width - margin), rng.uniform(y_low, y_high)


def _random_colour(rng: np.random.Generator, value_range: tuple[float, float]) -> np.ndarray:
    hue, saturation, value = rng.random(), rng.uniform(0.15, 1.0), rng.uniform(*value_range)
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value), dtype=np.float32)


def _contrasting_colours(rng: np.random.Generator) -> tuple[tuple[float, float], tuple[float, float]]:
    """Brightness ranges for background and object: one dark, one light, so objects stay visible."""
    dark, light = (0.02, 0.42), (0.62, 1.0)
    return (dark, light) if rng.random() < 0.5 else (light, dark)


def _coords(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    height, width = size
    return np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))


def _pattern(rng: np.random.Generator, kind: str, size: tuple[int, int]) -> np.ndarray:
    """A two-tone pattern in [0, 1] of shape (H, W): 0 picks the first colour, 1 the second."""
    x, y = _coords(size)
    angle = rng.uniform(0, math.pi)
    u = x * math.cos(angle) + y * math.sin(angle)
    v = -x * math.sin(angle) + y * math.cos(angle)
    period = rng.uniform(5, 12)
    phase = rng.uniform(0, period)
    if kind == "stripes":
        return (((u + phase) % period) < period / 2).astype(np.float32)
    if kind == "checker":
        return ((np.floor((u + phase) / period) + np.floor(v / period)) % 2).astype(np.float32)
    if kind == "dots":
        du, dv = (u + phase) % period - period / 2, v % period - period / 2
        return ((du**2 + dv**2) < (0.3 * period) ** 2).astype(np.float32)
    if kind == "waves":
        return (0.5 + 0.5 * np.sin(2 * math.pi * (u + 2.0 * np.sin(2 * math.pi * v / (3 * period))) / period)).astype(
            np.float32
        )
    if kind == "noise":
        return _smooth_noise(rng, size, cell=rng.uniform(6, 20))
    raise ValueError(f"unknown pattern {kind!r}")


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cell: float) -> np.ndarray:
    height, width = size
    coarse = rng.random((max(2, int(height / cell) + 2), max(2, int(width / cell) + 2))).astype(np.float32)
    upsampled = Image.fromarray(coarse, mode="F").resize((width, height), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(upsampled, dtype=np.float32), 0.0, 1.0)


class _Canvas:
    """An RGB float image in [0, 1] plus the brightness range objects must use to stand out from it."""

    def __init__(self, pixels: np.ndarray, object_values: tuple[float, float]):
        self.pixels = pixels
        self.object_values = object_values

    @property
    def size(self) -> tuple[int, int]:
        return self.pixels.shape[0], self.pixels.shape[1]


def _background(rng: np.random.Generator, size: tuple[int, int]) -> _Canvas:
    background_values, object_values = _contrasting_colours(rng)
    first, second = _random_colour(rng, background_values), _random_colour(rng, background_values)
    kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    if kind == "flat":
        mix = np.zeros(size, dtype=np.float32)
    elif kind == "gradient":
        x, y = _coords(size)
        angle = rng.uniform(0, 2 * math.pi)
        ramp = x * math.cos(angle) + y * math.sin(angle)
        mix = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    else:
        mix = _pattern(rng, kind, size)
    # Background patterns are low-contrast (mix scaled down) so objects remain the salient thing.
    mix = mix * rng.uniform(0.3, 0.8)
    pixels = first * (1 - mix[..., None]) + second * mix[..., None]
    return _Canvas(pixels.astype(np.float32), object_values)


def _add_clutter(rng: np.random.Generator, canvas: _Canvas) -> None:
    """Small random strokes and blobs: distractors that carry no class information."""
    height, width = canvas.size
    layer = Image.new("L", (width * _SUPERSAMPLE, height * _SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(layer)
    s = _SUPERSAMPLE
    for _ in range(rng.integers(1, 4 + (height * width) // 12000)):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        length = rng.uniform(4, 16)
        if rng.random() < 0.5:
            angle = rng.uniform(0, 2 * math.pi)
            end = (x + length * math.cos(angle), y + length * math.sin(angle))
            draw.line([(x * s, y * s), (end[0] * s, end[1] * s)], fill=255, width=int(s * rng.uniform(1, 3)))
        else:
            r = length / 3
            draw.ellipse([(x - r) * s, (y - r) * s, (x + r) * s, (y + r) * s], fill=255)
    mask = np.asarray(layer.reduce(s), dtype=np.float32) / 255.0
    colour = _random_colour(rng, (0.0, 1.0))
    canvas.pixels = canvas.pixels * (1 - mask[..., None]) + colour * mask[..., None]


def _shape_mask(shape: str, size: tuple[int, int], center: tuple[float, float], diameter: float, angle: float):
    """The shape's coverage in [0, 1] as an (H, W) array, antialiased by supersampling."""
    height, width = size
    s = _SUPERSAMPLE
    layer = Image.new("L", (width * s, height * s), 0)
    draw = ImageDraw.Draw(layer)
    cx, cy, r = center[0] * s, center[1] * s, diameter * s / 2

    def polygon(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
        cos, sin = math.cos(angle), math.sin(angle)
        return [(cx + r * (px * cos - py * sin), cy + r * (px * sin + py * cos)) for px, py in points]

    def regular(n: int, radius: float = 1.0, offset: float = 0.0) -> list[tuple[float, float]]:
        return [
            (radius * math.cos(offset + 2 * math.pi * k / n), radius * math.sin(offset + 2 * math.pi * k / n))
            for k in range(n)
        ]

    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        inner = 0.55 * r
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    elif shape == "crescent":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ox, oy = cx + 0.45 * r * math.cos(angle), cy + 0.45 * r * math.sin(angle)
        inner = 0.8 * r
        draw.ellipse([ox - inner, oy - inner, ox + inner, oy + inner], fill=0)
    elif shape == "square":
        draw.polygon(polygon(regular(4, 0.95, math.pi / 4)), fill=255)
    elif shape == "triangle":
        draw.polygon(polygon(regular(3, 1.0, -math.pi / 2)), fill=255)
    elif shape == "arrow":
        head = [(-0.95, -0.3), (0.1, -0.3), (0.1, -0.8), (0.95, 0.0), (0.1, 0.8), (0.1, 0.3), (-0.95, 0.3)]
        draw.polygon(polygon(head), fill=255)
    elif shape == "star":
        outer, inner = regular(5, 1.0, -math.pi / 2), regular(5, 0.42, -math.pi / 2 + math.pi / 5)
        draw.polygon(polygon([p for pair in zip(outer, inner, strict=True) for p in pair]), fill=255)
    elif shape == "cross":
        a, b = 0.3, 0.95
        quarter = [(-a, -b), (a, -b), (a, -a)]  # one arm's outline, then three quarter turns of it
        turns = ((1, 0), (0, 1), (-1, 0), (0, -1))  # (cos, sin) of 0, 90, 180, 270 degrees
        arms = [(x * cos - y * sin, x * sin + y * cos) for cos, sin in turns for x, y in quarter]
        draw.polygon(polygon(arms), fill=255)
    elif shape in _GLYPH_STROKES:
        for stroke in _GLYPH_STROKES[shape]:
            draw.line(polygon(stroke), fill=255, width=max(1, int(0.28 * r)), joint="curve")
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.asarray(layer.reduce(s), dtype=np.float32) / 255.0


def _paste_object(
    rng: np.random.Generator,
    canvas: _Canvas,
    shape: str,
    fill: str,
    center: tuple[float, float],
    diameter: float,
) -> None:
    # Glyphs stay readable (mild rotation); geometric shapes may turn freely.
    max_angle = math.radians(30) if shape in GLYPHS else math.pi
    mask = _shape_mask(shape, canvas.size, center, diameter, rng.uniform(-max_angle, max_angle))
    low, high = canvas.object_values
    if fill == "plain":
        texture = np.broadcast_to(_random_colour(rng, (low, high)), canvas.pixels.shape)
    else:
        # Both pattern colours come from the object's side of the brightness range, one darker and one lighter,
        # so the pattern is visible and the silhouette still stands out from the background.
        middle = (low + high) / 2
        first, second = _random_colour(rng, (low, middle - 0.05)), _random_colour(rng, (middle + 0.05, high))
        mix = _pattern(rng, PATTERNS[rng.integers(len(PATTERNS))], canvas.size)[..., None]
        texture = first * (1 - mix) + second * mix
    canvas.pixels = canvas.pixels * (1 - mask[..., None]) + texture * mask[..., None]


def _finish(rng: np.random.Generator, canvas: _Canvas) -> Image.Image:
    """Lighting (a directional ramp and overall gain), sensor noise and slight blur, then 8-bit RGB."""
    height, width = canvas.size
    x, y = _coords(canvas.size)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = ((x / width - 0.5) * math.cos(angle) + (y / height - 0.5) * math.sin(angle))[..., None]
    lit = canvas.pixels * (rng.uniform(0.75, 1.15) + rng.uniform(0.0, 0.6) * ramp)
    noisy = lit + rng.normal(0.0, rng.uniform(0.01, 0.06), lit.shape).astype(np.float32)
    image = Image.fromarray((np.clip(noisy, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), mode="RGB")
    blur = rng.uniform(0.0, 1.0)
    return image.filter(ImageFilter.GaussianBlur(blur)) if blur > 0.3 else image


# ---- command line --------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hubclf.demo.data",
        description="Write the deterministic demo datasets (<out>/base and <out>/target) in imagefolder layout.",
    )
    parser.add_argument("out", type=Path, help="output directory; gets base/ and target/ sub-directories")
    parser.add_argument("--kind", choices=(*KINDS, "both"), default="both")
    parser.add_argument("--scale", choices=tuple(SPECS), default="full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace existing dataset directories")
    args = parser.parse_args(argv)
    for kind in KINDS if args.kind == "both" else (args.kind,):
        manifest = generate(args.out / kind, kind=kind, seed=args.seed, scale=args.scale, overwrite=args.overwrite)
        height, width = manifest["image_size"]
        print(
            f"{args.out / kind}: {manifest['num_images']} images, {len(manifest['classes'])} classes, "
            f"{height}x{width} (HxW), sha256 {manifest['sha256'][:12]}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
