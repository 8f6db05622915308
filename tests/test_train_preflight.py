"""hubclf.train.preflight: what train, lr-find and compare refuse from the settings alone, before any data is read.

The --data folders here are empty or missing on purpose: each error coming first shows nothing was read before it.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from hubclf.cli import main
from hubclf.train.preflight import (
    check_img_size,
    check_model_name,
    check_optimizer,
    check_output_dir,
    check_trackers,
    timm_schedules,
)
from tests.image_folders import one_image


def test_a_missing_data_folder_is_one_line_before_any_hardware_probe(tmp_path, capsys, caplog):
    caplog.set_level("INFO", logger="hubclf.train")
    code = main(["train", "--model", "hubclf_alexnet_slim", "--data", str(tmp_path / "no-such-data"),
                 "--output-dir", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.splitlines() == [
        f"hubclf train: error: --data {tmp_path / 'no-such-data'}: no such directory (and it does not look like a "
        "Hub dataset id)"
    ]
    assert "--mixed-precision auto" not in caplog.text and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["train"], ["train", "--strategy", "auto"], ["lr-find"], ["compare"]])
def test_an_img_size_below_the_minimum_is_one_line_before_any_data_is_read(tmp_path, capsys, command):
    # The data folder is empty: the size error coming first shows that nothing was read or probed before it.
    code = main([*command, "--model", "hubclf_alexnet_slim", "--data", str(tmp_path),
                 "--img-size", "224", "62", "--output-dir", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.splitlines() == [
        f"hubclf {command[0]}: error: --img-size 224 62 is below AlexNet's minimum 63 63 (H W)"
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("command", "flag"), [(["train"], "--push-to-hub"), (["compare"], "--push-best")])
def test_a_bad_repo_id_to_push_to_is_refused_before_training(tmp_path, capsys, command, flag):
    code = main([*command, "--model", "hubclf_alexnet_slim", "--data", str(tmp_path), flag, "me//flowers",
                 "--output-dir", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.splitlines() == [
        f"hubclf {command[0]}: error: 'me//flowers' is not a Hub repo id: Repo id must be in the form 'repo_name' "
        "or 'namespace/repo_name': 'me//flowers'."
    ]
    assert not (tmp_path / "out").exists()  # it was found when the run had to push, after all its epochs


def test_an_output_dir_inside_a_file_is_one_line_before_any_data_is_read(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a folder")
    for output_dir in (notes, notes / "run1"):  # were "[Errno 17] File exists" / "[Errno 20] Not a directory"
        code = main(["train", "--model", "hubclf_alexnet_slim", "--data", str(tmp_path),
                     "--output-dir", str(output_dir)])  # fmt: skip
        assert code == 2
        assert capsys.readouterr().err == (
            f"hubclf train: error: --output-dir {output_dir}: {notes} is a file, not a folder\n"
        )
    check_output_dir(str(tmp_path / "new" / "nested" / "run"))  # missing folders are the run's to create
    assert not (tmp_path / "new").exists()


def test_img_size_is_checked_only_where_the_architecture_states_a_minimum(tmp_path):
    check_img_size("hubclf_vgg11", (32, 32))  # VGG's five 2×2 max-pools need 32 pixels a side
    with pytest.raises(ValueError, match="below VGG's minimum 32 32"):
        check_img_size("hubclf_vgg11", (32, 31))
    check_img_size("resnet18", (8, 8))  # timm's own models state no minimum: left to them


def test_a_hub_model_is_checked_through_its_config_alone_before_any_data(tmp_path, use_hub, new_repo_id, capsys):
    import timm

    import hubclf

    repo_id = new_repo_id("preflight")
    model = timm.create_model("hubclf_alexnet_slim", num_classes=2, img_size=(64, 64))
    hubclf.push_to_hub(model, repo_id, token=use_hub.token, label_names=["a", "b"])
    code = main(["train", "--model", repo_id, "--data", str(tmp_path / "no-such-data"), "--img-size", "16", "64",
                 "--output-dir", str(tmp_path / "out")])  # fmt: skip
    assert code == 2  # the data is missing too: checked first, as it costs nothing
    assert capsys.readouterr().err.strip().endswith("no-such-data: no such directory (and it does not look like a Hub "
                                                    "dataset id)")  # fmt: skip
    (tmp_path / "data").mkdir()
    code = main(["train", "--model", repo_id, "--data", str(tmp_path / "data"), "--img-size", "16", "64",
                 "--output-dir", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err == "hubclf train: error: --img-size 16 64 is below AlexNet's minimum 63 63 (H W)\n"
    code = main(["train", "--model", "hubclf-test/no-such-model", "--data", str(tmp_path / "data"),
                 "--output-dir", str(tmp_path / "out")])  # fmt: skip
    assert code == 2 and "no Hub repo hubclf-test/no-such-model" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_local_model_folder_is_checked_through_its_config(tmp_path):
    import timm

    import hubclf

    folder = tmp_path / "base" / "best"
    hubclf.save_pretrained(timm.create_model("hubclf_alexnet_slim", num_classes=2, img_size=(64, 64)), folder)
    for model in (str(folder), f"local-dir:{folder}"):
        with pytest.raises(ValueError, match=r"^--img-size 16 64 is below AlexNet's minimum 63 63 \(H W\)$"):
            check_img_size(model, (16, 64))
        check_img_size(model, (63, 63))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"architecture": "hubclf_alexnet", "architecture": 1}')
    # read with config_check's rules, as loading the model would
    with pytest.raises(ValueError, match="repeats the key .architecture."):
        check_img_size(str(tmp_path / "broken"), (16, 16))


def test_trackers_must_exist_and_be_installed(monkeypatch):
    with pytest.raises(ValueError, match="unknown tracker"):
        check_trackers(["tensorbored"])
    monkeypatch.setattr("accelerate.tracking.get_available_trackers", lambda: [])
    with pytest.raises(ValueError, match="the tensorboard package is not installed"):
        check_trackers(["tensorboard"])  # Accelerate alone would drop it with a debug-level message
    check_trackers([])


# ---- help at the first mistake ------------------------------------------------------------------------------------
def run_train(tmp_path, capsys, *flags: str, data: str | None = None) -> str:
    args = ["--model", "hubclf_alexnet_slim", "--data", data or str(tmp_path), "--output-dir", str(tmp_path / "o")]
    code = main(["train", *args, *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    return err


def test_the_natural_guesses_for_a_model_name_get_hubclfs_own_names(tmp_path, capsys):
    main(["train", "--model", "alexnet", "--data", str(tmp_path), "--output-dir", str(tmp_path / "o")])
    assert capsys.readouterr().err.strip().endswith("; did you mean hubclf_alexnet, hubclf_alexnet_slim?")
    with pytest.raises(ValueError, match="did you mean hubclf_vgg11_slim"):
        check_model_name("vgg11_slim")


def test_images_without_class_folders_are_told_to_get_some(tmp_path, capsys):
    one_image(tmp_path / "flat", "a.png")
    one_image(tmp_path / "flat", "b.png")
    err = run_train(tmp_path, capsys, data=str(tmp_path / "flat"))  # was: the data has 1 class(es) ['flat']
    assert "the 2 images are directly in the folder, so they have no class: put the images in one folder per " in err


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--opt", "adamx", "--opt adamx: not a timm optimizer; did you mean adamax, adam, radam?"),
     ("--sched", "cosin", "--sched cosin: not a timm schedule; did you mean cosine?")],
)  # fmt: skip
def test_optimizer_and_schedule_names_are_checked_before_any_data_is_read(tmp_path, capsys, flag, value, message):
    # Were timm's own errors, after the data was loaded and the model built.
    assert run_train(tmp_path, capsys, flag, value) == f"hubclf train: error: {message}"
    check_optimizer("lookahead_adamw")
    assert "wsd" in timm_schedules() and "plateau" in timm_schedules()


def test_a_mistyped_relative_folder_offline_is_reported_without_asking_the_hub(tmp_path, capsys, monkeypatch):
    from huggingface_hub import HfApi, constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(HfApi, "dataset_info", lambda *a, **k: pytest.fail("looked up on the Hub"))
    started = time.perf_counter()
    err = run_train(tmp_path, capsys, data="photoz")  # was ~37 s of Hub retries
    assert err == (
        "hubclf train: error: --data photoz: no such folder here, and HF_HUB_OFFLINE is set, so it is not looked up "
        "as a Hub dataset (nor is it cached)"
    )
    assert time.perf_counter() - started < 5


def test_a_mistyped_folder_with_no_hub_in_reach_fails_at_the_first_lookup(tmp_path, capsys, monkeypatch):
    from huggingface_hub import HfApi, constants

    calls = []

    def unreachable(self, repo_id, **kwargs):
        calls.append(repo_id)
        raise ConnectionError("Name or service not known")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(HfApi, "dataset_info", unreachable)
    err = run_train(tmp_path, capsys, data="photoz")
    assert err.startswith("hubclf train: error: --data photoz: no such folder here, and the Hub cannot be reached")
    assert calls == ["photoz"]  # once, no retries


def test_the_quick_checks_need_neither_torch_nor_timm(tmp_path):
    # They run before the command line imports torch and timm (seconds): a typo is reported at once.
    code = (
        "import sys; from hubclf.train.config import TrainConfig; from hubclf.train.preflight import quick_checks\n"
        f"quick_checks(TrainConfig(model='hubclf_alexnet', data={str(tmp_path)!r}, output_dir='o'))\n"
        "assert 'torch' not in sys.modules and 'timm' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
