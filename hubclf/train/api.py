"""``train()``: the one entry point of a training run. It checks the settings before anything is read or built,
then runs the loop once (``hubclf.train.loop``), or several times for ``--strategy auto`` (``hubclf.train.strategy``).

    import hubclf
    result = hubclf.train(hubclf.TrainConfig(model="hubclf_alexnet", data="photos/", output_dir="out", epochs=3))
"""

from __future__ import annotations

from hubclf.train import loop, strategy
from hubclf.train.config import TrainConfig
from hubclf.train.outputs import TrainResult
from hubclf.train.preflight import preflight_checks


def train(config: TrainConfig) -> TrainResult:
    """Train ``config.model`` on ``config.data``; write checkpoints, ``metrics.jsonl`` and best/final models.

    The output folder is locked for the run (``OUTPUT_DIR/.lock``); SIGINT/SIGTERM in any phase stop it at the next
    safe point (``TrainingInterrupted``), a second signal aborts.

    Example::

        result = train(TrainConfig(model="hubclf_vgg11", data="user/flowers", output_dir="out", epochs=3))
        result.best_metrics["top1"], result.best_model_dir
    """
    preflight_checks(config)
    if config.strategy == "auto":  # several runs of the loop, see hubclf.train.strategy
        return strategy.train_auto(config)
    return loop.run(config)
