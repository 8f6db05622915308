"""Tests for hubclf/demo/data.py: the deterministic demo dataset generator (smoke scale only: tiny and fast)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
from pathlib import Path

import pytest
from PIL import Image

from hubclf.demo.data import (
    BASE_CLASSES,
    DEMO_DATA_VERSION,
    SPECS,
    SPLITS,
    TARGET_CLASSES,
    dataset_sha256,
    generate,
    main,
)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def smoke_target(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("demo") / "target"
    return root, generate(root, kind="target", seed=0, scale="smoke", progress=False)


@pytest.mark.parametrize("kind", ["base", "target"])
def test_same_seed_gives_identical_bytes(tmp_path: Path, kind: str) -> None:
    first = generate(tmp_path / "a", kind=kind, seed=3, scale="smoke", progress=False)
    second = generate(tmp_path / "b", kind=kind, seed=3, scale="smoke", progress=False)
    assert first["sha256"] == second["sha256"]
    assert _files(tmp_path / "a") == _files(tmp_path / "b")  # manifest.json included
    assert first["sha256"] == dataset_sha256(tmp_path / "a")


def test_processes_share_the_work_and_write_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serial = generate(tmp_path / "serial", kind="base", seed=3, scale="smoke", progress=False)
    monkeypatch.setattr("hubclf.demo.data._MIN_IMAGES_PER_PROCESS", 1)  # smoke data is below the real threshold
    monkeypatch.setattr("hubclf.demo.data.usable_cores", lambda: 2)
    started = []
    real_pool = concurrent.futures.ProcessPoolExecutor
    monkeypatch.setattr(
        concurrent.futures, "ProcessPoolExecutor", lambda *a, **k: started.append(a) or real_pool(*a, **k)
    )
    parallel = generate(tmp_path / "parallel", kind="base", seed=3, scale="smoke", progress=False)
    assert started == [(2,)]
    assert parallel == serial and _files(tmp_path / "serial") == _files(tmp_path / "parallel")


def test_different_seed_gives_different_images(tmp_path: Path) -> None:
    seed0 = generate(tmp_path / "s0", kind="target", seed=0, scale="smoke", progress=False)
    seed1 = generate(tmp_path / "s1", kind="target", seed=1, scale="smoke", progress=False)
    assert seed0["sha256"] != seed1["sha256"]
    images0 = {k: v for k, v in _files(tmp_path / "s0").items() if k.endswith(".png")}
    images1 = {k: v for k, v in _files(tmp_path / "s1").items() if k.endswith(".png")}
    assert images0.keys() == images1.keys()
    assert all(images0[k] != images1[k] for k in images0)


def test_manifest_describes_the_dataset(smoke_target: tuple[Path, dict]) -> None:
    root, manifest = smoke_target
    spec = SPECS["smoke"]["target"]
    assert json.loads((root / "manifest.json").read_text()) == manifest
    assert manifest["version"] == DEMO_DATA_VERSION
    assert (manifest["seed"], manifest["kind"], manifest["scale"]) == (0, "target", "smoke")
    assert manifest["classes"] == list(TARGET_CLASSES)
    assert manifest["image_size"] == list(spec.image_size)
    assert manifest["counts"]["train"] == {name: spec.train_per_class for name in TARGET_CLASSES}
    assert manifest["counts"]["validation"] == {name: spec.validation_per_class for name in TARGET_CLASSES}
    assert manifest["num_images"] == len(list(root.rglob("*.png")))


@pytest.mark.parametrize("kind", ["base", "target"])
def test_layout_sizes_and_modes(tmp_path: Path, kind: str) -> None:
    manifest = generate(tmp_path, kind=kind, scale="smoke", progress=False)
    height, width = manifest["image_size"]
    for split in SPLITS:
        class_dirs = sorted(p.name for p in (tmp_path / split).iterdir())
        assert class_dirs == sorted(manifest["classes"])
        for name in class_dirs:
            images = sorted((tmp_path / split / name).glob("*.png"))
            assert len(images) == manifest["counts"][split][name]
            for path in images:
                with Image.open(path) as image:
                    assert image.mode == "RGB"
                    assert image.size == (width, height)  # PIL sizes are (W, H)
                    assert not image.text  # no metadata chunks: nothing that varies between runs


def test_full_target_is_the_seed_case() -> None:
    """The full target set is the seed question's case: 8 classes of 448 high x 224 wide images."""
    target = SPECS["full"]["target"]
    assert len(target.classes) == 8 and target.image_size == (448, 224)
    assert set(target.classes).isdisjoint(BASE_CLASSES)
    assert len(SPECS["full"]["base"].classes) >= 16


def test_loads_with_datasets_imagefolder(smoke_target: tuple[Path, dict]) -> None:
    datasets = pytest.importorskip("datasets")
    root, manifest = smoke_target
    loaded = datasets.load_dataset("imagefolder", data_dir=str(root))
    assert set(loaded) == set(SPLITS)
    for split in SPLITS:
        assert loaded[split].num_rows == sum(manifest["counts"][split].values())
        label = loaded[split].features["label"]
        assert isinstance(label, datasets.ClassLabel)
        assert label.names == manifest["classes"]  # same order: manifest indices are the dataset's label ids
    example = loaded["train"][0]
    assert example["image"].size == (manifest["image_size"][1], manifest["image_size"][0])


def test_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    (tmp_path / "stale.txt").write_text("old data")
    with pytest.raises(FileExistsError, match="overwrite"):
        generate(tmp_path, kind="base", scale="smoke", progress=False)
    generate(tmp_path, kind="base", scale="smoke", overwrite=True, progress=False)
    assert not (tmp_path / "stale.txt").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"kind": "imagenet"}, "kind"), ({"scale": "huge"}, "scale"), ({"seed": -1}, "seed")],
)
def test_bad_arguments_are_clear_errors(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate(tmp_path, **kwargs)


def test_command_line_writes_both_datasets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path), "--scale", "smoke", "--seed", "5"]) == 0
    for kind in ("base", "target"):
        manifest = json.loads((tmp_path / kind / "manifest.json").read_text())
        assert (manifest["kind"], manifest["seed"]) == (kind, 5)
        assert manifest["sha256"] == dataset_sha256(tmp_path / kind)
    assert "target:" in capsys.readouterr().out


def test_more_images_leave_existing_ones_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each image's random stream is keyed by its name, so growing a split never changes the images before it."""
    small = generate(tmp_path / "small", kind="target", scale="smoke", progress=False)
    spec = SPECS["smoke"]["target"]
    monkeypatch.setitem(SPECS["smoke"], "target", dataclasses.replace(spec, train_per_class=spec.train_per_class + 1))
    larger = generate(tmp_path / "larger", kind="target", scale="smoke", progress=False)
    assert larger["num_images"] == small["num_images"] + len(TARGET_CLASSES)
    small_files, larger_files = _files(tmp_path / "small"), _files(tmp_path / "larger")
    assert all(larger_files[name] == data for name, data in small_files.items() if name.endswith(".png"))
