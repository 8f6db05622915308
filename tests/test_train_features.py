"""hubclf.train.features: frozen-backbone features, their cache key, the disk cache, and cached == uncached."""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from hubclf.data.dataset import ImageClassificationDataset
from hubclf.data.images import build_transforms
from hubclf.data.splits import load_image_dataset
from hubclf.train import TrainConfig, train
from hubclf.train.features import (
    FeatureDataset,
    FeatureShards,
    backbone_features,
    check_frozen_head,
    feature_cache_key,
    load_or_extract_features,
    weights_fingerprint,
)
from tests.image_folders import HEIGHT, WIDTH, add_bad_images, make_image_folder
from tests.test_train_loop import pretrained_stand_in

features_module = importlib.import_module("hubclf.train.features")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return timm.create_model("hubclf_alexnet_slim", num_classes=3, img_size=(HEIGHT, WIDTH)).eval()


def test_classifier_on_backbone_features_is_the_model(model):
    x = torch.randn(2, 3, HEIGHT, WIDTH)
    with torch.no_grad():
        assert torch.allclose(model.get_classifier()(backbone_features(model, x)), model(x), atol=1e-6)


@pytest.mark.parametrize("arch", ["resnet18", "convnext_atto"])
def test_any_timm_models_classifier_takes_its_backbone_features(arch):
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=3).eval()
    x = torch.randn(2, 3, HEIGHT, WIDTH)
    with torch.no_grad():
        features = backbone_features(model, x)
        assert features.shape == (2, model.num_features)  # pooled pre-logits, not the (N, C, h, w) map
        assert torch.allclose(model.get_classifier()(features), model(x), atol=1e-5)
    check_frozen_head(model, (3, HEIGHT, WIDTH))
    assert weights_fingerprint(model) != weights_fingerprint(timm.create_model(arch, num_classes=3))


@pytest.mark.parametrize(
    "arch,message",
    [
        ("resnetv2_18", r"classifier \(Conv2d\).*fails on them"),  # a 1×1 conv head: needs the pooled map
        ("deit_tiny_distilled_patch16_224", "has 2 classifiers"),
    ],
)
def test_a_classifier_that_cannot_train_on_frozen_features_is_refused(arch, message):
    model = timm.create_model(arch, num_classes=3, **({"img_size": 32} if "deit" in arch else {}))
    with pytest.raises(ValueError, match=message + ".*--freeze none"):
        check_frozen_head(model, (3, 32, 32))


def test_cache_key_follows_weights_inputs_data_precision_pooling_and_format(model, monkeypatch):
    weights = weights_fingerprint(model)
    base = dict(weights=weights, transform="resize 96x64", data_fingerprint="abc", rows=10)
    assert feature_cache_key(**base) == feature_cache_key(**base)
    changes = (
        {"transform": "resize 48x32"}, {"data_fingerprint": "abd"}, {"rows": 11}, {"autocast": "bf16"},
        {"pooling": "max"},
    )  # fmt: skip
    for change in changes:
        assert feature_cache_key(**{**base, **change}) != feature_cache_key(**base)

    retrained_head = copy.deepcopy(model)
    torch.nn.init.zeros_(retrained_head.get_classifier().weight)
    assert weights_fingerprint(retrained_head) == weights  # the classifier does not shape the features...
    other_backbone = copy.deepcopy(model)
    with torch.no_grad():
        other_backbone.features[0].weight.add_(1e-3)
    assert weights_fingerprint(other_backbone) != weights  # ...every backbone weight does

    # A new cache format or hubclf version never reads old files.
    key = feature_cache_key(**base)
    monkeypatch.setattr(features_module, "FEATURE_CACHE_FORMAT", features_module.FEATURE_CACHE_FORMAT + 1)
    assert feature_cache_key(**base) != key


def small_split(tmp_path, per_class=3, bad=False):
    make_image_folder(tmp_path / "data", num_classes=3, per_class=per_class)
    if bad:
        add_bad_images(tmp_path / "data" / "class_2")
    data = load_image_dataset(str(tmp_path / "data"), val_split=0.5, seed=0)
    _, eval_tf = build_transforms({"input_size": (3, HEIGHT, WIDTH)}, augment=False)
    return ImageClassificationDataset(data.train, "image", "label", eval_tf, input_size=(3, HEIGHT, WIDTH))


def test_disk_cache_is_written_in_shards_once_then_reused(tmp_path, model, monkeypatch):
    monkeypatch.setattr(features_module, "SHARD_ROWS", 2)  # several shards from a few images
    images = small_split(tmp_path, bad=True)
    accelerator = Accelerator(cpu=True)
    first = load_or_extract_features(accelerator, model, images, key="k", cache_dir=tmp_path / "cache", batch_size=4)
    folder = tmp_path / "cache" / "k"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert len(manifest["shards"]) == -(-len(images) // 2) and manifest["rows"] == len(images)
    assert all(len(entry["xxh3_128"]) == 32 for entry in manifest["shards"])
    bad = {images.describe(int(r)) for r in first.shards.bad_rows}
    assert bad and all(Path(p).name in {"empty.jpg", "notes.jpg", "truncated.png"} for p in bad)
    batch = first.__getitems__(list(range(len(images))))
    with torch.no_grad():
        expected = backbone_features(model, torch.stack([images[i]["pixel_values"] for i in range(len(images))]))
    for row, sample in enumerate(batch):
        assert sample["valid"] == images[row]["valid"] and sample["labels"] == images.labels[row]
        if sample["valid"]:  # float16 storage: within its rounding (2^-11 relative)
            assert torch.allclose(sample["features"], expected[row], rtol=2**-10, atol=1e-6)

    def no_extraction(*args, **kwargs):
        raise AssertionError("the cached features should have been reused")

    monkeypatch.setattr(features_module, "extract_feature_shards", no_extraction)
    second = load_or_extract_features(accelerator, model, images, key="k", cache_dir=tmp_path / "cache", batch_size=4)
    assert torch.equal(second.shards.read(np.arange(len(images))), first.shards.read(np.arange(len(images))))


def test_storage_dtype_is_exact_enough_or_float32():
    assert features_module.storage_dtype(torch.tensor([1.0, 2.0]), "auto", "bf16") == torch.bfloat16
    assert features_module.storage_dtype(torch.tensor([1.0, 6e4]), "auto", "no") == torch.float16
    assert features_module.storage_dtype(torch.tensor([1.0, 7e4]), "auto", "no") == torch.float32  # overflows fp16
    assert features_module.storage_dtype(torch.tensor([1.0]), "float32", "no") == torch.float32


def train_frozen(tmp_path, name: str, weights, **overrides):
    config = dict(
        model="hubclf_alexnet_slim", data=str(tmp_path / "data"), output_dir=str(tmp_path / name), weights=str(weights),
        img_size=(HEIGHT, WIDTH), freeze="backbone", augment=False, epochs=3, batch_size=4, lr=1e-2,
        warmup_epochs=1, num_workers=0, seed=0, val_split=0.25,
    )  # fmt: skip
    return train(TrainConfig(**{**config, **overrides}))


def test_cached_and_uncached_frozen_training_give_the_same_classifier(tmp_path):
    make_image_folder(tmp_path / "data", num_classes=4, per_class=6)
    weights = pretrained_stand_in("hubclf_alexnet_slim", tmp_path / "backbone.safetensors")
    uncached = train_frozen(tmp_path, "off", weights, cache_features="off")
    in_memory = train_frozen(tmp_path, "memory", weights, cache_features="memory", feature_dtype="float32")
    on_disk = train_frozen(tmp_path, "disk", weights, cache_features="disk", feature_dtype="float32")
    assert uncached.final_metrics["top1"] > 0.5  # it did learn (chance: 0.25; seeds 0-4 reached 4 to 6 of 6)
    assert len(list((tmp_path / "disk" / "feature_cache").glob("*/manifest.json"))) == 2  # train and eval
    reference = load_file(uncached.final_model_dir / "model.safetensors")
    for result in (in_memory, on_disk):
        trained = load_file(result.final_model_dir / "model.safetensors")
        for key in ("head.fc.weight", "head.fc.bias"):
            assert torch.allclose(trained[key], reference[key], atol=1e-5), key
        assert result.final_metrics["top1"] == uncached.final_metrics["top1"]
        assert result.final_metrics["loss"] == pytest.approx(uncached.final_metrics["loss"], abs=1e-5)


def test_half_precision_features_train_the_head_as_float32_ones_do(tmp_path):
    """The default storage (float16 here: fp32 autocast, every value in range) against float32 features: the same
    predictions, and a classifier within float16's rounding of the float32 one after 3 epochs."""
    make_image_folder(tmp_path / "data", num_classes=4, per_class=6)
    weights = pretrained_stand_in("hubclf_alexnet_slim", tmp_path / "backbone.safetensors")
    half = train_frozen(tmp_path, "half", weights)  # --cache-features auto (disk), --feature-dtype auto
    full = train_frozen(tmp_path, "full", weights, feature_dtype="float32")
    manifests = [json.loads(p.read_text()) for p in (tmp_path / "half" / "feature_cache").glob("*/manifest.json")]
    assert {entry["dtype"] for m in manifests for entry in m["shards"]} == {"float16"}
    a, b = (load_file(r.final_model_dir / "model.safetensors") for r in (half, full))
    for key in ("head.fc.weight", "head.fc.bias"):
        scale = b[key].abs().max()
        assert (a[key] - b[key]).abs().max() <= 1e-3 * scale, key
    assert half.final_metrics["top1"] == full.final_metrics["top1"]
    assert half.final_metrics["loss"] == pytest.approx(full.final_metrics["loss"], rel=1e-3)


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "missing"])
def test_a_damaged_shard_is_reported_deleted_and_recomputed(tmp_path, model, caplog, damage, monkeypatch):
    monkeypatch.setattr(features_module, "SHARD_ROWS", 2)
    images = small_split(tmp_path, per_class=2)
    accelerator = Accelerator(cpu=True)
    first = load_or_extract_features(accelerator, model, images, key="k", cache_dir=tmp_path / "cache", batch_size=4)
    path = tmp_path / "cache" / "k" / "shard-00001.safetensors"
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) - 10])
    elif damage == "flipped byte":  # inside the tensor data, where safetensors itself notices nothing
        path.write_bytes(raw[:-5] + bytes([raw[-5] ^ 0x01]) + raw[-4:])
    else:
        path.unlink()
    with pytest.raises(ValueError, match=re.escape(str(path))):
        FeatureShards.open(tmp_path / "cache" / "k")

    caplog.set_level("WARNING", logger="hubclf.train.features")
    again = load_or_extract_features(accelerator, model, images, key="k", cache_dir=tmp_path / "cache", batch_size=4)
    assert "ignoring the damaged feature cache" in caplog.text and str(path) in caplog.text
    rows = np.arange(len(images))
    assert torch.equal(again.shards.read(rows), first.shards.read(rows))
    FeatureShards.open(tmp_path / "cache" / "k")  # verified again


def test_reading_a_feature_cache_keeps_memory_flat(tmp_path):
    """Every row of a 120 MB cache, read in shuffled batches: the process's resident memory grows by far less
    than the cache (an mmap'd cache would count every page read)."""
    import psutil

    rows, dim = 8192, 7680
    folder = tmp_path / "cache"
    folder.mkdir()
    entries = []
    for shard, start in enumerate(range(0, rows, 1024)):
        features = torch.randn(1024, dim).to(torch.float16)
        path = folder / features_module.shard_name(shard)
        save_file({"features": features, "labels": torch.zeros(1024, dtype=torch.int64),
                   "valid": torch.ones(1024, dtype=torch.uint8)}, path)  # fmt: skip
        entries.append({"file": path.name, "start": start, "stop": start + 1024, "dim": dim, "dtype": "float16",
                        "bytes": path.stat().st_size, "xxh3_128": features_module.file_checksum(path)})  # fmt: skip
        del features
    manifest = {"format": features_module.FEATURE_CACHE_FORMAT, "rows": rows, "dim": dim, "shard_rows": 1024,
                "shards": entries}  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest))
    dataset = FeatureDataset(FeatureShards.open(folder))
    process = psutil.Process()
    before = process.memory_info().rss
    order = np.random.default_rng(0).permutation(rows)
    for first in range(0, rows, 64):
        batch = dataset.__getitems__(order[first : first + 64].tolist())
    del batch
    grown = process.memory_info().rss - before
    assert grown < 30 * 2**20, f"reading the cache grew RSS by {grown / 2**20:.0f} MiB (cache: 120 MiB)"


def test_a_killed_extraction_resumes_with_the_shards_still_missing(tmp_path):
    """SIGKILL right after the first shard file: the rerun extracts only the others (SHARD_ROWS made 4 in both runs)."""
    make_image_folder(tmp_path / "data", num_classes=2, per_class=8)
    log = tmp_path / "points.log"
    script = (
        "import sys, hubclf.train.features as f; f.SHARD_ROWS = 4; from hubclf.cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    args = ["train", "--model", "hubclf_alexnet_slim", "--no-pretrained", "--img-size", "64", "64", "--epochs", "1",
            "--batch-size", "4", "--num-workers", "0", "--freeze", "backbone", "--no-augment", "--val-split", "0.25",
            "--data", str(tmp_path / "data"), "--output-dir", str(tmp_path / "out")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HUBCLF_FAULT_POINT": "features.shard_written:2"}
    killed = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    written = sorted((tmp_path / "out" / "feature_cache").glob("*/shard-*.json"))
    assert len(written) == 1  # the second shard file was killed before its checksum: it is redone
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HUBCLF_FAULT_LOG": str(log)}
    resumed = subprocess.run([sys.executable, "-c", script, *args, "--resume", "latest"], env=env,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    shards_written = log.read_text().count("features.shard_written")
    assert shards_written == 2 + 1  # train: 12 rows = 3 shards, 1 of them kept; eval: 4 rows = 1 shard
