"""Run under ``accelerate launch``: read 2 epochs of a WebDataset folder through ``StreamLoader`` with 2 workers per
process, and write the rows each process saw to ``OUT.<rank>.json`` (tests/test_data_streaming.py counts them)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import PartialState

from hubclf.data.splits import load_image_dataset
from hubclf.data.streaming import ImageStream, StreamLoader


def tiny_transform(image) -> torch.Tensor:
    return torch.zeros(3, 4, 4)


def main(data: str, out: str, workers: int = 2) -> None:
    state = PartialState(cpu=True)  # as hubclf does under ACCELERATE_USE_CPU=1: gloo, one process per rank
    split = load_image_dataset(data).train
    stream = ImageStream(split, tiny_transform, batch_size=3, seed=0, shuffle=True, num_workers=workers,
                         process_index=state.process_index, num_processes=state.num_processes, shuffle_buffer=4,
                         input_size=(3, 4, 4))  # fmt: skip
    loader = StreamLoader(stream, torch.device("cpu"), num_workers=workers, persistent_workers=True)
    seen = {}
    for epoch in (0, 1):
        stream.start_epoch(epoch)
        rows, batches = [], 0
        for batch in loader:
            rows += batch["index"].tolist()
            batches += 1
        seen[epoch] = {"rows": rows, "batches": batches, "len": len(loader)}
    Path(f"{out}.{state.process_index}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
