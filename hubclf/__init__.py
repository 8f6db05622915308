"""hubclf: turn an image folder into a published, reusable timm classifier.

Importing hubclf makes its architectures (``hubclf_alexnet``, ``hubclf_vgg11``...) known to timm, at once when timm is
already imported, else the moment it is::

    import hubclf, timm
    model = timm.create_model("hubclf_alexnet", pretrained=True, num_classes=8, img_size=(448, 224))

The public verbs are imported on first use, so ``import hubclf`` (and ``hubclf --help``) stay fast::

    result = hubclf.train(hubclf.TrainConfig(model="hubclf_alexnet", data="photos/", output_dir="out"))
    hubclf.push_to_hub(result.best_model_dir, "me/photos-alexnet")
    model = hubclf.from_pretrained("me/photos-alexnet")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hubclf import _timm_hook
from hubclf._version import __version__

if TYPE_CHECKING:  # what the names below resolve to, for type checkers and the API reference
    from hubclf.hub import from_pretrained, push_to_hub, save_pretrained
    from hubclf.models.transfer import freeze, param_counts, unfreeze
    from hubclf.train.config import TrainConfig

_timm_hook.install()

# Public name -> the module that defines it; imported on first access (PEP 562).
_LAZY = {
    "freeze": "hubclf.models.transfer",
    "unfreeze": "hubclf.models.transfer",
    "param_counts": "hubclf.models.transfer",
    "save_pretrained": "hubclf.hub",
    "push_to_hub": "hubclf.hub",
    "from_pretrained": "hubclf.hub",
    "TrainConfig": "hubclf.train.config",
}

__all__ = [
    "freeze", "unfreeze", "param_counts", "save_pretrained", "push_to_hub", "from_pretrained", "TrainConfig",
    "train", "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name == "train":  # the package hubclf.train, which is also callable: hubclf.train(TrainConfig(...))
        value = importlib.import_module("hubclf.train")
    else:
        raise AttributeError(f"module 'hubclf' has no attribute {name!r}")
    globals()[name] = value  # found once, then an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
