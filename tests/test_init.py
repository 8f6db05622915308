"""hubclf/__init__.py and the timm hook: ``import hubclf`` is cheap and makes the architectures known to timm,
whichever is imported first; the public verbs resolve on first use."""

from __future__ import annotations

import subprocess
import sys


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_import_hubclf_imports_no_heavy_library():
    # The command line imports the package before it parses a flag: `hubclf --help` must not wait for torch.
    loaded = run_python(
        "import sys, hubclf, hubclf.cli; print(sorted({'torch', 'timm', 'accelerate', 'datasets'} & set(sys.modules)))"
    )
    assert loaded == "[]"


def test_timm_knows_the_architectures_whichever_is_imported_first():
    after = run_python("import hubclf, timm; print(timm.list_models('hubclf_*'))")
    before = run_python("import timm, hubclf; print(timm.list_models('hubclf_*'))")
    submodule = run_python("import hubclf; from timm.models import list_models; print(list_models('hubclf_*'))")
    assert after == before == submodule
    assert "hubclf_alexnet" in after and "hubclf_vgg11_bn_slim" in after


def test_public_names_resolve_on_first_use():
    import hubclf
    from hubclf.hub import from_pretrained
    from hubclf.train.api import train
    from hubclf.train.config import TrainConfig

    assert hubclf.from_pretrained is from_pretrained and hubclf.TrainConfig is TrainConfig
    assert callable(hubclf.train) and hubclf.train.train is train
    assert hubclf.freeze.__module__ == "hubclf.models.transfer"
    assert set(hubclf.__all__) <= set(dir(hubclf))
    try:
        hubclf.no_such_name  # noqa: B018
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


def test_old_module_paths_still_import():
    from hubclf.data.images import MAX_IMAGE_PIXELS, decode_image
    from hubclf.train import csv_labels, data, hardware, metrics

    assert data.decode_image is decode_image and data.MAX_IMAGE_PIXELS == MAX_IMAGE_PIXELS
    assert csv_labels.read_labels_csv and hardware.resolve_device and metrics.ClassificationMetrics
