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


# ---- forward_intermediates / prune_intermediate_layers (timm's feature API) -----------------------------------
@pytest.mark.parametrize("name", ["hubclf_alexnet_slim", "hubclf_vgg11_bn_slim"])
def test_forward_intermediates_returns_every_tap(name):
    h, w = _small(name)
    model = timm.create_model(name, num_classes=3).eval()
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
    assert [m.shape[1] for m in maps] == [info["num_chs"] for info in model.feature_info]
    for feature_map, info in zip(maps, model.feature_info, strict=True):
        assert feature_map.shape[0] == 2
        assert feature_map.shape[2] <= -(-h // info["reduction"]) and feature_map.shape[3] <= -(-w // info["reduction"])
    assert torch.equal(maps[-1], final)  # the last tap is the end of the conv stack, for both families


def test_forward_intermediates_indices_and_stop_early():
    model = timm.create_model("hubclf_alexnet_slim", num_classes=3).eval()
    x = torch.randn(1, 3, 80, 72)
    with torch.no_grad():
        _, every = model.forward_intermediates(x)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        picked = model.forward_intermediates(x, indices=[0, -2], intermediates_only=True)
        final, early = model.forward_intermediates(x, indices=[1], stop_early=True)
    assert [t.shape for t in last_two] == [t.shape for t in every[-2:]]
    assert torch.equal(picked[0], every[0]) and torch.equal(picked[1], every[2])
    assert torch.equal(early[0], every[1]) and torch.equal(final, every[1])  # stopped right after tap 1
    with pytest.raises(ValueError, match="NCHW"):
        model.forward_intermediates(x, output_fmt="NHWC")
    with pytest.raises(ValueError, match="minimum 63×63"):
        model.forward_intermediates(torch.randn(1, 3, 32, 32))


def test_forward_intermediates_with_grad_checkpointing_matches():
    torch.manual_seed(0)
    model = timm.create_model("hubclf_vgg11_slim", num_classes=3, drop_rate=0.0)
    x = torch.randn(2, 3, 32, 32)
    final, maps = model.forward_intermediates(x, indices=[1, 3])
    (final.sum() + sum(m.sum() for m in maps)).backward()
    expected = model.features[0].weight.grad.clone()
    model.zero_grad()
    model.set_grad_checkpointing(True)
    final2, maps2 = model.forward_intermediates(x, indices=[1, 3])
    (final2.sum() + sum(m.sum() for m in maps2)).backward()
    assert torch.allclose(final2, final) and all(torch.allclose(a, b) for a, b in zip(maps2, maps, strict=True))
    assert torch.allclose(model.features[0].weight.grad, expected, atol=1e-6)


@pytest.mark.parametrize("name", ["hubclf_alexnet", "hubclf_vgg11_slim"])
def test_prune_intermediate_layers_keeps_the_taps_and_drops_the_rest(name):
    h, w = _small(name)
    model = timm.create_model(name, num_classes=4).eval()
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        expected = model(x)
        taps = model.forward_intermediates(x, intermediates_only=True)
    assert model.prune_intermediate_layers(len(model.feature_info), prune_head=False) == list(
        range(len(model.feature_info)))
    with torch.no_grad():
        assert torch.equal(model(x), expected)  # nothing after the last tap, and the head was kept

    keep = model.prune_intermediate_layers([0, 1])
    assert keep == [0, 1]
    assert len(model.features) == model.feature_ends[1] + 1
    assert sum(p.numel() for p in model.head.parameters()) == 0 and model.num_classes == 0
    assert model.num_features == model.head_hidden_size == model.feature_info[1]["num_chs"]
    with torch.no_grad():
        maps = model.forward_intermediates(x, indices=keep, intermediates_only=True)
        assert torch.equal(maps[0], taps[0]) and torch.equal(maps[1], taps[1])
        assert torch.equal(model(x), taps[1])  # no pooling, no classifier: the tap itself
    model.reset_classifier(3, "avg")
    with torch.no_grad():
        assert model(x).shape == (2, 3)


def test_features_only_getter_prunes_and_scripts():
    from timm.models._features import FeatureGetterNet

    x = torch.randn(1, 3, 64, 64)
    getter = timm.create_model("hubclf_vgg11_slim", features_only=True, feature_cls="getter", out_indices=(1, 2)).eval()
    reference = timm.create_model("hubclf_vgg11_slim").eval()
    reference.load_state_dict(getter.model.state_dict(), strict=False)
    assert isinstance(getter, FeatureGetterNet) and len(getter.model.features) == reference.feature_ends[2] + 1
    with torch.no_grad():
        maps = getter(x)
        assert [m.shape for m in maps] == [(1, 128, 32, 32), (1, 256, 16, 16)]
        expected = reference.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(maps, expected, strict=True))
        scripted = torch.jit.script(getter)(x)
        assert all(torch.equal(a, b) for a, b in zip(scripted, maps, strict=True))


# ---- TorchScript, torch.fx, no pooling -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["hubclf_alexnet", "hubclf_vgg11_bn_slim"])
def test_torchscript_and_fx_give_the_eager_logits(name):
    h, w = _small(name)
    model = timm.create_model(name, num_classes=5).eval()
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        expected = model(x)
        scripted = torch.jit.script(model)
        assert torch.allclose(scripted(x), expected, atol=1e-5)
        traced = torch.fx.symbolic_trace(model)
        assert torch.allclose(traced(x), expected, atol=1e-5)
        assert torch.allclose(torch.jit.script(traced)(x), expected, atol=1e-5)
    with pytest.raises(ValueError, match="expects 3 input channels"):  # eager checks stay for eager users
        model(torch.randn(1, 1, h, w))


@pytest.mark.parametrize("name", ["hubclf_alexnet", "hubclf_alexnet_slim"])
def test_reset_classifier_without_pooling_returns_feature_maps(name):
    model = timm.create_model(name, num_classes=5).eval()
    x = torch.randn(2, 3, 80, 96)
    model.reset_classifier(0, "")
    assert model.global_pool == "" and model.num_classes == 0
    assert model.num_features == model.head_hidden_size == 256
    with torch.no_grad():
        assert torch.equal(model(x), model.forward_features(x))
        assert model(x).ndim == 4
    model.reset_classifier(5, "avg")
    assert model.head_hidden_size == (4096 if name == "hubclf_alexnet" else 256)
    with torch.no_grad():
        assert model(x).shape == (2, 5)
    unpooled = timm.create_model(name, num_classes=0, global_pool="").eval()
    with torch.no_grad():
        assert unpooled(x).shape == (2, 256, 1, 2)  # 80×96 input, reduction 32 with unpadded pools


def test_classic_head_refuses_to_classify_unpooled_features():
    model = timm.create_model("hubclf_alexnet", num_classes=0, global_pool="").eval()
    model.reset_classifier(3)  # keeps global_pool=''
    with pytest.raises(ValueError, match="global_pool='' leaves the features unpooled"), torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="'avg' or 'max'"):
        model.reset_classifier(3, "avgmax")


@pytest.mark.parametrize("name", ["hubclf_alexnet", "hubclf_vgg11_bn_slim"])
def test_factory_device_and_dtype_reach_every_tensor(name):
    model = timm.create_model(name, num_classes=3, device="meta", dtype=torch.float64)
    tensors = [*model.parameters(), *model.buffers()]
    assert all(t.device.type == "meta" for t in tensors)
    assert all(t.dtype == torch.float64 for t in tensors if t.is_floating_point())
    model.reset_classifier(7)
    assert model.get_classifier().weight.device.type == "meta"
    assert model.get_classifier().weight.dtype == torch.float64
