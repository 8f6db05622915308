"""hubclf.train.loop end to end on CPU: every freeze mode trains, saves and reloads; resume is bit-identical;
unreadable images are skipped; ``accelerate launch`` on 2 processes matches 1 process and pushes once.

Everything runs on a generated 5-class colour task (96×64 images, 8 train + 3 validation per class) with a
slim AlexNet whose "pretrained" weights are a random init saved to a file, so nothing is downloaded.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
import yaml
from huggingface_hub import HfApi
from safetensors.torch import load_file, save_file

import hubclf
from hubclf.data.images import BadImageError
from hubclf.train import TrainConfig, TrainingInterrupted, train
from hubclf.train.checkpoints import list_checkpoints
from tests.image_folders import HEIGHT, WIDTH, add_bad_images, make_image_folder
from tests.launch import cpu_launch_command

loop = importlib.import_module("hubclf.train.loop")
REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 5


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("colours")
    make_image_folder(root, NUM_CLASSES, per_class=8, split="train")
    make_image_folder(root, NUM_CLASSES, per_class=3, split="validation", seed=1)
    return root


def pretrained_stand_in(model_name: str, path: Path) -> Path:
    """Stand-in for the torchvision download: a seeded random backbone in timm's key layout, He-initialised so
    that, like trained weights and unlike PyTorch's default init, its features keep their scale through depth."""
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=0)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    save_file(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def backbone_weights(tmp_path_factory) -> Path:
    return pretrained_stand_in("hubclf_alexnet_slim", tmp_path_factory.mktemp("weights") / "alexnet_slim.safetensors")


def make_config(tmp_path: Path, data: Path, weights: Path | None, name: str, **overrides) -> TrainConfig:
    settings = dict(
        model="hubclf_alexnet_slim",
        data=str(data),
        output_dir=str(tmp_path / name),
        weights=str(weights) if weights else None,
        img_size=(HEIGHT, WIDTH),
        epochs=2,
        batch_size=8,
        lr=3e-3,
        warmup_epochs=0,
        num_workers=0,
        seed=0,
    )
    return TrainConfig(**{**settings, **overrides})


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def weights_of(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


# ---- freeze modes ---------------------------------------------------------------------------------------------
def test_full_fine_tuning_trains_saves_and_reloads(tmp_path, image_folder, backbone_weights):
    config = make_config(tmp_path, image_folder, backbone_weights, "full", epochs=3)
    result = train(config)

    assert result.best_metrics["top1"] >= 0.6  # chance is 0.2
    assert set(result.best_metrics) >= {"loss", "top1", "top5", "per_class_accuracy", "confusion_matrix"}
    assert [row["epoch"] for row in read_jsonl(result.metrics_file)] == [1, 2, 3]
    assert [row["stage"] for row in result.history] == ["full"] * 3

    reloaded = hubclf.from_pretrained(result.best_model_dir)
    assert reloaded.label_names == [f"class_{i}" for i in range(NUM_CLASSES)]
    assert reloaded.pretrained_cfg["input_size"] == (3, HEIGHT, WIDTH)
    card = (result.best_model_dir / "README.md").read_text()
    assert f"{result.best_metrics['top1']:.4g}"[:4] in card  # the card reports the validation accuracy
    assert card.count("| 3 |") >= 1  # ...and the whole run's per-epoch table, epoch 3 included
    assert len(list_checkpoints(result.output_dir)) == 2  # keep_checkpoints=2 of 3
    with pytest.raises(ValueError, match="already holds a training run.*--resume latest"):
        train(config)  # a second run into the same folder would mix up the checkpoints

    # The saved model is itself a starting point: its backbone is kept, a new 3-class classifier replaces its head.
    three = make_image_folder(tmp_path / "three_classes", 3, per_class=4)
    again = train(
        make_config(tmp_path, three, None, "again", model=str(result.best_model_dir), freeze="backbone", epochs=1,
                    val_split=0.25)
    )  # fmt: skip
    saved, continued = weights_of(result.best_model_dir), weights_of(again.final_model_dir)
    assert torch.equal(saved["features.0.weight"], continued["features.0.weight"])
    assert continued["head.fc.weight"].shape[0] == 3
    hubclf_block = json.loads((again.final_model_dir / "config.json").read_text())["hubclf"]
    assert hubclf_block["base_model"] == "best (local model folder)"
    assert hubclf_block["dataset"] == "three_classes (local image folder)"


def test_frozen_backbone_trains_only_the_classifier_and_keeps_batchnorm_stats(tmp_path, image_folder):
    weights = pretrained_stand_in("hubclf_vgg11_bn_slim", tmp_path / "vgg_bn.safetensors")
    config = make_config(
        tmp_path, image_folder, weights, "frozen", model="hubclf_vgg11_bn_slim", img_size=(48, 32), epochs=1,
        lr=1e-2, freeze="backbone", crop_pct=1.0, augment="light",
    )  # fmt: skip
    result = train(config)  # augmentation on (the default recipe would cache features): the uncached frozen path

    before, after = load_file(weights), weights_of(result.final_model_dir)
    assert any("running_mean" in key for key in before)
    for key, tensor in before.items():
        assert torch.equal(tensor, after[key]), f"{key} changed although the backbone was frozen"
    assert {key for key in after if key not in before} == {"head.fc.weight", "head.fc.bias"}
    config_json = json.loads((result.final_model_dir / "config.json").read_text())
    assert config_json["hubclf"]["freeze"] == "backbone"
    assert config_json["hubclf"]["trainable_params"] == 512 * NUM_CLASSES + NUM_CLASSES
    # --crop-pct is saved with the model, so predict/eval and timm resize as validation did.
    assert config_json["pretrained_cfg"]["crop_pct"] == config_json["hubclf"]["hyperparameters"]["crop_pct"] == 1.0


def test_tensorboard_tracker_logs_every_epoch(tmp_path, image_folder, backbone_weights):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is installed by scripts/setup.sh")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = make_config(
        tmp_path, image_folder, backbone_weights, "tb", freeze="backbone", augment=False, log_with=["tensorboard"],
    )  # fmt: skip
    result = train(config)
    runs = [EventAccumulator(str(path.parent)).Reload() for path in result.output_dir.rglob("events.out.tfevents.*")]
    scalars = [run for run in runs if "val_top1" in run.Tags()["scalars"]]
    assert len(scalars) == 1, f"expected one TensorBoard run with val_top1 under {result.output_dir}"
    top1 = [event.value for event in scalars[0].Scalars("val_top1")]
    assert top1 == pytest.approx([row["val_top1"] for row in result.history])


def test_partial_freeze_and_staged_unfreezing(tmp_path, image_folder, backbone_weights):
    partial = train(make_config(tmp_path, image_folder, backbone_weights, "partial", freeze="features.3", epochs=1))
    start, end = load_file(backbone_weights), weights_of(partial.final_model_dir)
    assert torch.equal(start["features.3.weight"], end["features.3.weight"])  # frozen up to features.3
    assert not torch.equal(start["features.6.weight"], end["features.6.weight"])  # fine-tuned after it

    staged = train(
        make_config(tmp_path, image_folder, backbone_weights, "staged", freeze="backbone", unfreeze_after=1, epochs=2)
    )
    assert [row["stage"] for row in staged.history] == ["head", "full"]
    assert not torch.equal(start["features.0.weight"], weights_of(staged.final_model_dir)["features.0.weight"])
    assert staged.best_metrics["top1"] >= 0.6


@pytest.mark.parametrize("model_ema", [False, True], ids=["model", "ema"])
def test_best_links_the_checkpoints_weights_file_when_it_holds_the_same_weights(
    tmp_path, image_folder, backbone_weights, monkeypatch, model_ema
):
    """An epoch's checkpoint is written from the live tensors while the epoch is evaluated (no copy of the state);
    its best/ hard-links the checkpoint's model.safetensors when that holds best/'s weights, and writes the EMA's."""
    from hubclf.train import checkpoints

    def no_copies(*args, **kwargs):
        raise AssertionError("an epoch's checkpoint copied the state")

    monkeypatch.setattr(checkpoints, "cpu_copies", no_copies)
    config = make_config(tmp_path, image_folder, backbone_weights, f"link_{model_ema}", epochs=1, model_ema=model_ema)
    result = train(config)
    (checkpoint,) = list_checkpoints(result.output_dir)
    best, saved = result.best_model_dir / "model.safetensors", checkpoint / "model.safetensors"
    assert os.path.samefile(best, saved) is (not model_ema)
    assert hubclf.from_pretrained(result.best_model_dir).num_classes == NUM_CLASSES


# ---- resume -----------------------------------------------------------------------------------------------------
def interrupt_after_checkpoint(monkeypatch, number: int = 1) -> None:
    """Deliver SIGINT right after the ``number``-th checkpoint, as a user pressing Ctrl-C would (an epoch's ends
    with ``finish_checkpoint``, one inside an epoch is ``save_checkpoint``)."""
    calls = []

    def then_interrupt(original):
        def save_then_interrupt(*args, **kwargs):
            path = original(*args, **kwargs)
            calls.append(path)
            if len(calls) == number:
                signal.raise_signal(signal.SIGINT)
            return path

        return save_then_interrupt

    for name in ("save_checkpoint", "finish_checkpoint"):
        monkeypatch.setattr(loop, name, then_interrupt(getattr(loop, name)))


@pytest.mark.parametrize("where", ["epoch_end", "mid_epoch"])
def test_resume_is_bit_identical_to_an_uninterrupted_run(
    tmp_path, image_folder, backbone_weights, monkeypatch, caplog, where
):
    # Full fine-tuning with augmentation and dropout: every RNG stream matters.
    reference = train(make_config(tmp_path, image_folder, backbone_weights, "reference"))

    extra = {"save_every_steps": 3} if where == "mid_epoch" else {}  # 5 steps per epoch: step 3 is mid-epoch
    config = make_config(tmp_path, image_folder, backbone_weights, "resumed", **extra)
    with monkeypatch.context() as patch:
        interrupt_after_checkpoint(patch)
        with pytest.raises(TrainingInterrupted) as stopped:
            train(config)
    saved = json.loads((stopped.value.checkpoint / "trainer_state.json").read_text())
    # Mid-epoch, the signal lands just after step 3's checkpoint and the run stops after the next step.
    assert (saved["epoch"], saved["batches_done"]) == ((0, 4) if where == "mid_epoch" else (1, 0))

    config.resume = "latest"
    caplog.set_level("INFO", logger="hubclf.train")
    resumed = train(config)
    where_it_stopped = f"epoch {saved['epoch'] + 1}, step {saved['global_step']}"
    assert f"resumed from {stopped.value.checkpoint}: {where_it_stopped}" in caplog.text
    expected, actual = weights_of(reference.final_model_dir), weights_of(resumed.final_model_dir)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    assert strip(read_jsonl(resumed.metrics_file)) == strip(read_jsonl(reference.metrics_file))


# ---- bad input ----------------------------------------------------------------------------------------------------
def test_unreadable_images_are_skipped_counted_and_listed(tmp_path, image_folder, backbone_weights, caplog):
    data = tmp_path / "with_bad_files"
    make_image_folder(data, 3, per_class=4, split="train")
    make_image_folder(data, 3, per_class=2, split="validation", seed=1)
    bad = add_bad_images(data / "train" / "class_0") + add_bad_images(data / "validation" / "class_1")

    result = train(make_config(tmp_path, data, backbone_weights, "skip", epochs=1))
    assert sorted(result.bad_images) == sorted(str(p) for p in bad)
    assert read_jsonl(result.metrics_file)[0]["bad_images"] == 6
    assert read_jsonl(result.metrics_file)[0]["val_num_samples"] == 6  # the 3 broken eval files left out
    assert all(path.name in caplog.text for path in bad)

    with pytest.raises(BadImageError, match=r"cannot read image .*(empty|notes|truncated)"):
        train(make_config(tmp_path, data, backbone_weights, "error", epochs=1, on_bad_image="error"))


def test_missing_pretrained_weights_are_an_error_not_random_init(tmp_path, image_folder):
    config = make_config(tmp_path, image_folder, tmp_path / "missing.safetensors", "missing", epochs=1)
    with pytest.raises((FileNotFoundError, RuntimeError, OSError)):
        train(config)
    assert not (tmp_path / "missing" / "best").exists()


# ---- CLI, accelerate launch, push -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_processes_match_one_and_only_the_main_process_writes_and_pushes(
    tmp_path, image_folder, backbone_weights, use_hub, new_repo_id
):
    # Frozen backbone without augmentation: deterministic, so 2×4 images per step must equal 1×8.
    settings = {
        "model": "hubclf_alexnet_slim",
        "data": str(image_folder),
        "weights": str(backbone_weights),
        "img_size": [HEIGHT, WIDTH],
        "freeze": "backbone",
        "augment": False,
        "epochs": 3,  # at 2, seeds 0-4 reached 40-80% (chance: 20%); at 3, 60-80%
        "lr": 1e-2,
        "warmup_epochs": 0,
        "num_workers": 0,
        "seed": 0,
        "mixed_precision": "no",  # `auto` may pick bf16 on this CPU: 2×4 would then equal 1×8 only to bf16 precision
        "feature_dtype": "float32",  # the one-process run caches features: stored as float16 they equal 2×4 to 1e-3
    }
    config_file = tmp_path / "train.yaml"
    config_file.write_text(yaml.safe_dump(settings))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_TOKEN": use_hub.token,
        "HF_ENDPOINT": use_hub.endpoint,
        "HF_HUB_DISABLE_XET": "1",
    }
    hubclf_train = ["-m", "hubclf.cli", "train", "--config", str(config_file)]

    single = subprocess.run(
        [sys.executable, *hubclf_train, "--batch-size", "8", "--output-dir", str(tmp_path / "one")],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]

    repo_id = new_repo_id("ddp-train")
    launch = cpu_launch_command(2)
    double = subprocess.run(
        [*launch, *hubclf_train, "--batch-size", "4", "--cache-features", "off", "--output-dir", str(tmp_path / "two"),
         "--push-to-hub", repo_id],
        env={**env, "ACCELERATE_USE_CPU": "1"}, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert double.returncode == 0, double.stderr[-3000:]
    saved = json.loads((tmp_path / "two" / "best" / "config.json").read_text())
    assert saved["hubclf"]["hyperparameters"]["processes"] == 2

    # 15 eval images over 2 processes: the padded duplicate must not be counted.
    one, two = read_jsonl(tmp_path / "one" / "metrics.jsonl"), read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert len(two) == 3  # one writer: a second process would have doubled the lines
    for a, b in zip(one, two, strict=True):
        assert b["val_num_samples"] == 15
        for key in ("val_top1", "val_top5", "val_per_class_accuracy", "val_confusion_matrix"):
            assert a[key] == b[key], key
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    assert two[-1]["val_top1"] >= 0.4  # it learned: twice chance, with a margin for the data order

    commits = HfApi(endpoint=use_hub.endpoint, token=use_hub.token).list_repo_commits(repo_id)
    assert sum("hubclf train" in commit.title for commit in commits) == 1  # pushed once, by the main process
    card = HfApi(endpoint=use_hub.endpoint, token=use_hub.token).hf_hub_download(repo_id, "README.md")
    text = Path(card).read_text()
    assert "accuracy" in text and "val_top1" in text


SYNC_CHECK = """
import importlib, sys
import torch
loop = importlib.import_module("hubclf.train.loop")
prepare = loop.prepare_stage
seen = {}

def prepare_and_remember(accelerator, model, *args, **kwargs):
    seen["model"] = model
    return prepare(accelerator, model, *args, **kwargs)

def checking_sync(save):  # every checkpoint: an epoch's (start_checkpoint), one inside an epoch (save_checkpoint)
    def save_after_checking_sync(accelerator, output_dir, state, *args, **saved_with):
        weights = torch.cat([p.detach().flatten() for p in seen["model"].parameters()])[None]
        everyone = accelerator.gather(weights)
        assert torch.equal(everyone[0], everyone[1]), f"processes diverged at step {state.global_step}"
        accelerator.print(f"in sync: stage {state.stage} step {state.global_step}")
        return save(accelerator, output_dir, state, *args, **saved_with)
    return save_after_checking_sync

loop.prepare_stage = prepare_and_remember
loop.start_checkpoint, loop.save_checkpoint = checking_sync(loop.start_checkpoint), checking_sync(loop.save_checkpoint)
from hubclf.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_staged_unfreezing_keeps_processes_in_sync_under_ddp(tmp_path, image_folder, backbone_weights):
    # If the backbone were unfrozen inside the DDP wrapper built for the head stage, its gradients would never be
    # averaged and each process would drift off with its own backbone. prepare_stage re-wraps; check every epoch.
    script = tmp_path / "train_checking_sync.py"
    script.write_text(SYNC_CHECK)
    launch = cpu_launch_command(2)
    args = [
        "train", "--model", "hubclf_alexnet_slim", "--data", str(image_folder), "--weights", str(backbone_weights),
        "--img-size", str(HEIGHT), str(WIDTH), "--freeze", "backbone", "--unfreeze-after", "1", "--epochs", "2",
        "--batch-size", "4", "--num-workers", "0", "--warmup-epochs", "0", "--output-dir", str(tmp_path / "staged"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    run = subprocess.run(
        [*launch, str(script), *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "in sync: stage head step 5" in run.stdout
    assert "in sync: stage full step 10" in run.stdout


def test_constant_learning_rate_with_sched_none(tmp_path: Path, image_folder: Path, backbone_weights: Path) -> None:
    """timm's create_scheduler_v2 returns no scheduler for --sched none: the LR then stays at --lr."""
    result = train(make_config(tmp_path, image_folder, backbone_weights, "constant", sched="none", epochs=1))
    assert [record["lr"] for record in result.history] == [3e-3]


# ---- diverging runs, strict JSON, lock, signals ---------------------------------------------------------------------
def strict_json_loads(text: str):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_a_diverging_run_skips_non_finite_steps_stops_clearly_and_keeps_best_loadable(
    tmp_path, image_folder, backbone_weights
):
    # lr 1e9: the first update blows the weights up, every later loss is NaN/inf. 5 steps per epoch: epoch 1
    # finishes (best/ is written), the 6th non-finite step in a row, in epoch 2, stops the run.
    config = make_config(tmp_path, image_folder, backbone_weights, "diverging", lr=1e9, epochs=3, max_nonfinite_steps=6)
    with pytest.raises(loop.TrainingDiverged, match=r"training diverged: 6 optimizer steps in a row .*NaN/inf") as e:
        train(config)
    assert "holds the model of epoch 1" in str(e.value) and "--lr" in str(e.value)
    output_dir = Path(config.output_dir)
    rows = [strict_json_loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["nonfinite_steps"] >= 4
    assert rows[0]["val_loss"] is None  # NaN, stored as null
    best = hubclf.from_pretrained(output_dir / "best")  # loadable, metrics and all
    assert best.num_classes == NUM_CLASSES
    config_json = strict_json_loads((output_dir / "best" / "config.json").read_text())
    assert config_json["hubclf"]["eval_results"]["loss"] is None
    for checkpoint in list_checkpoints(output_dir):
        strict_json_loads((checkpoint / "trainer_state.json").read_text())
    # Skipped steps were not applied: the weights are finite.
    assert all(torch.isfinite(t).all() for t in weights_of(output_dir / "best").values())


def test_a_second_run_on_a_locked_output_folder_is_refused_and_a_stale_lock_taken_over(
    tmp_path, image_folder, backbone_weights, caplog
):
    import fcntl

    from hubclf.train.safety import OutputDirLocked

    config = make_config(tmp_path, image_folder, backbone_weights, "locked", epochs=1, max_nonfinite_steps=1)
    lock_file = Path(config.output_dir) / ".lock"
    lock_file.parent.mkdir(parents=True)
    lock_file.write_text('{"pid": 999999, "host": "elsewhere", "started": "earlier"}\n')
    with open(lock_file) as held:  # a live run holds the flock
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(OutputDirLocked, match="in use by another hubclf train .*pid 999999 on elsewhere"):
            train(config)
    assert not list(Path(config.output_dir).glob("checkpoints"))
    # The holder is gone (the kernel dropped its flock): the lock file it left is stale, taken over and logged.
    caplog.set_level("WARNING", logger="hubclf.train.safety")
    train(config)
    assert "taking over the stale lock" in caplog.text and "pid 999999" in caplog.text
    assert lock_file.read_text() == ""  # released at the end


@pytest.mark.parametrize("phase", ["data", "final"])
def test_a_signal_outside_the_epoch_loop_stops_at_the_next_safe_point(
    tmp_path, image_folder, backbone_weights, monkeypatch, phase
):
    config = make_config(tmp_path, image_folder, backbone_weights, f"signal_{phase}", epochs=1, push_to_hub="me/x")
    real = {"data": loop.load_training_data, "final": loop.refresh_best_card}[phase]

    def send_sigterm_then(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` would, in the middle of this phase
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, {"data": "load_training_data", "final": "refresh_best_card"}[phase], send_sigterm_then)
    monkeypatch.setattr(loop, "push_to_hub", lambda *a, **k: pytest.fail("pushed after SIGTERM"))
    with pytest.raises(TrainingInterrupted) as stopped:
        train(config)
    if phase == "data":
        assert stopped.value.checkpoint is None and "before its first checkpoint" in str(stopped.value)
    else:  # the final save completed, the push did not start; --resume latest pushes
        assert stopped.value.checkpoint == list_checkpoints(config.output_dir)[-1]
        assert hubclf.from_pretrained(Path(config.output_dir) / "final").num_classes == NUM_CLASSES
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), float("-inf")])
def test_one_nonfinite_gradient_element_skips_the_step_and_large_finite_ones_do_not(bad_value):
    one_process = SimpleNamespace(scaler=None, num_processes=1)
    layer = torch.nn.Linear(4, 3)
    layer.weight.grad = torch.full_like(layer.weight, 1e30)  # finite, and 12 of them sum to 1.2e31: still finite
    layer.bias.grad = torch.zeros_like(layer.bias)
    finite_loss = torch.tensor(False)
    assert loop._all_finite(one_process, layer, finite_loss)
    layer.bias.grad[1] = bad_value
    assert not loop._all_finite(one_process, layer, finite_loss)
    layer.bias.grad.zero_()
    assert not loop._all_finite(one_process, layer, torch.tensor(True))  # a non-finite loss alone skips it too


def test_best_gets_its_pictures_once_at_the_end_with_the_whole_run(tmp_path):
    from hubclf.train import outputs
    from hubclf.train.checkpoints import TrainerState

    rows = [{"epoch": e, "stage": "full", "train_loss": 1 / e, "val_loss": 1 / e, "val_top1": v,
             "val_confusion_matrix": [[1, 0], [0, 1]]} for e, v in ((1, 0.6), (2, 0.5))]  # fmt: skip
    data = SimpleNamespace(label_names=["a", "b"])
    best = hubclf.save_pretrained(  # as the loop saves a new best during the run: no pictures yet
        timm.create_model("hubclf_alexnet_slim", num_classes=2, img_size=(HEIGHT, WIDTH)), tmp_path / "best",
        label_names=data.label_names, epoch_metrics=rows[:1], images={}, images_skipped=outputs.BEST_PICTURES_LATER,
    )  # fmt: skip
    assert not list(best.glob("*.png")) and outputs.BEST_PICTURES_LATER in (best / "README.md").read_text()
    saved = {p.name: p.read_bytes() for p in best.iterdir()}

    outputs.refresh_best_card(best, data, TrainerState(best_epoch=1, history=rows))  # a later epoch was worse
    epochs = json.loads((best / "config.json").read_text())["hubclf"]["epoch_metrics"]
    assert [row["epoch"] for row in epochs] == [1, 2] and "| 2 |" in (best / "README.md").read_text()
    assert {p.name for p in best.glob("*.png")} == {"confusion_matrix.png", "training_curves.png"}
    assert outputs.BEST_PICTURES_LATER not in (best / "README.md").read_text()
    assert (best / "model.safetensors").read_bytes() == saved["model.safetensors"]


def test_cached_images_train_exactly_as_decoding_every_epoch_and_too_big_a_cache_is_skipped(
    tmp_path, image_folder, backbone_weights, caplog, monkeypatch
):
    caplog.set_level("INFO", logger="hubclf.train")
    common = dict(augment="none", num_workers=1, epochs=2)
    cached = train(make_config(tmp_path, image_folder, backbone_weights, "cached", **common))
    assert "image cache: the decoded" in caplog.text and "40 train + 15 eval images" in caplog.text
    decoded = train(make_config(tmp_path, image_folder, backbone_weights, "decoded", cache_images="off", **common))
    expected, actual = weights_of(decoded.final_model_dir), weights_of(cached.final_model_dir)
    assert all(torch.equal(expected[key], actual[key]) for key in expected)

    caplog.clear()
    with monkeypatch.context() as patch:
        patch.setattr("hubclf.train.setup.shared_memory_budget", lambda processes: 1000)  # less than one image
        train(make_config(tmp_path, image_folder, backbone_weights, "no_room", **common))
    assert "image cache off: the decoded pixels of 40 train + 15 eval images would take" in caplog.text

    caplog.clear()  # with augmentation, only the validation images are the same every epoch
    train(make_config(tmp_path, image_folder, backbone_weights, "augmented", num_workers=0, epochs=1))
    assert "pixels of 15 eval images stay in shared memory" in caplog.text


def test_the_worker_count_does_not_change_the_run(tmp_path, image_folder, backbone_weights):
    """Data order, augmentation and dropout come from (seed, epoch) and the seeded global RNG alone: the DataLoader's
    own draws (a worker seed per epoch without workers, once with persistent ones) must not shift them."""
    runs = {
        workers: train(make_config(tmp_path, image_folder, backbone_weights, f"w{workers}", num_workers=workers))
        for workers in (0, 2)
    }  # augmented (the default recipe), 2 epochs: epoch 2 is where the old shuffle differed
    expected, actual = (weights_of(runs[workers].final_model_dir) for workers in (0, 2))
    assert all(torch.equal(expected[key], actual[key]) for key in expected)


def test_auto_precision_left_to_accelerate_is_logged_and_recorded_as_accelerate_chose_it(
    tmp_path, image_folder, monkeypatch, caplog
):
    """On a GPU, or under `accelerate launch --mixed_precision`, auto defers to Accelerate: the log and the model's
    config.json then name Accelerate's choice (the bench reads it from the log), not "Accelerate default"."""
    from accelerate.state import AcceleratorState

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # what `accelerate launch --mixed_precision no` sets
    caplog.set_level("INFO", logger="hubclf.train")
    AcceleratorState._reset_state(reset_partial_state=True)  # else auto follows an earlier test's run
    try:
        train(make_config(tmp_path, image_folder, None, "auto", pretrained=False, epochs=1, mixed_precision="auto"))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert "--mixed-precision auto: left to Accelerate (ACCELERATE_MIXED_PRECISION=no" in caplog.text
    assert "mixed precision: no, Accelerate's setting" in caplog.text
    saved = json.loads((tmp_path / "auto" / "final" / "config.json").read_text())
    assert saved["hubclf"]["hyperparameters"]["mixed_precision"] == "no"


def test_a_kept_process_group_finishes_the_trackers_and_leaves_the_group_to_the_caller():
    def end_training(accelerator, keep_process_group):
        loop._Run(None, accelerator, None, None, keep_process_group)._end_training()

    calls = []

    class Tracker:
        def finish(self):
            calls.append("tracker finished")

    class FakeAccelerator:  # the two things train() ends with: trackers, and end_training's process group
        trackers = [Tracker()]

        def end_training(self):
            calls.append("end_training (destroys the process group)")

    end_training(FakeAccelerator(), keep_process_group=True)
    assert calls == ["tracker finished"]
    end_training(FakeAccelerator(), keep_process_group=False)  # Accelerate's own end_training, all of it
    assert calls == ["tracker finished", "end_training (destroys the process group)"]
