"""Everything a training run needs to know, as one dataclass that also reads YAML/JSON files (the command line's
flags are defined in ``hubclf.cli.train_flags``).

    config = TrainConfig(model="hubclf_alexnet", data="photos/", output_dir="out", img_size=(448, 224))
    config = TrainConfig.from_file("train.yaml", epochs=3)   # keyword arguments override the file
"""

from __future__ import annotations

import dataclasses
import json
import math
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FREEZE_NONE = "none"
FREEZE_BACKBONE = "backbone"
CACHE_MODES = ("auto", "off", "memory", "disk")
FEATURE_DTYPES = ("auto", "float32", "float16", "bfloat16")  # how cached features are stored (see train.features)
DECODE_DEVICES = ("auto", "cpu", "cuda")  # where JPEGs are decoded and resized (hubclf.data.gpu_decode)
IMAGE_CACHE_MODES = ("auto", "off")
BAD_IMAGE_POLICIES = ("skip", "error")
AUGMENT_CHOICES = ("auto", "none", "light", "default", "strong")  # presets: hubclf.train.recipes.AUGMENT_PRESETS
CLASS_WEIGHT_CHOICES = ("auto", "none", "balanced")
# --strategy: "auto" measures head vs fine-tuning on the data (hubclf.train.strategy); the others name a freeze mode.
STRATEGIES = ("auto", "head", "finetune", "staged")
MIXED_PRECISIONS = ("auto", "no", "fp16", "bf16", "fp8")
MAX_CONFIG_FILE_BYTES = 1 << 20  # a settings file is a few hundred bytes


def square_or_pair(img_size: Any) -> tuple[int, int]:
    """An input size as (height, width) from ``(H, W)``, a list (YAML/JSON), or one int for a square, as timm takes.

        square_or_pair(224) == (224, 224); square_or_pair([448, 224]) == (448, 224)
    """
    values = [img_size] if isinstance(img_size, int) else img_size
    try:
        values = [int(v) for v in values] if not isinstance(values, str) else []
    except (TypeError, ValueError):
        values = []
    if len(values) not in (1, 2) or min(values) < 1:
        raise ValueError(f"img_size must be (height, width) or one size for a square, in pixels; got {img_size!r}")
    return values[0], values[-1]


@dataclass
class TrainConfig:
    """Settings of one ``hubclf train`` run. Field names match the CLI flags (``img_size`` <-> ``--img-size``).

    Example::

        TrainConfig(model="hubclf_vgg11", data="user/flowers", output_dir="out", freeze="backbone", epochs=3)
    """

    # What to train, on what, and where the results go.
    model: str
    data: str
    output_dir: str
    pretrained: bool = True
    weights: str | None = None
    img_size: tuple[int, int] | None = None
    num_classes: int | None = None

    # Data.
    image_column: str | None = None
    label_column: str | None = None
    labels: str | None = None  # a labels CSV for the images in the `data` folder
    path_column: str | None = None  # the labels CSV's path column
    streaming: bool = False  # read a Hub dataset shard by shard (shards on disk always stream)
    shuffle_buffer: int = 512  # a stream's shuffled block, in samples (hubclf.data.streaming)
    decode_device: str = "auto"  # "auto": the GPU when training on one whose nvJPEG works (never from a timing)
    train_split: str = "train"
    eval_split: str | None = None
    val_split: float = 0.1
    crop_pct: float | None = None
    on_bad_image: str = "skip"
    num_workers: int | str = "auto"  # "auto": hardware.default_num_workers() (cores - 1 per process, 1..8)
    cache_images: str = "auto"  # "auto": fixed inputs' decoded pixels stay in memory when they fit (see loop)

    # Transfer learning.
    freeze: str = FREEZE_NONE
    unfreeze_after: int | None = None
    backbone_lr_scale: float | None = None  # None: 0.1 for a pretrained backbone, 1.0 for random init
    cache_features: str = "auto"
    feature_cache_dir: str | None = None
    feature_dtype: str = "auto"  # "auto": bf16 under bf16 autocast, else fp16 where every value fits, else fp32

    # Strategy: None keeps --freeze/--unfreeze-after as given; see staged_unfreeze_epoch for "staged".
    strategy: str | None = None

    # Optimisation.
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    opt: str = "adamw"
    weight_decay: float = 0.01
    sched: str = "cosine"
    warmup_epochs: int = 1
    min_lr: float = 0.0
    grad_accum_steps: int = 1
    clip_grad: float | None = None
    seed: int = 42
    mixed_precision: str | None = "auto"  # "auto": hardware.choose_mixed_precision(); None: Accelerate's setting
    channels_last: bool | None = None  # NHWC weights and activations; None: on a CPU or CUDA, else off (a fixed rule)
    compile: bool = False  # torch.compile the model's forward (opt-in: compile time is minutes on a small CPU)
    max_nonfinite_steps: int = 10

    # Recipes (hubclf.train.recipes). "auto" and None are chosen from the data when the run starts.
    augment: str = "auto"  # a preset of AUGMENT_CHOICES; True/False (older configs) mean "default"/"none"
    hflip: float | None = None
    vflip: float | None = None
    color_jitter: float | None = None
    crop_scale: tuple[float, float] | None = None
    crop_ratio: tuple[float, float] | None = None  # width / height of the random crops; None: centred on the input's
    aa: str | None = None
    reprob: float | None = None
    smoothing: float | None = None
    mixup: float = 0.0
    cutmix: float = 0.0
    class_weights: str = "auto"
    balanced_sampler: bool = False
    drop_rate: float | None = None  # dropout of the classifier head (None: the architecture's default)
    drop_path_rate: float | None = None  # stochastic depth, for architectures that have it
    patience: int | None = None
    model_ema: bool = False
    model_ema_decay: float = 0.9998

    # Checkpoints, logging, publishing.
    save_every_steps: int | None = None
    keep_checkpoints: int = 2
    resume: str | None = None
    log_with: list[str] = field(default_factory=list)
    push_to_hub: str | None = None
    hub_private: bool = False

    def __post_init__(self) -> None:
        self._check_types()
        self._apply_strategy()
        if self.img_size is not None:
            self.img_size = square_or_pair(self.img_size)
        self._check_recipe()
        if isinstance(self.log_with, str):
            self.log_with = [self.log_with]
        if self.freeze.strip() == "":
            raise ValueError("freeze must be 'none', 'backbone' or a module name such as 'features.5'")
        if self.unfreeze_after is not None:
            if self.freeze == FREEZE_NONE:
                raise ValueError("--unfreeze-after needs a frozen start: add --freeze backbone (or a stage name)")
            if not 0 < self.unfreeze_after < self.epochs:
                raise ValueError(
                    f"--unfreeze-after must be between 1 and epochs-1 ({self.epochs - 1}), got {self.unfreeze_after}"
                )
        if self.cache_features not in CACHE_MODES:
            raise ValueError(f"cache_features must be one of {CACHE_MODES}, got {self.cache_features!r}")
        if self.feature_dtype not in FEATURE_DTYPES:
            raise ValueError(f"feature_dtype must be one of {FEATURE_DTYPES}, got {self.feature_dtype!r}")
        if self.decode_device not in DECODE_DEVICES:
            raise ValueError(f"decode_device must be one of {DECODE_DEVICES}, got {self.decode_device!r}")
        if self.shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer is a number of samples, at least 1; got {self.shuffle_buffer}")
        if self.cache_images not in IMAGE_CACHE_MODES:
            raise ValueError(f"cache_images must be one of {IMAGE_CACHE_MODES}, got {self.cache_images!r}")
        # augment "auto" becomes "none" when features are cached on request (hubclf.train.recipes.choose_recipe).
        cacheable = dataclasses.replace(self, augment="none") if self.augment == "auto" else self
        if self.cache_features in ("memory", "disk") and not cacheable.can_cache_features:
            raise ValueError(
                f"--cache-features {self.cache_features} needs a backbone that never changes and fixed inputs: "
                "--freeze backbone, --no-augment, no --mixup/--cutmix and no --unfreeze-after"
            )
        if self.crop_pct is not None and not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct is the centre-cropped fraction of the image, in (0, 1]; got {self.crop_pct}")
        if isinstance(self.num_workers, str) and self.num_workers != "auto":
            try:
                self.num_workers = int(self.num_workers)
            except ValueError:
                raise ValueError(f"num_workers must be 'auto' or a number, got {self.num_workers!r}") from None
        if isinstance(self.num_workers, int) and self.num_workers < 0:
            raise ValueError(f"num_workers must be 'auto' or at least 0, got {self.num_workers}")
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISIONS}, got {self.mixed_precision!r}")
        if self.on_bad_image not in BAD_IMAGE_POLICIES:
            raise ValueError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {self.on_bad_image!r}")
        if not 0.0 < self.val_split < 1.0:
            raise ValueError(f"val_split is a fraction of the train split, between 0 and 1; got {self.val_split}")
        for name in ("epochs", "batch_size", "grad_accum_steps", "keep_checkpoints", "max_nonfinite_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        self._check_optimisation()
        if self.num_classes is not None and self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")
        if self.weights is not None and not self.pretrained:
            raise ValueError("--weights gives pretrained weights; it contradicts --no-pretrained")
        if self.backbone_lr_scale is None:
            # A lower LR protects what a pretrained backbone already knows; random weights have nothing to protect.
            self.backbone_lr_scale = 0.1 if self.pretrained else 1.0
        elif self.backbone_lr_scale <= 0:
            raise ValueError(f"backbone_lr_scale must be positive, got {self.backbone_lr_scale}")

    def _check_types(self) -> None:
        """Every value of the type its field declares, converted the way the command line's flags convert theirs
        (``"1e-3"`` is a number, as ``--lr 1e-3`` is): a YAML ``lr: [1]`` is a one-line error here, not a
        ``TypeError`` deep in a comparison. Older configs' ``augment: true`` stays accepted."""
        hints = typing.get_type_hints(type(self))
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if (item.name == "augment" and isinstance(value, bool)) or item.name == "img_size":
                continue  # augment: older configs' booleans; img_size: square_or_pair reads and checks it
            setattr(self, item.name, _typed(item.name, value, hints[item.name]))

    def _check_optimisation(self) -> None:
        """Values the optimizer, scheduler and clipping would take without complaint but train wrongly with (lr 0,
        a negative clip norm flips the gradients), or reject only after the data is loaded (timm asserts min_lr)."""
        floats = [f.name for f in dataclasses.fields(self) if isinstance(getattr(self, f.name), float)]
        for name in floats:  # NaN passes every comparison below: refuse it, and infinities, first
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        for name in ("min_lr", "weight_decay", "warmup_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0, got {getattr(self, name)}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError(f"clip_grad is the largest gradient norm, above 0 (unset: none); got {self.clip_grad}")
        if self.save_every_steps is not None and self.save_every_steps < 1:
            raise ValueError(
                f"save_every_steps must be at least 1 (leave it unset to checkpoint once per epoch); got "
                f"{self.save_every_steps}"
            )
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be between 0 and 2**32 - 1, got {self.seed}")

    def _apply_strategy(self) -> None:
        """``head``/``finetune``/``staged`` name freeze settings; ``auto`` needs them left at their defaults."""
        if self.strategy is None:
            return
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        implied = {
            "auto": (FREEZE_NONE, None),
            "head": (FREEZE_BACKBONE, None),
            "finetune": (FREEZE_NONE, None),
            "staged": (FREEZE_BACKBONE, staged_unfreeze_epoch(self.epochs)),
        }[self.strategy]
        if self.freeze not in (FREEZE_NONE, implied[0]) or self.unfreeze_after not in (None, implied[1]):
            raise ValueError(
                f"--strategy {self.strategy} sets the freezing itself; drop --freeze/--unfreeze-after, "
                "or drop --strategy"
            )
        if self.strategy == "staged" and self.epochs < 2:
            raise ValueError("--strategy staged needs at least 2 epochs (one frozen, one fine-tuning)")
        self.freeze, self.unfreeze_after = implied

    @property
    def can_cache_features(self) -> bool:
        """Cached features are only exact when the backbone never changes and every epoch sees the same pixels."""
        fixed_inputs = self.augment == "none" and not self.mixup and not self.cutmix
        return self.freeze == FREEZE_BACKBONE and fixed_inputs and self.unfreeze_after is None

    def _check_recipe(self) -> None:
        if isinstance(self.augment, bool):
            self.augment = "default" if self.augment else "none"
        if self.augment not in AUGMENT_CHOICES:
            raise ValueError(f"augment must be one of {AUGMENT_CHOICES}, got {self.augment!r}")
        for name in ("hflip", "vflip", "reprob"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a probability, between 0 and 1; got {value}")
        if self.color_jitter is not None and self.color_jitter < 0:
            raise ValueError(f"color_jitter must be >= 0 (0 turns it off), got {self.color_jitter}")
        if self.crop_scale is not None:
            self.crop_scale = tuple(float(v) for v in self.crop_scale)
            if len(self.crop_scale) != 2 or not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
                raise ValueError(
                    f"crop_scale is MIN MAX image fractions with 0 < MIN <= MAX <= 1, got {self.crop_scale}"
                )
        if self.crop_ratio is not None:
            self.crop_ratio = tuple(float(v) for v in self.crop_ratio)
            if len(self.crop_ratio) != 2 or not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
                raise ValueError(f"crop_ratio is MIN MAX width/height ratios, 0 < MIN <= MAX; got {self.crop_ratio}")
        for name in ("drop_rate", "drop_path_rate"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"{name} is a probability, in [0, 1); got {value}")
        if self.smoothing is not None and not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing}")
        for name in ("mixup", "cutmix"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"{name} is a Beta-distribution alpha, >= 0 (0 turns it off); got {getattr(self, name)}"
                )
        if self.class_weights not in CLASS_WEIGHT_CHOICES:
            raise ValueError(f"class_weights must be one of {CLASS_WEIGHT_CHOICES}, got {self.class_weights!r}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be at least 1 epoch, got {self.patience}")
        if not 0.0 < self.model_ema_decay < 1.0:
            raise ValueError(f"model_ema_decay must be between 0 and 1, got {self.model_ema_decay}")

    @property
    def feature_cache_mode(self) -> str:
        """``"off"``, ``"memory"`` or ``"disk"``, with ``"auto"`` resolved: shards on disk, read in place, so a frozen
        run's memory does not grow with the number of images (``hubclf.train.features``)."""
        if self.cache_features == "auto":
            return "disk" if self.can_cache_features else "off"
        return self.cache_features

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a YAML (``.yaml``/``.yml``) or JSON file of field names; ``overrides`` win over the file."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"config file {path} does not exist")
        if not path.is_file():  # a FIFO would block the read forever, a device could be endless
            raise ValueError(f"config file {path} is not a regular file")
        if path.stat().st_size > MAX_CONFIG_FILE_BYTES:
            raise ValueError(f"config file {path} is {path.stat().st_size:,} bytes; a settings file has at most "
                             f"{MAX_CONFIG_FILE_BYTES:,}")  # fmt: skip
        suffix = path.suffix.lower()
        if suffix not in (".yaml", ".yml", ".json"):
            raise ValueError(f"config file {path} must end in .yaml, .yml or .json")
        try:
            text = path.read_bytes()[: MAX_CONFIG_FILE_BYTES + 1].decode("utf-8")
            if suffix == ".json":
                values = json.loads(text)
            else:
                import yaml

                values = yaml.safe_load(text) or {}  # safe_load: no Python tags, no objects
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ValueError(f"config file {path} is not valid {suffix[1:].upper()}: {' '.join(str(e).split())}") from e
        except Exception as e:  # yaml.YAMLError, without importing yaml here
            if type(e).__module__.split(".")[0] != "yaml":
                raise
            raise ValueError(f"config file {path} is not valid YAML: {' '.join(str(e).split())}") from e
        if not isinstance(values, dict):
            raise ValueError(f"config file {path} must hold a mapping of settings, got {type(values).__name__}")
        keys = [key for key in values if not isinstance(key, str)]
        if keys:
            raise ValueError(f"config file {path}: setting names are text, got {_shown(keys[0])}")
        values = {key.replace("-", "_"): value for key, value in values.items()}
        return cls.from_dict({**values, **overrides}, source=str(path))

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "settings") -> TrainConfig:
        """Build from a mapping, naming unknown or missing keys clearly instead of a bare ``TypeError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown setting(s) in {source}: {', '.join(unknown)}")
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in values
        ]
        if required:
            raise ValueError(f"missing required setting(s) in {source}: {', '.join(required)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values, e.g. for the model card's hyperparameters or ``accelerator.init_trackers``."""
        values = dataclasses.asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _typed(name: str, value: Any, hint: Any) -> Any:
    """``value`` as a ``hint`` (a field's annotation), or a ``ValueError`` naming the setting and what it takes."""
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    options = typing.get_args(hint) if union else (hint,)
    if value is None and type(None) in options:
        return None
    for option in (o for o in options if o is not type(None)):
        converted = _as(value, option)
        if converted is not _NO:
            return converted
    wanted = " or ".join(_describe(o) for o in options if o is not type(None))
    wanted += " (or unset)" if type(None) in options else ""
    raise ValueError(f"{name} must be {wanted}, got {_shown(value)} ({type(value).__name__})")


_NO = object()
# repr() of a YAML value may never end: aliases make a 1 KB file a list of 387 million strings ("billion laughs").
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 4, 4, 60, 60


def _shown(value: Any) -> str:
    """A value for a message, its repr bounded however deep or wide the value is."""
    return _REPR.repr(value)


def _as(value: Any, kind: Any) -> Any:
    """``value`` as ``kind`` if it is one (numbers also from their text, as argparse's type=int/float read them)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is bool:
        return value if isinstance(value, bool) else _NO
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                return _NO
        return _NO
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return _NO
        return _NO
    if kind is str:
        return value if isinstance(value, str) else _NO
    if origin is tuple:  # img_size (an int is a square) and crop_scale: a list or tuple of numbers
        if args == (int, int) and isinstance(value, int) and not isinstance(value, bool):
            return value
        if not isinstance(value, (list, tuple)):
            return _NO
        items = [_as(item, args[0]) for item in value]
        return _NO if any(item is _NO for item in items) else tuple(items)
    if origin is list:  # log_with: one name or a list of names
        if isinstance(value, str):
            return [value]
        if isinstance(value, (list, tuple)) and all(isinstance(item, args[0]) for item in value):
            return list(value)
        return _NO
    return value


def _describe(kind: Any) -> str:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is tuple:
        return f"a list of {len(args)} {'integers' if args[0] is int else 'numbers'}"
    if origin is list:
        return "a list of strings"
    return _KINDS.get(kind, getattr(kind, "__name__", str(kind)))


def staged_unfreeze_epoch(epochs: int) -> int:
    """``--strategy staged``: the head trains alone for the first quarter of the epochs (at least 1), then everything.

        staged_unfreeze_epoch(8)   # 2: epochs 1-2 frozen, 3-8 fine-tune
    """
    return max(1, epochs // 4)
