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

from hubclf.hub import fetch_config
from hubclf.models._base import architecture_class, input_size_problem
from hubclf.refs import DataSource, ModelRef, check_repo_id
from hubclf.train.config import TrainConfig


def preflight_checks(config: TrainConfig) -> None:
    """Refuse what the settings alone show to be wrong before any data is read or hardware probed: a typo should
    not cost a dataset load. Used by train, lr-find and compare.

        preflight_checks(TrainConfig(model="hubclf_alexnet", data="photos/", output_dir="out", img_size=(32, 32)))
        # ValueError: --img-size 32 32 is below AlexNet's minimum 63 63 (H W)
    """
    on_the_hub = ModelRef.parse(config.model).kind == "hub"
    if not on_the_hub:  # an architecture name or a local folder: checked without the network
        check_img_size(check_model_name(config.model), config.img_size)
    DataSource.parse(config.data, labels=config.labels)  # a --data that names nothing fails here
    check_output_dir(config.output_dir)
    check_trackers(config.log_with)
    if config.push_to_hub:  # a bad id would otherwise surface only after the whole run
        check_repo_id(config.push_to_hub)
    if on_the_hub:  # last: this downloads the repo's config.json
        check_img_size(check_model_name(config.model), config.img_size)


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
    for VGG) fails on the first batch; refuse it up front instead. ``model`` is an architecture name or a saved model
    (checked through its config.json's architecture; for a Hub repo, that file alone is downloaded).

        check_img_size("hubclf_alexnet", (32, 32))   # ValueError: --img-size 32 32 is below AlexNet's minimum 63 63
    """
    if img_size is None:
        return
    ref = ModelRef.parse(model)
    architecture = fetch_config(ref).get("architecture") if ref.is_saved else model
    problem = input_size_problem(architecture_class(architecture), *img_size, what="--img-size", cli=True)
    if problem:
        raise ValueError(problem)


def check_model_name(name: str) -> str:
    """Fail fast on a ``--model`` that names nothing: an architecture timm does not know (after ``import hubclf``,
    with close names suggested), a missing folder, or a Hub repo that does not exist (its config.json alone is
    downloaded and checked). Returns the architecture (a saved model's from its config.json).

        check_model_name("resnet18")   # "resnet18"; "resnet81" raises ValueError naming resnet18 among the suggestions
    """
    ref = ModelRef.parse(name)
    if ref.kind == "folder" and not ref.path.is_dir():
        raise ValueError(f"--model {name}: no such model folder (a Hub repo is spelled 'hf-hub:{name}')")
    if ref.is_saved:
        return fetch_config(ref)["architecture"]
    if timm.is_model(name):
        return name
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
