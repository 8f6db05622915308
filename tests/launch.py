"""Test helpers for running hubclf in several CPU processes with ``accelerate launch`` (gloo)."""

from __future__ import annotations

import socket
import sys


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_launch_command(num_processes: int = 2) -> list[str]:
    """``accelerate launch`` that really starts ``num_processes`` CPU processes; run it with ACCELERATE_USE_CPU=1.

    ``accelerate launch --cpu --num_processes 2`` starts ONE process (huggingface/accelerate#2741): its simple
    launcher only fans out through mpirun. torchrun does, via ``--multi_gpu``, and ACCELERATE_USE_CPU=1 makes every
    process a CPU one (gloo), also on a machine that has GPUs.
    """
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()),
    ]  # fmt: skip
