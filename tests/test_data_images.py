"""hubclf.data.images: robust decoding, the decompression-bomb limit, rectangular transforms."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform

from hubclf.data.dataset import ImageClassificationDataset
from hubclf.data.images import (
    MAX_IMAGE_PIXELS,
    BadImageError,
    TensorEvalTransform,
    build_transforms,
    decode_image,
    to_rgb,
)
from hubclf.data.splits import load_image_dataset
from tests.image_folders import HEIGHT, WIDTH, add_bad_images, make_image_folder


# ---- decoding ---------------------------------------------------------------------------------------------------
def test_to_rgb_handles_every_common_mode(tmp_path):
    gray = Image.fromarray(np.full((4, 6), 200, np.uint8))
    assert to_rgb(gray).getpixel((0, 0)) == (200, 200, 200)

    # 16-bit: 32896/65535 of full scale is mid-grey, not clipped to white.
    sixteen = Image.fromarray(np.full((4, 6), 32896, np.uint16))
    assert to_rgb(sixteen).getpixel((0, 0)) == (128, 128, 128)
    sixteen.save(tmp_path / "16bit.png")  # and as PIL reads a 16-bit PNG back
    assert decode_image(str(tmp_path / "16bit.png")).getpixel((0, 0)) == (128, 128, 128)

    transparent = Image.new("RGBA", (6, 4), (255, 0, 0, 0))
    assert to_rgb(transparent).getpixel((0, 0)) == (255, 255, 255)  # on white, not black

    palette = Image.new("P", (6, 4), 0)
    palette.putpalette([0, 0, 255] + [0] * 765)
    palette.info["transparency"] = 0
    assert to_rgb(palette).getpixel((0, 0)) == (255, 255, 255)

    cmyk = Image.new("CMYK", (6, 4), (0, 255, 255, 0))  # pure red in CMYK
    assert to_rgb(cmyk).getpixel((0, 0)) == (255, 0, 0)

    for image in (gray, sixteen, transparent, palette, cmyk):
        assert to_rgb(image).mode == "RGB"


def test_exif_orientation_is_applied(tmp_path):
    wide = Image.fromarray(np.zeros((4, 6, 3), np.uint8))  # 6 wide, 4 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "phone.jpg"
    wide.save(path, exif=exif)
    assert decode_image(str(path)).size == (4, 6)


def test_unreadable_images_are_skipped_or_fatal(tmp_path):
    bad = add_bad_images(tmp_path)
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((HEIGHT, WIDTH, 3), np.uint8)).save(good)
    for path in bad:
        with pytest.raises(BadImageError, match=path.name):
            decode_image(str(path))

    paths = [str(p) for p in [good, *bad]]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])})
    table = datasets.Dataset.from_dict({"image": paths, "label": [0, 1, 0, 1]}, features=features)
    _, eval_tf = build_transforms({"input_size": (3, HEIGHT, WIDTH)}, augment=False)
    skipping = ImageClassificationDataset(table, "image", "label", eval_tf, input_size=(3, HEIGHT, WIDTH))
    rows = [skipping[i] for i in range(4)]
    assert [row["valid"] for row in rows] == [True, False, False, False]
    assert all(row["pixel_values"].shape == (3, HEIGHT, WIDTH) for row in rows)
    assert skipping.describe(2) == str(bad[1])

    strict = ImageClassificationDataset(table, "image", "label", eval_tf, on_bad_image="error")
    with pytest.raises(BadImageError, match="empty.jpg"):
        strict[1]


# ---- transforms --------------------------------------------------------------------------------------------------
def test_transforms_stay_rectangular():
    square = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 50, 3), dtype=np.uint8))
    train_tf, eval_tf = build_transforms({"input_size": (3, 448, 224), "crop_pct": 0.875}, augment=True)
    assert train_tf(square).shape == eval_tf(square).shape == (3, 448, 224)
    fixed_train, fixed_eval = build_transforms({"input_size": (3, 448, 224)}, augment=False)
    assert fixed_train is fixed_eval


def test_seeded_augmentation_depends_on_seed_epoch_and_row_only(tmp_path):
    make_image_folder(tmp_path, num_classes=2, per_class=2)
    data = load_image_dataset(str(tmp_path), val_split=0.5)
    train_tf, _ = build_transforms({"input_size": (3, HEIGHT, WIDTH)}, augment=True)
    dataset = ImageClassificationDataset(data.train, "image", "label", train_tf, input_size=(3, HEIGHT, WIDTH))
    dataset.seed_augmentation(seed=1, epoch=0)
    torch.manual_seed(123)
    first = dataset[0]["pixel_values"]
    torch.manual_seed(456)  # the global RNG plays no part...
    assert torch.equal(dataset[0]["pixel_values"], first)
    state = torch.get_rng_state()
    dataset[1]
    assert torch.equal(torch.get_rng_state(), state)  # ...and is left untouched (dropout keeps its stream)
    dataset.seed_augmentation(seed=1, epoch=1)
    assert not torch.equal(dataset[0]["pixel_values"], first)  # each epoch sees new augmentations


@pytest.mark.parametrize(
    "config",
    [
        {"input_size": (3, HEIGHT, WIDTH), "crop_pct": 1.0},  # already the input size: no resize at all
        {"input_size": (3, 448, 224), "crop_pct": 0.875},  # rectangular resize (ResizeKeepRatio) + centre crop
        {"input_size": (3, 64, 64), "crop_pct": 0.875, "interpolation": "bicubic"},  # square: shorter-side resize
    ],
)
def test_the_fused_eval_transform_gives_timms_pixels(config):
    """Eval pixels as before: timm's transform and the fused one differ by float rounding only."""
    timm_transform = create_transform(**config, is_training=False)
    _, eval_tf = build_transforms(config, augment=False)
    assert isinstance(eval_tf, TensorEvalTransform)
    rng = np.random.default_rng(1)
    for size in ((HEIGHT, WIDTH), (300, 170), (41, 97)):
        noise = Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        expected, got = timm_transform(noise), eval_tf(noise)
        assert got.shape == expected.shape and got.dtype == torch.float32
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    gray = Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8))  # converted like timm does
    torch.testing.assert_close(eval_tf(gray), timm_transform(gray.convert("RGB")), atol=1e-5, rtol=0)
    assert "TensorEvalTransform" in repr(eval_tf) and repr(timm_transform) in repr(eval_tf)  # the cache key


def test_an_unknown_transform_is_kept_as_it_is():
    odd = create_transform(input_size=(3, 32, 32), is_training=False, normalize=False)  # no Normalize step
    assert TensorEvalTransform.wrap(odd) is odd


# ---- decompression bombs --------------------------------------------------------------------------------------
def test_the_decompression_bomb_limit_is_explicit_and_over_limit_images_are_skipped(tmp_path, monkeypatch):
    assert Image.MAX_IMAGE_PIXELS == MAX_IMAGE_PIXELS == 100_000_000
    # A real bomb: a few KB of PNG that would decode to 110 million pixels.
    bomb = tmp_path / "bomb.png"
    Image.new("1", (11_000, 10_000)).save(bomb)
    assert bomb.stat().st_size < 100_000
    with pytest.raises(BadImageError, match="bomb.png.*exceeds limit"):
        decode_image(str(bomb))
    # Between the limit and twice the limit PIL only warns; hubclf's decoder makes that an error too.
    small = tmp_path / "small.png"
    Image.new("RGB", (64, 64)).save(small)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 4096 pixels: over the limit, under twice the limit
    with pytest.raises(BadImageError, match="small.png.*decompression bomb"):
        decode_image(str(small))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])})
    table = datasets.Dataset.from_dict({"image": [str(small)], "label": [1]}, features=features)
    _, eval_tf = build_transforms({"input_size": (3, 32, 32)}, augment=False)
    row = ImageClassificationDataset(table, "image", "label", eval_tf, input_size=(3, 32, 32))[0]
    assert row["valid"] is False  # skipped and listed like any other unreadable image




# ---- memory bounded per image, from the header ---------------------------------------------------------------
EVAL_CONFIG = {"input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bilinear", "crop_mode": "center"}


def _never_decode(monkeypatch):
    """Decoding any image now fails the test: a refusal must come from the header alone."""
    from PIL import ImageFile

    def load(self):
        raise AssertionError(f"{self.filename or 'an image'} was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def test_a_thin_strip_is_refused_from_its_header_before_decoding(tmp_path, monkeypatch):
    """A 375-byte 100000x1 PNG added 1.9 GB to predict: the eval transform scales it until it covers 256 x 256."""
    from hubclf.data.images import transform_bytes

    strip = tmp_path / "strip.png"
    Image.new("RGB", (100_000, 1)).save(strip)
    assert strip.stat().st_size < 1000
    _, eval_tf = build_transforms(EVAL_CONFIG, augment=False)
    assert transform_bytes(eval_tf, 100_000, 1) > 2**34  # 25,600,000 x 256 pixels
    _never_decode(monkeypatch)
    with pytest.raises(BadImageError, match=r"strip\.png: the model's transform would resize its 100000x1 pixels"):
        decode_image(str(strip), transform=eval_tf)
    with pytest.raises(BadImageError, match="100000x1"):  # the same check for an image already in memory (the app)
        decode_image(Image.new("RGB", (100_000, 1)), transform=eval_tf)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])})
    table = datasets.Dataset.from_dict({"image": [str(strip)], "label": [1]}, features=features)
    row = ImageClassificationDataset(table, "image", "label", eval_tf, input_size=(3, 224, 224))[0]
    assert row["valid"] is False  # skipped and listed like a corrupt file, never a failed batch


def test_an_image_whose_decoding_is_over_budget_is_refused_from_its_header(tmp_path, monkeypatch):
    """A 99.98 MP RGBA PNG is under the pixel limit, but decoding and flattening it on white takes ~1.3 GB."""
    from hubclf.data.images import MAX_DECODE_BYTES, decode_bytes

    assert decode_bytes(9_999, 9_999, "RGBA") > MAX_DECODE_BYTES >= decode_bytes(10_000, 10_000, "RGB")
    big = tmp_path / "rgba.png"
    monkeypatch.setattr("hubclf.data.images.MAX_DECODE_BYTES", 13 * 1000 * 1000 - 1)  # just under 1000x1000 RGBA
    Image.new("RGBA", (1000, 1000), (1, 2, 3, 4)).save(big)
    _never_decode(monkeypatch)
    with pytest.raises(BadImageError, match=r"rgba\.png: decoding its 1000x1000 RGBA pixels would take 12 MiB"):
        decode_image(str(big))


def test_the_resize_target_of_every_transform_is_bounded():
    from hubclf.data.images import transform_bytes

    square = {**EVAL_CONFIG, "input_size": (3, 224, 224)}
    tall = {**EVAL_CONFIG, "input_size": (3, 448, 224)}
    for config in (square, tall, {**tall, "crop_mode": "squash"}, {**tall, "crop_mode": "border"}):
        train_tf, eval_tf = build_transforms(config, augment=True)
        # An ordinary photo costs little; a train crop is resized to the model's input whatever the image.
        assert transform_bytes(eval_tf, 4000, 3000) < 3 * (4000 * 3000 + 2 * 1000 * 3000)
        assert transform_bytes(train_tf, 100_000, 1) <= 3 * (100_000 + 224 * 1 + 448 * 224)
    assert transform_bytes(build_transforms(square, augment=False)[1], 100_000, 1) > 2**34
    assert transform_bytes(build_transforms({**tall, "crop_mode": "squash"}, augment=False)[1], 100_000, 1) < 2**20


def test_only_regular_files_are_opened(tmp_path):
    import os
    import socket

    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)  # opening it would wait for a writer forever
    with pytest.raises(BadImageError, match=r"fifo\.png: it is a FIFO \(named pipe\), not a regular file"):
        decode_image(str(fifo))
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "sock.png"))
    try:
        with pytest.raises(BadImageError, match="it is a socket, not a regular file"):
            decode_image(str(tmp_path / "sock.png"))
    finally:
        server.close()
    with pytest.raises(BadImageError, match="it is a character device, not a regular file"):
        decode_image("/dev/zero")  # would read forever


def test_eps_is_never_handed_to_ghostscript(tmp_path, monkeypatch):
    """PIL decodes EPS by running Ghostscript, an external program, on the file: never for someone's image."""
    from PIL import EpsImagePlugin

    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *args, **kwargs: calls.append(args))
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", "gs")  # as where Ghostscript is installed
    eps = tmp_path / "figure.jpg"  # PIL identifies formats by content, not by name
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(BadImageError, match="figure.jpg"):
        decode_image(str(eps))
    assert calls == []


PEAK_SCRIPT = r"""
import json, sys
from PIL import Image
from hubclf.data.images import decode_bytes, decode_image

Image.core.set_blocks_max(0)  # PIL keeps no freed image blocks for reuse: each decode allocates afresh

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

results = {}
for path, small in zip(sys.argv[1::2], sys.argv[2::2]):
    with Image.open(path) as image:
        width, height, mode, transparency = *image.size, image.mode, "transparency" in image.info
    decode_image(small)  # the same format and mode, tiny: loads the plugin and whatever else a first decode needs
    before = status("VmRSS:")
    open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the current RSS
    decoded = decode_image(path)
    results[path] = [status("VmHWM:") - before, decode_bytes(width, height, mode, transparency)]
    del decoded
print(json.dumps(results))
"""


@pytest.mark.slow
def test_the_estimate_of_every_mode_covers_its_measured_peak(tmp_path):
    """``decode_bytes`` is what the budget compares: measured here, per mode, on 1.5-megapixel images, in a process
    whose large allocations are all mapped and unmapped (no reuse of freed memory hides a peak)."""
    import json
    import os
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    exif = Image.Exif()
    exif[0x0112] = 6

    def rgb(size):
        return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))

    makers = {
        "rgb.png": lambda s, p: rgb(s).save(p), "rotated.jpg": lambda s, p: rgb(s).save(p, exif=exif),
        "l.png": lambda s, p: rgb(s).convert("L").save(p), "p.png": lambda s, p: rgb(s).convert("P").save(p),
        "l_transparent.png": lambda s, p: rgb(s).convert("L").save(p, transparency=0),
        "rgba.png": lambda s, p: rgb(s).convert("RGBA").save(p), "la.png": lambda s, p: rgb(s).convert("LA").save(p),
        "cmyk.tiff": lambda s, p: rgb(s).convert("CMYK").save(p),
        "lab.tiff": lambda s, p: rgb(s).convert("LAB").save(p),
        "i16.png": lambda s, p: Image.fromarray(rng.integers(0, 65535, s, dtype=np.uint16)).save(p),
        "i32.tiff": lambda s, p: Image.fromarray(rng.integers(0, 2**20, s, dtype=np.int32)).save(p),
        "f.tiff": lambda s, p: Image.fromarray(rng.random(s, dtype=np.float32)).save(p),
    }  # fmt: skip
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 17)}  # fixed: glibc then never raises it on a free
    arguments = []
    for name, make in makers.items():
        make((1000, 1500), tmp_path / name)
        make((8, 8), tmp_path / f"small-{name}")
        arguments += [str(tmp_path / name), str(tmp_path / f"small-{name}")]
    run = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, *arguments], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    for path, (measured, estimated) in json.loads(run.stdout).items():
        assert 0.4 * estimated < measured <= estimated, (path, measured / 1.5e6, estimated / 1.5e6)  # per pixel
