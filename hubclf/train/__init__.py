"""``hubclf train``: fine-tune or feature-extract a timm/hubclf classifier on a 🤗 dataset with Accelerate.

    import hubclf
    config = hubclf.TrainConfig(model="hubclf_alexnet", data="photos/", output_dir="out", img_size=(448, 224))
    result = hubclf.train(config)

The package is callable (``hubclf.train(config)``) and imports its parts on first use. Where they live: ``config``
(``TrainConfig``), ``api`` (``train``), ``setup`` (model, datasets, loaders), ``loop`` (the epochs), ``outputs``
(``best/``, ``final/``, ``metrics.jsonl``, ``TrainResult``), ``strategy`` (``--strategy auto``), ``lr_find``.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hubclf.train.api import train
    from hubclf.train.config import TrainConfig
    from hubclf.train.outputs import TrainResult
    from hubclf.train.safety import TrainingDiverged, TrainingInterrupted
    from hubclf.train.setup import create_model

_LAZY = {
    "TrainConfig": "hubclf.train.config",
    "train": "hubclf.train.api",
    "TrainResult": "hubclf.train.outputs",
    "TrainingDiverged": "hubclf.train.safety",
    "TrainingInterrupted": "hubclf.train.safety",
    "create_model": "hubclf.train.setup",
}

__all__ = ["TrainConfig", "train", "TrainResult", "TrainingDiverged", "TrainingInterrupted", "create_model"]


class _CallablePackage(types.ModuleType):
    """Makes ``hubclf.train`` both this package and the training function: ``hubclf.train(TrainConfig(...))``.

    Binding the function itself to ``hubclf.train`` would shadow the package, so ``import hubclf.train.setup``
    and ``mock.patch("hubclf.train.loop.…")`` would stop working.
    """

    def __call__(self, config: TrainConfig) -> TrainResult:
        from hubclf.train.api import train

        return train(config)

    def __getattr__(self, name: str) -> Any:
        if name not in _LAZY:
            raise AttributeError(f"module 'hubclf.train' has no attribute {name!r}")
        value = getattr(importlib.import_module(_LAZY[name]), name)
        setattr(self, name, value)
        return value


sys.modules[__name__].__class__ = _CallablePackage
