"""hubclf against the plain PyTorch loop a user would write, side by side in one run, as ratios.

``python scripts/bench.py`` (the default, ``e2e``) answers "is hubclf faster than the code it replaces?":

- **the peer** is the seed question's plain answer, written out below as a user would: torchvision ``alexnet()``
  / ``vgg11()`` with ``classifier[6]`` replaced, ``ImageFolder`` with ``Resize((448, 224))``, ``ToTensor`` and
  ``Normalize``, a ``DataLoader`` and SGD; frozen = ``requires_grad=False`` on everything but ``classifier[6]``;
- **hubclf** is ``hubclf train`` through its real code path (a ``python -m hubclf.cli train`` subprocess), with
  the same model, data, batch size, workers, optimizer and preprocessing (``--no-augment --crop-pct 1``).

Both train on the same generated JPEG folder at 448×224 (train + validation split), each configuration in its own
process, so that peak RSS is that configuration's alone. Modes: full fine-tune, frozen backbone, and (hubclf only)
cached features, where epoch 2 and later train the head on features computed once. An epoch is one pass over the
train split plus one over the validation split, as in the issue that asked for this benchmark. Every configuration
runs ``--repeats`` times (3), interleaved with the other side's; the ratio is the peer's median last-epoch time /
hubclf's (both warm); above 1 means hubclf is faster. hubclf runs in its default ``--mixed-precision auto`` (bf16
only where the CPU measures it faster) against the fp32 a user writes, plus a full fine-tune row in fp32 where
auto picked bf16. The input pipeline alone (decode + transform, no model) is measured for both as well.

    python scripts/bench.py                                  # AlexNet and VGG11, CPU (~25 min on 2 cores)
    python scripts/bench.py --models alexnet --repeats 1     # AlexNet only, one run per side and mode
    python scripts/bench.py --device cuda --mixed-precision bf16 --images-per-class 64
    python scripts/bench.py modes --batch-size 8             # per-step cost of the three modes (hubclf only)
    python scripts/bench.py --smoke                          # tiny sizes: checks that everything runs
    python scripts/bench.py startup                          # hubclf --help and import hubclf, against torch + timm

``modes`` is the older per-step comparison of the three ways to train on a pretrained backbone (images per second
of one step, and the activations autograd keeps for backward), through hubclf's ``apply_stage`` + ``batch_logits``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURES = {"alexnet": "hubclf_alexnet", "vgg11": "hubclf_vgg11"}
# Forward + backward FLOPs per image at 448×224 (3 × the forward's multiply-adds × 2), for MFU on GPUs.
TRAIN_GFLOP_PER_IMAGE = {"alexnet": 8.13, "vgg11": 90.2}
# Dense peak TFLOP/s by device name fragment and precision (vendor datasheets), for MFU.
PEAK_TFLOPS = {"H100": {"bf16": 989.0, "fp32": 67.0}, "H200": {"bf16": 989.0, "fp32": 67.0}}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---- the peer: the plain loop a user would write -------------------------------------------------------------
def peer_epochs(args: argparse.Namespace) -> dict[str, Any]:
    """The seed's plain answer, timed per epoch. Nothing here is hubclf."""
    import torch
    import torch.nn as nn
    import torchvision
    from torchvision import transforms as T

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = getattr(torchvision.models, args.model)()
    model.classifier[6] = nn.Linear(4096, args.num_classes)
    if args.mode == "frozen":
        for p in model.parameters():
            p.requires_grad = False
        for p in model.classifier[6].parameters():
            p.requires_grad = True
    model.to(device)
    height, width = args.img_size
    transform = T.Compose([T.Resize((height, width)), T.ToTensor(), T.Normalize(MEAN, STD)])
    train_set = torchvision.datasets.ImageFolder(os.path.join(args.data, "train"), transform)
    val_set = torchvision.datasets.ImageFolder(os.path.join(args.data, "validation"), transform)
    loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.num_workers)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=args.batch_size, num_workers=args.num_workers)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=args.lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.mixed_precision == "bf16")

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
    """hubclf's input pipeline alone, built as ``hubclf.train.setup`` builds it, through a DataLoader, no model."""
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
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers)
    return _time_loader(loader, len(dataset), lambda batch: batch["pixel_values"])


def _time_loader(loader: Any, count: int, pixels: Any) -> dict[str, Any]:
    for batch in loader:  # warm-up pass: worker start-up and the OS file cache are not what is measured
        pixels(batch)
    started = time.perf_counter()
    for batch in loader:
        pixels(batch)
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
    precision = "bf16" if precision == "bf16" else "fp32"
    return images_per_s * TRAIN_GFLOP_PER_IMAGE[model] / (peak[precision] * 1e3)


def _machine(args: argparse.Namespace) -> str:
    import torch

    if args.device == "cuda":
        device = torch.cuda.get_device_name()
    else:
        flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
        isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
        device = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {' '.join(isa) or 'no AVX'}"
    return (f"device: {device}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"mixed precision {getattr(args, 'mixed_precision', None) or 'no'}")


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--models", nargs="+", default=["alexnet", "vgg11"], choices=sorted(ARCHITECTURES))
        p.add_argument("--img-size", nargs=2, type=int, default=[448, 224], metavar=("H", "W"))
        p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))

    e2e = sub.add_parser("e2e", help="hubclf train against the plain PyTorch loop (the default)")
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
    e2e.add_argument("--workdir", default=str(REPO_ROOT / ".bench"), help="where the generated JPEGs are kept")
    e2e.add_argument("--json", help="also write the table as JSON to this file")
    e2e.add_argument("--smoke", action="store_true", help="tiny sizes, to check that every path runs")

    modes = sub.add_parser("modes", help="per-step cost of full fine-tune / frozen backbone / cached features")
    common(modes)
    modes.add_argument("--batch-size", type=int, default=4)
    modes.add_argument("--steps", type=int, default=3)

    startup = sub.add_parser("startup", help="start-up time: hubclf --help, import hubclf, against import torch, timm")
    startup.add_argument("--repeats", type=int, default=10)
    startup.add_argument("--device", default="cpu", choices=("cpu", "cuda"))

    worker = sub.add_parser("_worker")  # one measurement, in its own process (internal)
    worker_flags = ("--side", "--task", "--model", "--mode", "--data", "--device", "--mixed-precision")
    for flag in (*worker_flags, "--hubclf-precision"):
        worker.add_argument(flag)
    worker.add_argument("--img-size", nargs=2, type=int)
    for flag in ("--batch-size", "--num-workers", "--epochs", "--num-classes"):
        worker.add_argument(flag, type=int)
    worker.add_argument("--lr", type=float)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("e2e", "modes", "startup", "_worker", "-h", "--help"):
        argv = ["e2e", *argv]
    args = build_parser().parse_args(argv)
    if args.command == "_worker":
        worker_main(args)
    elif args.command == "modes":
        modes_main(args)
    elif args.command == "startup":
        startup_main(args)
    else:
        if args.smoke:
            args.img_size, args.images_per_class, args.vgg_images_per_class = [96, 64], 2, 1
            args.batch_size, args.epochs, args.repeats = 4, 2, 1
            args.workdir = str(Path(args.workdir) / "smoke")
        e2e_main(args)


if __name__ == "__main__":
    main()
