"""``scripts/bench.py``: the side-by-side benchmark runs end to end at tiny sizes and reports every row it promises.

No timing is asserted: the figures depend on the machine; the README's table comes from a full-size run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_smoke_run_compares_every_mode_against_the_plain_loop(tmp_path):
    table = tmp_path / "bench.json"
    command = [
        sys.executable, "scripts/bench.py", "--smoke", "--models", "alexnet", "--hubclf-precision", "no",
        "--workdir", str(tmp_path / "work"), "--json", str(table),
    ]  # fmt: skip
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ratio = hubclf / peer speed" in run.stdout
    rows = json.loads(table.read_text())["rows"]
    # In fp32 there is no extra fp32 row: hubclf's full fine-tune is already in the peer's precision.
    assert [(row["model"], row["mode"], row["peer_mode"]) for row in rows] == [
        ("alexnet", "full", "full"), ("alexnet", "frozen", "frozen"), ("alexnet", "cached", "frozen"),
    ]  # fmt: skip
    for row in rows:
        assert row["precision"] == "no"
        assert row["speed_ratio"] == pytest.approx(row["hubclf_img_s"] / row["peer_img_s"])
        assert row["peer_rss_mib"] > 0 and row["hubclf_rss_mib"] > 0
        assert row["peer_pipeline_img_s"] > 0 and row["hubclf_pipeline_img_s"] > 0
        assert 0 <= row["hubclf_val_top1"] <= 1 and 0 <= row["peer_val_top1"] <= 1
    assert rows[0]["hubclf_rss_vs_full"] == 1.0


def test_startup_rows_are_measured_against_the_import_of_torch_and_timm():
    run = subprocess.run([sys.executable, "scripts/bench.py", "startup", "--repeats", "1"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    rows = {line[:34].strip(): line.split() for line in lines[2:]}
    assert set(rows) == {"python -c pass", "python -c 'import torch, timm'", "python -c 'import hubclf'",
                         "hubclf --help", "hubclf train --help"}  # fmt: skip
    assert rows["python -c 'import torch, timm'"][-1] == "1.00x"  # the reference row
