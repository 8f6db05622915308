"""Score a saved or published hubclf model on a labelled dataset: ``hubclf eval`` and ``evaluate_model()``.

Top-1, top-5 (with at least 5 classes), loss, per-class accuracy, precision, recall and F1, macro-F1, the confusion
matrix and (on request) the most confidently wrong images, computed with the training
loop's own data path and metrics, so the numbers match ``hubclf train``'s validation and add up correctly under
``accelerate launch`` (every image counted once). The dataset's classes are matched to the model's by name.

    from hubclf.evaluate import evaluate_model
    result = evaluate_model("me/flowers-alexnet", "photos/", split="validation")
    result["top1"], result["per_class_accuracy"]["rose"], result["confusion_matrix"]
"""

from __future__ import annotations

import logging
import os
from typing import Any

import datasets
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, default_collate

from hubclf.data.dataset import ImageClassificationDataset
from hubclf.data.images import BadImageError, decode_image, eval_preprocessing
from hubclf.data.labels import find_columns, label_values, normalize_labels
from hubclf.data.sources import open_dataset
from hubclf.data.splits import find_eval_split
from hubclf.metrics import evaluate
from hubclf.predict import class_probabilities, label_names_of, load_model
from hubclf.text import printable

__all__ = ["evaluate_model", "format_report"]

logger = logging.getLogger(__name__)


def evaluate_model(
    model: nn.Module | str | os.PathLike,
    data: str,
    split: str | None = None,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    revision: str | None = None,
    labels: str | None = None,
    path_column: str | None = None,
    accelerator: Any = None,
    tta: bool = False,
    show_errors: int = 0,
) -> dict[str, Any]:
    """Evaluate ``model`` (a loaded model, or anything ``hubclf.from_pretrained`` takes) on ``data``'s ``split``.

    ``data`` is an image folder, a ``save_to_disk`` directory, a Hub dataset id (``user/name[@revision]``) or a
    labels CSV (or a folder plus a ``labels`` CSV, see ``hubclf.data.csv_labels``); ``split`` defaults to its
    validation/valid/val/test split, and a CSV without a split column is evaluated whole (as split "test").
    Class names are normalised as in training (``normalize_class_name``). Labels must name the model's classes
    (any order; a name the model does not know is an error); integer labels without names are taken as the model's
    class indices. Unreadable images are skipped, listed in ``skipped_images`` and left out of the metrics. Pass an
    ``accelerate.Accelerator`` to share one; every process gets the same result.

    ``tta=True`` scores the mean softmax of each image and its horizontal mirror (``predict.class_probabilities``);
    the loss is then the cross-entropy of those averaged probabilities. ``show_errors=K`` adds ``errors``: the K
    wrong predictions made with the highest probability, most confident first, each with ``path``, ``true_label``,
    ``predicted_label``, ``probability`` (of the predicted label) and ``true_probability``.

        result = evaluate_model("out/flowers/best", "photos/", split="validation")
        result["top1"], result["confusion_matrix"][true_index][predicted_index]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if show_errors < 0:
        raise ValueError(f"show_errors is a number of images, at least 0; got {show_errors}")
    if accelerator is None:
        from accelerate import Accelerator

        accelerator = Accelerator()
    # The main process fills the Hub and 🤗 datasets caches first; the others then read them instead of racing.
    with accelerator.main_process_first():
        source = model if isinstance(model, (str, os.PathLike)) else None
        model = load_model(model, revision=revision)
        # A CSV without a split column is one split; "test" makes it the split evaluated by default.
        splits = open_dataset(
            data, labels=labels, path_column=path_column, label_column=label_column, unsplit_name="test"
        )
    label_names = label_names_of(model)
    if label_names is None:
        raise ValueError(
            "the model has no label names, so its classes cannot be matched to the dataset's; "
            "save it with hubclf.save_pretrained(model, dir, label_names=[...])"
        )
    split = _pick_split(splits, split, data)
    dataset = splits[split]
    image_column, label_column = find_columns(dataset.features, image_column, label_column)
    dataset = normalize_labels(dataset, label_column)
    to_model_labels = _LabelsToModelOrder.for_feature(dataset, label_column, label_names)

    data_config, eval_transform = eval_preprocessing(model)
    images = ImageClassificationDataset(
        dataset, image_column, label_column, eval_transform, on_bad_image="skip", input_size=data_config["input_size"]
    )
    loader = accelerator.prepare(
        DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=to_model_labels)
    )
    was_training = model.training
    model.eval().to(accelerator.device)

    mistakes: list[tuple[int, int, int, float, float]] = []  # (row, true, predicted, p(predicted), p(true))

    def logits(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with accelerator.autocast():
            if tta:
                probabilities = class_probabilities(model, batch["pixel_values"], tta=True)
                # Log-probabilities are logits whose softmax is `probabilities`: metrics and loss stay consistent.
                scores = probabilities.clamp_min(torch.finfo(torch.float32).tiny).log()
            else:
                scores = model(batch["pixel_values"])
                probabilities = None
        if show_errors:
            mistakes.extend(_mistakes(probabilities if tta else scores.float().softmax(dim=1), batch))
        return scores

    try:
        metrics = evaluate(
            accelerator, logits, loader, num_classes=model.num_classes, label_names=label_names, desc="eval"
        )
    finally:
        model.train(was_training)
    # evaluate() gathered the skipped rows of every process, so each process holds the full list.
    skipped = [{"path": images.describe(r), "error": _why_unreadable(images, r)} for r in metrics.pop("skipped_rows")]
    errors = _most_confident(mistakes, show_errors, images, label_names) if show_errors else None
    if accelerator.is_main_process:
        for bad in skipped:
            logger.warning("%s (skipped)", printable(bad["error"]))  # file names from someone's folder
    return {
        "model": str(source) if source is not None else _describe(model),
        "data": data,
        "split": split,
        "label_names": label_names,
        "num_images": len(dataset),
        "num_processes": accelerator.num_processes,
        **metrics,
        "num_skipped": len(skipped),
        "skipped_images": skipped,
        "tta": tta,
        **({"errors": errors} if errors is not None else {}),
    }


def _mistakes(probabilities: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[tuple[int, int, int, float, float]]:
    """This process's wrong predictions in a batch, as (row, true class, predicted class, p(predicted), p(true))."""
    probabilities = probabilities.cpu()
    labels, rows = batch["labels"].cpu(), batch["index"].cpu()
    valid = batch["valid"].bool().cpu() if "valid" in batch else torch.ones_like(labels, dtype=torch.bool)
    best, predicted = probabilities.max(dim=1)
    wrong = (predicted != labels) & valid
    true_probability = probabilities.gather(1, labels[:, None])[:, 0]
    return list(
        zip(
            rows[wrong].tolist(),
            labels[wrong].tolist(),
            predicted[wrong].tolist(),
            best[wrong].tolist(),
            true_probability[wrong].tolist(),
            strict=True,
        )
    )


def _most_confident(
    mistakes: list[tuple[int, int, int, float, float]], k: int, images: ImageClassificationDataset, names: list[str]
) -> list[dict[str, Any]]:
    """The ``k`` most confident mistakes over every process (rows that distributed padding repeated count once)."""
    from accelerate.utils import gather_object

    unique = {mistake[0]: mistake for mistake in gather_object(mistakes)}
    ranked = sorted(unique.values(), key=lambda m: (-m[3], m[0]))[:k]
    return [
        {
            "path": images.describe(row),
            "true_label": names[true],
            "predicted_label": names[predicted],
            "probability": probability,
            "true_probability": true_probability,
        }
        for row, true, predicted, probability, true_probability in ranked
    ]


def _describe(model: nn.Module) -> str:
    """A name for a model given as an object: its Hub repo if it came from one, else its architecture."""
    cfg = model.pretrained_cfg
    return cfg.get("hf_hub_id") or cfg.get("architecture") or type(model).__name__


def _pick_split(splits: datasets.DatasetDict, split: str | None, data: str) -> str:
    if split is not None:
        if split not in splits:
            raise ValueError(f"{data} has no {split!r} split (splits: {list(splits)}); pick one with --split")
        return split
    found = find_eval_split(splits)
    if found is None:
        raise ValueError(
            f"{data} has no validation/valid/val/test split (splits: {list(splits)}); pick one with --split"
        )
    return found


class _LabelsToModelOrder:
    """A ``collate_fn`` that turns the dataset's labels (indices or names) into the model's class indices.

    A class (not a closure) so that DataLoader workers can pickle it.
    """

    def __init__(self, index_of_name: dict[str, int], dataset_to_model: list[int] | None) -> None:
        self.index_of_name = index_of_name
        self.dataset_to_model = torch.tensor(dataset_to_model) if dataset_to_model is not None else None

    @classmethod
    def for_feature(cls, dataset: datasets.Dataset, column: str, model_names: list[str]) -> _LabelsToModelOrder:
        feature = dataset.features[column]
        index_of_name = {name: i for i, name in enumerate(model_names)}
        if isinstance(feature, datasets.ClassLabel):
            _check_names_are_the_models(list(feature.names), model_names)
            return cls(index_of_name, [index_of_name[name] for name in feature.names])
        if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
            unknown = sorted(set(dataset.unique(column)) - set(model_names))
            if unknown:
                raise ValueError(
                    f"labels {unknown[:10]} of the dataset are not classes of the model, which knows {model_names}"
                )
            return cls(index_of_name, None)
        if isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")):
            labels = torch.as_tensor(label_values(dataset, column))
            bad = labels[(labels < 0) | (labels >= len(model_names))]
            if bad.numel():
                raise ValueError(
                    f"{bad.numel()} label(s) of {column!r} fall outside the model's classes 0..{len(model_names) - 1}, "
                    f"e.g. {bad[0].item()}"
                )
            logger.warning(f"{column!r} holds integers without names: taken as the model's class indices")
            return cls(index_of_name, list(range(len(model_names))))
        raise ValueError(f"label column {column!r} holds {feature}; expected class labels (ClassLabel, int or str)")

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        labels = [row["labels"] for row in rows]
        batch = default_collate([{k: v for k, v in row.items() if k != "labels"} for row in rows])
        if self.dataset_to_model is None:
            batch["labels"] = torch.tensor([self.index_of_name[name] for name in labels])
        else:
            batch["labels"] = self.dataset_to_model[torch.tensor(labels)]
        return batch


def _check_names_are_the_models(dataset_names: list[str], model_names: list[str]) -> None:
    """Every class of the dataset must be one of the model's, matched by name; the dataset may hold fewer (a folder
    of one class's photos is a fair test), as string labels may."""
    only_data = [name for name in dataset_names if name not in model_names]
    if not only_data:
        absent = [name for name in model_names if name not in dataset_names]
        if absent:
            logger.info(
                f"the dataset holds {len(dataset_names)} of the model's {len(model_names)} classes; no images of "
                f"{absent[:10]}{' ...' if len(absent) > 10 else ''}, so they get no per-class accuracy"
            )
        elif dataset_names != model_names:
            logger.info("the dataset lists the model's classes in another order: matching them by name")
        return
    only_model = [name for name in model_names if name not in dataset_names]
    raise ValueError(
        "the dataset's label names do not match the model's: "
        f"only in the dataset: {only_data}; only in the model: {only_model} "
        f"(dataset: {dataset_names}; model: {model_names})"
    )


def _why_unreadable(images: ImageClassificationDataset, row: int) -> str:
    """Decode the skipped row again, for its error message (only skipped rows, so this stays cheap)."""
    try:
        decode_image(images.dataset[int(row)][images.image_column])
    except BadImageError as e:
        return str(e)
    return f"cannot read image {images.describe(row)} (it failed during evaluation)"


def format_report(result: dict[str, Any]) -> str:
    """The evaluation as text: headline numbers, per-class accuracy, and the confusion matrix with label names.

    Label names (the model's, or a dataset's ClassLabel names) and sources are printed with control characters
    and line breaks escaped.

        print(format_report(evaluate_model("out/flowers/best", "photos/")))
    """
    names = [printable(name) for name in result["label_names"]]
    confusion = result["confusion_matrix"]
    skipped = f" ({result['num_skipped']} unreadable, skipped)" if result["num_skipped"] else ""
    scores = [f"top-1 {result['top1']:.1%}"]
    if "top5" in result:
        scores.append(f"top-5 {result['top5']:.1%}")
    scores.append(f"loss {result['loss']:.4f}")
    if result.get("macro_f1") is not None:
        scores.append(f"macro-F1 {result['macro_f1']:.3f}")
    if result.get("tta"):
        scores.append("(TTA: mean of the image and its mirror)")
    lines = [
        printable(f"{result['model']} on {result['data']} [{result['split']}]: ")
        + f"{result['num_samples']} images evaluated{skipped}",
        "   ".join(scores),
        "",
        "per-class accuracy",
    ]
    name_width = max(len(name) for name in names)
    for i, (name, row) in enumerate(zip(names, confusion, strict=True)):
        total, right = sum(row), row[i]
        accuracy = f"{right / total:>6.1%}" if total else "   n/a"
        lines.append(f"  {name:<{name_width}}  {accuracy}  ({right}/{total})")
    if "per_class_f1" in result:
        lines += ["", "per-class precision, recall and F1 (n/a: nothing predicted / no images of the class)"]
        lines.append(f"  {'':<{name_width}}  precision  recall     F1")
        for name, key in zip(names, result["label_names"], strict=True):  # the JSON keys are the unescaped names
            precision, recall = result["per_class_precision"][key], result["per_class_recall"][key]
            f1 = result["per_class_f1"][key]
            lines.append(
                f"  {name:<{name_width}}  {_percent(precision):>9}  {_percent(recall):>6}  "
                f"{'n/a' if f1 is None else f'{f1:.3f}':>5}"
            )

    # Columns are numbered (names may be long); each row starts with its number and name.
    width = max(len(str(len(names) - 1)), *(len(str(count)) for row in confusion for count in row)) + 2
    label_width = len(str(len(names) - 1)) + 1 + name_width
    lines += ["", "confusion matrix (rows: true label, columns: predicted label)"]
    lines.append(f"  {'':<{label_width}}" + "".join(f"{i:>{width}}" for i in range(len(names))))
    for i, (name, row) in enumerate(zip(names, confusion, strict=True)):
        label = f"{i:>{len(str(len(names) - 1))}} {name:<{name_width}}"
        lines.append(f"  {label}" + "".join(f"{count:>{width}}" for count in row))
    if result.get("errors") is not None:
        lines += ["", f"most confident mistakes ({len(result['errors'])})"]
        if not result["errors"]:
            lines.append("  none: every image was classified correctly")
        for error in result["errors"]:
            lines.append(
                f"  {error['probability']:>6.1%}  "
                + printable(f"{error['predicted_label']} (true: {error['true_label']}, ")
                + f"{error['true_probability']:.1%})  "
                + printable(error["path"])
            )
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"
