"""hubclf.hardware: defaults decided from the machine (workers, mixed precision, fused optimizers)."""

from __future__ import annotations

import os

import pytest
import torch

from hubclf import hardware
from hubclf.hardware import (
    available_memory,
    choose_mixed_precision,
    cpu_has_bf16_instructions,
    default_num_workers,
    fused_optimizer_kwargs,
    resolve_num_workers,
)


def test_workers_leave_one_core_per_training_process():
    assert default_num_workers(cores=1) == 1  # never 0: decoding in the training process stalls compute
    assert default_num_workers(cores=2) == 1
    assert default_num_workers(cores=16) == 8  # capped
    assert default_num_workers(cores=16, processes_per_machine=4) == 3
    assert default_num_workers(cores=2, processes_per_machine=4) == 1
    assert default_num_workers() >= 1  # this machine
    assert resolve_num_workers("auto") == default_num_workers() and resolve_num_workers("0") == 0


def test_bf16_needs_the_instructions_and_avx512_dispatch(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert cpu_has_bf16_instructions({"avx512f", "avx512_bf16"})
    assert cpu_has_bf16_instructions({"amx_bf16", "amx_tile"})
    assert not cpu_has_bf16_instructions({"avx2", "avx512f"})
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert not cpu_has_bf16_instructions({"avx512_bf16"})  # torch would not use them


@pytest.mark.parametrize(
    ("flags", "capability", "expected"),
    [
        ({"avx2", "fma"}, "AVX2", "no"),  # this machine's kind: bf16 would be emulated, 14x slower
        ({"avx512f", "avx512_bf16"}, "AVX512", "bf16"),
        ({"avx512f", "amx_bf16", "amx_tile"}, "AVX512", "bf16"),
        ({"avx512_bf16"}, "AVX2", "no"),  # torch would not dispatch to its AVX-512 kernels
    ],
)
def test_cpu_mixed_precision_follows_the_cpu_flags(monkeypatch, flags, capability, expected):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    choice, why = choose_mixed_precision("cpu", flags=flags)
    assert choice == expected and ("CPU flags" in why if expected == "bf16" else "/proc/cpuinfo" in why)


def test_the_precision_decision_never_times_anything(monkeypatch):
    """``--mixed-precision auto`` timed a bf16 probe: on a busy machine it chose fp32 where a quiet run chose bf16,
    and the same command and seed gave different weights. The decision now reads what the hardware is, only."""
    import time

    def no_clock(*args):
        raise AssertionError("the precision decision read a clock")

    for name in ("process_time", "perf_counter", "time", "monotonic"):
        monkeypatch.setattr(time, name, no_clock)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx512f", "avx512_bf16", "amx_bf16"})
    assert choose_mixed_precision("cpu") == ("bf16", "CPU flags amx_bf16/avx512_bf16: native bf16 arithmetic")
    assert not hasattr(hardware, "bf16_speedup_on_cpu")


def test_available_memory_is_what_meminfo_says_is_left():
    free = available_memory()
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < free <= physical


def test_cuda_precision_follows_the_compute_capability_and_accelerate_launch_wins(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert choose_mixed_precision("cuda", cuda_capability=(9, 0)) == ("bf16", "CUDA compute capability 9.0: bf16 "
                                                                      "tensor cores")  # fmt: skip
    assert choose_mixed_precision("cuda", cuda_capability=(7, 5))[0] == "no"  # T4, V100: no bf16 tensor cores
    assert choose_mixed_precision("mps")[0] is None  # other accelerators: Accelerate's default
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    choice, why = choose_mixed_precision("cpu")
    assert choice is None and "fp16" in why


def test_fused_optimizers_where_torch_has_them():
    cpu = torch.device("cpu")
    for name in ("sgd", "momentum", "adamw", "adam"):
        assert fused_optimizer_kwargs(name, cpu) == {"fused": True}
    assert fused_optimizer_kwargs("lamb", cpu) == {}  # timm's own optimizer: no fused flag
    assert fused_optimizer_kwargs("no-such-optimizer", cpu) == {}
    model = torch.nn.Linear(4, 2)
    from timm.optim import create_optimizer_v2

    optimizer = create_optimizer_v2(model, opt="adamw", lr=0.1, **fused_optimizer_kwargs("adamw", cpu))
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()  # the fused CPU kernel runs
    assert optimizer.param_groups[0]["fused"]


def test_auto_keeps_the_precision_an_earlier_run_in_this_process_fixed(monkeypatch):
    """Accelerate's state is per process and cannot change: a second `train()` with `auto` follows the first."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from hubclf.train import TrainConfig
    from hubclf.train.setup import resolve_hardware_defaults

    monkeypatch.setattr(hardware, "cpu_has_bf16_instructions", lambda flags=None: True)  # auto alone: bf16
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        Accelerator(mixed_precision="no", cpu=True)  # an earlier run in this process
        config, choices = resolve_hardware_defaults(TrainConfig(model="m", data="d", output_dir="o"))
        assert config.mixed_precision == "no" and any("earlier run" in line for line in choices)
        assert isinstance(config.num_workers, int) and config.channels_last is True  # a CPU process
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_a_cuda_run_trains_channels_last_and_other_devices_do_not(monkeypatch):
    """On an H200, channels-last made AlexNet's and VGG11's train steps 20-30% shorter (docs/performance.md): a
    fixed rule from the device type, like the CPU's."""
    import types

    from hubclf.train import TrainConfig, setup

    monkeypatch.setattr(setup, "choose_mixed_precision", lambda device_type: ("bf16", "a test"))
    for device, expected in (("cuda", True), ("cpu", True), ("mps", False), ("xpu", False)):
        fake = types.SimpleNamespace(device=torch.device(device), num_processes=1)
        monkeypatch.setattr(setup, "PartialState", lambda cpu=False, fake=fake: fake)
        config, choices = setup.resolve_hardware_defaults(TrainConfig(model="m", data="d", output_dir="o"))
        assert config.channels_last is expected, device
        assert f"channels-last memory format {'on' if expected else 'off'} (device: {device})" in choices


def test_resolve_device_names_what_this_machine_has(monkeypatch):
    from hubclf.hardware import resolve_device

    assert resolve_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"^device 'bogus' is not a torch device: write cpu, cuda, cuda:1, mps"):
        resolve_device("bogus")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^device cuda: torch sees no CUDA GPU on this machine; use cpu$"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a 2-GPU machine, as torch reports it
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"^device cuda:2: this machine has 2 CUDA GPU\(s\) \(cuda:0 to cuda:1\)$"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^device mps: MPS \(Apple silicon\) is not available here; use cpu$"):
        resolve_device("mps")


# ---- recorded, reused by --resume, the same under load ------------------------------------------------------------
def test_a_resumed_run_reuses_the_recorded_choices(monkeypatch):
    from accelerate.state import AcceleratorState

    from hubclf.train import TrainConfig
    from hubclf.train.setup import resolve_hardware_defaults

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2"})  # here auto would choose fp32
    AcceleratorState._reset_state(reset_partial_state=True)
    threads = torch.get_num_threads()
    recorded = {"mixed_precision": "bf16", "channels_last": False, "num_threads": threads + 1}
    try:
        config, choices = resolve_hardware_defaults(TrainConfig(model="m", data="d", output_dir="o"), recorded)
        assert (config.mixed_precision, config.channels_last) == ("bf16", False)
        assert torch.get_num_threads() == threads + 1  # a CPU backward sums in an order that depends on it
        assert "--mixed-precision auto: bf16, as the checkpoint recorded" in choices
        given, choices = resolve_hardware_defaults(
            TrainConfig(model="m", data="d", output_dir="o", mixed_precision="no"), recorded
        )
        assert given.mixed_precision == "no" and any("no longer bit-identical" in line for line in choices)
    finally:
        torch.set_num_threads(threads)
        AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.slow
def test_the_same_command_gives_the_same_weights_on_a_quiet_and_a_busy_machine(tmp_path, monkeypatch):
    """With ``--mixed-precision auto`` a busy machine chose fp32 where a quiet one chose bf16 (a timing probe), and the
    same command and seed gave different weights (max |Δw| 8e-3 after 3 epochs). Now: bit-identical, and the
    choices are recorded in every checkpoint's manifest."""
    import json
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    from tests.image_folders import make_image_folder

    data = make_image_folder(tmp_path / "data", 3, per_class=3, split="train")
    make_image_folder(data, 3, per_class=1, split="validation", seed=1)
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_MIXED_PRECISION"}  # auto decides, for real

    def train(name: str) -> dict:
        command = [
            sys.executable, "-m", "hubclf.cli", "train", "--model", "hubclf_alexnet_slim", "--no-pretrained",
            "--img-size", "64", "64", "--epochs", "2", "--batch-size", "2", "--num-workers", "0", "--seed", "0",
            "--data", str(data), "--output-dir", str(tmp_path / name),
        ]  # fmt: skip
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        return load_file(tmp_path / name / "final" / "model.safetensors")

    quiet = train("quiet")
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(max(2, os.cpu_count() or 1))
    ]
    try:
        busy = train("busy")
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    assert quiet.keys() == busy.keys()
    assert all(torch.equal(quiet[key], busy[key]) for key in quiet)
    manifests = [json.loads((p / "manifest.json").read_text()) for p in sorted((tmp_path / "busy").glob("check*/*"))]
    numerics = manifests[-1]["numerics"]
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)  # as in the runs: auto decides, for real
    assert numerics["mixed_precision"] == choose_mixed_precision("cpu")[0]
    assert numerics["num_threads"] == torch.get_num_threads() and numerics["channels_last"] is True
    assert any("/proc/cpuinfo" in line or "CPU flags" in line for line in numerics["why"])
    assert manifests[-1]["config"]["seed"] == 0
