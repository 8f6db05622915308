"""hubclf.train.stages: what trains when, optimizer groups with discriminative LR, and the head stage's memory."""

from __future__ import annotations

import timm
import torch
from accelerate import Accelerator
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

from hubclf.train import TrainConfig
from hubclf.train.features import backbone_features
from hubclf.train.stages import (
    FULL,
    HEAD,
    PARTIAL,
    apply_stage,
    batch_logits,
    param_groups,
    set_stage_modes,
    stage_for_epoch,
)


def config(**overrides) -> TrainConfig:
    return TrainConfig(model="hubclf_vgg11_bn_slim", data="unused", output_dir="unused", epochs=4, **overrides)


def test_stage_per_epoch():
    assert [stage_for_epoch(config(), e) for e in range(4)] == [FULL] * 4
    assert [stage_for_epoch(config(freeze="backbone"), e) for e in range(4)] == [HEAD] * 4
    assert [stage_for_epoch(config(freeze="features.3"), e) for e in range(4)] == [PARTIAL] * 4
    staged = config(freeze="backbone", unfreeze_after=2)
    assert [stage_for_epoch(staged, e) for e in range(4)] == [HEAD, HEAD, FULL, FULL]


def test_head_stage_trains_only_the_classifier_with_the_backbone_in_eval_mode():
    model = timm.create_model("hubclf_vgg11_bn_slim", num_classes=3)
    trainable = apply_stage(model, HEAD, config(freeze="backbone"))
    assert trainable is model.get_classifier()
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"head.fc.weight", "head.fc.bias"}
    assert not any(m.training for m in model.features.modules())  # BatchNorm and dropout at inference behaviour
    assert trainable.training

    apply_stage(model, FULL, config())
    assert all(p.requires_grad for p in model.parameters()) and model.features[1].training


def test_partial_stage_keeps_frozen_batchnorm_in_eval_mode():
    model = timm.create_model("hubclf_vgg11_bn_slim", num_classes=3)
    apply_stage(model, PARTIAL, config(freeze="features.5"))
    assert not model.features[1].training and not model.features[1].weight.requires_grad  # frozen BN: eval
    assert model.features[9].training and model.features[9].weight.requires_grad  # trainable BN: train
    # Also for a plain timm model, whose train() knows nothing about frozen layers.
    resnet = timm.create_model("resnet18", num_classes=3)
    for p in resnet.bn1.parameters():
        p.requires_grad_(False)
    set_stage_modes(resnet, PARTIAL)
    assert not resnet.bn1.training and resnet.layer1[0].bn1.training


def test_param_groups_give_the_backbone_a_scaled_lr_and_no_decay_to_1d_params():
    model = timm.create_model("hubclf_alexnet_slim", num_classes=3)
    head_only = config(freeze="backbone")
    apply_stage(model, HEAD, head_only)
    groups = param_groups(model, head_only)
    assert sum(len(g["params"]) for g in groups) == 2  # the classifier only: the backbone never trains
    assert {(g["lr_scale"], g["weight_decay"]) for g in groups} == {(1.0, 0.01), (1.0, 0.0)}

    staged = config(freeze="backbone", unfreeze_after=1, backbone_lr_scale=0.1, lr=1e-3)
    groups = param_groups(model, staged)  # the backbone is frozen now but joins later: it must be in a group
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, param_group_fn=lambda m: param_groups(m, staged))
    scheduler, _ = create_scheduler_v2(optimizer, "cosine", num_epochs=4, step_on_epochs=False, updates_per_epoch=1)
    scheduler.step_update(0)
    lrs = {(g["lr_scale"], round(g["lr"], 12)) for g in optimizer.param_groups}
    assert lrs == {(1.0, 1e-3), (0.1, 1e-4)}  # timm's scheduler applies lr_scale on every update

    partial = config(freeze="features.3")
    apply_stage(model, PARTIAL, partial)
    trained = {id(p) for g in param_groups(model, partial) for p in g["params"]}
    assert id(model.features[0].weight) not in trained and id(model.features[6].weight) in trained


def test_head_stage_stores_no_backbone_activations():
    """What makes feature extraction cheap: backward keeps only the classifier's input."""
    torch.manual_seed(0)
    model = timm.create_model("hubclf_alexnet_slim", num_classes=8, img_size=(96, 64))
    accelerator = Accelerator(cpu=True)
    batch = {"pixel_values": torch.randn(4, 3, 96, 64)}

    def saved_bytes(stage: str) -> int:
        trainable = apply_stage(model, stage, config(freeze="backbone"))
        total = 0

        def pack(tensor):
            nonlocal total
            total += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            batch_logits(model, trainable, stage, batch, accelerator.autocast).sum().backward()
        return total

    head, full = saved_bytes(HEAD), saved_bytes(FULL)
    classifier_input = 4 * model.head_hidden_size * 4  # float32 features of the batch
    assert head <= classifier_input + model.get_classifier().weight.numel() * 4
    assert full > 50 * head


def test_a_bare_classifier_takes_bf16_features_under_bf16_autocast():
    """Under bf16 the frozen backbone's features are bf16; a classifier Accelerate did not wrap (the EMA model's,
    or one used outside training) must still take them, from images and from cached features alike."""

    class Bf16Accelerator:  # Accelerator.autocast() of a bf16 run, without touching Accelerate's global state
        def autocast(self):
            return torch.autocast("cpu", dtype=torch.bfloat16)

    torch.manual_seed(0)
    model = timm.create_model("hubclf_alexnet_slim", num_classes=3, img_size=(64, 64)).eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        features = backbone_features(model, pixels)
    assert features.dtype == torch.bfloat16
    classifier = model.get_classifier()
    from_images = batch_logits(model, classifier, HEAD, {"pixel_values": pixels}, Bf16Accelerator().autocast)
    from_cache = batch_logits(model, classifier, HEAD, {"features": features}, Bf16Accelerator().autocast)
    assert from_images.shape == (2, 3)
    assert torch.equal(from_images, from_cache)
