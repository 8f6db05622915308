"""hubclf.train.checkpoints: trainer state, crash-safe saving, finding the latest complete checkpoint, pruning by
timeline (lineage) rather than by step number."""

from __future__ import annotations

import logging

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
