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


class InputSizeAction(argparse.Action):
    """timm's ``--input-size C H W``: the same as ``--img-size H W`` for the 3 channels of an RGB image."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option=None):
        if values[0] != 3:
            parser.error(f"{option} {' '.join(map(str, values))}: hubclf trains on RGB images, so C must be 3")
        setattr(namespace, self.dest, (values[1], values[2]))


class ValSplitAction(argparse.Action):
    """``--val-split 0.1`` holds out a fraction of the train split; ``--val-split validation`` names the split to
    evaluate on, as in timm's train.py (the same as ``--eval-split validation``)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option=None):
        try:
            namespace.val_split = float(values)
        except ValueError:
            namespace.eval_split = values


class CompileAction(argparse.Action):
    """timm's ``--torchcompile [BACKEND]``: ``--compile`` (torch.compile's default backend, inductor)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option=None):
        if values not in (None, "inductor"):
            parser.error(f"{option} {values}: hubclf compiles with torch.compile's default backend, inductor")
        setattr(namespace, self.dest, True)


class RefusedFlag(argparse.Action):
    """A train flag that this command cannot use: an error that says why, never silently ignored. Hidden from
    ``--help``; takes an optional value so that ``--epochs 9`` is one error, not two."""

    def __init__(self, option_strings: list[str], dest: str, reason: str = "", **kwargs: Any) -> None:
        kwargs.update(nargs="?", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        super().__init__(option_strings, argparse.SUPPRESS, **kwargs)
        self.reason = reason

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option=None):
        command = parser.prog.split()[-1]
        parser.error(f"{option} does not apply to {command}: {self.reason}")


IMG_SIZE_FLAG = {"nargs": "+", "type": int, "metavar": "SIZE", "action": ImgSizeAction}
AMP_DTYPES = {"float16": "fp16", "bfloat16": "bf16"}  # timm's --amp-dtype -> --mixed-precision

# Flags lr-find cannot use, and why: the sweep sets the learning rate itself, runs one process in float32 with plain
# cross-entropy and shuffling, and writes no checkpoints, models or pushes.
_LR_SET_BY_SWEEP = "the sweep sets the learning rate itself, from --start-lr to --end-lr"
_PLAIN_LOSS = "the sweep measures plain cross-entropy on shuffled images"
_NOTHING_SAVED = "lr-find writes the curve and its plot, no checkpoints or models"
_INDEXED = "the sweep loops over data it can index: a folder, a CSV or a downloaded Hub dataset"
LR_FIND_EXCLUDES: dict[str, str] = {
    "--epochs": "the sweep runs --steps batches", "--lr": _LR_SET_BY_SWEEP, "--sched": _LR_SET_BY_SWEEP,
    "--warmup-epochs": _LR_SET_BY_SWEEP, "--min-lr": _LR_SET_BY_SWEEP,
    "--grad-accum-steps": "the sweep takes one optimizer step per batch",
    "--mixed-precision": "the sweep runs in float32 (fp16 without loss scaling would distort it)",
    "--channels-last": "the sweep runs in the default memory format", "--compile": "the sweep runs eagerly",
    "--max-nonfinite-steps": "the sweep stops at the first non-finite loss",
    "--cache-images": "the sweep reads each batch once", "--cache-features": "the sweep reads each batch once",
    "--feature-cache-dir": "the sweep reads each batch once",
    "--strategy": "the sweep trains the first stage that --freeze gives",
    "--unfreeze-after": "the sweep trains the first stage that --freeze gives",
    "--smoothing": f"it is label smoothing in hubclf train, and {_PLAIN_LOSS} (the loss curve's moving average is "
    "--loss-smoothing)",
    "--mixup": _PLAIN_LOSS, "--cutmix": _PLAIN_LOSS, "--class-weights": _PLAIN_LOSS,
    "--balanced-sampler": _PLAIN_LOSS, "--patience": "the sweep runs --steps batches",
    "--model-ema": _NOTHING_SAVED, "--model-ema-decay": _NOTHING_SAVED, "--save-every-steps": _NOTHING_SAVED,
    "--keep-checkpoints": _NOTHING_SAVED, "--resume": _NOTHING_SAVED, "--log-with": _NOTHING_SAVED,
    "--push-to-hub": _NOTHING_SAVED, "--private": _NOTHING_SAVED,
    "--feature-dtype": "the sweep reads each batch once",
    "--streaming": _INDEXED, "--shuffle-buffer": _INDEXED, "--decode-device": "the sweep decodes on the CPU",
    "--verbose": "lr-find prints its own few lines",
}  # fmt: skip
# Flags compare sets per strategy (the freezing), spells its own way (--lr per strategy, --push-best: those it
# defines itself), or cannot use (one compare is several runs: no --resume).
_PER_STRATEGY = "compare sets the freezing of each run from --strategies"
COMPARE_EXCLUDES: dict[str, str] = {
    "--lr": "compare takes --lr per strategy", "--freeze": _PER_STRATEGY, "--unfreeze-after": _PER_STRATEGY,
    "--strategy": _PER_STRATEGY, "--resume": "a compare is several runs: start a new one in a new --output-dir",
    "--push-to-hub": "compare publishes the winner with --push-best REPO_ID",
    "--verbose": "each run's log goes to OUTPUT_DIR/<strategy>.log as it is",
}  # fmt: skip


def add_train_arguments(
    parser: argparse.ArgumentParser, exclude: dict[str, str] | None = None, helps: dict[str, str] | None = None
) -> None:
    """Add ``hubclf train``'s flags; the ``exclude``d ones (flag -> why) are errors that say why, for a command
    that cannot use them (or defines a flag of that name itself, which then wins); ``helps`` rewords a flag's help
    for that command. timm train.py's spellings are aliases (``-b``, ``-j``/``--workers``, ``--input-size``...,
    docs/train.md has the table).

    Defaults stay out of the namespace so that a ``--config`` file can supply them.

        add_train_arguments(compare_parser, exclude=COMPARE_EXCLUDES)
    """
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    helps, exclude = helps or {}, exclude or {}

    def adder(title: str):
        group = parser.add_argument_group(title)

        def add(*flags: str, help: str, key: str | None = None, **kwargs: Any) -> None:
            """``key``: the hubclf flag that ``flags`` spell another way (excluded together with it)."""
            reason = next((exclude[f] for f in (key, *flags) if f in exclude), None)
            if reason is not None:
                free = [f for f in flags if f not in parser._option_string_actions]  # the command's own wins
                if free:
                    group.add_argument(*free, action=RefusedFlag, reason=reason)
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
        "--data-dir",
        help="imagefolder directory, Hub dataset id (user/name or user/name@revision), a labels .csv of path,label "
        "rows, or a datasets.save_to_disk directory",
    )
    add("--output-dir", "--output", help="where checkpoints, metrics.jsonl and the best/ and final/ models go")
    add(
        "--img-size",
        **IMG_SIZE_FLAG,
        help="input size HEIGHT WIDTH, e.g. 448 224, or one SIZE for a square (default: from the data: their aspect "
        "ratio at the model's usual short side, see docs/train.md)",
    )
    add(
        "--input-size",
        key="--img-size",
        nargs=3,
        type=int,
        metavar=("C", "H", "W"),
        dest="img_size",
        action=InputSizeAction,
        help="timm's spelling of --img-size: 3 HEIGHT WIDTH",
    )
    add("--num-classes", type=int, help="expected number of classes; an error if the data disagrees")
    add("--no-pretrained", dest="pretrained", action="store_false", help="start from random weights")
    add(
        "--pretrained",
        key="--no-pretrained",
        dest="pretrained",
        action="store_true",
        help="start from the architecture's pretrained weights (the default; timm's spelling)",
    )
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
        help="where fixed-input JPEGs are decoded and resized: auto = on the GPU when the run trains on one whose "
        "nvJPEG works (printed and recorded), else the CPU",
    )
    add("--train-split", help="split to train on")
    add("--eval-split", help="split to evaluate on (default: validation/valid/val/test if present)")
    add(
        "--val-split",
        action=ValSplitAction,
        metavar="FRACTION_OR_SPLIT",
        help="a fraction of the train split held out, stratified, when there is no eval split (default: 0.1); or, "
        "as in timm, the name of the split to evaluate on (= --eval-split)",
    )
    add(
        "--crop-pct",
        type=float,
        help="eval transform: resize to input size / crop_pct, then centre-crop; 1.0 keeps the whole image "
        "(default: the model's, 0.875 for hubclf models). Saved with the model",
    )
    add("--on-bad-image", choices=BAD_IMAGE_POLICIES, help="skip (count and list) unreadable images, or stop")
    add(
        "--num-workers",
        "-j",
        "--workers",
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
    add("--batch-size", "-b", type=int, help="images per process per step")
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
        help="auto: bf16 where the hardware has it natively (CPU flags avx512_bf16/amx_bf16, CUDA capability 8.0+), "
        "else fp32; under accelerate launch, its setting. Decided from the hardware, never a timing; a value given "
        "here always wins",
    )
    add("--amp", key="--mixed-precision", action="store_true", help="timm's spelling: mixed precision, --amp-dtype's")
    add(
        "--amp-dtype",
        key="--mixed-precision",
        choices=tuple(AMP_DTYPES),
        help="with --amp: float16 (fp16, timm's default) or bfloat16 (bf16)",
    )
    add(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        help="channels-last (NHWC) memory format for the model (default: on for CPU and CUDA training, where "
        "oneDNN's and cuDNN's convolutions are faster in it; off on other devices)",
    )
    add("--compile", action="store_true", help="torch.compile the model (compiling takes a while; measure first)")
    add(
        "--torchcompile",
        key="--compile",
        dest="compile",
        nargs="?",
        metavar="BACKEND",
        action=CompileAction,
        help="timm's spelling of --compile (backend inductor only)",
    )
    add(
        "--max-nonfinite-steps",
        type=int,
        help="stop the run after this many optimizer steps in a row with a NaN/inf loss or gradient (each skipped)",
    )

    add = adder("recipes (default: chosen from the data and logged; see docs/recipes.md)")
    add("--augment", choices=AUGMENT_CHOICES, help="augmentation preset: none, light (small data), default, strong")
    add("--no-augment", "--no-aug", dest="augment", action="store_const", const="none", help="same as --augment none")
    add("--hflip", type=float, help="horizontal flip probability (0 for digits and text)")
    add("--vflip", type=float, help="vertical flip probability")
    add("--color-jitter", type=float, help="colour jitter strength (brightness, contrast, saturation)")
    add("--no-color-jitter", dest="color_jitter", action="store_const", const=0.0, help="same as --color-jitter 0")
    add("--crop-scale", "--scale", nargs=2, type=float, metavar=("MIN", "MAX"), help="random-resized-crop areas")
    add(
        "--crop-ratio",
        "--ratio",
        nargs=2,
        type=float,
        metavar=("MIN", "MAX"),
        help="random-resized-crop aspect ratios, width / height (default: 3/4 to 4/3 of the input's)",
    )
    add("--aa", help="timm auto-augment policy, e.g. rand-m9-mstd0.5 (RandAugment), augmix-m5-w3, original")
    add("--reprob", type=float, help="random-erasing probability")
    add("--smoothing", type=float, help="label smoothing (default: 0.1)")
    add("--mixup", type=float, help="mixup alpha; 0 turns it off")
    add("--cutmix", type=float, help="cutmix alpha; 0 turns it off")
    add("--class-weights", choices=CLASS_WEIGHT_CHOICES, help="weight the loss by inverse class frequency "
        "(auto: when the largest class has >= 1.5x the images of the smallest)")
    add("--balanced-sampler", action="store_true", help="draw each class equally often (with replacement)")
    add("--dropout", "--drop", dest="drop_rate", type=float, help="dropout rate of the classifier head (default: the "
        "architecture's, 0.5 for AlexNet/VGG's classic head, 0 for the others)")
    add("--drop-path", dest="drop_path_rate", type=float, help="stochastic-depth rate, for architectures that have it "
        "(ResNet, ConvNeXt, ViT...)")
    add("--patience", type=int, help="stop after N epochs without a better val top-1 (best/ keeps the best)")
    add("--model-ema", action="store_true", help="keep an EMA of the weights; evaluate and save it as the model")
    add("--model-ema-decay", type=float, help="EMA decay (warmed up over the first steps)")

    add = adder("checkpoints, logging, publishing")
    add("--save-every-steps", type=int, help="also checkpoint every N optimizer steps")
    add("--keep-checkpoints", "--checkpoint-hist", type=int, help="keep the last K checkpoints")
    add("--resume", help="'latest' or a checkpoint directory to continue from")
    add("--log-with", nargs="+", help="Accelerate trackers, e.g. tensorboard")
    add("--push-to-hub", metavar="REPO_ID", help="push the best model to this Hub repo at the end")
    add("--private", dest="hub_private", action="store_true", help="create the Hub repo as private")
    add(
        "--verbose",
        action="store_true",
        help="log lines with time, level, logger and process rank (always so under several processes)",
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Merge ``--config FILE`` (if any) with the flags that were actually given; flags win."""
    given = {key: value for key, value in vars(args).items() if key not in ("config", "func", "command", "verbose")}
    amp, amp_dtype = given.pop("amp", False), given.pop("amp_dtype", None)
    if amp or amp_dtype:  # timm's --amp [--amp-dtype]: a --mixed-precision value
        if amp_dtype and not amp:
            raise ValueError("--amp-dtype chooses the precision of --amp: add --amp")
        precision = AMP_DTYPES[amp_dtype or "float16"]
        if given.get("mixed_precision", precision) != precision:
            spelled = f"--amp --amp-dtype {amp_dtype}" if amp_dtype else "--amp"
            raise ValueError(
                f"{spelled} means --mixed-precision {precision}, but --mixed-precision {given['mixed_precision']} "
                "was given too"
            )
        given["mixed_precision"] = precision
    config_file = getattr(args, "config", None)
    if config_file:
        return TrainConfig.from_file(config_file, **given)
    return TrainConfig.from_dict(given, source="the command line (or pass --config)")
