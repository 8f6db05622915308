"""Shared pytest setup. Test infrastructure for the local Hub lives in tests/hub_fixtures.py."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# huggingface_hub reads HF_HOME / HF_HUB_CACHE once, at import time, so they are set here, before any test
# module imports it: one private cache per test session, never the user's ~/.cache/huggingface.
_HF_HOME = tempfile.mkdtemp(prefix="hubclf-test-hf-home-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_CACHE"] = os.path.join(_HF_HOME, "hub")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("HF_TOKEN", None)  # tests pass tokens explicitly; a developer's real token must never leak in
# `--mixed-precision auto` picks bf16 on CPUs where a probe measures it faster, and Accelerate keeps the first
# run's precision for the whole process: the suite would compute in bf16 on some machines and fp32 on others,
# depending on the probe and the test order. Tests run in fp32 everywhere; tests/test_train_hardware.py covers auto.
os.environ.setdefault("ACCELERATE_MIXED_PRECISION", "no")

# Subprocesses (the CLI, accelerate launch, the demo) must import the hubclf of the checkout under test, also when
# it is a git worktree next to the one the venv's editable install points at.
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO_ROOT, os.environ.get("PYTHONPATH")) if p)

pytest_plugins = ["tests.hub_fixtures"]


@pytest.fixture(scope="session")
def torchvision_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """Factory: ``torchvision_checkpoint("alexnet")`` -> (Path to a .pth state dict, the eval-mode torchvision model).

    Offline stand-in for torchvision's ImageNet weights: a randomly initialised torchvision model, saved exactly
    as download.pytorch.org serves them (a plain state dict). Cached per session, seeded for repeatability.
    """
    import torch
    import torchvision

    root = tmp_path_factory.mktemp("torchvision_weights")
    made: dict[str, tuple] = {}

    def make(arch: str):
        if arch not in made:
            torch.manual_seed(0)
            model = getattr(torchvision.models, arch)().eval()
            path = root / f"{arch}.pth"
            torch.save(model.state_dict(), path)
            made[arch] = (path, model)
        return made[arch]

    return make
