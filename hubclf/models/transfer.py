"""Transfer-learning switches: freeze the backbone (feature extraction), freeze up to a stage, unfreeze, count.

    model = timm.create_model("hubclf_vgg11", pretrained=True, num_classes=8)
    hubclf.freeze(model)                       # only the new classifier trains
    hubclf.freeze(model, up_to="features.5")   # the first two conv stages stay fixed
    trainable, total = hubclf.param_counts(model)
"""

from __future__ import annotations

import torch.nn as nn

BACKBONE = "backbone"


def freeze(model: nn.Module, up_to: str = BACKBONE) -> nn.Module:
    """Stop gradients for the backbone (``up_to="backbone"``: everything but ``model.get_classifier()``) or for
    every module registered up to and including the named one (e.g. ``"features.5"``). Returns ``model``.

    hubclf models keep frozen BatchNorm layers in eval mode, so their running statistics never change.
    """
    if up_to == BACKBONE:
        classifier = {id(p) for p in model.get_classifier().parameters()}
        for param in model.parameters():
            param.requires_grad_(id(param) in classifier)
    else:
        names = [name for name, _ in model.named_modules() if name]
        if up_to not in names:
            stages = [info["module"] for info in getattr(model, "feature_info", [])]
            raise ValueError(
                f"cannot freeze up to {up_to!r}: no such module in {type(model).__name__}. "
                f"Use {BACKBONE!r} or a module name, e.g. one of the stage ends {stages}"
            )
        for name, module in model.named_modules():
            for param in module.parameters(recurse=False):
                param.requires_grad_(False)
            if name == up_to:
                break
    # Re-apply the mode so frozen BatchNorm layers switch to eval right away.
    return model.train(model.training)


def unfreeze(model: nn.Module) -> nn.Module:
    """Make every parameter trainable again (full fine-tuning). Returns ``model``."""
    for param in model.parameters():
        param.requires_grad_(True)
    return model.train(model.training)


def keep_frozen_batchnorm_in_eval(model: nn.Module) -> nn.Module:
    """Put every BatchNorm layer whose parameters are all frozen in eval mode, so its running statistics stay put.

    hubclf models call this from ``train()``; the trainer calls it for any timm model. Returns ``model``.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                module.eval()
    return model


def param_counts(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts, e.g. ``(32776, 57036360)`` for a frozen 8-class AlexNet."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
