"""hubclf.config_check: someone else's model folder is checked before anything is built from it.

A corpus of hostile folders (a good save with one thing broken) must each be refused by ``hubclf.from_pretrained``
with an error naming the file and the field, before ``timm.create_model`` or the weights loader runs, and by the CLI
with exactly one line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import HfApi
from PIL import Image

import hubclf.hub
from hubclf.cli import main
from hubclf.config_check import (
    INTERPOLATIONS,
    ConfigError,
    label_name_problems,
    read_config_file,
    safetensors_header_shapes,
    validate_config,
)
from hubclf.evaluate import format_report
from hubclf.hub import from_pretrained, save_pretrained
from hubclf.predict import ImagePrediction, format_predictions
from tests.hub_fixtures import set_hub_offline

ARCH = "hubclf_alexnet_slim"
LABELS = ["daisy", "rose", "tulip"]


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid 3-class folder every hostile case starts from."""
    torch.manual_seed(0)
    model = timm.create_model(ARCH, num_classes=len(LABELS), img_size=(64, 64))
    return save_pretrained(model, tmp_path_factory.mktemp("good") / "model", label_names=LABELS)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "flower.png"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(path)
    return path


@pytest.fixture
def nothing_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a model is created or a weight tensor read: refusals must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a hostile folder reached the model constructor or the weights loader")

    monkeypatch.setattr(timm, "create_model", refuse)
    monkeypatch.setattr(hubclf.hub.safetensors.torch, "load_file", refuse)


def copy_folder(good: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("config.json", "README.md"):
        shutil.copyfile(good / name, dst / name)
    os.link(good / "model.safetensors", dst / "model.safetensors")  # untouched cases share the 10 MB file
    return dst


def edit_config(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        change(config)
        (folder / "config.json").write_text(json.dumps(config))

    return apply


def write_config_bytes(data: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / "config.json").write_bytes(data)


def set_in(path: str, value) -> Callable[[dict], None]:
    *parents, key = path.split(".")

    def change(config: dict) -> None:
        for parent in parents:
            config = config.setdefault(parent, {})
        config[key] = value

    return change


def rewrite_weights(change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        path = folder / "model.safetensors"
        data = path.read_bytes()
        path.unlink()  # the file is a hard link to the good one: replace, never modify in place
        path.write_bytes(change(data))

    return apply


def oversized_config(folder: Path) -> None:
    with open(folder / "config.json", "r+b") as f:
        f.truncate(50_000_000)  # sparse: 50 MB on paper, nothing written


def deeply_nested(depth: int) -> Callable[[dict], None]:
    def change(config: dict) -> None:
        value: list = []
        for _ in range(depth):
            value = [value]
        config["hubclf"]["extra"] = value

    return change


def lying_header_length(data: bytes) -> bytes:
    return (1 << 40).to_bytes(8, "little") + data[8:]


def header_length_past_the_end(data: bytes) -> bytes:
    return (len(data) + 10).to_bytes(8, "little") + data[8:]


# (id, how the good folder is broken, file named in the error, the rest of the error)
CASES = [
    ("img_size_huge", edit_config(set_in("model_args.img_size", [100000, 100000])),
     "config.json", r"model_args.img_size 100000×100000 \(H×W\) is too large"),
    ("input_size_huge", edit_config(set_in("pretrained_cfg.input_size", [3, 100000, 100000])),
     "config.json", r"pretrained_cfg.input_size 100000×100000 \(H×W\) is too large"),
    ("input_size_channels_huge", edit_config(set_in("pretrained_cfg.input_size", [10**9, 64, 64])),
     "config.json", r"pretrained_cfg.input_size has 1000000000 channels"),
    ("crop_pct_tiny_resizes_huge", edit_config(set_in("pretrained_cfg.crop_pct", 1e-6)),
     "config.json", r"img_size 64×64 with crop_pct 1e-06 resizes images to \d+×\d+: at most 8192 per side"),
    ("img_size_below_minimum", edit_config(set_in("model_args.img_size", [8, 8])),
     "config.json", r"model_args.img_size 8×8 \(H×W\) is below AlexNet's minimum 63×63"),
    ("num_classes_1e13", edit_config(set_in("num_classes", 10**13)),
     "config.json", r"num_classes must be an integer in 0..100,000, got 10000000000000"),
    ("num_classes_string", edit_config(set_in("num_classes", "3")),
     "config.json", r"num_classes must be an integer in 0..100,000, got '3'"),
    ("num_classes_vs_head", edit_config(lambda c: (c.update(num_classes=5), c.pop("label_names"))),
     "config.json", r"num_classes is 5, but the classifier head.fc.weight in model.safetensors has shape \[3, 256\]"),
    ("num_classes_0_with_head", edit_config(lambda c: (c.update(num_classes=0), c.pop("label_names"))),
     "config.json", r"num_classes is 0, but model.safetensors has a classifier head.fc.weight"),
    ("in_chans_vs_first_conv", edit_config(set_in("model_args.in_chans", 1)),
     "config.json", r"model_args.in_chans is 1 .*features.0.weight in model.safetensors has shape \[64, 3, 11, 11\]"),
    ("in_chans_huge", edit_config(set_in("model_args.in_chans", 10**6)),
     "config.json", r"model_args.in_chans must be an integer in 1..64, got 1000000"),
    ("model_args_unknown", edit_config(set_in("model_args.foo", 1)),
     "config.json", r"model_args \['foo'\] are not accepted \(allowed: \['drop_rate', 'global_pool', 'img_size'"),
    ("model_args_architecture_switch", edit_config(set_in("model_args.head_type", "classic")),
     "config.json", r"model_args \['head_type'\] are not accepted"),
    ("model_args_num_classes", edit_config(set_in("model_args.num_classes", 3)),
     "config.json", r"model_args must not hold num_classes"),
    ("model_args_global_pool_evil", edit_config(set_in("model_args.global_pool", "evil")),
     "config.json", r"model_args.global_pool must be one of \('', 'avg', 'max', 'avgmax', 'catavgmax'\), got 'evil'"),
    ("global_pool_evil", edit_config(set_in("global_pool", "evil")),
     "config.json", r"global_pool must be one of .*, got 'evil'"),
    ("drop_rate_5", edit_config(set_in("model_args.drop_rate", 5)),
     "config.json", r"model_args.drop_rate must be a number in \[0, 1\), got 5"),
    ("interpolation_evil", edit_config(set_in("pretrained_cfg.interpolation", "evil")),
     "config.json", r"pretrained_cfg.interpolation must be one of .*'bicubic'.*, got 'evil'"),
    ("crop_mode_evil", edit_config(set_in("pretrained_cfg.crop_mode", "evil")),
     "config.json", r"pretrained_cfg.crop_mode must be one of \('center', 'squash', 'border'\), got 'evil'"),
    ("mean_abc", edit_config(set_in("pretrained_cfg.mean", "abc")),
     "config.json", r"pretrained_cfg.mean must be a list of 1 to 4 finite numbers, got 'abc'"),
    ("mean_nan", edit_config(set_in("pretrained_cfg.mean", [float("nan"), 0.4, 0.4])),
     "config.json", r"pretrained_cfg.mean must be a list of 1 to 4 finite numbers, got \[nan, 0.4, 0.4\]"),
    ("mean_400_digits", edit_config(set_in("pretrained_cfg.mean", [10**400, 0.4, 0.4])),
     "config.json", r"pretrained_cfg.mean values must lie within ±1000, got \[1000"),
    ("drop_rate_400_digits", edit_config(set_in("model_args.drop_rate", 10**400)),
     "config.json", r"model_args.drop_rate must be a number in \[0, 1\), got 1000"),
    ("test_crop_pct_0", edit_config(lambda c: c["pretrained_cfg"].update(test_input_size=[3, 64, 64], test_crop_pct=0)),
     "config.json", r"pretrained_cfg.test_crop_pct must be a number in \(0, 1\], got 0"),
    ("std_0", edit_config(set_in("pretrained_cfg.std", [0, 0.2, 0.2])),
     "config.json", r"pretrained_cfg.std must be positive"),
    ("crop_pct_5", edit_config(set_in("pretrained_cfg.crop_pct", 5)),
     "config.json", r"pretrained_cfg.crop_pct must be a number in \(0, 1\], got 5"),
    ("pretrained_cfg_unknown_field", edit_config(set_in("pretrained_cfg.dataset", "x")),
     "config.json", r"pretrained_cfg has fields timm does not know: \['dataset'\]"),
    ("pretrained_cfg_state_dict", edit_config(set_in("pretrained_cfg.state_dict", {"w": [1]})),
     "config.json", r"pretrained_cfg.state_dict must be null"),
    ("label_names_duplicates", edit_config(set_in("label_names", ["rose", "rose", "tulip"])),
     "config.json", r"label_names: must be unique, repeated: \['rose'\]"),
    ("label_names_not_strings", edit_config(set_in("label_names", [1, None, {"a": 1}])),
     "config.json", r"label_names: must be strings, got \[1, None, \{'a': 1\}\]"),
    ("label_names_ansi", edit_config(set_in("label_names", ["daisy", "\x1b[31mrose\x1b[0m", "tulip"])),
     "config.json", r"label_names: must not hold control characters or line breaks: \['\\x1b\[31mrose\\x1b\[0m'\]"),
    ("label_names_newline", edit_config(set_in("label_names", ["daisy", "rose\nOK 100%", "tulip"])),
     "config.json", r"label_names: must not hold control characters or line breaks: \['rose\\nOK 100%'\]"),
    ("label_names_wrong_count", edit_config(set_in("label_names", ["daisy", "rose"])),
     "config.json", r"label_names: 2 label_names for a model with num_classes=3"),
    ("label_names_not_a_list", edit_config(set_in("label_names", "daisy,rose,tulip")),
     "config.json", r"label_names: must be a list of strings, got str"),
    ("label_names_too_long", edit_config(set_in("label_names", ["daisy", "r" * 10_000, "tulip"])),
     "config.json", r"label_names: must have at most 256 characters"),
    ("deep_nesting_100000", write_config_bytes(b"[" * 100_000 + b"]" * 100_000),
     "config.json", r"is nested deeper than 32 levels"),
    ("deep_nesting_inside", edit_config(deeply_nested(40)),
     "config.json", r"is nested deeper than 32 levels"),
    ("not_utf8", write_config_bytes(b'{"architecture": "hubclf_alexnet_slim\xff\xfe"}'),
     "config.json", r"is not UTF-8 text \(byte 37"),
    ("not_json", write_config_bytes(b'{"architecture": '),
     "config.json", r"is not valid JSON"),
    ("not_an_object", write_config_bytes(b"[1, 2, 3]"),
     "config.json", r"must hold a JSON object, got list"),
    ("repeated_key", write_config_bytes(b'{"num_classes": 3, "num_classes": 1000}'),
     "config.json", r"repeats the key 'num_classes'"),
    ("config_50_mb", oversized_config,
     "config.json", r"is 50,000,000 bytes; a config.json may have at most 1,048,576"),
    ("safetensors_truncated", rewrite_weights(lambda data: data[:100]),
     "model.safetensors", r"is truncated: its header claims"),
    ("safetensors_header_length_lies", rewrite_weights(lying_header_length),
     "model.safetensors", r"claims a 1,099,511,627,776-byte header; at most 16,777,216"),
    ("safetensors_header_past_the_end", rewrite_weights(header_length_past_the_end),
     "model.safetensors", r"is truncated: its header claims"),
    ("safetensors_data_cut", rewrite_weights(lambda data: data[:-4096]),
     "model.safetensors", r"tensor '.*' data_offsets \[\d+, \d+\] lie outside the \d[\d,]* data bytes"),
    ("safetensors_too_short", rewrite_weights(lambda data: b"\x01\x02"),
     "model.safetensors", r"is 2 bytes, too short for a safetensors header"),
    # auto_map is data hubclf never runs; it may only point transformers at the repo's own modeling_hubclf.py
    ("auto_map_other_repo", edit_config(set_in("auto_map.AutoModelForImageClassification", "evil/x--modeling.Evil")),
     "config.json", r"auto_map may only name classes of this repo's modeling_hubclf.py, got \{'AutoModelFor"),
    ("auto_map_other_file", edit_config(set_in("auto_map.AutoModel", "evil_code.Model")),
     "config.json", r"auto_map may only name classes of this repo's modeling_hubclf.py"),
    ("auto_map_other_auto_class", edit_config(set_in("auto_map.AutoTokenizer", "modeling_hubclf.Tokenizer")),
     "config.json", r"auto_map has entries \['AutoTokenizer'\]; only \['AutoModel', 'AutoModelForImageClass"),
    ("auto_map_not_an_object", edit_config(set_in("auto_map", "modeling_hubclf.Model")),
     "config.json", r"auto_map must be an object naming the classes of modeling_hubclf.py, got 'modeling_hubclf"),
    # What the model card renders: a wrong type was an "internal error" on push.
    ("hubclf_block_a_list", edit_config(set_in("hubclf", [1])),
     "config.json", r"'hubclf' \(the model card metadata\) must be an object, got \[1\]"),
    ("hubclf_hyperparameters_a_list", edit_config(set_in("hubclf.hyperparameters", [1])),
     "config.json", r"hubclf.hyperparameters must be an object or null, got \[1\]"),
    ("hubclf_eval_results_text", edit_config(set_in("hubclf.eval_results", {"accuracy": "high"})),
     "config.json", r"hubclf.eval_results must map names to numbers or null: \['accuracy'\]"),
    ("hubclf_epoch_metrics_numbers", edit_config(set_in("hubclf.epoch_metrics", [1, 2])),
     "config.json", r"hubclf.epoch_metrics must be a list of objects"),
    ("hubclf_total_params_text", edit_config(set_in("hubclf.total_params", "many")),
     "config.json", r"hubclf.total_params must be an integer or null, got 'many'"),
    ("strategy_a_number", edit_config(set_in("strategy", 5)),
     "config.json", r"'strategy' \(the card's \"Why this strategy\" section\) must be an object, got 5"),
    ("strategy_rows_nested", edit_config(set_in("strategy", {"summary": "s", "columns": ["a"], "rows": [[{"x": 1}]]})),
     "config.json", r"strategy.rows must be a list of rows of numbers and strings"),
]  # fmt: skip
CLI_CASES = {  # a representative subset also goes through `hubclf predict` (all of them would only repeat the loads)
    "img_size_huge", "num_classes_1e13", "num_classes_vs_head", "in_chans_vs_first_conv", "model_args_unknown",
    "model_args_global_pool_evil", "interpolation_evil", "mean_abc", "mean_nan", "deep_nesting_100000", "not_utf8",
    "config_50_mb", "label_names_ansi", "label_names_newline", "safetensors_header_length_lies",
}  # fmt: skip


@pytest.mark.parametrize("break_it,file,message", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_hostile_folder_is_refused_before_anything_is_built(
    good, tmp_path, nothing_is_built, break_it, file, message
):
    folder = copy_folder(good, tmp_path / "hostile")
    break_it(folder)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(folder / file))}.*{message}"):
        from_pretrained(folder)


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_hostile_folder_is_one_line_and_exit_2_on_the_cli(good, image, tmp_path, nothing_is_built, capsys, case):
    break_it, file, message = next(c[1:] for c in CASES if c[0] == case)
    folder = copy_folder(good, tmp_path / "hostile")
    break_it(folder)
    assert main(["predict", str(folder), str(image)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.endswith("\n") and captured.err.count("\n") == 1, captured.err
    assert "\x1b" not in captured.err
    assert captured.err.startswith(f"hubclf predict: error: {folder}/{file}")


TIMM_CASES = [  # a plain timm architecture (any timm model loads): classifier and first conv named by timm's registry
    ("num_classes_vs_fc", edit_config(lambda c: (c.update(num_classes=5), c.pop("label_names"))),
     r"num_classes is 5, but the classifier fc.weight in model.safetensors has shape \[3, 96\]"),
    ("in_chans_vs_conv1", edit_config(set_in("model_args.in_chans", 4)),
     r"model_args.in_chans is 4 .*conv1.0.weight in model.safetensors has shape \[16, 3, 3, 3\]"),
    ("architecture_switch", edit_config(set_in("model_args.layers", [9, 9, 9, 9])),
     r"model_args \['layers'\] are not accepted \(allowed: \['drop_rate', 'global_pool', 'in_chans'\]\)"),
    ("img_size_not_taken", edit_config(set_in("model_args.img_size", 64)),
     r"model_args \['img_size'\] are not accepted"),
    ("global_pool_evil", edit_config(set_in("model_args.global_pool", "evil")),
     r"model_args.global_pool must be one of \(.*'token', 'map'\), got 'evil'"),
    ("auto_map", edit_config(set_in("auto_map", {"AutoModel": "modeling_hubclf.TimmWrapperModel"})),
     r"auto_map is only written for hubclf architectures, not for 'test_resnet'"),
]  # fmt: skip


@pytest.fixture(scope="module")
def good_timm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = timm.create_model("test_resnet", num_classes=len(LABELS))
    return save_pretrained(model, tmp_path_factory.mktemp("good-timm") / "model", label_names=LABELS)


@pytest.mark.parametrize("break_it,message", [c[1:] for c in TIMM_CASES], ids=[c[0] for c in TIMM_CASES])
def test_hostile_timm_folder_is_refused(good_timm, tmp_path, nothing_is_built, break_it, message):
    folder = copy_folder(good_timm, tmp_path / "hostile")
    break_it(folder)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(folder / 'config.json'))}.*{message}"):
        from_pretrained(folder)


def test_the_good_folders_load(good, good_timm):
    assert from_pretrained(good).label_names == LABELS
    assert from_pretrained(good_timm).label_names == LABELS


def test_oom_sized_config_is_refused_without_allocating(good, tmp_path, nothing_is_built):
    """The config that got `hubclf predict` OOM-killed: refused from the config alone (no model, no tensor, no
    image resize); the nothing_is_built fixture turns any attempt into a test failure."""
    folder = copy_folder(good, tmp_path / "oom")
    edit_config(lambda c: (set_in("model_args.img_size", [100000, 100000])(c), set_in("num_classes", 10**13)(c)))(
        folder
    )
    with pytest.raises(ConfigError) as error:
        from_pretrained(folder)
    assert "model_args.img_size 100000×100000" in str(error.value)
    assert "num_classes must be an integer in 0..100,000" in str(error.value)


# ---- Hub ids, local paths and the CLI ---------------------------------------------------------------------------
def test_missing_local_path_next_to_its_parent_is_not_a_hub_lookup(good, image, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    with pytest.raises(FileNotFoundError, match=r"^model folder out/best does not exist \(for the Hub repo, write "
                       r"hf-hub:out/best\)"):  # fmt: skip
        from_pretrained("out/best")
    for name in ("./out/best", "out/best/", "a/b/c", "~/no-such-hubclf-model", "/no/such/folder"):
        with pytest.raises(FileNotFoundError, match=r"^model folder .* does not exist"):
            from_pretrained(name)
    assert main(["predict", "out/best", str(image)]) == 2
    err = capsys.readouterr().err
    assert err == (
        "hubclf predict: error: model folder out/best does not exist (for the Hub repo, write hf-hub:out/best)\n"
    )


def test_a_file_is_not_a_model_folder(good):
    with pytest.raises(FileNotFoundError, match=r"config.json is a file, not a model folder"):
        from_pretrained(good / "config.json")


def test_a_training_runs_folder_points_to_the_models_inside(good, tmp_path):
    run = tmp_path / "run"  # what `hubclf train --output-dir run` leaves: the models are in best/ and final/
    for model in ("final", "best"):
        shutil.copytree(good, run / model)
    (run / "checkpoints").mkdir()
    with pytest.raises(FileNotFoundError, match=rf"^{run} has no config.json, but its subfolder\(s\) best/, final/ do: "
                       rf"give one of them, e.g. {run / 'best'}$"):  # fmt: skip
        from_pretrained(run)
    with pytest.raises(FileNotFoundError, match=r"checkpoints has no config.json; write the folder with hubclf"):
        from_pretrained(run / "checkpoints")


def test_missing_hub_repo_and_revision_are_one_line(use_hub, new_repo_id, good, image, monkeypatch, capsys):
    monkeypatch.chdir(good.parent)  # no folder named like the repo owner here
    missing = new_repo_id("missing")
    with pytest.raises(FileNotFoundError, match=rf"^no Hub repo {missing} \(or it is private: set HF_TOKEN\)"):
        from_pretrained(missing)
    repo_id = new_repo_id("exists")
    HfApi(token=use_hub.token).create_repo(repo_id)
    with pytest.raises(FileNotFoundError, match=rf"^Hub repo {repo_id} has no revision 'v9'"):
        from_pretrained(repo_id, revision="v9")
    for argv, expected in [
        (["predict", missing, str(image)], f"no Hub repo {missing}"),
        (["predict", repo_id, str(image), "--revision", "v9"], f"Hub repo {repo_id} has no revision 'v9'"),
        (["eval", missing, "--data", str(image.parent)], f"no Hub repo {missing}"),
    ]:
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert captured.err.count("\n") == 1 and expected in captured.err, captured.err


def test_hostile_config_on_the_hub_is_refused_before_the_weights_download(use_hub, new_repo_id, good):
    repo_id = new_repo_id("hostile")
    api = HfApi(token=use_hub.token)
    api.create_repo(repo_id)
    config = json.loads((good / "config.json").read_text())
    config["model_args"]["img_size"] = [100000, 100000]
    api.upload_file(path_or_fileobj=json.dumps(config).encode(), path_in_repo="config.json", repo_id=repo_id)
    api.upload_file(path_or_fileobj=str(good / "model.safetensors"), path_in_repo="model.safetensors", repo_id=repo_id)
    since = len(use_hub.requests)
    with pytest.raises(ConfigError, match=rf"^{repo_id}/config.json is not a valid hubclf config: model_args.img_size"):
        from_pretrained(repo_id)
    requested = [r.path for r in use_hub.requests[since:]]
    assert any("config.json" in path for path in requested)
    assert not any("model.safetensors" in path for path in requested)


def test_unreachable_hub_is_one_line(monkeypatch, tmp_path, capsys, image):
    monkeypatch.chdir(tmp_path)
    set_hub_offline(monkeypatch)
    with pytest.raises(FileNotFoundError, match=r"^nobody/nothing/config.json is not in the Hub cache and the Hub "
                       r"cannot be reached \(no local folder nobody/nothing\)"):  # fmt: skip
        from_pretrained("nobody/nothing")
    assert main(["predict", "nobody/nothing", str(image)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_cli_hub_http_errors_are_one_line(monkeypatch, capsys, image):
    """An error the CLI has no special message for (here a multi-line Hub HTTP error) still comes out as one line."""
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    def fail(*args, **kwargs):
        response = httpx.Response(500, request=httpx.Request("GET", "http://hub/x"))
        raise HfHubHTTPError("500 Server Error\n\nInternal Error\nRequest ID: abc", response=response)

    monkeypatch.setattr(hubclf.hub, "hf_hub_download", fail)
    assert main(["predict", "someone/some-model", str(image)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hubclf predict: error: HfHubHTTPError: 500 Server Error Internal Error Request ID: abc")
    assert err.count("\n") == 1


def test_hubclf_debug_keeps_the_traceback(good, image, tmp_path, monkeypatch):
    folder = copy_folder(good, tmp_path / "debug")
    edit_config(set_in("model_args.foo", 1))(folder)
    monkeypatch.setenv("HUBCLF_DEBUG", "1")
    with pytest.raises(ConfigError, match="model_args"):
        main(["predict", str(folder), str(image)])


# ---- saving: num_classes=0 and the same label rules ---------------------------------------------------------------
def test_a_headless_model_saves_and_loads_back(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model(ARCH, num_classes=0, img_size=(64, 64))
    folder = save_pretrained(model, tmp_path / "headless")
    assert "label_names" not in json.loads((folder / "config.json").read_text())
    loaded = from_pretrained(folder)
    assert loaded.num_classes == 0 and loaded.label_names is None
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "label_names,message",
    [(["a", "b\x1b[2J"], "control characters"), (["a", "b\n"], "control characters"), (["a", 2], "must be strings")],
)
def test_save_refuses_label_names_that_would_not_load(tmp_path, label_names, message):
    model = timm.create_model(ARCH, num_classes=2, img_size=(64, 64))
    with pytest.raises(ValueError, match=message):
        save_pretrained(model, tmp_path / "bad", label_names=label_names)


# ---- the pure functions -------------------------------------------------------------------------------------------
def test_safetensors_header_shapes_reads_the_header_only(good):
    shapes = safetensors_header_shapes(good / "model.safetensors")
    assert shapes["head.fc.weight"] == (3, 256) and shapes["features.0.weight"] == (64, 3, 11, 11)


def test_read_and_validate_a_good_config(good):
    config = read_config_file(good / "config.json")
    assert validate_config(config, "x/config.json", tensor_shapes=safetensors_header_shapes(good / "model.safetensors"))
    assert label_name_problems(LABELS, 3) == []


def test_every_interpolation_accepted_is_one_timm_knows():
    from timm.data.transforms import str_to_interp_mode

    for name in INTERPOLATIONS:
        str_to_interp_mode(name)


def test_label_names_are_escaped_when_printed():
    result = ImagePrediction("photos/a\x1b[2J.jpg", predictions=[{"label": "rose\nOK", "score": 1.0}])
    text = format_predictions([result])
    assert "\x1b" not in text and text.count("\n") == 1 and "rose\\nOK" in text
    report = format_report(
        {"label_names": ["a\x1b[31m", "b"], "confusion_matrix": [[1, 0], [0, 1]], "num_skipped": 0, "top1": 1.0,
         "loss": 0.1, "model": "m", "data": "d\n", "split": "validation", "num_samples": 2}
    )  # fmt: skip
    assert "\x1b" not in report and "a\\x1b[31m" in report and "d\\n" in report


# ---- the architecture it builds: on the meta device first -------------------------------------------------------
def tiny_weights_for(architecture: str, folder: Path, **config_changes) -> Path:
    """A folder whose config names ``architecture`` and whose model.safetensors is ~100 bytes (a 0-channel first
    conv): the header checks pass it (no classifier, the first conv present), the model it names is large."""
    from safetensors.torch import save_file

    folder.mkdir()
    save_file({"patch_embed.proj.weight": torch.zeros(0, 3, 16, 16)}, folder / "model.safetensors")
    config = {"architecture": architecture, "num_classes": 0, "pretrained_cfg": {"input_size": [3, 224, 224]},
              **config_changes}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def nothing_is_allocated(monkeypatch: pytest.MonkeyPatch) -> list:
    """Fail the test if a model is built anywhere but on the meta device, or a weight tensor read."""
    real_create = timm.create_model
    built: list[str] = []

    def create_on_meta_only(*args, **kwargs):
        model = real_create(*args, **kwargs)
        devices = {tensor.device.type for tensor in model.state_dict().values()}
        if devices != {"meta"}:
            raise AssertionError(f"{args[0]} was built on {devices} before it was checked")
        built.append(args[0])
        return model

    def refuse(*args, **kwargs):
        raise AssertionError("the weights loader ran")

    monkeypatch.setattr(timm, "create_model", create_on_meta_only)
    monkeypatch.setattr(hubclf.hub.safetensors.torch, "load_file", refuse)
    return built


def test_a_tiny_file_naming_a_huge_architecture_is_refused_on_the_meta_device(tmp_path, nothing_is_allocated):
    """A 116-byte model.safetensors next to a config naming vit_large passed the header checks, and the full model
    was built (+0.94 GB, 19 s) before loading failed."""
    folder = tiny_weights_for("vit_large_patch16_224", tmp_path / "vit")
    assert (folder / "model.safetensors").stat().st_size < 120
    with pytest.raises(ConfigError) as error:
        from_pretrained(folder)
    message = str(error.value)
    assert message.startswith(
        f"{folder}/model.safetensors does not match 'vit_large_patch16_224' as config.json builds it (0 of its "
        "303,301,632 values; nothing was built): 293 missing: blocks.0.attn.proj.bias, "
    )
    assert "and 283 more; 1 mis-shaped: patch_embed.proj.weight: file (0, 3, 16, 16) vs model (1024, 3, 16, 16)" in (
        message
    )
    assert nothing_is_allocated == [f"local-dir:{folder}"]  # built once, on the meta device


def test_the_parameter_budget_is_checked_before_anything_is_allocated(
    good, tmp_path, monkeypatch, nothing_is_allocated
):
    folder = tiny_weights_for("vit_huge_patch14_224", tmp_path / "huge")  # 631M parameters: 2.35 GiB in float32
    with pytest.raises(ConfigError, match=r"builds 'vit_huge_patch14_224' with 630,\d{3},\d{3} parameters and buffers "
                       r"\(2\.3\d GiB\), over the 2\.00 GiB hubclf builds from someone else's folder; if you trust it, "
                       r"set HUBCLF_MAX_PARAM_BYTES to more bytes$"):  # fmt: skip
        from_pretrained(folder)
    monkeypatch.setenv("HUBCLF_MAX_PARAM_BYTES", "1_000_000")  # configurable: here below the good model's 9.9 MB
    with pytest.raises(ConfigError, match=r"hubclf_alexnet_slim' with 2,47\d,\d{3} parameters"):
        from_pretrained(good)
    with pytest.raises(ConfigError, match="over the"):
        from_pretrained(good, max_param_bytes=1000)
    monkeypatch.setenv("HUBCLF_MAX_PARAM_BYTES", "lots")
    with pytest.raises(ConfigError, match="HUBCLF_MAX_PARAM_BYTES='lots' is not a number of bytes"):
        from_pretrained(good)


def test_a_good_folder_is_checked_on_the_meta_device_then_built_once(good, monkeypatch):
    real_create, devices = timm.create_model, []

    def recording(*args, **kwargs):
        model = real_create(*args, **kwargs)
        devices.append(next(model.parameters()).device.type)
        return model

    monkeypatch.setattr(timm, "create_model", recording)
    assert from_pretrained(good).label_names == LABELS
    assert devices == ["meta", "cpu"]


def test_an_over_budget_hub_model_is_refused_before_its_weights_are_downloaded(use_hub, new_repo_id, good, monkeypatch):
    repo_id = new_repo_id("big")
    api = HfApi(token=use_hub.token)
    api.create_repo(repo_id)
    for name in ("config.json", "model.safetensors"):
        api.upload_file(path_or_fileobj=str(good / name), path_in_repo=name, repo_id=repo_id)
    monkeypatch.setenv("HUBCLF_MAX_PARAM_BYTES", "1000000")
    since = len(use_hub.requests)
    with pytest.raises(ConfigError, match="over the"):
        from_pretrained(repo_id)
    assert not any("model.safetensors" in r.path for r in use_hub.requests[since:])


@pytest.mark.parametrize("case", ["hubclf_hyperparameters_a_list", "strategy_rows_nested"])
def test_a_bad_card_record_is_one_line_on_push_not_an_internal_error(good, tmp_path, case, capsys):
    """Someone's config.json with an unvalidated hubclf/strategy block reached the card renderer on push."""
    break_it, _, message = next(c[1:] for c in CASES if c[0] == case)
    folder = copy_folder(good, tmp_path / "hostile")
    break_it(folder)
    assert main(["push", str(folder), "me/anything", "--no-verify"]) == 2  # refused before any request
    err = capsys.readouterr().err
    assert err.startswith("hubclf push: error: ") and "internal error" not in err and err.count("\n") == 1
    assert re.search(message, err), err
