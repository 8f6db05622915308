"""VGG11 (with and without BatchNorm) as timm models, in torchvision's layer layout.

Paper: `Very Deep Convolutional Networks for Large-Scale Image Recognition` - https://arxiv.org/abs/1409.1556

    import hubclf, timm
    model = timm.create_model("hubclf_vgg11", pretrained=True, num_classes=8, img_size=(448, 224))

Unlike timm's own ``vgg11`` (whose head is a 7×7 conv MLP), the classic variants here keep torchvision's
7×7 adaptive average pool + 4096-4096 MLP, which is exactly what torchvision's checkpoints contain.
The ``_slim`` variants replace that MLP (120M of VGG11's 133M parameters) with global pool + one linear layer.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model

from hubclf.models._base import ConvClassifier, build_classifier, remap_torchvision_state_dict

__all__ = ["VGG"]

# Configuration "A" of the paper: conv widths, "M" = 2×2 max pool.
VGG11_LAYERS: list[int | str] = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class VGG(ConvClassifier):
    """VGG with timm's model contract (``forward_features``/``forward_head``, ``reset_classifier``, ...)."""

    # Five 2×2 max pools: anything under 32 px would pool to nothing.
    min_input_size = (32, 32)

    def __init__(
        self,
        layers: list[int | str] = VGG11_LAYERS,
        num_classes: int = 1000,
        in_chans: int = 3,
        batch_norm: bool = False,
        head_type: str = "classic",
        global_pool: str = "avg",
        drop_rate: float = 0.5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        dd = dict(device=device, dtype=dtype)
        modules: list[nn.Module] = []
        feature_info = []
        chs, reduction = in_chans, 1
        for spec in layers:
            if spec == "M":
                # Tap each stage at its last activation, before the pool halves it (timm's VGG convention).
                feature_info.append(dict(num_chs=chs, reduction=reduction, module=f"features.{len(modules) - 1}"))
                modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
                reduction *= 2
                continue
            modules.append(nn.Conv2d(chs, int(spec), kernel_size=3, padding=1, **dd))
            if batch_norm:
                modules.append(nn.BatchNorm2d(int(spec), **dd))
            modules.append(nn.ReLU(inplace=True))
            chs = int(spec)
        feature_info.append(dict(num_chs=chs, reduction=reduction, module=f"features.{len(modules) - 1}"))
        super().__init__(
            nn.Sequential(*modules),
            feature_info,
            num_classes=num_classes,
            in_chans=in_chans,
            head_type=head_type,
            grid_size=(7, 7),
            global_pool=global_pool,
            drop_rate=drop_rate,
            dropout_first=False,
            **dd,
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's VGG initialisation, so a model trained from scratch starts where torchvision's would.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)


# torchvision's `classifier` Sequential: Linear(.0), ReLU, Dropout, Linear(.3), ReLU, Dropout, Linear(.6)
_TORCHVISION_RENAMES = {"classifier.0": "head.fc1", "classifier.3": "head.fc2", "classifier.6": "head.fc"}


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map a torchvision VGG state dict (or a hubclf one) onto ``model``'s keys."""
    return remap_torchvision_state_dict(state_dict, model, _TORCHVISION_RENAMES)


def _create_vgg(variant: str, pretrained: bool = False, **kwargs: Any) -> VGG:
    # Five stage outputs by default; index 5 (the final max pool) can be asked for through out_indices.
    return build_classifier(
        VGG, variant, pretrained, filter_fn=checkpoint_filter_fn, default_out_indices=(0, 1, 2, 3, 4), **kwargs
    )


def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "min_input_size": (3, 32, 32),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "features.0",
        "classifier": "head.fc",
        "license": "bsd-3-clause",
        "paper_ids": "arXiv:1409.1556",
        "origin_url": "https://github.com/pytorch/vision",
        **kwargs,
    }


_TV_URLS = {
    "vgg11": "https://download.pytorch.org/models/vgg11-8a719046.pth",
    "vgg11_bn": "https://download.pytorch.org/models/vgg11_bn-6002323d.pth",
}

default_cfgs = generate_default_cfgs(
    {
        "hubclf_vgg11.tv_in1k": _cfg(url=_TV_URLS["vgg11"]),
        "hubclf_vgg11_bn.tv_in1k": _cfg(url=_TV_URLS["vgg11_bn"]),
        # torchvision ships no slim head: the weights are the conv backbone only, hence num_classes=0.
        "hubclf_vgg11_slim.tv_in1k": _cfg(url=_TV_URLS["vgg11"], num_classes=0),
        "hubclf_vgg11_bn_slim.tv_in1k": _cfg(url=_TV_URLS["vgg11_bn"], num_classes=0),
    }
)


@register_model
def hubclf_vgg11(pretrained: bool = False, **kwargs: Any) -> VGG:
    """VGG11 with torchvision's classic head: 7×7 adaptive pool + 4096-4096 MLP + linear classifier."""
    return _create_vgg("hubclf_vgg11", pretrained=pretrained, **kwargs)


@register_model
def hubclf_vgg11_bn(pretrained: bool = False, **kwargs: Any) -> VGG:
    """VGG11 with BatchNorm after every conv, classic head."""
    return _create_vgg("hubclf_vgg11_bn", pretrained=pretrained, batch_norm=True, **kwargs)


@register_model
def hubclf_vgg11_slim(pretrained: bool = False, **kwargs: Any) -> VGG:
    """VGG11 conv features + global pool, dropout and a single linear classifier."""
    return _create_vgg("hubclf_vgg11_slim", pretrained=pretrained, head_type="slim", **kwargs)


@register_model
def hubclf_vgg11_bn_slim(pretrained: bool = False, **kwargs: Any) -> VGG:
    """VGG11-BN conv features + global pool, dropout and a single linear classifier."""
    return _create_vgg("hubclf_vgg11_bn_slim", pretrained=pretrained, batch_norm=True, head_type="slim", **kwargs)
