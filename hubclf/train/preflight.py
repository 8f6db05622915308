"""Checks of a run's settings that need no data, done first by ``train``, ``lr-find`` and ``compare``: a typo then
costs seconds instead of a dataset load and the hardware probes, and a push target the Hub would refuse is found
before the run instead of after it.

``quick_checks`` needs neither torch nor timm (importing them takes seconds, twenty on a busy machine): the command
line runs it before it imports them, so a mistyped folder or output path is reported at once.

    quick_checks(TrainConfig(model="hubclf_alexnet", data="photos/", output_dir="out"))
    preflight_checks(TrainConfig(model="hubclf_alexnet", data="photos/", output_dir="out"))
"""

from __future__ import annotations

import difflib
import os
import warnings
from pathlib import Path

from hubclf.refs import DataSource, ModelRef, check_repo_id
from hubclf.train.config import TrainConfig
from hubclf.train.resume_check import check_resume_settings

HUB_LOOKUP_TIMEOUT_S = 10
_quick_checked: list[TrainConfig | None] = [None]  # the config quick_checks last passed: preflight need not repeat
# What timm's create_scheduler_v2 has taken (it keeps no registry); timm_schedules() keeps those this timm accepts.
SCHEDULE_CANDIDATES = ("cosine", "tanh", "step", "multistep", "plateau", "poly", "constant", "wsd", "rsqrt", "none")


def preflight_checks(config: TrainConfig) -> None:
    """Refuse what the settings alone show to be wrong before any data is read or hardware probed: a typo should
    not cost a dataset load. Used by train, lr-find and compare.

        preflight_checks(TrainConfig(model="hubclf_alexnet", data="photos/", output_dir="out", img_size=(32, 32)))
        # ValueError: --img-size 32 32 is below AlexNet's minimum 63 63 (H W)
    """
    if config is not _quick_checked[0]:  # the command line ran them already, before importing torch
        quick_checks(config)
    on_the_hub = ModelRef.parse(config.model).kind == "hub"
    if not on_the_hub:  # an architecture name or a local folder: checked without the network
        check_img_size(check_model_name(config.model), config.img_size)
    check_optimizer(config.opt)
    check_scheduler(config.sched)
    check_trackers(config.log_with)
    if on_the_hub:  # last: this downloads the repo's config.json
        check_img_size(check_model_name(config.model), config.img_size)


def quick_checks(config: TrainConfig) -> None:
    """The checks that import neither torch nor timm: the output folder, what ``--data`` names, a ``--resume``'s
    settings, the repo to push to. Part of ``preflight_checks``; the command line runs them first.

        quick_checks(TrainConfig(model="hubclf_alexnet", data="photoz", output_dir="out"))   # FileNotFoundError
    """
    check_output_dir(config.output_dir)
    check_data(config)  # a --data that names nothing, or holds images without class folders, fails here
    check_resume_settings(config)  # a --resume that its checkpoint cannot continue under
    if config.push_to_hub:  # a bad id would otherwise surface only after the whole run
        check_repo_id(config.push_to_hub)
    _quick_checked[0] = config


def check_data(config: TrainConfig) -> None:
    """What ``--data`` names, checked without reading the data: a folder of images without class folders (one class,
    which cannot train) is refused; a name that is no local path is a Hub dataset id, looked up only when it can be
    found (not with ``HF_HUB_OFFLINE`` unless it is in the cache), so a mistyped folder fails at once.

        check_data(TrainConfig(model="hubclf_alexnet", data="photoz", output_dir="out"))
        # FileNotFoundError: --data photoz: no such folder here, and ... not a Hub dataset ...
    """
    source = DataSource.parse(config.data, labels=config.labels)
    if source.kind == "folder":
        check_class_folders(source.path, config.data)
    elif source.kind == "hub":
        check_hub_dataset(source.repo_id, source.revision, config.data)


def check_class_folders(path: Path, data: str) -> None:
    """An image folder needs one subfolder per class; images directly in it have none.

        check_class_folders(Path("photos"), "photos/")   # ValueError when photos/*.jpg and no photos/<class>/
    """
    from PIL import Image  # PIL's own list of image suffixes: importing 🤗 datasets' takes seconds

    suffixes = {suffix.lower() for suffix in Image.registered_extensions()}
    entries = [entry for entry in path.iterdir() if not entry.name.startswith((".", "__"))]
    images = [entry.name for entry in entries if entry.is_file() and entry.suffix.lower() in suffixes]
    if images and not any(entry.is_dir() for entry in entries):
        raise ValueError(
            f"--data {data}: the {len(images)} images are directly in the folder, so they have no class: put the "
            f"images in one folder per class ({Path(data) / 'cat' / images[0]}, {Path(data) / 'dog' / '...'}), "
            "or give their labels in a CSV with --labels"
        )


def check_hub_dataset(repo_id: str, revision: str | None, data: str) -> None:
    """A ``--data`` that is no local path and reads as a Hub dataset id must be one: asked once, without retries
    (a mistyped folder otherwise costs a minute of Hub retries when offline); with ``HF_HUB_OFFLINE`` set, it must
    be in the local cache.

        check_hub_dataset("photos", None, "photos")   # FileNotFoundError: --data photos: no such folder here ...
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    here = f"--data {data}: no such folder here"
    if constants.HF_HUB_OFFLINE:
        cached = Path(constants.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}"
        if not cached.is_dir():
            raise FileNotFoundError(
                f"{here}, and HF_HUB_OFFLINE is set, so it is not looked up as a Hub dataset (nor is it cached)"
            )
        return
    try:
        HfApi().dataset_info(repo_id, revision=revision, timeout=HUB_LOOKUP_TIMEOUT_S)
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{here}, nor a Hub dataset (or not one this token can read)") from None
    except HfHubHTTPError:  # the Hub answered (rate limit, gated, server error): the dataset loader says more
        return
    except Exception as e:  # no network, no answer in time (httpx or requests errors): the lookup failed
        raise FileNotFoundError(
            f"{here}, and the Hub cannot be reached to look it up as a dataset ({type(e).__name__}); a local folder "
            f"is spelled ./{data}"
        ) from None


def check_optimizer(name: str) -> None:
    """An ``--opt`` timm does not know fails here, with the closest of its names, not after the data is loaded.

        check_optimizer("adamx")   # ValueError: --opt adamx: not a timm optimizer; did you mean adamw, adam, adamax?
    """
    from timm.optim import list_optimizers

    known = list_optimizers()
    parts = name.lower().split("_")  # timm's own parsing: "lookahead_adamw" is adamw with lookahead
    if parts[-1] in known and (len(parts) == 1 or parts[:-1] == ["lookahead"]):
        return
    raise ValueError(f"--opt {name}: not a timm optimizer{_did_you_mean(parts[-1], known)}")


def check_scheduler(name: str) -> None:
    """An ``--sched`` that timm's ``create_scheduler_v2`` refuses fails here, with the names it takes.

        check_scheduler("cosin")   # ValueError: --sched cosin: not a timm schedule; did you mean cosine?
    """
    if name in timm_schedules():
        return
    raise ValueError(f"--sched {name}: not a timm schedule{_did_you_mean(name, timm_schedules())}")


def timm_schedules() -> list[str]:
    """The ``--sched`` names this timm's ``create_scheduler_v2`` accepts (it keeps no registry: each is tried)."""
    import torch
    from timm.scheduler import create_scheduler_v2

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    accepted = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "plateau is deprecated": for --sched plateau itself, not this probe
        for name in SCHEDULE_CANDIDATES:
            try:
                create_scheduler_v2(optimizer, sched=name, num_epochs=100, updates_per_epoch=10, warmup_epochs=1)
            except ValueError as e:
                if str(e).startswith("Unknown scheduler"):
                    continue  # other errors are about these probe settings, not the name
            accepted.append(name)
    return accepted


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name.lower(), known, n=3, cutoff=0.6)
    if close:
        return f"; did you mean {', '.join(close)}?"
    return f"; timm knows {', '.join(known[:12])}{', ...' if len(known) > 12 else ''}"


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
    from hubclf.hub import fetch_config
    from hubclf.models._base import architecture_class, input_size_problem

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
    import timm

    from hubclf.hub import fetch_config

    ref = ModelRef.parse(name)
    if ref.kind == "folder" and not ref.path.is_dir():
        raise ValueError(f"--model {name}: no such model folder (a Hub repo is spelled 'hf-hub:{name}')")
    if ref.is_saved:
        return fetch_config(ref)["architecture"]
    if timm.is_model(name):
        return name
    base = name.partition(".")[0].lower()
    # hubclf's own first: "alexnet" is hubclf_alexnet (timm has none), "vgg11_slim" hubclf_vgg11_slim.
    own = [m for m in timm.list_models("hubclf_*") if len(base) >= 3 and m.removeprefix("hubclf_").startswith(base)]
    close = own[:3] or difflib.get_close_matches(base, timm.list_models(), n=3, cutoff=0.75)
    hint = (
        f"; did you mean {', '.join(close)}?"
        if close
        else f" (import hubclf, then timm.list_models('*{base[:4]}*') lists the names)"
    )
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
