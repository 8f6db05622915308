"""hubclf.evaluate and ``hubclf eval``: metrics checked against a hand-computed case, classes matched by name,
unreadable images skipped and reported, label mismatches refused, and 2 processes under ``accelerate launch``
giving the same JSON as 1.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from hubclf.cli import main
from hubclf.evaluate import evaluate_model, format_report
from hubclf.hub import from_pretrained, save_pretrained
from tests.image_folders import add_bad_images
from tests.launch import cpu_launch_command
from tests.test_predict import BIAS, LABELS, save_image, save_known_model

REPO_ROOT = Path(__file__).resolve().parents[1]
# Validation images per class. The known model predicts "zebra" for every image.
COUNTS = {"ant": 2, "cat": 1, "zebra": 3}


def make_folder(root: Path, counts: dict[str, int], split: str = "validation") -> Path:
    seed = 0
    for name, count in counts.items():
        for i in range(count):
            seed += 1
            save_image(root / split / name / f"{i}.png", seed, (80, 60))
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_known_model(tmp_path_factory.mktemp("eval") / "model")  # classes in the order zebra, ant, cat


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """validation/{ant,cat,zebra}/ (so the dataset's class order is ant, cat, zebra) plus one unreadable image."""
    root = make_folder(tmp_path / "data", COUNTS)
    (root / "validation" / "cat" / "broken.jpg").write_text("this is not a picture")
    return root


def test_metrics_match_the_hand_computed_case_with_classes_matched_by_name(model_dir, image_folder):
    result = evaluate_model(str(model_dir), str(image_folder), batch_size=4)

    # Everything is predicted "zebra" (model index 0): only the 3 zebras are right. Had the dataset's order
    # (ant=0, cat=1, zebra=2) been used as is, the 2 ants would have counted as right instead.
    assert result["label_names"] == LABELS
    assert result["top1"] == pytest.approx(3 / 6)
    assert "top5" not in result  # fewer than 5 classes
    assert result["per_class_accuracy"] == {"zebra": 1.0, "ant": 0.0, "cat": 0.0}
    assert result["confusion_matrix"] == [[3, 0, 0], [2, 0, 0], [1, 0, 0]]  # rows: true zebra, ant, cat
    log_probabilities = [math.log(p) for p in (math.exp(b) / sum(math.exp(c) for c in BIAS) for b in BIAS)]
    expected_loss = -(3 * log_probabilities[0] + 2 * log_probabilities[1] + 1 * log_probabilities[2]) / 6
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert (result["num_images"], result["num_samples"], result["num_skipped"]) == (7, 6, 1)
    assert result["split"] == "validation"  # the default: the dataset's own validation split
    [skipped] = result["skipped_images"]
    assert skipped["path"].endswith("validation/cat/broken.jpg")
    assert "cannot read image" in skipped["error"]


def test_string_labels_in_a_saved_dataset_are_matched_by_name(model_dir, tmp_path):
    images = [Image.fromarray(np.full((70, 70, 3), v, np.uint8)) for v in (0, 90, 180, 250)]
    table = {"photo": images, "kind": ["cat", "zebra", "cat", "ant"]}
    features = datasets.Features({"photo": datasets.Image(), "kind": datasets.Value("string")})
    saved = tmp_path / "saved"
    datasets.DatasetDict(test=datasets.Dataset.from_dict(table, features=features)).save_to_disk(str(saved))

    result = evaluate_model(str(model_dir), str(saved), "test", label_column="kind", batch_size=3)
    assert result["confusion_matrix"] == [[1, 0, 0], [1, 0, 0], [2, 0, 0]]
    assert result["top1"] == pytest.approx(1 / 4)


def test_integer_labels_without_names_are_the_models_class_indices(model_dir, tmp_path, caplog):
    images = [Image.fromarray(np.full((70, 70, 3), v, np.uint8)) for v in (0, 90, 180)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    saved = tmp_path / "saved"
    table = {"image": images, "label": [0, 0, 2]}
    datasets.DatasetDict(validation=datasets.Dataset.from_dict(table, features=features)).save_to_disk(str(saved))
    result = evaluate_model(str(model_dir), str(saved))
    assert result["confusion_matrix"] == [[2, 0, 0], [0, 0, 0], [1, 0, 0]]
    assert "taken as the model's class indices" in caplog.text

    table["label"] = [0, 3, 1]  # 3 is not a class of a 3-class model
    out_of_range = tmp_path / "out_of_range"
    datasets.DatasetDict(validation=datasets.Dataset.from_dict(table, features=features)).save_to_disk(out_of_range)
    with pytest.raises(ValueError, match=r"fall outside the model's classes 0..2, e.g. 3"):
        evaluate_model(str(model_dir), str(out_of_range))


def test_a_folder_of_some_of_the_models_classes_is_scored_on_those(model_dir, tmp_path, capsys):
    # One class folder: 🤗 imagefolder reads it without labels; hubclf reads it again with the folder's name.
    zebras = make_folder(tmp_path / "zebras", {"zebra": 3})
    result = evaluate_model(str(model_dir), str(zebras))
    assert (result["top1"], result["num_samples"]) == (1.0, 3)  # the known model answers zebra for every image
    assert result["per_class_accuracy"] == {"zebra": 1.0, "ant": None, "cat": None}
    assert result["confusion_matrix"] == [[3, 0, 0], [0, 0, 0], [0, 0, 0]]
    two_of_three = make_folder(tmp_path / "two", {"ant": 1, "zebra": 1})
    assert main(["eval", str(model_dir), "--data", str(two_of_three), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == 0.5


def test_mismatched_label_names_are_a_clear_error(model_dir, tmp_path, capsys):
    data = make_folder(tmp_path / "other", {"ant": 1, "cat": 1, "dog": 1})
    with pytest.raises(ValueError, match=r"only in the dataset: \['dog'\]; only in the model: \['zebra'\]"):
        evaluate_model(str(model_dir), str(data))
    assert main(["eval", str(model_dir), "--data", str(data)]) == 2
    assert "label names do not match" in capsys.readouterr().err


def test_a_missing_split_is_a_clear_error(model_dir, image_folder, capsys):
    assert main(["eval", str(model_dir), "--data", str(image_folder), "--split", "test"]) == 2
    assert "has no 'test' split (splits: ['validation'])" in capsys.readouterr().err


def test_cli_report_and_json(model_dir, image_folder, capsys):
    assert main(["eval", str(model_dir), "--data", str(image_folder), "--batch-size", "4"]) == 0
    out, err = capsys.readouterr()
    assert "6 images evaluated (1 unreadable, skipped)" in out
    assert "top-1 50.0%" in out
    assert "  zebra  100.0%  (3/3)" in out and "  ant      0.0%  (0/2)" in out
    assert out.rstrip().endswith("  0 zebra  3  0  0\n  1 ant    2  0  0\n  2 cat    1  0  0")
    assert "hubclf eval: cannot read image" in err and "broken.jpg" in err

    assert main(["eval", str(model_dir), "--data", str(image_folder), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["per_class_accuracy"] == {"zebra": 1.0, "ant": 0.0, "cat": 0.0}
    assert result["confusion_matrix"] == [[3, 0, 0], [2, 0, 0], [1, 0, 0]]
    assert result["num_skipped"] == 1


def test_format_report_shows_absent_classes_and_top5():
    result = {
        "model": "m", "data": "d", "split": "validation", "num_samples": 5, "num_skipped": 0,
        "top1": 0.6, "top5": 1.0, "loss": 0.5, "label_names": ["a", "b", "c", "d", "e"],
        "confusion_matrix": [[2, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 1, 0, 0, 0]],
    }  # fmt: skip
    report = format_report(result)
    assert "top-1 60.0%   top-5 100.0%   loss 0.5000" in report
    assert "  c     n/a  (0/0)" in report


# ---- precision/recall/F1, most confident mistakes, TTA, plot -----------------------------------------------------
def test_precision_recall_f1_in_json_and_report(model_dir, image_folder, capsys):
    assert main(["eval", str(model_dir), "--data", str(image_folder), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # Everything is predicted zebra: zebra precision 3/6, recall 1; ant and cat are never predicted.
    assert result["per_class_precision"] == {"zebra": 0.5, "ant": None, "cat": None}
    assert result["per_class_recall"] == {"zebra": 1.0, "ant": 0.0, "cat": 0.0}
    assert result["per_class_f1"] == {"zebra": pytest.approx(2 / 3), "ant": 0.0, "cat": 0.0}
    assert result["macro_f1"] == pytest.approx(2 / 9) and result["tta"] is False and "errors" not in result

    assert main(["eval", str(model_dir), "--data", str(image_folder)]) == 0
    report = capsys.readouterr().out
    assert "macro-F1 0.222" in report
    assert "  zebra      50.0%  100.0%  0.667" in report and "  ant          n/a    0.0%  0.000" in report


def test_show_errors_lists_the_most_confident_mistakes(model_dir, image_folder, capsys):
    result = evaluate_model(str(model_dir), str(image_folder), show_errors=2, batch_size=2)
    p_zebra, p_ant, p_cat = (math.exp(b) / sum(math.exp(c) for c in BIAS) for b in BIAS)
    # Three mistakes (2 ants, 1 cat), all "zebra" with the same probability: ties go in dataset order.
    assert [(e["true_label"], e["predicted_label"]) for e in result["errors"]] == [("ant", "zebra")] * 2
    for error in result["errors"]:
        assert error["probability"] == pytest.approx(p_zebra, abs=1e-5)
        assert error["true_probability"] == pytest.approx(p_ant, abs=1e-5)
        assert "/validation/ant/" in error["path"]
    everything = evaluate_model(str(model_dir), str(image_folder), show_errors=10)["errors"]
    assert len(everything) == 3 and everything[-1]["true_label"] == "cat"
    assert everything[-1]["true_probability"] == pytest.approx(p_cat, abs=1e-5)

    assert main(["eval", str(model_dir), "--data", str(image_folder), "--show-errors", "1"]) == 0
    report = capsys.readouterr().out
    assert "most confident mistakes (1)" in report
    assert f"{p_zebra:>6.1%}  zebra (true: ant, {p_ant:.1%})" in report and "validation/ant/0.png" in report
    assert main(["eval", str(model_dir), "--data", str(image_folder), "--show-errors", "3", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["errors"]) == 3
    assert main(["eval", str(model_dir), "--data", str(image_folder), "--show-errors", "-1"]) == 2
    assert "show_errors is a number of images" in capsys.readouterr().err


def test_tta_scores_the_mean_of_the_image_and_its_mirror(tmp_path):
    import timm
    import torch

    from tests.test_predict import HEIGHT, WIDTH

    torch.manual_seed(3)
    model = timm.create_model("hubclf_alexnet_slim", num_classes=3, img_size=(HEIGHT, WIDTH)).eval()
    model_path = save_pretrained(model, tmp_path / "varied", label_names=LABELS)
    data = make_folder(tmp_path / "data", COUNTS)
    result = evaluate_model(str(model_path), str(data), tta=True, batch_size=4)

    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    names, loss, right = [], 0.0, 0
    for path in sorted((data / "validation").rglob("*.png")):
        pixels = transform(Image.open(path).convert("RGB")).unsqueeze(0)
        with torch.inference_mode():
            probabilities = ((model(pixels).softmax(1) + model(pixels.flip(-1)).softmax(1)) / 2)[0]
        true = LABELS.index(path.parent.name)
        loss -= math.log(probabilities[true].item())
        right += int(probabilities.argmax().item() == true)
        names.append(path)
    assert result["tta"] is True
    assert result["loss"] == pytest.approx(loss / len(names), rel=1e-4)
    assert result["top1"] == pytest.approx(right / len(names))
    plain = evaluate_model(str(model_path), str(data), batch_size=4)
    assert plain["loss"] != pytest.approx(result["loss"], rel=1e-4)


def test_plot_draws_the_confusion_matrix(model_dir, image_folder, tmp_path, capsys):
    plot = tmp_path / "plots" / "cm.png"
    assert main(["eval", str(model_dir), "--data", str(image_folder), "--plot", str(plot)]) == 0
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.width > 300
    assert f"confusion matrix drawn in {plot}" in capsys.readouterr().err


# ---- accelerate launch: 2 processes ------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_processes_under_accelerate_launch_give_the_single_process_json(tmp_path):
    # A varied (seeded random) 5-class model so that predictions, top-5 and the confusion matrix are not trivial;
    # 15 readable + 2 unreadable images over 2 processes of 4: the last batch is padded, and must not count twice.
    names = ["ant", "bee", "cat", "dog", "eel"]
    model_dir = save_known_model(tmp_path / "model", names, bias=[0.0] * 5)
    model = from_pretrained(model_dir)
    model.get_classifier().weight.data.normal_(0, 0.5)
    save_pretrained(model, model_dir)
    data = make_folder(tmp_path / "data", dict.fromkeys(names, 3))
    add_bad_images(data / "validation" / "cat")[0].unlink()  # keep two: text named .jpg, a truncated PNG
    # --show-errors: the mistakes of both processes are gathered, and padded rows do not show up twice.
    eval_args = ["-m", "hubclf.cli", "eval", str(model_dir), "--data", str(data), "--json", "--show-errors", "20"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    single = subprocess.run(
        [sys.executable, *eval_args, "--batch-size", "8"], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    launch = cpu_launch_command(2)
    double = subprocess.run(
        [*launch, *eval_args, "--batch-size", "4"], env={**env, "ACCELERATE_USE_CPU": "1"}, cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert double.returncode == 0, double.stderr[-3000:]

    one, two = json.loads(single.stdout), json.loads(double.stdout)  # one JSON document: only the main process prints
    assert one["num_samples"] == 15 and one["num_skipped"] == 2 and "top5" in one
    assert (one.pop("num_processes"), two.pop("num_processes")) == (1, 2)
    assert two.pop("loss") == pytest.approx(one.pop("loss"), rel=1e-5)  # summed in another order
    assert len(one["errors"]) == one["num_samples"] - round(one["top1"] * one["num_samples"])
    for a, b in zip(one.pop("errors"), two.pop("errors"), strict=True):
        assert a.pop("probability") == pytest.approx(b.pop("probability"), abs=1e-5)
        assert a.pop("true_probability") == pytest.approx(b.pop("true_probability"), abs=1e-5)
        assert a == b
    assert two == one
    assert double.stderr.count("hubclf eval: cannot read image") == 2  # each bad image reported once
