"""hubclf.train.input_size: without --img-size a run trains at the data's shape, and a square --img-size on tall
photos is warned about. Real photos from scikit-image, cropped to 2:1 (448 high x 224 wide, the seed question's)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import hubclf
from hubclf.train import TrainConfig, train
from hubclf.train.input_size import choose_input_size
from hubclf.train.setup import load_training_data
from tests.image_folders import make_photo_folder


@pytest.fixture(scope="module")
def tall_photos(tmp_path_factory):
    return make_photo_folder(tmp_path_factory.mktemp("tall"), per_class=6, aspect=2.0, width=112)  # 224×112 files


def banded(height: int, width: int) -> Image.Image:
    """A grey image with red bands at 8-12% and 88-92% of its height: what a centre crop cuts off first."""
    pixels = np.full((height, width, 3), 128, np.uint8)
    for start in (0.08, 0.88):
        pixels[round(start * height) : round((start + 0.04) * height)] = (255, 0, 0)
    return Image.fromarray(pixels)


def red_rows(tensor: torch.Tensor) -> int:
    return int(((tensor[0] > 1.5) & (tensor[1] < -1.5)).any(dim=1).sum())


@pytest.mark.slow
def test_without_img_size_a_run_on_2_to_1_photos_trains_at_their_shape_and_keeps_whole_images(tall_photos, tmp_path):
    config = TrainConfig(
        model="hubclf_alexnet_slim", data=str(tall_photos), output_dir=str(tmp_path / "out"), pretrained=False,
        epochs=1, batch_size=8, num_workers=0, warmup_epochs=0,
    )  # fmt: skip
    result = train(config)
    saved = json.loads((result.best_model_dir / "config.json").read_text())
    assert saved["pretrained_cfg"]["input_size"] == [3, 448, 224]  # was 224×224: the middle 44% of each height
    decisions = json.loads((tmp_path / "out" / "recipe.json").read_text())["decisions"]
    assert decisions[0].startswith("input size 448×224 (H×W): the train images are 224×112")
    assert "input size 448×224" in (result.best_model_dir / "README.md").read_text()

    # What a timm user builds from the saved config keeps both bands: the crop takes 6% off each end, not 28%.
    model = hubclf.from_pretrained(result.best_model_dir)
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    pixels = transform(banded(448, 224))
    assert pixels.shape == (3, 448, 224) and red_rows(pixels[:, :224]) > 0 and red_rows(pixels[:, 224:]) > 0
    square = timm.data.create_transform(**{**timm.data.resolve_data_config(model=model), "input_size": (3, 224, 224)})
    assert red_rows(square(banded(448, 224))) == 0  # the old default lost both


def test_a_square_img_size_on_tall_photos_warns_how_much_the_crop_drops(tall_photos):
    config = TrainConfig(model="hubclf_alexnet_slim", data=str(tall_photos), output_dir="unused", img_size=(224, 224))
    data = load_training_data(config)
    choice = choose_input_size(config, data)
    assert choice.config.img_size == (224, 224) and choice.decision == "input size 224×224 (H×W): given"
    assert choice.warning == (
        "input size 224×224 (H×W) on 224×112 images: the eval crop keeps 44% of each image's height (the top and "
        "bottom are cut off); to keep whole images, leave --img-size out, or pass --img-size 448 224"
    )
    matching = choose_input_size(TrainConfig(**{**config.to_dict(), "img_size": (448, 224)}), data)
    assert matching.warning is None


def test_a_fixed_size_architecture_keeps_its_size_and_says_what_the_crop_drops(tall_photos):
    config = TrainConfig(model="vit_tiny_patch16_224", data=str(tall_photos), output_dir="unused")
    choice = choose_input_size(config, load_training_data(config))
    assert choice.config.img_size == (224, 224)
    assert choice.decision.startswith("input size 224×224 (H×W): vit_tiny_patch16_224 takes only this size")
    assert "keeps 45% of each image's height" in choice.warning and "crop or pad the images to square" in choice.warning


def test_near_square_data_keeps_the_default(tmp_path):
    photos = make_photo_folder(tmp_path / "square", per_class=3, aspect=1.1, width=100)
    config = TrainConfig(model="resnet18", data=str(photos), output_dir="unused")
    choice = choose_input_size(config, load_training_data(config))
    assert choice.config.img_size == (224, 224) and choice.warning is None
    assert "within 15% of the shape of resnet18's default" in choice.decision

