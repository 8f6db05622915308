"""Export a hubclf model for deployment: ONNX (run by onnxruntime) or TorchScript, checked against PyTorch.

The exported file carries what a deployment needs besides the graph: the label names and the preprocessing
(input size, mean, std, interpolation, crop_pct). ONNX keeps them in the model's ``metadata_props`` (a ``hubclf``
JSON entry plus one readable key each); TorchScript in an extra file ``config.json`` inside the archive.
``read_export_metadata`` reads either back.

The batch axis is free, as in timm's exporter (``dynamic=True`` frees height and width too). Nothing is written
until the exported file reproduces PyTorch's logits (max abs difference ``<= atol``) at the export size for a batch
of 1 and one of 3 and, with ``dynamic=True``, at a second rectangular size: the file is written next to ``out``
under a temporary name and renamed only after that check.

    from hubclf.export import export_model, read_export_metadata
    result = export_model("me/flowers-alexnet", "flowers.onnx", img_size=(448, 224), dynamic=True)
    print(result.max_abs_diff, read_export_metadata("flowers.onnx")["label_names"])
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm.data
import torch
import torch.nn as nn

from hubclf._version import __version__
from hubclf.atomic import make_parent_dirs
from hubclf.models._base import GridMlpHead, input_size_problem, min_input_size
from hubclf.predict import label_names_of, load_model

__all__ = [
    "DEFAULT_ATOL",
    "FORMATS",
    "ExportCheckError",
    "ExportResult",
    "export_model",
    "export_metadata",
    "read_export_metadata",
]

logger = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}  # format -> file suffix (also used to infer the format)
FORMAT_NAMES = {"onnx": "ONNX", "torchscript": "TorchScript"}
DEFAULT_ATOL = 1e-4  # max abs difference of the logits, exported file vs PyTorch eager, for the export to pass
INPUT_NAME, OUTPUT_NAME = "pixel_values", "logits"
METADATA_KEY = "hubclf"  # ONNX metadata_props entry holding the whole metadata as JSON
TORCHSCRIPT_METADATA_FILE = "config.json"  # extra file inside a TorchScript archive
EXTRA_HINT = "pip install 'hubclf[export]'"


class ExportCheckError(RuntimeError):
    """The exported file does not reproduce PyTorch's logits (or its metadata): nothing was written."""


@dataclass
class ExportResult:
    """What ``export_model`` wrote and how closely it matches PyTorch."""

    path: Path
    format: str
    size_bytes: int
    max_abs_diff: float  # the largest of ``diffs``
    diffs: dict[str, float]  # "N×C×H×W" input shape -> max abs difference of the logits at that shape
    metadata: dict[str, Any] = field(repr=False)

    atol: float = DEFAULT_ATOL

    def summary(self) -> str:
        """``wrote m.onnx (ONNX, 228.2 MB); max abs diff vs PyTorch 1.1e-08 (<= 1e-04) at 1×3×448×224, ...``"""
        return (
            f"wrote {self.path} ({FORMAT_NAMES[self.format]}, {self.size_bytes / 1e6:.1f} MB); max abs diff vs "
            f"PyTorch {self.max_abs_diff:.1e} (<= {self.atol:.0e}) at {', '.join(self.diffs)}"
        )


# ---- the export -----------------------------------------------------------------------------------------------
def export_model(
    model: nn.Module | str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: str | None = None,
    img_size: Sequence[int] | None = None,
    dynamic: bool = False,
    atol: float = DEFAULT_ATOL,
    revision: str | None = None,
) -> ExportResult:
    """Export ``model`` (a module or anything ``hubclf.from_pretrained`` takes) to ``out`` and check it.

    ``format`` is ``"onnx"`` or ``"torchscript"`` (default: from ``out``'s suffix, ``.onnx`` or ``.pt``); a folder
    ``out`` gets ``model.onnx`` / ``model.pt``. ``img_size`` (H, W) overrides the model's saved input size. The
    batch size is free; ``dynamic=True`` frees height and width too (ONNX) and checks a second, rectangular size.
    Raises ``ExportCheckError`` (and leaves nothing at ``out``) if the logits differ by more than ``atol``.

        export_model("out/flowers/best", "deploy/flowers.onnx", img_size=(448, 224), dynamic=True)
    """
    out, format = _resolve_output(out, format)
    if not (atol >= 0 and math.isfinite(atol)):
        raise ValueError(f"atol must be a non-negative number, got {atol}")
    if format == "onnx":
        _require_onnx_extra()
    model = _load(model, revision)
    height, width = _export_size(model, img_size)
    metadata = export_metadata(model, (height, width), format=format, dynamic=dynamic)

    # Batches of 1 and 3: a graph with its traced batch size (2) baked in fails both.
    check_shapes = [(1, model.in_chans, height, width), (3, model.in_chans, height, width)]
    if dynamic:
        check_shapes.append((2, model.in_chans, *_second_check_size(height, width, _min_size(model))))
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(shape, generator=generator) for shape in check_shapes]

    make_parent_dirs(out)
    # Same folder as `out`, so the final rename is atomic; same suffix, so tools that look at it are not confused.
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.", suffix=f".tmp{out.suffix}")
    os.close(fd)
    tmp = Path(tmp_name)
    was_training = model.training
    model.eval()
    free_axes = ", dynamic batch/height/width" if dynamic and format == "onnx" else ", dynamic batch"
    logger.info("exporting %s (%d classes) to %s at %d×%d (H×W)%s", metadata["architecture"], model.num_classes,
                FORMAT_NAMES[format], height, width, free_axes)  # fmt: skip
    try:
        with torch.inference_mode():
            expected = [model(x).float() for x in inputs]
        if format == "onnx":
            # Traced at batch 2: torch.export would specialise a batch of 1 into the graph.
            example = inputs[0].repeat(2, 1, 1, 1)
            _write_onnx(model, tmp, example, metadata, dynamic)
            actual = _run_onnx(tmp, inputs, metadata)
        else:
            _write_torchscript(model, tmp, inputs, metadata)
            actual = _run_torchscript(tmp, inputs, metadata)
        diffs = {_shape_name(x): _max_abs_diff(a, e) for x, a, e in zip(inputs, actual, expected, strict=True)}
        failed = [(shape, diff) for shape, diff in diffs.items() if not diff <= atol]  # NaN fails too
        if failed:
            worst_shape, worst = failed[0] if math.isnan(failed[0][1]) else max(failed, key=lambda item: item[1])
            raise ExportCheckError(
                f"the {FORMAT_NAMES[format]} export of {metadata['architecture']} does not match PyTorch: max abs "
                f"diff of the logits {worst:.2e} at {worst_shape} exceeds {atol:.0e}; nothing was written to {out}"
            )
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it owner-only; give it an ordinary file's mode
        os.replace(tmp, out)
    finally:
        model.train(was_training)
        tmp.unlink(missing_ok=True)

    logger.info("checked against PyTorch (tolerance %.0e): %s", atol,
                ", ".join(f"{shape} max abs diff {diff:.1e}" for shape, diff in diffs.items()))  # fmt: skip
    return ExportResult(out, format, out.stat().st_size, max(diffs.values()), diffs, metadata, atol)


def export_metadata(model: nn.Module, img_size: tuple[int, int], *, format: str, dynamic: bool) -> dict[str, Any]:
    """What the exported file carries: labels, preprocessing (timm's data config at ``img_size``), I/O names.

        export_metadata(model, (448, 224), format="onnx", dynamic=True)["mean"]   # [0.485, 0.456, 0.406]
    """
    cfg = model.pretrained_cfg
    input_size = (model.in_chans, *img_size)
    data_config = timm.data.resolve_data_config({"input_size": input_size}, model=model)
    return {
        "format": format,
        "hubclf_version": __version__,
        "architecture": cfg.get("architecture") or type(model).__name__,
        "source": cfg.get("hf_hub_id"),
        "num_classes": model.num_classes,
        "label_names": label_names_of(model),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,  # raw logits: apply softmax for probabilities
        "input_size": list(data_config["input_size"]),
        "trained_input_size": list(cfg.get("input_size", input_size)),
        "min_input_size": list(_min_size(model)),
        "dynamic": dynamic,  # height/width free too (ONNX); False: any batch of input_size
        "dynamic_batch": True,
        "interpolation": data_config["interpolation"],
        "mean": [float(v) for v in data_config["mean"]],
        "std": [float(v) for v in data_config["std"]],
        "crop_pct": float(data_config["crop_pct"]),
        "crop_mode": data_config.get("crop_mode", "center"),
    }


def read_export_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata ``export_model`` wrote into an ONNX or TorchScript file.

        read_export_metadata("deploy/flowers.onnx")["label_names"]   # ["daisy", "rose"]
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported model at {path}")
    if zipfile.is_zipfile(path):  # TorchScript archives are zip files; ONNX files are protobuf
        extra = {TORCHSCRIPT_METADATA_FILE: ""}
        with _quiet_torchscript():
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        raw = extra[TORCHSCRIPT_METADATA_FILE]
    else:
        _require_onnx_extra()
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY, "")
    if not raw:
        raise ValueError(f"{path} has no hubclf metadata (it was not written by hubclf export)")
    return json.loads(raw)


# ---- ONNX -------------------------------------------------------------------------------------------------------
def _write_onnx(model: nn.Module, path: Path, example: torch.Tensor, metadata: dict, dynamic: bool) -> None:
    """Export with torch.onnx's dynamo exporter (torch.export + onnxscript), metadata in ``metadata_props``.

    Why this exporter: the legacy TorchScript-based one (``dynamo=False``) is deprecated since torch 2.9, and its
    adaptive_avg_pool2d conversion refuses the classic head's fixed 6×6/7×7 grid whenever the feature map is not
    a multiple of it (AlexNet at 448×224 gives 13×6), even without dynamic axes.
    """
    from torch.export import Dim

    axes = {0: Dim("batch", min=1)}  # free by default, as timm's exporter makes it
    if dynamic:
        min_h, min_w = _min_size(model)
        axes.update({2: Dim("height", min=min_h), 3: Dim("width", min=min_w)})
    dynamic_shapes = (axes,)
    try:
        with _grid_pool_for_onnx(model), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=dynamic_shapes,
                verbose=False,
            )
    except Exception as e:  # the exporter's errors span pages; the first line says what failed
        raise RuntimeError(f"torch.onnx.export failed for {metadata['architecture']}: {_first_line(e)}") from e
    program.model.metadata_props.update(_onnx_metadata_props(metadata))
    # One self-contained file (weights inside): AlexNet/VGG11 stay well under protobuf's 2 GB limit.
    program.save(str(path), external_data=False)


def _onnx_metadata_props(metadata: dict[str, Any]) -> dict[str, str]:
    """The whole metadata as JSON under ``hubclf``, plus each field as its own key (strings bare, others JSON)."""
    given = {key: value for key, value in metadata.items() if value is not None}
    props = {key: value if isinstance(value, str) else json.dumps(value) for key, value in given.items()}
    props[METADATA_KEY] = json.dumps(metadata)
    return props


def _run_onnx(path: Path, inputs: list[torch.Tensor], metadata: dict) -> list[torch.Tensor]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # as many threads as PyTorch was given
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    stored = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if stored is None or json.loads(stored) != metadata:
        raise ExportCheckError(f"the ONNX file's {METADATA_KEY!r} metadata did not read back as written")
    return [torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]) for x in inputs]


class _GridPoolForOnnx(nn.Module):
    """Adaptive avg/max pooling to a fixed grid, written as index arithmetic on the input's shape.

    torch.export decomposes ``adaptive_avg_pool2d`` into a graph specialised to the traced feature-map size, and
    the guard that says so is dropped in the ONNX graph: with dynamic height/width the exported classic AlexNet
    was silently wrong at other sizes (max abs diff 8e-3 at 320×160). Here every bin's [start, end) is computed
    from the actual size, exactly as PyTorch's kernel does, so the graph is right at every size.
    """

    def __init__(self, grid_size: tuple[int, int], pool_type: str) -> None:
        super().__init__()
        self.grid_size, self.pool_type = tuple(grid_size), pool_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _bin_masks(x.shape[2], self.grid_size[0], x.device)  # (out_h, H): row i of the grid reads these
        cols = _bin_masks(x.shape[3], self.grid_size[1], x.device)  # (out_w, W)
        if self.pool_type == "avg":
            rows = rows.to(x.dtype) / rows.sum(1, keepdim=True)
            cols = cols.to(x.dtype) / cols.sum(1, keepdim=True)
            return rows @ x @ cols.transpose(0, 1)
        lowest = torch.finfo(x.dtype).min
        x = x.unsqueeze(2).masked_fill(~rows[:, :, None], lowest).amax(dim=3)  # (N, C, out_h, W)
        return x.unsqueeze(3).masked_fill(~cols, lowest).amax(dim=4)  # (N, C, out_h, out_w)


def _bin_masks(size: int, bins: int, device: torch.device) -> torch.Tensor:
    """(bins, size) booleans: bin i covers [floor(i*size/bins), ceil((i+1)*size/bins)), as in adaptive pooling."""
    positions = torch.arange(size, device=device)
    index = torch.arange(bins, device=device)
    start = torch.div(index * size, bins, rounding_mode="floor")
    end = torch.div((index + 1) * size + bins - 1, bins, rounding_mode="floor")
    return (positions[None, :] >= start[:, None]) & (positions[None, :] < end[:, None])


@contextlib.contextmanager
def _grid_pool_for_onnx(model: nn.Module) -> Iterator[None]:
    """Swap a classic head's adaptive grid pool for ``_GridPoolForOnnx`` while exporting (the model is restored)."""
    head = getattr(model, "head", None)
    if not isinstance(head, GridMlpHead):
        yield
        return
    original = head.global_pool
    head.global_pool = _GridPoolForOnnx(head.grid_size, head.pool_type)
    try:
        yield
    finally:
        head.global_pool = original


def _require_onnx_extra() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter builds the graph with it)
    except ImportError as e:
        raise RuntimeError(f"ONNX export needs onnx, onnxscript and onnxruntime ({e.name} is missing): "
                           f"{EXTRA_HINT}") from e  # fmt: skip


# ---- TorchScript ----------------------------------------------------------------------------------------------
def _write_torchscript(model: nn.Module, path: Path, inputs: list[torch.Tensor], metadata: dict) -> None:
    """``torch.jit.trace`` (with ``check_trace`` at every check size), metadata as the extra file ``config.json``.

    Tracing rather than scripting: it works for every hubclf model today; the traced graph calls
    ``adaptive_avg_pool2d`` itself, so it takes any input size, like the eager model.
    """
    try:
        with _quiet_torchscript(), torch.no_grad():
            traced = torch.jit.trace(
                model, (inputs[0],), check_trace=True, check_inputs=[(x,) for x in inputs], strict=True
            )
            torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_METADATA_FILE: json.dumps(metadata)})
    except torch.jit.TracingCheckError as e:
        raise ExportCheckError(f"torch.jit.trace of {metadata['architecture']} is not reproducible: "
                               f"{_first_line(e)}") from e  # fmt: skip
    except Exception as e:
        raise RuntimeError(f"torch.jit.trace failed for {metadata['architecture']}: {_first_line(e)}") from e


def _run_torchscript(path: Path, inputs: list[torch.Tensor], metadata: dict) -> list[torch.Tensor]:
    extra = {TORCHSCRIPT_METADATA_FILE: ""}
    with _quiet_torchscript():
        loaded = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    if json.loads(extra[TORCHSCRIPT_METADATA_FILE] or "null") != metadata:
        raise ExportCheckError(f"the TorchScript file's {TORCHSCRIPT_METADATA_FILE} did not read back as written")
    with torch.inference_mode():
        return [loaded(x).float() for x in inputs]


@contextlib.contextmanager
def _quiet_torchscript() -> Iterator[None]:
    """Silence what torch.jit says on every call and hubclf cannot act on.

    torch 2.14 marks torch.jit deprecated (FutureWarning), and tracing warns about the models' Python-side input
    checks (shape comparisons): those only raise errors for bad input and are rightly fixed at trace time.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r"`torch\.jit\.")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, message="Converting a tensor to a Python")
        yield


# ---- helpers ------------------------------------------------------------------------------------------------------
def _resolve_output(out: str | os.PathLike, format: str | None) -> tuple[Path, str]:
    out = Path(out)
    by_suffix = {suffix: name for name, suffix in FORMATS.items()}
    if format is not None and format not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {format!r}")
    if out.is_dir():
        format = format or "onnx"
        return out / f"model{FORMATS[format]}", format
    inferred = by_suffix.get(out.suffix.lower())
    if format is None:
        if inferred is None:
            raise ValueError(f"cannot tell the format from {out.name!r}: name it .onnx or .pt, or pass --format")
        return out, inferred
    if inferred is not None and inferred != format:
        raise ValueError(f"{out.name!r} looks like {inferred}, but format={format!r}: use a {FORMATS[format]} name")
    return out, format


def _load(model: nn.Module | str | os.PathLike, revision: str | None) -> nn.Module:
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        loaded = load_model(model, revision=revision)
    except RevisionNotFoundError as e:
        raise FileNotFoundError(f"revision {revision!r} of {model} not found on the Hub") from e
    except RepositoryNotFoundError as e:  # gated/private repos land here too
        raise FileNotFoundError(f"model {model} not found on the Hub (or not readable with this token)") from e
    if not hasattr(loaded, "num_classes") or not hasattr(loaded, "pretrained_cfg"):
        raise ValueError(f"{type(loaded).__name__} is not a timm/hubclf classifier (no num_classes/pretrained_cfg)")
    devices = {p.device.type for p in loaded.parameters()}
    if devices - {"cpu"}:  # the check feeds CPU tensors, and exported files are meant to load anywhere
        raise ValueError(f"export a model on the CPU (its parameters are on {sorted(devices)}): call model.cpu()")
    return loaded


def _export_size(model: nn.Module, img_size: Sequence[int] | None) -> tuple[int, int]:
    trained = tuple(int(s) for s in model.pretrained_cfg["input_size"][1:])
    if img_size is None:
        return trained
    if len(img_size) != 2 or min(img_size) < 1:
        raise ValueError(f"img_size must be two positive integers (height, width), got {tuple(img_size)}")
    height, width = int(img_size[0]), int(img_size[1])
    problem = input_size_problem(model, height, width)
    if problem:
        raise ValueError(problem)
    if (height, width) != trained:
        logger.warning(
            "exporting at %d×%d (H×W), but the model was trained at %d×%d: accuracy at the new size is untested",
            height, width, *trained,
        )  # fmt: skip
    return height, width


def _min_size(model: nn.Module) -> tuple[int, int]:
    return min_input_size(model) or (1, 1)


def _second_check_size(height: int, width: int, min_size: tuple[int, int]) -> tuple[int, int]:
    """Another rectangular size for the dynamic-axes check: 5/7 of each side (448×224 -> 320×160), or 9/7 when that
    falls below the model's minimum; a square size is made rectangular."""
    scale = (5, 7) if height * 5 // 7 >= min_size[0] and width * 5 // 7 >= min_size[1] else (9, 7)
    h, w = height * scale[0] // scale[1], width * scale[0] // scale[1]
    if h == w:
        w = w * 3 // 4 if w * 3 // 4 >= min_size[1] else w * 5 // 4
    return h, w


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _max_abs_diff(actual: torch.Tensor, expected: torch.Tensor) -> float:
    if actual.shape != expected.shape:
        return math.inf
    return (actual.float() - expected.float()).abs().max().item()


def _shape_name(x: torch.Tensor) -> str:
    return "×".join(str(s) for s in x.shape)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")
