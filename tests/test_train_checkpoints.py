"""hubclf.train.checkpoints: trainer state, finding the latest complete checkpoint, keeping the last K."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from hubclf.train.checkpoints import (
    STATE_FILE,
    TrainerState,
    checkpoint_dir,
    find_checkpoint,
    list_checkpoints,
    save_checkpoint,
)


def test_state_round_trips_through_json(tmp_path):
    state = TrainerState(epoch=2, batches_done=3, global_step=13, stage="head", best_top1=0.5, best_epoch=1)
    state.history.append({"epoch": 1, "val_top1": 0.5})
    state.save(tmp_path)
    assert TrainerState.load(tmp_path) == state


def test_save_keeps_the_last_k_and_latest_skips_incomplete_ones(tmp_path):
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    for step in (5, 10, 15):
        save_checkpoint(accelerator, tmp_path, TrainerState(global_step=step), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000010", "step_00000015"]
    assert (checkpoint_dir(tmp_path, 15) / "model.safetensors").is_file()

    # A run killed while saving leaves a folder without trainer_state.json: never resumed from.
    checkpoint_dir(tmp_path, 20).mkdir()
    assert find_checkpoint("latest", tmp_path) == checkpoint_dir(tmp_path, 15)
    assert find_checkpoint(str(checkpoint_dir(tmp_path, 10)), tmp_path) == checkpoint_dir(tmp_path, 10)
    with pytest.raises(FileNotFoundError, match=STATE_FILE):
        find_checkpoint(str(checkpoint_dir(tmp_path, 20)), tmp_path)


def test_latest_without_checkpoints_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        find_checkpoint("latest", tmp_path)
