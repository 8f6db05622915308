"""The GPU input path: JPEG bytes decoded in batches on the device (nvJPEG, through torchvision's
``decode_jpeg(device="cuda")``), then resized, centre-cropped and normalised there by the same torchvision steps the
CPU path applies to PIL images. For fixed inputs (eval, frozen runs, feature extraction): random augmentation stays
on the CPU.

    preprocess = DevicePreprocess(eval_transform, device=torch.device("cuda"))
    pixels, valid = preprocess([value["bytes"] for value in batch_values])   # float (N, 3, H, W) on the GPU

Why torchvision: it is what the pinned versions offer (torchvision 0.29.1). Its decoders are deprecated since 0.29
in favour of TorchCodec (>= 0.16), which is not installed here and not pinned; nvidia-dali is an optional
alternative nobody has measured on this project yet. ``probe()`` says what a machine has, and
``python -m hubclf.data.gpu_decode`` prints it as JSON (``scripts/gpu_check.sh`` calls it).

Numerics: the two paths' pixels are close, not equal. Tensor resizing rounds differently from PIL's (a few levels
of 255 at edges), and nvJPEG upsamples the colour planes of chroma-subsampled (4:2:0) JPEGs differently from
libjpeg-turbo: up to tens of levels at sharp colour edges, under one level on average (``NVJPEG_MAX_LEVELS``; on
4:4:4 JPEGs the two decoders agree exactly). That is why a timing never chooses this path
(``choose_decode_device``). Images that are not plain RGB/greyscale JPEGs, or whose EXIF says to rotate them (nvJPEG
does not), go through the CPU decoder (``decode_image``) and are exact.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

from hubclf.data.dataset import shared_bytes
from hubclf.data.images import BadImageError, TensorEvalTransform, decode_image

# Largest |difference| between this path's pixels and the PIL path's, in levels of 255 (normalised: levels / 255 /
# std). On a CPU (libjpeg-turbo through torchvision, tensor resize and crop), on the JPEG test images of
# tests/test_data_gpu_decode.py: bilinear max 1 level (mean 0.13), bicubic max 6 (mean 0.14); PIL's and torch's
# antialiasing round differently at edges.
TOLERANCE_LEVELS = 8
# With nvJPEG (an H200, torch 2.11 / torchvision 0.26, 2026-12-04): the test images max 30 (bilinear) and 36
# (bicubic) levels, mean 0.66 and 0.77. Four skimage photos and a synthetic one at 448x224, as 4:2:0 JPEGs (q75,
# q90): decoded, max 14-57 levels from libjpeg-turbo's, mean 0.29-0.80; after the transform, max 10-55, 99.9th
# percentile 5-17, mean 0.26-0.84. As 4:4:4 JPEGs: decoded identically.
NVJPEG_MAX_LEVELS = 64
EXIF_ORIENTATION = 0x0112


def _decode_jpeg() -> Callable[..., Any]:
    from torchvision.io import decode_jpeg

    return decode_jpeg


def _quiet(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29's notice, on every call
        warnings.simplefilter("ignore", UserWarning)
        return call(*args, **kwargs)


def device_decodable(data: bytes | None) -> bool:
    """A JPEG the device decoder gives the same image for: RGB or greyscale, no EXIF rotation (from its header)."""
    if not data:  # a missing or empty file: the CPU path reports it like any bad image
        return False
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG" or image.mode not in ("RGB", "L"):
                return False
            return image.getexif().get(EXIF_ORIENTATION, 1) == 1
    except Exception:  # unreadable: the CPU path reports it like any bad image
        return False


class DevicePreprocess:
    """``eval_transform`` (a ``TensorEvalTransform``: resize, centre crop, normalise) applied on ``device`` to raw
    image bytes, JPEGs decoded there in one batched call.

        preprocess = DevicePreprocess(eval_tf, torch.device("cpu"))   # the same code path, for tests on a CPU
        pixels, valid = preprocess([open("a.jpg", "rb").read(), b"not an image"])   # valid: [True, False]
    """

    def __init__(self, eval_transform: TensorEvalTransform, device: torch.device) -> None:
        if not isinstance(eval_transform, TensorEvalTransform):
            raise ValueError(f"the device path needs a fixed (eval) transform, got {eval_transform!r}")
        self.transform, self.device = eval_transform, torch.device(device)
        self.scale, self.shift = eval_transform.scale.to(self.device), eval_transform.shift.to(self.device)

    def __call__(
        self, raw: Sequence[bytes | torch.Tensor | None], decodable: list[bool] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``raw``: each file's bytes, or a 1-D uint8 tensor of them (``PackedFiles.views``). ``decodable``:
        ``device_decodable`` of each file when the loader workers have already checked them."""
        crops: list[torch.Tensor | None] = [None] * len(raw)  # uint8 (3, H, W) on the device
        if decodable is None:
            decodable = [device_decodable(_as_bytes(data)) for data in raw]
        on_device = [i for i, ok in enumerate(decodable) if ok]
        if on_device:
            decoded = dict(zip(on_device, self._decode([raw[i] for i in on_device]), strict=True))
            for indices in _same_shape([(i, image) for i, image in decoded.items() if image is not None]):
                for i, image in zip(indices, self._geometry(torch.stack([decoded[i] for i in indices])), strict=True):
                    crops[i] = image
        for i, data in enumerate(raw):
            if crops[i] is None:  # PNGs, CMYK, rotated or broken JPEGs: the CPU path, exactly
                try:
                    image = decode_image({"bytes": _as_bytes(data) or b"", "path": None})
                except BadImageError:
                    continue
                crops[i] = self.transform.pixels(image).to(self.device)
        valid = torch.tensor([crop is not None for crop in crops])
        size = next((crop.shape for crop in crops if crop is not None), (3, *self.transform_size()))
        batch = torch.stack([crop if crop is not None else torch.zeros(size, dtype=torch.uint8, device=self.device)
                             for crop in crops])  # fmt: skip
        batch = batch.float().mul_(self.scale).add_(self.shift)
        batch[~valid.to(self.device)] = 0.0  # the placeholder of an unreadable image, as on the CPU path
        return batch, valid

    def _geometry(self, images: torch.Tensor) -> torch.Tensor:
        """Resize and crop a stack of same-size uint8 images in one call per step (torchvision's Resize and
        CenterCrop take batches). On an H200, the resize and crop of 256 images one at a time took 7.0 ms, one
        batched interpolate of the same images 1.7 ms. Each image's pixels are those of its own call (tested)."""
        for step in self.transform.geometry:
            images = step(images)
        return images

    def transform_size(self) -> tuple[int, int]:
        for step in reversed(self.transform.geometry):
            size = getattr(step, "size", None)
            if size is not None:
                return (size, size) if isinstance(size, int) else tuple(size)[-2:]
        raise ValueError("the eval transform has no crop size")

    def _decode(self, jpegs: list[bytes | torch.Tensor]) -> list[torch.Tensor | None]:
        from torchvision.io import ImageReadMode

        data = jpeg_tensors(jpegs)
        try:
            return _quiet(_decode_jpeg(), data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:  # one bad file fails the batched call: decode one by one to find it
            out = []
            for tensor in data:
                try:
                    out.append(_quiet(_decode_jpeg(), tensor, mode=ImageReadMode.RGB, device=self.device))
                except RuntimeError:
                    out.append(None)
            return out


class RawImages(torch.utils.data.Dataset):
    """An ``ImageClassificationDataset``'s rows with the image's bytes instead of pixels (nothing decoded)."""

    def __init__(self, images: Any, preprocess: DevicePreprocess) -> None:
        self.images, self.preprocess = images, preprocess
        self.transform = images.transform
        self.labels = images.labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        values = self.images.dataset[[int(i) for i in indices]][self.images.image_column]
        rows = []
        for index, value in zip(indices, values, strict=True):
            data = value.get("bytes")
            if data is None and value.get("path"):
                try:
                    with open(value["path"], "rb") as f:
                        data = f.read()
                except OSError:
                    data = None
            # The header check runs here, in the loader workers, not in the training process (10.7 ms of a
            # 256-image batch on an H200 machine's CPU).
            rows.append({"raw": data, "decodable": device_decodable(data),
                         "labels": self.labels[index].item(), "index": int(index), "valid": True})  # fmt: skip
        return rows

    def describe(self, index: int) -> str:
        return self.images.describe(index)

    def finish_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch's ``raw`` files become ``pixel_values`` on the device (``FinishingLoader`` calls it)."""
        pixels, decoded = self.preprocess(batch.pop("raw").views(), batch.pop("decodable", None))
        batch["pixel_values"] = pixels
        batch["valid"] = batch["valid"] & decoded.to(batch["valid"].device)
        return batch


@dataclasses.dataclass
class PackedFiles:
    """A batch's files in one uint8 tensor, and each file's length (-1: no file, missing or unreadable).

    A loader worker sends it to the training process through shared memory, where a list of bytes objects is
    pickled into a pipe and copied out of it again there: on the 2-core EPYC, through ``RawImages`` and
    ``collate_raw`` with 1 worker and 256 JPEGs of 27 KB a batch, the training process spent 27-30 µs of CPU per
    image receiving a list, 14-16 µs receiving this. It has no ``.to``, so Accelerate leaves it on the CPU, where
    nvJPEG reads its input.

        packed = PackedFiles.pack([open("a.jpg", "rb").read(), None])
        packed.views()   # [tensor([255, 216, ...], dtype=torch.uint8), None]
    """

    data: torch.Tensor
    sizes: list[int]

    @classmethod
    def pack(cls, files: Sequence[bytes | None]) -> PackedFiles:
        sizes = [-1 if data is None else len(data) for data in files]
        total = sum(size for size in sizes if size > 0)
        in_worker = torch.utils.data.get_worker_info() is not None  # in shared memory: sent without another copy
        data = shared_bytes(total) if in_worker else torch.empty(total, dtype=torch.uint8)
        offset = 0
        for file in files:
            if file:
                data[offset : offset + len(file)] = jpeg_tensors([file])[0]
                offset += len(file)
        return cls(data, sizes)

    def __len__(self) -> int:
        return len(self.sizes)

    def views(self) -> list[torch.Tensor | None]:
        """Each file as a 1-D view of ``data`` (no copy), ``None`` where there is no file."""
        views: list[torch.Tensor | None] = []
        offset = 0
        for size in self.sizes:
            views.append(None if size < 0 else self.data[offset : offset + size])
            offset += max(0, size)
        return views


def collate_raw(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Default collation, but ``raw`` becomes one ``PackedFiles`` and ``decodable`` stays a list of flags (on the
    CPU: Accelerate moves tensors, not lists, to the device)."""
    raw = PackedFiles.pack([row.pop("raw") for row in rows])
    decodable = [row.pop("decodable") for row in rows] if rows and "decodable" in rows[0] else None
    batch = torch.utils.data.default_collate(rows)
    batch["raw"] = raw
    if decodable is not None:
        batch["decodable"] = decodable
    return batch


def jpeg_tensors(jpegs: Sequence[bytes | torch.Tensor]) -> list[torch.Tensor]:
    """Each file's bytes as a 1-D uint8 tensor that reads them in place (a tensor stays as it is): ``decode_jpeg``
    only reads its input, and a copy of each file cost 4.6 ms of a 256-image batch on an H200 machine's CPU.

        jpeg_tensors([open("a.jpg", "rb").read()])[0].dtype   # torch.uint8
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's notice that a view of bytes is not writable
        return [jpeg if isinstance(jpeg, torch.Tensor) else torch.frombuffer(jpeg, dtype=torch.uint8)
                for jpeg in jpegs]  # fmt: skip


def _as_bytes(data: bytes | torch.Tensor | None) -> bytes | None:
    """What the PIL decoder and the header check read: a file's view copied out (only for the few files that are
    not device-decodable JPEGs)."""
    return data.numpy().tobytes() if isinstance(data, torch.Tensor) else data


def _same_shape(images: list[tuple[int, torch.Tensor]]) -> list[list[int]]:
    """The indices of ``images`` grouped by the shape of their image, in order of first appearance."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, image in images:
        groups.setdefault(tuple(image.shape), []).append(index)
    return list(groups.values())


# ---- the decision -------------------------------------------------------------------------------------------------
def choose_decode_device(requested: str, device: torch.device) -> tuple[str, str]:
    """``("cuda" | "cpu", why)``: ``requested`` (``--decode-device``) when it is ``cpu`` or ``cuda``; for ``auto``, the
    GPU whenever the run trains on one whose nvJPEG decodes. Decided from the hardware alone, never from a timing:
    the two paths' pixels differ at colour edges of chroma-subsampled JPEGs (``NVJPEG_MAX_LEVELS``), so the same
    machine must always make the same choice. Measured on an H200 with 16 CPU cores: AlexNet trains at 21,300
    img/s in bf16 while the CPU path feeds 1,232 and the GPU path 4,113 (docs/performance.md).

        choose_decode_device("auto", torch.device("cpu"))   # ("cpu", "no CUDA device")
    """
    if requested == "cpu":
        return "cpu", "given"
    if device.type != "cuda":
        if requested == "cuda":
            raise ValueError("--decode-device cuda needs a CUDA device; this run trains on " + device.type)
        return "cpu", "no CUDA device"
    available = probe()
    if not available["gpu_decode"]:
        if requested == "cuda":
            raise ValueError(f"--decode-device cuda: the GPU cannot decode JPEGs here ({available['why']})")
        return "cpu", f"the GPU cannot decode JPEGs here ({available['why']})"
    if requested == "cuda":
        return "cuda", "given"
    return "cuda", f"nvJPEG decodes on this {available['device']}"


# ---- what a machine has ---------------------------------------------------------------------------------------------
def _tiny_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def probe() -> dict[str, Any]:
    """What this machine offers for decoding images on a GPU: torchvision's nvJPEG path (tried on a 16×16 JPEG),
    and whether TorchCodec or DALI are installed. ``gpu_decode`` is the answer; ``why`` says why not.

        probe()["gpu_decode"]   # False on a machine without CUDA
    """
    import importlib.metadata as metadata

    import torchvision

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    found: dict[str, Any] = {
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "torchvision_decode_deprecated": "deprecated" in (_decode_jpeg().__doc__ or "").lower(),
        "torchcodec": version("torchcodec"),
        "dali": next((v for v in map(version, ("nvidia-dali-cuda120", "nvidia-dali-cuda130")) if v), None),
        "cuda": torch.cuda.is_available(), "device": None, "gpu_decode": False, "why": "",
    }  # fmt: skip
    if not found["cuda"]:
        found["why"] = "no CUDA device"
        return found
    found["device"] = torch.cuda.get_device_name(0)
    try:
        data = torch.frombuffer(bytearray(_tiny_jpeg()), dtype=torch.uint8)
        image = _quiet(_decode_jpeg(), [data], device=torch.device("cuda"))[0]
        found["gpu_decode"] = image.shape == (3, 16, 16) and image.device.type == "cuda"
        found["why"] = "" if found["gpu_decode"] else f"decode_jpeg gave {tuple(image.shape)} on {image.device}"
    except Exception as e:  # nvJPEG missing from this build, or a driver problem: say which
        found["why"] = f"decode_jpeg(device='cuda') failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    return found


def main() -> int:
    """``python -m hubclf.data.gpu_decode``: ``probe()`` as JSON; exit status 0 when the GPU decodes JPEGs, 1 when
    not (with the reason on stderr, one line)."""
    found = probe()
    print(json.dumps(found, indent=2))
    if not found["gpu_decode"]:
        print(f"hubclf.data.gpu_decode: no GPU decoding: {found['why']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
