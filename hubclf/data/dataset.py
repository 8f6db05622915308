"""The torch side of the data: a ``Dataset`` over a 🤗 split that never fails a batch on a bad image, a shared
pixel cache for fixed inputs, and samplers whose order depends on (seed, epoch) alone.

    images = ImageClassificationDataset(data.train, data.image_column, data.label_column, eval_tf)
    sampler = EpochShuffleSampler(len(images), seed=0); sampler.start_epoch(1)
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image

from hubclf.data.images import BadImageError, TensorEvalTransform, decode_image
from hubclf.data.labels import label_values, undecoded_images


def shared_bytes(nbytes: int) -> torch.Tensor:
    """A 1-D uint8 tensor of ``nbytes`` created in shared memory, its pages untouched: what another process reads
    without a copy (a loader worker's batch, the pixel cache). ``torch.empty(n).share_memory_()`` would write the
    whole buffer once, making every page resident in the creating process.

        shared_bytes(1024).is_shared()   # True
    """
    return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(max(1, nbytes)))[:nbytes]


class PixelCache:
    """Every row's resized and cropped uint8 pixels, in shared memory: decoded once, then read by any process.

    For fixed inputs only (``TensorEvalTransform``: no random augmentation), where every epoch would decode and
    resize the same file to the same pixels again. DataLoader workers fill it during the first pass and see each
    other's rows, because the storage is shared; a row's float pixels are then normalised from the uint8 copy by
    the same operations as without the cache, so the tensors are identical. ``nbytes`` is what it holds.

    ``capacity`` bounds it: only the first ``capacity`` rows are kept (the budget's worth), the others are decoded
    every epoch as without a cache, so a split larger than the budget still gains what fits and never takes more.

    Example::

        cache = PixelCache(len(split), (3, 448, 224))   # 0.3 MB per image at 448×224
    """

    UNKNOWN, CACHED, BAD = 0, 1, 2

    def __init__(self, rows: int, input_size: tuple[int, int, int], capacity: int | None = None) -> None:
        self.capacity = rows if capacity is None else max(0, min(rows, capacity))
        self.pixels = shared_bytes(self.nbytes_for(self.capacity, input_size)).view(self.capacity, *input_size)
        self.status = torch.zeros(rows, dtype=torch.uint8).share_memory_()  # one byte per row: bad images too

    @staticmethod
    def nbytes_for(rows: int, input_size: tuple[int, int, int]) -> int:
        return rows * math.prod(input_size)

    @property
    def nbytes(self) -> int:
        return self.pixels.numel()

class ImageClassificationDataset(torch.utils.data.Dataset):
    """A torch view of a 🤗 split: ``{"pixel_values", "labels", "index", "valid"}`` per row.

    Unreadable images do not stop training: with ``on_bad_image="skip"`` the row comes back with
    ``valid=False`` and a placeholder tensor, which the loss and the metrics mask out; ``"error"`` raises.

    Example::

        ImageClassificationDataset(data.train, "image", "label", eval_tf)[0]["pixel_values"].shape  # (3, H, W)
    """

    def __init__(
        self,
        dataset: Any,  # a 🤗 Dataset split or a FileSplit (hubclf.data.folders)
        image_column: str,
        label_column: str,
        transform: Callable[[Image.Image], torch.Tensor],
        *,
        on_bad_image: str = "skip",
        input_size: tuple[int, int, int] = (3, 224, 224),
        cache_pixels: bool = False,
        cache_rows: int | None = None,
    ) -> None:
        if on_bad_image not in ("skip", "error"):
            raise ValueError(f"on_bad_image must be 'skip' or 'error', got {on_bad_image!r}")
        if hasattr(dataset, "shards"):  # a hubclf.data.streaming.StreamSplit
            raise ValueError(
                "streamed data (WebDataset, parquet shards, --streaming) is read in order, shard by shard; this reads "
                "images at random: give an image folder, a saved dataset or a Hub dataset without --streaming"
            )
        if cache_pixels and not isinstance(transform, TensorEvalTransform):
            raise ValueError(f"cache_pixels needs a fixed (eval) transform, got {transform!r}")
        # decode=False hands us the raw bytes/path, so that decoding failures are ours to handle.
        self.dataset = undecoded_images(dataset, image_column, label_column)
        self.image_column = image_column
        self.label_column = label_column
        self.transform = transform
        self.on_bad_image = on_bad_image
        self.input_size = tuple(input_size)
        # Labels are read once (no images decoded), as one int64 array (8 bytes a row, not a Python int each); the
        # images are read a batch of rows at a time.
        labels = np.asarray(label_values(self.dataset, label_column))
        self.labels = labels.astype(np.int64) if labels.dtype.kind in "iub" else labels  # eval may match names
        # (seed, epoch) in shared memory: persistent DataLoader workers see each new epoch's value (-1: unseeded).
        self._augmentation_seed = torch.full((2,), -1, dtype=torch.int64).share_memory_()
        self.pixel_cache = PixelCache(len(self.labels), self.input_size, cache_rows) if cache_pixels else None

    @property
    def augmentation_seed(self) -> tuple[int, int] | None:
        seed, epoch = self._augmentation_seed.tolist()
        return None if seed < 0 else (seed, epoch)

    def seed_augmentation(self, seed: int, epoch: int) -> None:
        """Draw each image's random augmentation from ``(seed, epoch, row)`` instead of the global RNG.

        The augmentation of a row then no longer depends on worker count, process count or the batches before
        it, which is what makes a resumed run (even mid-epoch) see exactly the pixels of an uninterrupted one.
        """
        if seed < 0 or epoch < 0:
            raise ValueError(f"seed and epoch must be non-negative, got {seed}, {epoch}")
        self._augmentation_seed.copy_(torch.tensor([seed, epoch]))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """A batch of rows: the DataLoader calls this once per batch, so the Arrow table is read once per batch."""
        return self.samples(indices)

    def samples(self, indices: list[int], normalized: bool = True) -> list[dict[str, Any]]:
        """The samples of ``indices``; ``normalized=False`` (a fixed transform only): their uint8 pixels, which
        ``PixelRows.finish_batch`` normalises a batch at a time (a bad image's are zeros there, as here)."""
        if not normalized and not isinstance(self.transform, TensorEvalTransform):
            raise ValueError("only a fixed transform (TensorEvalTransform) has uint8 pixels to hand out")
        indices = [int(i) for i in indices]
        values = self.dataset[indices][self.image_column]
        return [self._sample(value, index, normalized) for value, index in zip(values, indices, strict=True)]

    def _sample(self, value: dict[str, Any], index: int, normalized: bool = True) -> dict[str, Any]:
        cache = self.pixel_cache
        status = PixelCache.UNKNOWN if cache is None else int(cache.status[index])
        if status == PixelCache.CACHED:
            pixels, valid = cache.pixels[index], True  # a view: collate copies it into the batch
            pixels = self.transform.normalize(pixels) if normalized else pixels
        elif status == PixelCache.BAD:
            pixels, valid = self._blank(normalized), False  # reported on the first pass
        else:
            try:
                image = decode_image(value, transform=self.transform)  # refused from its header if over budget
            except BadImageError:
                if self.on_bad_image == "error":
                    raise
                if cache is not None:
                    cache.status[index] = PixelCache.BAD
                pixels, valid = self._blank(normalized), False
            else:
                pixels, valid = self._transform(image, index, normalized), True
        return {"pixel_values": pixels, "labels": self.labels[index].item(), "index": index, "valid": valid}

    def _blank(self, normalized: bool) -> torch.Tensor:
        """A bad image's pixels: zeros, the mean image after normalisation (``PixelRows.finish_batch`` zeroes the
        uint8 rows of invalid samples after normalising, to the same floats)."""
        return torch.zeros(self.input_size, dtype=torch.float32 if normalized else torch.uint8)

    def _transform(self, image: Image.Image | torch.Tensor, index: int, normalized: bool = True) -> torch.Tensor:
        cache = self.pixel_cache
        if cache is not None or not normalized:  # a fixed transform: no augmentation seed to apply
            pixels = self.transform.pixels(image)
            if cache is not None and index < cache.capacity and tuple(pixels.shape) == tuple(cache.pixels.shape[1:]):
                cache.pixels[index] = pixels
                cache.status[index] = PixelCache.CACHED  # after the pixels: a reader never sees a half-written row
            return self.transform.normalize(pixels) if normalized else pixels
        return seeded_transform(self.transform, image, self.augmentation_seed, index)

    def describe(self, index: int) -> str:
        """Where row ``index`` comes from: its file path, or its row number for in-memory images."""
        value = self.dataset[int(index)][self.image_column]
        return value.get("path") or f"row {int(index)}"


class PixelRows(torch.utils.data.Dataset):
    """An ``ImageClassificationDataset`` with a fixed transform whose batches leave the loader as uint8 pixels, and
    are normalised by the training process (``finish_batch``, on the device, once the loader has put them there).

    Why: a loader worker that normalises and collates float batches writes 4 bytes a pixel into shared memory, and on
    a 2-core machine every CPU-second a worker takes is taken from both training threads (an AlexNet epoch at
    448x224: most of the worker's time was the float collate). uint8 batches are a quarter of the bytes, and the
    normalisation is one pass over the batch in the training process. The arithmetic is
    ``TensorEvalTransform.normalize``'s, element for element, so the pixels are the same bits.

        loader = FinishingLoader(accelerator.prepare(DataLoader(PixelRows(images), batch_size=16)))
    """

    def __init__(self, images: ImageClassificationDataset) -> None:
        if not isinstance(images.transform, TensorEvalTransform):
            raise ValueError("PixelRows needs a fixed transform (TensorEvalTransform)")
        self.images, self.transform, self.labels = images, images.transform, images.labels
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        return self.images.samples(indices, normalized=False)

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers: the device constants stay in this process
        return {**self.__dict__, "_constants": {}}

    def finish_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """uint8 ``pixel_values`` (N, 3, H, W) -> normalised float, where they are; invalid rows become zeros."""
        pixels = batch["pixel_values"]
        if pixels.device not in self._constants:
            self._constants[pixels.device] = (self.transform.scale.to(pixels.device),
                                              self.transform.shift.to(pixels.device))  # fmt: skip
        scale, shift = self._constants[pixels.device]
        floats = pixels.float().mul_(scale).add_(shift)
        valid = torch.as_tensor(batch["valid"], device=floats.device).bool().view(-1, 1, 1, 1)
        batch["pixel_values"] = floats.masked_fill_(~valid, 0.0)
        return batch


class FinishingLoader:
    """A loader whose dataset finishes each batch in the training process, after Accelerate has sharded it and put
    it on the device: ``dataset.finish_batch(batch)`` (``PixelRows``: normalise; ``RawImages``: decode on the GPU).

        loader = FinishingLoader(accelerator.prepare(DataLoader(PixelRows(images), batch_size=16)))
    """

    def __init__(self, loader: Any) -> None:
        self.loader, self.finish = loader, loader.dataset.finish_batch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            yield self.finish(batch)


def seeded_transform(
    transform: Callable[[Any], torch.Tensor], image: Any, augmentation_seed: tuple[int, int] | None, row: int
) -> torch.Tensor:
    """``transform(image)``, its random draws taken from ``(seed, epoch, row)`` when ``augmentation_seed`` is set.

    Streams (``hubclf.data.streaming``) and ``ImageClassificationDataset`` share it, so a row's augmentation does
    not depend on workers, processes or the batches before it. Example::

        seeded_transform(train_tf, image, (0, 3), row=17)   # the same pixels whichever worker draws row 17
    """
    if augmentation_seed is None:
        return transform(image)
    seed = int(np.random.SeedSequence([*augmentation_seed, row]).generate_state(1)[0])
    # timm's crops draw from `random`, torchvision's flips from torch, timm's RandAugment from NumPy.
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        try:
            return transform(image)
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


# ---- data order ------------------------------------------------------------------------------------------------
class EpochSampler(torch.utils.data.Sampler[int]):
    """``rows`` indices per epoch, drawn from ``(seed, epoch)`` only; subclasses say how (``__iter__``).

    Nothing else draws from the epoch's generator, so any worker count, a resumed run and every process
    (Accelerate's batch sharding gives each its part of the same sequence) see the same indices. Call
    ``start_epoch`` before each epoch (not ``set_epoch``: Accelerate calls that one with its own count of
    iterations, which restarts at 0 in a resumed run).
    """

    def __init__(self, rows: int, seed: int) -> None:
        self.rows, self.seed, self.epoch = rows, seed, 0

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.rows

    # Not named `generator`: Accelerate takes a sampler's `generator` attribute for a torch.Generator to synchronise.
    def epoch_generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]))

class EpochShuffleSampler(EpochSampler):
    """Every row once per epoch, in an order drawn from ``(seed, epoch)`` only.

    ``DataLoader(shuffle=True, generator=g)`` shares ``g`` with the loader's iterator, which draws its worker seed
    from it every epoch without workers and only once with persistent ones: the order then depended on
    ``--num-workers``. Example::

        sampler = EpochShuffleSampler(4, seed=0); sampler.start_epoch(1); list(sampler)
    """

    def __iter__(self):
        order = torch.randperm(self.rows, generator=self.epoch_generator())
        yield from iter_ints(order)


def iter_ints(values: torch.Tensor, block: int = 65536):
    """The ints of a 1-D tensor, converted to Python a block at a time: ``tensor.tolist()`` would hold one Python
    int per row (36 bytes each, 36 MB per million rows) for the whole epoch."""
    for start in range(0, len(values), block):
        yield from values[start : start + block].tolist()
