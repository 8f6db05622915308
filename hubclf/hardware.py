"""Speed defaults chosen from the machine instead of assumed: loader workers, mixed precision, fused optimizers.

    workers = default_num_workers()                      # from the cores this process may use
    precision, why = choose_mixed_precision("cpu")       # "bf16" only on CPUs with bf16 instructions
    optimizer_kwargs = fused_optimizer_kwargs("adamw", torch.device("cpu"))   # {"fused": True}

Why each matters (measured on CPU, torch 2.14, AlexNet at 448×224, see docs/performance.md):

- bf16 autocast is 14× *slower* than fp32 for AlexNet training on a CPU without AVX-512 (no bf16 kernels: torch
  emulates them), and 1.32× faster on one with AVX-512 BF16. The precision changes the numbers a run computes, so it
  is decided from what the hardware *is* (``/proc/cpuinfo`` flags, the CUDA device's compute capability), which is
  the same on a quiet and a busy machine, never from a timing, which is not: a probe that measured bf16 3.46×
  faster on one run chose fp32 on another minutes later, and the same command and seed gave different weights.
- torch's single-tensor optimizers allocate temporaries the size of the model on every step: for AlexNet's 57M
  parameters the fused CPU kernels are ~10× faster (SGD: ~310 -> ~22 ms per step; AdamW: ~320 -> ~31 ms).
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path

import torch

__all__ = [
    "resolve_device", "cpu_flags", "cpu_has_bf16_instructions", "usable_cores", "processes_on_this_machine",
    "default_num_workers", "resolve_num_workers", "shared_memory_budget", "available_memory",
    "choose_mixed_precision", "fused_optimizer_kwargs", "MAX_AUTO_WORKERS", "BF16_CPU_FLAGS", "BF16_CUDA_CAPABILITY",
]

logger = logging.getLogger(__name__)

MAX_AUTO_WORKERS = 8
# CPU flags (/proc/cpuinfo) of native bf16 arithmetic: AVX-512 BF16 (Cooper Lake, Zen 4 and later) and AMX-BF16
# (Sapphire Rapids and later). oneDNN runs bf16 convolutions and matrix products on them; without them torch
# converts to fp32 and back around every operation, which is what made bf16 14x slower here.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# CUDA devices of compute capability 8.0 (Ampere) and later have bf16 tensor cores; earlier ones emulate bf16, and
# fp16 (which they do have) needs loss scaling that can skip steps: there auto stays in fp32.
BF16_CUDA_CAPABILITY = (8, 0)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a ``torch.device``, checked against this machine; ``None`` is the GPU when there is one.

    A device torch cannot parse, or one this machine lacks (``cuda`` without a CUDA GPU, ``cuda:3`` on a 2-GPU
    machine, ``mps`` off Apple silicon), is a ``ValueError`` naming what is here, instead of a driver error at the
    first tensor moved.

        resolve_device("cuda:1")   # ValueError "device cuda:1: this machine has 1 CUDA GPU(s) (cuda:0 ...)" on 1 GPU
    """
    if device is None or device == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device {device!r} is not a torch device: write cpu, cuda, cuda:1, mps...") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device}: torch sees no CUDA GPU on this machine; use cpu")
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"device {device}: this machine has {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1})")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device}: MPS (Apple silicon) is not available here; use cpu")
    return resolved


def cpu_flags() -> set[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where there is no such file, e.g. macOS)."""
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return set()
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_has_bf16_instructions(flags: set[str] | None = None) -> bool:
    """True when the CPU has native bf16 arithmetic (AVX-512 BF16 or AMX-BF16) and torch dispatches to AVX-512+.

    Example::

        cpu_has_bf16_instructions({"avx512f", "avx512_bf16"})
    """
    flags = cpu_flags() if flags is None else flags
    capability = torch.backends.cpu.get_cpu_capability().upper()  # "DEFAULT", "AVX2", "AVX512", ...
    return bool(set(BF16_CPU_FLAGS) & flags) and "AVX512" in capability


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. under taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def processes_on_this_machine(num_processes: int) -> int:
    """Training processes sharing this machine: torchrun/accelerate's ``LOCAL_WORLD_SIZE``, else ``num_processes``."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", num_processes))


def default_num_workers(cores: int | None = None, processes_per_machine: int = 1) -> int:
    """DataLoader workers per training process for ``--num-workers auto``: the cores left once each training
    process keeps one for its own compute, at least 1 and at most 8.

    On 2 cores that is 1 worker (one core decodes while the other computes); on 16 cores, 8.

    Example::

        default_num_workers(cores=2)   # 1
    """
    cores = usable_cores() if cores is None else cores
    per_process = max(cores // max(processes_per_machine, 1), 1)
    return max(1, min(per_process - 1, MAX_AUTO_WORKERS))


def resolve_num_workers(num_workers: int | str, processes_per_machine: int = 1) -> int:
    """``num_workers`` as a number: ``"auto"`` becomes ``default_num_workers(...)``.

    Example::

        DataLoader(images, num_workers=resolve_num_workers(config.num_workers))
    """
    if num_workers == "auto":
        return default_num_workers(processes_per_machine=processes_per_machine)
    return int(num_workers)


def shared_memory_budget(processes_per_machine: int = 1) -> int:
    """Bytes one training process may keep in shared memory for cached pixels: a quarter of physical memory
    shared by the training processes, and never more than half of what ``/dev/shm`` has free (Docker's default
    /dev/shm is 64 MB, and a full /dev/shm kills the writer with SIGBUS instead of raising)."""
    try:
        budget = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): no cache
        return 0
    if Path("/dev/shm").is_dir():
        stat = os.statvfs("/dev/shm")
        budget = min(budget, stat.f_bavail * stat.f_frsize // 2)
    return budget // max(processes_per_machine, 1)


def available_memory() -> int:
    """Bytes of memory this machine can still give without swapping: ``MemAvailable`` of ``/proc/meminfo``, or the
    physical memory where there is no such file (0 where even that is unknown).

        available_memory() // 2**30   # GiB
    """
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text(errors="replace").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 0


def choose_mixed_precision(
    device_type: str, *, flags: set[str] | None = None, cuda_capability: tuple[int, int] | None = None
) -> tuple[str | None, str]:
    """What ``--mixed-precision auto`` means here, and why: ``(value for Accelerate, reason)``, from the hardware's
    features alone, so the same machine always decides the same, however busy it is.

    - A CPU: ``"bf16"`` where it has native bf16 instructions (``BF16_CPU_FLAGS`` in ``/proc/cpuinfo``) and torch
      dispatches to AVX-512 kernels (``cpu_has_bf16_instructions``), else ``"no"`` (fp32).
    - A CUDA device: ``"bf16"`` from compute capability 8.0 (bf16 tensor cores), else ``"no"``.
    - Other accelerators, and ``accelerate launch --mixed_precision`` (``ACCELERATE_MIXED_PRECISION``): ``None``,
      Accelerate's own setting.

    Example::

        choose_mixed_precision("cpu", flags={"avx2"})   # ("no", "CPU without AVX-512 BF16 or AMX-BF16 ...")
    """
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return None, f"ACCELERATE_MIXED_PRECISION={os.environ['ACCELERATE_MIXED_PRECISION']} (accelerate launch)"
    if device_type == "cpu":
        flags = cpu_flags() if flags is None else flags
        if cpu_has_bf16_instructions(flags):
            found = "/".join(sorted(set(BF16_CPU_FLAGS) & flags))
            return "bf16", f"CPU flags {found}: native bf16 arithmetic"
        return "no", "CPU without AVX-512 BF16 or AMX-BF16 (/proc/cpuinfo): bf16 would be emulated, slower than fp32"
    if device_type == "cuda":
        if cuda_capability is None:
            cuda_capability = torch.cuda.get_device_capability()
        major, minor = cuda_capability
        if tuple(cuda_capability) >= BF16_CUDA_CAPABILITY:
            return "bf16", f"CUDA compute capability {major}.{minor}: bf16 tensor cores"
        return "no", f"CUDA compute capability {major}.{minor}, below 8.0: no bf16 tensor cores"
    return None, f"{device_type}: Accelerate's default"


def fused_optimizer_kwargs(opt: str, device: torch.device) -> dict[str, bool]:
    """``{"fused": True}`` when timm's ``opt`` is a torch optimizer with a fused kernel for ``device``, else ``{}``.

    Fused kernels update each parameter in one pass, with no model-sized temporaries. Example::

        create_optimizer_v2(model, opt="adamw", **fused_optimizer_kwargs("adamw", torch.device("cpu")))
    """
    from timm.optim import get_optimizer_info

    try:
        opt_class = get_optimizer_info(opt.lower().split("_")[-1]).opt_class
    except (ValueError, KeyError, AttributeError):
        return {}
    if not isinstance(opt_class, type) or not opt_class.__module__.startswith("torch.optim"):
        return {}
    if "fused" not in inspect.signature(opt_class).parameters:
        return {}
    try:  # private, hence guarded: the devices with fused kernels (cpu and cuda among them in torch 2.14)
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        supported = _get_fused_kernels_supported_devices()
    except ImportError:
        supported = ["cpu", "cuda"]
    return {"fused": True} if device.type in supported else {}
