"""AlexNet as a timm model, in torchvision's layer layout so torchvision's ImageNet weights load unchanged.

Paper: `One weird trick for parallelizing convolutional neural networks` - https://arxiv.org/abs/1404.5997

    import hubclf, timm
    model = timm.create_model("hubclf_alexnet", pretrained=True, num_classes=8, img_size=(448, 224))

``hubclf_alexnet`` keeps the classic 4096-4096 MLP head behind a 6×6 adaptive average pool;
``hubclf_alexnet_slim`` swaps it for global pooling, dropout and one linear layer (57M -> 2.5M parameters).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model

from hubclf.models._base import ConvClassifier, build_classifier, remap_torchvision_state_dict

__all__ = ["AlexNet"]


class AlexNet(ConvClassifier):
    """AlexNet with timm's model contract (``forward_features``/``forward_head``, ``reset_classifier``, ...)."""

    # conv 11/4 -> pool 3/2 -> pool 3/2 -> pool 3/2 must leave at least one pixel: 63 is the smallest side.
    min_input_size = (63, 63)

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        head_type: str = "classic",
        global_pool: str = "avg",
        drop_rate: float = 0.5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        dd = dict(device=device, dtype=dtype)
        # Same indices as torchvision's `features`, so its state-dict keys map one to one.
        features = nn.Sequential(
            nn.Conv2d(in_chans, 64, kernel_size=11, stride=4, padding=2, **dd),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2, **dd),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1, **dd),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1, **dd),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1, **dd),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        feature_info = [
            dict(num_chs=64, reduction=4, module="features.1"),
            dict(num_chs=192, reduction=8, module="features.4"),
            dict(num_chs=256, reduction=16, module="features.11"),
            dict(num_chs=256, reduction=32, module="features.12"),
        ]
        super().__init__(
            features,
            feature_info,
            num_classes=num_classes,
            in_chans=in_chans,
            head_type=head_type,
            grid_size=(6, 6),
            global_pool=global_pool,
            drop_rate=drop_rate,
            dropout_first=True,
            **dd,
        )


# torchvision's `classifier` Sequential: Dropout, Linear(.1), ReLU, Dropout, Linear(.4), ReLU, Linear(.6)
_TORCHVISION_RENAMES = {"classifier.1": "head.fc1", "classifier.4": "head.fc2", "classifier.6": "head.fc"}


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map a torchvision AlexNet state dict (or a hubclf one) onto ``model``'s keys."""
    return remap_torchvision_state_dict(state_dict, model, _TORCHVISION_RENAMES)


def _create_alexnet(variant: str, pretrained: bool = False, **kwargs: Any) -> AlexNet:
    return build_classifier(
        AlexNet, variant, pretrained, filter_fn=checkpoint_filter_fn, default_out_indices=(0, 1, 2, 3), **kwargs
    )


def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "min_input_size": (3, 63, 63),
        "pool_size": (6, 6),
        "crop_pct": 0.875,
        "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "features.0",
        "classifier": "head.fc",
        "license": "bsd-3-clause",
        "paper_ids": "arXiv:1404.5997",
        "origin_url": "https://github.com/pytorch/vision",
        **kwargs,
    }


_TV_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"

default_cfgs = generate_default_cfgs(
    {
        "hubclf_alexnet.tv_in1k": _cfg(url=_TV_URL),
        # torchvision ships no slim head: the weights are the conv backbone only, hence num_classes=0.
        "hubclf_alexnet_slim.tv_in1k": _cfg(url=_TV_URL, num_classes=0),
    }
)


@register_model
def hubclf_alexnet(pretrained: bool = False, **kwargs: Any) -> AlexNet:
    """AlexNet with torchvision's classic head: 6×6 adaptive pool + 4096-4096 MLP + linear classifier."""
    return _create_alexnet("hubclf_alexnet", pretrained=pretrained, **kwargs)


@register_model
def hubclf_alexnet_slim(pretrained: bool = False, **kwargs: Any) -> AlexNet:
    """AlexNet conv features + global pool, dropout and a single linear classifier."""
    return _create_alexnet("hubclf_alexnet_slim", pretrained=pretrained, head_type="slim", **kwargs)
