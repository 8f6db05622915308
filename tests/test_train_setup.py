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


def test_loaders_of_fixed_inputs_read_uint8_pixels_and_augmented_ones_floats(tmp_path):
    """setup.loader_rows: fixed inputs (eval, --no-augment) go through PixelRows; augmented images as they are."""
    import torch

    from hubclf.data.dataset import ImageClassificationDataset, PixelRows
    from hubclf.data.images import build_transforms
    from hubclf.data.splits import load_image_dataset
    from hubclf.train.setup import build_loaders
    from tests.image_folders import HEIGHT, WIDTH, make_image_folder

    make_image_folder(tmp_path, num_classes=2, per_class=2)
    data = load_image_dataset(str(tmp_path), val_split=0.5)
    train_tf, eval_tf = build_transforms({"input_size": (3, HEIGHT, WIDTH)}, augment=True)
    augmented, fixed = (ImageClassificationDataset(data.train, "image", "label", tf, input_size=(3, HEIGHT, WIDTH))
                        for tf in (train_tf, eval_tf))  # fmt: skip
    train_loader, eval_loader = build_loaders(config(num_workers=0, batch_size=2), augmented, fixed, None,
                                              torch.device("cpu"))  # fmt: skip
    assert train_loader.dataset is augmented and isinstance(eval_loader.dataset, PixelRows)
    assert next(iter(eval_loader))["pixel_values"].dtype == torch.uint8
