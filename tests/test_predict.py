"""hubclf.predict and ``hubclf predict``: folders walked in order, label names with the right probabilities, the model's
rectangular input size, unreadable files reported without stopping the run, exit codes, JSON, a model on the Hub.

``save_known_model`` (a model whose predictions are known in advance) is also used by ``tests/test_evaluate.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import hubclf
from hubclf.cli import main
from hubclf.predict import class_probabilities, find_images, predict
from tests.image_folders import add_bad_images

LABELS = ["zebra", "ant", "cat"]  # deliberately not alphabetical: an imagefolder would sort them differently
BIAS = [2.0, 0.0, -1.0]  # with a zero classifier weight, every image gets softmax(BIAS)
HEIGHT, WIDTH = 72, 64  # rectangular, like the seed's 448×224, but tiny


def softmax(logits: list[float]) -> list[float]:
    exps = [math.exp(x) for x in logits]
    return [e / sum(exps) for e in exps]


def save_known_model(path: Path, label_names: list[str] = LABELS, bias: list[float] = BIAS) -> Path:
    """A saved hubclf_alexnet_slim whose logits are ``bias`` for every image (zero classifier weight)."""
    torch.manual_seed(0)
    model = timm.create_model("hubclf_alexnet_slim", num_classes=len(label_names), img_size=(HEIGHT, WIDTH))
    with torch.no_grad():
        model.get_classifier().weight.zero_()
        model.get_classifier().bias.copy_(torch.tensor(bias))
    return hubclf.save_pretrained(model, path, label_names=label_names)


def save_image(path: Path, seed: int, size: tuple[int, int] = (90, 50)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_known_model(tmp_path_factory.mktemp("predict") / "model")


@pytest.fixture
def photos(tmp_path) -> dict:
    """A loose file and a folder with nested images, unreadable files, a text file and a hidden image."""
    single = save_image(tmp_path / "single.jpg", seed=0)
    folder = tmp_path / "folder"
    good = [save_image(folder / "b.png", 1), save_image(folder / "a" / "z.png", 2, (40, 120))]
    bad = add_bad_images(folder)  # empty.jpg, notes.jpg, truncated.png
    (folder / "notes.txt").write_text("not an image extension: ignored when walking the folder")
    save_image(folder / ".cache" / "hidden.png", 3)
    return {"single": single, "folder": folder, "good": [single, *good], "bad": bad}


# ---- finding files -----------------------------------------------------------------------------------------------
def test_folders_are_walked_recursively_in_sorted_order_and_files_kept_as_given(photos):
    folder = photos["folder"]
    found = find_images([photos["single"], folder])
    expected_in_folder = sorted([folder / "a" / "z.png", folder / "b.png", *photos["bad"]])
    assert found == [photos["single"], *expected_in_folder]  # no notes.txt, nothing hidden
    assert find_images([folder]) == find_images([folder])  # deterministic


def test_missing_paths_and_empty_folders_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        find_images([tmp_path / "nope.jpg"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files found"):
        find_images([tmp_path / "empty"])


# ---- Python API ---------------------------------------------------------------------------------------------------
def test_predict_gives_label_names_known_probabilities_at_the_models_input_size(model_dir, photos):
    model = hubclf.from_pretrained(model_dir).train()  # predict switches to eval mode and back
    input_shapes = []
    model.register_forward_pre_hook(lambda module, args: input_shapes.append(tuple(args[0].shape)))

    results = predict(model, [photos["single"], photos["folder"]], top_k=5, batch_size=2)

    assert [r.path for r in results] == [str(p) for p in find_images([photos["single"], photos["folder"]])]
    assert all(shape[1:] == (3, HEIGHT, WIDTH) for shape in input_shapes)  # 72×64, whatever the file's size
    assert len(input_shapes) == 3  # 6 files in batches of 2
    expected = sorted(zip(softmax(BIAS), LABELS, strict=True), reverse=True)
    by_path = {r.path: r for r in results}
    for path in photos["good"]:
        result = by_path[str(path)]
        assert result.error is None
        assert [p["label"] for p in result.predictions] == [label for _, label in expected]  # top_k capped at 3
        assert [p["score"] for p in result.predictions] == pytest.approx([score for score, _ in expected], abs=1e-5)
    for path in photos["bad"]:
        result = by_path[str(path)]
        assert result.predictions == []
        assert str(path) in result.error and "cannot read image" in result.error
    assert model.training


def test_predict_rejects_bad_arguments(model_dir, photos):
    with pytest.raises(ValueError, match="top_k"):
        predict(model_dir, [photos["single"]], top_k=0)
    with pytest.raises(FileNotFoundError):
        predict(model_dir / "missing", [photos["single"]])


# ---- CLI ------------------------------------------------------------------------------------------------------------
def test_cli_prints_label_names_reports_bad_files_and_exits_1(model_dir, photos, capsys):
    code = main(["predict", str(model_dir), str(photos["single"]), str(photos["folder"]), "--top-k", "2"])
    out, err = capsys.readouterr()
    assert code == 1  # some files could not be read
    # softmax([2, 0, -1]) = (0.844, 0.114, 0.042)
    assert out.splitlines()[:3] == [str(photos["single"]), "   84.4%  zebra", "   11.4%  ant"]
    assert "cat" not in out  # only the top 2
    for path in photos["good"]:
        assert str(path) in out
    for path in photos["bad"]:
        assert f"hubclf predict: cannot read image {path}" in err
        assert str(path) not in out
    assert "3 of 6 images could not be read" in err


def test_cli_exits_0_when_every_image_is_read(model_dir, photos, capsys):
    assert main(["predict", str(model_dir), *map(str, photos["good"])]) == 0
    assert capsys.readouterr().err == ""


def test_cli_json_is_machine_readable_with_error_entries(model_dir, photos, capsys):
    code = main(["predict", str(model_dir), str(photos["folder"]), "--json", "--top-k", "1", "--batch-size", "4"])
    output = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [entry["path"] for entry in output] == [str(p) for p in find_images([photos["folder"]])]
    for entry in output:
        assert set(entry) == {"path", "predictions", "error"}
        if Path(entry["path"]) in photos["bad"]:
            assert entry["predictions"] == [] and "cannot read image" in entry["error"]
        else:
            assert entry["error"] is None
            assert entry["predictions"] == [{"label": "zebra", "score": pytest.approx(softmax(BIAS)[0], abs=1e-5)}]


def test_cli_usage_errors_exit_2(model_dir, photos, tmp_path, capsys):
    assert main(["predict", str(model_dir), str(tmp_path / "nope.jpg")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "no-model"), str(photos["single"])]) == 2
    assert main(["predict", str(model_dir), str(photos["single"]), "--top-k", "0"]) == 2
    with pytest.raises(SystemExit) as exit_info:  # argparse: no image given
        main(["predict", str(model_dir)])
    assert exit_info.value.code == 2


def test_predict_a_model_pushed_to_the_hub(model_dir, photos, use_hub, new_repo_id, capsys):
    repo_id = new_repo_id("predict")
    hubclf.push_to_hub(model_dir, repo_id, token=use_hub.token)
    code = main(["predict", repo_id, str(photos["single"]), "--json", "--top-k", "3", "--revision", "main"])
    output = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [p["label"] for p in output[0]["predictions"]] == ["zebra", "ant", "cat"]


# ---- test-time augmentation ------------------------------------------------------------------------------------------
def varied_model(seed: int = 0) -> torch.nn.Module:
    """A model whose predictions depend on the pixels and their left-right layout (random weights, head included)."""
    torch.manual_seed(seed)
    return timm.create_model("hubclf_alexnet_slim", num_classes=len(LABELS), img_size=(HEIGHT, WIDTH)).eval()


def test_tta_is_the_mean_of_the_softmax_of_the_image_and_its_mirror():
    model = varied_model()
    pixels = torch.randn(3, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        plain = model(pixels).softmax(dim=1)
        mirrored = model(pixels.flip(-1)).softmax(dim=1)
        tta = class_probabilities(model, pixels, tta=True)
    torch.testing.assert_close(tta, (plain + mirrored) / 2)
    assert not torch.allclose(plain, mirrored)  # the two views really differ, so the mean is not trivially either
    torch.testing.assert_close(class_probabilities(model, pixels), plain)


def test_predict_and_cli_tta_average_the_two_views(tmp_path, photos, capsys):
    model = varied_model()
    folder = hubclf.save_pretrained(model, tmp_path / "varied", label_names=LABELS)
    image = photos["single"]
    data_config = timm.data.resolve_data_config({}, model=model)
    pixels = timm.data.create_transform(**data_config)(Image.open(image).convert("RGB")).unsqueeze(0)
    with torch.inference_mode():
        expected = ((model(pixels).softmax(1) + model(pixels.flip(-1)).softmax(1)) / 2)[0]

    [result] = predict(folder, [image], tta=True, top_k=3)
    scores = {p["label"]: p["score"] for p in result.predictions}
    assert [scores[name] for name in LABELS] == pytest.approx(expected.tolist(), abs=1e-5)
    [plain] = predict(folder, [image], top_k=3)
    assert plain.predictions != result.predictions

    assert main(["predict", str(folder), str(image), "--tta", "--json", "--top-k", "3"]) == 0
    printed = {p["label"]: p["score"] for p in json.loads(capsys.readouterr().out)[0]["predictions"]}
    assert printed == pytest.approx(scores)


def test_a_thin_strip_is_listed_like_a_corrupt_file_and_the_other_images_are_classified(model_dir, tmp_path, capsys):
    """``predict strip.png ok.png`` classified nothing: a 375-byte 100000x1 PNG asked the resize for gigabytes."""
    strip = tmp_path / "strip.png"
    Image.new("RGB", (100_000, 1)).save(strip)
    ok = save_image(tmp_path / "ok.png", seed=1)
    code = main(["predict", str(model_dir), str(strip), str(ok), "--top-k", "1"])
    out, err = capsys.readouterr()
    assert code == 1  # some images could not be read
    assert out.splitlines() == [str(ok), "   84.4%  zebra"]
    assert f"cannot read image {strip}: the model's transform would resize its 100000x1 pixels" in err


def test_a_named_path_that_is_not_a_regular_file_is_refused_unopened(model_dir, tmp_path, capsys):
    """A FIFO typed as a predict path hung predict (opening it waits for a writer)."""
    import os

    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    assert main(["predict", str(model_dir), str(fifo)]) == 2
    assert capsys.readouterr().err == f"hubclf predict: error: {fifo} is a FIFO (named pipe), not an image file\n"
    assert main(["predict", str(model_dir), "/dev/zero"]) == 2
    assert "/dev/zero is a character device, not an image file" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "folder" / "pipe.jpg")  # inside a folder: left out, like a file that is not an image
    save_image(tmp_path / "folder" / "ok.png", seed=2)
    assert find_images([tmp_path / "folder"]) == [tmp_path / "folder" / "ok.png"]


def test_file_names_from_others_are_escaped_in_the_warnings_too(model_dir, tmp_path, capsys):
    """An unreadable file named with an escape sequence reached the terminal raw in predict's warning line."""
    bad = tmp_path / "red\x1b[31mALERT.png"
    bad.write_bytes(b"not an image")
    assert main(["predict", str(model_dir), str(bad)]) == 1
    err = capsys.readouterr().err
    assert "\x1b" not in err and "red\\x1b[31mALERT.png" in err
