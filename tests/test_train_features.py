"""hubclf.train.features: frozen-backbone features, their cache key, the disk cache, and cached == uncached."""

from __future__ import annotations

import copy
import importlib
import re

import pytest
import timm
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from hubclf.data.dataset import ImageClassificationDataset
from hubclf.data.images import build_transforms
from hubclf.data.splits import load_image_dataset
from hubclf.train import TrainConfig, train
from hubclf.train.features import (
    backbone_features,
    check_frozen_head,
    feature_cache_key,
    load_feature_cache,
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


def test_disk_cache_is_written_once_then_reused(tmp_path, model, monkeypatch):
    make_image_folder(tmp_path / "data", num_classes=3, per_class=3)
    bad = add_bad_images(tmp_path / "data" / "class_2")
    data = load_image_dataset(str(tmp_path / "data"), val_split=0.5, seed=0)
    _, eval_tf = build_transforms({"input_size": (3, HEIGHT, WIDTH)}, augment=False)
    images = ImageClassificationDataset(data.train, "image", "label", eval_tf, input_size=(3, HEIGHT, WIDTH))
    accelerator = Accelerator(cpu=True)
    loader = accelerator.prepare(DataLoader(images, batch_size=4))
    key = feature_cache_key(weights=weights_fingerprint(model), transform=eval_tf, data_fingerprint="d", rows=6)

    first = load_or_extract_features(accelerator, model, loader, key=key, cache_dir=tmp_path / "cache", desc="t")
    assert (tmp_path / "cache" / f"{key}.safetensors").is_file()
    assert first.features.shape == (len(images) - len(first.bad_rows), model.head_hidden_size)
    in_this_split = [images.describe(i) for i in range(len(images)) if images.describe(i) in {str(p) for p in bad}]
    assert in_this_split  # the stratified half holds at least one of the three
    assert sorted(images.describe(r) for r in first.bad_rows) == sorted(in_this_split)
    assert torch.equal(first.rows, first.rows.sort().values)  # row order, whatever the batching

    def no_extraction(*args, **kwargs):
        raise AssertionError("the cached features should have been reused")

    monkeypatch.setattr(features_module, "extract_features", no_extraction)
    second = load_or_extract_features(accelerator, model, loader, key=key, cache_dir=tmp_path / "cache", desc="t")
    assert torch.equal(first.features, second.features) and torch.equal(first.labels, second.labels)


def test_cached_and_uncached_frozen_training_give_the_same_classifier(tmp_path):
    make_image_folder(tmp_path / "data", num_classes=4, per_class=6)
    weights = pretrained_stand_in("hubclf_alexnet_slim", tmp_path / "backbone.safetensors")

    def run(name: str, cache: str):
        config = TrainConfig(
            model="hubclf_alexnet_slim",
            data=str(tmp_path / "data"),
            output_dir=str(tmp_path / name),
            weights=str(weights),
            img_size=(HEIGHT, WIDTH),
            freeze="backbone",
            augment=False,
            cache_features=cache,
            epochs=3,
            batch_size=4,
            lr=1e-2,
            warmup_epochs=1,
            num_workers=0,
            seed=0,
            val_split=0.25,
        )
        return train(config)

    uncached, in_memory, on_disk = run("off", "off"), run("memory", "memory"), run("disk", "disk")
    assert uncached.final_metrics["top1"] > 0.5  # it did learn (chance: 0.25; seeds 0-4 reached 4 to 6 of 6)
    assert list((tmp_path / "disk" / "feature_cache").glob("*.safetensors"))  # train and eval features stored
    reference = load_file(uncached.final_model_dir / "model.safetensors")
    for result in (in_memory, on_disk):
        trained = load_file(result.final_model_dir / "model.safetensors")
        for key in ("head.fc.weight", "head.fc.bias"):
            assert torch.allclose(trained[key], reference[key], atol=1e-5), key
        assert result.final_metrics["top1"] == uncached.final_metrics["top1"]
        assert result.final_metrics["loss"] == pytest.approx(uncached.final_metrics["loss"], abs=1e-5)


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "no checksum"])
def test_a_damaged_cache_file_is_reported_deleted_and_recomputed(tmp_path, model, caplog, damage):
    make_image_folder(tmp_path / "data", num_classes=3, per_class=2)
    data = load_image_dataset(str(tmp_path / "data"), val_split=0.5, seed=0)
    _, eval_tf = build_transforms({"input_size": (3, HEIGHT, WIDTH)}, augment=False)
    images = ImageClassificationDataset(data.train, "image", "label", eval_tf, input_size=(3, HEIGHT, WIDTH))
    accelerator = Accelerator(cpu=True)
    loader = accelerator.prepare(DataLoader(images, batch_size=4))
    key = "k" * 32
    first = load_or_extract_features(accelerator, model, loader, key=key, cache_dir=tmp_path / "cache", desc="t")
    path = tmp_path / "cache" / f"{key}.safetensors"
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) - 10])
    elif damage == "flipped byte":  # inside the tensor data, where safetensors itself notices nothing
        path.write_bytes(raw[:-5] + bytes([raw[-5] ^ 0x01]) + raw[-4:])
    else:
        fields = ("features", "labels", "rows", "bad_rows")
        save_file({name: getattr(first, name).contiguous() for name in fields}, path)  # valid, but unverifiable
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_feature_cache(path)

    caplog.set_level("WARNING", logger="hubclf.train.features")
    again = load_or_extract_features(accelerator, model, loader, key=key, cache_dir=tmp_path / "cache", desc="t")
    assert "ignoring the damaged feature cache" in caplog.text and str(path) in caplog.text
    assert torch.equal(again.features, first.features)
    assert torch.equal(load_feature_cache(path).features, first.features)  # recomputed and stored again
