"""Classification metrics that add up correctly across batches and processes.

    metrics = evaluate(accelerator, lambda batch: model(batch["pixel_values"]), eval_loader, num_classes=8)
    metrics["top1"], metrics["per_class_accuracy"]["cat"], metrics["confusion_matrix"][true][predicted]

Accuracies are fractions in [0, 1]; ``top5`` is only reported with at least 5 classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

__all__ = [
    "ClassificationMetrics", "evaluate", "format_metrics",
]


class ClassificationMetrics:
    """Running loss, top-1/top-5 and confusion matrix over batches of logits and labels.

    Feed it *gathered* tensors (see ``evaluate``) so that every sample is counted exactly once.

    Example::

        metrics = ClassificationMetrics(num_classes=3, label_names=["cat", "dog", "fox"])
        metrics.update(torch.tensor([[2.0, 0.1, 0.3]]), torch.tensor([0]))
        metrics.compute()["top1"]   # 1.0
    """

    def __init__(self, num_classes: int, label_names: Sequence[str] | None = None) -> None:
        if label_names is not None and len(label_names) != num_classes:
            raise ValueError(f"{len(label_names)} label names for {num_classes} classes")
        self.num_classes = num_classes
        self.label_names = list(label_names) if label_names is not None else [str(i) for i in range(num_classes)]
        self.reset()

    def reset(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        self.loss_sum = 0.0
        self.top5_correct = 0

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: ``logits`` of shape (N, num_classes), integer ``labels`` of shape (N,)."""
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"expected logits of shape (N, {self.num_classes}), got {tuple(logits.shape)}")
        logits, labels = logits.detach().float().cpu(), labels.detach().long().cpu()
        if labels.numel() == 0:
            return
        self.loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        predicted = logits.argmax(dim=1)
        pairs = labels * self.num_classes + predicted
        self.confusion += torch.bincount(pairs, minlength=self.num_classes**2).view(self.num_classes, -1)
        if self.num_classes >= 5:
            top5 = logits.topk(5, dim=1).indices
            self.top5_correct += (top5 == labels[:, None]).any(dim=1).sum().item()

    @property
    def num_samples(self) -> int:
        return int(self.confusion.sum())

    def compute(self) -> dict[str, Any]:
        """``loss``, ``top1``, ``top5`` (≥ 5 classes), ``per_class_accuracy`` (``None`` for absent classes),
        ``per_class_precision`` / ``per_class_recall`` / ``per_class_f1`` and ``macro_f1``,
        ``confusion_matrix`` (rows: true class, columns: prediction) and ``num_samples``.

        Per-class values are keyed by label name. Precision is ``None`` for a class nothing was predicted as,
        recall (= per-class accuracy) ``None`` for a class without samples. F1 is ``2·TP / (2·TP + FP + FN)``:
        0 for a class that has samples but is never predicted (or is predicted but has no samples), ``None``
        only when the class neither occurs nor is predicted. ``macro_f1`` is the unweighted mean of the
        non-``None`` F1 values, so a class the model misses entirely pulls it down, and a class absent from
        both the labels and the predictions is left out rather than counted as 0 or 1.
        """
        count = self.num_samples
        if count == 0:
            raise ValueError("no samples were evaluated (was every image unreadable?)")
        per_class_total = self.confusion.sum(dim=1)
        per_class_correct = self.confusion.diagonal()
        per_class_predicted = self.confusion.sum(dim=0)
        result: dict[str, Any] = {
            "loss": self.loss_sum / count,
            "top1": per_class_correct.sum().item() / count,
        }
        if self.num_classes >= 5:
            result["top5"] = self.top5_correct / count
        per_class = zip(self.label_names, per_class_correct.tolist(), per_class_total.tolist(), strict=True)
        result["per_class_accuracy"] = {name: (right / total if total else None) for name, right, total in per_class}
        precision, recall, f1 = {}, {}, {}
        for name, right, total, predicted in zip(
            self.label_names,
            per_class_correct.tolist(),
            per_class_total.tolist(),
            per_class_predicted.tolist(),
            strict=True,
        ):
            precision[name] = right / predicted if predicted else None
            recall[name] = right / total if total else None
            f1[name] = 2 * right / (total + predicted) if total + predicted else None
        result["per_class_precision"], result["per_class_recall"], result["per_class_f1"] = precision, recall, f1
        scored = [value for value in f1.values() if value is not None]
        result["macro_f1"] = sum(scored) / len(scored)  # never empty: count > 0 means some class occurs
        result["confusion_matrix"] = self.confusion.tolist()
        result["num_samples"] = count
        return result


@torch.inference_mode()
def evaluate(
    accelerator: Any | None,
    predict: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    dataloader: Any,
    *,
    num_classes: int,
    label_names: Sequence[str] | None = None,
    desc: str = "eval",
    per_image: bool = False,
) -> dict[str, Any]:
    """Run ``predict(batch) -> logits`` over an ``accelerator.prepare``-d loader and return the metrics.

    Batches are dicts with ``labels`` and, optionally, a boolean ``valid`` mask (unreadable images, left out
    of the metrics) and the ``index`` of each row (the skipped ones come back as ``skipped_rows``).
    ``accelerator.gather_for_metrics`` drops the samples that distributed sampling duplicated to even out
    the last batch, so every process returns identical metrics over exactly the eval set. ``accelerator=None``
    evaluates a plain loader in this process. ``per_image=True`` adds ``correct``: for each readable image, in the
    loader's order, whether its top-1 prediction was right (what a paired test of two models compares).

    Example::

        evaluate(accelerator, lambda b: model(b["pixel_values"]), loader, num_classes=8, label_names=names)["top1"]
    """
    metrics = ClassificationMetrics(num_classes, label_names)
    skipped: list[int] = []
    correct: list[bool] = []
    processes = accelerator.num_processes if accelerator is not None else 1
    show = accelerator is None or accelerator.is_local_main_process
    for batch in tqdm(dataloader, desc=desc, leave=False, disable=not show):
        logits = predict(batch)
        labels = batch["labels"]
        # Integers rather than bools: not every collective backend (gloo) gathers bool tensors.
        valid = batch["valid"].long() if "valid" in batch else torch.ones_like(labels)
        rows = batch["index"] if "index" in batch else torch.full_like(labels, -1)
        if processes > 1:  # one process holds every sample already: nothing to gather or trim
            logits, labels, valid, rows = accelerator.gather_for_metrics((logits.float(), labels, valid, rows))
        valid = valid.bool()
        metrics.update(logits[valid], labels[valid])
        skipped += rows[~valid].tolist()
        if per_image:
            correct += (logits[valid].argmax(dim=1) == labels[valid]).tolist()
    return {**metrics.compute(), "skipped_rows": sorted(skipped), **({"correct": correct} if per_image else {})}


def format_metrics(metrics: dict[str, Any], prefix: str = "") -> str:
    """One short line, e.g. ``val_loss 0.412 val_top1 87.5% val_top5 99.0%``."""
    parts = [f"{prefix}loss {metrics['loss']:.4f}", f"{prefix}top1 {metrics['top1']:.1%}"]
    if "top5" in metrics:
        parts.append(f"{prefix}top5 {metrics['top5']:.1%}")
    return " ".join(parts)
