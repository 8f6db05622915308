"""``hubclf train``: fine-tune or feature-extract a timm/hubclf classifier on a 🤗 dataset with Accelerate.

    from hubclf.train import TrainConfig, train
    result = train(TrainConfig(model="hubclf_alexnet", data="photos/", output_dir="out", img_size=(448, 224)))

Reusable pieces: ``hubclf.train.data`` (loading, column detection, robust decoding, transforms) and
``hubclf.train.metrics`` (``ClassificationMetrics``, ``evaluate``).
"""

from hubclf.train.config import TrainConfig
from hubclf.train.loop import TrainingInterrupted, TrainResult, create_model, train

__all__ = ["TrainConfig", "TrainResult", "TrainingInterrupted", "create_model", "train"]
