"""Pictures of a model: its confusion matrix, its training curves and an LR range test, as PNG files or bytes.

matplotlib is optional (``pip install 'hubclf[plots]'``) and imported only when a picture is drawn. Figures are
made with ``matplotlib.figure.Figure`` and rendered by the Agg backend, never through ``pyplot``: no display is
needed, and the backend of a notebook or script that imports hubclf is left alone.

    from hubclf.plots import plot_confusion_matrix, plot_training_curves
    plot_confusion_matrix([[8, 2], [1, 9]], ["cat", "dog"], "confusion_matrix.png")
    plot_training_curves(result.history, "training_curves.png")   # history: TrainResult.history / metrics.jsonl
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from hubclf.atomic import atomic_write_bytes

__all__ = [
    "CONFUSION_MATRIX_PNG",
    "TRAINING_CURVES_PNG",
    "confusion_figure",
    "curves_figure",
    "matplotlib_missing",
    "model_pictures",
    "plot_confusion_matrix",
    "plot_lr_find",
    "plot_training_curves",
]

CONFUSION_MATRIX_PNG = "confusion_matrix.png"
TRAINING_CURVES_PNG = "training_curves.png"
_MAX_LABEL_CHARS = 24  # longer class names are shortened on the axes (the card's label table has them in full)


def matplotlib_missing() -> str | None:
    """Why no picture can be drawn (matplotlib is not installed), or ``None`` when it can."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        return f"matplotlib is not installed ({e}); install it with pip install 'hubclf[plots]'"
    return None


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], label_names: Sequence[str], path: str | os.PathLike | None = None
) -> bytes:
    """Draw ``matrix`` (rows: true class, columns: predicted class, counts) normalised by row, as a PNG.

    Each cell shows the percentage of the row's images (colour and number, on one 0-100 % scale, whatever the number
    of classes); the row's image count is in its label. Rows of classes without images stay empty. Stays readable up
    to about 30 classes (cells and fonts shrink). Returns the PNG bytes, and also writes them (atomically) to
    ``path`` when given.

        plot_confusion_matrix(result["confusion_matrix"], result["label_names"], "confusion.png")
    """
    return _save(confusion_figure(matrix, label_names), path)


def confusion_figure(matrix: Sequence[Sequence[int]], label_names: Sequence[str]) -> Any:
    """The figure ``plot_confusion_matrix`` draws (a matplotlib ``Figure``, for tests and notebooks)."""
    size = len(label_names)
    if size == 0 or len(matrix) != size or any(len(row) != size for row in matrix):
        raise ValueError(f"the confusion matrix must be {size}x{size} for {size} label names")
    totals = [sum(row) for row in matrix]
    percents = [
        [100 * count / total if total else math.nan for count in row] for row, total in zip(matrix, totals, strict=True)
    ]

    side = max(4.5, 0.42 * size + 2.5)
    font = 10 if size <= 10 else 8 if size <= 20 else 6
    figure = _figure(figsize=(side + 1.2, side))
    axes = figure.subplots()
    image = axes.imshow(percents, cmap="Blues", vmin=0.0, vmax=100.0)
    bar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="% of the true class's images")
    bar.set_ticks([0, 25, 50, 75, 100], labels=["0%", "25%", "50%", "75%", "100%"])
    names = [_short(name) for name in label_names]
    axes.set_xticks(range(size), names, rotation=45 if size <= 10 else 90, ha="right" if size <= 10 else "center",
                    fontsize=font)  # fmt: skip
    axes.set_yticks(
        range(size), [f"{name} ({total})" for name, total in zip(names, totals, strict=True)], fontsize=font
    )
    axes.set_xlabel("predicted label")
    axes.set_ylabel("true label (images)")
    axes.set_title(f"Confusion matrix, % of each true class ({sum(totals)} images)")
    for row in range(size):
        for column in range(size):
            value = percents[row][column]
            if math.isnan(value) or (matrix[row][column] == 0 and size > 10):
                continue  # big matrices: blank zero cells keep the errors visible
            text = f"{value:.0f}%" if size <= 10 else f"{value:.0f}"  # small cells: the colour bar says %
            axes.text(column, row, text, ha="center", va="center", fontsize=font,
                      color="white" if value > 50 else "black")  # fmt: skip
    figure.tight_layout()
    return figure


def plot_training_curves(history: Sequence[Mapping[str, Any]], path: str | os.PathLike | None = None) -> bytes:
    """Loss and top-1 per epoch, train and validation, in two panels, as a PNG (also written to ``path``).

    ``history`` is a run's per-epoch records (``TrainResult.history`` or the lines of ``metrics.jsonl``): keys
    ``epoch``, ``train_loss``, ``val_loss``, ``train_top1``, ``val_top1``; a missing key is simply not drawn.

        plot_training_curves([json.loads(line) for line in open("out/metrics.jsonl")], "curves.png")
    """
    return _save(curves_figure(history), path)


def curves_figure(history: Sequence[Mapping[str, Any]]) -> Any:
    """The figure ``plot_training_curves`` draws (a matplotlib ``Figure``, for tests and notebooks)."""
    if not history:
        raise ValueError("no epochs to plot: the training history is empty")
    epochs = [record.get("epoch", i + 1) for i, record in enumerate(history)]
    figure = _figure(figsize=(10, 4))
    loss_axes, top1_axes = figure.subplots(1, 2)
    # Top-1 in %, as the confusion matrix and the card's percentages; a null (diverged) value is not drawn.
    for axes, metric, title, scale in ((loss_axes, "loss", "Loss", 1), (top1_axes, "top1", "Top-1 accuracy (%)", 100)):
        for split, style in (("train", "o-"), ("val", "s-")):
            points = [
                (e, scale * r[f"{split}_{metric}"])
                for e, r in zip(epochs, history, strict=True)
                if r.get(f"{split}_{metric}") is not None
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                axes.plot(xs, ys, style, label="validation" if split == "val" else "train")
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        axes.legend()
        if len(epochs) <= 20:  # one tick per epoch: one epoch read 0.96 ... 1.04 with matplotlib's own ticks
            axes.set_xticks(epochs)
        else:
            axes.xaxis.get_major_locator().set_params(integer=True)
        axes.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    top1_axes.set_ylim(0, 102)
    stages = [record.get("stage") for record in history]
    for i in range(1, len(stages)):
        if stages[i] != stages[i - 1]:  # e.g. --unfreeze-after: mark where the backbone started training
            for axes in (loss_axes, top1_axes):
                axes.axvline((epochs[i - 1] + epochs[i]) / 2, color="gray", linestyle=":", linewidth=1)
            top1_axes.text((epochs[i - 1] + epochs[i]) / 2, 2, f" {stages[i]}", color="gray", fontsize=8)
    figure.tight_layout()
    return figure


def plot_lr_find(
    lrs: Sequence[float],
    losses: Sequence[float],
    smoothed: Sequence[float],
    suggested_lr: float | None,
    path: str | os.PathLike | None = None,
    *,
    note: str = "",
) -> bytes:
    """An LR range test: raw and smoothed loss against the learning rate (log axis), the suggestion marked.

    plot_lr_find(result.lrs, result.losses, result.smoothed_losses, result.suggested_lr, "lr_find.png")
    """
    if not lrs:
        raise ValueError("no learning rates to plot")
    figure = _figure(figsize=(7, 4.5))
    axes = figure.subplots()
    axes.plot(lrs, losses, color="lightgray", linewidth=1, label="loss per step")
    axes.plot(lrs, smoothed, color="tab:blue", linewidth=2, label="smoothed loss")
    if suggested_lr is not None:
        axes.axvline(suggested_lr, color="tab:red", linestyle="--", linewidth=1)
        index = min(range(len(lrs)), key=lambda i: abs(math.log(lrs[i]) - math.log(suggested_lr)))
        axes.plot([suggested_lr], [smoothed[index]], "o", color="tab:red",
                  label=f"suggested lr {suggested_lr:.2g}{note}")  # fmt: skip
    axes.set_xscale("log")
    finite = [v for v in smoothed if math.isfinite(v)]
    if finite:  # the last steps of a diverging run would squash the interesting part of the curve
        low = min(finite + [v for v in losses if math.isfinite(v)])
        high = max(finite[: max(1, len(finite) // 2)] + [min(finite) * 1.5])
        axes.set_ylim(low - 0.1 * (high - low + 1e-8), max(high, low) + 0.25 * (high - low + 1e-8))
    axes.set_xlabel("learning rate (log scale)")
    axes.set_ylabel("training loss")
    axes.set_title("LR range test")
    axes.grid(alpha=0.3, which="both")
    axes.legend()
    figure.tight_layout()
    return _save(figure, path)


def model_pictures(
    confusion_matrix: Sequence[Sequence[int]] | None,
    label_names: Sequence[str],
    history: Sequence[Mapping[str, Any]],
) -> tuple[dict[str, bytes], str | None]:
    """The PNGs a saved model folder carries, by file name, and why they are missing (``None`` when drawn).

    images, skipped = model_pictures(record["val_confusion_matrix"], label_names, history)
    save_pretrained(model, "out/best", images=images, images_skipped=skipped)
    """
    missing = matplotlib_missing()
    if missing is not None:
        return {}, missing
    images: dict[str, bytes] = {}
    if confusion_matrix is not None:
        images[CONFUSION_MATRIX_PNG] = plot_confusion_matrix(confusion_matrix, label_names)
    if history:
        images[TRAINING_CURVES_PNG] = plot_training_curves(history)
    return images, None


def _short(name: str) -> str:
    return name if len(name) <= _MAX_LABEL_CHARS else name[: _MAX_LABEL_CHARS - 1] + "…"


def _figure(**kwargs: Any) -> Any:
    missing = matplotlib_missing()
    if missing is not None:
        raise RuntimeError(f"cannot draw the picture: {missing}")
    from matplotlib.figure import Figure

    return Figure(**kwargs)  # not pyplot's: nothing global to close, no backend switch


def _save(figure: Any, path: str | os.PathLike | None) -> bytes:
    buffer = io.BytesIO()
    # A fixed creation date would not help (PNG has none); metadata Software is dropped so the bytes depend only
    # on the picture and the matplotlib version.
    figure.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    data = buffer.getvalue()
    if path is not None:
        atomic_write_bytes(path, data)
    return data
