"""Any timm architecture end to end, for two families besides hubclf's: ResNet (BatchNorm) and ConvNeXt (LayerNorm).

``hubclf train`` in every freeze mode, cached features, save, ``predict``/``eval``, push to the local test Hub, a
new head on the pushed model (``--model hf-hub:...``), and the published repo loaded in a fresh process by plain timm
and by 🤗 transformers' pipeline without importing hubclf. Random-init models at 64×48 on a generated 3-class task.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

import hubclf
from hubclf.cli import main
from hubclf.evaluate import evaluate_model
from hubclf.predict import predict
from hubclf.train import TrainConfig, train
from tests.image_folders import make_image_folder
from tests.test_train_loop import pretrained_stand_in

IMG_SIZE = (64, 48)  # H×W; neither architecture takes an img_size argument, so it lives in pretrained_cfg only
NUM_CLASSES = 3
LABELS = [f"class_{i}" for i in range(NUM_CLASSES)]
# architecture -> (a stage end to freeze up to, what that freezes, a parameter after it)
ARCHITECTURES = {
    "resnet18": ("layer2", ("conv1.", "bn1.", "layer1.", "layer2."), "layer3.0.conv1.weight"),
    "convnext_atto": ("stages.1", ("stem.", "stages.0.", "stages.1."), "stages.2.blocks.0.mlp.fc1.weight"),
}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("colours")
    make_image_folder(root, NUM_CLASSES, per_class=6, split="train")
    make_image_folder(root, NUM_CLASSES, per_class=3, split="validation", seed=1)
    return root


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> dict[str, Path]:
    """Seeded random "pretrained" backbones (timm keys, no classifier), one file per architecture."""
    root = tmp_path_factory.mktemp("weights")
    return {arch: pretrained_stand_in(arch, root / f"{arch}.safetensors") for arch in ARCHITECTURES}


def make_config(output_dir: Path, data: Path, model: str, **overrides) -> TrainConfig:
    settings = dict(
        model=model,
        data=str(data),
        output_dir=str(output_dir),
        pretrained=False,
        img_size=IMG_SIZE,
        epochs=2,
        batch_size=6,
        lr=3e-3,
        warmup_epochs=0,
        num_workers=0,
        seed=0,
    )
    return TrainConfig(**{**settings, **overrides})


def classifier_prefix(arch: str) -> str:
    return timm.create_model(arch, num_classes=NUM_CLASSES).pretrained_cfg["classifier"] + "."


def probe_logits(model: torch.nn.Module) -> torch.Tensor:
    x = torch.randn((2, 3, *IMG_SIZE), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        return model.eval()(x)


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def fine_tuned(request, tmp_path_factory, image_folder):
    """One full fine-tuning run per architecture, shared by the tests that read its output."""
    arch = request.param
    result = train(make_config(tmp_path_factory.mktemp(arch) / "run", image_folder, arch))
    return arch, result


# ---- train, save, reload, predict, eval -----------------------------------------------------------------------
def test_fine_tuned_model_saves_a_config_timm_can_build_and_reloads(fine_tuned):
    arch, result = fine_tuned
    best = result.best_model_dir
    assert [row["stage"] for row in result.history] == ["full", "full"]
    config = json.loads((best / "config.json").read_text())
    assert config["architecture"] == arch and config["label_names"] == LABELS
    assert config["pretrained_cfg"]["input_size"] == [3, *IMG_SIZE]
    assert "img_size" not in config["model_args"]  # ResNet/ConvNeXt constructors reject it
    # Fields that described the source weights' 224/288 sizes are gone.
    assert all(config["pretrained_cfg"].get(k) is None for k in ("pool_size", "test_input_size", "test_crop_pct"))
    timm.create_model(config["architecture"], num_classes=config["num_classes"], **config["model_args"])

    reloaded = hubclf.from_pretrained(best)
    assert reloaded.label_names == LABELS and reloaded.pretrained_cfg["input_size"] == (3, *IMG_SIZE)
    plain = timm.create_model(f"local-dir:{best}", pretrained=True)
    torch.testing.assert_close(probe_logits(plain), probe_logits(reloaded), rtol=0, atol=0)
    assert timm.data.resolve_data_config(model=plain)["input_size"] == (3, *IMG_SIZE)
    card = (best / "README.md").read_text()
    assert f"`{arch}` trained from random initialisation" in card and f"`{arch}` ships with timm" in card


def test_predict_and_eval_match_training_validation(fine_tuned, image_folder, capsys):
    arch, result = fine_tuned
    best = result.best_model_dir
    evaluation = evaluate_model(best, str(image_folder))
    assert evaluation["num_samples"] == NUM_CLASSES * 3
    assert evaluation["top1"] == result.best_metrics["top1"]  # the same images, transforms and weights
    assert evaluation["loss"] == pytest.approx(result.best_metrics["loss"], abs=1e-5)

    predictions = predict(best, [image_folder / "validation"], top_k=2)
    assert len(predictions) == NUM_CLASSES * 3 and all(p.error is None for p in predictions)
    assert all({q["label"] for q in p.predictions} <= set(LABELS) for p in predictions)
    right = sum(p.predictions[0]["label"] == Path(p.path).parent.name for p in predictions)
    assert right / len(predictions) == pytest.approx(evaluation["top1"])

    assert main(["eval", str(best), "--data", str(image_folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == evaluation["top1"]
    assert main(["predict", str(best), str(image_folder / "validation" / "class_0" / "0.png")]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("0.png")


# ---- freeze modes ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_frozen_backbone_cached_equals_uncached_and_keeps_the_backbone(arch, tmp_path, image_folder, stand_ins):
    def run(cache: str):
        config = make_config(
            tmp_path / cache, image_folder, arch, pretrained=True, weights=str(stand_ins[arch]), freeze="backbone",
            augment=False, cache_features=cache, lr=1e-2, feature_dtype="float32",  # float16: tested elsewhere
        )  # fmt: skip
        return train(config)

    uncached, cached = run("off"), run("memory")
    before, prefix = load_file(stand_ins[arch]), classifier_prefix(arch)
    reference, trained = load_file(uncached.final_model_dir / "model.safetensors"), None
    for result in (uncached, cached):
        trained = load_file(result.final_model_dir / "model.safetensors")
        # Every backbone tensor, BatchNorm running statistics included, is the pretrained one.
        assert set(trained) - set(before) == {prefix + "weight", prefix + "bias"}
        assert all(torch.equal(trained[k], v) for k, v in before.items()), arch
    for key in (prefix + "weight", prefix + "bias"):
        assert torch.allclose(trained[key], reference[key], atol=1e-5), key
    assert cached.final_metrics["top1"] == uncached.final_metrics["top1"]
    assert cached.final_metrics["loss"] == pytest.approx(uncached.final_metrics["loss"], abs=1e-5)
    saved = json.loads((cached.final_model_dir / "config.json").read_text())["hubclf"]
    assert saved["base_model"] == f"{arch} ({stand_ins[arch].name})" and saved["freeze"] == "backbone"


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_freeze_up_to_a_stage_keeps_it_and_everything_before(arch, tmp_path, image_folder, stand_ins):
    stage, frozen_prefixes, after = ARCHITECTURES[arch]
    config = make_config(tmp_path, image_folder, arch, pretrained=True, weights=str(stand_ins[arch]), freeze=stage)
    result = train(config)
    before, trained = load_file(stand_ins[arch]), load_file(result.final_model_dir / "model.safetensors")
    frozen = [k for k in before if k.startswith(frozen_prefixes)]
    # The stage's submodules (its blocks' convs and norms) are frozen with it, not only its direct parameters.
    assert any(k.startswith(stage + ".") and k.count(".") >= 3 for k in frozen)
    assert all(torch.equal(trained[k], before[k]) for k in frozen), arch
    assert not torch.equal(trained[after], before[after])
    if arch == "resnet18":  # BatchNorm: the frozen stage's statistics stay, the trained stage's move
        assert torch.equal(trained["layer2.1.bn2.running_mean"], before["layer2.1.bn2.running_mean"])
        assert not torch.equal(trained["layer3.0.bn1.running_mean"], before["layer3.0.bn1.running_mean"])


def test_staged_unfreezing_trains_the_backbone_after_the_head(tmp_path, image_folder, stand_ins):
    config = make_config(
        tmp_path, image_folder, "convnext_atto", pretrained=True, weights=str(stand_ins["convnext_atto"]),
        freeze="backbone", unfreeze_after=1,
    )  # fmt: skip
    result = train(config)
    assert [row["stage"] for row in result.history] == ["head", "full"]
    before, trained = load_file(stand_ins["convnext_atto"]), load_file(result.final_model_dir / "model.safetensors")
    assert not torch.equal(trained["stem.0.weight"], before["stem.0.weight"])


# ---- Hub: push, plain timm and transformers in a fresh process, a new head on the pushed model ----------------
FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import timm, torch
    from PIL import Image
    from transformers import pipeline

    repo_id, height, width = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    model = timm.create_model(f"hf-hub:{repo_id}", pretrained=True).eval()
    x = torch.randn((2, 3, height, width), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        logits = model(x)
    classifier = pipeline("image-classification", model=repo_id)
    answers = classifier(Image.new("RGB", (width, height), "gray"))
    print(json.dumps({
        "logits": logits.tolist(),
        "label_names": model.pretrained_cfg.get("label_names"),
        "input_size": list(timm.data.resolve_data_config(model=model)["input_size"]),
        "pipeline_labels": sorted(a["label"] for a in answers),
        "hubclf_imported": any(name == "hubclf" or name.startswith("hubclf.") for name in sys.modules),
    }))
    """
)


@pytest.mark.slow  # a fresh Python process that imports torch, timm and transformers
def test_pushed_model_loads_with_plain_timm_and_transformers_in_a_fresh_process(fine_tuned, use_hub, new_repo_id):
    pytest.importorskip("transformers")
    arch, result = fine_tuned
    repo_id = new_repo_id(arch.replace("_", "-"))
    hubclf.push_to_hub(result.best_model_dir, repo_id, token=use_hub.token, verify=True)
    card = ModelCard.load(repo_id).text
    timm_snippet = card.split("With timm alone")[1]
    assert "no hubclf needed" in timm_snippet and "import hubclf" not in timm_snippet

    run = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, repo_id, *map(str, IMG_SIZE)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert not seen["hubclf_imported"]
    assert seen["label_names"] == LABELS and seen["pipeline_labels"] == LABELS
    assert seen["input_size"] == [3, *IMG_SIZE]
    expected = probe_logits(hubclf.from_pretrained(repo_id))
    torch.testing.assert_close(torch.tensor(seen["logits"]), expected, rtol=1e-5, atol=1e-5)


def test_train_a_new_head_on_a_pushed_resnet(use_hub, new_repo_id, tmp_path, stand_ins, capsys):
    base = timm.create_model("resnet18", pretrained=True, num_classes=NUM_CLASSES,
                             pretrained_cfg_overlay=dict(file=str(stand_ins["resnet18"])))  # fmt: skip
    base.pretrained_cfg = {**base.pretrained_cfg, "input_size": (3, *IMG_SIZE)}
    repo_id = new_repo_id("resnet-base")
    hubclf.push_to_hub(base, repo_id, token=use_hub.token, label_names=LABELS)

    two = make_image_folder(tmp_path / "two_classes", 2, per_class=4)
    out = tmp_path / "new-head"
    code = main([
        "train", "--model", f"hf-hub:{repo_id}", "--data", str(two), "--output-dir", str(out), "--img-size", "48", "48",
        "--freeze", "backbone", "--epochs", "1", "--batch-size", "4", "--num-workers", "0", "--val-split", "0.25",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err[-2000:]
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["architecture"] == "resnet18" and config["num_classes"] == 2
    assert config["pretrained_cfg"]["input_size"] == [3, 48, 48] and "img_size" not in config["model_args"]
    assert config["hubclf"]["base_model"] == repo_id
    pushed, trained = base.state_dict(), load_file(out / "best" / "model.safetensors")
    assert trained["fc.weight"].shape == (2, 512)
    assert all(torch.equal(trained[k], v) for k, v in pushed.items() if not k.startswith("fc."))


# ---- clear errors ---------------------------------------------------------------------------------------------
def test_unknown_model_name_is_one_line_and_exit_2_before_any_data_is_read(tmp_path, capsys, use_hub, image_folder):
    code = main(["train", "--model", "resnet81", "--data", str(image_folder), "--output-dir", str(tmp_path / "out")])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "no such architecture" in err and "resnet18" in err and "images" not in captured.out
    # A missing folder needs no timm to be found out: it is reported first, at once.
    code = main(["train", "--model", "resnet81", "--data", str(tmp_path / "no-such-data"),
                 "--output-dir", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "no-such-data: no such directory" in err
    with pytest.raises(ValueError, match="no such model folder.*hf-hub:me/typo/"):
        train(make_config(tmp_path / "out2", image_folder, "me/typo/"))
    # a bare owner/name is a Hub repo, as for predict: looked up there
    with pytest.raises(FileNotFoundError, match="no Hub repo me/typo"):
        train(make_config(tmp_path / "out2", image_folder, "me/typo"))
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


def test_frozen_head_needs_a_classifier_on_the_pre_logits(tmp_path, image_folder):
    # ResNetV2's classifier is a 1×1 conv on the pooled map: training it alone on flat pre-logits cannot work.
    with pytest.raises(ValueError, match=r"resnetv2_18's classifier \(Conv2d\).*--freeze none"):
        train(make_config(tmp_path, image_folder, "resnetv2_18", freeze="backbone", epochs=1))


def test_a_weights_file_missing_backbone_tensors_is_an_error(tmp_path, image_folder, stand_ins):
    # timm loads non-strictly when it replaces the classifier; hubclf does not let the gap stay random silently.
    tensors = load_file(stand_ins["resnet18"])
    renamed = {(f"model.{k}" if k.startswith("layer4.") else k): v for k, v in tensors.items()}
    save_file(renamed, tmp_path / "renamed.safetensors")
    config = make_config(tmp_path / "out", image_folder, "resnet18", pretrained=True,
                         weights=str(tmp_path / "renamed.safetensors"))  # fmt: skip
    with pytest.raises(ValueError, match=r"renamed.safetensors lacks 25 of resnet18's backbone tensors.*layer4\.0"):
        train(config)
