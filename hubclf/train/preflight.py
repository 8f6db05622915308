"""Checks of a run's settings that need no data, done first by ``train``, ``lr-find`` and ``compare``: a typo then
costs seconds instead of a dataset load and the hardware probes, and a push target the Hub would refuse is found
before the run instead of after it.

    preflight_checks(TrainConfig(model="hubclf_alexnet", data="photos/", output_dir="out"))
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import timm

from hubclf.config_check import read_config_file
from hubclf.hub import CONFIG_NAME, check_repo_id
from hubclf.models._base import architecture_class
from hubclf.train.config import TrainConfig
from hubclf.train.data import check_data_location


def preflight_checks(config: TrainConfig) -> None:
    """Refuse what the settings alone show to be wrong before any data is read or hardware probed: a typo should
    not cost a dataset load. Used by train, lr-find and compare.

        preflight_checks(TrainConfig(model="hubclf_alexnet", data="photos/", output_dir="out", img_size=(32, 32)))
        # ValueError: --img-size 32 32 is below AlexNet's minimum 63 63 (H W)
    """
    check_model_name(config.model)
    check_img_size(config.model, config.img_size)
    check_data_location(config.data)
    check_output_dir(config.output_dir)
    check_trackers(config.log_with)
    if config.push_to_hub:  # a bad id would otherwise surface only after the whole run
        check_repo_id(config.push_to_hub)


def check_output_dir(output_dir: str) -> None:
    """The output folder, or the nearest part of its path that exists, must be a folder this process can write in;
    the run creates what is missing.

        check_output_dir("notes.txt/run1")   # ValueError: notes.txt is a file, not a folder
    """
    path = Path(output_dir).expanduser()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"--output-dir {output_dir}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"--output-dir {output_dir}: no permission to write in {existing}")


def check_img_size(model: str, img_size: tuple[int, int] | None) -> None:
    """An ``img_size`` below what an architecture's pooling can take (``min_input_size``: 63×63 for AlexNet, 32×32
    for VGG) fails on the first batch; refuse it up front instead. A local model folder is checked through its
    config.json's architecture; a Hub model once it is downloaded.
    """
    if img_size is None:
        return
    model_class = architecture_class(_local_architecture(model) or model)
    minimum = getattr(model_class, "min_input_size", None)
    if minimum is not None and (img_size[0] < minimum[0] or img_size[1] < minimum[1]):
        raise ValueError(
            f"--img-size {img_size[0]} {img_size[1]} is below {model_class.__name__}'s minimum "
            f"{minimum[0]} {minimum[1]} (H W)"
        )


def _local_architecture(model: str) -> str | None:
    """The ``architecture`` in a local model folder's config.json (read with config_check's bounds), else None."""
    folder = Path(model.removeprefix("local-dir:")).expanduser()
    if not (model.startswith("local-dir:") or folder.is_dir()) or not (folder / CONFIG_NAME).is_file():
        return None
    architecture = read_config_file(folder / CONFIG_NAME).get("architecture")
    return architecture if isinstance(architecture, str) else None


def check_model_name(name: str) -> None:
    """Fail fast on a ``--model`` that is neither an architecture timm knows (after ``import hubclf``), nor an
    ``hf-hub:`` / ``local-dir:`` name, nor an existing folder; suggest close timm names.

        check_model_name("resnet18")   # fine; "resnet81" raises ValueError naming resnet18 among the suggestions
    """
    if name.startswith(("hf-hub:", "local-dir:")) or Path(name).is_dir() or timm.is_model(name):
        return
    if "/" in name or os.sep in name:
        raise ValueError(f"--model {name}: no such model folder (a Hub repo is spelled 'hf-hub:{name}')")
    close = difflib.get_close_matches(name.partition(".")[0], timm.list_models(), n=3, cutoff=0.75)
    hint = f"; did you mean {', '.join(close)}?" if close else f" (timm.list_models('*{name[:4]}*') lists names)"
    raise ValueError(
        f"--model {name}: no such architecture in timm {timm.__version__} nor among hubclf's "
        f"({', '.join(timm.list_models('hubclf_*'))}), and no such folder{hint}"
    )


def check_trackers(names: list[str]) -> None:
    """Fail on a ``--log-with`` tracker whose package is missing: Accelerate would silently log nowhere."""
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    available = {str(tracker) for tracker in get_available_trackers()}
    for name in names:
        if name not in LoggerType.list():
            raise ValueError(f"--log-with {name}: unknown tracker; Accelerate knows {LoggerType.list()}")
        if name != "all" and name not in available:
            raise ValueError(f"--log-with {name}: the {name} package is not installed (pip install {name})")
