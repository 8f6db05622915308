"""hubclf.metrics: loss, top-1/top-5, per-class accuracy, confusion matrix, masked and gathered evaluation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader

from hubclf.metrics import ClassificationMetrics, evaluate, format_metrics


def test_known_batch_gives_known_numbers():
    # 3 samples, 5 classes: the first two are right, the third is wrong at top-1 but right at top-5.
    logits = torch.tensor(
        [
            [5.0, 1.0, 0.0, 0.0, 0.0],
            [0.0, 4.0, 1.0, 0.0, 0.0],
            [3.0, 2.0, 1.0, 0.5, 0.1],
        ]
    )
    labels = torch.tensor([0, 1, 4])
    metrics = ClassificationMetrics(5, label_names=list("abcde"))
    metrics.update(logits[:2], labels[:2])  # in two batches: sums must add up
    metrics.update(logits[2:], labels[2:])
    result = metrics.compute()
    assert result["top1"] == pytest.approx(2 / 3)
    assert result["top5"] == 1.0
    assert result["loss"] == pytest.approx(F.cross_entropy(logits, labels).item())
    assert result["per_class_accuracy"] == {"a": 1.0, "b": 1.0, "c": None, "d": None, "e": 0.0}
    assert result["confusion_matrix"][4][0] == 1  # true e, predicted a
    assert sum(map(sum, result["confusion_matrix"])) == result["num_samples"] == 3


def test_top5_needs_five_classes_and_empty_input_is_an_error():
    metrics = ClassificationMetrics(3)
    metrics.update(torch.eye(3), torch.arange(3))
    assert "top5" not in metrics.compute()
    with pytest.raises(ValueError, match="no samples"):
        ClassificationMetrics(3).compute()
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        metrics.update(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))


def test_evaluate_masks_unreadable_rows_and_reports_them():
    torch.manual_seed(0)
    logits, labels = torch.randn(10, 4), torch.randint(0, 4, (10,))
    valid = torch.ones(10, dtype=torch.bool)
    valid[[3, 7]] = False
    rows = [{"x": logits[i], "labels": labels[i], "valid": valid[i], "index": i} for i in range(10)]
    accelerator = Accelerator(cpu=True)
    loader = accelerator.prepare(DataLoader(rows, batch_size=4))
    result = evaluate(accelerator, lambda batch: batch["x"], loader, num_classes=4)

    expected = ClassificationMetrics(4)
    expected.update(logits[valid], labels[valid])
    expected = expected.compute()
    assert result.pop("loss") == pytest.approx(expected.pop("loss"))  # summed in batches: rounding differs
    assert result == {**expected, "skipped_rows": [3, 7]}
    assert result["num_samples"] == 8


def test_format_metrics_is_one_short_line():
    line = format_metrics({"loss": 0.41234, "top1": 0.875, "top5": 0.99}, prefix="val_")
    assert line == "val_loss 0.4123 val_top1 87.5% val_top5 99.0%"


def test_precision_recall_f1_per_class_and_macro_f1():
    # Predictions a, b, a for labels a, b, e (5 classes): c and d never occur, e is never predicted.
    logits = torch.tensor([[5.0, 1, 0, 0, 0], [0, 4.0, 1, 0, 0], [3.0, 2, 1, 0.5, 0.1]])
    metrics = ClassificationMetrics(5, label_names=list("abcde"))
    metrics.update(logits, torch.tensor([0, 1, 4]))
    result = metrics.compute()
    assert result["per_class_precision"] == {"a": 0.5, "b": 1.0, "c": None, "d": None, "e": None}
    assert result["per_class_recall"] == {"a": 1.0, "b": 1.0, "c": None, "d": None, "e": 0.0}
    assert result["per_class_recall"] == result["per_class_accuracy"]
    assert result["per_class_f1"] == {"a": pytest.approx(2 / 3), "b": 1.0, "c": None, "d": None, "e": 0.0}
    # The missed class e counts as 0; c and d (neither labelled nor predicted) are left out of the mean.
    assert result["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_f1_is_the_harmonic_mean_of_precision_and_recall_when_both_exist():
    torch.manual_seed(1)
    metrics = ClassificationMetrics(4)
    metrics.update(torch.randn(200, 4), torch.randint(0, 4, (200,)))
    result = metrics.compute()
    for name, f1 in result["per_class_f1"].items():
        p, r = result["per_class_precision"][name], result["per_class_recall"][name]
        assert f1 == pytest.approx(2 * p * r / (p + r) if p + r else 0.0)
    assert result["macro_f1"] == pytest.approx(sum(result["per_class_f1"].values()) / 4)
