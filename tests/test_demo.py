"""Tests for scripts/demo.py: the smoke mode end to end (a subprocess, as CI runs it), and the demo's helpers."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_SCRIPT = REPO_ROOT / "scripts" / "demo.py"


def _load_demo_module():
    spec = importlib.util.spec_from_file_location("hubclf_demo_script", DEMO_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


demo = _load_demo_module()


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """``scripts/demo.py --smoke`` once for the module: every step of the story on tiny data."""
    workdir = tmp_path_factory.mktemp("demo")
    result = subprocess.run(
        [sys.executable, str(DEMO_SCRIPT), "--smoke", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    return result, workdir


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def test_smoke_run_succeeds_and_prints_the_summary(smoke_run):
    result, workdir = smoke_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for heading in ("Validation top-1 on the 8-class 128×64 target set", "Time per step:", "total"):
        assert heading in out
    assert "$ hubclf compare --model hf-hub:hubclf-demo/alexnet-slim-demo-base" in out  # one command, printed
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["strategies"] == ["head", "finetune", "scratch"]
    for run in ("base", "head", "finetune", "scratch"):
        assert 0.0 <= summary[run]["top1"] <= 1.0
        assert summary[run]["epochs"] == 1
    compared = json.loads((workdir / "runs" / "compare" / "compare.json").read_text())
    assert {run["strategy"]: run["val_top1"] for run in compared["runs"]} == {
        strategy: summary[strategy]["top1"] for strategy in summary["strategies"]
    }  # the summary's accuracies are compare's
    assert {run["strategy"]: run["lr"] for run in compared["runs"]} == {"head": 1e-1, "finetune": 3e-2, "scratch": 3e-3}
    assert len(summary["timings"]) == 6


def test_smoke_run_pushed_the_base_and_the_winner_with_model_cards(smoke_run):
    result, workdir = smoke_run
    summary = json.loads((workdir / "summary.json").read_text())
    models = workdir / "hub" / "models"
    assert sorted(str(path.relative_to(models)) for path in models.glob("*/*")) == sorted(
        [summary["base"]["repo_id"], summary["published"]["repo_id"]]
    )  # the other strategies and the scratch baseline are not published
    base_repo = models / summary["base"]["repo_id"]
    assert _git(base_repo, "rev-parse", "main").strip() == summary["base"]["commit"]  # the commit the trainer reported
    assert set(_git(base_repo, "ls-tree", "--name-only", "main").split()) == {
        ".gitattributes", "README.md", "config.json", "model.safetensors",
        "confusion_matrix.png", "training_curves.png",  # hubclf train's pictures, shown in the card
        "modeling_hubclf.py",  # hubclf.remote_code: loads with transformers' trust_remote_code=True, without hubclf
    }  # fmt: skip
    published = summary["published"]
    winner_repo = models / published["repo_id"]
    assert _git(winner_repo, "rev-parse", "main").strip() == published["commit"]  # the commit compare reported
    assert published["strategy"] in summary["strategies"]
    assert published["top1"] == summary[published["strategy"]]["top1"]
    # The lineage is on the Hub, with the comparison table that chose the winner. At smoke scale every strategy may
    # sit at chance, and a tie goes to the fastest run, so the winner can be scratch: its card then names no base.
    card = _git(winner_repo, "show", "main:README.md")
    if published["strategy"] == "scratch":
        assert "base_model:" not in card
    else:
        assert f"base_model: {summary['base']['repo_id']}" in card
    assert "## Why this strategy" in card
    assert all(f"| {strategy} |" in card or f"| **{strategy}** |" in card for strategy in summary["strategies"])


def test_smoke_run_reloads_with_timm_and_predicts_label_names(smoke_run):
    result, workdir = smoke_run
    summary = json.loads((workdir / "summary.json").read_text())
    classes = summary["target"]["classes"]
    assert summary["reloaded"]["labels"] == classes
    assert summary["reloaded"]["input_size"] == [3, 128, 64]
    # `hubclf predict` output, echoed indented: "<path>" then "<score>%  <label>" lines.
    predict_step = result.stdout.split("hubclf predict on held-out images")[1].split("Validation top-1")[0]
    score_lines = [line.split() for line in predict_step.splitlines() if line.strip().endswith(tuple(classes))]
    assert len(score_lines) == 3 * summary["predict"]["images"] == 9  # top-3 for each of 3 images
    assert all(score.endswith("%") and label in classes for score, label in score_lines)


def test_smoke_run_stops_the_local_hub(smoke_run):
    result, workdir = smoke_run
    endpoint = json.loads((workdir / "summary.json").read_text())["hub"].split()[0]
    assert f"local Hub at {endpoint} stopped" in result.stdout
    with pytest.raises(OSError):  # connection refused: nothing listens there any more
        urllib.request.urlopen(f"{endpoint}/api/whoami-v2", timeout=2)


def test_transfer_must_beat_scratch():
    assert demo.transfer_beats_scratch({"head": 0.85, "finetune": 0.875, "scratch": 0.115})
    assert not demo.transfer_beats_scratch({"head": 0.85, "finetune": 0.10, "scratch": 0.115})
    assert not demo.transfer_beats_scratch({"head": 0.5, "finetune": 0.5, "scratch": 0.5})  # a tie is no win
    assert not demo.transfer_beats_scratch({"scratch": 0.5})  # nothing to compare is no win


def test_imagenet_mode_needs_a_namespace_and_offline_mode_refuses_one(capsys):
    with pytest.raises(SystemExit):
        demo.parse_args(["--imagenet"])
    assert "--repo-namespace" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        demo.parse_args(["--repo-namespace", "me"])
    assert demo.parse_args(["--imagenet", "--repo-namespace", "me"]).repo_namespace == "me"


def test_format_command_wraps_long_commands_before_a_flag():
    command = ["hubclf", "train", "--model", "hf-hub:a/b", "--data", "x y"] + ["--lr", "1e-3"] * 12
    text = demo.format_command(command, width=60)
    lines = text.split(" \\\n")
    assert len(lines) > 1 and all(line.strip().startswith("--") for line in lines[1:])
    assert "'x y'" in lines[0]  # shell-quoted, so it can be pasted


def test_a_failing_command_stops_the_demo_with_its_log(tmp_path):
    runner = demo.Runner(env=dict(os.environ), log_dir=tmp_path)
    failing = ["python", "-c", "import sys; print('partial output'); sys.exit('the real reason, on stderr')"]
    with pytest.raises(demo.DemoError, match=r"(?s)exit status 1.*the real reason, on stderr"):
        runner.run(failing, "failing")
    assert "the real reason" in (tmp_path / "failing.log").read_text()


def test_exit_status_is_1_when_transfer_does_not_beat_scratch(monkeypatch, tmp_path, capsys):
    def story_where_scratch_wins(args, scale, workdir, runner, cleanup):
        run = {"top1": 0.5, "epochs": 2, "train_seconds": 60.0, "lr": 3e-3}
        return {
            "mode": scale,
            "hub": "http://127.0.0.1:1 (local, stopped at the end)",
            "target": {"classes": list("abcdefgh"), "image_size": [448, 224],
                       "counts": {"train": dict.fromkeys("abcdefgh", 24), "validation": dict.fromkeys("abcdefgh", 24)}},
            "strategies": ["head", "finetune", "scratch"],
            "head": run, "finetune": {**run, "top1": 0.4}, "scratch": {**run, "top1": 0.45},
            "published": {"strategy": "head", "repo_id": "me/m", "commit": "0" * 40, "top1": 0.5},
            "transfer_beats_scratch": False,
            "reloaded": {"input_size": [3, 448, 224], "labels": list("abcdefgh"), "top1": 0.4, "images": 192},
            "predict": {"images": 3, "top1_right": 1},
        }  # fmt: skip

    monkeypatch.setattr(demo, "run_story", story_where_scratch_wins)
    assert demo.main(["--workdir", str(tmp_path)]) == 1
    assert "TRANSFER DID NOT BEAT SCRATCH" in capsys.readouterr().out
