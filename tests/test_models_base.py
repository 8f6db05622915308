"""timm's model contract, checked on every hubclf variant, and the errors a user can run into."""

from __future__ import annotations

import pytest
import timm
import torch

import hubclf  # noqa: F401

ALL = ["hubclf_alexnet", "hubclf_alexnet_slim", "hubclf_vgg11", "hubclf_vgg11_bn", "hubclf_vgg11_slim",
       "hubclf_vgg11_bn_slim"]


def _small(name: str) -> tuple[int, int]:
    return (96, 64) if "alexnet" in name else (64, 32)  # rectangular, cheap, above each family's minimum


def test_registry_lists_every_variant_with_torchvision_weights():
    assert timm.list_models("hubclf_*") == sorted(ALL)
    assert timm.list_pretrained("hubclf_*") == sorted(f"{n}.tv_in1k" for n in ALL)
    for name in ALL:
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.url.startswith("https://download.pytorch.org/models/")
        assert cfg.first_conv == "features.0" and cfg.classifier == "head.fc" and cfg.license == "bsd-3-clause"
        assert cfg.min_input_size and cfg.pool_size and cfg.crop_pct and cfg.interpolation and cfg.mean and cfg.std


@pytest.mark.parametrize("name", ALL)
def test_contract(name):
    h, w = _small(name)
    model = timm.create_model(name, num_classes=8, img_size=(h, w)).eval()
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape[1] == model.num_features
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.head_hidden_size)
        assert model.forward_head(feats).shape == (2, 8)
    assert model.get_classifier().out_features == 8
    assert model.pretrained_cfg["input_size"] == (3, h, w)
    config = timm.data.resolve_data_config({}, model=model)
    assert config["input_size"] == (3, h, w)
    transform = timm.data.create_transform(**config)
    from PIL import Image

    assert transform(Image.new("RGB", (300, 500))).shape == (3, h, w)

    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, model.head_hidden_size)
    model.reset_classifier(5, global_pool="max")
    assert model.global_pool == "max"
    with torch.no_grad():
        assert model(x).shape == (2, 5)
    assert set(model.group_matcher()) == {"stem", "blocks"}


@pytest.mark.parametrize("name", ["hubclf_alexnet", "hubclf_vgg11_bn"])
def test_features_only(name):
    h, w = _small(name)
    model = timm.create_model(name, features_only=True).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, h * 2, w * 2))
    assert [o.shape[1] for o in outs] == model.feature_info.channels()
    for out, reduction in zip(outs, model.feature_info.reduction(), strict=True):
        assert out.shape[2] == (h * 2) // reduction or "alexnet" in name  # AlexNet's convs don't divide evenly


def test_zero_classes_gives_pre_logits_features():
    model = timm.create_model("hubclf_alexnet", num_classes=0).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4096)


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = timm.create_model("hubclf_vgg11_slim", num_classes=3, drop_rate=0.0)
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    expected = model.features[0].weight.grad.clone()
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    assert torch.allclose(model.features[0].weight.grad, expected, atol=1e-6)


def test_in_chans_adapts_the_first_conv(torchvision_checkpoint):
    path, _ = torchvision_checkpoint("alexnet")
    model = timm.create_model("hubclf_alexnet_slim", pretrained=True, in_chans=1, num_classes=2,
                              pretrained_cfg_overlay=dict(file=str(path)))
    assert model.features[0].weight.shape == (64, 1, 11, 11)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, 64, 64)).shape == (1, 2)


def test_slim_pretrained_is_backbone_only(torchvision_checkpoint):
    path, reference = torchvision_checkpoint("vgg11")
    model = timm.create_model("hubclf_vgg11_slim", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert model.num_classes == 0  # torchvision has no slim head to load
    assert torch.equal(model.features[0].weight, reference.features[0].weight)


# ---- errors ---------------------------------------------------------------------------------------------------
def test_bad_inputs_say_what_was_expected():
    model = timm.create_model("hubclf_alexnet_slim", num_classes=2).eval()
    with pytest.raises(ValueError, match=r"4-D batch.*unsqueeze"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="expects 3 input channels, got 1"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="minimum 63×63"):
        timm.create_model("hubclf_alexnet", img_size=(448, 40))
    with pytest.raises(ValueError, match="img_size must be"):
        timm.create_model("hubclf_alexnet", img_size="big")


def test_unknown_names_give_timms_errors():
    with pytest.raises(RuntimeError, match="Unknown model"):
        timm.create_model("hubclf_alexnet_huge")
    with pytest.raises(RuntimeError, match="Invalid pretrained tag"):
        timm.create_model("hubclf_alexnet.nope")


def test_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        timm.create_model("hubclf_alexnet", pretrained=True, pretrained_cfg_overlay=dict(file=str(missing)))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_corrupt_weights_file_is_named(tmp_path, suffix):
    corrupt = tmp_path / f"corrupt{suffix}"
    corrupt.write_bytes(b"\x00not really weights")
    with pytest.raises(RuntimeError, match=f"corrupt{suffix}"):
        timm.create_model("hubclf_alexnet", pretrained=True, pretrained_cfg_overlay=dict(file=str(corrupt)))


def test_checkpoint_missing_backbone_tensors_is_refused(torchvision_checkpoint, tmp_path):
    """timm loads non-strictly when it swaps the head; hubclf must still refuse a partial backbone."""
    path, _ = torchvision_checkpoint("alexnet")
    state_dict = torch.load(path, weights_only=True)
    del state_dict["features.3.weight"]
    partial = tmp_path / "partial.pth"
    torch.save(state_dict, partial)
    with pytest.raises(RuntimeError, match=r"partial.pth.*missing 1 tensor.*features\.3\.weight"):
        timm.create_model("hubclf_alexnet", pretrained=True, num_classes=8,
                          pretrained_cfg_overlay=dict(file=str(partial)))
