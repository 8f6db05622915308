"""Transfer-learning switches for any timm model: freeze the backbone (feature extraction), freeze up to a stage,
unfreeze, count. They use timm's generic contract only (``get_classifier()``, module names), so they work the
same for hubclf's AlexNet/VGG and for timm's ResNet, EfficientNet, ConvNeXt, ViT...

    model = timm.create_model("resnet18", pretrained=True, num_classes=8)
    hubclf.freeze(model)                     # only the new classifier trains
    hubclf.freeze(model, up_to="layer2")     # the stem and the first two stages stay fixed
    trainable, total = hubclf.param_counts(model)
"""

from __future__ import annotations

import torch.nn as nn

BACKBONE = "backbone"


def classifier_modules(model: nn.Module) -> list[nn.Module]:
    """The module(s) ``model.get_classifier()`` names: one for most models, two for distilled ones (DeiT, LeViT).

        [fc] = classifier_modules(timm.create_model("resnet18", num_classes=8))
    """
    classifier = model.get_classifier()
    modules = list(classifier) if isinstance(classifier, (tuple, list)) else [classifier]
    if not modules or not all(isinstance(m, nn.Module) for m in modules):
        raise TypeError(
            f"{type(model).__name__}.get_classifier() returned {type(classifier).__name__}, not a module: "
            "hubclf cannot tell its classifier from its backbone"
        )
    return modules


def classifier_parameter_ids(model: nn.Module) -> set[int]:
    """``id()`` of every parameter of the classifier, to tell head parameters from backbone ones."""
    return {id(p) for module in classifier_modules(model) for p in module.parameters()}


def freeze(model: nn.Module, up_to: str = BACKBONE) -> nn.Module:
    """Stop gradients for the backbone (``up_to="backbone"``: everything but ``model.get_classifier()``) or for
    every module registered up to and including the named one and its submodules (e.g. ``"features.5"`` for
    AlexNet, ``"layer2"`` for a ResNet, ``"stages.1"`` for a ConvNeXt). Returns ``model``.

    Frozen BatchNorm layers are kept in eval mode, also after a later ``model.train()``, so their running
    statistics never change: a forward pre-hook puts a BatchNorm whose parameters are all frozen back in eval
    mode (it does nothing once ``unfreeze`` makes them trainable again).
    """
    if up_to == BACKBONE:
        classifier = classifier_parameter_ids(model)
        for param in model.parameters():
            param.requires_grad_(id(param) in classifier)
    else:
        names = [name for name, _ in model.named_modules() if name]
        if up_to not in names:
            stages = [info["module"] for info in getattr(model, "feature_info", None) or [] if isinstance(info, dict)]
            raise ValueError(
                f"cannot freeze up to {up_to!r}: no such module in {type(model).__name__}. "
                f"Use {BACKBONE!r} or a module name, e.g. one of the stage ends {stages}"
            )
        reached = False
        # named_modules() lists a module before its submodules, so the named one's children come after it.
        for name, module in model.named_modules():
            inside = name == up_to or name.startswith(up_to + ".")
            if reached and not inside:
                break
            reached = reached or inside
            for param in module.parameters(recurse=False):
                param.requires_grad_(False)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and _is_frozen(module):
            if _eval_when_frozen not in module._forward_pre_hooks.values():
                module.register_forward_pre_hook(_eval_when_frozen)
    # Frozen BatchNorm layers switch to eval right away.
    return keep_frozen_batchnorm_in_eval(model.train(model.training))


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
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and _is_frozen(module):
            module.eval()
    return model


def _is_frozen(module: nn.Module) -> bool:
    params = list(module.parameters())
    return bool(params) and not any(p.requires_grad for p in params)


def _eval_when_frozen(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook of frozen BatchNorm layers: a ``model.train()`` on a plain timm model must not make them
    update their running statistics (hubclf's own models also do this in ``train()``)."""
    if module.training and _is_frozen(module):
        module.eval()


def param_counts(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts, e.g. ``(32776, 57036616)`` for a frozen 8-class AlexNet."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
