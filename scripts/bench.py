"""How close hubclf comes to the machine's limit, and how it compares with the code it replaces, as ratios measured
side by side in one run.

``python scripts/bench.py`` (the default, ``floor``) answers "how far is an epoch from the model's own compute?"
(issue 24). For each row (AlexNet and VGG11 full fine-tune at 448×224, AlexNet with a frozen backbone and cached
features, and timm's ``resnet18``, all from random weights: nothing is downloaded) it measures, in the same run:

- **the floor**: the run's model, batch, optimizer and precision on synthetic tensors already in memory, best of
  both memory layouts: one epoch's train steps plus its evaluation batches, nothing else;
- **hubclf's steady-state cost per epoch**, end to end with every write included: (wall time of an N-epoch
  ``hubclf train`` − that of a 1-epoch run) / (N − 1), each from process start to exit, on the same data;
- the same figure for **the plain loop** a user would write (torchvision model, ``ImageFolder``, fp32) and for
  **timm's** ``train.py`` with hubclf's settings (``--timm-train-py``; by default taken from a local clone of
  pytorch-image-models when there is one, never shipped here);
- the fraction floor / hubclf, each one's fraction of this machine's matmul peak (a large ``torch.mm``, measured
  here, against the FLOPs of the model counted by ``FlopCounterMode``), start-up (command → first step) against
  ``python -c 'import torch, timm'``, and peak RSS at each phase of a run.

Every configuration runs ``--repeats`` times, interleaved with the others; figures are medians.

    python scripts/bench.py                                   # the floor table (~35 min on 2 cores)
    python scripts/bench.py --rows alexnet-full --repeats 1   # one row
    python scripts/bench.py --scale                           # growth with the data: 1k, 10k, 100k images
    python scripts/bench.py e2e                               # last-epoch img/s against the plain loop
    python scripts/bench.py modes --batch-size 8              # per-step cost of the three modes (hubclf only)
    python scripts/bench.py startup                           # hubclf --help and import hubclf, against torch + timm
    python scripts/bench.py startup --train                   # ... and hubclf train's start-up, collector off or on
    bash scripts/gpu_check.sh                                 # every GPU figure the docs need (< 8 min)
    python scripts/bench.py floor --smoke                     # tiny sizes: checks that everything runs

``e2e`` is the older comparison with the plain loop (last-epoch img/s, writes outside the timed epoch, and the
input pipeline alone); ``modes`` the per-step cost of the three ways to train on a pretrained backbone, through
hubclf's ``apply_stage`` + ``batch_logits``; ``scale`` how time per image, peak RSS and disk grow from 1k to 100k
images (issue 21); ``gpu`` what ``scripts/gpu_check.sh`` runs. See docs/performance.md for the measured tables.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import datetime
import functools
import io
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # this checkout's hubclf, installed or not (a bare GPU host has a copy)
    sys.path.insert(1, str(REPO_ROOT))
ARCHITECTURES = {"alexnet": "hubclf_alexnet", "vgg11": "hubclf_vgg11"}
# Forward + backward FLOPs per image at 448×224 (3 × the forward's multiply-adds × 2), for MFU on GPUs in `e2e`
# (`floor` and `gpu` count them with FlopCounterMode instead).
TRAIN_GFLOP_PER_IMAGE = {"alexnet": 8.13, "vgg11": 90.2}
# Dense peak TFLOP/s by device name fragment and precision (vendor datasheets), for MFU beside the measured peak.
# The datasheet's dense rates (SXM); TF32: what cuDNN's convolutions use for fp32 tensors by default.
PEAK_TFLOPS = {name: {"bf16": 989.0, "tf32": 494.7, "fp32": 67.0} for name in ("H100", "H200")}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MIB = 2**20
# Where timm's train.py comes from when --timm-train-py is not given: a local clone (or bare mirror) of
# huggingface/pytorch-image-models. It is read at run time into a temporary folder, never copied into this repo.
TIMM_MIRROR = os.environ.get("HUBCLF_TIMM_MIRROR", "/work/.mirror/huggingface+pytorch-image-models/repo")


# ---- the peer: the plain loop a user would write -------------------------------------------------------------
def plain_model(name: str, num_classes: int) -> Any:
    """torchvision's ``name`` with a new ``num_classes`` output layer, as the seed's plain answer replaces it."""
    import torch.nn as nn
    import torchvision

    model = getattr(torchvision.models, name)()
    if hasattr(model, "fc"):  # ResNets
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:  # AlexNet, VGG
        model.classifier[6] = nn.Linear(model.classifier[6].in_features, num_classes)
    return model


def peer_epochs(args: argparse.Namespace, mark: Any = None) -> dict[str, Any]:
    """The seed's plain answer, timed per epoch. Nothing here is hubclf. ``mark(name)`` is called after the imports,
    the data, the model and the first step (``floor`` reads the process's memory there)."""
    import torch
    import torch.nn as nn
    import torchvision
    from torchvision import transforms as T

    mark = mark or (lambda name: None)
    mark("imports")
    torch.manual_seed(0)
    device = torch.device(args.device)
    height, width = args.img_size
    transform = T.Compose([T.Resize((height, width)), T.ToTensor(), T.Normalize(MEAN, STD)])
    train_set = torchvision.datasets.ImageFolder(os.path.join(args.data, "train"), transform)
    val_set = torchvision.datasets.ImageFolder(os.path.join(args.data, "validation"), transform)
    loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.num_workers)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=args.batch_size, num_workers=args.num_workers)
    mark("data")
    model = plain_model(args.model, args.num_classes)
    last = model.fc if hasattr(model, "fc") else model.classifier[6]
    if args.mode != "full":  # frozen: only the new output layer trains
        for p in model.parameters():
            p.requires_grad = False
        for p in last.parameters():
            p.requires_grad = True
    model.to(device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=args.lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.mixed_precision == "bf16")
    mark("model")

    epochs = []
    for _ in range(args.epochs):
        started = time.perf_counter()
        model.train()
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            with autocast:
                loss = loss_fn(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if not epochs:
                mark("first step")
                mark = lambda name: None  # noqa: E731  (once)
        model.eval()
        correct = 0
        with torch.no_grad():
            for images, labels in val_loader:
                with autocast:
                    correct += (model(images.to(device)).argmax(1).cpu() == labels).sum().item()
        _sync(device)
        epochs.append({"seconds": time.perf_counter() - started, "val_top1": correct / len(val_set)})
    return {"epochs": epochs, "train_images": len(train_set), "val_images": len(val_set)}


def peer_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    """The peer's input pipeline alone: ImageFolder + PIL transforms through its DataLoader, no model."""
    import torch
    import torchvision
    from torchvision import transforms as T

    transform = T.Compose([T.Resize(tuple(args.img_size)), T.ToTensor(), T.Normalize(MEAN, STD)])
    dataset = torchvision.datasets.ImageFolder(os.path.join(args.data, "train"), transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers)
    return _time_loader(loader, len(dataset), lambda batch: batch[0])


# ---- hubclf ----------------------------------------------------------------------------------------------------
def hubclf_train_command(args: argparse.Namespace, output_dir: str) -> list[str]:
    """``hubclf train`` with the peer's settings; ``mode`` picks the freeze and feature-cache flags.

    ``--opt momentum`` is timm's name for the peer's ``SGD(momentum=0.9)``; timm's ``sgd`` is Nesterov momentum.
    """
    freeze = {
        "full": ["--freeze", "none"],
        "full-fp32": ["--freeze", "none"],
        "frozen": ["--freeze", "backbone", "--cache-features", "off"],
        "cached": ["--freeze", "backbone", "--cache-features", "memory"],
    }[args.mode]
    height, width = args.img_size
    return [
        sys.executable, "-m", "hubclf.cli", "train", "--model", ARCHITECTURES[args.model], "--no-pretrained",
        "--data", args.data, "--img-size", str(height), str(width), *freeze, "--no-augment", "--crop-pct", "1",
        "--opt", "momentum", "--lr", str(args.lr), "--weight-decay", "0", "--sched", "none", "--warmup-epochs", "0",
        "--batch-size", str(args.batch_size), "--num-workers", str(args.num_workers), "--epochs", str(args.epochs),
        "--output-dir", output_dir, "--mixed-precision", _hubclf_precision(args),
    ]  # fmt: skip


def _hubclf_precision(args: argparse.Namespace) -> str:
    """Both sides in bf16 when the bench asks for it; else hubclf's own default (``auto``: bf16 only where this
    machine measures it faster), or fp32 for the ``full-fp32`` row, against the fp32 a user writes."""
    if args.mixed_precision:
        return args.mixed_precision
    return "no" if args.mode == "full-fp32" else args.hubclf_precision


def hubclf_epochs(args: argparse.Namespace) -> dict[str, Any]:
    """``hubclf train`` in a child process (this worker's RSS is then the child's); epoch times from metrics.jsonl."""
    with tempfile.TemporaryDirectory(prefix="hubclf-bench-") as output_dir:
        command = hubclf_train_command(args, output_dir)
        result = subprocess.run(command, capture_output=True, text=True, env=_child_env(args))
        if result.returncode != 0:
            raise RuntimeError(f"hubclf train failed ({result.returncode}):\n{result.stderr[-3000:]}")
        records = [json.loads(line) for line in Path(output_dir, "metrics.jsonl").read_text().splitlines()]
        saved = json.loads(Path(output_dir, "final", "config.json").read_text())
    epochs = [{"seconds": r["seconds"], "val_top1": r["val_top1"]} for r in records]
    # The precision the run trained in, as it recorded it: what auto chose on a CPU, or Accelerate's on a GPU.
    precision = saved["hubclf"]["hyperparameters"]["mixed_precision"]
    return {"epochs": epochs, "command": " ".join(command[2:]), "precision": precision}


def hubclf_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    """hubclf's input pipeline alone, built as ``hubclf.train.setup`` builds it, through a DataLoader, no model.
    ``raw_to``: the GPU path, decoded on that device; with ``decode=False`` as well, its loader alone."""
    import timm
    import torch
    from timm.data import resolve_model_data_config

    import hubclf  # noqa: F401  (registers the models)
    from hubclf.data.dataset import ImageClassificationDataset
    from hubclf.data.images import build_transforms
    from hubclf.data.splits import load_image_dataset

    data = load_image_dataset(args.data)
    model = timm.create_model(ARCHITECTURES[args.model], num_classes=data.num_classes, img_size=tuple(args.img_size))
    model.pretrained_cfg = {**model.pretrained_cfg, "crop_pct": 1.0}
    data_config = resolve_model_data_config(model)
    train_transform, _ = build_transforms(data_config, augment=False)
    dataset = ImageClassificationDataset(
        data.train, data.image_column, data.label_column, train_transform, input_size=data_config["input_size"]
    )
    if getattr(args, "raw_to", None):  # --decode-device cuda: the workers read bytes, `raw_to` decodes each batch
        from hubclf.data.gpu_decode import DevicePreprocess, RawImages, collate_raw

        device = torch.device(args.raw_to)
        raw = RawImages(dataset, DevicePreprocess(train_transform, device))
        loader = torch.utils.data.DataLoader(raw, batch_size=args.batch_size, num_workers=args.num_workers,
                                             collate_fn=collate_raw)  # fmt: skip
        if not getattr(args, "decode", True):  # the loader's own ceiling: files read, checked and received, no decode
            return {"device": device.type, **_time_loader(loader, len(raw), lambda batch: batch["raw"])}
        timed = _time_loader(loader, len(raw), lambda batch: raw.finish_batch(batch)["pixel_values"],
                             sync=functools.partial(_sync, device))  # fmt: skip
        return {"device": device.type, **timed}
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers)
    return _time_loader(loader, len(dataset), lambda batch: batch["pixel_values"])


def _time_loader(loader: Any, count: int, pixels: Any, sync: Any = lambda: None) -> dict[str, Any]:
    for batch in loader:  # warm-up pass: worker start-up and the OS file cache are not what is measured
        pixels(batch)
    sync()
    started = time.perf_counter()
    for batch in loader:
        pixels(batch)
    sync()  # a GPU's work is queued: done when the device says so
    seconds = time.perf_counter() - started
    return {"images_per_s": count / seconds, "seconds": seconds}


# ---- orchestration ---------------------------------------------------------------------------------------------
WORKERS = {
    ("peer", "train"): peer_epochs,
    ("peer", "pipeline"): peer_pipeline,
    ("hubclf", "train"): hubclf_epochs,
    ("hubclf", "pipeline"): hubclf_pipeline,
}


def run_worker(args: argparse.Namespace, side: str, task: str, model: str, mode: str) -> dict[str, Any]:
    """One measurement in a fresh process; adds its peak RSS (that process and its children) in MiB."""
    command = [
        sys.executable, __file__, "_worker", "--side", side, "--task", task, "--model", model, "--mode", mode,
        "--data", args.data, "--img-size", *map(str, args.img_size), "--batch-size", str(args.batch_size),
        "--num-workers", str(args.num_workers), "--epochs", str(args.epochs), "--lr", str(args.lr),
        "--device", args.device, "--num-classes", str(args.num_classes),
        "--hubclf-precision", args.hubclf_precision,
    ]  # fmt: skip
    if args.mixed_precision:
        command += ["--mixed-precision", args.mixed_precision]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, env=_child_env(args))
        _, status, usage = os.wait4(process.pid, 0)  # the rusage of this child alone (RUSAGE_CHILDREN would pool)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if process.returncode != 0:
            raise RuntimeError(f"{side} {task} {model} {mode} failed:\n{err.read()[-3000:]}")
        result = json.loads(out.read().strip().splitlines()[-1])
    result["peak_rss_mib"] = max(usage.ru_maxrss / 1024, result.get("child_peak_rss_mib", 0.0))
    return result


def _child_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TQDM_DISABLE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def worker_main(args: argparse.Namespace) -> None:
    result = WORKERS[(args.side, args.task)](args)
    if args.side == "hubclf" and args.task == "train":
        import resource

        # hubclf train ran as this worker's child: its peak RSS is the children's maximum.
        result["child_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps(result))


def make_jpeg_folder(root: Path, images_per_class: int, img_size: tuple[int, int], scale: str = "full") -> Path:
    """The demo's 8-class target images (seeded), re-encoded as JPEG (quality 90) at ``img_size``, once per size.

    ``scale`` is the demo data's (``"full"``: 24 images per class and split; ``"smoke"``: 2 train, 1 validation).
    """
    from PIL import Image

    from hubclf.demo.data import generate

    folder = root / f"jpeg-{img_size[0]}x{img_size[1]}-{images_per_class}"
    if (folder / "done").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    png_root = root / "png"
    shutil.rmtree(png_root, ignore_errors=True)
    generate(png_root, kind="target", seed=0, scale=scale, progress=False)
    for png in sorted(png_root.glob("*/*/*.png")):
        split, class_name = png.parts[-3], png.parts[-2]
        if int(png.stem) >= images_per_class:
            continue
        target = folder / split / class_name / f"{png.stem}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(png) as image:
            image.convert("RGB").resize((img_size[1], img_size[0])).save(target, quality=90)
    shutil.rmtree(png_root)
    (folder / "done").write_text("ok\n")
    return folder


def e2e_main(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    print(_machine(args))
    rows = []
    for model in args.models:
        per_class = args.vgg_images_per_class if model == "vgg11" else args.images_per_class
        args.data = str(make_jpeg_folder(workdir, per_class, tuple(args.img_size), "smoke" if args.smoke else "full"))
        args.num_classes = 8
        print(f"\n{model}: {per_class} train + {per_class} validation JPEGs per class, 8 classes, "
              f"{args.img_size[0]}×{args.img_size[1]}, batch {args.batch_size}, {args.num_workers} loader worker(s), "
              f"{args.epochs} epochs", flush=True)
        pipelines = {side: run_worker(args, side, "pipeline", model, "full") for side in ("peer", "hubclf")}
        print(f"  input pipeline alone (decode + transform): peer {pipelines['peer']['images_per_s']:.1f} img/s, "
              f"hubclf {pipelines['hubclf']['images_per_s']:.1f} img/s "
              f"({pipelines['hubclf']['images_per_s'] / pipelines['peer']['images_per_s']:.2f}x)", flush=True)
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for repeat in range(args.repeats):
            for mode in ("full", "full-fp32", "frozen", "cached"):
                # Alternate who goes first, so that a drift in the machine's speed does not favour one side.
                sides = ("peer", "hubclf") if repeat % 2 == 0 else ("hubclf", "peer")
                for side in sides:
                    if side == "peer" and mode in ("cached", "full-fp32"):
                        continue  # the plain loop has no feature cache, and is in fp32 anyway
                    if mode == "full-fp32" and not _auto_chose_bf16(args, runs):
                        continue  # hubclf's full run is already in the peer's precision
                    run = run_worker(args, side, "train", model, mode)
                    runs.setdefault((side, mode), []).append(run)
                    last = run["epochs"][-1]
                    precision = f" ({run['precision']})" if side == "hubclf" else ""
                    print(f"  [{repeat + 1}/{args.repeats}] {side:<6} {mode + precision:<16} last epoch "
                          f"{last['seconds']:7.1f} s  val top-1 {last['val_top1']:.3f}  "
                          f"peak RSS {run['peak_rss_mib']:7.0f} MiB", flush=True)
        rows += _table_rows(model, runs, pipelines, args)
    _print_table(rows, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": _machine(args), "rows": rows}, indent=2) + "\n")
        print(f"\nwrote {args.json}")


def _auto_chose_bf16(args: argparse.Namespace, runs: dict) -> bool:
    """Whether hubclf's full fine-tune ran in bf16 by its own ``auto`` choice: only then does an fp32 row add one."""
    return not args.mixed_precision and runs["hubclf", "full"][0]["precision"] == "bf16"


def _table_rows(model: str, runs: dict, pipelines: dict, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per hubclf mode against the peer's matching mode, from the medians over the repeats."""

    def median(side_mode: tuple[str, str], value: Any) -> float:
        return statistics.median(value(run) for run in runs[side_mode])

    rows = []
    pairs = [("full", "full"), ("full-fp32", "full"), ("frozen", "frozen"), ("cached", "frozen")]
    for mode, peer_mode in pairs:
        if ("hubclf", mode) not in runs:
            continue
        peer, ours = ("peer", peer_mode), ("hubclf", mode)
        first = runs[peer][0]
        images = first["train_images"] + first["val_images"]
        peer_s, ours_s = (median(key, lambda run: run["epochs"][-1]["seconds"]) for key in (peer, ours))
        peer_rss, ours_rss = (median(key, lambda run: run["peak_rss_mib"]) for key in (peer, ours))
        rows.append({
            "model": model, "mode": mode, "peer_mode": peer_mode, "precision": runs[ours][0]["precision"],
            "repeats": len(runs[ours]), "peer_seconds": [run["epochs"][-1]["seconds"] for run in runs[peer]],
            "hubclf_seconds": [run["epochs"][-1]["seconds"] for run in runs[ours]],
            "peer_img_s": images / peer_s, "hubclf_img_s": images / ours_s, "speed_ratio": peer_s / ours_s,
            "peer_rss_mib": peer_rss, "hubclf_rss_mib": ours_rss, "rss_ratio": ours_rss / peer_rss,
            "peer_val_top1": runs[peer][-1]["epochs"][-1]["val_top1"],
            "hubclf_val_top1": runs[ours][-1]["epochs"][-1]["val_top1"],
            "peer_pipeline_img_s": pipelines["peer"]["images_per_s"],
            "hubclf_pipeline_img_s": pipelines["hubclf"]["images_per_s"],
            "mfu": _mfu(model, images / ours_s, args, runs[ours][0]["precision"]) if mode.startswith("full") else None,
        })  # fmt: skip
    full_rss = next(r["hubclf_rss_mib"] for r in rows if r["mode"] == "full")
    for row in rows:
        row["hubclf_rss_vs_full"] = row["hubclf_rss_mib"] / full_rss
    return rows


def _print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\nimg/s = (train + validation images) / time of the last epoch, median of {args.repeats} runs per side "
          "(interleaved); ratio = hubclf / peer speed; the peer runs in fp32 unless --mixed-precision bf16")
    header = (f"{'model':<8} {'mode (hubclf precision)':<30} {'peer img/s':>10} {'hubclf img/s':>12} {'ratio':>6} "
              f"{'peer RSS':>9} {'hubclf RSS':>10} {'RSS vs full':>11} {'top-1 peer/hubclf':>18}")
    print(header)
    print("-" * len(header))
    labels = {"full": "full fine-tune", "full-fp32": "full fine-tune", "frozen": "frozen backbone",
              "cached": "cached features"}  # fmt: skip
    for r in rows:
        mode = f"{labels[r['mode']]}{'*' if r['mode'] == 'cached' else ''} ({_precision_label(r['precision'])})"
        print(f"{r['model']:<8} {mode:<30} {r['peer_img_s']:>10.2f} {r['hubclf_img_s']:>12.2f} "
              f"{r['speed_ratio']:>5.2f}x {r['peer_rss_mib']:>6.0f} MiB {r['hubclf_rss_mib']:>6.0f} MiB "
              f"{r['hubclf_rss_vs_full']:>10.2f}x {r['peer_val_top1']:>8.3f} / {r['hubclf_val_top1']:.3f}")
    print("* against the peer's frozen backbone: the plain loop has no feature cache")
    print("RSS vs full: this row's hubclf peak RSS / that of hubclf's full fine-tune in its default precision")
    if any(r["mfu"] is not None for r in rows):
        for r in rows:
            if r["mfu"] is not None:
                print(f"MFU {r['model']} full fine-tune ({_precision_label(r['precision'])}): {100 * r['mfu']:.1f}%")


def _precision_label(precision: str) -> str:
    return {"no": "fp32"}.get(precision, precision)


def _mfu(model: str, images_per_s: float, args: argparse.Namespace, precision: str) -> float | None:
    if args.device != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name()
    peak = next((p for key, p in PEAK_TFLOPS.items() if key in name), None)
    if peak is None:
        return None
    precision = "bf16" if precision == "bf16" else "tf32"  # fp32 convolutions run in TF32 on a GPU (cuDNN's default)
    return images_per_s * TRAIN_GFLOP_PER_IMAGE[model] / (peak[precision] * 1e3)


def _machine(args: argparse.Namespace) -> str:
    import torch

    if args.device == "cuda":
        device = torch.cuda.get_device_name()
    else:
        flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
        isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
        device = f"{_cpu_model()}, {os.cpu_count()} cores, {' '.join(isa) or 'no AVX'}"
    return (f"device: {device}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"mixed precision {getattr(args, 'mixed_precision', None) or 'no'}")




# ---- watching a command: wall time, progress bars, marked lines, memory -----------------------------------------
# A tqdm line: "epoch 1/4:  17%|█▋        | 1/6 [00:04<00:20, ...]" (TQDM_MININTERVAL=0 prints every update).
_BAR = re.compile(r"^(?P<desc>[^|]*?):\s*\d+%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)\b")
# tqdm redraws a bar with \r; a bar below another (position=1, as hubclf's epoch bar is) ends with a move back up
# (ESC [A) and nothing else until the next redraw, so without that end it would be seen one redraw (a step) late.
BAR_OR_LINE_END = re.compile(rb"\r|\n|\x1b\[A")
RESULT_PREFIX = "BENCH-RESULT "  # the last line of a `_job`: its result as JSON


@dataclasses.dataclass
class Watched:
    """What ``watch`` saw of one command. Times are seconds since just before the process started."""

    command: list[str]
    wall_s: float = math.nan
    returncode: int | None = None
    stopped: bool = False  # ended by the caller's stop rule (a bounded measurement), not by itself
    timed_out: bool = False
    peak_rss_mib: float = 0.0  # the largest resident set of one process of the tree (wait4's ru_maxrss)
    shm_peak_mib: float = 0.0  # the most shared memory one process of the tree had resident (sampled)
    result: Any = None  # a `_job`'s result
    marks: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)  # name -> t, rss_mib, hwm_mib
    bars: dict[str, list[tuple[float, int, int]]] = dataclasses.field(default_factory=dict)  # desc -> (t, n, total)
    lines: list[tuple[float, str]] = dataclasses.field(default_factory=list)  # every other line

    def updates(self, prefix: str) -> list[tuple[float, int, int]]:
        """The updates of the first progress bar whose description starts with ``prefix``."""
        return next((updates for desc, updates in self.bars.items() if desc.startswith(prefix)), [])

    def reached(self, prefix: str, count: int) -> float | None:
        """When that bar first showed at least ``count`` done (0: when it appeared)."""
        return next((t for t, n, _ in self.updates(prefix) if n >= count), None)

    def tail(self, count: int = 30) -> str:
        return "\n".join(text for _, text in self.lines[-count:])

    def check(self, what: str) -> Watched:
        if self.returncode != 0 and not self.stopped:
            raise RuntimeError(f"{what} failed (exit status {self.returncode}):\n{self.tail()}")
        return self


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM and RssShmem of a process in kB (empty once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssShmem"):
            found[key] = int(value.split()[0])
    return found


def _process_tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError, ValueError):
                todo += [int(child) for child in children.read_text().split()]
    return found


def watch(
    command: list[str],
    env: dict[str, str],
    *,
    marks: tuple[tuple[str, str], ...] = (),
    stop: Any = None,
    timeout: float | None = None,
) -> Watched:
    """Run ``command`` to its end (or until ``stop(watched)`` says so: then SIGKILL to its process group), reading
    its output as it comes: progress bars, the first line matching each of ``marks`` (``(name, regex)``; the
    process's RSS is read at that moment), a job's result. Peak RSS from ``wait4`` covers its children too."""
    seen = Watched(list(command))
    patterns = [(name, re.compile(pattern)) for name, pattern in marks]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)  # fmt: skip
    finished = threading.Event()

    def kill() -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    def see(text: str, now: float) -> None:
        bar = _BAR.match(text)
        if bar:
            seen.bars.setdefault(bar["desc"].strip(), []).append((now, int(bar["n"]), int(bar["total"])))
        elif text.startswith(RESULT_PREFIX):
            seen.result = json.loads(text[len(RESULT_PREFIX) :])
        else:
            seen.lines.append((now, text))
        for name, pattern in patterns:
            if name not in seen.marks and pattern.search(text):
                status = _proc_status(process.pid)
                seen.marks[name] = {"t": now, "rss_mib": status.get("VmRSS", 0) / 1024,
                                    "hwm_mib": status.get("VmHWM", 0) / 1024}  # fmt: skip

    def read() -> None:
        rest = b""
        while chunk := os.read(process.stdout.fileno(), 1 << 16):
            now = time.perf_counter() - started
            *pieces, rest = BAR_OR_LINE_END.split(rest + chunk)
            for piece in pieces:
                if text := piece.decode(errors="replace").strip():
                    see(text, now)
            if stop is not None and not seen.stopped and stop(seen):
                seen.stopped = True
                kill()
        if text := rest.decode(errors="replace").strip():
            see(text, time.perf_counter() - started)

    def sample() -> None:
        while not finished.wait(0.25):
            shm = max((_proc_status(pid).get("RssShmem", 0) for pid in _process_tree(process.pid)), default=0)
            seen.shm_peak_mib = max(seen.shm_peak_mib, shm / 1024)

    reader, sampler = threading.Thread(target=read, daemon=True), threading.Thread(target=sample, daemon=True)
    reader.start(), sampler.start()
    timer = None
    if timeout:

        def expire() -> None:
            seen.timed_out = True
            kill()

        timer = threading.Timer(timeout, expire)
        timer.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)  # this child's rusage (with its reaped children), not the pool's
    except BaseException:
        kill()
        raise
    finally:
        if timer is not None:
            timer.cancel()
    seen.wall_s = time.perf_counter() - started
    process.returncode = seen.returncode = os.waitstatus_to_exitcode(status)
    finished.set()
    reader.join(timeout=30)
    if reader.is_alive():  # a left-over child still holds the pipe
        kill()
        reader.join()
    sampler.join()
    process.stdout.close()
    seen.peak_rss_mib = usage.ru_maxrss / 1024
    return seen


def _watch_env(device: str, hf_home: Path | None = None) -> dict[str, str]:
    """The environment of every measured process: offline, this checkout first on the path, every progress-bar
    update printed (``watch`` reads them), and a private Hugging Face cache when ``hf_home`` is given."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TQDM_MININTERVAL="0")
    env.pop("TQDM_DISABLE", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    if hf_home is not None:
        env["HF_HOME"] = str(hf_home)
        env.pop("HF_DATASETS_CACHE", None)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def run_job(spec: dict[str, Any], env: dict[str, str], marks: tuple[tuple[str, str], ...] = ()) -> Watched:
    """One `_job` (a measurement in a fresh process): its result is ``.result``."""
    command = [sys.executable, str(Path(__file__).resolve()), "_job", json.dumps(spec)]
    seen = watch(command, env, marks=marks).check(f"job {spec['task']}")
    if seen.result is None:
        raise RuntimeError(f"job {spec['task']} printed no result:\n{seen.tail()}")
    return seen


def _mark(name: str) -> None:
    """A line that ``watch`` can time (the plain loop has no log of its own)."""
    print(f"bench-mark: {name}", file=sys.stderr, flush=True)


def _median(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    return [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]


def _provenance() -> str:
    """Date and commit of this run, for the docs' tables."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True).stdout.strip()
        except OSError:  # no git on this machine (a bare GPU host with a copy of the tree)
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return f"{now}, commit {commit}{' (with uncommitted changes)' if dirty else ''}"


def _tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (each hard link's file counted once per path)."""
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


# ---- jobs: measurements that run in a process of their own (`_job '<json>'`) --------------------------------------
def measure_floor(spec: dict[str, Any]) -> dict[str, Any]:
    """The compute floor of one epoch: hubclf's model, optimizer and precision for this row, on synthetic tensors
    already in memory: ``train_images`` worth of train steps (forward, loss, backward, optimizer step) plus
    ``val_images`` worth of evaluation forwards, in each memory layout (and, where asked, compiled or CUDA-graphed);
    nothing else (no data loading, no bookkeeping, no writes). Also the FLOPs per image, counted by
    ``FlopCounterMode`` on one train step and one evaluation forward.

    ``mode`` "full" trains the whole model; "cached" only ``get_classifier()`` on its input features (what an epoch of
    a frozen backbone with cached features computes). ``precision`` "auto" is decided by hubclf's own rule, as
    ``hubclf train`` decides it; so is the memory layout that hubclf trains in (reported beside the floor's best).
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    import hubclf  # noqa: F401  (registers the models)
    from hubclf.train.config import TrainConfig
    from hubclf.train.setup import build_optimizer, create_model, resolve_hardware_defaults
    from hubclf.train.stages import FULL, HEAD

    device = torch.device(spec["device"])
    head_only = spec["mode"] == "cached"
    batch, classes = spec["batch_size"], spec.get("num_classes", 8)
    config = TrainConfig(
        model=spec["model"], data="unused", output_dir="unused", pretrained=False, img_size=tuple(spec["img_size"]),
        freeze="backbone" if head_only else "none", opt="momentum", lr=spec.get("lr", 0.01), weight_decay=0.0,
        sched="none", warmup_epochs=0, batch_size=batch, smoothing=0.0, augment="none",
        mixed_precision=spec.get("precision", "auto"),
    )  # fmt: skip
    config, _ = resolve_hardware_defaults(config)  # hubclf's own decisions (precision, layout), as a run makes them
    precision = config.mixed_precision or "no"  # None: Accelerate's setting, whose default is no mixed precision
    torch.manual_seed(0)
    model = create_model(config, [f"class_{i}" for i in range(classes)]).to(device)
    optimizer = build_optimizer(model, config, HEAD if head_only else FULL, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = functools.partial(torch.autocast, device.type, dtype=dtype, enabled=dtype is not None)
    height, width = spec["img_size"]
    generator = torch.Generator().manual_seed(0)
    if head_only:
        with torch.no_grad():
            model.eval()
            features = model.forward_head(model.forward_features(torch.zeros(1, 3, height, width, device=device)),
                                          pre_logits=True)  # fmt: skip
        net = model.get_classifier()
        shape: tuple[int, ...] = (features.shape[-1],)
        layouts = ["-"]  # 2-D tensors: no memory format to choose
    else:
        net = model
        shape = (3, height, width)
        layouts = ["channels_last", "contiguous"] if spec.get("layouts", "both") == "both" else [spec["layouts"]]
    net.train()

    def batches(images: int) -> list[int]:
        return [batch] * (images // batch) + ([images % batch] if images % batch else [])

    train_sizes, val_sizes = batches(spec["train_images"]), batches(spec["val_images"])

    def inputs(size: int, layout: str) -> tuple[Any, Any]:
        x = torch.randn((size, *shape), generator=generator).to(device)
        if layout in ("channels_last", "contiguous"):
            x = x.contiguous(memory_format=getattr(torch, layout if layout == "channels_last" else "contiguous_format"))
        return x, torch.randint(0, classes, (size,), generator=generator).to(device)

    def step(fn: Any, x: Any, y: Any) -> None:
        with autocast():
            logits = fn(x)
        F.cross_entropy(logits.float(), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def evaluate(fn: Any, x: Any) -> None:
        with torch.inference_mode(), autocast():
            fn(x)

    # FLOPs per image, counted once (the optimizer's elementwise work is not a FLOP here, as in MFU figures).
    x, y = inputs(batch, layouts[0])
    with FlopCounterMode(display=False) as counted:
        step(net, x, y)
    train_flops = counted.get_total_flops() / batch
    net.eval()
    with FlopCounterMode(display=False) as counted:
        evaluate(net, x)
    eval_flops = counted.get_total_flops() / batch
    net.train()

    variants = spec.get("variants") or ["eager"]
    results: dict[str, Any] = {}
    for variant in variants:
        if variant == "eager":
            fn = net
        elif variant == "compile":
            fn = torch.compile(net)
        elif variant == "cudagraphs":
            fn = torch.compile(net, mode="reduce-overhead")  # inductor with CUDA graphs
        else:
            raise ValueError(f"unknown variant {variant!r}")
        chosen = layouts
        if variant != "eager" and spec.get("compiled_layout") == "best":
            eager = {k: v["epoch_s"] for k, v in results.items() if k.startswith("eager/") and "epoch_s" in v}
            chosen = [min(eager, key=eager.get).split("/", 1)[1]] if eager else layouts
        for layout in chosen:
            if layout != "-":
                net.to(memory_format=getattr(torch, layout if layout == "channels_last" else "contiguous_format"))
                # momentum buffers keep the layout they were made in; CUDA's fused and foreach SGD need the params'
                optimizer.state.clear()
            tensors = {size: inputs(size, layout) for size in set(train_sizes + val_sizes)}
            try:
                for _ in range(spec.get("warmup", 2)):  # every shape once (compiles, autotunes, allocates)
                    for size in sorted(set(train_sizes)):
                        step(fn, *tensors[size])
                    net.eval()
                    for size in sorted(set(val_sizes)):
                        evaluate(fn, tensors[size][0])
                    net.train()
                passes = []
                for _ in range(spec.get("passes", 2)):
                    _sync(device)
                    started = time.perf_counter()
                    for size in train_sizes:
                        step(fn, *tensors[size])
                    net.eval()
                    for size in val_sizes:
                        evaluate(fn, tensors[size][0])
                    net.train()
                    _sync(device)
                    passes.append(time.perf_counter() - started)
                results[f"{variant}/{layout}"] = {"epoch_s": statistics.median(passes), "passes": passes}
            except Exception as error:  # e.g. a compile failure: reported, and the other variants still count
                results[f"{variant}/{layout}"] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}
    timed = {key: value["epoch_s"] for key, value in results.items() if "epoch_s" in value}
    best = min(timed, key=timed.get) if timed else None
    return {
        "precision": precision, "hubclf_channels_last": bool(config.channels_last), "results": results,
        "best": best, "epoch_s": timed.get(best, math.nan), "train_gflop_per_image": train_flops / 1e9,
        "eval_gflop_per_image": eval_flops / 1e9, "train_images": spec["train_images"],
        "val_images": spec["val_images"], "train_steps": len(train_sizes), "eval_batches": len(val_sizes),
    }  # fmt: skip


def peak_job(spec: dict[str, Any]) -> dict[str, Any]:
    """This machine's matmul peak: the best of ``repeats`` large square ``torch.mm`` in fp32 (no TF32), in TF32 (a
    GPU only) and in bf16 (on a CPU only where it has bf16 instructions: elsewhere bf16 is emulated, and its rate is
    no peak)."""
    import torch

    from hubclf.hardware import cpu_has_bf16_instructions

    device = torch.device(spec["device"])
    n = spec["n"]
    found: dict[str, float | None] = {}
    for name, dtype in (("fp32", torch.float32), ("tf32", torch.float32), ("bf16", torch.bfloat16)):
        if device.type == "cpu" and (name == "tf32" or (name == "bf16" and not cpu_has_bf16_instructions())):
            found[name] = None
            continue
        torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        inner = 1 if device.type == "cpu" else 20  # GPU: several products between synchronisations
        torch.mm(a, b)
        _sync(device)
        best = math.inf
        for _ in range(spec.get("repeats", 3)):
            started = time.perf_counter()
            for _ in range(inner):
                torch.mm(a, b)
            _sync(device)
            best = min(best, (time.perf_counter() - started) / inner)
        found[name] = 2 * n**3 / best / 1e9
    return {"gflops": found, "n": n, "threads": torch.get_num_threads()}


def plain_job(spec: dict[str, Any]) -> dict[str, Any]:
    """The plain loop (``peer_epochs``), with marks that ``watch`` times."""
    args = argparse.Namespace(**{**spec, "img_size": tuple(spec["img_size"])})
    return peer_epochs(args, mark=_mark)


def device_job(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    cuda = spec["device"] == "cuda"
    return {
        "name": torch.cuda.get_device_name() if cuda else _cpu_model(),
        "capability": list(torch.cuda.get_device_capability()) if cuda else None,
        "memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
        "torch": torch.__version__, "cuda": torch.version.cuda, "cores": os.cpu_count(),
    }  # fmt: skip


def gpu_models_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Training img/s of each model in each precision: ``measure_floor`` with train steps only (20 per pass)."""
    found = {}
    for model, batch in spec["models"].items():
        for precision in spec["precisions"]:
            key = f"{model}/{precision}"
            try:
                found[key] = measure_floor({
                    "model": ARCHITECTURES.get(model, model), "mode": "full", "device": spec["device"],
                    "img_size": spec["img_size"], "batch_size": batch, "train_images": batch * spec["steps"],
                    "val_images": 0, "precision": precision, "passes": 2, "warmup": 2, "layouts": "both",
                })  # fmt: skip
            except Exception as error:
                found[key] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}
    return found


def gpu_input_job(spec: dict[str, Any]) -> dict[str, Any]:
    """The input pipeline's img/s through hubclf's loaders: decoded by the CPU in its DataLoader workers, and
    hubclf's GPU path, ``--decode-device cuda``: the workers read the bytes, nvJPEG decodes each batch and the resize,
    crop and normalisation run on the GPU (``hubclf.data.gpu_decode``); that path's loader alone, nothing decoded
    (what the training process can receive); plus which other decoders exist."""
    import importlib.util

    found: dict[str, Any] = {"workers": spec["num_workers"]}
    args = argparse.Namespace(data=spec["data"], model="alexnet", img_size=spec["img_size"],
                              batch_size=spec["batch_size"], num_workers=spec["num_workers"])  # fmt: skip
    found["cpu_decode"] = hubclf_pipeline(args)
    found["installed"] = {name: importlib.util.find_spec(name) is not None
                          for name in ("torchcodec", "nvidia.dali")}  # fmt: skip
    for key, decode in (("gpu_decode", True), ("raw_loader", False)):
        try:  # the CPU dry run runs the same code with the CPU as the device
            found[key] = hubclf_pipeline(argparse.Namespace(**vars(args), raw_to=spec["device"], decode=decode))
        except Exception as error:
            found[key] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}
    return found


def gpu_stages_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Where a batch of hubclf's GPU input path goes: each stage of ``DevicePreprocess`` timed alone (ms per batch of
    ``batch_size`` JPEGs from the input part's folder), beside one CPU thread decoding the same files and the resize
    one image at a time (what it was before same-size images were resized together)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from hubclf.data.gpu_decode import DevicePreprocess, device_decodable, jpeg_tensors
    from hubclf.data.images import build_transforms

    warnings.simplefilter("ignore")  # torchvision 0.29's deprecation notice, on every decode_jpeg call
    device = torch.device(spec["device"])
    sync = functools.partial(_sync, device)
    size, height, width = spec["batch_size"], *spec["img_size"]
    files = sorted(Path(spec["data"], "train").rglob("*.jpg"))[: size * 4]
    batches = [[f.read_bytes() for f in files[i : i + size]] for i in range(0, len(files), size)]
    _, eval_tf = build_transforms({"input_size": (3, height, width), "crop_pct": 1.0}, augment=False)
    preprocess = DevicePreprocess(eval_tf, device)

    def decode(batch: list[bytes]) -> list[Any]:
        return decode_jpeg(jpeg_tensors(batch), mode=ImageReadMode.RGB, device=device)

    decoded = decode(batches[0])

    def resize_each(_: Any) -> Any:
        out = []
        for image in decoded:
            for step in eval_tf.geometry:
                image = step(image)
            out.append(image)
        return torch.stack(out)

    def resize_batch(_: Any) -> Any:  # what DevicePreprocess does with a group of same-size images
        return preprocess._geometry(torch.stack(decoded))

    stages = {
        "header check (PIL), per image": lambda batch: [device_decodable(data) for data in batch],
        "bytes to tensors (read in place)": jpeg_tensors,
        "batched decode on the device": decode,
        "resize + crop, per image": resize_each,
        "resize + crop, same-size images at once": resize_batch,
        "DevicePreprocess, whole": preprocess,
        "decode on one CPU thread, per image": lambda batch: [decode_jpeg(t, mode=ImageReadMode.RGB)
                                                              for t in jpeg_tensors(batch)],  # fmt: skip
    }
    found: dict[str, Any] = {"batch_size": size, "batches": len(batches), "ms_per_batch": {}}
    for name, stage in stages.items():
        stage(batches[0])  # warm-up: nvJPEG's handles, the allocator
        sync()
        started = time.perf_counter()
        for batch in batches:
            stage(batch)
        sync()
        found["ms_per_batch"][name] = (time.perf_counter() - started) / len(batches) * 1e3
    return found


JOBS = {
    "floor": measure_floor,
    "peak": peak_job,
    "plain": plain_job,
    "device": device_job,
    "gpu_models": gpu_models_job,
    "gpu_input": gpu_input_job,
    "gpu_stages": gpu_stages_job,
}


def job_main(spec_text: str) -> None:
    spec = json.loads(spec_text)
    result = JOBS[spec["task"]](spec)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# ---- `floor`: an epoch against the model's own compute, end to end (issue 24) ------------------------------------
@dataclasses.dataclass(frozen=True)
class FloorRow:
    name: str
    label: str
    model: str  # hubclf train --model, and timm's train.py --model
    peer: str  # the plain loop's torchvision architecture
    mode: str  # "full" (fine-tune everything) or "cached" (frozen backbone, features cached in memory)
    per_class: int  # train and validation images per class (8 classes); multiples of the batch: no partial batch
    epochs: int  # the long run's epochs (the short run has 1)


FLOOR_ROWS = (
    FloorRow("alexnet-full", "AlexNet, full fine-tune", "hubclf_alexnet", "alexnet", "full", 12, 4),
    FloorRow("vgg11-full", "VGG11, full fine-tune", "hubclf_vgg11", "vgg11", "full", 2, 3),
    FloorRow("alexnet-cached", "AlexNet, frozen, cached features", "hubclf_alexnet", "alexnet", "cached", 12, 4),
    FloorRow("resnet18-full", "timm resnet18, full fine-tune", "resnet18", "resnet18", "full", 4, 3),
)
SIDES = ("hubclf", "plain", "timm")
# When watch() reads these lines, it notes the time and the process's RSS (imports -> data -> model -> first step).
HUBCLF_MARKS = (
    # the run's first line (its hardware decisions, else the data's): imports done, Accelerate set up
    ("imports", r"memory format|^--mixed-precision|\d+ train / \d+ eval images"),
    ("data", r"\d+ train / \d+ eval images"),
    ("model", r"^(train features|epoch 1/\d+):"),  # the first progress bar: model, datasets, loaders built
    ("step starts", r"^epoch 1/\d+:.*\|\s*0/\d+"),
    ("first step", r"^epoch 1/\d+:.*\|\s*[1-9]\d*/\d+"),
)
PLAIN_MARKS = tuple((name, f"^bench-mark: {name}$") for name in ("imports", "data", "model", "first step"))
TIMM_MARKS = (("first step", r"Train: 0 \[\s*0/"),)  # train.py logs batch 0 once it has trained on it
# Runs train.py as a user would, with hubclf imported first so that timm knows the hubclf_* architectures.
TIMM_LAUNCH = ("import hubclf, json, runpy, sys; sys.argv = json.loads(sys.argv[1]); "
               "runpy.run_path(sys.argv[0], run_name='__main__')")  # fmt: skip


def hubclf_floor_command(row: FloorRow, data: str, args: argparse.Namespace, epochs: int, out: str) -> list[str]:
    """``hubclf train`` as a user runs it, with the plain loop's settings: SGD with momentum (timm's ``momentum``),
    constant LR, no weight decay, no augmentation, no label smoothing, the whole image (``--crop-pct 1``); hubclf's
    own defaults otherwise (``--mixed-precision auto``, channels-last on a CPU, the image cache, its writes)."""
    freeze = ["--freeze", "none"] if row.mode == "full" else ["--freeze", "backbone", "--cache-features", "memory"]
    height, width = args.img_size
    return [
        sys.executable, "-m", "hubclf.cli", "train", "--model", row.model, "--no-pretrained", "--data", data,
        "--img-size", str(height), str(width), *freeze, "--no-augment", "--crop-pct", "1", "--smoothing", "0",
        "--opt", "momentum", "--lr", str(args.lr), "--weight-decay", "0", "--sched", "none", "--warmup-epochs", "0",
        "--batch-size", str(args.batch_size), "--num-workers", str(args.num_workers), "--epochs", str(epochs),
        "--output-dir", out,
    ]  # fmt: skip


def timm_train_argv(
    train_py: str, row: FloorRow, data: str, args: argparse.Namespace, epochs: int, out: str, precision: str,
    channels_last: bool,
) -> list[str]:  # fmt: skip
    """timm's ``train.py`` with hubclf's settings: model, data (ImageFolder ``train/`` + ``validation/``), batch,
    workers, SGD with momentum, constant LR (``--sched none`` does not exist there: a step schedule that decays by
    1), no weight decay, no augmentation, no smoothing, hubclf's precision and memory layout."""
    height, width = args.img_size
    argv = [
        train_py, "--data-dir", data, "--train-split", "train", "--val-split", "validation", "--model", row.model,
        "--num-classes", "8", "--input-size", "3", str(height), str(width), "--crop-pct", "1",
        "-b", str(args.batch_size), "--epochs", str(epochs), "--opt", "momentum", "--momentum", "0.9",
        "--lr", str(args.lr), "--weight-decay", "0", "--sched", "step", "--decay-rate", "1", "--warmup-epochs", "0",
        "--no-aug", "--smoothing", "0", "-j", str(args.num_workers), "--device", args.device, "--output", out,
        "--experiment", "bench", "--seed", "42",
    ]  # fmt: skip
    if channels_last:
        argv.append("--channels-last")
    if precision == "bf16":
        argv += ["--amp", "--amp-dtype", "bfloat16"]
    elif precision == "fp16":
        argv.append("--amp")
    if args.device == "cuda":
        argv.append("--pin-mem")
    return argv


def find_timm_train_py(option: str | None, scratch: Path) -> tuple[str | None, str]:
    """``(path to timm's train.py, where it came from)``, or ``(None, why not)``: ``--timm-train-py PATH``, else
    the mirror's ``HEAD:train.py`` written to ``scratch`` (outside the repository), else nothing."""
    if option and option.lower() == "none":
        return None, "not run (--timm-train-py none)"
    if option:
        if not Path(option).is_file():
            raise SystemExit(f"bench.py: error: --timm-train-py {option}: no such file")
        return option, option
    mirror = Path(TIMM_MIRROR)
    shown = subprocess.run(["git", "-C", str(mirror), "show", "HEAD:train.py"], capture_output=True)
    if not mirror.exists() or shown.returncode != 0:
        return None, f"not available: no --timm-train-py and no pytorch-image-models clone at {mirror}"
    commit = subprocess.run(["git", "-C", str(mirror), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / "train.py"
    path.write_bytes(shown.stdout)
    return str(path), f"pytorch-image-models {commit}:train.py"


IMPORT_MARKS = (("imported", r"^bench-mark: imported$"),)


def time_import(env: dict[str, str]) -> dict[str, float]:
    """``python -c "import torch, timm"``: when the import is done (``import_s``), and the command's wall time,
    which adds the interpreter's exit (``wall_s``): its last garbage collection over torch's objects, ~1 s here."""
    code = "import torch, timm; print('bench-mark: imported', flush=True)"
    seen = watch([sys.executable, "-c", code], env, marks=IMPORT_MARKS).check("import")
    return {"import_s": seen.marks["imported"]["t"], "wall_s": seen.wall_s}


def run_side(
    side: str, row: FloorRow, data: str, args: argparse.Namespace, epochs: int, env: dict[str, str],
    runs_dir: Path, train_py: str | None, floor: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """One training process of ``side`` for ``epochs`` epochs, from start to exit; what it wrote is deleted after."""
    out = Path(tempfile.mkdtemp(prefix=f"{side}-", dir=runs_dir))
    record: dict[str, Any] = {"epochs": epochs}
    try:
        if side == "hubclf":
            seen = watch(hubclf_floor_command(row, data, args, epochs, str(out)), env, marks=HUBCLF_MARKS)
            seen.check(f"hubclf train ({row.name}, {epochs} epochs)")
            history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            saved = json.loads((out / "final" / "config.json").read_text())
            record["precision"] = saved["hubclf"]["hyperparameters"]["mixed_precision"]
            record["epoch_seconds"] = [r["seconds"] for r in history]  # metrics.jsonl: train + eval, no writes
            tops = [r["val_top1"] for r in history]
            record["best_writes"] = sum(1 for i, top in enumerate(tops) if i == 0 or top > max(tops[:i]))
            record["written_mib"] = _tree_bytes(out) / MIB
            record["decode_line"] = next((text for _, text in seen.lines if DECODE_DECISION.search(text)), None)
        elif side == "plain":
            spec = {
                "task": "plain", "model": row.peer, "mode": row.mode, "data": data, "img_size": list(args.img_size),
                "batch_size": args.batch_size, "num_workers": args.num_workers, "epochs": epochs, "lr": args.lr,
                "device": args.device, "num_classes": 8,
                "mixed_precision": getattr(args, "plain_mixed_precision", None),  # None: fp32, as a user writes it
            }  # fmt: skip
            seen = run_job(spec, env, marks=PLAIN_MARKS)
            record["epoch_seconds"] = [e["seconds"] for e in seen.result["epochs"]]
        else:
            argv = timm_train_argv(train_py, row, data, args, epochs, str(out), floor["precision"],
                                   floor["hubclf_channels_last"])  # fmt: skip
            seen = watch([sys.executable, "-c", TIMM_LAUNCH, json.dumps(argv)], env, marks=TIMM_MARKS)
            seen.check(f"timm train.py ({row.name}, {epochs} epochs)")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    record.update(wall_s=seen.wall_s, peak_rss_mib=seen.peak_rss_mib, marks=seen.marks)
    return record


def floor_main(args: argparse.Namespace) -> None:
    bench_started = time.perf_counter()
    workdir = Path(args.workdir)
    runs_dir = workdir / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    env = _watch_env(args.device, workdir / "hf-home")  # the datasets cache of these runs, warmed by the first
    rows = [row for row in FLOOR_ROWS if row.name in args.rows]
    if args.smoke:
        rows = [dataclasses.replace(row, per_class=1, epochs=2) for row in rows]
    with tempfile.TemporaryDirectory(prefix="bench-timm-") as scratch:
        train_py, timm_source = find_timm_train_py(args.timm_train_py, Path(scratch))
        machine = f"{_cpu_model()} ({' '.join(_cpu_flags()) or 'no AVX'})" if args.device == "cpu" else args.device
        print(f"floor: {machine}, {os.cpu_count()} cores; {_provenance()}")
        print(f"timm's train.py: {timm_source}" + ("" if train_py else "; its column stays empty"))
        data = {row.name: str(make_jpeg_folder(workdir, row.per_class, tuple(args.img_size),
                                               "smoke" if args.smoke else "full")) for row in rows}  # fmt: skip
        peak_n = 256 if args.smoke else (4096 if args.device == "cpu" else 8192)
        peaks: list[dict[str, Any]] = []
        imports: list[float] = []
        floors: dict[str, list[dict[str, Any]]] = {row.name: [] for row in rows}
        runs: dict[tuple[str, str, int], list[dict[str, Any]]] = collections.defaultdict(list)
        for repeat in range(args.repeats):
            peaks.append(run_job({"task": "peak", "device": args.device, "n": peak_n}, env).result)
            for row in rows:
                imports.append(time_import(env))
                spec = {
                    "task": "floor", "model": row.model, "mode": row.mode, "device": args.device,
                    "img_size": list(args.img_size), "batch_size": args.batch_size, "lr": args.lr,
                    "train_images": 8 * row.per_class, "val_images": 8 * row.per_class,
                    "passes": args.floor_passes, "warmup": 1, "variants": args.floor_variants,
                }  # fmt: skip
                floor = run_job(spec, env).result
                floors[row.name].append(floor)
                print(f"[{repeat + 1}/{args.repeats}] {row.name:<15} floor {floor['epoch_s']:8.2f} s/epoch "
                      f"({floor['best']}, {_precision_label(floor['precision'])})", flush=True)  # fmt: skip
                turn = repeat % len(SIDES)  # who goes first rotates, and so does the order of the two runs
                for side in SIDES[turn:] + SIDES[:turn]:
                    if side == "timm" and (train_py is None or row.mode != "full"):
                        continue  # train.py has no frozen-backbone option
                    for epochs in (1, row.epochs) if repeat % 2 == 0 else (row.epochs, 1):
                        record = run_side(side, row, data[row.name], args, epochs, env, runs_dir, train_py, floor)
                        runs[row.name, side, epochs].append(record)
                        first = record["marks"].get("first step", {}).get("t", math.nan)
                        print(f"[{repeat + 1}/{args.repeats}] {row.name:<15} {side:<6} {epochs} epoch(s) "
                              f"{record['wall_s']:7.1f} s wall, first step at {first:5.1f} s, "
                              f"peak RSS {record['peak_rss_mib']:6.0f} MiB", flush=True)  # fmt: skip
        summary = summarise_floor(rows, floors, runs, peaks, imports, args)
        summary.update(machine=machine, provenance=_provenance(), timm_train_py=timm_source,
                       command=" ".join(["python", "scripts/bench.py", *sys.argv[1:]]),
                       seconds=time.perf_counter() - bench_started)  # fmt: skip
    print()
    print("\n".join(format_floor(summary)))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
        print(f"\nwrote {args.json}")


def _steady(one: list[dict[str, Any]], many: list[dict[str, Any]], epochs: int) -> tuple[float, list[float]]:
    """Seconds per epoch in steady state: (wall of the N-epoch run − wall of the 1-epoch run) / (N − 1), per repeat
    (the pairs ran next to each other); their median."""
    values = [(n["wall_s"] - o["wall_s"]) / (epochs - 1) for o, n in zip(one, many, strict=True)]
    return _median(values), values


def summarise_floor(
    rows: list[FloorRow], floors: dict, runs: dict, peaks: list[dict], imports: list[dict], args: argparse.Namespace
) -> dict[str, Any]:
    """Medians over the repeats, and every ratio the table shows, as JSON-ready data."""
    best_peak = {name: max((p["gflops"][name] or 0.0) for p in peaks) or None for name in ("fp32", "bf16")}
    import_s = _median([i["import_s"] for i in imports])
    out_rows = []
    for row in rows:
        measured = floors[row.name]
        floor_s = _median([f["epoch_s"] for f in measured])
        layouts = collections.Counter(f["best"] for f in measured).most_common(1)[0][0]
        first = measured[0]
        precision = first["precision"]
        epoch_gflop = (first["train_images"] * first["train_gflop_per_image"]
                       + first["val_images"] * first["eval_gflop_per_image"])  # fmt: skip
        peak = best_peak["bf16" if precision in ("bf16", "fp16") else "fp32"]
        sides = {}
        for side in SIDES:
            one, many = runs.get((row.name, side, 1), []), runs.get((row.name, side, row.epochs), [])
            if not one or not many:
                sides[side] = None
                continue
            steady, values = _steady(one, many, row.epochs)
            both = one + many
            sides[side] = {
                "steady_s": steady, "steady_values": values, "wall_1": [r["wall_s"] for r in one],
                "wall_n": [r["wall_s"] for r in many], "peak_rss_mib": _median([r["peak_rss_mib"] for r in both]),
                "marks": {name: {key: _median([r["marks"][name][key] for r in both if name in r["marks"]])
                                 for key in ("t", "rss_mib")}
                          for name in {name for r in both for name in r["marks"]}},
            }  # fmt: skip
            if side == "hubclf":
                # metrics.jsonl's per-epoch seconds (train + evaluation, no writes) of the long runs' later epochs
                sides[side]["in_epoch_s"] = _median([s for r in many for s in r["epoch_seconds"][1:]])
                sides[side]["best_writes"] = [r["best_writes"] for r in many]
                sides[side]["precisions"] = sorted({r["precision"] for r in both})
                sides[side]["written_mib"] = _median([r["written_mib"] for r in many])
        hubclf_s = sides["hubclf"]["steady_s"] if sides["hubclf"] else math.nan

        def ratio(side: str, sides: dict[str, Any] = sides, hubclf_s: float = hubclf_s) -> float | None:
            return sides[side]["steady_s"] / hubclf_s if sides[side] else None

        out_rows.append({
            "row": row.name, "label": row.label, "model": row.model, "mode": row.mode, "epochs": row.epochs,
            "train_images": first["train_images"], "val_images": first["val_images"], "precision": precision,
            "floor_s": floor_s, "floor_layout": layouts, "floor_values": [f["epoch_s"] for f in measured],
            "floor_results": [f["results"] for f in measured],
            "train_gflop_per_image": first["train_gflop_per_image"],
            "eval_gflop_per_image": first["eval_gflop_per_image"], "epoch_gflop": epoch_gflop,
            "peak_gflops": peak, "floor_over_hubclf": floor_s / hubclf_s,
            "floor_peak_fraction": epoch_gflop / floor_s / peak if peak else None,
            "hubclf_peak_fraction": epoch_gflop / hubclf_s / peak if peak else None,
            "vs_plain": ratio("plain"), "vs_timm": ratio("timm"), "sides": sides,
        })  # fmt: skip
    return {"rows": out_rows, "peak_gflops": best_peak, "peaks": peaks, "import_torch_timm_s": import_s,
            "import_torch_timm_wall_s": _median([i["wall_s"] for i in imports]), "imports": imports,
            "repeats": args.repeats, "batch_size": args.batch_size, "num_workers": args.num_workers,
            "img_size": list(args.img_size), "device": args.device}  # fmt: skip


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    """``value`` formatted, with its unit; "-" where there is none."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec) + unit


def format_floor(summary: dict[str, Any]) -> list[str]:
    """The tables ``floor`` prints (the docs show them as they are)."""
    rows = summary["rows"]
    layouts = {"eager/channels_last": "CL", "eager/contiguous": "NCHW", "eager/-": "-"}
    peak = summary["peak_gflops"]
    height, width = summary["img_size"]
    lines = [
        f"{height}x{width}, batch {summary['batch_size']}, {summary['num_workers']} loader worker(s); medians of "
        f"{summary['repeats']} repeat(s); s/ep = seconds per epoch (train + validation)",
        "",
        f"{'row':<40} {'images':>8} {'GFLOP/img':>11} {'floor s/ep':>13} {'hubclf s/ep':>11} {'floor/hubclf':>12} "
        f"{'% of peak':>11} {'plain s/ep':>10} {'vs plain':>8} {'timm s/ep':>9} {'vs timm':>7}",
    ]  # fmt: skip
    lines.append("-" * len(lines[-1]))
    for r in rows:
        sides = r["sides"]
        label = f"{r['label']} ({_precision_label(r['precision'])})"
        floor = f"{_fmt(r['floor_s'], '.2f')} ({layouts.get(r['floor_layout'], r['floor_layout'])})"
        gflop = f"{r['train_gflop_per_image']:.2f}+{r['eval_gflop_per_image']:.2f}"
        if r["train_gflop_per_image"] < 0.1:
            gflop = f"{r['train_gflop_per_image'] * 1e3:.2f}+{r['eval_gflop_per_image'] * 1e3:.2f}M"
        fractions = f"{_fmt(_pct(r['floor_peak_fraction']), '.0f')}/{_fmt(_pct(r['hubclf_peak_fraction']), '.0f')}%"
        plain, timm = sides.get("plain"), sides.get("timm")
        lines.append(
            f"{label:<40} {r['train_images']:>4}+{r['val_images']:<3} {gflop:>11} {floor:>13} "
            f"{_fmt(sides['hubclf'] and sides['hubclf']['steady_s'], '.2f'):>11} "
            f"{_fmt(r['floor_over_hubclf'], '.2f'):>12} {fractions:>11} "
            f"{_fmt(plain and plain['steady_s'], '.2f'):>10} {_fmt(r['vs_plain'], '.2f', 'x'):>8} "
            f"{_fmt(timm and timm['steady_s'], '.2f'):>9} {_fmt(r['vs_timm'], '.2f', 'x'):>7}"
        )
    peak_text = f"fp32 {_fmt(peak['fp32'], '.0f')} GFLOP/s" + (
        f", bf16 {peak['bf16']:.0f} GFLOP/s" if peak.get("bf16") else ", bf16 not measured (no bf16 instructions)"
    )
    lines += [
        "",
        "floor: the run's model, batch, optimizer (hubclf's, fused) and precision on synthetic tensors in memory, "
        "one epoch's train steps + evaluation batches, best layout (CL: channels-last)",
        "s/ep (hubclf, plain, timm): (wall of an N-epoch run - wall of a 1-epoch run) / (N - 1), process start to "
        "exit, every write included",
        f"GFLOP/img: train step (forward + backward) + evaluation forward, counted by FlopCounterMode; % of peak: "
        f"floor/hubclf against this machine's best {summary['peaks'][0]['n']}² torch.mm ({peak_text})",
        "vs plain, vs timm: their s/ep / hubclf's (above 1: hubclf is faster); plain = torchvision model, ImageFolder, "
        "fp32, NCHW; timm = its train.py with hubclf's settings, precision and layout",
    ]  # fmt: skip
    lines += ["", "where hubclf's epoch goes (medians; checkpoints and best/ are written in the background while the "
              "next epoch trains, so their time shows inside the epoch, and 'around it' can be below 0):"]
    for r in rows:
        hub = r["sides"]["hubclf"]
        if not hub:
            continue
        around = hub["steady_s"] - hub["in_epoch_s"]
        lines.append(
            f"  {r['row']:<15} {hub['steady_s']:7.2f} s = {hub['in_epoch_s']:6.2f} s inside the epoch (metrics.jsonl: "
            f"train + eval; the floor is {r['floor_s']:.2f} s) + {around:5.2f} s around it (checkpoint, best/ written "
            f"{'/'.join(map(str, hub['best_writes']))} of {r['epochs']} epochs, metrics); "
            f"{hub['written_mib']:.0f} MiB on disk after {r['epochs']} epochs"
        )
    lines += ["", "start-up: command -> first training step, medians; python -c 'import torch, timm' has imported "
              f"them at {summary['import_torch_timm_s']:.2f} s (and exited at "
              f"{summary['import_torch_timm_wall_s']:.2f} s)"]  # fmt: skip
    lines.append(f"  {'row':<15} {'hubclf: step starts':>20} {'(vs import)':>12} {'first step done':>16} "
                 f"{'plain: first step done':>23} {'timm: first step done':>22}")  # fmt: skip
    for r in rows:
        sides = r["sides"]

        def at(side: str, mark: str, sides: dict[str, Any] = sides) -> float | None:
            found = sides.get(side) and sides[side]["marks"].get(mark)
            return found["t"] if found else None

        starts = at("hubclf", "step starts")
        extra = None if starts is None else starts - summary["import_torch_timm_s"]
        lines.append(f"  {r['row']:<15} {_fmt(starts, '.2f', 's'):>20} {_fmt(extra, '+.2f', 's'):>12} "
                     f"{_fmt(at('hubclf', 'first step'), '.2f', 's'):>16} "
                     f"{_fmt(at('plain', 'first step'), '.2f', 's'):>23} "
                     f"{_fmt(at('timm', 'first step'), '.2f', 's'):>22}")  # fmt: skip
    lines += ["", "peak RSS (MiB; medians): the process at each phase, and the peak of its process tree"]
    phases = ("imports", "data", "model", "first step")
    lines.append(f"  {'row':<15} {'side':<7} " + " ".join(f"{p:>11}" for p in phases) + f" {'peak':>8} {'vs plain':>9}")
    for r in rows:
        plain_peak = r["sides"]["plain"] and r["sides"]["plain"]["peak_rss_mib"]
        for side in ("hubclf", "plain"):
            found = r["sides"].get(side)
            if not found:
                continue
            cells = " ".join(_fmt(found["marks"].get(p, {}).get("rss_mib"), ".0f").rjust(11) for p in phases)
            versus = found["peak_rss_mib"] / plain_peak if plain_peak else None
            peak_cell = f"{found['peak_rss_mib']:8.0f} {_fmt(versus, '.2f', 'x'):>9}"
            lines.append(f"  {r['row']:<15} {side:<7} {cells} {peak_cell}")
    lines.append("  imports: hubclf's first log line (torch, timm, accelerate imported, and 🤗 datasets unless the "
                 "data is class folders; Accelerate set up); data: the splits read; model: model, datasets and "
                 "loaders built (the first progress bar)")
    lines += ["", "goals (issue 24) for AlexNet full fine-tune:"]
    alex = next((r for r in rows if r["row"] == "alexnet-full"), None)
    if alex and alex["sides"]["hubclf"]:
        bf16 = bool(peak.get("bf16"))
        starts = alex["sides"]["hubclf"]["marks"].get("step starts", {}).get("t")
        extra = None if starts is None else starts - summary["import_torch_timm_s"]
        goals = [
            ("end-to-end epoch <= 1.1x the floor (floor/hubclf >= 0.9)", alex["floor_over_hubclf"], 0.9, ".2f"),
            ("hubclf >= 1.5x timm's train.py", alex["vs_timm"], 1.5, ".2f"),
            ("hubclf >= 2x the plain loop where the CPU has bf16", alex["vs_plain"] if bf16 else None, 2.0, ".2f"),
        ]
        for text, value, goal, spec in goals:
            verdict = "n/a" if value is None else ("met" if value >= goal else "not met")
            if "bf16" in text and not bf16:
                verdict = "n/a (no bf16 instructions on this CPU)"
            timm = alex["sides"].get("timm")
            if "timm" in text and verdict == "not met" and timm and timm["steady_s"] < goal * alex["floor_s"]:
                # hubclf cannot beat the floor, so timm's own distance from it caps the ratio on this machine
                verdict += (f" (at most {timm['steady_s'] / alex['floor_s']:.2f}x here, at the floor: timm's "
                            f"train.py runs at {alex['floor_s'] / timm['steady_s']:.2f} of it)")  # fmt: skip
            lines.append(f"  {text:<58} {_fmt(value, spec):>7}  {verdict}")
        verdict = "n/a" if extra is None else ("met" if extra <= 2.0 else "not met")
        lines.append(f"  {'start-up <= import of torch and timm + 2 s':<58} {_fmt(extra, '+.2f', 's'):>7}  {verdict}")
    precisions = {p for r in rows if r["sides"]["hubclf"] for p in r["sides"]["hubclf"]["precisions"]}
    if any(p != r["precision"] for r in rows if r["sides"]["hubclf"] for p in r["sides"]["hubclf"]["precisions"]):
        lines.append(f"  warning: hubclf trained in {sorted(precisions)}, the floor in the row's precision")
    lines.append(f"\nbench: {summary.get('seconds', 0) / 60:.1f} min; {summary.get('provenance', '')}")
    return lines


def _pct(fraction: float | None) -> float | None:
    return None if fraction is None else 100 * fraction


# ---- `scale`: how time per image, memory and disk grow with the data (issue 21) ------------------------------------
SCALE_SIZES = (1_000, 10_000, 100_000)
SCALE_VARIANTS = ("64x64", "448x224")
SCALE_MODES = ("full", "frozen", "cached")
SCALE_INPUTS = ("folder", "shards")
TRAIN_FRACTION = 0.9  # of each size's images; the rest is the validation split
SHARDS_PER_SPLIT = 16  # enough to split across 2 processes x 2 loader workers, and more
# Images measured after the warm-up steps, per variant and mode; None: the whole epoch. 100k full fine-tune epochs do
# not fit on 2 cores (AlexNet: ~10 img/s at 448x224), so those runs stop after this many images, and their start-up
# (the scan, the datasets cache) is measured in full; frozen and cached runs at 64x64 run whole epochs at every size,
# so the feature cache's and the image cache's memory is measured at its full size.
SCALE_WINDOWS: dict[str, dict[str, int | None]] = {
    "64x64": {"full": 2048, "frozen": None, "cached": None},
    "448x224": {"full": 256, "frozen": 256, "cached": 256},
}
# --smoke: tiny sizes; the full fine-tune runs are bounded, the others whole, so that both paths run.
SMOKE_WINDOWS: dict[str, dict[str, int | None]] = {"64x64": {"full": 24, "frozen": None, "cached": None}}
SCALE_WARMUP_STEPS = 3
# Object sizes of the demo's target images at each height (their 448x224 original: 32-60 px).
_OBJECT_SIZE = {64: (14, 26)}


def _variant_size(variant: str) -> tuple[int, int]:
    height, _, width = variant.partition("x")
    return int(height), int(width)


def _split_counts(images: int) -> dict[str, int]:
    train = round(images * TRAIN_FRACTION)
    return {"train": train, "validation": images - train}


@functools.lru_cache(maxsize=4)
def _scale_pool(height: int, width: int, per_class: int = 16) -> list[list[Any]]:
    """The demo's target images (8 classes, seeded), ``per_class`` of each, as uint8 arrays: the bases of every
    generated image."""
    import numpy as np

    from hubclf.demo.data import TARGET_CLASSES, _image_rng, render_target_image

    objects = _OBJECT_SIZE.get(height, (32, 60))
    return [
        [np.asarray(render_target_image(_image_rng(0, "target", "scale", name, i), name, (height, width), objects)
                    .convert("RGB")) for i in range(per_class)]
        for name in TARGET_CLASSES
    ]  # fmt: skip


def _write_scale_images(folder: str, height: int, width: int, jobs: list[tuple[str, int]]) -> int:
    """Images ``(split, index)``: class ``index % 8``; a base image shifted, flipped and brightened by its own seeded
    draw, so that every file is different (and decodes at a real JPEG's cost), JPEG quality 90."""
    import numpy as np
    from PIL import Image

    from hubclf.demo.data import TARGET_CLASSES

    pool = _scale_pool(height, width)
    for split, index in jobs:
        rng = np.random.default_rng([0, int(split == "train"), index])
        cls = index % len(TARGET_CLASSES)
        base = pool[cls][int(rng.integers(len(pool[cls])))]
        pixels = np.roll(base, (int(rng.integers(height)), int(rng.integers(width))), axis=(0, 1))
        if rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        pixels = np.clip(pixels.astype(np.int16) + int(rng.integers(-24, 25)), 0, 255).astype(np.uint8)
        target = Path(folder, split, TARGET_CLASSES[cls], f"{index:06d}.jpg")
        Image.fromarray(pixels).save(target, quality=90)
    return len(jobs)


def make_scale_data(root: Path, size: tuple[int, int], counts: list[int]) -> dict[int, dict[str, Any]]:
    """Image folders of ``counts`` images each (the largest generated, the others hard links to its first images)
    and the same images as WebDataset shards (``{split}/{split}-NNNNNN.tar`` of ``KEY.jpg`` + ``KEY.cls``, the
    class index; ``classes.txt`` names them). Kept in ``root`` for later runs."""
    from hubclf.demo.data import TARGET_CLASSES

    height, width = size
    largest = max(counts)
    source = root / f"folder-{height}x{width}-{largest}"
    if not (source / "done").exists():
        shutil.rmtree(source, ignore_errors=True)
        for split in ("train", "validation"):
            for name in TARGET_CLASSES:
                (source / split / name).mkdir(parents=True)
        jobs = [(split, i) for split, n in _split_counts(largest).items() for i in range(n)]
        workers = max(1, min(os.cpu_count() or 1, len(jobs) // 500))
        chunks = [jobs[i : i + 2000] for i in range(0, len(jobs), 2000)]
        started = time.perf_counter()
        _scale_pool(height, width)  # drawn once here: forked workers inherit it
        write = functools.partial(_write_scale_images, str(source), height, width)
        if workers == 1:
            for chunk in chunks:
                write(chunk)
        else:
            import multiprocessing

            context = multiprocessing.get_context("fork")
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
                list(pool.map(write, chunks))
        (source / "done").write_text("ok\n")
        print(f"generated {largest} {height}x{width} JPEGs in {time.perf_counter() - started:.0f} s", flush=True)
    found = {}
    for n in counts:
        folder = root / f"folder-{height}x{width}-{n}"
        if not (folder / "done").exists():
            shutil.rmtree(folder, ignore_errors=True)
            for split, count in _split_counts(n).items():
                for index in range(count):
                    name = TARGET_CLASSES[index % len(TARGET_CLASSES)]
                    target = folder / split / name / f"{index:06d}.jpg"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.link(source / split / name / f"{index:06d}.jpg", target)
            (folder / "done").write_text("ok\n")
        shards = root / f"wds-{height}x{width}-{n}"
        if not (shards / "done").exists():
            shutil.rmtree(shards, ignore_errors=True)
            _write_shards(folder, shards, _split_counts(n))
            (shards / "done").write_text("ok\n")
        found[n] = {"folder": folder, "shards": shards, "data_mib": _tree_bytes(folder) / MIB,
                    "shards_mib": _tree_bytes(shards) / MIB}  # fmt: skip
    return found


def _write_shards(folder: Path, shards: Path, counts: dict[str, int]) -> None:
    from hubclf.demo.data import TARGET_CLASSES

    shards.mkdir(parents=True)
    (shards / "classes.txt").write_text("\n".join(TARGET_CLASSES) + "\n")
    for split, count in counts.items():
        (shards / split).mkdir()
        per_shard = math.ceil(count / min(SHARDS_PER_SPLIT, max(count, 1)))
        for shard, start in enumerate(range(0, count, per_shard)):
            with tarfile.open(shards / split / f"{split}-{shard:06d}.tar", "w") as tar:
                for index in range(start, min(start + per_shard, count)):
                    cls = index % len(TARGET_CLASSES)
                    key = f"{split}_{index:06d}"
                    jpeg = (folder / split / TARGET_CLASSES[cls] / f"{index:06d}.jpg").read_bytes()
                    for suffix, payload in (("jpg", jpeg), ("cls", str(cls).encode())):
                        info = tarfile.TarInfo(f"{key}.{suffix}")
                        info.size, info.mtime = len(payload), 0
                        tar.addfile(info, io.BytesIO(payload))


def scale_command(data: str, size: tuple[int, int], mode: str, args: argparse.Namespace, out: str) -> list[str]:
    freeze = {
        "full": ["--freeze", "none"],
        "frozen": ["--freeze", "backbone", "--cache-features", "off"],
        # the default: shards on disk, read in place, so that memory does not grow with the images (issue 21)
        "cached": ["--freeze", "backbone", "--cache-features", "disk"],
    }[mode]
    return [
        sys.executable, "-m", "hubclf.cli", "train", "--model", ARCHITECTURES[args.model], "--no-pretrained",
        "--data", data, "--img-size", str(size[0]), str(size[1]), *freeze, "--no-augment", "--crop-pct", "1",
        "--smoothing", "0", "--opt", "momentum", "--lr", "0.01", "--weight-decay", "0", "--sched", "none",
        "--warmup-epochs", "0", "--batch-size", str(args.batch_size), "--num-workers", str(args.num_workers),
        "--epochs", "1", "--output-dir", out,
    ]  # fmt: skip


def scale_run(
    data: str, size: tuple[int, int], images: int, mode: str, window: int | None, args: argparse.Namespace,
    scratch: Path,
) -> dict[str, Any]:  # fmt: skip
    """One ``hubclf train --epochs 1`` from a cold datasets cache (its own ``HF_HOME``): the scan is start-up.

    Time per image is taken on the mode's per-image work once ``SCALE_WARMUP_STEPS`` steps are done: the training
    steps (full, frozen) or the feature extraction over the train split (cached); with a ``window`` the run is
    stopped (SIGKILL) once that many more images are done."""
    out, hf_home = Path(tempfile.mkdtemp(prefix="out-", dir=scratch)), Path(tempfile.mkdtemp(prefix="hf-", dir=scratch))
    bar = "train features" if mode == "cached" else "epoch 1/1"
    train = _split_counts(images)["train"]
    steps = math.ceil(train / args.batch_size)
    warmup = min(SCALE_WARMUP_STEPS, max(steps - 1, 0))
    stop_at = warmup + math.ceil(window / args.batch_size) if window else None
    if stop_at is not None and stop_at >= steps:
        stop_at = None  # the whole epoch is no longer than the window: run it whole

    def stop(seen: Watched) -> bool:
        return stop_at is not None and seen.reached(bar, stop_at) is not None

    try:
        seen = watch(scale_command(data, size, mode, args, str(out)), _watch_env(args.device, hf_home),
                     marks=(("cache", r"image cache"),), stop=stop)  # fmt: skip
        seen.check(f"hubclf train ({mode}, {images} images at {size[0]}x{size[1]})")
        hubclf_mib = (_tree_bytes(out) + _tree_bytes(hf_home)) / MIB
    finally:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(hf_home, ignore_errors=True)
    updates = seen.updates(bar)
    begin = next(((t, n) for t, n, _ in updates if n >= warmup), None)
    end = updates[-1][:2] if updates else None
    per_image = None
    if begin and end and end[1] > begin[1]:
        done = min(end[1] * args.batch_size, train) - begin[1] * args.batch_size
        per_image = (end[0] - begin[0]) / done
    cache_line = next((text for _, text in seen.lines if "image cache" in text), "")
    cache_state, cache_mib = _image_cache_kept(cache_line)
    return {
        "images": images, "mode": mode, "bounded": seen.stopped, "measured_images": (
            min(end[1] * args.batch_size, train) - begin[1] * args.batch_size) if begin and end else 0,
        "startup_s": updates[0][0] if updates else None, "s_per_image": per_image,
        "run_s_per_image": None if seen.stopped else seen.wall_s / images, "wall_s": seen.wall_s,
        "peak_rss_mib": seen.peak_rss_mib, "shm_peak_mib": seen.shm_peak_mib, "hubclf_disk_mib": hubclf_mib,
        "image_cache": cache_state, "image_cache_mib": cache_mib,
    }  # fmt: skip


def _image_cache_kept(line: str) -> tuple[str, float]:
    """What hubclf's image-cache log line says it kept: ``("on"|"partial"|"off"|"-", MiB)``. A partial cache keeps
    the first rows that fit its budget: their share of the MiB the whole split would take."""
    if not line:
        return "-", 0.0
    needed = re.search(r"([\d.]+) MiB", line)
    if line.startswith("image cache off") or "image cache off" in line or not needed:
        return "off", 0.0
    if "image cache partial" not in line:
        return "on", float(needed.group(1))
    rows = [int(n) for n in re.findall(r"(\d+) (?:train|eval)\b", line.partition("; the first")[0])]
    kept = [int(n) for n in re.findall(r"(\d+) (?:train|eval)\b", line.partition("; the first")[2])]
    return "partial", float(needed.group(1)) * sum(kept) / max(sum(rows), 1)


def probe_shards(shards: Path, size: tuple[int, int], args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """Whether ``hubclf train --data`` takes WebDataset shards yet: a run on them that reaches its first training step
    (then stopped) says yes. Spellings tried: the folder of shards, then ``wds:FOLDER``."""
    reasons = []
    for spelling in (str(shards), f"wds:{shards}"):
        out, hf_home = Path(tempfile.mkdtemp(dir=scratch)), Path(tempfile.mkdtemp(dir=scratch))
        try:
            seen = watch(scale_command(spelling, size, "full", args, str(out)), _watch_env(args.device, hf_home),
                         stop=lambda seen: seen.reached("epoch 1/1", 1) is not None)  # fmt: skip
        finally:
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(hf_home, ignore_errors=True)
        if seen.stopped or seen.returncode == 0:
            return {"supported": True, "spelling": spelling.replace(str(shards), "FOLDER")}
        error = [text for _, text in seen.lines if "error" in text.lower()] or [text for _, text in seen.lines[-1:]]
        reasons.append(error[-1][:160] if error else f"exit status {seen.returncode}")
    return {"supported": False, "reason": reasons[0]}


def scale_main(args: argparse.Namespace) -> None:
    bench_started = time.perf_counter()
    root = Path(args.workdir) / "scale"
    scratch = root / "runs"
    scratch.mkdir(parents=True, exist_ok=True)
    from hubclf.hardware import shared_memory_budget

    budget_mib = shared_memory_budget(1) / MIB
    print(f"scale: {_cpu_model()}, {os.cpu_count()} cores; {_provenance()}")
    print(f"hubclf_{args.model}, batch {args.batch_size}, {args.num_workers} loader worker(s), 1 epoch per run, "
          f"{TRAIN_FRACTION:.0%} train / {1 - TRAIN_FRACTION:.0%} validation; image cache budget "
          f"{budget_mib:.0f} MiB", flush=True)  # fmt: skip
    results: list[dict[str, Any]] = []
    for variant in args.variants:
        size = _variant_size(variant)
        made = make_scale_data(root, size, sorted(args.sizes))
        shard_support = probe_shards(made[min(args.sizes)]["shards"], size, args, scratch)
        for images in sorted(args.sizes):
            for mode in args.modes:
                windows = SMOKE_WINDOWS if args.smoke else SCALE_WINDOWS
                window = args.window_images if args.window_images is not None else windows.get(variant, {}).get(
                    mode, 256)  # fmt: skip
                for source in args.inputs:
                    data_mib = made[images]["shards_mib" if source == "shards" else "data_mib"]
                    row: dict[str, Any] = {"variant": variant, "input": source, "data_mib": data_mib}
                    if source == "shards" and not shard_support["supported"]:
                        row.update(images=images, mode=mode, unsupported=shard_support["reason"])
                    else:
                        data = made[images][source]
                        if source == "shards":
                            data = Path(shard_support["spelling"].replace("FOLDER", str(data)))
                        row.update(scale_run(str(data), size, images, mode, window, args, scratch))
                    results.append(row)
                    if "unsupported" not in row:
                        print(f"{variant:>8} {images:>7} {mode:<7} {source:<7} "
                              f"{_fmt(row['s_per_image'] and row['s_per_image'] * 1e3, '.2f')} ms/img, "
                              f"start-up {_fmt(row['startup_s'], '.1f')} s, peak RSS {row['peak_rss_mib']:.0f} MiB"
                              f"{' (bounded)' if row['bounded'] else ''}", flush=True)  # fmt: skip
    summary = {"rows": results, "budget_mib": budget_mib, "sizes": sorted(args.sizes), "variants": args.variants,
               "modes": args.modes, "batch_size": args.batch_size, "num_workers": args.num_workers,
               "model": args.model, "provenance": _provenance(), "cpu": _cpu_model(),
               "command": " ".join(["python", "scripts/bench.py", *sys.argv[1:]]),
               "seconds": time.perf_counter() - bench_started}  # fmt: skip
    print()
    print("\n".join(format_scale(summary)))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
        print(f"\nwrote {args.json}")


def format_scale(summary: dict[str, Any]) -> list[str]:
    """The growth table, each figure's ratio to the smallest size, and the goals beside them."""
    sizes = summary["sizes"]
    lines = [f"{'variant':<8} {'mode':<7} {'input':<7} {'images':>7} {'ms/img':>8} {'x':>6} {'start-up s':>10} "
             f"{'run ms/img':>10} {'peak RSS MiB':>12} {'x':>6} {'shm MiB':>8} {'RSS-shm':>8} {'x':>6} "
             f"{'data MiB':>9} {'hubclf disk MiB':>15} {'x':>6} {'image cache MiB':>15}"]  # fmt: skip
    lines.append("-" * len(lines[0]))
    rows = summary["rows"]
    for variant in summary["variants"]:
        for mode in summary["modes"]:
            for source in ("folder", "shards"):
                group = [r for r in rows if (r["variant"], r["mode"], r["input"]) == (variant, mode, source)]
                base = next((r for r in group if r["images"] == sizes[0] and "unsupported" not in r), None)
                for r in group:
                    head = f"{variant:<8} {mode:<7} {source:<7} {r['images']:>7}"
                    if "unsupported" in r:
                        lines.append(f"{head} not supported yet: {r['unsupported']}")
                        continue

                    def ratio(key: str, row: dict[str, Any] = r, base: dict[str, Any] | None = base) -> str:
                        if not base or not row.get(key) or not base.get(key):
                            return "-"
                        return f"{row[key] / base[key]:.2f}"

                    own = _own_memory(r)
                    own_x = f"{own / _own_memory(base):.2f}" if base and _own_memory(base) else "-"

                    ms = r["s_per_image"] and r["s_per_image"] * 1e3
                    run_ms = r["run_s_per_image"] and r["run_s_per_image"] * 1e3
                    cache = {"-": "-", "off": "off (over budget)"}.get(
                        r["image_cache"], f"{r['image_cache_mib']:.0f}" + (" part" if r["image_cache"] == "partial"
                                                                            else ""))  # fmt: skip
                    lines.append(f"{head} {_fmt(ms, '.2f'):>8} {ratio('s_per_image'):>6} "
                                 f"{_fmt(r['startup_s'], '.1f'):>10} {_fmt(run_ms, '.2f'):>10} "
                                 f"{r['peak_rss_mib']:>12.0f} {ratio('peak_rss_mib'):>6} "
                                 f"{r.get('shm_peak_mib', 0.0):>8.0f} {own:>8.0f} {own_x:>6} {r['data_mib']:>9.1f} "
                                 f"{r['hubclf_disk_mib']:>15.1f} {ratio('hubclf_disk_mib'):>6} {cache:>15}"
                                 + ("  bounded" if r["bounded"] else ""))  # fmt: skip
    lines += [
        "",
        "ms/img: the mode's per-image work in steady state (after the first steps): train steps (full, frozen), "
        "feature extraction over the train split (cached); x: / the smallest size's",
        "start-up: command -> that work's first step (includes the datasets scan from a cold cache); run ms/img: the "
        "whole run's wall time / images, where the run was not bounded",
        "bounded: stopped after the window of images (start-up and ms/img measured; peak RSS and disk up to the "
        "stop); hubclf disk: its datasets cache + output folder",
        "shm: the most shared memory one process had resident (the image cache's pixels, bounded by its budget); "
        "RSS-shm: peak RSS less that, the memory of the process's own",
        f"image cache: what hubclf kept in shared memory (its log), budget {summary['budget_mib']:.0f} MiB",
        "",
        f"goals (issue 21), {sizes[-1]} images against {sizes[-2] if len(sizes) > 1 else sizes[-1]}:",
    ]  # fmt: skip
    if len(sizes) > 1:
        big, mid = sizes[-1], sizes[-2]
        for variant in summary["variants"]:
            for mode in summary["modes"]:
                pick = {r["images"]: r for r in rows if (r["variant"], r["mode"], r["input"]) == (variant, mode,
                                                                                                   "folder")}
                if big not in pick or mid not in pick:
                    continue
                t = pick[big]["s_per_image"] / pick[mid]["s_per_image"] if pick[mid]["s_per_image"] else None
                m = pick[big]["peak_rss_mib"] / pick[mid]["peak_rss_mib"]
                own = _own_memory(pick[big]) / _own_memory(pick[mid])
                bounded = " (bounded runs: memory until the stop)" if pick[big]["bounded"] else ""
                lines.append(f"  {variant:<8} {mode:<7} time/img {_fmt(t, '.2f')}x (<= 1.1: "
                             f"{'met' if t and t <= 1.1 else 'not met'}), peak RSS {m:.2f}x (<= 1.2: "
                             f"{'met' if m <= 1.2 else 'not met'}), without the image cache's shared memory "
                             f"{own:.2f}x ({'met' if own <= 1.2 else 'not met'}){bounded}")  # fmt: skip
    over = [r for r in rows if r.get("image_cache_mib", 0) > summary["budget_mib"]]
    lines.append(f"  image cache within its budget in every run: {'yes' if not over else f'no ({len(over)} runs)'}")
    lines.append(f"\nbench: {summary['seconds'] / 60:.1f} min; {summary['provenance']}")
    return lines


def _own_memory(row: dict[str, Any]) -> float:
    """A run's peak RSS less the shared memory it had resident: what it holds apart from the image cache."""
    return max(row["peak_rss_mib"] - row.get("shm_peak_mib", 0.0), 0.0)


# ---- `gpu`: every GPU figure the docs need, in one command (scripts/gpu_check.sh; issues 21 and 24) ---------------
GPU_MODELS = {"alexnet": 256, "vgg11": 64}  # batch per model for the img/s figures
GPU_DATA_IMAGES = 4096  # JPEGs at 448x224 for the input pipeline and the hubclf-vs-plain-loop runs
# A log line in which hubclf says where it decodes (once it can decode on the GPU: issue 21 item 5).
DECODE_DECISION = re.compile(r"(?i)\bdecod\w*\b.*\b(gpu|cuda|nvjpeg|dali|torchcodec)\b")


def no_gpu_reason() -> str | None:
    """Why this machine cannot run the GPU checks, or None. The cheap checks come first: without a driver, torch is
    never imported, and the answer comes at once."""
    if not any(Path("/dev").glob("nvidia[0-9]*")) and not shutil.which("nvidia-smi"):
        return "no NVIDIA GPU here (no /dev/nvidia* device, no nvidia-smi)"
    probe = subprocess.run([sys.executable, "-c", "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"],
                           capture_output=True)  # fmt: skip
    if probe.returncode != 0:
        return "torch sees no CUDA device (torch.cuda.is_available() is False)"
    return None


def gpu_main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    dry = args.cpu_dry_run
    if not dry and (reason := no_gpu_reason()):
        print(f"gpu_check: error: {reason}", file=sys.stderr)
        raise SystemExit(2)
    device = "cpu" if dry else "cuda"
    if dry:
        args.budget = math.inf  # every part runs, whatever the machine's load
    workdir = Path(args.workdir) / ("gpu-dry-run" if dry else "gpu")
    env = _watch_env(device, workdir / "hf-home")
    size = (96, 64) if dry else (448, 224)
    report: dict[str, Any] = {"budget_s": args.budget, "dry_run": dry, "img_size": list(size)}
    print(f"gpu_check: {_provenance()}; " + ("CPU dry run: tiny sizes" if dry else f"budget {args.budget:.0f} s"))

    def section(name: str, minimum_s: float, run: Any) -> None:
        spent = time.perf_counter() - started
        if args.budget - spent < minimum_s:
            report[name] = {"skipped": f"{args.budget - spent:.0f} s of the {args.budget:.0f} s budget left, "
                                       f"this part needs ~{minimum_s:.0f} s"}  # fmt: skip
        else:
            try:
                report[name] = run()
            except Exception as error:  # one failed part leaves the others' figures
                report[name] = {"error": f"{type(error).__name__}: {str(error).strip().splitlines()[-1][:300]}"}
        print("\n".join(format_gpu(report, only=name)), flush=True)

    batch = {model: 4 for model in GPU_MODELS} if dry else dict(GPU_MODELS)
    section("device", 10, lambda: run_job({"task": "device", "device": device}, env).result)
    section("peak", 20, lambda: run_job({"task": "peak", "device": device, "n": 256 if dry else 8192,
                                         "repeats": 5}, env).result)  # fmt: skip
    section("models", 60, lambda: {
        "batch": batch, **run_job({"task": "gpu_models", "device": device, "img_size": list(size), "models": batch,
                                   "precisions": ["no"] if dry else ["no", "bf16"], "steps": 2 if dry else 20},
                                  env).result})  # fmt: skip
    images = 80 if dry else GPU_DATA_IMAGES  # 80: every class gets a validation image
    data: dict[str, Any] = {}

    def input_pipeline() -> dict[str, Any]:
        data.update(make_scale_data(workdir / "data", size, [images])[images])
        from hubclf.hardware import default_num_workers

        spec = {"task": "gpu_input", "device": device, "data": str(data["folder"]), "img_size": list(size),
                "batch_size": batch["alexnet"], "num_workers": default_num_workers()}  # fmt: skip
        return {"images": _split_counts(images)["train"], **run_job(spec, env).result}

    section("input", 60, input_pipeline)
    section("stages", 30, lambda: run_job({"task": "gpu_stages", "device": device, "data": str(data["folder"]),
                                           "img_size": list(size), "batch_size": batch["alexnet"]}, env).result)
    section("vs_plain", 120, lambda: gpu_vs_plain(data, size, batch["alexnet"], env, workdir, dry))
    section("floor", 150, lambda: run_job({
        "task": "floor", "model": "hubclf_alexnet", "mode": "full", "device": device, "img_size": list(size),
        "batch_size": batch["alexnet"], "train_images": batch["alexnet"] * (2 if dry else 20),
        "val_images": batch["alexnet"] * (1 if dry else 4), "precision": "bf16", "passes": 2, "warmup": 3,
        "variants": ["eager"] if dry else ["eager", "compile", "cudagraphs"], "compiled_layout": "best",
    }, env).result)  # fmt: skip
    report["seconds"] = time.perf_counter() - started
    print(f"\ngpu_check: {report['seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


def gpu_vs_plain(data: dict[str, Any], size: tuple[int, int], batch: int, env: dict[str, str], workdir: Path,
                 dry: bool) -> dict[str, Any]:  # fmt: skip
    """hubclf against the plain loop on one GPU, AlexNet full fine-tune: the steady-state seconds per epoch of each
    (N-epoch run − 1-epoch run). hubclf runs with its defaults (``--mixed-precision auto``: bf16 on a GPU with bf16
    tensor cores, ``--decode-device auto``), the plain loop as a user writes it (fp32) and, when hubclf chose bf16,
    also under bf16 autocast: the same arithmetic. hubclf's workers: its ``auto``; the plain loop's: the same."""
    if "folder" not in data:
        raise RuntimeError("no data: the input section did not run")
    from hubclf.hardware import default_num_workers

    args = argparse.Namespace(img_size=list(size), batch_size=batch, num_workers=default_num_workers(), lr=0.01,
                              device="cpu" if dry else "cuda")  # fmt: skip
    row = dataclasses.replace(FLOOR_ROWS[0], epochs=2 if dry else 3)
    runs_dir = workdir / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    found: dict[str, Any] = {"images": GPU_DATA_IMAGES if not dry else 80, "batch": batch,
                             "workers": args.num_workers, "epochs": row.epochs}  # fmt: skip

    def measure(side: str, side_args: argparse.Namespace) -> dict[str, Any]:
        runs = [run_side(side, row, str(data["folder"]), side_args, epochs, env, runs_dir, None, {})
                for epochs in (1, row.epochs)]  # fmt: skip
        return {"steady_s": _steady(runs[:1], runs[1:], row.epochs)[0], "wall_s": [r["wall_s"] for r in runs],
                "first_step_s": [r["marks"].get("first step", {}).get("t") for r in runs],
                "precision": runs[0].get("precision") or getattr(side_args, "plain_mixed_precision", None) or "no",
                "decode_line": runs[0].get("decode_line")}  # fmt: skip

    found["hubclf"] = measure("hubclf", args)
    found["decode_line"] = found["hubclf"]["decode_line"]
    found["plain"] = measure("plain", args)
    found["ratio"] = found["plain"]["steady_s"] / found["hubclf"]["steady_s"]
    if found["hubclf"]["precision"] == "bf16":
        found["plain_bf16"] = measure("plain", argparse.Namespace(**vars(args), plain_mixed_precision="bf16"))
        found["ratio_bf16"] = found["plain_bf16"]["steady_s"] / found["hubclf"]["steady_s"]
    return found


def format_gpu(report: dict[str, Any], only: str | None = None) -> list[str]:
    """The lines of each part of the GPU report (``only``: one part, as it finishes)."""
    lines: list[str] = []
    parts = [only] if only else ["device", "peak", "models", "input", "stages", "vs_plain", "floor"]
    height, width = report.get("img_size", (448, 224))
    for name in parts:
        found = report.get(name)
        if found is None:
            continue
        title = {"device": "device", "peak": "matmul peak", "models": "model training img/s",
                 "input": "input pipeline", "stages": "a batch of the GPU input path",
                 "vs_plain": "hubclf vs the plain loop, 1 GPU",
                 "floor": "floor on the device (AlexNet, bf16)"}[name]  # fmt: skip
        if "skipped" in found or "error" in found:
            why = f"skipped: {found['skipped']}" if "skipped" in found else f"failed: {found['error']}"
            lines.append(f"{title}: {why}")
            continue
        if name == "device":
            memory = f", {found['memory_gib']:.0f} GiB" if found.get("memory_gib") else ""
            capability = f", compute {'.'.join(map(str, found['capability']))}" if found.get("capability") else ""
            lines.append(f"device: {found['name']}{capability}{memory}; torch {found['torch']}, CUDA "
                         f"{found['cuda']}, {found['cores']} CPU cores")  # fmt: skip
        elif name == "peak":
            rates = ", ".join(f"{key} {_rate(value)}" for key, value in found["gflops"].items() if value)
            lines.append(f"matmul peak ({found['n']}² torch.mm, best of 5): {rates or 'none measured'}")
        elif name == "models":
            lines.append(f"model training at {height}x{width} (synthetic tensors in memory, train steps only, best "
                         "layout; MFU against the measured peak, and the datasheet's where known):")  # fmt: skip
            lines.append(f"  {'model':<8} {'precision':<9} {'batch':>5} {'img/s':>10} {'GFLOP/img':>9} "
                         f"{'TFLOP/s':>8} {'MFU':>6} {'datasheet MFU':>13}")  # fmt: skip
            for model, batch in found["batch"].items():
                for precision in ("no", "bf16"):
                    if f"{model}/{precision}" not in found:
                        continue  # not asked for (the CPU dry run trains in fp32 only)
                    result = found[f"{model}/{precision}"]
                    label = _precision_label(precision)
                    if "epoch_s" not in result:
                        lines.append(f"  {model:<8} {label:<9} {batch:>5} failed: {result.get('error', 'no result')}")
                        continue
                    rate = result["train_images"] / result["epoch_s"]
                    tflops = rate * result["train_gflop_per_image"] / 1e3
                    peak = _peak_for(report, precision)
                    sheet = _datasheet_peak(report, precision)
                    lines.append(f"  {model:<8} {label:<9} {batch:>5} {rate:>10.0f} "
                                 f"{result['train_gflop_per_image']:>9.2f} {tflops:>8.1f} "
                                 f"{_fmt(_pct(peak and tflops / peak), '.1f', '%'):>6} "
                                 f"{_fmt(_pct(sheet and tflops / sheet), '.1f', '%'):>13}")  # fmt: skip
            lines.append("  fp32 rows: fp32 tensors, but cuDNN's convolutions (nearly all the FLOPs) run in TF32 by "
                         "default: MFU against the TF32 peak where measured; bf16: autocast")  # fmt: skip
        elif name == "input":
            cpu = found["cpu_decode"]["images_per_s"]
            gpu = found["gpu_decode"]
            gpu_text = (f"{gpu['images_per_s']:.0f} img/s" if "images_per_s" in gpu
                        else f"not measured ({gpu.get('error')})")  # fmt: skip
            if gpu.get("device") == "cpu":
                gpu_text += " (the CPU standing in for the GPU: a dry run)"
            installed = ", ".join(f"{k} {'installed' if v else 'not installed'}" for k, v in found["installed"].items())
            lines.append(f"input pipeline at {height}x{width} ({found['images']} JPEGs, quality 90): CPU decoding "
                         f"(hubclf's loader, {found['workers']} workers) {cpu:.0f} img/s; GPU decoding (hubclf's "
                         f"--decode-device cuda: the workers read bytes, nvJPEG decodes each batch, resize and "
                         f"normalise on the GPU) {gpu_text}; {installed}")  # fmt: skip
            loader_only = found.get("raw_loader", {})  # reports made before it was measured have none
            if "images_per_s" in loader_only:
                lines.append(f"  the GPU path's loader alone (files read, headers checked, batches received; nothing "
                             f"decoded): {loader_only['images_per_s']:.0f} img/s")  # fmt: skip
            alexnet = report.get("models", {}).get("alexnet/bf16", {})
            if "epoch_s" in alexnet:
                rate = alexnet["train_images"] / alexnet["epoch_s"]
                fed = f"CPU decoding feeds {100 * cpu / rate:.0f}% of it"
                if "images_per_s" in gpu:
                    fed += f", GPU decoding {100 * gpu['images_per_s'] / rate:.0f}%"
                lines.append(f"  AlexNet bf16 trains at {rate:.0f} img/s: {fed}")
        elif name == "stages":
            lines.append(f"a batch of the GPU input path ({found['batch_size']} JPEGs, each stage alone, ms per "
                         f"batch, mean of {found['batches']}):")  # fmt: skip
            for stage, ms in found["ms_per_batch"].items():
                lines.append(f"  {stage:<40} {ms:8.1f} ms  {found['batch_size'] / ms * 1e3:>8.0f} img/s")
        elif name == "vs_plain":
            hubclf = found["hubclf"]
            precision = _precision_label(hubclf.get("precision", "no"))
            decode = found.get("decode_line") or "not available: hubclf logged no GPU decoding decision"
            lines.append(f"hubclf vs the plain loop, 1 GPU (AlexNet full fine-tune, {found['images']} images, "
                         f"batch {found['batch']}, {found['workers']} workers; steady state: {found['epochs']}-epoch "
                         f"run - 1-epoch run): hubclf with its defaults ({precision}) {hubclf['steady_s']:.2f} "
                         f"s/epoch; plain loop in fp32 {found['plain']['steady_s']:.2f} s/epoch: "
                         f"{found['ratio']:.2f}x")  # fmt: skip
            if "plain_bf16" in found:
                lines.append(f"  plain loop under bf16 autocast (the same arithmetic as hubclf): "
                             f"{found['plain_bf16']['steady_s']:.2f} s/epoch: {found['ratio_bf16']:.2f}x")  # fmt: skip
            lines.append(f"  GPU decoding in hubclf: {decode}")
        elif name == "floor":
            cells = ", ".join(f"{key} {value['epoch_s']:.3f} s" if "epoch_s" in value else f"{key} failed "
                              f"({value['error'][:80]})" for key, value in found["results"].items())  # fmt: skip
            rate = found["train_images"] / found["epoch_s"] if found.get("epoch_s") else None
            lines.append(f"floor on the device (AlexNet, bf16, {found['train_steps']} train steps + "
                         f"{found['eval_batches']} eval batches): {cells}; best {found['best']}"
                         + (f" (train + eval at {rate:.0f} train img/s)" if rate else ""))  # fmt: skip
    return lines


def _rate(gflops: float) -> str:
    return f"{gflops / 1e3:.1f} TFLOP/s" if gflops >= 1e3 else f"{gflops:.1f} GFLOP/s"


def _peak_for(report: dict[str, Any], precision: str) -> float | None:
    """TFLOP/s that ``precision`` is measured against: bf16's, or for fp32 on a GPU the TF32 peak (cuDNN runs fp32
    convolutions in TF32 by default, and they are nearly all of these models' FLOPs), else fp32's."""
    gflops = report.get("peak", {}).get("gflops", {})
    value = gflops.get("bf16") if precision in ("bf16", "fp16") else gflops.get("tf32") or gflops.get("fp32")
    return value / 1e3 if value else None


def _datasheet_peak(report: dict[str, Any], precision: str) -> float | None:
    name = report.get("device", {}).get("name", "")
    peak = next((p for key, p in PEAK_TFLOPS.items() if key in name), None)
    return peak and peak["bf16" if precision in ("bf16", "fp16") else "tf32"]


# ---- `modes`: per-step cost of the three ways to train on a pretrained backbone --------------------------------
def modes_main(args: argparse.Namespace) -> None:
    import timm
    import torch
    from accelerate import Accelerator

    import hubclf  # noqa: F401  (registers the models)
    from hubclf.train import TrainConfig
    from hubclf.train.features import backbone_features
    from hubclf.train.stages import FULL, HEAD, apply_stage, batch_logits

    accelerator = Accelerator(cpu=args.device == "cpu")
    device = torch.device(args.device)
    modes = ("full fine-tune", "frozen backbone", "cached features")

    def measure(model: torch.nn.Module, mode: str, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
        stage = FULL if mode == "full fine-tune" else HEAD
        trainable = apply_stage(model, stage, TrainConfig(model="x", data="x", output_dir="x", freeze="backbone"))
        optimizer = torch.optim.SGD([p for p in trainable.parameters() if p.requires_grad], lr=1e-3)
        if mode == "cached features":
            with torch.no_grad():
                batch = {"features": backbone_features(model, images)}  # computed once, outside the timing
        else:
            batch = {"pixel_values": images}
        saved = 0
        weights = {p.data_ptr() for p in model.parameters()}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            nonlocal saved
            if tensor.data_ptr() not in weights:  # weights exist anyway: count the activations kept for backward
                saved += tensor.numel() * tensor.element_size()
            return tensor

        def step() -> None:
            logits = batch_logits(model, trainable, stage, batch, accelerator.autocast)
            torch.nn.functional.cross_entropy(logits, labels).backward()
            optimizer.step()
            optimizer.zero_grad()

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            step()  # warm-up, and the one step whose saved tensors are counted
        _sync(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        _sync(device)
        return args.steps * len(images) / (time.perf_counter() - start), saved

    print(f"device {args.device}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.steps} timed steps, input {args.img_size[0]}×{args.img_size[1]}")
    for name in args.models:
        torch.manual_seed(0)
        model = timm.create_model(ARCHITECTURES.get(name, name), num_classes=8, img_size=tuple(args.img_size))
        model.to(device)
        images = torch.randn(args.batch_size, 3, *args.img_size, device=device)
        labels = torch.arange(args.batch_size, device=device) % 8
        results = {mode: measure(model, mode, images, labels) for mode in modes}
        base_speed, base_saved = results["full fine-tune"]
        print(f"\n{name}")
        print(f"  {'mode':<17} {'img/s':>9} {'speed vs full':>14} {'kept for backward':>20} {'memory vs full':>15}")
        for mode, (speed, saved) in results.items():
            print(f"  {mode:<17} {speed:>9.1f} {speed / base_speed:>13.1f}x {saved / 2**20:>16.2f} MiB "
                  f"{saved / base_saved:>14.4f}x")


def _sync(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# ---- start-up: from the command to its first output --------------------------------------------------------------
STARTUP_COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "python -c 'import torch, timm'": [sys.executable, "-c", "import torch, timm"],
    # what `hubclf` does before it exits (hubclf.cli.run): the exit skips its last collection over those modules
    "  ... then gc.freeze()": [sys.executable, "-c", "import torch, timm, gc; gc.freeze()"],
    "python -c 'import hubclf'": [sys.executable, "-c", "import hubclf"],
    "hubclf --help": [sys.executable, "-m", "hubclf.cli", "--help"],
    "hubclf train --help": [sys.executable, "-m", "hubclf.cli", "train", "--help"],
}


def startup_main(args: argparse.Namespace) -> None:
    """Wall time of each command, ``--repeats`` runs interleaved (the machine's load changes alike for all), with the
    median and the ratio to ``python -c 'import torch, timm'``, the floor of anything that trains."""
    times: dict[str, list[float]] = {name: [] for name in STARTUP_COMMANDS}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO_ROOT), os.environ.get("PYTHONPATH"))))}
    for _ in range(args.repeats):
        for name, command in STARTUP_COMMANDS.items():
            started = time.perf_counter()
            subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - started)
    floor = statistics.median(times["python -c 'import torch, timm'"])
    print(f"start-up, {args.repeats} interleaved runs each ({_machine(args)})")
    print(f"{'command':34} {'median':>9} {'min':>9}  vs import torch, timm")
    for name, runs in times.items():
        median = statistics.median(runs)
        print(f"{name:34} {median:8.3f}s {min(runs):8.3f}s  {median / floor:5.2f}x")
    if args.train:
        train_collector(args)


# A program that calls hubclf.cli.main() leaves Python's garbage collector as it is; the hubclf command (run()) turns
# it off for the imports and freezes what they made (hubclf.cli.commands.run). Same flags, same data, same process.
COLLECTOR_SIDES = {
    "hubclf train (the command)": ["-m", "hubclf.cli"],
    "main() with the collector as is": ["-c", "import sys; from hubclf.cli import main; sys.exit(main(sys.argv[1:]))"],
}


def train_collector(args: argparse.Namespace) -> None:
    """``startup --train``: one epoch of the floor's AlexNet row through both, interleaved; when the first step
    starts and ends, and when the process has exited."""
    workdir = Path(args.workdir)
    row = FLOOR_ROWS[0]
    train_args = build_parser().parse_args(["floor"])  # the floor's defaults: input size, batch, lr, workers
    data = str(make_jpeg_folder(workdir, row.per_class, tuple(train_args.img_size)))
    env = _watch_env(args.device, workdir / "hf-home")
    found: dict[str, dict[str, list[float]]] = {side: collections.defaultdict(list) for side in COLLECTOR_SIDES}
    for repeat in range(args.repeats):
        sides = list(COLLECTOR_SIDES.items())
        for side, launcher in sides if repeat % 2 == 0 else sides[::-1]:
            out = Path(tempfile.mkdtemp(prefix="startup-", dir=workdir))
            command = hubclf_floor_command(row, data, train_args, 1, str(out))
            command[1:3] = launcher  # [python, -m, hubclf.cli, train, ...] -> [python, <launcher>, train, ...]
            try:
                seen = watch(command, env, marks=HUBCLF_MARKS).check(side)
            finally:
                shutil.rmtree(out, ignore_errors=True)
            for mark in ("step starts", "first step"):
                found[side][mark].append(seen.marks[mark]["t"])
            found[side]["exited"].append(seen.wall_s)
    print(f"\nhubclf train, {row.label}, 1 epoch of {8 * row.per_class}+{8 * row.per_class} JPEGs; medians of "
          f"{args.repeats} interleaved runs")
    print(f"{'':34} {'step starts':>12} {'first step':>11} {'exited':>8}")
    for side, marks in found.items():
        print(f"{side:34} " + " ".join(f"{statistics.median(marks[m]):{w}.2f}s"
                                         for m, w in (("step starts", 11), ("first step", 10), ("exited", 7))))


COMMANDS = ("floor", "e2e", "scale", "gpu", "modes", "startup", "_worker", "_job")


def _variant(text: str) -> str:
    if not re.fullmatch(r"\d+x\d+", text):
        raise argparse.ArgumentTypeError(f"give HEIGHTxWIDTH, e.g. 64x64; got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--models", nargs="+", default=["alexnet", "vgg11"], choices=sorted(ARCHITECTURES))
        p.add_argument("--img-size", nargs=2, type=int, default=[448, 224], metavar=("H", "W"))
        p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))

    def outputs(p: argparse.ArgumentParser, smoke: str = "tiny sizes, to check that every path runs") -> None:
        p.add_argument("--workdir", default=str(REPO_ROOT / ".bench"), help="generated data and scratch space")
        p.add_argument("--json", help="also write the results as JSON to this file")
        p.add_argument("--smoke", action="store_true", help=smoke)

    floor = sub.add_parser("floor", help="each row's epoch against its compute floor, the plain loop and timm's "
                                         "train.py (the default)")  # fmt: skip
    floor.add_argument("--rows", nargs="+", default=[row.name for row in FLOOR_ROWS],
                       choices=[row.name for row in FLOOR_ROWS])  # fmt: skip
    floor.add_argument("--img-size", nargs=2, type=int, default=[448, 224], metavar=("H", "W"))
    floor.add_argument("--batch-size", type=int, default=16)
    floor.add_argument("--num-workers", type=int, default=1, help="DataLoader workers, every side (default: 1)")
    floor.add_argument("--lr", type=float, default=0.01)
    floor.add_argument("--repeats", type=int, default=2, help="runs per side, row and length, interleaved (default: 2)")
    floor.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    floor.add_argument("--timm-train-py", metavar="PATH",
                       help="timm's train.py to compare with ('none': skip); default: HEAD:train.py of the "
                            f"pytorch-image-models clone at $HUBCLF_TIMM_MIRROR ({TIMM_MIRROR}) when there is one")
    floor.add_argument("--floor-passes", type=int, default=2, help="timed epochs of the floor per layout (median)")
    floor.add_argument("--floor-variants", nargs="+", default=["eager"], choices=("eager", "compile", "cudagraphs"),
                       help="also time the floor with torch.compile / CUDA graphs (minutes of compiling on a CPU)")
    outputs(floor)

    e2e = sub.add_parser("e2e", help="hubclf train against the plain PyTorch loop: last-epoch img/s")
    common(e2e)
    e2e.add_argument("--images-per-class", type=int, default=24, help="train (and validation) images per class")
    e2e.add_argument("--vgg-images-per-class", type=int, default=4, help="the same for VGG11 (<1 img/s on CPU)")
    e2e.add_argument("--batch-size", type=int, default=16)
    e2e.add_argument("--num-workers", type=int, default=1)
    e2e.add_argument("--epochs", type=int, default=2, help="the last epoch is the one compared")
    e2e.add_argument("--lr", type=float, default=0.01)
    e2e.add_argument("--mixed-precision", choices=("bf16",), default=None, help="bf16 autocast for both sides")
    e2e.add_argument("--hubclf-precision", default="auto", choices=("auto", "no"),
                     help="hubclf's --mixed-precision when --mixed-precision is not given (default: auto, hubclf's "
                          "default; the table adds a full fine-tune row in fp32 when auto picks bf16)")
    e2e.add_argument("--repeats", type=int, default=3, help="runs per side and mode, interleaved; medians compared")
    outputs(e2e)

    scale = sub.add_parser("scale", help="time per image, peak RSS and disk at 1k, 10k and 100k images")
    scale.add_argument("--sizes", nargs="+", type=int, default=list(SCALE_SIZES), help="images per point (all splits)")
    scale.add_argument("--variants", nargs="+", type=_variant, default=list(SCALE_VARIANTS), metavar="HxW")
    scale.add_argument("--modes", nargs="+", default=list(SCALE_MODES), choices=SCALE_MODES)
    scale.add_argument("--inputs", nargs="+", default=list(SCALE_INPUTS), choices=SCALE_INPUTS,
                       help="read the images from the folder, from WebDataset shards of it, or both")
    scale.add_argument("--model", default="alexnet", choices=sorted(ARCHITECTURES))
    scale.add_argument("--batch-size", type=int, default=16)
    scale.add_argument("--num-workers", type=int, default=1)
    scale.add_argument("--window-images", type=int, default=None,
                       help="images measured after the warm-up, every run (default: per variant and mode, see "
                            "SCALE_WINDOWS: 100k full fine-tune epochs do not fit on 2 cores)")
    scale.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    outputs(scale)

    gpu = sub.add_parser("gpu", help="every GPU measurement the docs need (what scripts/gpu_check.sh runs)")
    gpu.add_argument("--budget", type=float, default=450, help="seconds; parts that would not fit are skipped")
    gpu.add_argument("--workdir", default=str(REPO_ROOT / ".bench"), help="generated data and scratch space")
    gpu.add_argument("--json", help="also write the report as JSON to this file")
    gpu.add_argument("--cpu-dry-run", action="store_true", help=argparse.SUPPRESS)  # tests: every part, on a CPU
    gpu.add_argument("--parse-only", action="store_true", help=argparse.SUPPRESS)  # gpu_check.sh: check the flags

    modes = sub.add_parser("modes", help="per-step cost of full fine-tune / frozen backbone / cached features")
    common(modes)
    modes.add_argument("--batch-size", type=int, default=4)
    modes.add_argument("--steps", type=int, default=3)

    startup = sub.add_parser("startup", help="start-up time: hubclf --help, import hubclf, against import torch, timm")
    startup.add_argument("--repeats", type=int, default=10)
    startup.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    startup.add_argument("--train", action="store_true",
                         help="also one epoch of hubclf train as the command and through main() (the collector)")
    startup.add_argument("--workdir", default=str(REPO_ROOT / ".bench"), help="generated data and scratch space")

    worker = sub.add_parser("_worker")  # one e2e measurement, in its own process (internal)
    worker_flags = ("--side", "--task", "--model", "--mode", "--data", "--device", "--mixed-precision")
    for flag in (*worker_flags, "--hubclf-precision"):
        worker.add_argument(flag)
    worker.add_argument("--img-size", nargs=2, type=int)
    for flag in ("--batch-size", "--num-workers", "--epochs", "--num-classes"):
        worker.add_argument(flag, type=int)
    worker.add_argument("--lr", type=float)

    job = sub.add_parser("_job")  # one floor/scale/gpu measurement, in its own process (internal)
    job.add_argument("spec", help="the job as JSON")
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--scale" in argv and (not argv or argv[0] not in COMMANDS):  # `bench.py --scale`, as issue 21 spells it
        argv = ["scale", *(a for a in argv if a != "--scale")]
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["floor", *argv]
    args = build_parser().parse_args(argv)
    if args.command == "_worker":
        worker_main(args)
    elif args.command == "_job":
        job_main(args.spec)
    elif args.command == "modes":
        modes_main(args)
    elif args.command == "startup":
        startup_main(args)
    elif args.command == "gpu":
        if not args.parse_only:
            gpu_main(args)
    elif args.command == "scale":
        if args.smoke:
            args.sizes, args.variants, args.batch_size = [80, 160], ["64x64"], 8
            args.workdir = str(Path(args.workdir) / "smoke")
        scale_main(args)
    elif args.command == "floor":
        if args.smoke:
            args.img_size, args.batch_size, args.repeats, args.floor_passes = [96, 64], 4, 1, 1
            args.workdir = str(Path(args.workdir) / "smoke")
        floor_main(args)
    else:
        if args.smoke:
            args.img_size, args.images_per_class, args.vgg_images_per_class = [96, 64], 2, 1
            args.batch_size, args.epochs, args.repeats = 4, 2, 1
            args.workdir = str(Path(args.workdir) / "smoke")
        e2e_main(args)


if __name__ == "__main__":
    main()
