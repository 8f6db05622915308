"""``scripts/bench.py`` and ``scripts/gpu_check.sh``: every mode runs end to end at tiny sizes and reports every row and
column it promises; the tables are also checked on made-up figures, every row at once.

No timing is asserted: the figures depend on the machine and its load; docs/performance.md's tables come from
full-size runs.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH = [sys.executable, "scripts/bench.py"]
HAS_GPU = any(Path("/dev").glob("nvidia[0-9]*"))


@pytest.fixture(scope="module")
def bench():
    """scripts/bench.py as a module (it imports nothing heavy at the top)."""
    spec = importlib.util.spec_from_file_location("hubclf_bench_script", REPO_ROOT / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def run(command: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# ---- floor -------------------------------------------------------------------------------------------------------
FLOOR_COLUMNS = ("floor s/ep", "hubclf s/ep", "floor/hubclf", "% of peak", "plain s/ep", "vs plain", "timm s/ep",
                 "vs timm", "GFLOP/img")  # fmt: skip


def check_floor_row(row: dict, *, timm: bool) -> None:
    assert row["floor_s"] > 0 and row["floor_layout"]
    assert row["train_gflop_per_image"] > row["eval_gflop_per_image"] > 0  # backward costs more than forward
    assert row["peak_gflops"] > 0 and 0 < row["floor_peak_fraction"]
    hubclf, plain = row["sides"]["hubclf"], row["sides"]["plain"]
    for side in (hubclf, plain):
        assert finite(side["steady_s"]) and side["peak_rss_mib"] > 0
        assert len(side["wall_1"]) == len(side["wall_n"]) == 1
        assert side["steady_s"] == pytest.approx((side["wall_n"][0] - side["wall_1"][0]) / (row["epochs"] - 1))
    assert set(hubclf["marks"]) == {"imports", "data", "model", "step starts", "first step"}
    assert set(plain["marks"]) == {"imports", "data", "model", "first step"}
    marks = hubclf["marks"]  # the phases come in order
    assert 0 < marks["imports"]["t"] <= marks["data"]["t"] <= marks["model"]["t"] <= marks["first step"]["t"]
    assert hubclf["precisions"] == [row["precision"]] and row["precision"] in ("no", "bf16")
    assert row["floor_over_hubclf"] == pytest.approx(row["floor_s"] / hubclf["steady_s"])
    assert row["vs_plain"] == pytest.approx(plain["steady_s"] / hubclf["steady_s"])
    if timm:
        assert finite(row["sides"]["timm"]["steady_s"]) and "first step" in row["sides"]["timm"]["marks"]
        assert row["vs_timm"] == pytest.approx(row["sides"]["timm"]["steady_s"] / hubclf["steady_s"])
    else:
        assert row["sides"]["timm"] is None and row["vs_timm"] is None


@pytest.mark.slow
@pytest.mark.bench
def test_floor_smoke_measures_the_floor_hubclf_the_plain_loop_and_timm(tmp_path, bench):
    table = tmp_path / "floor.json"
    result = run([*BENCH, "floor", "--smoke", "--rows", "alexnet-full", "--workdir", str(tmp_path / "work"),
                  "--json", str(table)])  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    timm = Path(bench.TIMM_MIRROR).exists()  # without a clone, the bench says so and leaves the column empty
    if not timm:
        assert "timm's train.py: not available" in result.stdout
    summary = json.loads(table.read_text())
    assert [row["row"] for row in summary["rows"]] == ["alexnet-full"]
    check_floor_row(summary["rows"][0], timm=timm)
    for text in (*FLOOR_COLUMNS, "start-up: command -> first training step", "peak RSS (MiB", "goals (issue 24)"):
        assert text in result.stdout
    assert 0 < summary["import_torch_timm_s"] < summary["import_torch_timm_wall_s"]  # imported before it exited
    assert summary["peak_gflops"]["fp32"] > 0


@pytest.mark.slow
@pytest.mark.bench
def test_floor_smoke_cached_features_row_trains_only_the_head(tmp_path):
    table = tmp_path / "floor.json"
    result = run([*BENCH, "--smoke", "--rows", "alexnet-cached", "--timm-train-py", "none",
                  "--workdir", str(tmp_path / "work"), "--json", str(table)])  # fmt: skip  (floor: the default)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "timm's train.py: not run (--timm-train-py none)" in result.stdout
    (row,) = json.loads(table.read_text())["rows"]
    check_floor_row(row, timm=False)
    assert row["floor_layout"] == "eager/-"  # features are 2-D: no memory layout to choose
    assert row["train_gflop_per_image"] < 1e-3  # one linear layer, not the backbone


def fake_floor_summary(bench, bf16: bool = False, timm_s: float = 18.0) -> dict:
    """summarise_floor's input for every row, made up: 2 repeats of each side, a timm column where it applies;
    ``timm_s``: train.py's seconds per epoch (hubclf's are 12, AlexNet's floor 10.5)."""
    import argparse

    args = argparse.Namespace(repeats=2, batch_size=16, num_workers=1, img_size=[448, 224], device="cpu")
    rows = list(bench.FLOOR_ROWS)
    floors, runs = {}, {}
    for i, row in enumerate(rows):
        floors[row.name] = [{
            "epoch_s": 10.0 + i + r, "best": "eager/channels_last" if row.mode == "full" else "eager/-",
            "results": {}, "precision": "bf16" if bf16 else "no", "train_images": 96, "val_images": 96,
            "train_gflop_per_image": 8.1 if row.mode == "full" else 1e-4, "eval_gflop_per_image": 2.8,
            "hubclf_channels_last": True,
        } for r in range(2)]  # fmt: skip
        for side, per_epoch in (("hubclf", 12.0), ("plain", 20.0), ("timm", timm_s)):
            if side == "timm" and row.mode != "full":
                continue
            for epochs in (1, row.epochs):
                runs[row.name, side, epochs] = [{
                    "wall_s": 30.0 + per_epoch * epochs + r, "peak_rss_mib": 1500.0 + r,
                    "epoch_seconds": [11.0] * epochs, "best_writes": 1, "precision": "bf16" if bf16 else "no",
                    "written_mib": 1300.0,
                    "marks": {name: {"t": t, "rss_mib": 900.0 + t} for t, name in enumerate(
                        ("imports", "data", "model", "step starts", "first step"), start=8)},
                } for r in range(2)]  # fmt: skip
    peaks = [{"gflops": {"fp32": 160.0, "bf16": 400.0 if bf16 else None}, "n": 4096, "threads": 2}] * 2
    imports = [{"import_s": 7.0, "wall_s": 8.1}, {"import_s": 7.2, "wall_s": 8.5}]  # imported, then exited
    summary = bench.summarise_floor(rows, floors, runs, peaks, imports, args)
    summary.update(seconds=1800.0, provenance="today, commit abc")
    return summary


def test_floor_table_shows_every_row_column_and_goal(bench):
    summary = fake_floor_summary(bench)
    by_row = {row["row"]: row for row in summary["rows"]}
    assert list(by_row) == ["alexnet-full", "vgg11-full", "alexnet-cached", "resnet18-full"]
    full = by_row["alexnet-full"]
    assert full["sides"]["hubclf"]["steady_s"] == pytest.approx(12.0)  # (wall_N - wall_1) / (N - 1)
    assert full["vs_plain"] == pytest.approx(20 / 12) and full["vs_timm"] == pytest.approx(18 / 12)
    assert full["floor_over_hubclf"] == pytest.approx(10.5 / 12)
    assert full["hubclf_peak_fraction"] == pytest.approx((96 * 8.1 + 96 * 2.8) / 12 / 160)
    assert by_row["alexnet-cached"]["vs_timm"] is None  # train.py has no frozen backbone
    text = "\n".join(bench.format_floor(summary))
    for row in bench.FLOOR_ROWS:
        assert row.label in text and row.name in text
    for column in FLOOR_COLUMNS:
        assert column in text
    assert "n/a (no bf16 instructions on this CPU)" in text  # the 2x goal applies where the CPU has bf16
    # start-up: the first step starts at 11 s; torch and timm are imported at 7.1 s (the median of 7.0 and 7.2),
    # and the goal is measured from there, not from the exit of `python -c "import torch, timm"` (8.3 s)
    assert "start-up <= import of torch and timm + 2 s" in text and "+3.90s  not met" in text
    assert "has imported them at 7.10 s (and exited at 8.30 s)" in text
    bf16_text = "\n".join(bench.format_floor(fake_floor_summary(bench, bf16=True)))
    assert "bf16 400 GFLOP/s" in bf16_text and "n/a (no bf16" not in bf16_text
    assert "at most" not in text  # 1.5x timm is met: no bound to give


def test_floor_goals_say_when_timm_is_too_close_to_the_floor_for_1_5x(bench):
    # timm's train.py at 12.6 s per epoch, the floor at 10.5 s: even an epoch at the floor would be 1.2x timm
    text = "\n".join(bench.format_floor(fake_floor_summary(bench, timm_s=12.6)))
    assert "1.05  not met (at most 1.20x here, at the floor: timm's train.py runs at 0.83 of it)" in text


def test_watch_sees_a_bar_below_another_when_it_is_drawn_not_at_the_next_redraw(bench):
    # hubclf's epoch bar sits under the run's (tqdm position=1): drawn, then ESC [A and nothing more until the first
    # step is done. The child then sleeps; the mark must be read at once and stop it, not wait for the next line.
    child = (
        "import time; from tqdm import tqdm\n"
        "run = tqdm(total=6, desc='run: 1 epoch(s)', position=0)\n"
        "bar = tqdm(range(6), desc='epoch 1/1', position=1)\n"
        "time.sleep(120)\n"
    )
    seen = bench.watch([sys.executable, "-c", child], {"PATH": ""}, marks=bench.HUBCLF_MARKS,
                       stop=lambda seen: "step starts" in seen.marks, timeout=60)  # fmt: skip
    assert seen.stopped and not seen.timed_out
    assert seen.reached("epoch 1/1", 0) is not None and "first step" not in seen.marks


def test_timm_train_py_gets_hubclfs_settings(bench, tmp_path):
    import argparse

    args = argparse.Namespace(img_size=[448, 224], batch_size=16, num_workers=1, lr=0.01, device="cpu")
    argv = bench.timm_train_argv("train.py", bench.FLOOR_ROWS[0], "data", args, 4, "out", "bf16", True)
    flags = " ".join(argv)
    for expected in ("--model hubclf_alexnet", "--input-size 3 448 224", "-b 16", "--epochs 4", "--opt momentum",
                     "--lr 0.01", "--weight-decay 0", "--no-aug", "--smoothing 0", "-j 1", "--channels-last",
                     "--amp --amp-dtype bfloat16", "--sched step --decay-rate 1", "--warmup-epochs 0"):  # fmt: skip
        assert expected in flags
    fp32 = " ".join(bench.timm_train_argv("train.py", bench.FLOOR_ROWS[0], "data", args, 4, "out", "no", False))
    assert "--amp" not in fp32 and "--channels-last" not in fp32
    assert bench.find_timm_train_py("none", tmp_path) == (None, "not run (--timm-train-py none)")


# ---- scale -------------------------------------------------------------------------------------------------------
def test_scale_data_is_a_folder_and_webdataset_shards_of_the_same_images(bench, tmp_path):
    made = bench.make_scale_data(tmp_path, (64, 64), [16, 40])
    for n, counts in ((16, {"train": 14, "validation": 2}), (40, {"train": 36, "validation": 4})):
        folder, shards = made[n]["folder"], made[n]["shards"]
        for split, count in counts.items():
            files = sorted(folder.glob(f"{split}/*/*.jpg"))
            assert len(files) == count
            members = []
            for shard in sorted((shards / split).glob(f"{split}-*.tar")):
                with tarfile.open(shard) as tar:
                    members += [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
            jpgs = {name.rsplit(".", 1)[0]: data for name, data in members if name.endswith(".jpg")}
            classes = {name.rsplit(".", 1)[0]: int(data) for name, data in members if name.endswith(".cls")}
            assert len(jpgs) == len(classes) == count and jpgs.keys() == classes.keys()
            names = (shards / "classes.txt").read_text().split()
            for key, data in jpgs.items():  # the same bytes as the folder's file of that class
                index = int(key.rsplit("_", 1)[1])
                assert (folder / split / names[classes[key]] / f"{index:06d}.jpg").read_bytes() == data
    # The smaller folder is hard links to the larger one's first images: the same bytes, stored once.
    small = made[16]["folder"] / "train" / "arrow_and_glyph_e" / "000000.jpg"
    large = made[40]["folder"] / "train" / "arrow_and_glyph_e" / "000000.jpg"
    assert small.stat().st_ino == large.stat().st_ino


@pytest.mark.slow
@pytest.mark.bench
def test_scale_smoke_reports_growth_per_mode_and_input(tmp_path):
    table = tmp_path / "scale.json"
    result = run([*BENCH, "--scale", "--smoke", "--modes", "full", "cached", "--workdir", str(tmp_path / "work"),
                  "--json", str(table)])  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(table.read_text())
    rows = {(r["images"], r["mode"], r["input"]): r for r in summary["rows"]}
    assert set(rows) == {(n, m, i) for n in (80, 160) for m in ("full", "cached") for i in ("folder", "shards")}
    for (_, mode, source), row in rows.items():
        assert "unsupported" not in row, row  # --data takes WebDataset shards since issue 21
        assert row["s_per_image"] > 0 and row["peak_rss_mib"] > 0 and row["startup_s"] > 0
        assert row["data_mib"] > 0 and row["hubclf_disk_mib"] >= 0
        assert row["bounded"] == (mode == "full")  # smoke: full fine-tune runs stop after a window, cached runs whole
        assert (row["run_s_per_image"] is None) == row["bounded"]
        # streamed shards are read once per epoch, never cached; a cached-features run caches features instead
        assert row["image_cache"] == ("on" if mode == "full" and source == "folder" else "-")
    for text in ("ms/img", "peak RSS MiB", "hubclf disk MiB", "image cache MiB", "goals (issue 21)",
                 "time/img", "image cache within its budget in every run: yes"):  # fmt: skip
        assert text in result.stdout


def test_scale_table_ratios_goals_and_unsupported_shards(bench):
    def row(images, mode, source="folder", **extra):
        return {"variant": "64x64", "images": images, "mode": mode, "input": source, "data_mib": images / 500,
                "bounded": False, "s_per_image": 0.001 * (1.2 if images == 100_000 else 1), "startup_s": 10.0,
                "run_s_per_image": 0.002, "peak_rss_mib": 1000.0 * (1.5 if images == 100_000 else 1),
                "hubclf_disk_mib": 5.0, "image_cache": "on", "image_cache_mib": 12.0,
                "shm_peak_mib": 500.0 if images == 100_000 else 0.0, **extra}  # fmt: skip

    sizes = [1_000, 10_000, 100_000]
    rows = [row(n, m) for n in sizes for m in ("full", "frozen", "cached")]
    rows += [{"variant": "64x64", "images": n, "mode": "full", "input": "shards", "data_mib": 1.0,
              "unsupported": "hubclf train: error: no images"} for n in sizes]  # fmt: skip
    rows[0]["image_cache_mib"] = 7000.0  # over the budget: the goal says so
    summary = {"rows": rows, "budget_mib": 6000.0, "sizes": sizes, "variants": ["64x64"],
               "modes": ["full", "frozen", "cached"], "seconds": 60.0, "provenance": "today"}  # fmt: skip
    text = "\n".join(bench.format_scale(summary))
    assert text.count("not supported yet: hubclf train: error: no images") == 3
    # the growth is all shared memory (the image cache, bounded by its own budget): apart from it, none
    assert "time/img 1.20x (<= 1.1: not met), peak RSS 1.50x (<= 1.2: not met), without the image cache's shared " \
        "memory 1.00x (met)" in text
    assert "image cache within its budget in every run: no (1 runs)" in text
    assert " 1.20 " in text and " 1.50 " in text  # ratios to the 1k point


def test_a_partial_image_cache_counts_the_rows_it_kept_not_the_whole_split(bench):
    partial = ("image cache partial: the decoded pixels of 90000 train + 10000 eval images would take 28710.9 MiB, "
               "over this process's budget of 6026.0 MiB (a quarter of RAM, half of free /dev/shm); the first 10988 "
               "train + 10000 eval rows are kept, the others decoded each epoch")  # fmt: skip
    state, mib = bench._image_cache_kept(partial)
    assert state == "partial" and mib == pytest.approx(28710.9 * 20988 / 100000) and mib <= 6026.0
    assert bench._image_cache_kept("image cache: the decoded 64x64 pixels of 900 train + 100 eval images stay in "
                                   "shared memory (11.7 MiB); epochs after the first skip decoding") == ("on", 11.7)
    assert bench._image_cache_kept("image cache off: the decoded pixels of 9 train images would take 9.0 MiB, over "
                                   "this process's budget of 1.0 MiB") == ("off", 0.0)
    assert bench._image_cache_kept("") == ("-", 0.0)


# ---- gpu_check.sh ----------------------------------------------------------------------------------------------------
@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU")
def test_gpu_check_without_a_gpu_fails_at_once_with_one_line():
    result = run(["bash", "scripts/gpu_check.sh"], timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "gpu_check.sh: error: no NVIDIA GPU here (no /dev/nvidia* device, no nvidia-smi); run it on a machine with one"
    ]
    direct = run([*BENCH, "gpu"], timeout=60)  # the Python side says the same, in its words
    assert direct.returncode == 2 and direct.stderr.strip().startswith("gpu_check: error: no NVIDIA GPU here")


def test_gpu_check_flags_are_checked_before_the_gpu():
    helped = run(["bash", "scripts/gpu_check.sh", "--help"], timeout=60)
    assert helped.returncode == 0 and "--budget" in helped.stdout and "--json" in helped.stdout
    wrong = run(["bash", "scripts/gpu_check.sh", "--budget", "soon"], timeout=60)
    assert wrong.returncode == 2 and "invalid float value: 'soon'" in wrong.stderr


def fake_gpu_report() -> dict:
    floor = {"epoch_s": 0.5, "train_images": 5120, "train_gflop_per_image": 8.13, "eval_gflop_per_image": 2.8}
    return {
        "img_size": [448, 224],
        "device": {"name": "NVIDIA H200", "capability": [9, 0], "memory_gib": 139.8, "torch": "2.14.1",
                   "cuda": "13.0", "cores": 16},
        "peak": {"gflops": {"fp32": 51_000.0, "tf32": 400_000.0, "bf16": 700_000.0}, "n": 8192},
        "models": {"batch": {"alexnet": 256, "vgg11": 64}, "alexnet/no": floor, "alexnet/bf16": floor,
                   "vgg11/no": {**floor, "train_gflop_per_image": 90.2}, "vgg11/bf16": {"error": "OutOfMemory: x"}},
        "input": {"images": 3686, "workers": 8, "cpu_decode": {"images_per_s": 2500.0},
                  "gpu_decode": {"images_per_s": 9000.0}, "raw_loader": {"images_per_s": 15000.0},
                  "installed": {"torchcodec": False, "nvidia.dali": False}},
        "stages": {"batch_size": 256, "batches": 4, "ms_per_batch": {"batched decode on the device": 14.9}},
        "vs_plain": {"images": 4096, "batch": 256, "workers": 8, "epochs": 3, "ratio": 1.8, "decode_line": None,
                     "hubclf": {"steady_s": 1.5, "precision": "bf16"}, "plain": {"steady_s": 2.7},
                     "plain_bf16": {"steady_s": 1.65}, "ratio_bf16": 1.1},
        "floor": {"skipped": "20 s of the 450 s budget left, this part needs ~150 s"},
    }  # fmt: skip


def test_gpu_report_lines(bench):
    lines = bench.format_gpu(fake_gpu_report())
    text = "\n".join(lines)
    assert lines[0].startswith("device: NVIDIA H200, compute 9.0, 140 GiB")
    assert "fp32 51.0 TFLOP/s, tf32 400.0 TFLOP/s, bf16 700.0 TFLOP/s" in text
    rate = 5120 / 0.5
    assert f"  alexnet  fp32        256 {rate:>10.0f}      8.13" in text
    mfu = rate * 8.13 / 1e3 / 400.0 * 100  # TFLOP/s over the measured TF32 peak (cuDNN's fp32 convolutions)
    assert f"{mfu:.1f}%" in text and f"{rate * 8.13 / 1e3 / 494.7 * 100:.1f}%" in text  # and the datasheet's
    assert "vgg11    bf16         64 failed: OutOfMemory: x" in text
    assert "CPU decoding (hubclf's loader, 8 workers) 2500 img/s" in text and "9000 img/s" in text
    assert "CPU decoding feeds 24% of it, GPU decoding 88%" in text
    assert "the GPU path's loader alone (files read, headers checked, batches received; nothing decoded): 15000" in text
    assert "hubclf with its defaults (bf16) 1.50 s/epoch; plain loop in fp32 2.70 s/epoch: 1.80x" in text
    assert "plain loop under bf16 autocast (the same arithmetic as hubclf): 1.65 s/epoch: 1.10x" in text
    assert "GPU decoding in hubclf: not available" in text
    assert "  batched decode on the device                 14.9 ms     17181 img/s" in text
    assert "floor on the device (AlexNet, bf16): skipped: 20 s of the 450 s budget left" in text
    assert len([line for line in lines if line.startswith("floor on the device")]) == 1


@pytest.mark.slow
@pytest.mark.bench
def test_gpu_check_parts_run_as_a_cpu_dry_run(tmp_path):
    report_file = tmp_path / "gpu.json"
    result = run([*BENCH, "gpu", "--cpu-dry-run", "--workdir", str(tmp_path / "work"), "--json", str(report_file)])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(report_file.read_text())
    for part in ("device", "peak", "models", "input", "stages", "vs_plain", "floor"):
        assert "error" not in report[part] and "skipped" not in report[part], (part, report[part])
    assert report["models"]["alexnet/no"]["epoch_s"] > 0 and report["input"]["cpu_decode"]["images_per_s"] > 0
    assert report["input"]["gpu_decode"]["device"] == "cpu" and report["input"]["gpu_decode"]["images_per_s"] > 0
    assert report["input"]["raw_loader"]["images_per_s"] > 0
    assert finite(report["vs_plain"]["ratio"]) and report["floor"]["best"].startswith("eager/")
    assert report["stages"]["ms_per_batch"]["DevicePreprocess, whole"] > 0
    for title in ("device:", "matmul peak", "model training at", "input pipeline at", "a batch of the GPU input path",
                  "hubclf vs the plain loop", "floor on the device"):  # fmt: skip
        assert title in result.stdout


# ---- e2e, start-up, the command line ---------------------------------------------------------------------------------
def test_bench_routes_its_sub_commands():
    helped = run([*BENCH, "--help"], timeout=60)
    assert helped.returncode == 0
    for command in ("floor", "e2e", "scale", "gpu", "modes", "startup"):
        assert command in helped.stdout
    assert "--window-images" in run([*BENCH, "--scale", "--help"], timeout=60).stdout  # issue 21's spelling
    assert "--timm-train-py" in run([*BENCH, "--rows", "alexnet-full", "--help"], timeout=60).stdout  # floor


@pytest.mark.slow
@pytest.mark.bench
def test_smoke_run_compares_every_mode_against_the_plain_loop(tmp_path):
    table = tmp_path / "bench.json"
    command = [
        *BENCH, "e2e", "--smoke", "--models", "alexnet", "--hubclf-precision", "no",
        "--workdir", str(tmp_path / "work"), "--json", str(table),
    ]  # fmt: skip
    result = run(command)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ratio = hubclf / peer speed" in result.stdout
    rows = json.loads(table.read_text())["rows"]
    # In fp32 there is no extra fp32 row: hubclf's full fine-tune is already in the peer's precision.
    assert [(row["model"], row["mode"], row["peer_mode"]) for row in rows] == [
        ("alexnet", "full", "full"), ("alexnet", "frozen", "frozen"), ("alexnet", "cached", "frozen"),
    ]  # fmt: skip
    for row in rows:
        assert row["precision"] == "no"
        assert row["speed_ratio"] == pytest.approx(row["hubclf_img_s"] / row["peer_img_s"])
        assert row["peer_rss_mib"] > 0 and row["hubclf_rss_mib"] > 0
        assert row["peer_pipeline_img_s"] > 0 and row["hubclf_pipeline_img_s"] > 0
        assert 0 <= row["hubclf_val_top1"] <= 1 and 0 <= row["peer_val_top1"] <= 1
    assert rows[0]["hubclf_rss_vs_full"] == 1.0


def test_startup_rows_are_measured_against_the_import_of_torch_and_timm():
    result = run([*BENCH, "startup", "--repeats", "1"], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    rows = {line[:34].strip(): line.split() for line in lines[2:]}
    assert set(rows) == {"python -c pass", "python -c 'import torch, timm'", "... then gc.freeze()",
                         "python -c 'import hubclf'", "hubclf --help", "hubclf train --help"}  # fmt: skip
    assert rows["python -c 'import torch, timm'"][-1] == "1.00x"  # the reference row


@pytest.mark.slow
@pytest.mark.bench
def test_startup_train_times_the_command_beside_main_with_the_collector_as_is(tmp_path):
    result = run([*BENCH, "startup", "--repeats", "1", "--train", "--workdir", str(tmp_path)], timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = result.stdout.split("hubclf train, AlexNet, full fine-tune, 1 epoch of 96+96 JPEGs")[1].splitlines()
    assert table[1].split() == ["step", "starts", "first", "step", "exited"]
    for side, line in zip(("hubclf train (the command)", "main() with the collector as is"), table[2:], strict=True):
        assert line.startswith(side)
        starts, first, exited = (float(cell.rstrip("s")) for cell in line[len(side):].split())
        assert 0 < starts <= first < exited
