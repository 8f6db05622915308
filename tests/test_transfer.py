"""freeze / unfreeze / param_counts: what trains, what doesn't, and BatchNorm statistics under a frozen backbone."""

from __future__ import annotations

import pytest
import timm
import torch

import hubclf


def test_frozen_backbone_gets_no_gradient():
    model = timm.create_model("hubclf_alexnet", num_classes=8)
    hubclf.freeze(model)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    for name, param in model.named_parameters():
        if name.startswith("head.fc."):
            assert param.requires_grad and param.grad is not None and param.grad.abs().sum() > 0
        else:
            assert not param.requires_grad and param.grad is None, name
    trainable, total = hubclf.param_counts(model)
    assert trainable == 4096 * 8 + 8
    assert total == sum(p.numel() for p in model.parameters())


def test_freeze_up_to_a_stage():
    model = timm.create_model("hubclf_vgg11_bn_slim", num_classes=4)
    hubclf.freeze(model, up_to="features.5")  # conv, bn, relu, pool, conv, bn
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias",
                      "features.4.weight", "features.4.bias", "features.5.weight", "features.5.bias"}
    with pytest.raises(ValueError, match=r"no such module.*features\.13"):
        hubclf.freeze(model, up_to="stage9")


def test_frozen_batchnorm_stays_in_eval_and_keeps_its_statistics():
    model = timm.create_model("hubclf_vgg11_bn_slim", num_classes=4)
    hubclf.freeze(model)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(bn.training for bn in bns)
    before = [bn.running_mean.clone() for bn in bns]
    model(torch.randn(4, 3, 32, 32))
    assert all(torch.equal(b, bn.running_mean) for b, bn in zip(before, bns, strict=True))

    hubclf.unfreeze(model)
    assert all(bn.training for bn in bns)
    assert hubclf.param_counts(model)[0] == hubclf.param_counts(model)[1]


def test_freeze_up_to_a_stage_freezes_its_submodules_in_any_timm_model():
    model = timm.create_model("resnet18", num_classes=4)
    hubclf.freeze(model, up_to="layer2")
    frozen = {n.split(".")[0] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "bn1", "layer1", "layer2"}  # layer2's blocks too, not only its direct parameters
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith(("layer3.", "layer4.", "fc.")))
    with pytest.raises(ValueError, match=r"no such module.*'layer1', 'layer2'"):
        hubclf.freeze(model, up_to="features.5")


def test_frozen_batchnorm_of_a_plain_timm_model_survives_train():
    # timm's ResNet has no train() override: a forward pre-hook keeps its frozen BatchNorm layers in eval mode.
    model = timm.create_model("resnet18", num_classes=4)
    hubclf.freeze(model)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [(bn.running_mean.clone(), bn.num_batches_tracked.clone()) for bn in bns]
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    assert not any(bn.training for bn in bns)
    assert all(torch.equal(m, bn.running_mean) and torch.equal(t, bn.num_batches_tracked)
               for (m, t), bn in zip(before, bns, strict=True))  # fmt: skip
    assert model.fc.weight.grad is not None and model.conv1.weight.grad is None

    hubclf.unfreeze(model)
    model(torch.randn(4, 3, 32, 32))
    assert all(bn.training and bn.num_batches_tracked == 1 for bn in bns)  # trainable again: statistics move


def test_a_classifier_that_is_not_a_module_is_a_clear_error():
    model = timm.create_model("deit_tiny_distilled_patch16_224", num_classes=4, img_size=32)
    hubclf.freeze(model)  # two classifier heads, both train
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"head", "head_dist"}

    class Odd(torch.nn.Module):
        def get_classifier(self):
            return "fc"

    with pytest.raises(TypeError, match="get_classifier.. returned str, not a module"):
        hubclf.freeze(Odd())
