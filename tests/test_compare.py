"""hubclf.compare and ``hubclf compare``: every strategy with the same budget, a table, compare.json and .png, the
winner pushed with the table in its card; learning rates fixed or grid-searched; scratch from an ``hf-hub:`` model.

Data: three hues of equal brightness (tests/test_train_strategy.py), small; the base model is a random slim AlexNet
pushed to the local test Hub, as the demo's base model would be.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import HfApi
from PIL import Image
from safetensors.torch import load_file

import hubclf
from hubclf.cli import main
from hubclf.compare import compare, parse_lrs, parse_strategies, strategy_config
from hubclf.train import TrainConfig
from tests.test_train_strategy import SIZE, make_backbone, make_hue_folder

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_hues(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small_hues")
    make_hue_folder(root, 12, "train", seed=0)
    return make_hue_folder(root, 4, "validation", seed=1)


def test_strategy_and_lr_lists_are_parsed_and_checked():
    assert parse_strategies("head, scratch") == ["head", "scratch"]
    for bad in ("head,magic", "", "head,head"):
        with pytest.raises(ValueError, match="--strategies"):
            parse_strategies(bad)
    assert parse_lrs("head=3e-2,finetune=1e-3", ["head", "finetune"]) == {"head": 0.03, "finetune": 0.001}
    assert parse_lrs("1e-3", ["head", "scratch"]) == {"head": 1e-3, "scratch": 1e-3}
    assert parse_lrs(None, ["head"]) == {}
    with pytest.raises(ValueError, match="not among --strategies"):
        parse_lrs("staged=1e-3", ["head"])
    with pytest.raises(ValueError, match="not a number"):
        parse_lrs("head=fast", ["head"])

    base = TrainConfig(model="hubclf_alexnet_slim", data="d", output_dir="o", epochs=8, weights="w.safetensors")
    assert strategy_config(base, "head").freeze == "backbone"
    assert (strategy_config(base, "staged").freeze, strategy_config(base, "staged").unfreeze_after) == ("backbone", 2)
    assert strategy_config(base, "finetune").backbone_lr_scale == 0.1
    scratch = strategy_config(base, "scratch")
    assert (scratch.pretrained, scratch.weights, scratch.backbone_lr_scale) == (False, None, 1.0)


def test_compare_prints_the_table_writes_json_and_png_and_pushes_the_winner(
    tmp_path, small_hues, use_hub, new_repo_id, capsys, monkeypatch
):
    monkeypatch.setenv("HF_TOKEN", use_hub.token)
    # The base model comes from the Hub, as in the demo: scratch must rebuild its architecture with random weights.
    base = timm.create_model("hubclf_alexnet_slim", num_classes=3, img_size=(SIZE, SIZE), pretrained=False)
    base_repo, best_repo = new_repo_id("cmp-base"), new_repo_id("cmp-best")
    hubclf.push_to_hub(base, base_repo, label_names=["a", "b", "c"])
    out = tmp_path / "cmp"
    code = main([
        "compare", "--model", f"hf-hub:{base_repo}", "--data", str(small_hues), "--output-dir", str(out),
        "--strategies", "head,finetune,staged,scratch", "--epochs", "2", "--batch-size", "8",
        "--lr", "head=3e-2,finetune=3e-3,staged=1e-2,scratch=3e-3", "--no-augment", "--crop-pct", "1",
        "--num-workers", "0", "--seed", "0", "--in-process", "--push-best", best_repo,
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    table = json.loads((out / "compare.json").read_text())
    assert [run["strategy"] for run in table["runs"]] == ["head", "finetune", "staged", "scratch"]
    for run in table["runs"]:
        assert run["strategy"] in printed and f"{run['val_top1']:.1%}" in printed
        assert run["lr_source"] == "fixed" and run["wall_s"] > 0 and run["images_per_s"] > 0
        assert run["peak_rss_mib"] > 50  # a Python process with torch loaded
        assert (Path(run["best_model_dir"]) / "model.safetensors").is_file()
    assert "val top-1" in printed and "images/s" in printed and "peak RSS" in printed
    best = max(table["runs"], key=lambda run: (run["val_top1"], -run["wall_s"]))
    assert table["best"] == best["strategy"] and f"pushed {best['strategy']} to" in printed
    with Image.open(out / "compare.png") as png:
        assert png.format == "PNG" and png.width > 300

    scratch = json.loads((out / "scratch" / "best" / "config.json").read_text())
    assert scratch["architecture"] == "hubclf_alexnet_slim" and scratch["hubclf"]["base_model"] is None
    head = json.loads((out / "head" / "best" / "config.json").read_text())
    assert head["hubclf"]["base_model"] == base_repo and head["hubclf"]["freeze"] == "backbone"

    api = HfApi(endpoint=use_hub.endpoint, token=use_hub.token)
    card = Path(api.hf_hub_download(best_repo, "README.md")).read_text()
    assert "## Why this strategy" in card and "`hubclf compare` trained" in card
    assert all(f"| {name} |" in card or f"| **{name}** |" in card for name in ("head", "finetune", "scratch"))
    assert any("hubclf compare" in commit.title for commit in api.list_repo_commits(best_repo))

    assert main(["compare", "--model", "hubclf_alexnet_slim", "--data", str(small_hues), "--output-dir", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err


@pytest.mark.slow
def test_each_strategy_gets_its_own_searched_lr_and_runs_in_its_own_process(tmp_path, small_hues):
    weights = make_backbone(tmp_path / "backbone.safetensors", colour_blind=False)
    config = TrainConfig(
        model="hubclf_alexnet_slim", data=str(small_hues), output_dir=str(tmp_path / "cmp"), weights=str(weights),
        img_size=(SIZE, SIZE), epochs=1, batch_size=8, augment=False, crop_pct=1.0, num_workers=0, seed=0,
        warmup_epochs=0,  # a 1-epoch warm-up would hold both LRs near zero for the whole search
    )  # fmt: skip
    grids = {"head": (1e-4, 3e-2), "scratch": (1e-3, 3e-3)}
    # 3 search epochs: after 1, both head LRs can still be at chance (this backbone's features are large, and 3e-2
    # overshoots in its first steps); after 3, 3e-2 separates the hues and 1e-4 has barely moved.
    result = compare(config, ["head", "scratch"], lr_grids=grids, search_epochs=3)

    for run in result.runs:
        assert run.lr in grids[run.strategy] and run.lr_source.startswith("grid ")
        searched = sorted(p.name for p in (tmp_path / "cmp" / "lr_search" / run.strategy).iterdir())
        assert searched == sorted(f"lr_{lr:g}" for lr in grids[run.strategy])
        assert (tmp_path / "cmp" / f"{run.strategy}.log").is_file()  # the fresh process's log
        assert run.peak_rss_mib > 50
    head = result.runs[0]
    assert head.lr == 3e-2  # 1e-4 barely moves a fresh head in 3 epochs
    assert head.lr_source.startswith("grid 0.0001:") and " 0.03:" in head.lr_source  # each LR's search top-1
    tuned = load_file(Path(head.best_model_dir) / "model.safetensors")
    assert torch.equal(tuned["features.0.weight"], load_file(weights)["features.0.weight"])  # frozen really


def test_cli_errors_are_one_line(tmp_path, small_hues):
    done = subprocess.run(
        [sys.executable, "-m", "hubclf.cli", "compare", "--model", "hubclf_alexnet_slim", "--data", str(small_hues),
         "--output-dir", str(tmp_path / "o"), "--strategies", "head,sideways"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "hubclf compare: error: --strategies takes a comma-separated list of head, finetune, staged, scratch; "
        "got 'head,sideways'"
    ]


def test_lr_find_can_pick_the_learning_rates(tmp_path, small_hues):
    weights = make_backbone(tmp_path / "backbone.safetensors", colour_blind=False)
    config = TrainConfig(
        model="hubclf_alexnet_slim", data=str(small_hues), output_dir=str(tmp_path / "cmp"), weights=str(weights),
        img_size=(SIZE, SIZE), epochs=1, batch_size=4, warmup_epochs=0, augment=False, num_workers=0, seed=0,
    )  # fmt: skip
    result = compare(config, ["head"], lr_search="lr-find", isolate=False)

    (head,) = result.runs
    assert head.lr_source.startswith("lr-find (")
    found = json.loads((tmp_path / "cmp" / "lr_search" / "head" / "lr_find.json").read_text())
    assert head.lr == float(f"{found['suggested_lr']:.3g}")
    assert json.loads(result.json_path.read_text())["settings"]["lr_search"] == "lr-find"
    with pytest.raises(ValueError, match="--lr-search"):
        compare(TrainConfig(model="m", data="d", output_dir=str(tmp_path / "x")), ["head"], lr_search="guess")


def test_ties_and_differences_that_may_be_chance_are_marked(tmp_path, monkeypatch):
    # Two equal scores on 16 images, and a 2-image lead: compare declared a winner without a word.
    from hubclf import compare as compare_module
    from hubclf.compare import CompareResult, StrategyRun, format_table, mark_differences

    def run(strategy: str, top1: float, wall: float) -> StrategyRun:
        return StrategyRun(strategy, 1e-3, "fixed", top1, 1.0, 1, wall, 10.0, 100.0, None, "o", f"{strategy}/best")

    right = {
        "head/best": [True] * 10 + [False] * 6,
        "finetune/best": [False] * 2 + [True] * 8 + [True, True] + [False] * 4,  # 10 right too, other images
        "scratch/best": [True] * 8 + [False] * 8,
        "staged/best": [True] * 2 + [False] * 14,
    }
    scores = lambda config, *dirs: [right[str(d)] for d in dirs]  # noqa: E731
    monkeypatch.setattr("hubclf.train.strategy._paired_correctness", scores)
    runs = [run("head", 10 / 16, 5.0), run("finetune", 10 / 16, 9.0), run("scratch", 8 / 16, 9.0),
            run("staged", 2 / 16, 9.0)]  # fmt: skip
    mark_differences(TrainConfig(model="m", data="d", output_dir="o"), runs, runs[0])
    assert [r.vs_best for r in runs] == ["", "tie", "p=0.25, not significant", "p=0.0039"]
    result = CompareResult(runs, 2, 0, 32, 16, tmp_path / "c.json", tmp_path / "c.png")
    table = format_table(result)
    assert "vs best" in table.splitlines()[0] and "tie" in table
    assert table.splitlines()[-1] == (
        "finetune tie(s) with head, which won as the faster; head's lead over scratch is not significant on 16 "
        "validation images (McNemar p >= 0.05): it may be chance"
    )
    assert compare_module.card_section(result)["columns"][4] == "vs best (McNemar)"
