"""What a training run is built from: its data, model, transforms, datasets, caches, loaders and optimizer.

The one place they are made: ``train`` (``hubclf.train.loop``), ``lr-find``, ``--strategy auto`` and ``compare`` all
build them here, so they see the same model and the same pixels.

    data = load_training_data(config)
    model = create_model(config, data.label_names)
    data_config, train_transform, eval_transform = transforms_for(model, config, recipe)
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
from accelerate import PartialState
from accelerate.logging import get_logger
from accelerate.state import AcceleratorState
from accelerate.utils import broadcast_object_list, parse_flag_from_env
from timm.data import resolve_model_data_config
from timm.optim import create_optimizer_v2
from torch.utils.data import DataLoader

from hubclf._faults import fault_point
from hubclf.data.dataset import FinishingLoader, ImageClassificationDataset, PixelCache, PixelRows
from hubclf.data.gpu_decode import (
    DevicePreprocess,
    RawImages,
    choose_decode_device,
    collate_raw,
)
from hubclf.data.images import TensorEvalTransform, build_transforms
from hubclf.data.labels import split_fingerprint
from hubclf.data.splits import ImageClassificationData, load_image_dataset
from hubclf.data.streaming import ImageStream, StreamLoader
from hubclf.hardware import (
    choose_mixed_precision,
    default_num_workers,
    fused_optimizer_kwargs,
    processes_on_this_machine,
    shared_memory_budget,
)
from hubclf.hub import from_pretrained
from hubclf.refs import ModelRef
from hubclf.train.config import FREEZE_BACKBONE, TrainConfig
from hubclf.train.features import FeatureDataset, check_frozen_head, feature_cache_key, load_or_extract_features
from hubclf.train.preflight import check_model_name
from hubclf.train.recipes import Recipe
from hubclf.train.safety import ignore_interrupts_in_worker
from hubclf.train.stages import apply_stage, param_groups

logger = get_logger(__name__)  # Accelerate's logger: one line per message, from the main process
# pretrained_cfg fields that describe timm's default weights rather than the architecture.
WEIGHTS_DESCRIPTION = ("tag", "license", "origin_url", "notes")


# ---- machine ----------------------------------------------------------------------------------------------------
CHANNELS_LAST_DEVICES = ("cpu", "cuda")  # where the model trains channels-last unless told otherwise


def resolve_hardware_defaults(
    config: TrainConfig, recorded: dict[str, Any] | None = None
) -> tuple[TrainConfig, list[str]]:
    """``config`` with ``num_workers="auto"`` and ``mixed_precision="auto"`` decided for this machine (see
    ``hubclf.hardware``), and one log line per decision saying why.

    Every setting that changes the numbers a run computes (mixed precision, channels-last, the number of compute
    threads) is decided from the hardware's features, never from a timing. ``recorded`` is what the checkpoint being
    resumed recorded (its manifest's ``numerics``): a resumed run reuses those choices (and sets torch's thread count
    back to the recorded one), so it continues bit-identically on the same machine; a value given explicitly still
    wins, with a warning.

        config, why = resolve_hardware_defaults(config)
    """
    # The state the Accelerator will share; like AcceleratorState, honour ACCELERATE_USE_CPU, or a multi-CPU
    # launch would be initialised as a single process.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    recorded = recorded or {}
    choices, changes = [], {}
    if config.num_workers == "auto":
        local_processes = processes_on_this_machine(state.num_processes)
        changes["num_workers"] = default_num_workers(processes_per_machine=local_processes)
        choices.append(f"--num-workers auto: {changes['num_workers']} DataLoader worker(s) per process")
    if config.mixed_precision == "auto" and recorded.get("mixed_precision"):
        changes["mixed_precision"] = recorded["mixed_precision"]
        choices.append(f"--mixed-precision auto: {changes['mixed_precision']}, as the checkpoint recorded")
    elif config.mixed_precision == "auto" and AcceleratorState._shared_state:
        # An earlier run in this process fixed Accelerate's precision; it cannot change until the process restarts.
        changes["mixed_precision"] = AcceleratorState().mixed_precision
        choices.append(f"--mixed-precision auto: {changes['mixed_precision']}, as the earlier run in this process")
    elif config.mixed_precision == "auto":
        decision = [choose_mixed_precision(state.device.type)]
        if state.num_processes > 1:
            broadcast_object_list(decision)  # every process must train in the same precision: the main one decides
        changes["mixed_precision"], why = decision[0]
        choices.append(f"--mixed-precision auto: {changes['mixed_precision'] or 'left to Accelerate'} ({why})")
    elif recorded.get("mixed_precision") and config.mixed_precision not in (None, recorded["mixed_precision"]):
        choices.append(f"--mixed-precision {config.mixed_precision} as given, but the checkpoint was trained in "
                       f"{recorded['mixed_precision']}: the resumed run is no longer bit-identical")  # fmt: skip
    if config.channels_last is None and "channels_last" in recorded:
        changes["channels_last"] = bool(recorded["channels_last"])
        choices.append(f"channels-last memory format {'on' if changes['channels_last'] else 'off'}, as recorded")
    elif config.channels_last is None:
        # Faster on both (oneDNN; cuDNN's tensor cores): on an H200, train steps 20-30% shorter (docs/performance.md).
        changes["channels_last"] = state.device.type in CHANNELS_LAST_DEVICES
        layout = "on" if changes["channels_last"] else "off"
        choices.append(f"channels-last memory format {layout} (device: {state.device.type})")
    threads = recorded.get("num_threads")
    if isinstance(threads, int) and threads > 0 and threads != torch.get_num_threads():
        # A CPU convolution's backward sums in an order that depends on the thread count.
        choices.append(f"compute threads: {threads}, as the checkpoint recorded (this process had "
                       f"{torch.get_num_threads()})")  # fmt: skip
        torch.set_num_threads(threads)
    return dataclasses.replace(config, **changes), choices


def numerics_record(config: TrainConfig, mixed_precision: str, choices: list[str]) -> dict[str, Any]:
    """What a run records of the choices that change its numbers, for ``--resume`` to reuse (a checkpoint's manifest).

        numerics_record(config, "no", why)   # {"mixed_precision": "no", "channels_last": True, "num_threads": 2, ...}
    """
    return {
        "mixed_precision": mixed_precision,
        "channels_last": bool(config.channels_last),
        "num_threads": torch.get_num_threads(),
        "seed": config.seed,
        "why": list(choices),
    }


# ---- data -------------------------------------------------------------------------------------------------------
def load_training_data(config: TrainConfig) -> ImageClassificationData:
    """The checked train/eval splits that ``config`` names: the same for ``train``, ``lr-find``, ``--strategy auto``
    and ``compare``.

        data = load_training_data(TrainConfig(model="hubclf_alexnet", data="photos/", output_dir="out"))
    """
    return load_image_dataset(
        config.data,
        image_column=config.image_column,
        label_column=config.label_column,
        train_split=config.train_split,
        eval_split=config.eval_split,
        val_split=config.val_split,
        seed=config.seed,
        num_classes=config.num_classes,
        labels=config.labels,
        path_column=config.path_column,
        streaming=config.streaming,
    )


# ---- model ------------------------------------------------------------------------------------------------------
def create_model(config: TrainConfig, label_names: list[str]) -> nn.Module:
    """The model to train, with a fresh ``len(label_names)``-class classifier unless a saved one already fits.

    ``config.model`` is any timm architecture name (``resnet18``, ``hubclf_alexnet``...; ``pretrained`` /
    ``weights`` pick the starting weights), or a model saved by ``hubclf.save_pretrained`` (a Hub repo or a folder,
    see ``hubclf.refs.ModelRef``), whose backbone is kept. ``config.img_size`` becomes the model's input size: an
    ``img_size`` argument for architectures that take one (hubclf's, ViTs), ``pretrained_cfg["input_size"]`` for the
    convolutional ones that take any size and no such argument (ResNet, ConvNeXt...). ``config.crop_pct`` goes into
    its ``pretrained_cfg``, so it is saved with the model.

        model = create_model(TrainConfig(model="hubclf_alexnet_slim", data="photos/", output_dir="out"), ["a", "b"])
    """
    num_classes = len(label_names)
    ref = ModelRef.parse(config.model)
    check_model_name(config.model)
    if ref.is_saved:
        if not config.pretrained or config.weights:
            raise ValueError(
                f"--no-pretrained/--weights apply to architecture names, not to the saved model {ref.text}"
            )
        create = partial(from_pretrained, ref.text, num_classes=num_classes, **_regularisation(config))
        model = _with_regularisation(config, lambda: _create_at_size(create, config.img_size))
        saved_names = getattr(model, "label_names", None)
        if saved_names and list(saved_names) != list(label_names):
            logger.info(f"{ref.text} was trained on classes {saved_names}; starting a new classifier for these ones")
            model.reset_classifier(num_classes)
    else:
        model = _create_architecture(config, num_classes)
        if not config.pretrained or config.weights:
            # timm attaches its default weights' config whether or not it loads them: their tag, licence and origin
            # would describe weights this model never had (in config.json and on the card).
            cfg = {k: v for k, v in model.pretrained_cfg.items() if k not in WEIGHTS_DESCRIPTION}
            model.pretrained_cfg = model.default_cfg = cfg
    if config.freeze == FREEZE_BACKBONE:
        check_frozen_head(model)  # the head-only stage and cached features rely on timm's classifier contract
    if config.crop_pct is not None:
        # In the pretrained_cfg, so it is saved with the model: predict, eval and timm users then see the images
        # exactly as validation did.
        model.pretrained_cfg = model.default_cfg = {**model.pretrained_cfg, "crop_pct": config.crop_pct}
    return model


def _create_architecture(config: TrainConfig, num_classes: int) -> nn.Module:
    name = config.model
    overlay = {"file": config.weights} if config.weights else None
    if config.pretrained:
        known = timm.models.get_pretrained_cfg(name)
        sources = {**(known.to_dict() if known else {}), **(overlay or {})}
        if not any(sources.get(key) for key in ("url", "file", "hf_hub_id", "state_dict")):
            raise ValueError(f"timm knows no pretrained weights for {name}; pass --weights FILE or --no-pretrained")
    elif config.resume is None:  # a resumed run's weights come from its checkpoint, which the loop names
        logger.warning(f"--no-pretrained: {name} starts from random weights")
    create = partial(
        timm.create_model, name, pretrained=config.pretrained, num_classes=num_classes, pretrained_cfg_overlay=overlay,
        **_regularisation(config),
    )  # fmt: skip
    with _missing_pretrained_tensors() as missing:
        model = _with_regularisation(config, lambda: _create_at_size(create, config.img_size))
    classifier = model.pretrained_cfg.get("classifier") or ()
    prefixes = tuple(f"{c}." for c in ([classifier] if isinstance(classifier, str) else classifier))
    missing = [k for k in missing if not k.startswith(prefixes) and not k.endswith("num_batches_tracked")]
    if missing:
        source = config.weights or "its pretrained weights"
        raise ValueError(
            f"{source} lacks {len(missing)} of {name}'s backbone tensors, which would silently stay random: "
            f"{missing[:8]}{' ...' if len(missing) > 8 else ''}"
        )
    return model


def _regularisation(config: TrainConfig) -> dict[str, float]:
    """--dropout / --drop-path, as timm's model arguments (only those given: every timm model takes drop_rate)."""
    given = {"drop_rate": config.drop_rate, "drop_path_rate": config.drop_path_rate}
    return {key: value for key, value in given.items() if value is not None}


def _with_regularisation(config: TrainConfig, create: Callable[[], nn.Module]) -> nn.Module:
    """``create()``, with an architecture that has no stochastic depth named as such instead of a TypeError."""
    try:
        return create()
    except TypeError as e:
        if "drop_path_rate" not in str(e):
            raise
        raise ValueError(f"--drop-path: {config.model} has no stochastic depth (drop path); leave the flag out") from e


@contextmanager
def _missing_pretrained_tensors() -> Iterator[list[str]]:
    """The tensors timm reports missing while it loads pretrained weights. When it replaces the classifier it loads
    non-strictly and only logs the others (at INFO level); hubclf's own models check this in their checkpoint filter.
    """
    missing: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            found = re.match(r"Missing keys \((.*)\) discovered", record.getMessage())
            missing.extend(found.group(1).split(", ") if found else [])

    timm_logger, handler = logging.getLogger("timm.models._builder"), Collect(logging.INFO)
    level = timm_logger.level
    timm_logger.addHandler(handler)
    timm_logger.setLevel(min(level or logging.INFO, logging.INFO))
    try:
        yield missing
    finally:
        timm_logger.removeHandler(handler)
        timm_logger.setLevel(level)


# pretrained_cfg fields tied to the source input size (e.g. resnet18.a1_in1k: pool_size 7×7, tested at 288×288).
_SOURCE_SIZE_FIELDS = ("pool_size", "test_input_size", "test_crop_pct", "test_pool_size")


def _create_at_size(create: Callable[..., nn.Module], img_size: tuple[int, int] | None) -> nn.Module:
    """``create(img_size=img_size)``, or for an architecture without that argument ``create()`` with the size
    written into its ``pretrained_cfg`` (what timm's data config, the saved config and predict/eval read)."""
    if img_size is None:
        return create()
    try:
        return create(img_size=img_size)
    except TypeError as e:
        if "'img_size'" not in str(e):
            raise
    model = create()
    cfg = dict(model.pretrained_cfg)
    cfg["input_size"] = (cfg["input_size"][0], *img_size)
    for key in _SOURCE_SIZE_FIELDS:  # they describe the source weights' sizes, not this model's
        cfg.pop(key, None)
    model.pretrained_cfg = model.default_cfg = cfg
    logger.info(f"{type(model).__name__} takes no img_size argument: {tuple(img_size)} is its input size for data")
    return model


def build_optimizer(model: nn.Module, config: TrainConfig, first_stage: str, device: torch.device) -> Any:
    """One timm optimizer for the whole run, its groups set up for ``first_stage`` (see ``stages.param_groups``).

        optimizer = build_optimizer(model, config, stage_for_epoch(config, 0), accelerator.device)
    """
    apply_stage(model, first_stage, config)  # requires_grad as in the first epoch, which param_groups reads
    return create_optimizer_v2(
        model,
        opt=config.opt,
        lr=config.lr,
        weight_decay=config.weight_decay,
        param_group_fn=lambda m: param_groups(m, config),
        **fused_optimizer_kwargs(config.opt, device),  # no model-sized temporaries per step
    )


# ---- transforms and datasets --------------------------------------------------------------------------------------
def transforms_for(model: nn.Module, recipe: Recipe) -> tuple[dict[str, Any], Any, Any]:
    """``(data_config, train_transform, eval_transform)``: the model's input size and normalisation, with the
    recipe's augmentation for training.

        data_config, train_transform, eval_transform = transforms_for(model, recipe)
    """
    data_config = resolve_model_data_config(model)
    train_transform, eval_transform = build_transforms(
        data_config, augment=recipe.augments, **recipe.transform_options
    )
    return data_config, train_transform, eval_transform


def image_dataset(
    config: TrainConfig, data: ImageClassificationData, split: Any, transform: Any, input_size: Any, cache: bool | int
) -> ImageClassificationDataset:
    """A torch view of one split of ``data`` through ``transform`` (``cache``: keep its decoded pixels; a number:
    of that many rows, the budget's worth).

        train_images = image_dataset(config, data, data.train, train_transform, data_config["input_size"], False)
    """
    return ImageClassificationDataset(
        split,
        data.image_column,
        data.label_column,
        transform,
        on_bad_image=config.on_bad_image,
        input_size=input_size,
        cache_pixels=bool(cache),
        cache_rows=None if isinstance(cache, bool) else cache,
    )


def is_stream_split(split: Any) -> bool:
    """A ``hubclf.data.streaming.StreamSplit`` (read shard by shard), not a 🤗 ``Dataset``."""
    return hasattr(split, "shards")


def image_streams(
    config: TrainConfig, data: ImageClassificationData, transforms: tuple[Any, Any], input_size: Any
) -> tuple[ImageStream, ImageStream]:
    """The train stream (shuffled per epoch) and the eval stream of streamed ``data``, split across this run's
    processes and loader workers (``hubclf.data.streaming``).

        train_images, eval_images = image_streams(config, data, (train_tf, eval_tf), (3, 224, 224))
    """
    if config.balanced_sampler:
        raise ValueError("--balanced-sampler draws images at random, with replacement: not with streamed data")
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    common = dict(
        batch_size=config.batch_size, seed=config.seed, num_workers=int(config.num_workers),
        process_index=state.process_index, num_processes=state.num_processes, shuffle_buffer=config.shuffle_buffer,
        on_bad_image=config.on_bad_image, input_size=tuple(input_size),
    )  # fmt: skip
    return (
        ImageStream(data.train, transforms[0], shuffle=True, **common),
        ImageStream(data.eval, transforms[1], shuffle=False, **common),
    )


def image_datasets(
    config: TrainConfig, data: ImageClassificationData, model: nn.Module, recipe: Recipe, num_processes: int
) -> tuple[ImageClassificationDataset, ImageClassificationDataset]:
    """The train and eval image datasets of a run, with the pixel cache where it pays and fits.

        train_images, eval_images = image_datasets(config, data, model, recipe, accelerator.num_processes)
    """
    data_config, train_transform, eval_transform = transforms_for(model, recipe)
    if is_stream_split(data.train):
        return image_streams(config, data, (train_transform, eval_transform), data_config["input_size"])
    cache_train, cache_eval = pixel_cache_plan(
        config, data, data_config, train_transform, eval_transform, num_processes
    )
    input_size = data_config["input_size"]
    return (
        image_dataset(config, data, data.train, train_transform, input_size, cache_train),
        image_dataset(config, data, data.eval, eval_transform, input_size, cache_eval),
    )


def pixel_cache_plan(
    config: TrainConfig,
    data: ImageClassificationData,
    data_config: dict[str, Any],
    train_transform: Any,
    eval_transform: Any,
    num_processes: int,
) -> tuple[bool | int, bool | int]:
    """Whether the train and eval splits keep their decoded pixels in memory (``--cache-images auto``), and of how
    many rows.

    Only splits whose every epoch sees the same pixels (``TensorEvalTransform``), only when features are not
    cached instead (those runs read the images once), and never more than the shared-memory budget: when both do
    not fit, the eval split's rows are kept first (every epoch reads them), then as many train rows as fit (a number
    of rows instead of ``True``); one line in the log either way.
    """
    fixed = [
        (name, len(split))
        for name, split, transform in (("train", data.train, train_transform), ("eval", data.eval, eval_transform))
        if isinstance(transform, TensorEvalTransform)
    ]
    if config.cache_images == "off" or config.feature_cache_mode != "off" or not fixed:
        return False, False
    input_size = tuple(data_config["input_size"])
    needed = sum(PixelCache.nbytes_for(rows, input_size) for _, rows in fixed)
    budget = shared_memory_budget(processes_on_this_machine(num_processes))
    images = " + ".join(f"{rows} {name}" for name, rows in fixed)
    if needed > budget:
        row_bytes = PixelCache.nbytes_for(1, input_size)
        room, capacity = budget // row_bytes, {}
        for name, rows in sorted(fixed, key=lambda item: item[0] != "eval"):  # eval first
            capacity[name] = min(rows, room)
            room -= capacity[name]
        kept = " + ".join(f"{capacity[name]} {name}" for name, _ in fixed if capacity[name])
        logger.info(
            f"image cache {'partial' if kept else 'off'}: the decoded pixels of {images} images would take "
            f"{needed / 2**20:.1f} MiB, over this process's budget of {budget / 2**20:.1f} MiB (a quarter of RAM, "
            f"half of free /dev/shm)" + (f"; the first {kept} rows are kept, the others decoded each epoch" if kept
                                         else "")
        )  # fmt: skip
        return capacity.get("train", 0) or False, capacity.get("eval", 0) or False
    logger.info(
        f"image cache: the decoded {input_size[1]}x{input_size[2]} pixels of {images} images stay in shared "
        f"memory ({needed / 2**20:.1f} MiB); epochs after the first skip decoding and resizing"
    )
    names = {name for name, _ in fixed}
    return "train" in names, "eval" in names


# ---- cached features and loaders ----------------------------------------------------------------------------------
def feature_sets(
    accelerator: Any,
    model: nn.Module,
    config: TrainConfig,
    train_images: Any,
    eval_images: Any,
    weights: str,
) -> tuple[FeatureDataset, FeatureDataset]:
    """Run the frozen backbone once over both splits, each process over its own shards, into the feature cache
    (``OUTPUT_DIR/feature_cache`` or ``--feature-cache-dir``), or reuse a matching one; see ``hubclf.train.features``.

        train_set, eval_set = feature_sets(accelerator, model, config, train_images, eval_images, fingerprint)
    """
    cache_dir = Path(config.feature_cache_dir or Path(config.output_dir) / "feature_cache")
    found = []
    for name, images in (("train", train_images), ("eval", eval_images)):
        stream = getattr(images, "split", None)
        key = feature_cache_key(
            weights=weights,
            transform=images.transform,
            data_fingerprint=stream.fingerprint if stream is not None else split_fingerprint(images.dataset),
            rows=len(stream) if stream is not None else len(images),
            autocast=str(accelerator.mixed_precision),
            pooling=str(getattr(model, "global_pool", None)),
            storage=config.feature_dtype,
        )
        feature_set = load_or_extract_features(
            accelerator, model, images, key=key, cache_dir=cache_dir, batch_size=config.batch_size,
            num_workers=int(config.num_workers), storage=config.feature_dtype,
            in_memory=config.feature_cache_mode == "memory", desc=f"{name} features",
        )  # fmt: skip
        feature_set.bad_images = [images.describe(int(r)) for r in feature_set.shards.bad_rows]
        found.append(feature_set)
        fault_point("train.features_ready")
    return found[0], found[1]


def build_loaders(
    config: TrainConfig, train_set: Any, eval_set: Any, sampler: Any, device: torch.device
) -> tuple[DataLoader, DataLoader]:
    """The train loader (in ``sampler``'s order) and the eval loader, sharing one worker policy.

        train_loader, eval_loader = build_loaders(config, train_set, eval_set, sampler, accelerator.device)
    """
    workers = 0 if isinstance(train_set, FeatureDataset) else config.num_workers
    # The loaders' own draws (worker seeds) come from a private generator: drawn from the global RNG, their number
    # (per epoch, or once with persistent workers) would shift the dropout draws with --num-workers.
    loader_generator = torch.Generator().manual_seed(config.seed)
    # Persistent workers: each epoch's train and eval passes reuse their workers instead of starting new ones;
    # the per-epoch augmentation seed reaches them through shared memory (ImageClassificationDataset).
    loader_args = dict(
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=ignore_interrupts_in_worker if workers else None,
        persistent_workers=workers > 0,
        generator=loader_generator,
    )
    if isinstance(train_set, ImageStream):  # split across processes by the stream itself, not by Accelerate
        return StreamLoader(train_set, device, **loader_args), StreamLoader(eval_set, device, **loader_args)
    # Batches finished in the training process (stages.prepare_stage wraps the loaders in a FinishingLoader).
    train_set, eval_set = loader_rows(train_set, config, device), loader_rows(eval_set, config, device)
    raw = {"collate_fn": collate_raw} if isinstance(train_set, RawImages) else {}
    raw_eval = {"collate_fn": collate_raw} if isinstance(eval_set, RawImages) else {}
    return (
        DataLoader(train_set, sampler=sampler, batch_size=config.batch_size, **raw, **loader_args),
        DataLoader(eval_set, shuffle=False, batch_size=config.batch_size, **raw_eval, **loader_args),
    )


def decode_device_plan(
    config: TrainConfig, train_images: Any, eval_images: Any, device: torch.device
) -> tuple[TrainConfig, str]:
    """``config`` with ``decode_device`` decided (``cpu`` or ``cuda``), and the log line that says why: on a CUDA
    device whose nvJPEG works, the splits with fixed inputs are decoded there
    (``hubclf.data.gpu_decode.choose_decode_device``: from the hardware, never from a timing).

        config, why = decode_device_plan(config, train_images, eval_images, accelerator.device)
    """
    fixed = [
        images for images in (train_images, eval_images)
        if isinstance(images, ImageClassificationDataset) and isinstance(images.transform, TensorEvalTransform)
    ]  # fmt: skip
    if not fixed or config.feature_cache_mode != "off":
        choice, why = "cpu", "features are cached" if fixed else "no split has fixed inputs, or the data streams"
    else:
        choice, why = choose_decode_device(config.decode_device, device)
    line = f"--decode-device {config.decode_device}: {choice} ({why})"
    return dataclasses.replace(config, decode_device=choice), line


def loader_rows(images: Any, config: TrainConfig, device: torch.device) -> Any:
    """What a loader reads of ``images`` when its inputs are fixed (``TensorEvalTransform``): the raw bytes when
    ``config.decode_device`` is ``cuda`` (decoded on the GPU), else the uint8 pixels (``PixelRows``: normalised by
    the training process, on the device). Augmented images, streams and cached features are read as they are."""
    if not isinstance(images, ImageClassificationDataset) or not isinstance(images.transform, TensorEvalTransform):
        return images
    if config.decode_device == "cuda":
        return RawImages(images, DevicePreprocess(images.transform, device))
    return PixelRows(images)


def skip_batches(accelerator: Any, loader: Any, sampler: Any, epoch: int, batches: int) -> Any:
    """``loader`` from its ``batches``-th batch of ``epoch`` (a resumed epoch): a stream seeks to the recorded
    shards and offsets (``ImageStream.start_epoch``); a map-style loader skips the sampler's first indices
    (``accelerator.skip_first_batches``: no image is read for them)."""
    if isinstance(sampler, ImageStream):
        sampler.start_epoch(epoch, skip_batches=batches)
        return loader
    if isinstance(loader, FinishingLoader):
        return FinishingLoader(accelerator.skip_first_batches(loader.loader, batches)) if batches else loader
    return accelerator.skip_first_batches(loader, batches) if batches else loader
