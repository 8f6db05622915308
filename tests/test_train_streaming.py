"""``hubclf train`` on streamed data: killed mid-epoch and resumed, it ends bit-identical to an uninterrupted run (the
checkpoint records each slot's shard and offset); a resume that cannot continue the plan exactly is refused in one
line; a Hub dataset trains with ``--streaming``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.stream_shards import samples, write_tar_shards

REPO_ROOT = Path(__file__).resolve().parents[1]
# 3 classes, 4 train shards of 5 (20 samples) and a validation shard; 2 loader workers, blocks of 3: batch 2 -> 6
# batches per epoch (each worker's slot is 10 samples), a checkpoint every 2 steps.
TRAIN_ARGS = [
    "train", "--model", "hubclf_alexnet_slim", "--no-pretrained", "--img-size", "64", "64", "--epochs", "2",
    "--batch-size", "2", "--save-every-steps", "2", "--num-workers", "2", "--shuffle-buffer", "3",
    "--warmup-epochs", "0", "--lr", "1e-3", "--seed", "0", "--augment", "light",
]  # fmt: skip


@pytest.fixture(scope="module")
def wds(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wds")
    rows = samples(3, 24)
    write_tar_shards(root, "train", rows[:20], 5)
    write_tar_shards(root, "validation", rows[20:], 4)
    return root


def hubclf_train(output_dir: Path, data: Path, *extra: str, env: dict | None = None):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "hubclf.cli", *TRAIN_ARGS, "--data", f"wds:{data}", "--output-dir", str(output_dir),
         *extra],
        env=environment, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_a_stream_killed_mid_epoch_resumes_where_it_stopped_bit_identical(tmp_path, wds):
    reference = hubclf_train(tmp_path / "reference", wds)
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = load_file(tmp_path / "reference" / "final" / "model.safetensors")

    # Killed as soon as step 2's checkpoint is in place (it is written in the background while step 3 trains).
    killed = hubclf_train(tmp_path / "killed", wds, env={"HUBCLF_FAULT_POINT": "checkpoint.after_rename:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    checkpoint = tmp_path / "killed" / "checkpoints" / "step_00000002"
    position = json.loads((checkpoint / "trainer_state.json").read_text())["stream_position"]
    assert position["epoch"] == 0 and position["batches_done"] == 2
    assert position["layout"] == {"processes": 1, "workers": 2, "batch_size": 2, "shuffle_buffer": 3}
    # Each worker trained one batch (2 samples) of its slot: its next block starts at 0, 2 of it already done.
    assert [slot["skip"] for slot in position["slots"]] == [2, 2]
    assert all(slot["shard"].startswith("train-") and slot["offset"] >= 0 for slot in position["slots"])

    refused = hubclf_train(tmp_path / "killed", wds, "--resume", "latest", "--num-workers", "1")
    assert refused.returncode == 2
    assert "resume with the same processes, --num-workers" in refused.stderr.strip().splitlines()[-1]

    resumed = hubclf_train(tmp_path / "killed", wds, "--resume", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    actual = load_file(tmp_path / "killed" / "final" / "model.safetensors")
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)


def test_a_frozen_run_on_a_stream_extracts_its_features_once_into_shards(tmp_path, wds, monkeypatch):
    from hubclf.cli import main

    monkeypatch.setattr("hubclf.train.features.SHARD_ROWS", 8)  # 20 train samples: 3 shards
    args = [*TRAIN_ARGS[:TRAIN_ARGS.index("--save-every-steps")], "--num-workers", "2", "--freeze", "backbone",
            "--no-augment", "--data", f"wds:{wds}", "--output-dir", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 0
    manifests = [json.loads(p.read_text()) for p in (tmp_path / "out" / "feature_cache").glob("*/manifest.json")]
    assert sorted((m["rows"], len(m["shards"])) for m in manifests) == [(4, 1), (20, 3)]
    metrics = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [m["val_num_samples"] for m in metrics] == [4, 4]


def test_a_hub_dataset_trains_with_streaming(tmp_path, use_hub, new_repo_id):
    import datasets

    from hubclf.cli import main

    repo_id = new_repo_id("stream-train")
    rows = samples(3, 15)
    features = datasets.Features(image=datasets.Image(), label=datasets.ClassLabel(names=["r", "g", "b"]))
    split = datasets.Dataset.from_dict(
        {"image": [{"bytes": data, "path": None} for _, _, data in rows], "label": [label for _, label, _ in rows]},
        features=features,
    )
    datasets.DatasetDict(train=split.select(range(12)), validation=split.select(range(12, 15))).push_to_hub(
        repo_id, token=use_hub.token, num_shards={"train": 2, "validation": 1}
    )
    args = [*TRAIN_ARGS[:TRAIN_ARGS.index("--save-every-steps")], "--num-workers", "0", "--epochs", "1",
            "--data", repo_id, "--streaming", "--output-dir", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 0
    saved = json.loads((tmp_path / "out" / "best" / "config.json").read_text())
    assert saved["label_names"] == ["r", "g", "b"]
    paths = [request.path for request in use_hub.requests]
    assert any(f"/datasets/{repo_id}/resolve/" in path and path.endswith(".parquet") for path in paths)
