"""Crash tests for ``hubclf train``: SIGKILL at many points of a small run (inside checkpoint and model-folder
writes included, which run in the background writer thread while the next steps train), then ``--resume latest``;
the resumed run must end bit-identical to an uninterrupted one.

The kill points are the test-only ``fault_point(...)`` hooks of ``hubclf._faults``: an uninterrupted run lists
every point it reaches (``HUBCLF_FAULT_LOG``), and each chosen ``NAME:N`` then kills a fresh run there
(``HUBCLF_FAULT_POINT``). Also: a main-process failure in a 2-process run stops both processes at once.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hubclf.cli import build_parser
from hubclf.cli.train_flags import config_from_args
from hubclf.train import train
from hubclf.train.background import WRITER_THREAD
from tests.image_folders import make_image_folder
from tests.launch import cpu_launch_command

REPO_ROOT = Path(__file__).resolve().parents[1]
# The tiniest run that still has every phase: 3 classes x 3 train images at 64x64 (AlexNet's minimum is 63),
# batch 2 -> 5 steps per epoch, 2 epochs, a checkpoint every 2 steps and at each epoch end, keep 2.
TRAIN_ARGS = [
    "train", "--model", "hubclf_alexnet_slim", "--no-pretrained", "--img-size", "64", "64", "--epochs", "2",
    "--batch-size", "2", "--save-every-steps", "2", "--keep-checkpoints", "2", "--num-workers", "0",
    "--warmup-epochs", "0", "--lr", "1e-3", "--seed", "0",
]  # fmt: skip
# Points that must be among the kills: the inside of every kind of write.
MUST_KILL_AT = {
    "checkpoint.after_save_state", "checkpoint.after_state", "checkpoint.after_rename", "checkpoint.prune",
    "replace_dir.before_rename", "replace_dir.after_rename", "atomic.before_rename",
    "save_pretrained.after_weights", "save_pretrained.after_config", "save_pretrained.after_card",
    "epoch.metrics_written", "epoch.best_saved", "final.saved", "eval.batch", "train.step", "train.data_loaded",
    "checkpoint.after_rng",
}  # fmt: skip
LAST_HIT_TOO = ("train.step", "checkpoint.after_state", "replace_dir.before_rename", "save_pretrained.after_card")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    make_image_folder(root, 3, per_class=3, split="train")
    make_image_folder(root, 3, per_class=1, split="validation", seed=1)
    return root


def hubclf_train(output_dir: Path, data: Path, *extra: str, env: dict | None = None, processes: int = 1):
    launcher = [sys.executable] if processes == 1 else cpu_launch_command(processes)
    command = [*launcher, "-m", "hubclf.cli"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if processes > 1:
        environment["ACCELERATE_USE_CPU"] = "1"
    return subprocess.run(
        [*command, *TRAIN_ARGS, "--data", str(data), "--output-dir", str(output_dir), *extra],
        env=environment, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / "final" / "model.safetensors")


def assert_bit_identical(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor], where: str) -> None:
    assert expected.keys() == actual.keys(), where
    for key in expected:
        assert torch.equal(expected[key], actual[key]), f"{where}: {key} differs"


def reached_points(log: Path) -> list[tuple[str, int]]:
    """(point, n-th hit) for every hit an uninterrupted run logged, in order."""
    seen: Counter = Counter()
    hits = []
    for line in log.read_text().splitlines():
        name = line.split()[0]
        seen[name] += 1
        hits.append((name, seen[name]))
    return hits


def choose_kill_points(hits: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The first hit of every point, and the last hit of those that also run in the final phase or at the end of
    training (the refresh of best/, the last step and checkpoint), in run order."""
    last = {name: n for name, n in hits}
    chosen = {(name, 1) for name, _ in hits}
    chosen |= {(name, last[name]) for name in LAST_HIT_TOO}
    return [hit for hit in hits if hit in chosen]


def resume_in_process(output_dir: Path, data: Path) -> None:
    """``hubclf train ... --resume latest`` in this process (saves a Python start-up per kill point).

    On one thread, as the subprocesses run (``OMP_NUM_THREADS=1``): a CPU convolution's backward sums in an order
    that depends on the thread count, so a run on 2 threads differs in the low bits from one on 1 thread.
    """
    args = build_parser().parse_args(
        [*TRAIN_ARGS, "--data", str(data), "--output-dir", str(output_dir), "--resume", "latest"]
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(config_from_args(args))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_data) -> tuple[dict[str, torch.Tensor], Path]:
    """An uninterrupted run: its final weights, and the log of every fault point it reached."""
    root = tmp_path_factory.mktemp("reference")
    log = root / "points.log"
    run = hubclf_train(root / "out", tiny_data, env={"HUBCLF_FAULT_LOG": str(log)})
    assert run.returncode == 0, run.stderr[-3000:]
    return final_weights(root / "out"), log


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_is_bit_identical(tmp_path, tiny_data, reference, caplog):
    expected, log = reference
    hits = reached_points(log)
    kill_points = choose_kill_points(hits)
    assert MUST_KILL_AT <= {name for name, _ in kill_points}
    assert len(kill_points) >= 20
    print(f"{len(hits)} fault-point hits in an uninterrupted run; killing at {len(kill_points)} of them")

    for i, (name, n) in enumerate(kill_points):
        output_dir = tmp_path / f"kill{i:02d}"
        killed = hubclf_train(output_dir, tiny_data, env={"HUBCLF_FAULT_POINT": f"{name}:{n}"})
        assert killed.returncode == -signal.SIGKILL, f"{name}:{n} was not reached: {killed.stderr[-2000:]}"
        # Even a kill before any checkpoint leaves a folder that `--resume latest` continues (or starts over).
        caplog.clear()
        with caplog.at_level(logging.INFO):
            resume_in_process(output_dir, tiny_data)
        assert "taking over the stale lock" in caplog.text, name
        assert_bit_identical(expected, final_weights(output_dir), f"killed at {name}:{n}")
        assert (output_dir / "metrics.jsonl").read_text().count("\n") == 2
        assert not list(output_dir.glob(".*.tmp-*")) and not list((output_dir / "checkpoints").glob(".tmp-*"))


def test_checkpoints_and_best_are_written_off_the_training_thread(reference):
    threads = {}
    for line in reference[1].read_text().splitlines():
        name, _, thread = line.split(maxsplit=2)
        threads.setdefault(name, set()).add(thread)
    for point in ("checkpoint.after_save_state", "checkpoint.after_state", "checkpoint.after_rename",
                  "epoch.best_saved"):  # fmt: skip
        assert threads[point] == {WRITER_THREAD}, point
    assert threads["save_pretrained.after_weights"] == {WRITER_THREAD, "MainThread"}  # best/ in the writer; final/
    # Each process's RNG state, the metrics and final/ stay in the training thread.
    for point in ("checkpoint.after_rng", "train.step", "epoch.metrics_written", "final.saved"):
        assert WRITER_THREAD not in threads[point], point


@pytest.mark.slow
@pytest.mark.parametrize(
    ("held_at", "step", "goes_on"),
    [
        ("checkpoint.after_save_state:1", 2, "train.step"),  # a mid-epoch checkpoint, from a copy: training goes on
        ("checkpoint.after_save_state:3", 5, "eval.batch"),  # an epoch's, from the live tensors: evaluation goes on
        ("save_pretrained.after_weights:1", 5, "train.step"),  # the first best/ (linked weights): training goes on
    ],
    ids=["mid_epoch_copy", "epoch_end_live_tensors", "best"],
)
def test_a_kill_during_a_background_write_while_training_goes_on_then_resume_is_bit_identical(
    tmp_path, tiny_data, reference, held_at, step, goes_on
):
    # A write is held open in the writer thread: the first checkpoint (step 2, mid-epoch 1), the tensor files of
    # epoch 1's checkpoint (step 5, written while the epoch is evaluated) or the first best/ (epoch 1). The training
    # thread goes on (trains, or evaluates) until it must wait for it, and the process is killed then.
    output_dir, log = tmp_path / "held", tmp_path / "points.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HUBCLF_FAULT_POINT": f"{held_at}:hold", "HUBCLF_FAULT_LOG": str(log)}
    command = [sys.executable, "-m", "hubclf.cli", *TRAIN_ARGS, "--data", str(tiny_data), "--output-dir",
               str(output_dir)]  # fmt: skip
    process = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    point = held_at.split(":")[0]
    try:
        deadline, seen, quiet_since = time.monotonic() + 300, -1, time.monotonic()
        while time.monotonic() < deadline and process.poll() is None:
            lines = log.read_text().splitlines() if log.exists() else []
            held = next((i for i, line in enumerate(lines) if line.startswith(point + " ")), None)
            if held is not None and any(line.startswith(goes_on + " ") for line in lines[held + 1 :]):
                break  # training (or evaluation) went on while the write was held
            if len(lines) != seen:
                seen, quiet_since = len(lines), time.monotonic()
            elif held is not None and time.monotonic() - quiet_since > 3:
                # On a loaded machine the writer can reach the hold only after the training thread has gone on to
                # its next save, where it now waits for the held write: the process is as killable as above.
                break
            time.sleep(0.2)
        else:
            process.kill()  # first: reading stderr of a process that waits on a held write would never return
            pytest.fail(f"the write was never held at {held_at}: {process.communicate()[1].decode()[-2000:]}")
        time.sleep(1)  # the training thread goes on to its next save and waits there for the held write
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    # The held write's checkpoint (step 2's, or epoch 1's at step 5, whose best/ was held) never got its name.
    assert [p.name for p in (output_dir / "checkpoints").glob(".tmp-*")] == [f".tmp-step_{step:08d}"]
    resume_in_process(output_dir, tiny_data)
    assert_bit_identical(reference[0], final_weights(output_dir), f"killed while {point} was held")


@pytest.mark.slow
def test_a_kill_before_the_first_checkpoint_can_simply_be_rerun(tmp_path, tiny_data):
    output_dir = tmp_path / "rerun"
    killed = hubclf_train(output_dir, tiny_data, env={"HUBCLF_FAULT_POINT": "train.step:1"})
    assert killed.returncode == -signal.SIGKILL
    again = hubclf_train(output_dir, tiny_data)  # no --resume: nothing complete to protect, so no refusal
    assert again.returncode == 0, again.stderr[-3000:]
    refused = hubclf_train(output_dir, tiny_data)  # now a finished run is there
    assert refused.returncode == 2 and "already holds a training run" in refused.stderr


@pytest.mark.slow
def test_two_processes_sigkill_then_resume_is_bit_identical(tmp_path, tiny_data):
    reference = hubclf_train(tmp_path / "reference", tiny_data, processes=2)
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = final_weights(tmp_path / "reference")
    # Symmetric points kill both processes; main-process-only ones kill the main process, and torchrun the other.
    kill_points = [
        ("train.step", 3), ("checkpoint.after_save_state", 2), ("checkpoint.after_state", 3),
        ("save_pretrained.after_config", 1), ("final.saved", 1),
    ]  # fmt: skip
    for i, (name, n) in enumerate(kill_points):
        output_dir = tmp_path / f"kill{i}"
        killed = hubclf_train(output_dir, tiny_data, env={"HUBCLF_FAULT_POINT": f"{name}:{n}"}, processes=2)
        assert killed.returncode != 0, f"{name}:{n} was not reached"
        resumed = hubclf_train(output_dir, tiny_data, "--resume", "latest", processes=2)
        assert resumed.returncode == 0, f"after a kill at {name}:{n}: {resumed.stderr[-3000:]}"
        assert_bit_identical(expected, final_weights(output_dir), f"2 processes, killed at {name}:{n}")


@pytest.mark.slow
def test_a_main_process_failure_stops_every_process_promptly(tmp_path, tiny_data):
    # Without the broadcast the second process would wait in its next collective for the distributed timeout
    # (30 minutes); the subprocess timeout below would catch such a hang.
    env = {"HUBCLF_FAULT_POINT": "epoch.metrics_written:1:raise", "HUBCLF_FAULT_RANK": "0"}
    run = hubclf_train(tmp_path / "failing", tiny_data, env=env, processes=2)
    assert run.returncode != 0
    assert "injected fault at epoch.metrics_written" in run.stderr
    assert "the main process failed while writing the metrics and the best model" in run.stderr
