"""hubclf.train.setup: what create_model builds from the settings, beyond the architecture (tested end to end in
tests/test_train_loop.py): the dropout flags, and a model from random weights that claims no pretrained weights."""

from __future__ import annotations

import pytest
import torch.nn as nn
from accelerate import PartialState

from hubclf.train import TrainConfig
from hubclf.train.setup import create_model

LABELS = ["a", "b"]


@pytest.fixture(autouse=True)
def accelerate_state():
    PartialState()  # create_model logs through Accelerate's logger, as inside a run


def config(**overrides) -> TrainConfig:
    settings = dict(model="hubclf_alexnet", data="unused", output_dir="unused", pretrained=False)
    return TrainConfig(**{**settings, **overrides})


def test_dropout_reaches_the_classifier_head():
    dropouts = [m.p for m in create_model(config(drop_rate=0.3), LABELS).modules() if isinstance(m, nn.Dropout)]
    assert dropouts == [0.3, 0.3]  # torchvision's two, 0.5 by default
    assert [m.p for m in create_model(config(), LABELS).modules() if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    with pytest.raises(ValueError, match="--drop-path: hubclf_alexnet has no stochastic depth"):
        create_model(config(drop_path_rate=0.1), LABELS)
    resnet = create_model(config(model="resnet18", drop_path_rate=0.1), LABELS)
    assert any(type(m).__name__ == "DropPath" for m in resnet.modules())


def test_random_weights_carry_no_pretrained_tag_licence_or_origin():
    # timm attaches tv_in1k's config to a model it never loaded those weights into; its card then inherited them.
    cfg = create_model(config(), LABELS).pretrained_cfg
    assert not {"tag", "license", "origin_url"} & {k for k, v in cfg.items() if v}
    assert cfg["input_size"] and cfg["mean"] and cfg["classifier"] == "head.fc"  # the architecture's facts stay
