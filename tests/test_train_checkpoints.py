"""hubclf.train.checkpoints: trainer state, crash-safe saving, finding the latest complete checkpoint, pruning by
timeline (lineage) rather than by step number."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from accelerate import Accelerator

from hubclf.train.checkpoints import (
    STATE_FILE,
    CheckpointError,
    TrainerState,
    checkpoint_dir,
    find_checkpoint,
    incomplete_checkpoints,
    list_checkpoints,
    save_checkpoint,
)


@pytest.fixture
def accelerator():
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    accelerator.prepare(model, optimizer)
    return accelerator


def names(paths):
    return [p.name for p in paths]


def test_state_round_trips_through_strict_json(tmp_path):
    state = TrainerState(epoch=2, batches_done=3, global_step=13, stage="head", best_top1=0.5, best_epoch=1)
    state.history.append({"epoch": 1, "val_top1": 0.5, "val_loss": float("nan")})
    state.save(tmp_path)
    assert "NaN" not in (tmp_path / STATE_FILE).read_text()  # strict JSON: null
    loaded = TrainerState.load(tmp_path)
    assert loaded.history[0]["val_loss"] is None and loaded.global_step == 13


def test_a_damaged_state_file_is_an_error_that_names_it(tmp_path):
    TrainerState(global_step=3).save(tmp_path)
    text = (tmp_path / STATE_FILE).read_text()
    (tmp_path / STATE_FILE).write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match=f"{STATE_FILE}.*unreadable"):
        TrainerState.load(tmp_path)
    with pytest.raises(CheckpointError, match="missing"):
        TrainerState.load(tmp_path / "nowhere")


def test_save_keeps_the_last_k_and_latest_skips_incomplete_ones(tmp_path, accelerator, caplog):
    state = TrainerState()
    for step in (5, 10, 15):
        state.global_step = step
        save_checkpoint(accelerator, tmp_path, state, keep=2)
    assert names(list_checkpoints(tmp_path)) == ["step_00000010", "step_00000015"]
    assert (checkpoint_dir(tmp_path, 15) / "model.safetensors").is_file()
    assert state.lineage == ["step_00000005", "step_00000010", "step_00000015"]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))  # written under a temporary name, then renamed

    # What kills leave behind: a save that never got its name, a folder without state, a truncated state file.
    (tmp_path / "checkpoints" / ".tmp-step_00000020").mkdir()
    checkpoint_dir(tmp_path, 25).mkdir()
    damaged = checkpoint_dir(tmp_path, 30)
    damaged.mkdir()
    (damaged / STATE_FILE).write_text('{"epoch": 1, "glo')
    assert len(incomplete_checkpoints(tmp_path)) == 3
    caplog.set_level(logging.WARNING, logger="hubclf.train.checkpoints")
    assert find_checkpoint("latest", tmp_path) == checkpoint_dir(tmp_path, 15)
    for skipped in (".tmp-step_00000020", "step_00000025", "step_00000030"):
        assert f"skipping incomplete checkpoint {tmp_path / 'checkpoints' / skipped}" in caplog.text
    assert find_checkpoint(str(checkpoint_dir(tmp_path, 10)), tmp_path) == checkpoint_dir(tmp_path, 10)
    with pytest.raises(FileNotFoundError, match="not a complete hubclf checkpoint.*missing"):
        find_checkpoint(str(checkpoint_dir(tmp_path, 25)), tmp_path)
    with pytest.raises(FileNotFoundError, match="unreadable"):
        find_checkpoint(str(damaged), tmp_path)

    # The next save clears the leftover temporary folder.
    state.global_step = 35
    save_checkpoint(accelerator, tmp_path, state, keep=2)
    assert not (tmp_path / "checkpoints" / ".tmp-step_00000020").exists()


def test_pruning_follows_the_resumed_timeline_not_step_numbers(tmp_path, accelerator):
    state = TrainerState()
    for step in (10, 20, 30, 40):
        state.global_step = step
        save_checkpoint(accelerator, tmp_path, state, keep=2)
    assert names(list_checkpoints(tmp_path)) == ["step_00000030", "step_00000040"]

    # Resume from step 30 (say, with another --save-every-steps): its next checkpoint, step 35, is the latest,
    # the checkpoint it resumed from is kept and the abandoned step 40 goes.
    resumed = TrainerState.load(checkpoint_dir(tmp_path, 30))
    resumed.global_step = 35
    save_checkpoint(accelerator, tmp_path, resumed, keep=2)
    assert names(list_checkpoints(tmp_path)) == ["step_00000030", "step_00000035"]
    assert find_checkpoint("latest", tmp_path) == checkpoint_dir(tmp_path, 35)
    assert TrainerState.load(checkpoint_dir(tmp_path, 35)).lineage[-2:] == ["step_00000030", "step_00000035"]


def test_latest_without_a_complete_checkpoint_starts_over_and_says_so(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="hubclf.train.checkpoints")
    assert find_checkpoint("latest", tmp_path) is None
    assert "no complete checkpoint in" in caplog.text and "starting the run over" in caplog.text
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        find_checkpoint(str(tmp_path / "nowhere"), tmp_path)


# ---- no pickle, and verified -------------------------------------------------------------------------------------
def trained_accelerator(ema: bool = True):
    """An Accelerator with a prepared channels-last conv net and fused AdamW after two steps, and an EMA of it."""
    from timm.utils import ModelEmaV3

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    model(torch.zeros(1, 3, 6, 6))
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    model, optimizer = accelerator.prepare(model, optimizer)
    average = ModelEmaV3(model, decay=0.9) if ema else None
    for _ in range(2):
        accelerator.backward(model(torch.randn(2, 3, 6, 6)).square().sum())
        optimizer.step()
        optimizer.zero_grad()
        if average is not None:
            average.update(model)
    return accelerator, model, optimizer, average


def snapshot(model, optimizer, average) -> dict:
    import random

    import numpy as np

    return {
        "model": {k: v.clone() for k, v in model.state_dict().items()},
        "ema": {k: v.clone() for k, v in average.state_dict().items()},
        "optimizer": {(p, k): (v.clone(), v.stride()) for p, entries in optimizer.state_dict()["state"].items()
                      for k, v in entries.items()},  # fmt: skip
        "rng": (random.random(), float(np.random.rand()), torch.rand(1).item()),
    }


def test_the_whole_training_state_round_trips_without_pickle(tmp_path, monkeypatch):
    """--model-ema checkpoints went through Accelerate's register_for_checkpointing into custom_checkpoint_0.pkl, read
    back with torch.load(weights_only=False); the optimizer and RNG states were pickles too."""
    import pickle

    from hubclf.train.checkpoints import load_training_state

    accelerator, model, optimizer, average = trained_accelerator()
    state = TrainerState(global_step=2, epoch=1)
    path = save_checkpoint(accelerator, tmp_path, state, keep=2, ema=average, record={"config": {"lr": 0.1}})
    assert sorted(p.name for p in path.iterdir()) == [
        "ema.safetensors", "manifest.json", "model.safetensors", "optimizer.safetensors",
        "random_states_0.safetensors", "trainer_state.json",
    ]  # fmt: skip
    expected = snapshot(model, optimizer, average)
    # Move everything on, then restore: with no unpickler available at all.
    for _ in range(2):
        accelerator.backward(model(torch.randn(2, 3, 6, 6)).sum())
        optimizer.step()
        average.update(model)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("an unpickler ran")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(pickle, "Unpickler", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    load_training_state(accelerator, path, ema=average)
    actual = snapshot(model, optimizer, average)
    for part in ("model", "ema"):
        assert all(torch.equal(expected[part][k], actual[part][k]) for k in expected[part]), part
    for key, (value, strides) in expected["optimizer"].items():
        assert torch.equal(value, actual["optimizer"][key][0]) and strides == actual["optimizer"][key][1], key
    assert expected["rng"] == actual["rng"]


def test_a_background_save_writes_the_state_of_its_instant_while_training_goes_on(tmp_path):
    import threading

    from hubclf.train.background import BackgroundWrites
    from hubclf.train.checkpoints import load_training_state

    accelerator, model, optimizer, average = trained_accelerator()
    expected = snapshot(model, optimizer, average)
    writes, gate, order = BackgroundWrites(), threading.Event(), []

    def held_first() -> None:  # a best/ write that takes a while
        gate.wait(timeout=60)
        order.append("first")

    path = save_checkpoint(accelerator, tmp_path, TrainerState(global_step=2), keep=2, ema=average, writes=writes,
                           first=held_first)  # fmt: skip
    assert not path.exists() and writes.busy  # returned at once; the write is held
    for _ in range(2):  # training goes on, changing every tensor in place
        accelerator.backward(model(torch.randn(2, 3, 6, 6)).sum())
        optimizer.step()
        average.update(model)
    gate.set()
    writes.wait()
    assert order == ["first"] and list_checkpoints(tmp_path) == [path]
    load_training_state(accelerator, path, ema=average)
    actual = snapshot(model, optimizer, average)
    for part in ("model", "ema"):
        assert all(torch.equal(expected[part][k], actual[part][k]) for k in expected[part]), part
    assert all(torch.equal(value, actual["optimizer"][key][0]) for key, (value, _) in expected["optimizer"].items())


def test_a_failed_background_save_is_raised_by_the_next_save_and_leaves_the_last_checkpoint(tmp_path, monkeypatch):
    from hubclf.train import checkpoints
    from hubclf.train.background import BackgroundWrites

    accelerator, *_ = trained_accelerator(ema=False)
    writes = BackgroundWrites()
    first = save_checkpoint(accelerator, tmp_path, TrainerState(global_step=2), keep=2, writes=writes)
    writes.wait()

    def disk_full(directory, record=None, digests=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoints, "write_manifest", disk_full)
    save_checkpoint(accelerator, tmp_path, TrainerState(global_step=4), keep=2, writes=writes)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(accelerator, tmp_path, TrainerState(global_step=6), keep=2, writes=writes)
    assert list_checkpoints(tmp_path) == [first]
    assert [path.name for path, _ in incomplete_checkpoints(tmp_path)] == [".tmp-step_00000004"]


def test_a_foreground_save_copies_no_module(tmp_path, monkeypatch):
    """Without ``writes`` (the fallback when a copy would not fit in memory), the models are written as they are."""
    from hubclf.train import checkpoints

    accelerator, *_ = trained_accelerator()

    def no_copies(*args, **kwargs):
        raise AssertionError("a foreground save copied the models")

    monkeypatch.setattr(checkpoints, "cpu_copies", no_copies)
    path = save_checkpoint(accelerator, tmp_path, TrainerState(global_step=2), keep=2)
    assert list_checkpoints(tmp_path) == [path]


def test_cpu_copies_keep_shared_modules_shared_and_requires_grad_as_it_was():
    from hubclf.train.checkpoints import cpu_copies

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    model[0].requires_grad_(False)  # a frozen backbone
    memo = {}
    whole, head = cpu_copies([model, model[1]], memo)
    assert head is whole[1]  # the classifier inside the model: copied once
    (again,) = cpu_copies([model[1]], memo)
    assert again is head  # and across calls that share the memo
    assert [p.requires_grad for p in whole.parameters()] == [False, False, True, True]
    before = model[1].weight.detach().clone()
    with torch.no_grad():
        model[1].weight.add_(1.0)
    assert torch.equal(head.weight, before) and head.weight.data_ptr() != model[1].weight.data_ptr()


EVIL = '''
import os, sys, torch
class Payload:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[2],))
torch.save({"module.0.weight": Payload()}, sys.argv[1])
'''


def test_a_tampered_checkpoint_runs_no_code_whatever_its_manifest_says(tmp_path):
    """A custom_checkpoint_0.pkl whose __reduce__ creates a file: refused unread as unlisted, and, listed in a rewritten
    manifest, still never read (nothing in a checkpoint is unpickled)."""
    import subprocess
    import sys

    from hubclf.train.checkpoints import CheckpointError, load_training_state, write_manifest

    accelerator, model, optimizer, average = trained_accelerator()
    path = save_checkpoint(accelerator, tmp_path, TrainerState(global_step=2), keep=2, ema=average)
    marker = tmp_path / "PWNED"
    evil = path / "custom_checkpoint_0.pkl"
    subprocess.run([sys.executable, "-c", EVIL, str(evil), str(marker)], check=True)
    with pytest.raises(CheckpointError, match=r"holds 'custom_checkpoint_0.pkl', which its manifest does not list"):
        load_training_state(accelerator, path, ema=average)
    write_manifest(path)  # the attacker rewrites the manifest too
    load_training_state(accelerator, path, ema=average)
    assert not marker.exists()


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda d: (d / "optimizer.safetensors").write_bytes((d / "optimizer.safetensors").read_bytes()[:-1] + b"\x01"),
         r"optimizer.safetensors does not match its manifest \(xxh3_128 differs\)"),
        (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-8]),
         r"model.safetensors has 1,\d{3} bytes, its manifest says 1,\d{3}:"),
        (lambda d: (d / "random_states_0.safetensors").unlink(),
         r"random_states_0.safetensors is missing, but the checkpoint's manifest lists it"),
        (lambda d: ((d / "ema.safetensors").unlink(), (d / "ema.safetensors").symlink_to("/dev/zero")),
         r"ema.safetensors is a symbolic link, not the regular file its manifest lists"),
        (lambda d: (d / "manifest.json").unlink(),
         r"manifest.json is missing: .* was written by an older hubclf \(whose checkpoints hold pickles\) or not by"),
        (lambda d: (d / "manifest.json").write_text('{"format": "hubclf-checkpoint/1", "files": {"../x": {}}}'),
         r"manifest.json: the entry for '../x' is not a file name with bytes and sha256"),
    ],
    ids=["bit_flip", "truncated", "missing_file", "symlink_to_a_device", "no_manifest", "path_in_manifest"],
)  # fmt: skip
def test_resume_refuses_a_folder_that_does_not_match_its_manifest(tmp_path, damage, message):
    from hubclf.train.checkpoints import CheckpointError, load_training_state

    accelerator, model, optimizer, average = trained_accelerator()
    path = save_checkpoint(accelerator, tmp_path, TrainerState(global_step=2), keep=2, ema=average)
    damage(path)
    with pytest.raises(CheckpointError, match=message) as error:
        load_training_state(accelerator, path, ema=average)
    assert "\n" not in str(error.value)


def test_a_checkpoint_of_the_earlier_manifest_format_sha256_is_still_checked(tmp_path):
    """Checkpoints written before xxh3_128 list sha256s (``hubclf-checkpoint/1``): they resume, and are checked."""
    import hashlib
    import json

    from hubclf.train.checkpoints import MANIFEST_FILE, load_training_state

    accelerator, model, optimizer, average = trained_accelerator()
    path = save_checkpoint(accelerator, tmp_path, TrainerState(global_step=2), keep=2, ema=average)
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    assert manifest["format"] == "hubclf-checkpoint/2" and all("xxh3_128" in e for e in manifest["files"].values())
    manifest["format"] = "hubclf-checkpoint/1"
    for name, entry in manifest["files"].items():
        digest = hashlib.sha256((path / name).read_bytes()).hexdigest()
        manifest["files"][name] = {"bytes": entry["bytes"], "sha256": digest}
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    load_training_state(accelerator, path, ema=average)
    optimizer_file = path / "optimizer.safetensors"
    optimizer_file.write_bytes(optimizer_file.read_bytes()[:-1] + b"\x01")
    with pytest.raises(CheckpointError, match=r"optimizer.safetensors does not match its manifest \(sha256 differs\)"):
        load_training_state(accelerator, path, ema=average)


def _replace_packed(path, value):
    from hubclf.train.checkpoints import _save_packed

    path.unlink()
    _save_packed(path, value)


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda d: _replace_packed(d / "optimizer.safetensors", {"state": {}, "param_groups": [{"params": [0]}] * 3}),
         r"optimizer.safetensors cannot be restored \(ValueError: loaded state dict has a different number of"),
        (lambda d: (d / "optimizer.safetensors").write_bytes(b"\x08" + b"\x00" * 7 + b"{}" + b"x" * 10),
         r"optimizer.safetensors cannot be restored \(SafetensorError"),
        (lambda d: _replace_packed(d / "random_states_0.safetensors", {"step": 2, "python": [3, [1, 2], None],
                                                                       "numpy": [], "torch": None, "cuda": []}),
         r"random_states_0.safetensors cannot be restored \("),
        (lambda d: _replace_packed(d / "random_states_0.safetensors", {"step": "x"}),
         r"random_states_0.safetensors cannot be restored \(KeyError: 'python'\)"),
    ],
    ids=["optimizer_of_another_model", "optimizer_not_safetensors", "rng_state_broken", "rng_state_missing_keys"],
)  # fmt: skip
def test_a_bad_file_under_a_matching_manifest_is_one_line_naming_it(tmp_path, damage, message):
    """A tampered optimizer.bin was an "internal error"; a corrupt random_states_0.pkl was skipped silently (and the
    resumed run no longer reproducible)."""
    from hubclf.train.checkpoints import CheckpointError, load_training_state, write_manifest

    accelerator, model, optimizer, average = trained_accelerator()
    path = save_checkpoint(accelerator, tmp_path, TrainerState(global_step=2), keep=2, ema=average)
    damage(path)
    write_manifest(path)
    with pytest.raises(CheckpointError, match=message) as error:
        load_training_state(accelerator, path, ema=average)
    assert "\n" not in str(error.value) and "damaged or from another run" in str(error.value)


@pytest.mark.parametrize(
    "values,message",
    [({"epoch": "2"}, "epoch must be a non-negative integer, got '2'"),
     ({"history": [1], "best_epoch": 1}, "history has the wrong type"),
     ({"lineage": ["../../etc"]}, "lineage has the wrong type or value"),
     ({"best_top1": "high"}, "best_top1 has the wrong type")],
)  # fmt: skip
def test_a_tampered_trainer_state_is_an_error_that_names_it(tmp_path, values, message):
    import json

    (tmp_path / STATE_FILE).write_text(json.dumps({**dataclasses_asdict(TrainerState()), **values}))
    with pytest.raises(CheckpointError, match=rf"{STATE_FILE} is not a hubclf trainer state: .*{re.escape(message)}"):
        TrainerState.load(tmp_path)


def dataclasses_asdict(value):
    import dataclasses

    return dataclasses.asdict(value)


# ---- resuming, end to end ----------------------------------------------------------------------------------------
TINY = ["--model", "hubclf_alexnet_slim", "--no-pretrained", "--img-size", "64", "64", "--batch-size", "2",
        "--num-workers", "0", "--warmup-epochs", "0", "--lr", "1e-3", "--seed", "0",
        "--keep-checkpoints", "5"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from tests.image_folders import make_image_folder

    root = tmp_path_factory.mktemp("tiny")
    make_image_folder(root, 3, per_class=3, split="train")
    make_image_folder(root, 3, per_class=1, split="validation", seed=1)
    return root


def final_weights(output_dir):
    from safetensors.torch import load_file

    return load_file(output_dir / "final" / "model.safetensors")


@pytest.mark.parametrize("with_best", [True, False], ids=["best_carried_over", "checkpoint_copied_alone"])
def test_resume_into_a_new_output_dir_works_to_the_end_best_included(tmp_path, tiny_data, capsys, with_best):
    """``--resume <checkpoint> --output-dir new/`` trained, wrote final/, then exited 2 on a missing best/config.json
    (and skipped the push)."""
    import json
    import shutil

    from hubclf.cli import main

    first = tmp_path / "first"
    assert main(["train", *TINY, "--data", str(tiny_data), "--epochs", "3", "--output-dir", str(first)]) == 0
    (epoch_one,) = [p for p in list_checkpoints(first) if TrainerState.load(p).epoch == 1]
    source = epoch_one
    if not with_best:
        source = tmp_path / "elsewhere" / "step"
        shutil.copytree(epoch_one, source)  # a checkpoint copied without its run's best/
    second = tmp_path / "second"
    argv = ["train", *TINY, "--data", str(tiny_data), "--epochs", "3", "--output-dir", str(second), "--resume"]
    assert main([*argv, str(source)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    for name in ("model.safetensors", "config.json", "README.md"):
        assert (second / "best" / name).is_file(), name
    expected, actual = final_weights(first), final_weights(second)
    assert all(torch.equal(expected[k], actual[k]) for k in expected)  # the same run, continued elsewhere
    record = json.loads((second / "best" / "config.json").read_text())["hubclf"]
    assert len(record["epoch_metrics"]) == 3 and (second / "metrics.jsonl").read_text().count("\n") == 3
    if with_best:  # the best epoch of the first run may be epoch 1, whose weights only its best/ holds
        best_epoch = TrainerState.load(list_checkpoints(second)[-1]).best_epoch
        assert (second / "best" / "model.safetensors").read_bytes() == (
            (first / "best" / "model.safetensors").read_bytes()
        ) or best_epoch > 1


def test_resuming_a_tampered_checkpoint_is_one_line_and_exit_2(tmp_path, tiny_data, capsys):
    from hubclf.cli import main

    out = tmp_path / "out"
    assert main(["train", *TINY, "--data", str(tiny_data), "--epochs", "1", "--output-dir", str(out)]) == 0
    capsys.readouterr()
    (checkpoint,) = list_checkpoints(out)
    optimizer = checkpoint / "optimizer.safetensors"
    optimizer.write_bytes(optimizer.read_bytes()[:-1] + b"\x00")
    argv = ["train", *TINY, "--data", str(tiny_data), "--epochs", "2", "--output-dir", str(out)]
    assert main([*argv, "--resume", "latest"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (
        f"hubclf train: error: {optimizer} does not match its manifest (xxh3_128 differs): the checkpoint was changed "
        "or damaged after it was written"
    )
