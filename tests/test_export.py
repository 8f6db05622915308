"""hubclf.export and ``hubclf export``: ONNX and TorchScript files that reproduce PyTorch's logits at 448×224 and at
a second rectangular size, label names and preprocessing read back from the file, the CLI on a folder and on a Hub
repo, one-line errors, and nothing left behind when the parity check fails.

The models are random-init with 3 classes: the check is about the graph, not the weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import timm
import torch
import torch.nn as nn

import hubclf
from hubclf.cli import main
from hubclf.export import ExportCheckError, _GridPoolForOnnx, export_model, read_export_metadata

# torch 2.14 marks torch.jit deprecated; these tests read TorchScript files with it on purpose.
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.:FutureWarning")

LABELS = ["zebra", "ant", "cat"]
SMALL = (72, 64)  # H×W for the tests about files and the CLI: rectangular, just above AlexNet's 63 minimum


def make_model(name: str, img_size: tuple[int, int]) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=len(LABELS), img_size=img_size).eval()
    model.label_names = LABELS
    return model


def run_file(path: Path, x: torch.Tensor) -> np.ndarray:
    """Logits of an exported file, computed here without hubclf.export's own check."""
    if path.suffix == ".onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"pixel_values": x.numpy()})[0]
    with torch.inference_mode():
        return torch.jit.load(str(path))(x).numpy()


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.fixture(scope="module")
def models_448x224():
    cache: dict[str, nn.Module] = {}

    def get(name: str) -> nn.Module:
        if name not in cache:
            cache.clear()  # one big model in memory at a time (VGG11 is 133M parameters)
            cache[name] = make_model(name, (448, 224))
        return cache[name]

    return get


# ---- parity: 3 models × 2 formats at 448×224 and 320×160 ---------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "hubclf_alexnet",
        "hubclf_alexnet_slim",
        pytest.param("hubclf_vgg11_bn", marks=pytest.mark.slow),  # ~9 GFLOP per 448×224 forward, 0.5 GB file
    ],
)
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch_at_448x224_and_a_second_rectangular_size(name, fmt, models_448x224, tmp_path):
    model = models_448x224(name)
    out = tmp_path / f"{name}.{'onnx' if fmt == 'onnx' else 'pt'}"

    result = export_model(model, out, format=fmt, dynamic=True)

    assert result.path == out and out.is_file() and result.size_bytes == out.stat().st_size
    assert list(result.diffs) == ["1×3×448×224", "3×3×448×224", "2×3×320×160"]
    assert 0 <= result.max_abs_diff <= 1e-4
    assert leftovers(tmp_path, {out.name}) == []  # no temporary file next to it
    assert not model.training and isinstance(model.head.global_pool, nn.Module)
    # Independently of the export's own check: a third size, neither traced nor checked, odd on both sides.
    x = torch.randn(1, 3, 97, 131)
    with torch.inference_mode():
        expected = model(x).numpy()
    np.testing.assert_allclose(run_file(out, x), expected, rtol=0, atol=1e-4)
    metadata = read_export_metadata(out)
    assert metadata["label_names"] == LABELS and metadata["input_size"] == [3, 448, 224]
    assert metadata["architecture"] == name and metadata["dynamic"] is True


def test_grid_pool_for_onnx_is_adaptive_pooling_at_every_size():
    torch.manual_seed(0)
    for height, width in [(13, 6), (14, 7), (9, 4), (5, 3), (1, 1), (20, 33)]:
        x = torch.randn(2, 4, height, width)
        for pool_type, reference in (("avg", nn.AdaptiveAvgPool2d), ("max", nn.AdaptiveMaxPool2d)):
            expected = reference((6, 7))(x)
            torch.testing.assert_close(_GridPoolForOnnx((6, 7), pool_type)(x), expected, rtol=0, atol=1e-6)


def test_classic_head_with_max_grid_pool_exports_to_dynamic_onnx(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("hubclf_alexnet", num_classes=3, img_size=SMALL, global_pool="max").eval()
    result = export_model(model, tmp_path / "max.onnx", dynamic=True)
    assert list(result.diffs) == ["1×3×72×64", "3×3×72×64", "2×3×92×82"]  # 9/7: 5/7 is under the 63 minimum
    assert result.max_abs_diff <= 1e-4


# ---- metadata -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_model() -> nn.Module:
    model = make_model("hubclf_alexnet_slim", SMALL)
    model.pretrained_cfg = {**model.pretrained_cfg, "crop_pct": 0.95, "interpolation": "bicubic"}
    return model


def test_onnx_metadata_reads_back_with_onnxruntime(small_model, tmp_path):
    out = tmp_path / "m.onnx"
    export_model(small_model, out)

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    assert json.loads(props["label_names"]) == LABELS
    assert json.loads(props["input_size"]) == [3, 72, 64]
    assert json.loads(props["mean"]) == pytest.approx([0.485, 0.456, 0.406])
    assert json.loads(props["std"]) == pytest.approx([0.229, 0.224, 0.225])
    assert props["interpolation"] == "bicubic" and json.loads(props["crop_pct"]) == 0.95
    assert json.loads(props["hubclf"]) == read_export_metadata(out)
    assert "source" not in props  # None values are only in the JSON entry
    # Without --dynamic the graph takes any number of images of the export size, as timm's exporter makes it.
    batch, *size = session.get_inputs()[0].shape
    assert isinstance(batch, str) and size == [3, 72, 64]  # was 1: onnxruntime refused a batch of 2
    assert session.get_outputs()[0].name == "logits"


def test_torchscript_metadata_reads_back_with_torch_jit_load(small_model, tmp_path):
    out = tmp_path / "m.pt"
    export_model(small_model, out)

    extra = {"config.json": ""}
    torch.jit.load(str(out), _extra_files=extra)
    metadata = json.loads(extra["config.json"])
    assert metadata == read_export_metadata(out)
    assert metadata["label_names"] == LABELS and metadata["input_size"] == [3, 72, 64]
    assert metadata["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert metadata["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert (metadata["interpolation"], metadata["crop_pct"], metadata["format"]) == ("bicubic", 0.95, "torchscript")


def test_read_export_metadata_refuses_files_hubclf_did_not_write(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(plain))
    with pytest.raises(ValueError, match="no hubclf metadata"):
        read_export_metadata(plain)
    with pytest.raises(FileNotFoundError):
        read_export_metadata(tmp_path / "missing.onnx")


# ---- the CLI -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = timm.create_model("hubclf_alexnet_slim", num_classes=len(LABELS), img_size=SMALL)
    return hubclf.save_pretrained(model, tmp_path_factory.mktemp("export") / "model", label_names=LABELS)


def test_cli_exports_a_saved_folder_and_reports_size_diff_and_sizes(model_dir, tmp_path, capsys):
    out = tmp_path / "deploy" / "flowers.onnx"  # the folder is created

    assert main(["export", str(model_dir), str(out), "--dynamic"]) == 0

    stdout, stderr = capsys.readouterr()
    assert stdout.startswith(f"wrote {out} (ONNX, ") and " MB); max abs diff vs PyTorch " in stdout
    assert "1×3×72×64, 3×3×72×64, 2×3×92×82" in stdout
    assert "exporting hubclf_alexnet_slim (3 classes) to ONNX at 72×64 (H×W), dynamic batch/height/width" in stderr
    assert "1×3×72×64 max abs diff" in stderr and "2×3×92×82 max abs diff" in stderr
    assert read_export_metadata(out)["label_names"] == LABELS
    assert out.stat().st_mode & 0o044  # readable by others, like any file (not mkstemp's owner-only mode)


def test_cli_img_size_overrides_the_saved_size_with_a_warning(model_dir, tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert main(["export", str(model_dir), str(out), "--img-size", "96", "80"]) == 0
    stderr = capsys.readouterr().err
    assert "exporting at 96×80 (H×W), but the model was trained at 72×64" in stderr
    metadata = read_export_metadata(out)
    assert metadata["input_size"] == [3, 96, 80] and metadata["trained_input_size"] == [3, 72, 64]
    assert run_file(out, torch.randn(1, 3, 96, 80)).shape == (1, 3)


def test_cli_exports_a_hub_repo(model_dir, use_hub, new_repo_id, tmp_path, capsys):
    repo_id = new_repo_id("export")
    hubclf.push_to_hub(model_dir, repo_id, token=use_hub.token, verify=False)

    assert main(["export", repo_id, str(tmp_path), "--format", "torchscript"]) == 0

    out = tmp_path / "model.pt"  # a folder OUT gets model.pt
    assert capsys.readouterr().out.startswith(f"wrote {out} (TorchScript, ")
    metadata = read_export_metadata(out)
    assert metadata["source"] == repo_id and metadata["label_names"] == LABELS


@pytest.mark.parametrize("missing", ["folder", "hub"])
def test_missing_model_is_one_line_and_exit_2(missing, use_hub, new_repo_id, tmp_path, capsys):
    model = str(tmp_path / "no-such-model") if missing == "folder" else new_repo_id("absent")
    out = tmp_path / "m.onnx"
    assert main(["export", model, str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("hubclf export: error: ") and captured.err.count("\n") == 1
    assert model.rsplit("/", 1)[-1] in captured.err  # the message names what is missing
    assert not out.exists()


def test_bad_output_names_are_one_line_errors(model_dir, tmp_path, capsys):
    assert main(["export", str(model_dir), str(tmp_path / "m.txt")]) == 2
    assert "name it .onnx or .pt, or pass --format" in capsys.readouterr().err
    assert main(["export", str(model_dir), str(tmp_path / "m.onnx"), "--format", "torchscript"]) == 2
    assert "looks like onnx" in capsys.readouterr().err


def test_missing_export_extra_says_how_to_install_it(model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails
    assert main(["export", str(model_dir), str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'hubclf[export]'" in err and "onnxruntime is missing" in err
    assert leftovers(tmp_path, set()) == []


# ---- a failed parity check writes nothing ----------------------------------------------------------------------
class _Shifted(nn.Module):
    """A model whose logits are off by 0.01: what a broken exporter could produce."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + 0.01


def test_a_wrong_onnx_graph_leaves_no_file(tmp_path, monkeypatch, capsys):
    model = make_model("hubclf_alexnet", SMALL)
    model_dir = hubclf.save_pretrained(model, tmp_path / "model", label_names=LABELS)
    wrong_forward = _GridPoolForOnnx.forward
    monkeypatch.setattr(_GridPoolForOnnx, "forward", lambda self, x: wrong_forward(self, x) * 1.5)
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    assert main(["export", str(model_dir), str(out_dir / "m.onnx")]) == 2

    err = capsys.readouterr().err  # a progress line, then the error on one line
    assert err.startswith("hubclf export: exporting hubclf_alexnet (3 classes) to ONNX") and "Traceback" not in err
    error = err.splitlines()[-1]
    assert error.startswith("hubclf export: error: the ONNX export of hubclf_alexnet does not match PyTorch")
    assert "nothing was written" in error and err.count("\n") == 2
    assert leftovers(out_dir, set()) == []  # neither m.onnx nor a temporary file
    assert isinstance(model.head.global_pool, nn.AdaptiveAvgPool2d)  # the model was given its pool back


def test_a_wrong_torchscript_graph_leaves_the_previous_file_untouched(small_model, tmp_path, monkeypatch):
    out = tmp_path / "m.pt"
    out.write_text("the previous export")
    real_trace = torch.jit.trace
    monkeypatch.setattr(torch.jit, "trace", lambda model, *a, **kw: real_trace(_Shifted(model), *a, **kw))

    with pytest.raises(ExportCheckError, match=r"max abs diff of the logits 1\.00e-02 at 1×3×72×64 exceeds 1e-04"):
        export_model(small_model, out, atol=1e-4)

    assert out.read_text() == "the previous export"
    assert leftovers(tmp_path, {"m.pt"}) == []


def test_cli_defaults_match_the_library():
    from hubclf.cli import build_parser
    from hubclf.export import DEFAULT_ATOL, FORMATS

    args = build_parser().parse_args(["export", "m", "out.onnx"])
    assert args.atol == DEFAULT_ATOL
    export_parser = build_parser()._subparsers._group_actions[0].choices["export"]
    format_action = next(a for a in export_parser._actions if a.dest == "format")
    assert sorted(format_action.choices) == sorted(FORMATS)


def test_nan_logits_fail_the_check_whichever_size_they_appear_at(small_model, tmp_path, monkeypatch):
    from hubclf import export

    real_run = export._run_torchscript
    monkeypatch.setattr(export, "_run_torchscript", lambda *a: [*real_run(*a)[:2], torch.full((2, 3), float("nan"))])
    with pytest.raises(ExportCheckError, match=r"nan at 2×3×92×82"):
        export_model(small_model, tmp_path / "m.pt", dynamic=True)
    assert leftovers(tmp_path, set()) == []


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_default_export_takes_any_batch_and_is_checked_at_1_and_3(small_model, tmp_path, fmt):
    # The default ONNX file had a fixed batch of 1: onnxruntime said "Got: 2 Expected: 1" for two images.
    out = tmp_path / f"m.{'onnx' if fmt == 'onnx' else 'pt'}"
    result = export_model(small_model, out)
    assert list(result.diffs) == ["1×3×72×64", "3×3×72×64"]
    x = torch.randn(5, 3, *SMALL)
    with torch.inference_mode():
        expected = small_model(x).numpy()
    np.testing.assert_allclose(run_file(out, x), expected, rtol=0, atol=1e-4)
    metadata = read_export_metadata(out)
    assert metadata["dynamic_batch"] is True and metadata["dynamic"] is False
