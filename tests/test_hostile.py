"""A hostile corpus, across modules: images, folders, CSVs, Hub datasets, model folders, checkpoints and settings
files that an attacker or a careless user could hand to hubclf. Each case runs one ``hubclf`` command and must end
with exactly one error line naming the problem and exit status 2, within a bounded peak memory (measured: the
command's peak resident set above the process it started from), and without writing anything outside the case's
output folder ``out/``.

Every case runs in a process forked from one worker that has already imported torch, timm, 🤗 datasets and hubclf
(so a case costs what its command does, not 5 s of imports). ``os.wait4`` gives the forked command's own peak RSS;
an address-space limit and an alarm stop a regression before it can exhaust the machine or hang the suite. The
cases that need a fresh interpreter (``HF_ENDPOINT`` is read when huggingface_hub is imported) run in one.

Run ``pytest tests/test_hostile.py -s`` to see each case's peak memory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import HfApi
from PIL import Image
from safetensors.torch import save_file

import hubclf
from tests.image_folders import make_image_folder

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20

WORKER = r"""
import json, os, resource, signal, sys, traceback

import datasets, PIL.Image, safetensors.torch, timm, torch  # imported once: each forked case starts with them
import hubclf, hubclf.evaluate, hubclf.hub, hubclf.predict, hubclf.train.loop
from hubclf.cli import main


def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))


for line in sys.stdin:
    case = json.loads(line)
    size_kb = status("VmSize:")
    pid = os.fork()
    if pid == 0:
        code = 99
        # The command's own peak: the resident set's high-water mark, reset to the current resident set first.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        start_kb = status("VmRSS:")
        try:
            os.chdir(case["cwd"])
            os.environ.update(case["env"])
            for fd, name in ((1, "stdout"), (2, "stderr")):
                os.dup2(os.open(case[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            # A regression must fail the case, not exhaust the machine or hang the suite.
            limit = size_kb * 1024 + case["address_space_bytes"]
            resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
            signal.alarm(case["timeout"])
            code = main(case["argv"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 2
        except BaseException:
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        with open(case["memory"], "w") as f:
            json.dump({"start_kb": start_kb, "peak_kb": status("VmHWM:")}, f)
        os._exit(code)
    _, wait_status, usage = os.wait4(pid, 0)
    print(json.dumps({"code": os.waitstatus_to_exitcode(wait_status), "maxrss_kb": usage.ru_maxrss}), flush=True)
"""


class Worker:
    """The forking worker: ``run(argv, cwd)`` -> (exit code, peak MiB above the worker, stdout, stderr)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
            cwd=REPO_ROOT,
        )  # fmt: skip

    def run(self, argv: list[str], cwd: Path, *, timeout: int = 300, env: dict | None = None) -> tuple:
        out, err = cwd.parent / f"{cwd.name}.stdout", cwd.parent / f"{cwd.name}.stderr"
        memory = cwd.parent / f"{cwd.name}.memory"
        memory.unlink(missing_ok=True)
        case = {
            "argv": argv, "cwd": str(cwd), "env": env or {}, "stdout": str(out), "stderr": str(err),
            "memory": str(memory), "timeout": timeout, "address_space_bytes": 6 << 30,
        }  # fmt: skip
        self.process.stdin.write(json.dumps(case) + "\n")
        self.process.stdin.flush()
        result = json.loads(self.process.stdout.readline())
        # Killed (the alarm, the address-space limit): no report, so the worst it could have been.
        used = json.loads(memory.read_text()) if memory.is_file() else {"start_kb": 0, "peak_kb": result["maxrss_kb"]}
        peak_mib = (used["peak_kb"] - used["start_kb"]) / 1024
        return result["code"], peak_mib, out.read_text(errors="replace"), err.read_text(errors="replace")

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def worker(hub_server) -> Worker:
    env = {**os.environ, "HF_ENDPOINT": hub_server.endpoint, "HF_HUB_DISABLE_XET": "1", "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_MIXED_PRECISION", None)  # the train cases decide it as users' runs do
    env["ACCELERATE_MIXED_PRECISION"] = "no"
    started = Worker(env)
    yield started
    started.close()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = timm.create_model("hubclf_alexnet_slim", num_classes=2, img_size=(64, 64))
    return hubclf.save_pretrained(model, tmp_path_factory.mktemp("model") / "model", label_names=["class_0", "class_1"])


# ---- hostile files ------------------------------------------------------------------------------------------------
def png_rows(path: Path, width: int, height: int, mode: str = "RGBA") -> Path:
    """A PNG of ``width`` x ``height`` constant pixels, streamed row by row: a 100-megapixel file is written in
    seconds without holding its pixels (what a hostile file costs its maker: nothing)."""
    bytes_per_pixel, colour_type, depth = {
        "RGBA": (4, 6, 8), "RGB": (3, 2, 8), "L": (1, 0, 8), "I;16": (2, 0, 16), "P": (1, 3, 8)
    }[mode]  # fmt: skip
    row = b"\x00" + bytes(range(1, bytes_per_pixel + 1)) * width
    compressor, chunks = zlib.compressobj(9), []
    for _ in range(height):
        chunks.append(compressor.compress(row))
    data = b"".join(chunks) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    palette = chunk(b"PLTE", bytes(range(6))) + chunk(b"tRNS", b"\x00") if mode == "P" else b""
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + palette + chunk(b"IDAT", data)
                     + chunk(b"IEND", b""))  # fmt: skip
    return path


def gif_header(path: Path, width: int, height: int) -> Path:
    """A GIF whose logical screen and one frame claim ``width`` x ``height``, with 1 byte of image data."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00\x3b"
    path.write_bytes(screen + frame)
    return path


def data_with(sandbox: Path, name: str, make: Callable[[Path], object]) -> Path:
    """An image folder (2 classes, a train and a validation split) with one hostile file among the validation images
    (the eval transform is the one that resizes an image to cover the input; training crops first)."""
    data = make_image_folder(sandbox / "photos", 2, per_class=2, split="train")
    make_image_folder(data, 2, per_class=1, split="validation", seed=1)
    make(data / "validation" / "class_0" / name)
    return data


TRAIN = ["train", "--model", "hubclf_alexnet_slim", "--no-pretrained", "--img-size", "64", "64", "--epochs", "1",
         "--batch-size", "8", "--num-workers", "0", "--output-dir", "out"]  # fmt: skip


@dataclass
class Case:
    """A command built in an empty sandbox folder (``make(sandbox, model_dir) -> argv``), the one error line it
    must give (a regex, searched in the last stderr line), and its peak-memory bound in MiB."""

    make: Callable[[Path, Path], list[str]]
    message: str
    max_mib: float = 300


def strict_train(name: str, make: Callable[[Path], object]) -> Callable[[Path, Path], list[str]]:
    """``train --on-bad-image error`` over a folder holding the hostile image: refused with its reason (``skip``, the
    default, lists it and trains on: tests/test_train_loop.py, test_predict.py, test_app.py)."""
    return lambda sandbox, model: [*TRAIN, "--data", str(data_with(sandbox, name, make)), "--on-bad-image", "error"]


def predict(name: str, make: Callable[[Path], object]) -> Callable[[Path, Path], list[str]]:
    def build(sandbox: Path, model: Path) -> list[str]:
        make(sandbox / name)
        return ["predict", str(model), str(sandbox / name)]

    return build


def sparse(path: Path, size: int) -> Path:
    """A file of ``size`` bytes on paper, nothing written (a hole)."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def fifo(path: Path) -> None:
    os.mkfifo(path)


def unix_socket(path: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))  # the socket file stays after the process ends; nothing listens


def character_device(path: Path) -> None:
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a copy of /dev/null's node, in the sandbox


def block_device(path: Path) -> None:
    os.mknod(path, 0o600 | stat.S_IFBLK, os.makedev(7, 0))  # a loop device's node: never opened, by anyone


def link_to_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def csv_listing(make: Callable[[Path], object], name: str = "weird.png") -> Callable[[Path, Path], list[str]]:
    def build(sandbox: Path, model: Path) -> list[str]:
        make_image_folder(sandbox / "img", 2, per_class=2)
        make(sandbox / "img" / name)
        rows = [f"class_{c}/{i}.png,{c}" for c in range(2) for i in range(2)] + [f"{name},1"]
        (sandbox / "labels.csv").write_text("path,label\n" + "\n".join(f"img/{row}" for row in rows) + "\n")
        return [*TRAIN, "--data", str(sandbox / "labels.csv")]

    return build


def hostile_copy(model: Path, sandbox: Path, change: Callable[[Path], object]) -> Path:
    """A copy of the good model folder in the sandbox, made hostile by ``change``."""
    folder = sandbox / "model"
    shutil.copytree(model, folder)
    change(folder)
    return folder


def model_folder(change: Callable[[Path], object]) -> Callable[[Path, Path], list[str]]:
    """``predict`` with a copy of the good model folder that ``change`` made hostile."""

    def build(sandbox: Path, model: Path) -> list[str]:
        folder = hostile_copy(model, sandbox, change)
        Image.new("RGB", (64, 64)).save(sandbox / "x.png")
        return ["predict", str(folder), str(sandbox / "x.png")]

    return build


def tiny_weights_naming(architecture: str) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        (folder / "model.safetensors").unlink()
        save_file({"patch_embed.proj.weight": torch.zeros(0, 3, 16, 16)}, folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps({
            "architecture": architecture, "num_classes": 0, "pretrained_cfg": {"input_size": [3, 224, 224]}
        }))  # fmt: skip

    return change


def edit_config(**changes) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        for dotted, value in changes.items():
            *parents, key = dotted.split("__")
            target = config
            for parent in parents:
                target = target.setdefault(parent, {})
            target[key] = value
        (folder / "config.json").write_text(json.dumps(config))

    return change


def replace_file(name: str, make: Callable[[Path], object]) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        (folder / name).unlink()
        make(folder / name)

    return change


def pushed(change: Callable[[Path], object]) -> Callable[[Path, Path], list[str]]:
    def build(sandbox: Path, model: Path) -> list[str]:
        return ["push", str(hostile_copy(model, sandbox, change)), "me/anything", "--no-verify"]

    return build


def settings(text: str, name: str = "run.yaml") -> Callable[[Path, Path], list[str]]:
    def build(sandbox: Path, model: Path) -> list[str]:
        (sandbox / name).write_text(text)
        return ["train", "--config", str(sandbox / name)]

    return build


# "Billion laughs": 1 KB of YAML whose aliases make a list of 387 million strings once expanded (or printed).
LAUGHS = (
    "model: hubclf_alexnet_slim\ndata: .\noutput_dir: out\nlog_with: [&a ["
    + ", ".join(["lol"] * 9)
    + "]"
    + "".join(f", &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi", strict=True))
    + "]\n"
)


# ---- checkpoints --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_with_checkpoint(tmp_path_factory, worker) -> Path:
    """A finished 1-epoch run with --model-ema (its checkpoint holds the EMA weights), made by the worker."""
    root = tmp_path_factory.mktemp("run")
    data = make_image_folder(root / "photos", 2, per_class=2, split="train")
    make_image_folder(data, 2, per_class=1, split="validation", seed=1)
    code, _, _, err = worker.run([*TRAIN, "--data", str(data), "--model-ema", "--keep-checkpoints", "1"], root)
    assert code == 0, err[-2000:]
    return root


EVIL_PICKLE = """
import os, sys, torch
class Payload:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[2],))
torch.save({"module.features.0.weight": Payload()}, sys.argv[1])
"""


def resume(change: Callable[[Path], object]) -> Callable[[Path, Path], list[str]]:
    """``train --resume`` of a copy of the run's checkpoint that ``change`` made hostile."""

    def build(sandbox: Path, run: Path) -> list[str]:
        (source,) = (run / "out" / "checkpoints").iterdir()
        checkpoint = sandbox / "shared" / source.name
        shutil.copytree(source, checkpoint, symlinks=True)
        change(checkpoint)
        data = make_image_folder(sandbox / "photos", 2, per_class=2, split="train")
        make_image_folder(data, 2, per_class=1, split="validation", seed=1)
        return [*TRAIN, "--data", str(data), "--model-ema", "--epochs", "2", "--resume", str(checkpoint)]

    return build


def plant_pickle(checkpoint: Path) -> None:
    subprocess.run([sys.executable, "-c", EVIL_PICKLE, str(checkpoint / "custom_checkpoint_0.pkl"),
                    str(checkpoint.parent.parent / "PWNED")], check=True)  # fmt: skip


def flip_last_byte(name: str) -> Callable[[Path], None]:
    def change(checkpoint: Path) -> None:
        data = (checkpoint / name).read_bytes()
        (checkpoint / name).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))

    return change


def rewrite_and_relist(name: str, value) -> Callable[[Path], None]:
    """Replace a state file by another hubclf state file, and rewrite the manifest to match (what an attacker can)."""

    def change(checkpoint: Path) -> None:
        from hubclf.train.checkpoints import _save_packed, write_manifest

        (checkpoint / name).unlink()
        _save_packed(checkpoint / name, value)
        (checkpoint / "manifest.json").unlink()
        write_manifest(checkpoint)

    return change


def edit_state(**values) -> Callable[[Path], None]:
    def change(checkpoint: Path) -> None:
        from hubclf.train.checkpoints import write_manifest

        state = json.loads((checkpoint / "trainer_state.json").read_text())
        (checkpoint / "trainer_state.json").write_text(json.dumps({**state, **values}))
        (checkpoint / "manifest.json").unlink()
        write_manifest(checkpoint)

    return change


# ---- the corpus ---------------------------------------------------------------------------------------------------
BUDGET = r"over hubclf's 1,024 MiB per image \(hubclf.data.images.MAX_DECODE_BYTES\)"
IMAGE_CASES = {
    # A 375-byte PNG: the eval transform scales it until it covers the input, 7.3 million pixels wide.
    "image_strip_100000x1": Case(strict_train("strip.png", lambda p: png_rows(p, 100_000, 1, "RGB")),
                                 rf"strip.png: the model's transform would resize its 100000x1 pixels .*{BUDGET}", 400),
    "image_strip_1x100000": Case(strict_train("tall.png", lambda p: png_rows(p, 1, 100_000, "RGB")),
                                 rf"tall.png: the model's transform would resize its 1x100000 pixels .*{BUDGET}", 400),
    # 6 KB that asked for ~42 GB.
    "image_strip_2000000x1": Case(strict_train("long.png", lambda p: png_rows(p, 2_000_000, 1, "L")),
                                  r"long.png: the model's transform would resize its 2000000x1 pixels", 400),
    # Under the 100 MP pixel limit, but decoding and flattening it on white took 1.7 GB.
    "image_rgba_99_98_megapixels": Case(strict_train("big.png", lambda p: png_rows(p, 9999, 9999, "RGBA")),
                                        rf"big.png: decoding its 9999x9999 RGBA pixels would take 1,2\d\d MiB, "
                                        rf"{BUDGET}",
                                        400),
    # 16-bit grey goes through float32 arrays (11 bytes a pixel); a palette with transparency through RGBA (14).
    "image_16_bit_99_98_megapixels": Case(strict_train("deep.png", lambda p: png_rows(p, 9999, 9999, "I;16")),
                                          rf"deep.png: decoding its 9999x9999 I;16\w? pixels would take 1,04\d MiB, "
                                          rf"{BUDGET}", 400),
    "image_palette_99_megapixels": Case(strict_train("flat.png", lambda p: png_rows(p, 9000, 11000, "P")),
                                        rf"flat.png: decoding its 9000x11000 P pixels would take 1,32\d MiB, {BUDGET}",
                                        400),
    "image_bomb_png_400_megapixels": Case(strict_train("bomb.png", lambda p: png_rows(p, 20_000, 20_000, "L")),
                                          r"bomb.png: Image size \(400000000 pixels\) exceeds limit", 400),
    "image_bomb_gif_65535_square": Case(strict_train("bomb.gif", lambda p: gif_header(p, 65535, 65535)),
                                        r"bomb.gif: Image size \(4294836225 pixels\) exceeds limit", 400),
    "image_eps_named_jpg": Case(strict_train("figure.jpg", lambda p: p.write_bytes(
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")),
        r"figure.jpg: cannot identify image file", 400),  # never handed to Ghostscript
    "image_text_named_png": Case(strict_train("notes.png", lambda p: p.write_text("not a picture")),
                                 r"notes.png: cannot identify image file", 400),
    "predict_fifo": Case(predict("photo.png", fifo), r"photo.png is a FIFO \(named pipe\), not an image file"),
    "predict_socket": Case(predict("photo.png", unix_socket), r"photo.png is a socket, not an image file"),
    "predict_character_device": Case(predict("photo.png", character_device),
                                     r"photo.png is a character device, not an image file"),
    "predict_link_to_dev_zero": Case(predict("photo.png", link_to_zero),
                                     r"photo.png is a character device, not an image file"),
}  # fmt: skip
FOLDER_CASES = {
    "space_over_the_current_folder": Case(lambda s, m: ["app", "me/zoo", "--write-space", ".", "--overwrite"],
                                          r"--write-space \. is the current folder"),
    "space_over_a_folder_above": Case(lambda s, m: ["app", "me/zoo", "--write-space", "..", "--overwrite"],
                                      r"--write-space \.\. is a folder above the current one"),
    "space_over_root": Case(lambda s, m: ["app", "me/zoo", "--write-space", "/", "--overwrite"],
                            r"--write-space / is the root folder"),
    "space_over_someone_elses_folder": Case(
        lambda s, m: ((s / "project").mkdir(), (s / "project" / "main.py").write_text("x"),
                      ["app", "me/zoo", "--write-space", "project", "--overwrite"])[-1],
        r"project holds files hubclf did not write \(main.py; no .hubclf-space marker\)"),
    "eval_plot_over_a_device": Case(
        lambda s, m: (character_device(s / "null"), make_image_folder(s / "photos", 2, per_class=1, split="validation"),
                      ["eval", str(m), "--data", str(s / "photos"), "--plot", str(s / "null")])[-1],
        r"null is a character device, not a regular file: hubclf only writes regular files", 600),
    "data_is_a_fifo": Case(lambda s, m: (fifo(s / "photos"), [*TRAIN, "--data", str(s / "photos")])[-1],
                           r"--data .*photos is a file; give an image folder"),
}  # fmt: skip
CSV_CASES = {
    "csv_lists_a_fifo": Case(csv_listing(fifo), r"1 listed path\(s\) are not regular files: img/weird.png \(a FIFO"),
    "csv_lists_a_link_to_dev_zero": Case(csv_listing(link_to_zero),
                                         r"not regular files: img/weird.png \(a character device\)"),
    "csv_lists_a_socket": Case(csv_listing(unix_socket), r"not regular files: img/weird.png \(a socket\)"),
    "csv_lists_a_block_device": Case(csv_listing(block_device), r"not regular files: img/weird.png \(a block device\)"),
    "csv_is_a_fifo": Case(lambda s, m: (fifo(s / "labels.csv"), [*TRAIN, "--data", str(s / "labels.csv")])[-1],
                          r"labels.csv"),
    "csv_of_250_mb": Case(lambda s, m: [*TRAIN, "--data", str(sparse(s / "labels.csv", 250 * MIB))],
                          r"labels.csv is 250 MiB; a labels CSV may be at most 200 MiB"),
    "csv_with_twelve_missing_files": Case(
        lambda s, m: ((s / "l.csv").write_text("path,label\n" + "".join(f"m/{i}.png,x\n" for i in range(12))),
                      [*TRAIN, "--data", str(s / "l.csv")])[-1],
        r"12 listed file\(s\) do not exist in .*: m/0.png, .*m/9.png and 2 more$"),
}  # fmt: skip
MODEL_CASES = {
    # 96 bytes of safetensors naming a 303M-parameter model: refused on the meta device.
    "model_tiny_file_huge_architecture": Case(model_folder(tiny_weights_naming("vit_large_patch16_224")),
                                              r"does not match 'vit_large_patch16_224' as config.json builds it \(0 of "
                                              r"its 303,301,632 values; nothing was built\)", 300),
    "model_over_the_parameter_budget": Case(model_folder(tiny_weights_naming("vit_huge_patch14_224")),
                                            r"over the 2.00 GiB hubclf builds from someone else's folder", 300),
    "model_config_over_1_mib": Case(model_folder(edit_config(label_names=["x" * 250] * 4200)),
                                    r"config.json is 1,\d{3},\d{3} bytes; a config.json may have at most 1,048,576"),
    "model_100001_classes": Case(model_folder(edit_config(num_classes=100_001)),
                                 r"num_classes must be an integer in 0..100,000, got 100001"),
    "model_config_is_a_fifo": Case(model_folder(replace_file("config.json", fifo)), r"model has no config.json"),
    "model_weights_are_a_fifo": Case(model_folder(replace_file("model.safetensors", fifo)),
                                     r"model has no model.safetensors"),
    "model_weights_link_to_dev_zero": Case(model_folder(replace_file("model.safetensors", link_to_zero)),
                                           r"model has no model.safetensors"),
    "model_pickle_only": Case(model_folder(lambda f: ((f / "model.safetensors").rename(f / "pytorch_model.bin"))),
                              r"has no model.safetensors \(it has only the pickle file\(s\) \['pytorch_model.bin'\]\)"),
    "push_bad_card_record": Case(pushed(edit_config(hubclf__hyperparameters=[1])),
                                 r"hubclf.hyperparameters must be an object or null, got \[1\]"),
    "push_bad_strategy_section": Case(pushed(edit_config(strategy={"rows": [[{"x": 1}]]})),
                                      r"strategy.rows must be a list of rows of numbers and strings"),
}  # fmt: skip
CHECKPOINT_CASES = {
    "checkpoint_with_a_pickle_payload": Case(resume(plant_pickle),
                                             r"holds 'custom_checkpoint_0.pkl', which its manifest does not list", 400),
    "checkpoint_without_manifest": Case(resume(lambda c: (c / "manifest.json").unlink()),
                                        r"manifest.json is missing: .* was written by an older hubclf", 400),
    "checkpoint_optimizer_bit_flip": Case(resume(flip_last_byte("optimizer.safetensors")),
                                          r"optimizer.safetensors does not match its manifest \(xxh3_128 differs", 400),
    "checkpoint_ema_link_to_dev_zero": Case(resume(replace_file("ema.safetensors", link_to_zero)),
                                            r"ema.safetensors is a symbolic link, not the regular file", 400),
    "checkpoint_optimizer_of_another_model": Case(
        resume(rewrite_and_relist("optimizer.safetensors", {"state": {}, "param_groups": [{"params": [0]}]})),
        r"optimizer.safetensors cannot be restored \(ValueError: .*damaged or from another run", 500),
    "checkpoint_rng_state_broken": Case(
        resume(rewrite_and_relist("random_states_0.safetensors", {"step": 1, "python": [3, [1], None]})),
        r"random_states_0.safetensors cannot be restored", 500),
    "checkpoint_trainer_state_types": Case(resume(edit_state(epoch="1", lineage=["../../etc"])),
                                           r"trainer_state.json is not a hubclf trainer state: epoch must be a "
                                           r"non-negative integer, got '1'", 400),
    "checkpoint_is_a_fifo": Case(lambda s, r: (fifo(s / "ckpt"), [*TRAIN, "--data", ".", "--resume", "ckpt"])[-1],
                                 r"--resume .*ckpt: no such checkpoint folder"),
}  # fmt: skip
SETTINGS_CASES = {
    "yaml_lr_is_a_list": Case(settings("model: hubclf_alexnet_slim\ndata: d\noutput_dir: out\nlr: [1]\n"),
                              r"lr must be a number, got \[1\] \(list\)"),
    "yaml_python_object_tag": Case(settings("model: !!python/object/apply:os.system ['touch PWNED']\ndata: d\n"
                                            "output_dir: out\n"), r"run.yaml is not valid YAML: could not determine a "
                                                                  r"constructor for the tag"),
    "yaml_billion_laughs": Case(settings(LAUGHS), r"log_with must be a list of strings, got \[\['lol'"),
    "yaml_of_100_mb": Case(lambda s, m: ["train", "--config", str(sparse(s / "run.yaml", 100 * MIB))],
                           r"run.yaml is 104,857,600 bytes; a settings file has at most 1,048,576"),
    "yaml_is_a_fifo": Case(lambda s, m: (fifo(s / "run.yaml"), ["train", "--config", str(s / "run.yaml")])[-1],
                           r"run.yaml is not a regular file"),
    "json_settings_not_json": Case(settings("{'model': 1}", name="run.json"), r"run.json is not valid JSON"),
    "yaml_epochs_fractional": Case(settings("model: hubclf_alexnet_slim\ndata: .\noutput_dir: out\nepochs: 2.5\n"),
                                   r"epochs must be an integer, got 2.5 \(float\)"),
}  # fmt: skip

CASES = {**IMAGE_CASES, **FOLDER_CASES, **CSV_CASES, **MODEL_CASES, **CHECKPOINT_CASES, **SETTINGS_CASES}
PEAKS: dict[str, float] = {}


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder`` but a case's ``out/`` (the one place a command may write): files as (kind, size,
    mtime), folders and others by kind (a folder's mtime moves when ``out/`` is made in it)."""
    found = {}
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        if "out" in rel.parts:
            continue
        for name in dirs + files:
            if name == "out" and not rel.parts[1:]:
                continue
            info = os.lstat(Path(root) / name)
            kind = stat.S_IFMT(info.st_mode)
            found[str(rel / name)] = (kind, info.st_size, info.st_mtime_ns) if stat.S_ISREG(kind) else (kind,)
    return found


def check(worker: Worker, name: str, case: Case, sandbox: Path, extra: Path) -> None:
    sandbox.mkdir()
    argv = case.make(sandbox, extra)
    before = snapshot(sandbox.parent)
    code, peak_mib, out, err = worker.run(argv, sandbox)
    PEAKS[name] = peak_mib
    lines = err.strip().splitlines()
    assert code == 2, f"{name}: exit {code}\n{err[-3000:]}"
    assert lines and lines[-1].startswith(f"hubclf {argv[0]}: error: "), f"{name}: {err[-3000:]}"
    assert "internal error" not in lines[-1] and re.search(case.message, lines[-1]), f"{name}: {lines[-1]}"
    assert peak_mib <= case.max_mib, f"{name}: peak {peak_mib:.0f} MiB above the worker, bound {case.max_mib}"
    after = snapshot(sandbox.parent)
    changed = {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}
    written = {path for path in changed if not Path(path).name.startswith(f"{sandbox.name}.")}
    assert not written, f"{name} wrote outside out/: {sorted(written)}"
    print(f"{name}: exit 2, peak {peak_mib:.0f} MiB above the worker: {lines[-1][:150]}")


@pytest.mark.parametrize("name", [*IMAGE_CASES, *FOLDER_CASES, *CSV_CASES, *MODEL_CASES, *SETTINGS_CASES])
def test_hostile_input_is_one_line_exit_2_bounded_and_writes_nothing_outside_out(worker, model_dir, tmp_path, name):
    check(worker, name, CASES[name], tmp_path / "case", model_dir)
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "case" / "PWNED").exists()


@pytest.mark.parametrize("name", list(CHECKPOINT_CASES))
def test_hostile_checkpoint_is_refused_before_anything_runs(worker, run_with_checkpoint, tmp_path, name):
    check(worker, name, CASES[name], tmp_path / "case", run_with_checkpoint)
    assert not (tmp_path / "case" / "PWNED").exists()  # the payload's file: the pickle never ran


def test_classes_whose_model_would_not_load_stop_before_the_first_step(worker, tmp_path):
    """5,000 labels of 220 characters saved fine, but from_pretrained and push refused the 1.1 MB config.json: the
    run was wasted. 700 classes of 250 non-ASCII characters take as much (each is written as 6 bytes)."""
    sandbox = tmp_path / "case"
    sandbox.mkdir()
    rows = []
    for i in range(700):
        for split in ("train", "validation"):
            Image.new("L", (4, 4), i % 250).save(sandbox / f"{split}-{i}.png")
            rows.append(f"{split}-{i}.png,{i:03d}{'é' * 250},{split}")
    (sandbox / "labels.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n", encoding="utf-8")
    case = Case(lambda s, m: [*TRAIN, "--data", str(s / "labels.csv")],
                r"the 700 class names take 1,\d{3},\d{3} bytes of config.json, .* the model would save but never "
                r"load back", 800)  # fmt: skip
    argv = case.make(sandbox, sandbox)
    code, peak_mib, _, err = worker.run(argv, sandbox)
    PEAKS["classes_whose_model_would_not_load"] = peak_mib
    assert code == 2 and re.search(case.message, err.strip().splitlines()[-1]), err[-2000:]
    assert not (sandbox / "out" / "checkpoints").exists() and peak_mib <= case.max_mib


def test_a_hub_dataset_naming_local_files_is_refused(worker, use_hub, new_repo_id, tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    sandbox = tmp_path / "case"
    sandbox.mkdir()
    os.mkfifo(sandbox / "pipe.png")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    cells = [{"bytes": None, "path": path} for path in (str(sandbox / "pipe.png"), "/etc/passwd", "../../x.png")]
    pq.write_table(pa.table({"image": cells + cells[:1], "label": [0, 1, 0, 1]}, schema=features.arrow_schema),
                   tmp_path / "train.parquet")  # fmt: skip
    repo_id = new_repo_id("local-paths")
    api = HfApi(token=use_hub.token)
    api.create_repo(repo_id, repo_type="dataset")
    api.upload_file(path_or_fileobj=str(tmp_path / "train.parquet"), path_in_repo="data/train-00000.parquet",
                    repo_id=repo_id, repo_type="dataset")  # fmt: skip
    before = snapshot(tmp_path)
    code, peak_mib, _, err = worker.run([*TRAIN, "--data", repo_id], sandbox)
    PEAKS["hub_dataset_naming_local_files"] = peak_mib
    line = err.strip().splitlines()[-1]
    assert code == 2 and "4 image(s) of the 'train' split carry no image bytes but a path on this machine" in line
    assert "'/etc/passwd'" in line and "does not open local files" in line and peak_mib <= 500
    after = snapshot(tmp_path)
    changed = {k for k in after.keys() | before.keys() if after.get(k) != before.get(k)}
    assert changed <= {"case.stdout", "case.stderr", "case.memory"}


def test_a_password_in_hf_endpoint_is_never_printed(hub_server, model_dir, tmp_path):
    """``HF_ENDPOINT=http://user:pw@host`` was printed verbatim in push errors. A fresh interpreter: huggingface_hub
    reads HF_ENDPOINT when it is imported."""
    endpoint = hub_server.endpoint.replace("://", "://hubuser:s3cretpw@")
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "hf_" + "x" * 30}
    run = subprocess.run([sys.executable, "-m", "hubclf.cli", "push", str(model_dir), "someone/else", "--no-verify"],
                         env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 2, run.stderr[-2000:]
    assert "s3cretpw" not in run.stderr + run.stdout and "hubuser" not in run.stderr + run.stdout
    line = run.stderr.strip().splitlines()[-1]
    assert line.startswith("hubclf push: error: push to someone/else failed") and "internal error" not in line


def test_the_corpus_is_at_least_forty_cases_and_its_peaks_are_reported():
    assert len(CASES) + 3 >= 40  # with the class names, Hub dataset and HF_ENDPOINT cases
    if PEAKS:
        print("\npeak memory above the worker, MiB: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(PEAKS.items())))
