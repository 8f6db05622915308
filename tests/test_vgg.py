"""hubclf_vgg11 / hubclf_vgg11_bn against torchvision: same logits from the same weights, new heads."""

from __future__ import annotations

import pytest
import timm
import torch

import hubclf  # noqa: F401

VARIANTS = [("vgg11", "hubclf_vgg11"), ("vgg11_bn", "hubclf_vgg11_bn")]
RENAMES = {"classifier.0": "head.fc1", "classifier.3": "head.fc2"}


@pytest.mark.parametrize("arch,name", VARIANTS)
def test_logits_match_torchvision(torchvision_checkpoint, arch, name):
    path, reference = torchvision_checkpoint(arch)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("arch,name", VARIANTS)
def test_new_head_keeps_every_backbone_tensor(torchvision_checkpoint, arch, name):
    path, reference = torchvision_checkpoint(arch)
    model = timm.create_model(name, pretrained=True, num_classes=8, pretrained_cfg_overlay=dict(file=str(path)))
    ours = model.state_dict()
    for key, value in reference.state_dict().items():
        if key.startswith("classifier.6."):
            continue
        prefix = ".".join(key.split(".")[:2])
        assert torch.equal(ours[RENAMES.get(prefix, prefix) + key[len(prefix) :]], value), key
    assert ours["head.fc.weight"].shape == (8, 4096)


@pytest.mark.parametrize("name", ["hubclf_vgg11", "hubclf_vgg11_bn_slim"])
def test_rectangular_input(name):
    model = timm.create_model(name, num_classes=8, img_size=(448, 224)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 448, 224)).shape == (2, 8)
        assert model(torch.randn(2, 3, 64, 32)).shape == (2, 8)


def test_smallest_input_is_32():
    model = timm.create_model("hubclf_vgg11_slim", num_classes=3).eval()
    with pytest.raises(ValueError, match="minimum 32×32"):
        model(torch.randn(1, 3, 31, 64))
