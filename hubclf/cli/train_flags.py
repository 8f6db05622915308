"""The one definition of ``hubclf train``'s flags. ``train`` takes all of them; ``lr-find`` and ``compare`` take
every one that makes sense for them, from here, so a flag means the same thing everywhere.

    parser = argparse.ArgumentParser(prog="hubclf train")
    add_train_arguments(parser)
    config = config_from_args(parser.parse_args(["--model", "hubclf_alexnet", "--data", "photos/",
                                                 "--output-dir", "out"]))

Nothing here imports torch: ``hubclf train --help`` prints at once.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from hubclf.train.config import (
    AUGMENT_CHOICES,
    BAD_IMAGE_POLICIES,
    CACHE_MODES,
    CLASS_WEIGHT_CHOICES,
    DECODE_DEVICES,
    FEATURE_DTYPES,
    IMAGE_CACHE_MODES,
    MIXED_PRECISIONS,
    STRATEGIES,
    TrainConfig,
)


class ImgSizeAction(argparse.Action):
    """``--img-size HEIGHT WIDTH``, or ``--img-size SIZE`` for a square (how timm's train.py spells it)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option=None):
        if len(values) > 2:
            parser.error(f"{option}: give HEIGHT WIDTH, or one SIZE for a square; got {len(values)} numbers")
        setattr(namespace, self.dest, (values[0], values[-1]))


IMG_SIZE_FLAG = {"nargs": "+", "type": int, "metavar": "SIZE", "action": ImgSizeAction}


# Flags lr-find cannot use: the sweep sets the learning rate itself, runs one process in float32 with plain
# cross-entropy and shuffling, and writes no checkpoints, models or pushes (--smoothing is its own: the loss curve's).
LR_FIND_EXCLUDES = (
    "--epochs", "--lr", "--sched", "--warmup-epochs", "--min-lr", "--grad-accum-steps", "--mixed-precision",
    "--channels-last", "--compile", "--max-nonfinite-steps", "--cache-images", "--cache-features",
    "--feature-cache-dir", "--strategy", "--unfreeze-after", "--smoothing", "--mixup", "--cutmix", "--class-weights",
    "--balanced-sampler", "--patience", "--model-ema", "--model-ema-decay", "--save-every-steps",
    "--keep-checkpoints", "--resume", "--log-with", "--push-to-hub", "--private", "--feature-dtype", "--streaming",
    "--shuffle-buffer", "--decode-device",
)  # fmt: skip
# Flags compare sets per strategy (the freezing), spells its own way (--lr per strategy, --push-best), or cannot
# use (one compare is several runs: no --resume).
COMPARE_EXCLUDES = ("--lr", "--freeze", "--unfreeze-after", "--strategy", "--resume", "--push-to-hub")


def add_train_arguments(
    parser: argparse.ArgumentParser, exclude: tuple[str, ...] = (), helps: dict[str, str] | None = None
) -> None:
    """Add ``hubclf train``'s flags, except the ``exclude``d ones (a command that cannot use them, or gives them
    another meaning); ``helps`` rewords a flag's help for that command.

    Defaults stay out of the namespace so that a ``--config`` file can supply them.

        add_train_arguments(compare_parser, exclude=COMPARE_EXCLUDES)
    """
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    helps = helps or {}

    def adder(title: str):
        group = parser.add_argument_group(title)

        def add(*flags: str, help: str, **kwargs: Any) -> None:
            if set(flags) & set(exclude):
                return
            help = helps.get(flags[0], help)
            dest = kwargs.get("dest") or flags[0].lstrip("-").replace("-", "_")
            default = defaults.get(dest)
            if default not in (dataclasses.MISSING, None) and kwargs.get("action") is None:
                help = f"{help} (default: {default})"
            group.add_argument(*flags, help=help, default=argparse.SUPPRESS, **kwargs)

        return add

    add = adder("what to train")
    add("--config", help="YAML or JSON file of settings (keys as below, e.g. img_size: [448, 224]); flags override it")
    add("--model", help="timm/hubclf architecture (hubclf_alexnet), 'hf-hub:user/repo' or a saved model directory")
    add(
        "--data",
        help="imagefolder directory, Hub dataset id (user/name or user/name@revision), a labels .csv of path,label "
        "rows, or a datasets.save_to_disk directory",
    )
    add("--output-dir", help="where checkpoints, metrics.jsonl and the best/ and final/ models go")
    add("--img-size", **IMG_SIZE_FLAG, help="input size HEIGHT WIDTH, e.g. 448 224, or one SIZE for a square")
    add("--num-classes", type=int, help="expected number of classes; an error if the data disagrees")
    add("--no-pretrained", dest="pretrained", action="store_false", help="start from random weights")
    add("--weights", help="local pretrained weights file (.safetensors/.pth) instead of downloading them")

    add = adder("data")
    add("--image-column", help="image column (default: the dataset's only Image feature)")
    add("--label-column", help="label column (default: the dataset's only ClassLabel feature, or a CSV's label/class)")
    add("--labels", help="CSV of path,label rows for the images in the --data folder (paths relative to that folder)")
    add("--path-column", help="the labels CSV's path column (default: path/file/filename/image/image_path...)")
    add(
        "--streaming",
        action="store_true",
        help="read a Hub dataset shard by shard instead of downloading it first (WebDataset .tar and parquet shards, "
        "wds:PATH or parquet:PATH, always stream)",
    )
    add("--shuffle-buffer", type=int, help="streamed data: samples shuffled together in each block")
    add(
        "--decode-device",
        choices=DECODE_DEVICES,
        help="where JPEGs are decoded and resized: auto = on the GPU when this machine's CPU decodes slower than the "
        "model trains (measured at the start, printed and recorded), else the CPU",
    )
    add("--train-split", help="split to train on")
    add("--eval-split", help="split to evaluate on (default: validation/valid/val/test if present)")
    add("--val-split", type=float, help="fraction of the train split held out, stratified, when there is no eval split")
    add(
        "--crop-pct",
        type=float,
        help="eval transform: resize to input size / crop_pct, then centre-crop; 1.0 keeps the whole image "
        "(default: the model's, 0.875 for hubclf models). Saved with the model",
    )
    add("--on-bad-image", choices=BAD_IMAGE_POLICIES, help="skip (count and list) unreadable images, or stop")
    add(
        "--num-workers",
        help="DataLoader worker processes per training process; auto: the cores left after one per training "
        "process, 1 to 8",
    )
    add(
        "--cache-images",
        choices=IMAGE_CACHE_MODES,
        help="auto: images that every epoch sees the same (validation; train with no augmentation) are decoded and "
        "resized once and kept in shared memory, when they fit in a quarter of RAM",
    )

    add = adder("transfer learning")
    add("--freeze", help="'none' (fine-tune all), 'backbone' (train only the classifier) or a module, e.g. features.5")
    add("--unfreeze-after", type=int, help="train with --freeze for N epochs, then unfreeze everything")
    add(
        "--backbone-lr-scale",
        type=float,
        help="backbone LR = lr x this, whenever the backbone trains (default: 0.1 when pretrained, 1 otherwise)",
    )
    add(
        "--cache-features",
        choices=CACHE_MODES,
        help="reuse frozen-backbone features across epochs: disk = shards read in place (auto), memory = loaded whole",
    )
    add("--feature-cache-dir", help="where cached features are stored (default: OUTPUT_DIR/feature_cache)")
    add(
        "--feature-dtype",
        choices=FEATURE_DTYPES,
        help="how cached features are stored: auto = bfloat16 under bf16 autocast (exact), else float16 where every "
        "value fits it (half the disk, relative error <= 2^-11), else float32",
    )

    add = adder("strategy")
    add(
        "--strategy",
        choices=STRATEGIES,
        help="head = --freeze backbone; finetune = --freeze none; staged = --freeze backbone --unfreeze-after "
        "max(1, epochs//4); auto = fit the head on cached features (at lr x 1, 3, 10), probe 1 epoch of "
        "fine-tuning against 1 more head epoch, keep fine-tuning only if it is significantly better on the validation "
        "images (McNemar test), else keep the head "
        "(default: none, --freeze decides)",
    )

    add = adder("optimisation")
    add("--epochs", type=int, help="number of epochs")
    add("--batch-size", type=int, help="images per process per step")
    add("--lr", type=float, help="peak learning rate of the classifier")
    add("--opt", help="timm.optim optimizer name")
    add("--weight-decay", type=float, help="weight decay (not applied to biases and norm layers)")
    add("--sched", help="timm.scheduler schedule")
    add("--warmup-epochs", type=int, help="linear warm-up epochs")
    add("--min-lr", type=float, help="learning rate at the end of the schedule")
    add("--grad-accum-steps", type=int, help="accumulate gradients over this many steps")
    add("--clip-grad", type=float, help="clip the gradient norm to this value")
    add("--seed", type=int, help="random seed (data order, augmentation, init)")
    add(
        "--mixed-precision",
        choices=MIXED_PRECISIONS,
        help="auto: bf16 on a CPU only where it measures faster than fp32 (AVX-512 BF16/AMX), else fp32; on GPUs "
        "Accelerate's setting. A value given here always wins",
    )
    add(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        help="channels-last (NHWC) memory format for the model (default: on for CPU training, where oneDNN's "
        "convolutions are faster in it, off on GPUs)",
    )
    add("--compile", action="store_true", help="torch.compile the model (compiling takes a while; measure first)")
    add(
        "--max-nonfinite-steps",
        type=int,
        help="stop the run after this many optimizer steps in a row with a NaN/inf loss or gradient (each skipped)",
    )

    add = adder("recipes (default: chosen from the data and logged; see docs/recipes.md)")
    add("--augment", choices=AUGMENT_CHOICES, help="augmentation preset: none, light (small data), default, strong")
    add("--no-augment", dest="augment", action="store_const", const="none", help="same as --augment none")
    add("--hflip", type=float, help="horizontal flip probability (0 for digits and text)")
    add("--vflip", type=float, help="vertical flip probability")
    add("--color-jitter", type=float, help="colour jitter strength (brightness, contrast, saturation)")
    add("--no-color-jitter", dest="color_jitter", action="store_const", const=0.0, help="same as --color-jitter 0")
    add("--crop-scale", nargs=2, type=float, metavar=("MIN", "MAX"), help="random-resized-crop area fractions")
    add("--aa", help="timm auto-augment policy, e.g. rand-m9-mstd0.5 (RandAugment), augmix-m5-w3, original")
    add("--reprob", type=float, help="random-erasing probability")
    add("--smoothing", type=float, help="label smoothing (default: 0.1)")
    add("--mixup", type=float, help="mixup alpha; 0 turns it off")
    add("--cutmix", type=float, help="cutmix alpha; 0 turns it off")
    add("--class-weights", choices=CLASS_WEIGHT_CHOICES, help="weight the loss by inverse class frequency "
        "(auto: when the largest class has >= 1.5x the images of the smallest)")
    add("--balanced-sampler", action="store_true", help="draw each class equally often (with replacement)")
    add("--patience", type=int, help="stop after N epochs without a better val top-1 (best/ keeps the best)")
    add("--model-ema", action="store_true", help="keep an EMA of the weights; evaluate and save it as the model")
    add("--model-ema-decay", type=float, help="EMA decay (warmed up over the first steps)")

    add = adder("checkpoints, logging, publishing")
    add("--save-every-steps", type=int, help="also checkpoint every N optimizer steps")
    add("--keep-checkpoints", type=int, help="keep the last K checkpoints")
    add("--resume", help="'latest' or a checkpoint directory to continue from")
    add("--log-with", nargs="+", help="Accelerate trackers, e.g. tensorboard")
    add("--push-to-hub", metavar="REPO_ID", help="push the best model to this Hub repo at the end")
    add("--private", dest="hub_private", action="store_true", help="create the Hub repo as private")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Merge ``--config FILE`` (if any) with the flags that were actually given; flags win."""
    given = {key: value for key, value in vars(args).items() if key not in ("config", "func", "command")}
    config_file = getattr(args, "config", None)
    if config_file:
        return TrainConfig.from_file(config_file, **given)
    return TrainConfig.from_dict(given, source="the command line (or pass --config)")
