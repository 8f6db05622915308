"""hubclf.train.resume_check: a --resume with other settings names each difference, refuses those its checkpoint
cannot continue under (another model, other data or classes, another freezing plan), and says what the others
change (another --epochs recomputes the schedule)."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from hubclf.cli import main
from hubclf.train import TrainConfig, train
from hubclf.train.resume_check import SETTINGS_FILE, check_resume_data, check_resume_settings, write_settings
from tests.image_folders import make_image_folder

BASE = TrainConfig(model="hubclf_alexnet_slim", data="photos", output_dir="out", epochs=5)


def saved(tmp_path, config: TrainConfig = BASE, labels=("a", "b")) -> TrainConfig:
    write_settings(tmp_path, dataclasses.replace(config, output_dir=str(tmp_path)), list(labels), {"train": 8})
    return dataclasses.replace(config, output_dir=str(tmp_path), resume="latest")


def test_settings_that_cannot_continue_are_refused_each_named(tmp_path):
    resumed = saved(tmp_path)
    with pytest.raises(ValueError) as error:
        check_resume_settings(dataclasses.replace(resumed, model="resnet18", data="other", freeze="backbone"))
    message = str(error.value)
    assert message.startswith(f"--resume: {tmp_path} holds a run with other settings, which its checkpoint cannot")
    for change in ("--model resnet18 (was hubclf_alexnet_slim)", "--data other (was photos)",
                   "--freeze backbone (was none)"):  # fmt: skip
        assert change in message


def test_other_settings_continue_and_say_what_they_change(tmp_path, caplog):
    resumed = saved(tmp_path)
    assert check_resume_settings(resumed) == []  # the same settings: nothing to say
    notes = check_resume_settings(dataclasses.replace(resumed, epochs=8, lr=0.01, num_workers=0))
    assert notes == [
        "--epochs 8 (was 5): the learning-rate schedule is recomputed for 8 epochs, so the rate from here on is not "
        "the one the first part of the run was heading for",
        "--lr 0.01 (was 0.001): the rest of the run uses the new value",
    ]  # --num-workers changes nothing trained: not named
    assert "--resume with a changed setting: --epochs 8 (was 5)" in caplog.text
    assert check_resume_settings(dataclasses.replace(resumed, resume=None)) == []  # a new run compares nothing


def test_other_classes_are_refused_before_the_checkpoint_is_loaded(tmp_path, caplog):
    saved(tmp_path)
    with pytest.raises(ValueError, match=r"trained on 2 classes \['a', 'b'\], the data now has 3: \['a', 'b', 'c'\]"):
        check_resume_data(tmp_path, ["a", "b", "c"], {"train": 8})
    assert check_resume_data(tmp_path, ["a", "b"], {"train": 9}) == [
        "the train split has 9 images, the run started with 8"
    ]


@pytest.mark.slow
def test_resuming_on_other_data_or_epochs_through_the_cli(tmp_path, capsys, caplog):
    three = make_image_folder(tmp_path / "three", 3, per_class=6)
    four = make_image_folder(tmp_path / "four", 4, per_class=6)
    out = tmp_path / "out"
    args = ["train", "--model", "hubclf_alexnet_slim", "--no-pretrained", "--img-size", "64", "64", "--batch-size",
            "8", "--num-workers", "0", "--warmup-epochs", "0", "--epochs", "1", "--val-split", "0.5",
            "--output-dir", str(out)]  # fmt: skip
    assert main([*args, "--data", str(three)]) == 0
    assert json.loads((out / SETTINGS_FILE).read_text())["label_names"] == ["class_0", "class_1", "class_2"]
    capsys.readouterr()

    # Another folder: refused before any data is read (was PyTorch's "size mismatch for head.fc.weight").
    assert main([*args, "--data", str(four), "--resume", "latest", "--epochs", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hubclf train: error: --resume:") and f"--data {four} (was {three})" in err
    assert len(err.splitlines()) == 1

    # The same folder with a fourth class: refused once its classes are known, before the checkpoint is loaded.
    make_image_folder(three, 4, per_class=6)
    assert main([*args, "--data", str(three), "--resume", "latest", "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "trained on 3 classes ['class_0', 'class_1', 'class_2'], the data now has 4" in err
    assert "size mismatch" not in err
    for extra in (three / "class_3").iterdir():
        extra.unlink()
    (three / "class_3").rmdir()

    # Another --epochs continues, and says that the schedule changes; the log does not claim random weights.
    caplog.set_level(logging.INFO)
    caplog.clear()
    result = train(TrainConfig(model="hubclf_alexnet_slim", data=str(three), output_dir=str(out), pretrained=False,
                               img_size=(64, 64), batch_size=8, num_workers=0, warmup_epochs=0, epochs=2,
                               val_split=0.5, resume="latest"))  # fmt: skip
    assert len(result.history) == 2
    assert caplog.text.count("--epochs 2 (was 1): the learning-rate schedule is recomputed for 2 epochs") == 1
    assert "starts from random weights" not in caplog.text
