"""hubclf.data.dataset: the torch Dataset (batched reads, seeded augmentation, the pixel cache), the samplers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hubclf.data.dataset import FinishingLoader, ImageClassificationDataset, PixelCache, PixelRows
from hubclf.data.images import build_transforms
from hubclf.data.splits import load_image_dataset
from tests.image_folders import HEIGHT, WIDTH, add_bad_images, make_image_folder


def test_rows_are_read_a_batch_at_a_time_with_the_same_samples(tmp_path):
    make_image_folder(tmp_path, num_classes=2, per_class=3)
    data = load_image_dataset(str(tmp_path), val_split=0.5)
    _, eval_tf = build_transforms({"input_size": (3, HEIGHT, WIDTH)}, augment=False)
    dataset = ImageClassificationDataset(data.train, "image", "label", eval_tf, input_size=(3, HEIGHT, WIDTH))
    batch = dataset.__getitems__([2, 0])
    assert [row["index"] for row in batch] == [2, 0]
    for row in batch:
        single = dataset[row["index"]]
        assert torch.equal(single["pixel_values"], row["pixel_values"]) and single["labels"] == row["labels"]
    assert [dataset[i]["labels"] for i in range(len(dataset))] == list(data.train["label"])


def test_persistent_workers_see_each_epochs_augmentation_seed(tmp_path):
    """The (seed, epoch) lives in shared memory: a DataLoader worker started in epoch 0 uses epoch 1's seed."""
    make_image_folder(tmp_path, num_classes=2, per_class=2)
    data = load_image_dataset(str(tmp_path), val_split=0.5)
    train_tf, _ = build_transforms({"input_size": (3, HEIGHT, WIDTH)}, augment=True)
    dataset = ImageClassificationDataset(data.train, "image", "label", train_tf, input_size=(3, HEIGHT, WIDTH))
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=1, persistent_workers=True)
    epochs = []
    for epoch in (0, 1):
        dataset.seed_augmentation(seed=3, epoch=epoch)
        epochs.append(next(iter(loader))["pixel_values"])
    for epoch in (0, 1):  # the same pixels as the main process computes for that epoch
        dataset.seed_augmentation(seed=3, epoch=epoch)
        assert torch.equal(epochs[epoch][0], dataset[0]["pixel_values"])
    assert not torch.equal(epochs[0], epochs[1])


def test_cached_pixels_are_the_decoded_ones_shared_by_workers_and_decoded_once(tmp_path, monkeypatch):
    make_image_folder(tmp_path, num_classes=2, per_class=4)
    bad = add_bad_images(tmp_path / "class_0")
    data = load_image_dataset(str(tmp_path), val_split=0.25)
    _, eval_tf = build_transforms({"input_size": (3, HEIGHT, WIDTH)}, augment=False)
    plain = ImageClassificationDataset(data.train, "image", "label", eval_tf, input_size=(3, HEIGHT, WIDTH))
    cached = ImageClassificationDataset(
        data.train, "image", "label", eval_tf, input_size=(3, HEIGHT, WIDTH), cache_pixels=True
    )
    rows = len(plain)
    assert cached.pixel_cache.nbytes == rows * 3 * HEIGHT * WIDTH
    expected = [plain[i] for i in range(rows)]
    bad_rows = [i for i in range(rows) if cached.describe(i) in map(str, bad)]
    assert bad_rows, "the split should hold some of the unreadable files"

    # The first pass runs in 2 DataLoader workers: the shared cache then holds every row for the main process.
    loader = torch.utils.data.DataLoader(cached, batch_size=3, num_workers=2)
    first = [row for batch in loader for row in _rows(batch)]
    status = cached.pixel_cache.status.tolist()
    assert [i for i, s in enumerate(status) if s == PixelCache.BAD] == bad_rows
    assert status.count(PixelCache.CACHED) == rows - len(bad_rows)

    # Later passes decode nothing, and give the very tensors (and validity) of the uncached dataset.
    monkeypatch.setattr("hubclf.train.data.decode_image", lambda value: pytest.fail(f"decoded {value} again"))
    again = [cached[i] for i in range(rows)]
    for want, got_first, got in zip(expected, first, again, strict=True):
        assert want["valid"] == got_first["valid"] == got["valid"]
        assert torch.equal(want["pixel_values"], got_first["pixel_values"])
        assert torch.equal(want["pixel_values"], got["pixel_values"])


@pytest.mark.parametrize("cache_pixels", [False, True], ids=["decoded", "pixel_cache"])
def test_uint8_batches_normalised_by_the_training_process_are_the_same_bits(tmp_path, cache_pixels):
    """PixelRows: the workers hand out uint8 pixels (a quarter of the bytes), FinishingLoader normalises them; the
    batches equal, bit for bit, the float batches the dataset gives itself, bad images (zeros, invalid) included."""
    make_image_folder(tmp_path, num_classes=2, per_class=4)
    add_bad_images(tmp_path / "class_0")
    data = load_image_dataset(str(tmp_path), val_split=0.25)
    _, eval_tf = build_transforms({"input_size": (3, HEIGHT, WIDTH)}, augment=False)
    plain = ImageClassificationDataset(data.train, "image", "label", eval_tf, input_size=(3, HEIGHT, WIDTH))
    images = ImageClassificationDataset(data.train, "image", "label", eval_tf, input_size=(3, HEIGHT, WIDTH),
                                        cache_pixels=cache_pixels)  # fmt: skip
    expected = list(torch.utils.data.DataLoader(plain, batch_size=4))
    rows = PixelRows(images)
    raw = next(iter(torch.utils.data.DataLoader(rows, batch_size=4, num_workers=1)))
    assert raw["pixel_values"].dtype == torch.uint8
    for _ in range(2 if cache_pixels else 1):  # with the cache: the pass that fills it, then the one that reads it
        got = list(FinishingLoader(torch.utils.data.DataLoader(rows, batch_size=4, num_workers=1)))
        assert len(got) == len(expected)
        for want, batch in zip(expected, got, strict=True):
            assert batch["pixel_values"].dtype == torch.float32
            assert torch.equal(batch["pixel_values"], want["pixel_values"])  # bit for bit, zeros of bad rows too
            assert torch.equal(batch["valid"], want["valid"]) and torch.equal(batch["labels"], want["labels"])
    assert not all(bool(v) for batch in expected for v in batch["valid"]), "some rows should be bad images"


def test_only_a_fixed_transform_hands_out_uint8_pixels(tmp_path):
    make_image_folder(tmp_path, num_classes=2, per_class=2)
    data = load_image_dataset(str(tmp_path), val_split=0.5)
    train_tf, _ = build_transforms({"input_size": (3, HEIGHT, WIDTH)}, augment=True)
    augmented = ImageClassificationDataset(data.train, "image", "label", train_tf, input_size=(3, HEIGHT, WIDTH))
    with pytest.raises(ValueError, match="fixed transform"):
        PixelRows(augmented)
    with pytest.raises(ValueError, match="fixed transform"):
        augmented.samples([0], normalized=False)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmRSS from /proc")
def test_an_empty_pixel_cache_costs_the_creating_process_no_memory():
    def resident_mib() -> float:
        line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmRSS"))
        return int(line.split()[1]) / 1024

    before = resident_mib()
    cache = PixelCache(1000, (3, 448, 224))  # 287 MiB of pixels, filled (and made resident) by whoever decodes
    assert cache.nbytes == 1000 * 3 * 448 * 224 and cache.pixels.is_shared()
    assert resident_mib() - before < 16


def test_only_a_fixed_transform_can_cache_pixels(tmp_path):
    make_image_folder(tmp_path, num_classes=2, per_class=2)
    data = load_image_dataset(str(tmp_path), val_split=0.5)
    train_tf, _ = build_transforms({"input_size": (3, HEIGHT, WIDTH)}, augment=True)
    with pytest.raises(ValueError, match="fixed"):
        ImageClassificationDataset(data.train, "image", "label", train_tf, cache_pixels=True)


def _rows(batch: dict) -> list[dict]:
    pairs = zip(batch["pixel_values"], batch["valid"], strict=True)
    return [{"pixel_values": pixels, "valid": bool(valid)} for pixels, valid in pairs]


def test_epoch_shuffle_is_a_permutation_drawn_from_seed_and_epoch_only():
    from hubclf.train.data import EpochShuffleSampler

    sampler = EpochShuffleSampler(50, seed=7)
    sampler.start_epoch(3)
    order = list(sampler)
    assert sorted(order) == list(range(50)) and order != list(range(50)) and len(sampler) == 50
    torch.manual_seed(123)  # the global RNG (dropout, other loaders) does not move it
    torch.rand(1000)
    assert list(sampler) == order
    again = EpochShuffleSampler(50, seed=7)
    again.start_epoch(3)
    assert list(again) == order
    sampler.start_epoch(4)
    assert list(sampler) != order
    other_seed = EpochShuffleSampler(50, seed=8)
    other_seed.start_epoch(3)
    assert list(other_seed) != order




def test_a_pixel_cache_over_its_budget_keeps_the_first_rows_and_decodes_the_rest(tmp_path):
    make_image_folder(tmp_path, num_classes=2, per_class=3)
    data = load_image_dataset(str(tmp_path), val_split=0.34, seed=0)
    _, eval_tf = build_transforms({"input_size": (3, HEIGHT, WIDTH)}, augment=False)
    plain = ImageClassificationDataset(data.train, "image", "label", eval_tf, input_size=(3, HEIGHT, WIDTH))
    cached = ImageClassificationDataset(data.train, "image", "label", eval_tf, input_size=(3, HEIGHT, WIDTH),
                                        cache_pixels=True, cache_rows=2)  # fmt: skip
    assert cached.pixel_cache.nbytes == 2 * 3 * HEIGHT * WIDTH  # the budget's rows, never the split's
    for _ in range(2):
        for row in range(len(plain)):
            assert torch.equal(cached[row]["pixel_values"], plain[row]["pixel_values"])
    assert cached.pixel_cache.status.tolist() == [PixelCache.CACHED] * 2 + [PixelCache.UNKNOWN] * (len(plain) - 2)
    assert isinstance(cached.labels, np.ndarray) and cached.labels.dtype == np.int64  # 8 bytes a row
