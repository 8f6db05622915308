"""scripts/setup.sh refuses, in one line, an install the disk cannot hold (pip would stop half-way with ENOSPC)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parent.parent / "scripts" / "setup.sh"


def run_setup_with_free_space(tmp_path: Path, free_kib: int, venv: Path) -> subprocess.CompletedProcess:
    """Run setup.sh with a ``df`` on PATH that reports ``free_kib`` available, as POSIX ``df -Pk`` prints it."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    df = fake_bin / "df"
    df.write_text(
        "#!/bin/sh\n"
        'echo "Filesystem 1024-blocks Used Available Capacity Mounted on"\n'
        f'echo "/dev/vda 263174212 263074212 {free_kib} 99% /"\n'
    )
    df.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}", "HUBCLF_VENV": str(venv)}
    return subprocess.run(["bash", str(SETUP)], env=env, capture_output=True, text=True, timeout=60)


def test_a_new_venv_on_a_full_disk_is_refused_before_anything_is_written(tmp_path):
    venv = tmp_path / "envs" / "venv"
    result = run_setup_with_free_space(tmp_path, 6 * 1024 * 1024, venv)  # 6 GiB: torch fits, the rest would not
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f"[setup] error: a new {venv} (torch's CUDA build and hubclf's dependencies: 6.6 GiB installed) needs about "
        f"8 GiB free in {venv.parent}, which has 6144 MiB free; free some space, or set HUBCLF_VENV to a folder on "
        "a larger disk"
    ]
    assert not venv.exists()


def test_a_venv_without_torch_checks_the_space_for_torch(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text("#!/bin/sh\nexit 1\n")  # a venv whose torch import fails: setup.sh must install torch
    python.chmod(0o755)
    result = run_setup_with_free_space(tmp_path, 100 * 1024, venv)
    assert result.returncode == 2 and "[setup] error: torch 2.14.1 + torchvision 0.29.1" in result.stderr
    assert "which has 100 MiB free" in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("free_gib", [6, 50])  # 6 GiB: exactly what torch needs
def test_enough_space_passes_the_check(tmp_path, free_gib):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    # Stands in for the venv's python: the torch check fails, then "pip install torch" is where the check let it go.
    python.write_text(f'#!/bin/sh\n[ "$2" = pip ] && echo "pip $*" > {tmp_path}/pip-called && exit 3\nexit 1\n')
    python.chmod(0o755)
    result = run_setup_with_free_space(tmp_path, free_gib * 1024 * 1024, venv)
    assert result.returncode == 3 and "[setup] error" not in result.stderr
    assert "install -q torch==2.14.1 torchvision==0.29.1" in (tmp_path / "pip-called").read_text()
