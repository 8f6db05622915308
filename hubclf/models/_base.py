"""What AlexNet and VGG share: timm's model contract around a ``features`` conv stack, the two head styles,
input checks, torchvision checkpoint remapping, and the builder that ties them to ``build_model_with_cfg``.

Each family file (``alexnet.py``, ``vgg.py``) only describes its own layers and default configs.

No ``from __future__ import annotations`` here: torch.fx copies ``forward``'s annotations into the code of the
graphs it traces, and TorchScript cannot read a string annotation there.
"""

import typing
from collections.abc import Callable
from typing import Any

import torch
import torch.fx
import torch.nn as nn
from timm.layers import ClassifierHead, get_device_dtype, to_2tuple
from timm.models import build_model_with_cfg, is_model, model_entrypoint
from timm.models._features import feature_take_indices
from torch.utils.checkpoint import checkpoint

from hubclf.models.transfer import keep_frozen_batchnorm_in_eval

HEAD_TYPES = ("classic", "slim")
CLASSIFIER = "head.fc"
GRID_POOL_TYPES = ("avg", "max", "")


class GridMlpHead(nn.Module):
    """torchvision's classic head: pool to a fixed grid, flatten, two hidden FC layers, then ``fc``.

    Pooling to a fixed grid (6×6 for AlexNet, 7×7 for VGG) is what lets the network take any input size,
    448×224 included, while the 4096-wide layers keep their ImageNet weights.

    ``pool_type=''`` turns pooling off as in timm's heads: the head then passes the unpooled feature map through
    (as pre-logits, or as the output when there is no classifier). The hidden layers stay, so resetting the pool
    to ``'avg'`` or ``'max'`` brings the full head back.
    """

    def __init__(
        self,
        in_chs: int,
        num_classes: int,
        grid_size: tuple[int, int],
        hidden_size: int = 4096,
        pool_type: str = "avg",
        drop_rate: float = 0.5,
        dropout_first: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.in_chs = in_chs
        self.grid_size = grid_size
        self.num_classes = num_classes
        self.pool_type = _check_grid_pool(pool_type)
        self.dropout_first = dropout_first  # AlexNet drops before each hidden FC, VGG after each activation
        self.global_pool = _grid_pool(self.pool_type, grid_size)
        self.flatten = nn.Flatten(1)
        self.fc1 = nn.Linear(in_chs * grid_size[0] * grid_size[1], hidden_size, **dd)
        self.act1 = nn.ReLU(inplace=True)
        self.drop1 = nn.Dropout(drop_rate)
        self.fc2 = nn.Linear(hidden_size, hidden_size, **dd)
        self.act2 = nn.ReLU(inplace=True)
        self.drop2 = nn.Dropout(drop_rate)
        self.fc = nn.Linear(hidden_size, num_classes, **dd) if num_classes > 0 else nn.Identity()

    @property
    def num_features(self) -> int:
        """Width of the pre-logits: the hidden size, or the feature channels when pooling is off."""
        return self.fc2.out_features if self.pool_type else self.in_chs

    def reset(
        self,
        num_classes: int,
        pool_type: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        dd = get_device_dtype(self.fc2, device=device, dtype=dtype)
        if pool_type is not None:
            self.pool_type = _check_grid_pool(pool_type)
            self.global_pool = _grid_pool(self.pool_type, self.grid_size).train(self.training)
        self.num_classes = num_classes
        hidden = self.fc2.out_features
        fc = nn.Linear(hidden, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.fc = fc.train(self.training)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.pool_type == "":
            if pre_logits or self.num_classes == 0:
                return x
            raise ValueError(
                "global_pool='' leaves the features unpooled, but the classic head's classifier needs them pooled "
                "to its grid: use num_classes=0 for feature maps, or global_pool='avg' or 'max' to classify"
            )
        x = self.flatten(self.global_pool(x))
        if self.dropout_first:
            x = self.act1(self.fc1(self.drop1(x)))
            x = self.act2(self.fc2(self.drop2(x)))
        else:
            x = self.drop1(self.act1(self.fc1(x)))
            x = self.drop2(self.act2(self.fc2(x)))
        return x if pre_logits else self.fc(x)


def _check_grid_pool(pool_type: str) -> str:
    if pool_type not in GRID_POOL_TYPES:
        raise ValueError(
            f"the classic head pools to a fixed grid with 'avg' or 'max' (or '' for no pooling), "
            f"got global_pool={pool_type!r}"
        )
    return pool_type


def _grid_pool(pool_type: str, grid_size: tuple[int, int]) -> nn.Module:
    if pool_type == "":
        return nn.Identity()
    return nn.AdaptiveAvgPool2d(grid_size) if pool_type == "avg" else nn.AdaptiveMaxPool2d(grid_size)


def _feature_ends(feature_info: list[dict[str, Any]]) -> list[int]:
    """Index in ``features`` of each feature tap, from the ``features.N`` module names of ``feature_info``."""
    return [int(info["module"].split(".")[1]) for info in feature_info]


class ConvClassifier(nn.Module):
    """A ``features`` conv stack plus a classic or slim head, honouring timm's model contract.

    Subclasses build ``features`` and ``feature_info`` and set ``min_input_size``; everything else lives here:
    ``forward_features``/``forward_head``, ``forward_intermediates``/``prune_intermediate_layers``,
    ``reset_classifier``, gradient checkpointing, and TorchScript / torch.fx compatibility.
    """

    min_input_size: tuple[int, int] = (1, 1)
    # TorchScript compiles properties; this one only describes the model, scripted code never needs it.
    __jit_unused_properties__ = ["global_pool"]

    def __init__(
        self,
        features: nn.Sequential,
        feature_info: list[dict[str, Any]],
        *,
        num_classes: int,
        in_chans: int,
        head_type: str,
        grid_size: tuple[int, int],
        global_pool: str,
        drop_rate: float,
        dropout_first: bool,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if head_type not in HEAD_TYPES:
            raise ValueError(f"head_type must be one of {HEAD_TYPES}, got {head_type!r}")
        dd = dict(device=device, dtype=dtype)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.head_type = head_type
        self.grad_checkpointing = False
        self.features = features
        self.feature_info = feature_info
        # Every tap ends right after an activation or a max pool, so no stage starts with an in-place ReLU and
        # checkpointing stage by stage never lets a ReLU overwrite the saved stage input it recomputes from.
        self.feature_ends = _feature_ends(feature_info)
        self.num_features = feature_info[-1]["num_chs"]
        if head_type == "classic":
            self.head = GridMlpHead(
                self.num_features,
                num_classes,
                grid_size,
                pool_type=global_pool,
                drop_rate=drop_rate,
                dropout_first=dropout_first,
                **dd,
            )
        else:
            # The seed question's "how many layers should I remove": all of the 4096-wide MLP.
            self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        self.head_hidden_size = self.head.num_features

    @property
    def global_pool(self) -> str:
        return self.head.pool_type if isinstance(self.head, GridMlpHead) else self.head.global_pool.pool_type

    # ---- timm model contract --------------------------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^features\.0", blocks=r"^features\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New classifier with ``num_classes`` outputs (0: none); ``global_pool`` None keeps the pooling,
        ``''`` turns it off so that, without a classifier, the model returns unpooled feature maps."""
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool, **get_device_dtype(self))
        self.head_hidden_size = self.head.num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self._check_eager_input(x)
            if self.grad_checkpointing:
                for stage in self._stages(len(self.feature_ends)):
                    x = checkpoint(stage, x, use_reentrant=False)
                return x
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """``forward_features`` that also returns the feature maps at the ``feature_info`` taps (timm's API).

        ``indices``: None takes every tap, an int the last n, a list those taps (negative from the end).
        ``stop_early`` stops after the last tap asked for; ``norm`` is accepted for the API (there is no norm).

            final, maps = model.forward_intermediates(x, indices=[1, -1])
        """
        if output_fmt != "NCHW":
            raise ValueError("forward_intermediates only returns NCHW feature maps, got output_fmt=" + output_fmt)
        take_indices, max_index = feature_take_indices(len(self.feature_ends), indices)
        intermediates: list[torch.Tensor] = []
        if torch.jit.is_scripting():
            # TorchScript cannot slice an nn.Sequential: walk the layers one by one (never checkpointed).
            feat_idx = 0
            for i, layer in enumerate(self.features):
                if not stop_early or feat_idx <= max_index:
                    x = layer(x)
                    if feat_idx < len(self.feature_ends) and i == self.feature_ends[feat_idx]:
                        if feat_idx in take_indices:
                            intermediates.append(x)
                        feat_idx += 1
        else:
            self._check_eager_input(x)
            num_stages = max_index + 1 if stop_early else len(self.feature_ends)
            for feat_idx, stage in enumerate(self._stages(num_stages)):
                x = checkpoint(stage, x, use_reentrant=False) if self.grad_checkpointing else stage(x)
                if feat_idx in take_indices:
                    intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the layers after the last tap in ``indices`` (and the head, unless ``prune_head=False`` and the
        features still end where the head expects them). Returns the kept tap indices for
        ``forward_intermediates``.

            take = model.prune_intermediate_layers([0, 1]); maps = model.forward_intermediates(x, take)[1]
        """
        take_indices, max_index = feature_take_indices(len(self.feature_ends), indices)
        prune_end = max_index < len(self.feature_ends) - 1
        self.features = self.features[: self.feature_ends[max_index] + 1]
        if prune_end:
            self.num_features = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            # The classic head is sized for the final features' grid; either way the pruned model ends in a
            # pass-through slim head (no pooling, no classifier), so no parameter is left unused.
            self.head = ClassifierHead(
                self.num_features, 0, pool_type="", drop_rate=self.drop_rate, **get_device_dtype(self)
            ).train(self.training)
            self.head_type = "slim"
            self.num_classes = 0
            self.head_hidden_size = self.head.num_features
        return take_indices

    def _stages(self, num_taps: int) -> list[nn.Sequential]:
        """``features`` cut after each of the first ``num_taps`` taps (plus the layers past the last tap when all
        taps are asked for), skipping taps that pruning removed."""
        stages, start = [], 0
        for end in self.feature_ends[:num_taps]:
            if end >= len(self.features):
                break
            stages.append(self.features[start : end + 1])
            start = end + 1
        if num_taps == len(self.feature_ends) and start < len(self.features):
            stages.append(self.features[start:])
        return stages

    # ---- transfer learning ------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "ConvClassifier":
        """Like ``nn.Module.train``, but BatchNorm layers whose parameters are all frozen stay in eval mode,
        so feature extraction never drifts their running statistics."""
        super().train(mode)
        if mode:
            keep_frozen_batchnorm_in_eval(self)
        return self

    # ---- errors a user gets -----------------------------------------------------------------------------------
    def _check_eager_input(self, x: torch.Tensor) -> None:
        # torch.fx proxies and torch.jit.trace sizes cannot drive Python control flow; their graphs skip the checks.
        if not isinstance(x, torch.fx.Proxy) and not torch.jit.is_tracing():
            self.check_input(x)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ``ValueError`` that says what was expected, instead of a shape error deep inside a conv."""
        name = type(self).__name__
        if x.ndim != 4:
            hint = " (a single image? use x.unsqueeze(0))" if x.ndim == 3 else ""
            raise ValueError(f"{name} expects a 4-D batch (N, C, H, W), got shape {tuple(x.shape)}{hint}")
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"{name} expects {self.in_chans} input channels, got {x.shape[1]} (shape {tuple(x.shape)}); "
                f"create the model with in_chans={x.shape[1]} to adapt the first conv"
            )
        problem = input_size_problem(self, x.shape[2], x.shape[3], what="input")
        if problem:
            raise ValueError(problem)


# ---- torchvision checkpoints ----------------------------------------------------------------------------------
def remap_torchvision_state_dict(
    state_dict: dict[str, torch.Tensor], model: nn.Module, renames: dict[str, str]
) -> dict[str, torch.Tensor]:
    """Rename torchvision's ``classifier.N`` keys to hubclf's ``head.*`` keys and check nothing is missing.

    Keys already in hubclf's layout pass through, so one filter serves torchvision ``.pth`` files, converted
    ``model.safetensors`` files and hubclf Hub repos. timm loads non-strictly when it replaces the head, so this
    is where a checkpoint missing backbone tensors is caught instead of silently keeping random weights.
    """
    out = {}
    for key, value in state_dict.items():
        for old, new in renames.items():
            if key.startswith(old + "."):
                key = new + key[len(old) :]
                break
        out[key] = value

    if getattr(model, "head_type", "classic") == "slim":
        # A slim model keeps only the conv features of a classic checkpoint: its fc sees pooled features.
        for key in [k for k in out if k.startswith(("head.fc1.", "head.fc2."))]:
            del out[key]
        fc = model.get_classifier()
        fc_in_features = fc.in_features if isinstance(fc, nn.Linear) else None
        if "head.fc.weight" in out and out["head.fc.weight"].shape[1] != fc_in_features:
            del out["head.fc.weight"], out["head.fc.bias"]

    expected = set(model.state_dict())
    classifier_keys = {f"{CLASSIFIER}.weight", f"{CLASSIFIER}.bias"}
    # Old torchvision BatchNorm checkpoints predate num_batches_tracked; torch fills it in on load.
    missing = sorted(k for k in expected - set(out) - classifier_keys if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(out) - expected - classifier_keys)
    if missing or unexpected:
        raise RuntimeError(
            f"checkpoint does not match {type(model).__name__}: "
            f"missing {len(missing)} tensor(s) {missing[:8]}, unexpected {len(unexpected)} tensor(s) {unexpected[:8]}"
        )
    return out


# ---- building through timm ------------------------------------------------------------------------------------
def build_classifier(
    model_cls: type[ConvClassifier],
    variant: str,
    pretrained: bool,
    *,
    filter_fn: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]],
    default_out_indices: tuple[int, ...],
    **kwargs: Any,
) -> nn.Module:
    """``build_model_with_cfg`` plus hubclf's ``img_size`` kwarg and error messages that name the weights.

    ``img_size`` (int or (H, W)) is not a layer setting (adaptive pooling takes any size); it is written into
    ``pretrained_cfg['input_size']`` so ``timm.data.resolve_data_config`` builds transforms of that size.
    """
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    img_size = kwargs.pop("img_size", None)
    if img_size is not None:
        height, width = _check_img_size(img_size, model_cls)
        # The channel count stays 3: it describes the pretrained weights, which timm adapts to `in_chans`.
        overlay["input_size"] = (3, height, width)
    feature_cfg = dict(flatten_sequential=True, out_indices=kwargs.pop("out_indices", default_out_indices))
    try:
        return build_model_with_cfg(
            model_cls,
            variant,
            pretrained,
            pretrained_cfg_overlay=overlay or None,
            feature_cfg=feature_cfg,
            pretrained_filter_fn=filter_fn,
            **kwargs,
        )
    except Exception as e:
        if not pretrained or isinstance(e, ValueError):
            raise
        source = _describe_weights(variant, kwargs.get("pretrained_cfg"), overlay)
        if isinstance(e, FileNotFoundError):
            raise FileNotFoundError(f"pretrained weights for {variant} not found: {source}") from e
        raise RuntimeError(f"could not load pretrained weights for {variant} from {source}: {e}") from e


def _check_img_size(img_size: Any, model_cls: type[ConvClassifier]) -> tuple[int, int]:
    try:
        height, width = (int(s) for s in to_2tuple(img_size))
    except (TypeError, ValueError):
        raise ValueError(f"img_size must be an int or (H, W), got {img_size!r}") from None
    problem = input_size_problem(model_cls, height, width)
    if problem:
        raise ValueError(problem)
    return height, width


def min_input_size(model: nn.Module | type[nn.Module] | None) -> tuple[int, int] | None:
    """The smallest (H, W) a model or architecture class takes: hubclf's own state it (``min_input_size``: the
    pooling needs a few pixels), a timm model may in its ``pretrained_cfg``; None when neither says.

        min_input_size(AlexNet)   # (63, 63)
    """
    minimum = getattr(model, "min_input_size", None)
    if minimum is None and isinstance(model, nn.Module):
        cfg_minimum = (getattr(model, "pretrained_cfg", None) or {}).get("min_input_size")
        minimum = tuple(cfg_minimum[1:]) if cfg_minimum else None
    return tuple(minimum) if minimum is not None else None


def input_size_problem(
    model: nn.Module | type[nn.Module] | None, height: int, width: int, *, what: str = "img_size", cli: bool = False
) -> str | None:
    """The one input-size rule: what is wrong with ``height`` × ``width`` for ``model`` (an instance or an
    architecture class), or None. ``what`` names the setting; ``cli=True`` spells sizes as the flag takes them.

        input_size_problem(AlexNet, 32, 32)   # "img_size 32×32 (H×W) is below AlexNet's minimum 63×63"
        input_size_problem(AlexNet, 32, 32, what="--img-size", cli=True)   # "--img-size 32 32 is below ... (H W)"
    """
    minimum = min_input_size(model)
    if minimum is None or (height >= minimum[0] and width >= minimum[1]):
        return None
    name = (model if isinstance(model, type) else type(model)).__name__
    if cli:
        return f"{what} {height} {width} is below {name}'s minimum {minimum[0]} {minimum[1]} (H W)"
    return f"{what} {height}×{width} (H×W) is below {name}'s minimum {minimum[0]}×{minimum[1]}"


def architecture_class(architecture: str) -> type[nn.Module] | None:
    """The class a registered timm architecture builds, read from its entrypoint's return annotation; None for a
    name timm does not know or an entrypoint without a usable annotation.

        architecture_class("hubclf_alexnet")   # -> hubclf.models.alexnet.AlexNet
    """
    if not architecture or not is_model(architecture):
        return None
    try:
        model_class = typing.get_type_hints(model_entrypoint(architecture)).get("return")
    except (NameError, TypeError, AttributeError):  # an entrypoint without a resolvable annotation
        return None
    return model_class if isinstance(model_class, type) and issubclass(model_class, nn.Module) else None


def _describe_weights(variant: str, pretrained_cfg: Any, overlay: dict[str, Any]) -> str:
    from timm.models import get_pretrained_cfg

    default = get_pretrained_cfg(variant)
    cfg = default.to_dict() if default else {}
    if pretrained_cfg is not None:
        cfg.update(pretrained_cfg if isinstance(pretrained_cfg, dict) else pretrained_cfg.to_dict())
    cfg.update(overlay)
    for field, label in (("file", "file"), ("hf_hub_id", "hf-hub"), ("url", "url")):
        if cfg.get(field):
            return f"{label} {cfg[field]}"
    return "its pretrained config"
