"""hubclf.data.streaming: WebDataset, parquet and Hub shards read shard by shard; every sample exactly once per epoch
in any process × worker layout (in this process, and under ``accelerate launch`` with 2 processes × 2 workers); a
mid-epoch resume that reads on exactly where the checkpoint stopped; labels by today's rules; bad images skipped."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch

from hubclf.data.sources import open_dataset
from hubclf.data.splits import load_image_dataset
from hubclf.data.streaming import ImageStream, batches_before, expand_braces, slot_pieces
from hubclf.refs import DataSource
from tests.launch import cpu_launch_command
from tests.stream_shards import samples, write_parquet_shards, write_tar_shards

REPO_ROOT = Path(__file__).resolve().parents[1]
NAMES = ["red", "green", "blue"]


def tiny_transform(image) -> torch.Tensor:  # module level: DataLoader workers get it by pickling
    return torch.zeros(3, 4, 4)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """35 train samples in 5 tar shards of 7, 6 validation samples; the same samples as parquet (train only)."""
    root = tmp_path_factory.mktemp("shards")
    rows = samples(3, 41)
    write_tar_shards(root / "wds", "train", rows[:35], 7)
    write_tar_shards(root / "wds", "validation", rows[35:], 6)
    write_parquet_shards(root / "parquet", "train", rows[:35], 7, ["0", "1", "2"])
    return root


def test_data_names_its_streamed_kinds_once():
    assert DataSource.parse("wds:shards/train-{000..009}.tar").kind == "webdataset"
    assert DataSource.parse("parquet:data/").kind == "parquet"
    assert DataSource.parse("user/flowers@v2", streaming=True).kind == "hub-stream"
    assert DataSource.parse("shards/*.tar").kind == "webdataset"
    with pytest.raises(ValueError, match="--streaming reads a Hub dataset"):
        DataSource.parse("./photos/", streaming=True)
    assert expand_braces("s-{08..10}.tar") == ["s-08.tar", "s-09.tar", "s-10.tar"]
    with pytest.raises(ValueError, match="is streamed data"):  # eval/predict load a split whole
        open_dataset("wds:shards/train-0.tar")


def test_tar_and_parquet_shards_give_the_same_samples_and_labels(shards):
    tar = load_image_dataset(str(shards / "wds"))  # a folder of .tar files; validation-*.tar is the eval split
    assert (len(tar.train), len(tar.eval), tar.eval_split_name) == (35, 6, "validation")
    assert tar.label_names == ["0", "1", "2"] and tar.train.counts.tolist() == [7] * 5
    parquet = load_image_dataset(f"parquet:{shards / 'parquet'}", eval_split=None, val_split=0.2, seed=0)
    # No validation split: whole shards are held out (a stream cannot be stratified without reading it).
    assert parquet.eval_split_name == "1 of 5 train shards, held out whole (seed 0)"
    assert len(parquet.train) + len(parquet.eval) == 35
    both = load_image_dataset(f"wds:{shards / 'wds' / 'train-{00000..00004}.tar'}", val_split=0.2, seed=0)
    assert both.eval_split_name == parquet.eval_split_name
    assert np.array_equal(both.train.labels, parquet.train.labels)
    tar_rows = [value["bytes"] for _, value in both.train.read([(0, 0, 7)])]
    parquet_rows = [value["bytes"] for _, value in parquet.train.read([(0, 0, 7)])]
    assert tar_rows == parquet_rows  # the same images, in the same order
    assert both.train.describe(8).endswith(".tar#1")


def test_a_single_shard_without_a_validation_split_is_refused_in_one_line(tmp_path):
    write_tar_shards(tmp_path, "data", samples(2, 6), 6)
    with pytest.raises(ValueError, match="a single shard and no validation split"):
        load_image_dataset(str(tmp_path))


def test_labels_follow_the_usual_rules_names_members_and_a_labels_csv(tmp_path):
    rows = samples(3, 9)
    write_tar_shards(tmp_path / "named", "train", rows, 3, label_member="txt", names=["tulip", "rose", "daisy"])
    named = load_image_dataset(str(tmp_path / "named"), val_split=0.34)
    assert named.label_names == ["daisy", "rose", "tulip"]  # sorted, as class_encode_column does
    csv = tmp_path / "labels.csv"
    csv.write_text("key,label\n" + "".join(f"{key}.png,{['a', 'b', 'c'][label]}\n" for key, label, _ in rows))
    by_csv = load_image_dataset(str(tmp_path / "named"), labels=str(csv), val_split=0.34)
    assert by_csv.label_names == ["a", "b", "c"]
    with pytest.raises(ValueError, match="has no .cls member|no label member"):
        load_image_dataset(str(tmp_path / "named"), label_column="cls", val_split=0.34)


def worker_rows(stream: ImageStream, epoch: int, skip: int = 0) -> dict[int, list[int]]:
    """Rows per (process, worker) slot, read in this process with a faked worker identity."""
    out = {}
    stream.start_epoch(epoch, skip_batches=skip)
    for worker in range(stream.workers):
        info = SimpleNamespace(id=worker, num_workers=stream.workers)
        original = torch.utils.data.get_worker_info
        torch.utils.data.get_worker_info = lambda info=info: info
        try:
            out[worker] = [sample["index"] for sample in stream]
        finally:
            torch.utils.data.get_worker_info = original
    return out


@pytest.mark.parametrize("processes,workers,buffer", [(1, 1, 512), (2, 2, 4), (3, 2, 1), (4, 3, 5)])
def test_every_sample_once_per_epoch_in_any_layout_and_a_resume_reads_on(shards, processes, workers, buffer):
    data = load_image_dataset(str(shards / "wds"))
    streams = [
        ImageStream(data.train, tiny_transform, batch_size=2, seed=3, shuffle=True, num_workers=workers,
                    process_index=p, num_processes=processes, shuffle_buffer=buffer, input_size=(3, 4, 4))
        for p in range(processes)
    ]  # fmt: skip
    orders = []
    for epoch in (0, 1):
        slots = [rows for stream in streams for rows in worker_rows(stream, epoch).values()]
        real = [row for rows in slots for row in rows if row >= 0]
        assert sorted(real) == list(range(35))  # exactly once each
        assert len({len(rows) for rows in slots}) == 1  # equal slots: every process runs the same steps
        assert sum(row < 0 for rows in slots for row in rows) == len(slots) * streams[0].slot_length - 35
        orders.append(real)
        # Resume after k batches: each worker reads on from its own next sample, with nothing read twice.
        for skip in (1, 3):
            for stream in streams:
                full, rest = worker_rows(stream, epoch), worker_rows(stream, epoch, skip)
                for worker, rows in full.items():
                    done = min(len(rows), batches_before(skip, worker, stream.workers) * stream.batch_size)
                    assert rest[worker] == rows[done:]
    assert orders[0] != orders[1]  # a new shuffle each epoch


def test_slot_pieces_split_the_epoch_into_contiguous_runs():
    counts = np.array([3, 3])
    assert slot_pieces(counts, [1, 0], 0, 2) == [(1, 0, 3)]
    assert slot_pieces(counts, [0, 1], 1, 4) == [(0, 1, 3)]
    assert slot_pieces(counts, [0, 1], 2, 4) == [(1, 0, 1)]


@pytest.mark.slow
def test_two_processes_with_two_workers_read_every_sample_once_per_epoch(shards, tmp_path):
    out = tmp_path / "rows"
    command = [*cpu_launch_command(2), str(REPO_ROOT / "tests" / "stream_epochs.py"), str(shards / "wds"), str(out)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [json.loads((tmp_path / f"rows.{rank}.json").read_text()) for rank in (0, 1)]
    for epoch in ("0", "1"):
        rows = [row for process in seen for row in process[epoch]["rows"] if row >= 0]
        assert sorted(rows) == list(range(35)), epoch
        assert seen[0][epoch]["batches"] == seen[1][epoch]["batches"] == seen[0][epoch]["len"]
    assert seen[0]["0"]["rows"] != seen[0]["1"]["rows"]


def test_unreadable_images_in_a_stream_are_skipped_and_named(tmp_path):
    rows = samples(2, 10)
    rows[3] = (rows[3][0], rows[3][1], b"not a png")
    write_tar_shards(tmp_path, "train", rows[:8], 4)
    write_tar_shards(tmp_path, "validation", rows[8:], 2)
    data = load_image_dataset(str(tmp_path))
    stream = ImageStream(data.train, tiny_transform, batch_size=2, seed=0, shuffle=False, input_size=(3, 4, 4))
    bad = [sample for sample in stream if not sample["valid"]]
    assert len(bad) == 1 and stream.describe(bad[0]["index"]).endswith("train-00000.tar#3")
    with pytest.raises(ValueError, match="cannot read image"):
        list(ImageStream(data.train, tiny_transform, batch_size=2, seed=0, shuffle=False, on_bad_image="error",
                         input_size=(3, 4, 4)))  # fmt: skip


def test_a_hub_dataset_streams_in_the_order_datasets_reads_it(use_hub, new_repo_id, tmp_path):
    repo_id = new_repo_id("stream")
    rows = samples(3, 12)
    features = datasets.Features(image=datasets.Image(), label=datasets.ClassLabel(names=NAMES))
    split = datasets.Dataset.from_dict(
        {"image": [{"bytes": data, "path": None} for _, _, data in rows], "label": [label for _, label, _ in rows]},
        features=features,
    )
    datasets.DatasetDict(train=split.select(range(9)), validation=split.select(range(9, 12))).push_to_hub(
        repo_id, token=use_hub.token, num_shards={"train": 3, "validation": 1}
    )
    data = load_image_dataset(repo_id, streaming=True)
    assert data.label_names == NAMES and len(data.train.shards) == 3
    assert all(shard.url.startswith("hf://datasets/") for shard in data.train.shards)
    expected = datasets.load_dataset(repo_id, split="train", streaming=True)  # 🤗 datasets' IterableDataset
    assert data.train.labels.tolist() == [row["label"] for row in expected]
    stream = ImageStream(data.train, tiny_transform, batch_size=4, seed=0, shuffle=False, input_size=(3, 4, 4))
    assert [sample["index"] for sample in stream] == list(range(9))
    assert all(sample["valid"] for sample in stream)
