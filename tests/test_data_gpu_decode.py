"""hubclf.data.gpu_decode on a CPU: the device path's code (torchvision's batched decode_jpeg, tensor resize and crop,
normalisation) against the PIL path, within the stated tolerance (and, where there is a GPU, nvJPEG's pixels within
theirs); non-JPEGs, rotated and broken files take the CPU decoder; the decision, from the hardware alone, and the
probe."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from hubclf.data.gpu_decode import (
    EXIF_ORIENTATION,
    NVJPEG_MAX_LEVELS,
    TOLERANCE_LEVELS,
    DevicePreprocess,
    choose_decode_device,
    device_decodable,
    probe,
)
from hubclf.data.images import build_transforms, decode_image


def photo(seed: int, size=(150, 97), fmt="JPEG", **save) -> bytes:
    """A smooth picture with edges (gradients and a disc), like a photo rather than noise."""
    rng = np.random.default_rng(seed)
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    pixels = np.stack([x * 255 / w, y * 255 / h, np.full((h, w), rng.integers(0, 255))], axis=-1)
    pixels[(y - h / 2) ** 2 + (x - w / 3) ** 2 < (min(h, w) / 4) ** 2] = rng.integers(0, 255, 3)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format=fmt, **save)
    return buffer.getvalue()


CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG needs a GPU"))


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_the_device_path_gives_the_cpu_paths_pixels_within_the_tolerance(interpolation, device):
    config = {"input_size": (3, 96, 64), "interpolation": interpolation, "crop_pct": 0.875,
              "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}  # fmt: skip
    _, eval_tf = build_transforms(config, augment=False)
    preprocess = DevicePreprocess(eval_tf, torch.device(device))
    raw = [photo(seed, size) for seed, size in enumerate([(150, 97), (300, 200), (97, 150), (64, 64)])]
    pixels, valid = preprocess(raw)
    assert pixels.device.type == device
    pixels = pixels.cpu()
    expected = torch.stack([eval_tf(decode_image({"bytes": data, "path": None})) for data in raw])
    assert valid.all() and pixels.shape == expected.shape == (4, 3, 96, 64)
    levels = ((pixels - expected) * torch.tensor(config["std"]).view(1, 3, 1, 1) * 255).abs()
    print(f"{device} {interpolation}: max {levels.max():.2f} levels, mean {levels.mean():.3f}")
    assert levels.max() <= (TOLERANCE_LEVELS if device == "cpu" else NVJPEG_MAX_LEVELS) and levels.mean() < 1.0


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_same_size_images_are_resized_in_one_call_with_each_images_own_pixels(interpolation):
    config = {"input_size": (3, 96, 64), "interpolation": interpolation, "crop_pct": 0.875}
    _, eval_tf = build_transforms(config, augment=False)
    preprocess = DevicePreprocess(eval_tf, torch.device("cpu"))
    raw = [photo(seed, (150, 97)) for seed in range(4)] + [photo(9, (120, 80)), photo(5, (150, 97))]
    pixels, valid = preprocess(raw)
    assert valid.all()
    for i, data in enumerate(raw):  # one image at a time, as the path did before: bit for bit the same
        image = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        for step in eval_tf.geometry:
            image = step(image)
        assert torch.equal(pixels[i], image.float().mul_(eval_tf.scale).add_(eval_tf.shift)), i


def test_the_loader_workers_check_the_headers_and_the_training_process_does_not(monkeypatch):
    from hubclf.data.gpu_decode import RawImages, collate_raw

    _, eval_tf = build_transforms({"input_size": (3, 32, 32)}, augment=False)
    png = photo(2, fmt="PNG")

    class Rows:  # 🤗 datasets' rows by indices
        def __getitem__(self, indices):
            return {"image": [{"bytes": [photo(1), png][i], "path": None} for i in indices]}

    # the parts of an ImageClassificationDataset that RawImages reads
    images = types.SimpleNamespace(transform=eval_tf, image_column="image", labels=torch.tensor([0, 1]), dataset=Rows())
    raw_images = RawImages(images, DevicePreprocess(eval_tf, torch.device("cpu")))
    batch = collate_raw(raw_images.__getitems__([0, 1]))
    assert batch["decodable"] == [True, False] and isinstance(batch["decodable"], list)  # stays on the CPU
    monkeypatch.setattr("hubclf.data.gpu_decode.device_decodable", lambda data: pytest.fail("checked twice"))
    finished = raw_images.finish_batch(batch)
    assert finished["pixel_values"].shape == (2, 3, 32, 32) and finished["valid"].tolist() == [True, True]
    assert "decodable" not in finished and "raw" not in finished


class _Files(torch.utils.data.Dataset):
    """Rows as RawImages makes them: a file's bytes (None: missing), whether its header is device-decodable."""

    def __init__(self, files):
        self.files = files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        return {"raw": self.files[index], "decodable": device_decodable(self.files[index]), "labels": index,
                "index": index, "valid": True}  # fmt: skip


def test_a_worker_sends_a_batchs_files_in_shared_memory_and_accelerate_leaves_them_on_the_cpu():
    from accelerate.utils import send_to_device

    from hubclf.data.gpu_decode import PackedFiles, collate_raw

    files = [photo(0), None, b"", photo(1, (40, 30)), b"not an image"]
    loader = torch.utils.data.DataLoader(_Files(files), batch_size=5, num_workers=1, collate_fn=collate_raw)
    (batch,) = list(loader)
    raw = batch["raw"]
    assert isinstance(raw, PackedFiles) and raw.data.is_shared()  # a file descriptor came, not the bytes
    views = raw.views()
    assert views[1] is None and [None if v is None else v.numpy().tobytes() for v in views] == files
    assert batch["decodable"] == [True, False, False, True, False]
    moved = send_to_device(batch, torch.device("meta"))  # what Accelerate does with a batch
    assert moved["labels"].device.type == "meta" and moved["raw"].data.device.type == "cpu"
    _, eval_tf = build_transforms({"input_size": (3, 32, 32)}, augment=False)
    pixels, valid = DevicePreprocess(eval_tf, torch.device("cpu"))(views, batch["decodable"])
    expected, _ = DevicePreprocess(eval_tf, torch.device("cpu"))(files)
    assert valid.tolist() == [True, False, False, True, False] and torch.equal(pixels, expected)


def test_packing_in_the_training_process_uses_plain_memory():
    from hubclf.data.gpu_decode import PackedFiles

    packed = PackedFiles.pack([photo(2), None])
    assert not packed.data.is_shared() and len(packed) == 2 and packed.views()[0].numpy().tobytes() == photo(2)


def test_the_files_bytes_are_read_in_place_without_a_warning():
    import ctypes
    import warnings

    from hubclf.data.gpu_decode import jpeg_tensors

    data = [photo(0), photo(1, (40, 30))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's not-writable notice stays inside
        tensors = jpeg_tensors(data)
    assert [t.dtype for t in tensors] == [torch.uint8] * 2 and [t.numpy().tobytes() for t in tensors] == data
    address = ctypes.cast(ctypes.c_char_p(data[0]), ctypes.c_void_p).value  # the bytes object's own buffer
    assert tensors[0].data_ptr() == address  # a view of it, not a copy


def test_png_rotated_and_broken_files_take_the_cpu_decoder():
    _, eval_tf = build_transforms({"input_size": (3, 32, 32)}, augment=False)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    rotated = photo(1, fmt="JPEG", exif=exif.tobytes())
    png = photo(2, fmt="PNG")
    assert device_decodable(photo(0)) and not device_decodable(rotated) and not device_decodable(png)
    preprocess = DevicePreprocess(eval_tf, torch.device("cpu"))
    pixels, valid = preprocess([png, rotated, b"not an image", photo(0)[:200]])
    assert valid.tolist() == [True, True, False, False]
    for i, data in enumerate((png, rotated)):  # the CPU decoder: exactly the CPU path's pixels
        assert torch.allclose(pixels[i], eval_tf(decode_image({"bytes": data, "path": None})), atol=1e-6)
    assert not pixels[2].any()


def test_the_decision_without_a_gpu_and_the_probe():
    assert choose_decode_device("auto", torch.device("cpu")) == ("cpu", "no CUDA device")
    assert choose_decode_device("cpu", torch.device("cuda")) == ("cpu", "given")
    with pytest.raises(ValueError, match="--decode-device cuda needs a CUDA device"):
        choose_decode_device("cuda", torch.device("cpu"))
    if torch.cuda.is_available():  # where there is a GPU, the probe's other answer
        found = probe()
        assert found["gpu_decode"] is True and found["why"] == "" and found["device"] == torch.cuda.get_device_name(0)
        return
    found = probe()
    assert found["gpu_decode"] is False and found["why"] == "no CUDA device"
    assert found["torchvision_decode_deprecated"] is True  # torchvision 0.29: superseded by TorchCodec
    done = subprocess.run([sys.executable, "-m", "hubclf.data.gpu_decode"], capture_output=True, text=True)
    assert done.returncode == 1 and json.loads(done.stdout)["gpu_decode"] is False
    assert done.stderr.strip() == "hubclf.data.gpu_decode: no GPU decoding: no CUDA device"


def test_auto_decides_from_the_hardware_alone(monkeypatch):
    """On CUDA, ``auto`` is the GPU whenever nvJPEG works there: nothing is timed, so a machine always decides the
    same (the two paths' pixels differ at colour edges)."""
    cuda = torch.device("cuda")
    works = {"gpu_decode": True, "device": "NVIDIA H200", "why": ""}
    monkeypatch.setattr("hubclf.data.gpu_decode.probe", lambda: works)
    assert choose_decode_device("auto", cuda) == ("cuda", "nvJPEG decodes on this NVIDIA H200")
    assert choose_decode_device("cuda", cuda) == ("cuda", "given")
    broken = {"gpu_decode": False, "device": "NVIDIA H200", "why": "decode_jpeg(device='cuda') failed: no nvJPEG"}
    monkeypatch.setattr("hubclf.data.gpu_decode.probe", lambda: broken)
    assert choose_decode_device("auto", cuda) == (
        "cpu", "the GPU cannot decode JPEGs here (decode_jpeg(device='cuda') failed: no nvJPEG)")
    with pytest.raises(ValueError, match=r"--decode-device cuda: the GPU cannot decode JPEGs here \(decode_jpeg"):
        choose_decode_device("cuda", cuda)


def test_a_run_on_the_device_path_trains_and_evaluates_from_raw_bytes(tmp_path, monkeypatch, caplog):
    """The whole GPU input path on a CPU (decode_jpeg and the tensor transforms run there): forced through the
    decision, the loaders carry bytes and the batches are decoded after Accelerate shards them."""
    from hubclf.train import TrainConfig, train

    for c in range(2):
        folder = tmp_path / "data" / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(6):
            (folder / f"{i}.jpg").write_bytes(photo(10 * c + i, (80, 60)))
    monkeypatch.setattr("hubclf.train.setup.choose_decode_device", lambda *a, **k: ("cuda", "forced by the test"))
    seen = []
    original = DevicePreprocess.__call__
    monkeypatch.setattr(DevicePreprocess, "__call__",
                        lambda self, raw, *rest: seen.append(len(raw)) or original(self, raw, *rest))  # fmt: skip
    caplog.set_level("INFO", logger="hubclf.train")
    config = TrainConfig(model="hubclf_alexnet_slim", data=str(tmp_path / "data"), output_dir=str(tmp_path / "out"),
                         pretrained=False, img_size=(64, 64), epochs=1, batch_size=4, num_workers=0, augment="none",
                         cache_features="off", cache_images="off", val_split=0.34, warmup_epochs=0)  # fmt: skip
    result = train(config)
    assert "--decode-device auto: cuda (forced by the test)" in caplog.text
    assert sum(seen) == 7 + 5  # every train and eval image went through the device path once
    assert result.final_metrics["num_samples"] == 5  # 0.34 of 12, stratified: 5 held out, 7 trained
