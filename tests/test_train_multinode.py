"""Several machines through Accelerate: ``accelerate launch --num_machines 2 --machine_rank {0,1} --main_process_ip
127.0.0.1 --main_process_port P`` as two "machines" on this host (one CPU process each, gloo), sharing the output
folder as machines share storage. A run where machine 1 dies mid-epoch is resumed on both, ends bit-identical to an
uninterrupted one, and exactly one model is written and pushed (the main process's)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, hf_hub_download
from safetensors.torch import load_file

from tests.image_folders import make_image_folder
from tests.launch import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_ARGS = [
    "train", "--model", "hubclf_alexnet_slim", "--no-pretrained", "--img-size", "64", "64", "--epochs", "2",
    "--batch-size", "2", "--save-every-steps", "2", "--num-workers", "0", "--warmup-epochs", "0", "--seed", "0",
]  # fmt: skip


def machine_command(rank: int, port: int) -> list[str]:
    """What each machine runs: the same command but for ``--machine_rank``, the main machine's address and port."""
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
        "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
    ]  # fmt: skip


def two_machines(output_dir: Path, data: Path, *extra: str, env: dict | None = None, timeout: int = 400):
    """Start both machines, wait for both; (returncode, stderr) per rank. A machine still running ``timeout``
    seconds after the other ended is stopped, as a cluster scheduler stops a job that lost a node."""
    port = free_port()
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    args = [*TRAIN_ARGS, "--data", str(data), "--output-dir", str(output_dir), *extra]
    machines = [
        subprocess.Popen([*machine_command(rank, port), "-m", "hubclf.cli", *args], env=environment, cwd=REPO_ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        for rank in (0, 1)
    ]  # fmt: skip
    results = []
    for machine in machines:
        try:
            _, stderr = machine.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(machine.pid, signal.SIGKILL)
            _, stderr = machine.communicate()
        results.append((machine.returncode, stderr))
    return results


@pytest.mark.slow
def test_two_machines_train_resume_after_one_dies_and_push_one_model(tmp_path, use_hub, new_repo_id):
    data = make_image_folder(tmp_path / "data", 3, per_class=3, split="train")
    make_image_folder(data, 3, per_class=1, split="validation", seed=1)
    env = {"HF_TOKEN": use_hub.token}
    reference = two_machines(tmp_path / "reference", data, env=env)
    assert all(code == 0 for code, _ in reference), reference[0][1][-3000:] + reference[1][1][-3000:]

    # Machine 1 is killed at its 3rd step (mid-epoch 1; a checkpoint was written at step 2). Machine 0 then fails
    # (its peer is gone) or is stopped; nothing is pushed.
    repo_id = new_repo_id("two-machines")
    dies = {**env, "HUBCLF_FAULT_POINT": "train.step:3", "HUBCLF_FAULT_RANK": "1"}
    killed = two_machines(tmp_path / "run", data, "--push-to-hub", repo_id, env=dies, timeout=120)
    assert killed[1][0] != 0 and killed[0][0] != 0
    assert killed[0][0] != -signal.SIGKILL  # machine 0 stopped by itself (gloo saw its peer go), not by the timeout
    assert not (tmp_path / "run" / "final").exists()
    assert (tmp_path / "run" / "checkpoints" / "step_00000002" / "trainer_state.json").is_file()

    resumed = two_machines(tmp_path / "run", data, "--push-to-hub", repo_id, "--resume", "latest", env=env)
    assert all(code == 0 for code, _ in resumed), resumed[0][1][-3000:] + resumed[1][1][-3000:]
    expected = load_file(tmp_path / "reference" / "final" / "model.safetensors")
    actual = load_file(tmp_path / "run" / "final" / "model.safetensors")
    assert all(torch.equal(expected[key], actual[key]) for key in expected)

    # One model: best/ and final/ in the shared folder, no copy from machine 1; one push, of best/.
    folders = sorted(p.name for p in (tmp_path / "run").iterdir() if p.is_dir())
    assert folders == ["best", "checkpoints", "final"]
    api = HfApi(token=use_hub.token)
    pushes = [c for c in api.list_repo_commits(repo_id) if c.title.startswith("hubclf train")]
    assert len(pushes) == 1
    assert [f for f in api.list_repo_files(repo_id) if f.endswith(".safetensors")] == ["model.safetensors"]
    pushed = hf_hub_download(repo_id, "model.safetensors", token=use_hub.token)
    assert Path(pushed).read_bytes() == (tmp_path / "run" / "best" / "model.safetensors").read_bytes()
