"""hubclf.hardware: defaults decided from the machine (workers, mixed precision, fused optimizers)."""

from __future__ import annotations

import pytest
import torch

from hubclf import hardware
from hubclf.hardware import (
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
    ("has_bf16", "speedup", "expected"),
    [(False, 9.0, "no"), (True, 1.05, "no"), (True, 1.5, "bf16")],
)
def test_cpu_mixed_precision_is_bf16_only_where_it_measures_faster(monkeypatch, has_bf16, speedup, expected):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setattr(hardware, "cpu_has_bf16_instructions", lambda: has_bf16)
    probed = []
    monkeypatch.setattr(hardware, "bf16_speedup_on_cpu", lambda: probed.append(1) or speedup)
    choice, why = choose_mixed_precision("cpu")
    assert choice == expected and why
    assert probed == ([1] if has_bf16 else [])  # no probe on a CPU without the instructions


def test_accelerators_and_accelerate_launch_keep_accelerates_setting(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert choose_mixed_precision("cuda")[0] is None
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    choice, why = choose_mixed_precision("cpu")
    assert choice is None and "fp16" in why


def test_the_bf16_probe_returns_a_ratio():
    assert hardware.bf16_speedup_on_cpu() > 0  # whatever this machine is; the decision is tested above


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

    monkeypatch.setattr(hardware, "cpu_has_bf16_instructions", lambda: True)
    monkeypatch.setattr(hardware, "bf16_speedup_on_cpu", lambda: 2.0)  # auto alone would pick bf16
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        Accelerator(mixed_precision="no", cpu=True)  # an earlier run in this process
        config, choices = resolve_hardware_defaults(TrainConfig(model="m", data="d", output_dir="o"))
        assert config.mixed_precision == "no" and any("earlier run" in line for line in choices)
        assert isinstance(config.num_workers, int) and config.channels_last is True  # a CPU process
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


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
