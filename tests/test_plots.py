"""hubclf.plots: the confusion matrix, training curves and LR range test as PNGs, what happens without matplotlib,
and the two pictures in every model folder a training run saves (best/ and final/) and in its card."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from hubclf.plots import (
    confusion_figure,
    curves_figure,
    matplotlib_missing,
    model_pictures,
    plot_confusion_matrix,
    plot_lr_find,
    plot_training_curves,
)
from hubclf.train import TrainConfig, train
from tests.image_folders import HEIGHT, WIDTH, make_image_folder

HISTORY = [
    {"epoch": 1, "stage": "head", "train_loss": 1.2, "val_loss": 1.3, "train_top1": 0.4, "val_top1": 0.35},
    {"epoch": 2, "stage": "full", "train_loss": 0.7, "val_loss": 0.9, "train_top1": 0.75, "val_top1": 0.6},
]


def png_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.size


def test_confusion_matrix_png_is_written_atomically_and_returned(tmp_path):
    path = tmp_path / "sub" / "cm.png"
    data = plot_confusion_matrix([[8, 2], [1, 9]], ["cat", "dog"], path)
    assert path.read_bytes() == data and png_size(data)[0] > 300
    assert [p.name for p in path.parent.iterdir()] == ["cm.png"]  # no temporary file left behind


def test_confusion_matrix_grows_with_the_number_of_classes():
    small = png_size(plot_confusion_matrix([[1, 0], [0, 1]], ["a", "b"]))
    n = 30
    big = png_size(
        plot_confusion_matrix([[int(i == j) * 5 + 1 for j in range(n)] for i in range(n)], list(map(str, range(n))))
    )
    assert big[0] > 2 * small[0] and big[1] > 2 * small[1]


@pytest.mark.parametrize("matrix", [[[1, 2]], [[1, 2], [3]], []])
def test_confusion_matrix_must_be_square_and_match_the_labels(matrix):
    with pytest.raises(ValueError, match="must be 2x2"):
        plot_confusion_matrix(matrix, ["a", "b"])


def test_training_curves_and_lr_plot(tmp_path):
    assert png_size(plot_training_curves(HISTORY, tmp_path / "curves.png"))[0] > 600  # two panels side by side
    assert (tmp_path / "curves.png").is_file()
    with pytest.raises(ValueError, match="history is empty"):
        plot_training_curves([])
    lrs = [1e-5 * 1.5**i for i in range(20)]
    losses = [2.0 - 0.05 * i for i in range(20)]
    assert png_size(plot_lr_find(lrs, losses, losses, 1e-3, tmp_path / "lr.png"))[0] > 300


def test_without_matplotlib_there_are_no_pictures_and_the_reason_says_why(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    reason = matplotlib_missing()
    assert reason is not None and "pip install 'hubclf[plots]'" in reason
    assert model_pictures([[1, 0], [0, 1]], ["a", "b"], HISTORY) == ({}, reason)
    with pytest.raises(RuntimeError, match="matplotlib is not installed"):
        plot_confusion_matrix([[1, 0], [0, 1]], ["a", "b"], tmp_path / "cm.png")
    assert not (tmp_path / "cm.png").exists()


def test_model_pictures_names_both_files():
    images, skipped = model_pictures([[1, 0], [0, 1]], ["a", "b"], HISTORY)
    assert skipped is None and sorted(images) == ["confusion_matrix.png", "training_curves.png"]
    assert all(png_size(data) for data in images.values())


# ---- every model folder a training run saves -------------------------------------------------------------------
def tiny_run(tmp_path: Path, name: str) -> TrainConfig:
    data = make_image_folder(tmp_path / "data", 3, per_class=4)
    return TrainConfig(
        model="hubclf_alexnet_slim", data=str(data), output_dir=str(tmp_path / name), pretrained=False,
        img_size=(HEIGHT, WIDTH), epochs=2, batch_size=8, warmup_epochs=0, num_workers=0, val_split=0.25,
        freeze="backbone", augment=False, seed=0,
    )  # fmt: skip


def test_training_saves_both_pictures_in_best_and_final_and_shows_them_in_the_cards(tmp_path):
    result = train(tiny_run(tmp_path, "run"))
    for folder in (result.best_model_dir, result.final_model_dir):
        for name in ("confusion_matrix.png", "training_curves.png"):
            assert png_size((folder / name).read_bytes()), f"{folder / name}"
        card = (folder / "README.md").read_text()
        assert "![Confusion matrix](confusion_matrix.png)" in card
        assert "![Training curves](training_curves.png)" in card
        hubclf_block = json.loads((folder / "config.json").read_text())["hubclf"]
        assert hubclf_block["images"] == ["confusion_matrix.png", "training_curves.png"]
        assert "macro_f1" in hubclf_block["eval_results"]
    record = result.history[-1]
    assert set(record["val_per_class_f1"]) == {"class_0", "class_1", "class_2"} and "val_macro_f1" in record


def test_training_without_matplotlib_says_so_in_the_card(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = train(tiny_run(tmp_path, "run"))
    assert not list(result.best_model_dir.glob("*.png"))
    card = (result.best_model_dir / "README.md").read_text()
    assert "plots were skipped: matplotlib is not installed" in card and "](confusion_matrix.png)" not in card


# ---- right for 1 epoch, one scale for percentages --------------------------------------------------------------------
def test_one_epoch_has_one_tick_labelled_1():
    # matplotlib's own ticks read 0.96 ... 1.04 for a single epoch.
    figure = curves_figure([{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "train_top1": 0.4, "val_top1": 0.5}])
    for axes in figure.axes:
        assert list(axes.get_xticks()) == [1]
        assert axes.get_xlim() == (0.5, 1.5)
    top1 = figure.axes[1]
    assert top1.get_ylim() == (0, 102) and top1.lines[1].get_ydata()[0] == pytest.approx(50.0)  # in %


def test_confusion_matrix_cells_and_colour_bar_are_percentages_at_any_size():
    small = confusion_figure([[3, 1], [0, 4]], ["a", "b"])
    assert sorted(text.get_text() for text in small.axes[0].texts) == ["0%", "100%", "25%", "75%"]
    n = 24  # the demo's base classes: cells in %, and the colour bar said 0-1
    big = confusion_figure([[5 if i == j else (1 if j == (i + 1) % n else 0) for j in range(n)] for i in range(n)],
                           [f"c{i}" for i in range(n)])  # fmt: skip
    assert {text.get_text() for text in big.axes[0].texts} == {"83", "17"}
    for figure in (small, big):
        colour_bar = figure.axes[1]
        assert colour_bar.get_ylim() == (0.0, 100.0)
        assert [label.get_text() for label in colour_bar.get_yticklabels()] == ["0%", "25%", "50%", "75%", "100%"]
