"""Check someone else's model folder before anything is built from it: ``config.json`` and the safetensors header.

A config.json from a Hub repo is untrusted input. Its sizes reach the allocator (``img_size`` [100000, 100000] got
``hubclf predict`` OOM-killed, ``num_classes`` 10^13 reaches ``torch.empty``), its strings reach the terminal, and
its ``model_args`` go to the model constructor. Everything here runs on a bounded read of the two files, before
``timm.create_model`` or ``safetensors.torch.load_file`` allocate anything; every problem is a ``ConfigError``
(a ``ValueError``) naming the file and the field.

    config = check_model_files(Path("out/best/config.json"), Path("out/best/model.safetensors"), "out/best")
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import timm
import torch.nn as nn
from timm.models import PretrainedCfg

from hubclf.models._base import ConvClassifier, architecture_class, input_size_problem
from hubclf.text import is_printable, listing, printable, short, shorts

__all__ = [
    "ConfigError",
    "check_model_cost",
    "max_param_bytes",
    "check_model_files",
    "read_config_file",
    "safetensors_header_shapes",
    "validate_config",
    "label_name_problems",
]

MAX_CONFIG_BYTES = 1 << 20  # 1 MiB: a hubclf config is a few KB, 100,000 label names fit
MAX_JSON_DEPTH = 32  # hubclf writes 4 levels (config → hubclf → epoch_metrics → row)
MAX_HEADER_BYTES = 16 << 20  # safetensors header (JSON); ~100 bytes per tensor
MAX_SIDE = 8192  # pixels per side of any input size, and of the resize before the crop
MAX_PIXELS = 4096 * 4096  # H × W
MAX_CHANNELS = 64
MAX_CLASSES = 100_000
MAX_LABEL_CHARS = 256
MAX_PIXEL_STAT = 1000  # |mean|, |std|: timm's are on the 0..1 scale, a few models' on 0..255
MAX_NAME_CHARS = 256  # architecture and other identifier-like strings
# The most parameter (and buffer) bytes a model built from someone else's folder may take: 2 GiB, 536 million
# float32 values, more than ViT-L (304M) or ConvNeXt-XL (350M). Checked on the meta device, before any memory is
# allocated. HUBCLF_MAX_PARAM_BYTES (or from_pretrained's max_param_bytes) raises it for a bigger model you trust.
MAX_PARAM_BYTES = 2 << 30
PARAM_BYTES_ENV = "HUBCLF_MAX_PARAM_BYTES"
MAX_LISTED = 10  # errors list this many tensors, then a count
# timm's interpolation names (timm.data.transforms.str_to_interp_mode), its eval crop modes, and the pools
# each head takes: hubclf's classic head pools to a fixed grid, its slim head is timm's ClassifierHead ("" = no
# pooling); other timm models also have fast pools (timm.layers.SelectAdaptivePool2d) and ViT-style token/map pools.
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
CROP_MODES = ("center", "squash", "border")
POOLS_CLASSIC = ("avg", "max")
POOLS_SLIM = ("", "avg", "max", "avgmax", "catavgmax")
POOLS_TIMM = (*POOLS_SLIM, "fast", "fastavg", "fastmax", "fastavgmax", "fastcatavgmax", "token", "map")
# model_args a config may pass to a model's constructor, if its class takes them: only settings that keep the
# saved weights' layout. Architecture switches (head_type, layers, depths...) come from the architecture name.
CONFIG_MODEL_ARGS = ("img_size", "in_chans", "global_pool", "drop_rate")
# safetensors dtypes and their sizes in bytes.
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
PRETRAINED_CFG_FIELDS = {f.name for f in dataclasses.fields(PretrainedCfg)}
# `auto_map` sends transformers (with trust_remote_code=True) to the modeling file hubclf writes next to a hubclf
# architecture (hubclf.remote_code). hubclf never runs it, and reads `auto_map` as data only: it may name classes of
# the repo's own modeling_hubclf.py for these auto classes, nothing else (no other file, no "owner/repo--" code).
AUTO_MAP_CLASSES = ("AutoModel", "AutoModelForImageClassification")
AUTO_MAP_TARGET = re.compile(r"modeling_hubclf\.[A-Za-z_][A-Za-z0-9_]{0,99}")
TEXT_FIELDS = ("url", "file", "hf_hub_id", "hf_hub_filename", "source", "architecture", "tag", "first_conv",
               "classifier", "license", "description", "origin_url", "paper_name")  # fmt: skip


class ConfigError(ValueError):
    """A model folder that must not be loaded: the message names the file and every offending field."""


# ---- reading, bounded --------------------------------------------------------------------------------------------
def read_config_file(path: str | os.PathLike, *, name: str | None = None) -> dict[str, Any]:
    """Parse ``config.json`` with bounds: at most 1 MiB, UTF-8, nested at most 32 deep, no repeated keys.

    ``name`` is how errors refer to the file (default: the path).

        config = read_config_file("out/best/config.json")
    """
    name = name or str(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{name} is {size:,} bytes; a config.json may have at most {MAX_CONFIG_BYTES:,}")
        data = f.read(MAX_CONFIG_BYTES + 1)  # bounded even if the file grows while being read
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{name} is over {MAX_CONFIG_BYTES:,} bytes")
    config = _parse_json(data, name)
    if not isinstance(config, dict):
        raise ConfigError(f"{name} must hold a JSON object, got {type(config).__name__}")
    return config


def safetensors_header_shapes(path: str | os.PathLike, *, name: str | None = None) -> dict[str, tuple[int, ...]]:
    """The tensor shapes a ``.safetensors`` file declares, read from its header without loading any tensor.

    The header must describe the file exactly (as the safetensors loader requires): at most 16 MiB, each tensor's
    byte range matching its dtype and shape, ranges back to back and ending where the file ends.

        safetensors_header_shapes("out/best/model.safetensors")["head.fc.weight"]   # (3, 256)
    """
    name = name or str(path)
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ConfigError(f"{name} is {file_size} bytes, too short for a safetensors header")
        header_size = int.from_bytes(prefix, "little")
        if header_size > MAX_HEADER_BYTES:
            raise ConfigError(f"{name} claims a {header_size:,}-byte header; at most {MAX_HEADER_BYTES:,} is accepted")
        if 8 + header_size > file_size:
            raise ConfigError(
                f"{name} is truncated: its header claims {header_size:,} bytes, the file has {file_size - 8:,} after "
                f"the length prefix"
            )
        header = _parse_json(f.read(header_size), f"{name} header")
    if not isinstance(header, dict):
        raise ConfigError(f"{name} header must be a JSON object")
    data_size = file_size - 8 - header_size
    shapes: dict[str, tuple[int, ...]] = {}
    ranges = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        where = f"{name} tensor {key!r}"
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise ConfigError(f"{where} must have exactly dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPE_BYTES:
            raise ConfigError(f"{where} has dtype {dtype!r}; expected one of {sorted(DTYPE_BYTES)}")
        if not (isinstance(shape, list) and all(_is_int(s) and s >= 0 for s in shape)):
            raise ConfigError(f"{where} shape must be a list of non-negative integers, got {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise ConfigError(f"{where} data_offsets must be [begin, end], got {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise ConfigError(f"{where} data_offsets {offsets} lie outside the {data_size:,} data bytes of the file")
        if end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise ConfigError(f"{where} has {end - begin:,} bytes, but {dtype} {shape} needs a different number")
        shapes[key] = tuple(shape)
        ranges.append((begin, end))
    position = 0
    for begin, end in sorted(ranges):
        if begin != position:
            raise ConfigError(f"{name} header: tensor byte ranges overlap or leave gaps at byte {position:,}")
        position = end
    if position != data_size:
        raise ConfigError(f"{name} header covers {position:,} of the file's {data_size:,} data bytes")
    return shapes


def _parse_json(data: bytes, name: str) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{name} is not UTF-8 text (byte {e.start}: {data[e.start : e.start + 1]!r})") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_repeated_keys)
    except RecursionError:
        raise ConfigError(f"{name} is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except _RepeatedKeyError as e:
        raise ConfigError(f"{name} repeats the key {e.args[0]!r} in one object") from None
    except ValueError as e:  # json.JSONDecodeError, or an integer with thousands of digits
        raise ConfigError(f"{name} is not valid JSON: {e}") from None
    _check_depth(value, name)
    return value


class _RepeatedKeyError(ValueError):
    pass


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of repeated keys, other readers the first: one file, two meanings. Refuse it.
    result = {}
    for key, value in pairs:
        if key in result:
            raise _RepeatedKeyError(key)
        result[key] = value
    return result


def _check_depth(value: Any, name: str) -> None:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ConfigError(f"{name} is nested deeper than {MAX_JSON_DEPTH} levels")
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children)


# ---- validation ----------------------------------------------------------------------------------------------
def check_model_files(config_path: Path, weights_path: Path | None, source: str) -> dict[str, Any]:
    """Read and validate ``config_path`` and, when given, check it against ``weights_path``'s header.

    ``source`` (a folder or Hub repo id) names the files in errors, e.g. ``me/flowers/config.json``.

        config = check_model_files(folder / "config.json", folder / "model.safetensors", "me/flowers")
    """
    config = read_config_file(config_path, name=f"{source}/{config_path.name}")
    shapes = None
    if weights_path is not None:
        shapes = safetensors_header_shapes(weights_path, name=f"{source}/{weights_path.name}")
    return validate_config(config, f"{source}/{config_path.name}", tensor_shapes=shapes)


def validate_config(
    config: dict[str, Any], source: str, *, tensor_shapes: dict[str, tuple[int, ...]] | None = None
) -> dict[str, Any]:
    """Check every field hubclf or timm reads from a config (types, ranges, sizes) and return ``config``.

    ``tensor_shapes`` (from ``safetensors_header_shapes``) adds the checks against the weights: the classifier has
    ``num_classes`` rows, the first conv takes ``in_chans`` channels. Raises ``ConfigError`` listing every problem.

        validate_config(json.loads(text), "me/flowers/config.json", tensor_shapes=shapes)
    """
    problems: list[str] = []
    architecture = config.get("architecture")
    if not isinstance(architecture, str) or not architecture or len(architecture) > MAX_NAME_CHARS:
        problems.append("'architecture' (a timm model name) is missing")
        architecture = ""
    model_class = architecture_class(architecture)
    num_classes = config.get("num_classes")
    if not _is_int(num_classes) or not 0 <= num_classes <= MAX_CLASSES:
        problems.append(f"num_classes must be an integer in 0..{MAX_CLASSES:,}, got {short(num_classes)}")
        num_classes = None
    if "num_features" in config and not (_is_int(config["num_features"]) and 0 <= config["num_features"] <= 1 << 20):
        problems.append(f"num_features must be a non-negative integer, got {short(config['num_features'])}")
    pools = _pools(architecture, model_class)
    if "global_pool" in config and config["global_pool"] not in pools:
        problems.append(f"global_pool must be one of {pools}, got {short(config['global_pool'])}")

    pretrained_cfg = config.get("pretrained_cfg")
    input_sizes: list[tuple[str, Any]] = []
    crop_pct = 1.0
    if not isinstance(pretrained_cfg, dict):
        problems.append("'pretrained_cfg' (timm's preprocessing config) is missing")
        pretrained_cfg = {}
    else:
        problems += _pretrained_cfg_problems(pretrained_cfg)
        input_size = pretrained_cfg.get("input_size")
        if _is_size(input_size, 3):
            input_sizes.append(("pretrained_cfg.input_size", input_size[1:]))
        if _is_number(pretrained_cfg.get("crop_pct")) and 0 < pretrained_cfg["crop_pct"] <= 1:
            crop_pct = pretrained_cfg["crop_pct"]

    model_args = config.get("model_args", {})
    in_chans = None
    if not isinstance(model_args, dict):
        problems.append("model_args must be an object")
        model_args = {}
    else:
        model_args_problems, in_chans = _model_args_problems(model_args, model_class, pools)
        problems += model_args_problems
        if "img_size" in model_args and not model_args_problems:
            size = model_args["img_size"]
            input_sizes.append(("model_args.img_size", [size, size] if _is_int(size) else size))
    for field, (height, width) in input_sizes:
        problems += _size_problems(field, height, width, crop_pct, model_class)
    channels = model_args.get("in_chans") if _is_int(model_args.get("in_chans")) else None
    if channels is None and _is_size(pretrained_cfg.get("input_size"), 3) and in_chans is not None:
        if pretrained_cfg["input_size"][0] != in_chans:
            problems.append(
                f"pretrained_cfg.input_size has {pretrained_cfg['input_size'][0]} channels, but the model is built "
                f"with in_chans={in_chans} (set model_args.in_chans)"
            )

    for key in ("label_names", "label_descriptions"):
        if key in pretrained_cfg:
            problems.append(f"pretrained_cfg.{key} is not read; {key} belongs at the top level")
    label_names = config.get("label_names")
    if label_names is not None and num_classes is not None:
        problems += [f"label_names: {p}" for p in label_name_problems(label_names, num_classes)]
    problems += _label_descriptions_problems(config.get("label_descriptions"))
    problems += _hubclf_block_problems(config.get("hubclf", {}))
    problems += _strategy_problems(config.get("strategy"))
    if "auto_map" in config:
        problems += _auto_map_problems(config["auto_map"], architecture)

    if not problems and tensor_shapes is not None and timm.is_model(architecture):
        problems += _shape_problems(tensor_shapes, architecture, num_classes, in_chans)
    if problems:
        raise ConfigError(f"{source} is not a valid hubclf config: " + "; ".join(problems))
    return config


def label_name_problems(label_names: Any, num_classes: int) -> list[str]:
    """What is wrong with ``label_names`` for a ``num_classes``-class model (empty list: nothing).

    Names are unique, non-blank strings of at most 256 characters without control characters (Unicode category
    C*, line/paragraph separators), one per class.

        label_name_problems(["cat", "cat"], 2)   # ["must be unique, repeated: ['cat']"]
    """
    if not isinstance(label_names, (list, tuple)):
        return [f"must be a list of strings, got {type(label_names).__name__}"]
    problems = []
    if len(label_names) != num_classes:
        problems.append(f"{len(label_names)} label_names for a model with num_classes={num_classes}")
    not_strings = [name for name in label_names if not isinstance(name, str)]
    if not_strings:
        return [*problems, f"must be strings, got {shorts(not_strings[:5])}"]
    blank = [name for name in label_names if not name.strip()]
    if blank:
        problems.append(f"must be non-empty strings, got {shorts(blank[:5])}")
    too_long = [f"{name[:20]!r}... ({len(name)} characters)" for name in label_names if len(name) > MAX_LABEL_CHARS]
    if too_long:
        problems.append(f"must have at most {MAX_LABEL_CHARS} characters: {too_long[:3]}")
    unprintable = [name for name in label_names if not is_printable(name)]
    if unprintable:
        problems.append(f"must not hold control characters or line breaks: {shorts(unprintable[:5])}")
    seen: set[str] = set()
    repeated = sorted({name for name in label_names if name in seen or seen.add(name)})
    if repeated:
        problems.append(f"must be unique, repeated: {shorts(repeated[:10])}")
    return problems


# ---- field checks ---------------------------------------------------------------------------------------------
def _pretrained_cfg_problems(cfg: dict[str, Any]) -> list[str]:
    problems = []
    if not _is_size(cfg.get("input_size"), 3):
        problems.append(f"pretrained_cfg.input_size must be [C, H, W], got {short(cfg.get('input_size'))}")
    unknown = sorted(set(cfg) - PRETRAINED_CFG_FIELDS)
    if unknown:
        problems.append(f"pretrained_cfg has fields timm does not know: {shorts(unknown[:10])}")
    for field in ("min_input_size", "test_input_size"):
        if cfg.get(field) is not None and not _is_size(cfg[field], 3):
            problems.append(f"pretrained_cfg.{field} must be [C, H, W], got {short(cfg[field])}")
    for field in ("pool_size", "test_pool_size"):
        if cfg.get(field) is not None and not _is_size(cfg[field], 2):
            problems.append(f"pretrained_cfg.{field} must be [H, W], got {short(cfg[field])}")
    for field in ("input_size", "min_input_size", "test_input_size"):
        size = cfg.get(field)
        if _is_size(size, 3) and not 1 <= size[0] <= MAX_CHANNELS:
            problems.append(f"pretrained_cfg.{field} has {size[0]} channels; expected 1..{MAX_CHANNELS}")
    if _is_size(cfg.get("test_input_size"), 3):
        test_crop = cfg.get("test_crop_pct")
        test_crop = test_crop if _is_number(test_crop) and 0 < test_crop <= 1 else 1.0  # else reported below
        problems += _size_problems("pretrained_cfg.test_input_size", *cfg["test_input_size"][1:], test_crop, None)
    if cfg.get("interpolation", "bilinear") not in INTERPOLATIONS:
        problems.append(
            f"pretrained_cfg.interpolation must be one of {INTERPOLATIONS}, got {short(cfg['interpolation'])}"
        )
    if cfg.get("crop_mode", "center") not in CROP_MODES:
        problems.append(f"pretrained_cfg.crop_mode must be one of {CROP_MODES}, got {short(cfg['crop_mode'])}")
    for field in ("crop_pct", "test_crop_pct"):
        value = cfg.get(field, 1.0 if field == "crop_pct" else None)
        if value is not None and not (_is_number(value) and 0 < value <= 1):
            problems.append(f"pretrained_cfg.{field} must be a number in (0, 1], got {short(value)}")
    for field in ("mean", "std"):
        value = cfg.get(field, [0.5])
        if not (isinstance(value, list) and 1 <= len(value) <= 4 and all(_is_number(v) for v in value)):
            problems.append(f"pretrained_cfg.{field} must be a list of 1 to 4 finite numbers, got {short(value)}")
        elif not all(abs(v) <= MAX_PIXEL_STAT for v in value):
            problems.append(f"pretrained_cfg.{field} values must lie within ±{MAX_PIXEL_STAT}, got {short(value)}")
        elif field == "std" and not all(v > 0 for v in value):
            problems.append(f"pretrained_cfg.std must be positive (images are divided by it), got {value}")
    mean, std = cfg.get("mean"), cfg.get("std")
    if isinstance(mean, list) and isinstance(std, list) and len(mean) != len(std):
        problems.append(f"pretrained_cfg.mean has {len(mean)} values and std {len(std)}")
    for field in ("num_classes", "label_offset"):
        value = cfg.get(field)
        if value is not None and not (_is_int(value) and 0 <= value <= MAX_CLASSES):
            problems.append(f"pretrained_cfg.{field} must be an integer in 0..{MAX_CLASSES:,}, got {short(value)}")
    for field in ("custom_load", "fixed_input_size"):
        if field in cfg and not isinstance(cfg[field], bool):
            problems.append(f"pretrained_cfg.{field} must be true or false, got {short(cfg[field])}")
    if cfg.get("state_dict") is not None:
        problems.append("pretrained_cfg.state_dict must be null (weights come from model.safetensors)")
    for field in TEXT_FIELDS:
        if cfg.get(field) is not None and not isinstance(cfg[field], str):
            problems.append(f"pretrained_cfg.{field} must be a string, got {short(cfg[field])}")
    for field in ("paper_ids", "notes"):
        value = cfg.get(field)
        if value is not None and not (isinstance(value, str) or _is_list_of(value, str)):
            problems.append(f"pretrained_cfg.{field} must be a string or a list of strings, got {short(value)}")
    return problems


def _model_args_problems(
    model_args: dict[str, Any], model_class: type[nn.Module] | None, pools: tuple[str, ...]
) -> tuple[list[str], int | None]:
    """Problems, and the in_chans the model will be built with (None when unknown)."""
    problems = []
    if "num_classes" in model_args:
        problems.append("model_args must not hold num_classes (it belongs at the top level)")
    accepted = set(CONFIG_MODEL_ARGS)
    defaults: dict[str, Any] = {}
    if model_class is not None:
        parameters = inspect.signature(model_class).parameters
        accepted = {name for name in CONFIG_MODEL_ARGS if name in parameters}
        if issubclass(model_class, ConvClassifier):
            accepted.add("img_size")  # taken by hubclf's builder, which sets the input size from it
        defaults = {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty}
    unknown = sorted(set(model_args) - accepted - {"num_classes"})
    if unknown:
        problems.append(f"model_args {shorts(unknown[:10])} are not accepted (allowed: {sorted(accepted)})")
    if "img_size" in model_args:
        size = model_args["img_size"]
        if not (_is_int(size) and size > 0 or _is_size(size, 2)):
            problems.append(f"model_args.img_size must be an integer or [H, W], got {short(size)}")
    in_chans = model_args.get("in_chans", defaults.get("in_chans"))
    if "in_chans" in model_args and not (_is_int(in_chans) and 1 <= in_chans <= MAX_CHANNELS):
        problems.append(f"model_args.in_chans must be an integer in 1..{MAX_CHANNELS}, got {short(in_chans)}")
        in_chans = None
    if "global_pool" in model_args and model_args["global_pool"] not in pools:
        problems.append(f"model_args.global_pool must be one of {pools}, got {short(model_args['global_pool'])}")
    if "drop_rate" in model_args and not (_is_number(model_args["drop_rate"]) and 0 <= model_args["drop_rate"] < 1):
        problems.append(f"model_args.drop_rate must be a number in [0, 1), got {short(model_args['drop_rate'])}")
    return problems, in_chans if _is_int(in_chans) else None


# The ``hubclf`` block (what the model card shows) and the types its renderer expects of each field; other keys are
# kept and not read. A wrong type here was an "internal error" on push instead of a message.
HUBCLF_BLOCK_TYPES: dict[str, tuple[type, ...]] = {
    "version": (str,), "dataset": (str,), "base_model": (str,), "freeze": (str,), "trainable_params": (int,),
    "total_params": (int,), "hyperparameters": (dict,), "eval_results": (dict,), "epoch_metrics": (list,),
    "images": (list,), "images_skipped": (str,),
}  # fmt: skip


def _hubclf_block_problems(block: Any) -> list[str]:
    """The ``hubclf`` block's fields, typed as ``HUBCLF_BLOCK_TYPES`` says (``null`` allowed for each)."""
    if not isinstance(block, dict):
        return [f"'hubclf' (the model card metadata) must be an object, got {short(block)}"]
    problems = []
    for key, kinds in HUBCLF_BLOCK_TYPES.items():
        value = block.get(key)
        if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
            expected = {str: "a string", int: "an integer", dict: "an object", list: "a list"}[kinds[0]]
            problems.append(f"hubclf.{key} must be {expected} or null, got {short(value)}")
    for key in ("trainable_params", "total_params"):
        if _is_int(block.get(key)) and block[key] < 0:
            problems.append(f"hubclf.{key} must be at least 0, got {block[key]}")
    results = block.get("eval_results")
    if isinstance(results, dict):
        bad = [k for k, v in results.items() if v is not None and not _is_number(v)]
        if bad:
            problems.append(f"hubclf.eval_results must map names to numbers or null: {shorts(bad[:MAX_LISTED])}")
    rows = block.get("epoch_metrics")
    if isinstance(rows, list) and not all(isinstance(row, dict) for row in rows):
        problems.append("hubclf.epoch_metrics must be a list of objects (one per epoch)")
    images = block.get("images")
    if isinstance(images, list) and not all(isinstance(name, str) for name in images):
        problems.append(f"hubclf.images must be a list of file names, got {short(images)}")
    return problems


def _strategy_problems(section: Any) -> list[str]:
    """The "Why this strategy" card section (``--strategy auto``, ``hubclf compare``): summary, table, reason."""
    if section is None:
        return []
    if not isinstance(section, dict):
        return [f"'strategy' (the card's \"Why this strategy\" section) must be an object, got {short(section)}"]
    problems = [
        f"strategy.{key} must be a string, got {short(section.get(key))}"
        for key in ("summary", "reason")
        if key in section and not isinstance(section[key], str)
    ]
    columns, rows = section.get("columns", []), section.get("rows", [])
    if not _is_list_of(columns, str):
        problems.append(f"strategy.columns must be a list of strings, got {short(columns)}")
    scalars = (str, int, float, type(None))
    if not (isinstance(rows, list) and all(isinstance(row, list) and _is_list_of(row, scalars) for row in rows)):
        problems.append(f"strategy.rows must be a list of rows of numbers and strings, got {short(rows)}")
    return problems


def _auto_map_problems(auto_map: Any, architecture: str) -> list[str]:
    if not architecture.startswith("hubclf_"):
        return [f"auto_map is only written for hubclf architectures, not for {short(architecture)}"]
    if not isinstance(auto_map, dict) or not auto_map:
        return [f"auto_map must be an object naming the classes of modeling_hubclf.py, got {short(auto_map)}"]
    unknown = sorted(set(auto_map) - set(AUTO_MAP_CLASSES))
    if unknown:
        return [f"auto_map has entries {shorts(unknown[:5])}; only {list(AUTO_MAP_CLASSES)} are allowed"]
    elsewhere = {k: v for k, v in auto_map.items() if not (isinstance(v, str) and AUTO_MAP_TARGET.fullmatch(v))}
    if elsewhere:
        return [f"auto_map may only name classes of this repo's modeling_hubclf.py, got {short(elsewhere)}"]
    return []


def _size_problems(
    field: str, height: int, width: int, crop_pct: float, model_class: type[nn.Module] | None
) -> list[str]:
    """Bounds on an input size and on the resize before the center crop (size / crop_pct), which is larger."""
    if height < 1 or width < 1:
        return [f"{field} {height}×{width} (H×W) must be at least 1×1"]
    if height > MAX_SIDE or width > MAX_SIDE or height * width > MAX_PIXELS:
        return [f"{field} {height}×{width} (H×W) is too large: at most {MAX_SIDE} per side and {MAX_PIXELS:,} pixels"]
    resized_h, resized_w = math.floor(height / crop_pct), math.floor(width / crop_pct)
    if resized_h > MAX_SIDE or resized_w > MAX_SIDE or resized_h * resized_w > MAX_PIXELS:
        return [
            f"{field} {height}×{width} with crop_pct {crop_pct} resizes images to {resized_h}×{resized_w}: at most "
            f"{MAX_SIDE} per side and {MAX_PIXELS:,} pixels"
        ]
    problem = input_size_problem(model_class, height, width, what=field)
    return [problem] if problem else []


def _label_descriptions_problems(descriptions: Any) -> list[str]:
    if descriptions is None:
        return []
    if not isinstance(descriptions, dict) or not all(isinstance(v, str) for v in descriptions.values()):
        return ["label_descriptions must be an object of strings"]
    unprintable = [k for k, v in descriptions.items() if not (is_printable(k) and is_printable(v))]
    if unprintable:
        return [f"label_descriptions must not hold control characters or line breaks: {shorts(unprintable[:5])}"]
    return []


def _shape_problems(
    shapes: dict[str, tuple[int, ...]], architecture: str, num_classes: int | None, in_chans: int | None
) -> list[str]:
    """The classifier and first conv in the file against the config. Their names come from timm's registry for the
    architecture (its default pretrained cfg), not from the untrusted config."""
    registered = timm.models.get_pretrained_cfg(architecture)
    classifiers = _names(getattr(registered, "classifier", None))
    first_convs = _names(getattr(registered, "first_conv", None))
    problems = []
    for classifier in classifiers[:1]:  # a distilled model's second head has the same rows
        weight = shapes.get(f"{classifier}.weight")
        if num_classes == 0 and weight is not None:
            problems.append(
                f"num_classes is 0, but model.safetensors has a classifier {classifier}.weight {list(weight)}"
            )
        elif num_classes and weight is None:
            problems.append(
                f"num_classes is {num_classes}, but model.safetensors has no classifier {classifier}.weight"
            )
        elif num_classes and (not weight or weight[0] != num_classes):
            problems.append(
                f"num_classes is {num_classes}, but the classifier {classifier}.weight in model.safetensors has shape "
                f"{list(weight)} ({weight[0] if weight else 0} classes)"
            )
    for first_conv in first_convs[:1]:
        weight = shapes.get(f"{first_conv}.weight")
        if weight is None:
            problems.append(f"model.safetensors has no first conv {first_conv}.weight")
        elif in_chans is not None and len(weight) == 4 and weight[1] != in_chans:
            problems.append(
                f"model_args.in_chans is {in_chans} (3 if unset), but the first conv {first_conv}.weight in "
                f"model.safetensors has shape {list(weight)}"
            )
    return problems


# ---- the model it builds, on the meta device -------------------------------------------------------------------
def max_param_bytes(value: int | None = None) -> int:
    """The parameter-bytes budget: ``value``, else ``HUBCLF_MAX_PARAM_BYTES``, else ``MAX_PARAM_BYTES`` (2 GiB).

        max_param_bytes()   # 2147483648
    """
    if value is None:
        text = os.environ.get(PARAM_BYTES_ENV)
        if text is None:
            return MAX_PARAM_BYTES
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise ConfigError(f"{PARAM_BYTES_ENV}={short(text)} is not a number of bytes") from None
    if not _is_int(value) or value < 1:
        raise ConfigError(f"the parameter budget must be a positive number of bytes, got {short(value)}")
    return value


def check_model_cost(
    model: nn.Module,
    tensor_shapes: dict[str, tuple[int, ...]] | None,
    source: str,
    *,
    budget: int | None = None,
) -> None:
    """Check ``model``, built on the meta device from someone's config (no memory allocated), before the real build:
    its parameter and buffer bytes against the budget (``max_param_bytes``), then its state dict against the tensors
    that ``model.safetensors`` declares (``safetensors_header_shapes``): the same names, the same shapes, hence the
    same parameter count. A 116-byte file next to a config naming vit_large is refused here, not after 1 GB and 19 s.

        with torch.device("meta"):
            skeleton = timm.create_model(f"local-dir:{folder}", pretrained=False)
        check_model_cost(skeleton, safetensors_header_shapes(folder / "model.safetensors"), str(folder))
    """
    budget = max_param_bytes(budget)
    state = model.state_dict()
    architecture = model.pretrained_cfg.get("architecture") if hasattr(model, "pretrained_cfg") else None
    name = short(architecture or type(model).__name__)
    count = sum(tensor.numel() for tensor in state.values())
    nbytes = sum(tensor.numel() * tensor.element_size() for tensor in state.values())
    if nbytes > budget:
        raise ConfigError(
            f"{source}/config.json builds {name} with {count:,} parameters and buffers ({nbytes / 2**30:.2f} GiB), "
            f"over the {budget / 2**30:.2f} GiB hubclf builds from someone else's folder; if you trust it, set "
            f"{PARAM_BYTES_ENV} to more bytes"
        )
    if tensor_shapes is None:
        return
    expected = {key: tuple(tensor.shape) for key, tensor in state.items()}
    parts = shape_differences(expected, tensor_shapes)
    if parts:
        found = sum(math.prod(shape) for shape in tensor_shapes.values())
        raise ConfigError(
            f"{source}/model.safetensors does not match {name} as config.json builds it ({found:,} of its "
            f"{count:,} values; nothing was built): " + "; ".join(parts)
        )


def shape_differences(expected: dict[str, tuple[int, ...]], found: dict[str, Any]) -> list[str]:
    """How the tensors of a file (``found``: name -> shape) differ from those of a model (``expected``), one part
    each for the missing, unexpected and mis-shaped names, each list cut at ``MAX_LISTED``; empty when they match.

        shape_differences({"w": (2, 3)}, {"w": (3, 3)})   # ['1 mis-shaped: w: file (3, 3) vs model (2, 3)']
    """
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mis_shaped = [
        f"{key}: file {tuple(found[key])} vs model {tuple(expected[key])}"
        for key in sorted(set(expected) & set(found))
        if tuple(found[key]) != tuple(expected[key])
    ]
    return [
        f"{len(items)} {what}: {listing(items, MAX_LISTED, show=printable)}"
        for what, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped))
        if items
    ]


# ---- small helpers ----------------------------------------------------------------------------------------------
def _pools(architecture: str, model_class: type[nn.Module] | None) -> tuple[str, ...]:
    if model_class is not None and issubclass(model_class, ConvClassifier):
        return POOLS_SLIM if architecture.endswith("_slim") else POOLS_CLASSIC
    return POOLS_TIMM


def _names(value: Any) -> list[str]:
    """timm's ``classifier`` / ``first_conv``: a module name, a tuple of them, or None."""
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, (list, tuple)) else []


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite int or float (a JSON integer of 400 digits is finite, but too large for math.isfinite)."""
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _is_size(value: Any, length: int) -> bool:
    return isinstance(value, list) and len(value) == length and all(_is_int(v) for v in value)


def _is_list_of(value: Any, kind: type) -> bool:
    return isinstance(value, list) and all(isinstance(v, kind) for v in value)
