"""``hubclf train``: fine-tune or feature-extract a timm/hubclf classifier on a 🤗 dataset with Accelerate.

    import hubclf
    config = hubclf.TrainConfig(model="hubclf_alexnet", data="photos/", output_dir="out", img_size=(448, 224))
    result = hubclf.train(config)

Reusable pieces: ``hubclf.train.data`` (loading, column detection, robust decoding, transforms) and
``hubclf.train.metrics`` (``ClassificationMetrics``, ``evaluate``).
"""

import sys
import types

from hubclf.train.config import TrainConfig
from hubclf.train.loop import TrainingDiverged, TrainingInterrupted, TrainResult, create_model, train

__all__ = ["TrainConfig", "TrainResult", "TrainingDiverged", "TrainingInterrupted", "create_model", "train"]


class _CallablePackage(types.ModuleType):
    """Makes ``hubclf.train`` both this package and the training function: ``hubclf.train(TrainConfig(...))``.

    Binding the function itself to ``hubclf.train`` would shadow the package, so ``import hubclf.train.data``
    and ``mock.patch("hubclf.train.loop.…")`` would stop working.
    """

    def __call__(self, config: TrainConfig) -> TrainResult:
        return train(config)


sys.modules[__name__].__class__ = _CallablePackage
