"""Publish and load fine-tuned hubclf models: ``save_pretrained``, ``push_to_hub``, ``from_pretrained``.

A saved model is a folder (and a Hub repo) with three files, in the layout timm itself uses, so hubclf,
``timm.create_model("hf-hub:...")`` and 🤗 transformers' ``pipeline`` all load it (plus the PNG pictures the card
shows, when there are some: ``confusion_matrix.png`` and ``training_curves.png`` for a trained model):

- ``model.safetensors``: the state dict with bare timm keys, the only weights file (never a pickle);
- ``config.json``: timm's Hub config (architecture, num_classes, label_names, model_args, pretrained_cfg) plus a
  top-level ``hubclf`` block with what the model card shows (dataset, freeze mode, hyperparameters, metrics);
- ``README.md``: the model card, rendered from ``model_cards/hubclf_model_card.md``.

    import hubclf
    hubclf.save_pretrained(model, "out/flowers", label_names=["daisy", "rose"])
    hubclf.push_to_hub("out/flowers", "me/flowers-alexnet", verify=True)
    model = hubclf.from_pretrained("me/flowers-alexnet")
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors.torch
import timm
import torch
import torch.nn as nn
import yaml
from huggingface_hub import (
    CommitOperationAdd,
    HfApi,
    ModelCard,
    hf_hub_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from timm.models import PretrainedCfg
from timm.models._hub import save_config_for_hf

from hubclf._faults import fault_point
from hubclf._version import __version__
from hubclf.atomic import atomic_write_text, staged_dir, strict_json_dumps, to_strict_json
from hubclf.card import render_model_card
from hubclf.config_check import (
    MAX_CLASSES,
    MAX_CONFIG_BYTES,
    ConfigError,
    check_model_cost,
    check_model_files,
    label_name_problems,
    safetensors_header_shapes,
    shape_differences,
)
from hubclf.logs import redact, redacted_logs
from hubclf.models import param_counts
from hubclf.models._base import ConvClassifier
from hubclf.publish import PublishError, commit_to_hub
from hubclf.refs import ModelRef, check_repo_id, is_hub_id
from hubclf.remote_code import REMOTE_CODE_FILES, auto_map_entries, remote_code_files
from hubclf.tensor_file import write_safetensors

__all__ = [
    "save_pretrained", "push_to_hub", "from_pretrained", "update_card", "verify_push", "fetch_config",
    "render_model_card", "PushVerification", "check_saveable",
]  # fmt: skip

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Weight formats that unpickle on load, i.e. can run arbitrary code: never written, never read.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")

# Keys of config.json that hubclf or timm own; `extra_config` may not overwrite them.
RESERVED_CONFIG_KEYS = {
    "architecture", "num_classes", "num_features", "global_pool", "label_names", "label_descriptions",
    "model_args", "pretrained_cfg", "hubclf", "auto_map",
}  # fmt: skip
PRETRAINED_CFG_FIELDS = {f.name for f in dataclasses.fields(PretrainedCfg)}
# Where weights come from, not what they are: meaningless (and machine-specific) once published.
SOURCE_FIELDS = {"url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source"}


# ---- save -----------------------------------------------------------------------------------------------------
def save_pretrained(
    model: nn.Module,
    save_dir: str | os.PathLike,
    *,
    label_names: list[str] | None = None,
    dataset: str | None = None,
    base_model: str | None = None,
    freeze: str | None = None,
    hyperparameters: dict | None = None,
    eval_results: dict | None = None,
    epoch_metrics: list[dict] | None = None,
    extra_config: dict | None = None,
    images: dict[str, bytes] | None = None,
    images_skipped: str | None = None,
    weights_from: str | os.PathLike | None = None,
) -> Path:
    """Write ``model.safetensors``, ``config.json`` and a ``README.md`` model card into ``save_dir``.

    ``eval_results`` holds validation metrics such as ``{"accuracy": 0.91}``; ``freeze`` is ``"none"``,
    ``"backbone"`` or the last frozen module (e.g. ``"features.5"``). ``images`` are PNG pictures by file name
    (``hubclf.plots.model_pictures``), written next to the weights, listed in config.json, shown in the card and
    pushed with the model; ``images_skipped`` says in the card why there are none. ``weights_from``: a safetensors
    file already written from exactly ``model``'s state dict (a checkpoint's ``model.safetensors``, by the same
    writer): hard-linked instead of written again. Returns ``save_dir`` as a ``Path``.

        save_pretrained(model, "out/flowers", label_names=["daisy", "rose"], freeze="backbone",
                        eval_results={"accuracy": 0.91})
    """
    model = _unwrap(model)
    save_dir = Path(save_dir)
    if save_dir.exists() and not save_dir.is_dir():
        raise NotADirectoryError(f"save_dir {save_dir} exists and is not a directory")
    existing = sorted(p.name for p in save_dir.iterdir()) if save_dir.is_dir() else []
    pickles = [name for name in existing if Path(name).suffix in PICKLE_SUFFIXES]
    if pickles:
        raise ValueError(
            f"{save_dir} already holds pickle weights {pickles}; a hubclf model folder has {WEIGHTS_NAME} as its "
            f"only weights file. Save into an empty folder."
        )
    # A model folder: its three files, its pictures (PNG, see ``images``) and, for a hubclf architecture, the
    # remote code transformers loads without hubclf; nothing else would survive the swap.
    model_files = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME, *REMOTE_CODE_FILES)
    others = [name for name in existing if name not in model_files and not name.endswith(".png")]
    if others:
        raise ValueError(
            f"{save_dir} also holds {others[:5]}; save_pretrained replaces the whole folder at once (a crash leaves "
            "the old model or the new one), so save into an empty folder or an existing model folder"
        )
    saved_names = model.pretrained_cfg.get("label_names")
    if label_names is None and saved_names and len(saved_names) == model.num_classes:
        label_names = saved_names  # a loaded model keeps its labels when saved again
    label_names = _check_label_names(label_names, model.num_classes)
    trainable, total = param_counts(model)
    metadata = {
        "version": __version__,
        "dataset": dataset,
        "base_model": base_model,
        "freeze": freeze,
        "trainable_params": trainable,
        "total_params": total,
        "hyperparameters": hyperparameters or {},
        "eval_results": eval_results or {},
        "epoch_metrics": epoch_metrics or [],
        "images": _check_images(images or {}),
        "images_skipped": images_skipped,
    }
    metadata = to_strict_json(metadata)  # a diverged run's NaN/inf metrics are stored as null
    _check_json("hyperparameters/eval_results/epoch_metrics", metadata)
    extra_config = _checked_extra_config(extra_config)
    # Remote code (hubclf.remote_code): config.json's auto_map points transformers at modeling_hubclf.py.
    extra_config.update(auto_map_entries(model.pretrained_cfg.get("architecture", "")))

    state_dict = model.state_dict()  # write_safetensors copies one tensor at a time to the CPU, as it writes
    # The files go into a temporary sibling folder that replaces save_dir whole, once all are on disk.
    with staged_dir(save_dir) as tmp:
        # transformers refuses safetensors files without format metadata.
        if weights_from is not None:
            _link_or_copy(Path(weights_from), tmp / WEIGHTS_NAME)
        else:
            write_safetensors(tmp / WEIGHTS_NAME, state_dict, {"format": "pt"})
        fault_point("save_pretrained.after_weights")
        for name, png in (images or {}).items():
            (tmp / name).write_bytes(png)
        config = _write_config(model, tmp / CONFIG_NAME, label_names, metadata, extra_config, where=save_dir)
        for name, text in remote_code_files(config).items():  # remote code: modeling_hubclf.py
            atomic_write_text(tmp / name, text)
        fault_point("save_pretrained.after_config")
        render_model_card(config, str(save_dir.resolve())).save(tmp / CARD_NAME)
        fault_point("save_pretrained.after_card")
    logger.info("saved %s (%d classes) to %s", config["architecture"], config["num_classes"], save_dir)
    return save_dir


def update_card(
    save_dir: str | os.PathLike,
    *,
    from_dir: str | os.PathLike | None = None,
    epoch_metrics: list[dict] | None = None,
    images: dict[str, bytes] | None = None,
    images_skipped: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
    base_model: str | None = None,
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Rewrite the record of a saved model folder (config.json's ``hubclf`` block, its extra keys, and the card);
    the weights file is kept as it is, never read into memory. With ``from_dir``, ``save_dir`` becomes a copy of that
    model folder with the changes, as one atomic replacement.

    What is left at None keeps its saved value; ``hyperparameters`` are merged into the saved ones; ``images``
    replaces the pictures (``images_skipped`` then says why there are none). This is how a run's ``best/`` gets the
    whole run's table at the end, and how ``--strategy auto`` and ``compare`` add their "Why this strategy" section
    (``extra_config={"strategy": ...}``), without a second copy of the model in memory. The folder is replaced
    whole, as ``save_pretrained`` replaces it. Returns ``save_dir`` as a ``Path``.

        update_card("out/best", epoch_metrics=[{"epoch": 1, "val_top1": 0.9}], images={})
    """
    save_dir = Path(save_dir)
    source = Path(from_dir) if from_dir is not None else save_dir
    config = _read_config(source / CONFIG_NAME)
    metadata = dict(config.get("hubclf", {}))
    if epoch_metrics is not None:
        metadata["epoch_metrics"] = epoch_metrics
    if images is not None:
        metadata.update(images=_check_images(images), images_skipped=images_skipped)
    if hyperparameters:
        metadata["hyperparameters"] = {**metadata.get("hyperparameters", {}), **hyperparameters}
    if base_model is not None:
        metadata["base_model"] = base_model
    metadata = to_strict_json(metadata)
    _check_json("the card's record", metadata)
    config.update(_checked_extra_config(extra_config), hubclf=metadata)
    config.update(auto_map_entries(config["architecture"]))  # remote code: a folder saved before it gets it too
    kept_images = [] if images is not None else list(metadata.get("images") or [])
    with staged_dir(save_dir) as tmp:
        # Second names for the same files: the old folder keeps its own until the swap, so a kill loses nothing.
        for name in (WEIGHTS_NAME, *kept_images):
            _link_or_copy(source / name, tmp / name)
        for name, png in (images or {}).items():
            (tmp / name).write_bytes(png)
        for name, text in remote_code_files(config).items():  # remote code: written anew, never copied
            atomic_write_text(tmp / name, text)
        atomic_write_text(tmp / CONFIG_NAME, _config_text(config, save_dir))
        fault_point("update_card.after_config")
        render_model_card(config, str(save_dir.resolve())).save(tmp / CARD_NAME)
    return save_dir


def _write_config(
    model: nn.Module, path: Path, label_names: list[str] | None, metadata: dict, extra_config: dict, where: Path
) -> dict[str, Any]:
    """timm's own config export, then the two fixes that keep the file loadable everywhere. ``path`` is inside the
    folder that ``save_pretrained`` stages, so rewriting it in place is safe."""
    model_config: dict[str, Any] = {"hubclf": metadata, **extra_config}
    if label_names:
        model_config["label_names"] = label_names
    input_size = tuple(model.pretrained_cfg["input_size"])
    # hubclf's architectures take `img_size` (it only sets the input size), so it is recorded for them. Other timm
    # architectures keep what timm recorded: ResNet or ConvNeXt take no `img_size` (timm, transformers and hubclf
    # would fail on it), their input size lives in pretrained_cfg.input_size only, and a ViT's is in its args.
    model_args = {}
    if isinstance(model, ConvClassifier) and "img_size" not in getattr(model, "_model_args", {}):
        model_args["img_size"] = list(input_size[1:])
    save_config_for_hf(model, path, model_config=model_config, model_args=model_args)

    config = json.loads(path.read_text(encoding="utf-8"))
    # timm records every factory kwarg, num_classes included, but transformers' TimmWrapper passes
    # num_classes itself and fails with "got multiple values for keyword argument 'num_classes'".
    config.get("model_args", {}).pop("num_classes", None)
    pretrained_cfg = config["pretrained_cfg"]
    # Only PretrainedCfg fields, or timm's PretrainedCfg(**cfg) rejects the file; label names live at the top level
    # (timm copies them back into pretrained_cfg when loading).
    for key in list(pretrained_cfg):
        if key not in PRETRAINED_CFG_FIELDS or key in SOURCE_FIELDS or key in ("label_names", "label_descriptions"):
            del pretrained_cfg[key]
    if list(pretrained_cfg["input_size"]) != list(input_size):
        raise RuntimeError(f"timm exported input_size {pretrained_cfg['input_size']}, the model says {input_size}")
    config = to_strict_json(config)
    atomic_write_text(path, _config_text(config, where))
    return config


def _config_text(config: dict[str, Any], where: Path) -> str:
    """config.json's text; refused when from_pretrained would refuse to read it (over ``MAX_CONFIG_BYTES``): a saved
    folder always loads back."""
    text = strict_json_dumps(config, indent=2) + "\n"
    size = len(text.encode("utf-8"))
    if size > MAX_CONFIG_BYTES:
        raise ValueError(
            f"the config.json for {where} would be {size:,} bytes, over the {MAX_CONFIG_BYTES:,} a model's config may "
            f"have to load (label names take {_label_names_bytes(config.get('label_names') or []):,}): shorten the "
            "class names or use fewer classes"
        )
    return text


# Room in config.json for everything but the label names and the per-epoch table: architecture, pretrained_cfg,
# model_args, the card's hyperparameters and recipe decisions, a strategy section. A few KB in practice.
CONFIG_RESERVE_BYTES = 64 << 10
# One epoch's row of the card's table (CARD_COLUMNS: 8 numbers and a stage name) as config.json holds it, at most.
EPOCH_ROW_BYTES = 400


def _label_names_bytes(label_names: list[str]) -> int:
    """What ``label_names`` take in config.json (indented, ASCII-escaped as written)."""
    return len(strict_json_dumps({"label_names": list(label_names)}, indent=2)) - len('{\n  "label_names": \n}')


def check_saveable(label_names: list[str], *, epochs: int = 1) -> None:
    """Refuse, before training, classes whose model would save but never load back: the limits ``from_pretrained``
    enforces (at most ``MAX_CLASSES`` classes, label names as ``label_name_problems`` says, a config.json of at most
    ``MAX_CONFIG_BYTES``, here with room for ``epochs`` rows of the card's table and the rest). One ``ValueError``.

        check_saveable([f"{i:05d}" + "x" * 215 for i in range(5000)])   # ValueError: ... take 1,140,004 bytes ...
    """
    if len(label_names) > MAX_CLASSES:
        raise ValueError(
            f"{len(label_names):,} classes: a saved model may have at most {MAX_CLASSES:,} (from_pretrained refuses "
            "more), so this run's model would not load back"
        )
    problems = label_name_problems(label_names, len(label_names))
    if problems:
        raise ValueError("class names " + "; ".join(problems))
    names = _label_names_bytes(label_names)
    needed = names + epochs * EPOCH_ROW_BYTES + CONFIG_RESERVE_BYTES
    if needed > MAX_CONFIG_BYTES:
        raise ValueError(
            f"the {len(label_names):,} class names take {names:,} bytes of config.json, which with the rest of the "
            f"model's record ({needed - names:,} bytes for {epochs} epoch(s)) is over the {MAX_CONFIG_BYTES:,} bytes "
            "from_pretrained reads: the model would save but never load back. Shorten the class names or use fewer "
            "classes"
        )


def _link_or_copy(source: Path, target: Path) -> None:
    """A second name for ``source`` (a hard link), or a copy on a file system without hard links; never loaded."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


# ---- push -----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PushVerification:
    """What ``verify_push`` measured: the pushed revision's logits against the local model's on a fixed input."""

    repo_id: str
    revision: str
    max_abs_diff: float
    tolerance: float
    input_shape: tuple[int, ...]

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def __str__(self) -> str:
        verdict = "verified" if self.ok else "MISMATCH"
        return (
            f"{verdict}: {self.repo_id}@{self.revision[:12]} reloads with max |Δlogit| {self.max_abs_diff:.3g} "
            f"(tolerance {self.tolerance:g}) on a fixed {tuple(self.input_shape)} input"
        )


def push_to_hub(
    model_or_dir: nn.Module | str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    token: str | None = None,
    verify: bool = False,
    **save_kwargs: Any,
) -> str:
    """Check the model folder, create ``repo_id`` if needed and upload the model in one commit; return the commit URL.

    ``model_or_dir`` is a model (saved first, with ``save_kwargs`` going to ``save_pretrained``) or a folder written
    by ``save_pretrained``. Before any request, the folder is checked completely: ``config.json`` valid, the weights
    loading strictly into the architecture it names, ``README.md`` a parseable model card. The card is re-rendered for
    ``repo_id``. ``private=True`` creates a private repo and refuses an existing public one; ``None`` keeps an
    existing repo's visibility (new repos are public). Transient Hub errors are retried; when the push fails, the repo
    or branch it created is deleted again (see ``hubclf.publish``). ``token`` defaults to ``HF_TOKEN`` or the
    ``hf auth login`` cache; ``HF_ENDPOINT`` picks the server. ``verify=True`` re-downloads the pushed commit and
    compares its logits with the local model's (``RuntimeError`` if they differ). Tokens and signed URLs are
    redacted from every log line written meanwhile.

        url = push_to_hub("out/flowers", "me/flowers-alexnet", private=True, verify=True)
    """
    check_repo_id(repo_id)
    with redacted_logs():
        return _push(
            model_or_dir, repo_id, private=private, revision=revision, create_pr=create_pr,
            commit_message=commit_message, token=token, verify=verify, save_kwargs=save_kwargs,
        )  # fmt: skip


def _push(
    model_or_dir: nn.Module | str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None,
    revision: str | None,
    create_pr: bool,
    commit_message: str | None,
    token: str | None,
    verify: bool,
    save_kwargs: dict[str, Any],
) -> str:
    with tempfile.TemporaryDirectory(prefix="hubclf-push-") as staging:
        if isinstance(model_or_dir, nn.Module):
            model = _unwrap(model_or_dir)
            folder = save_pretrained(model, staging, **save_kwargs)
        else:
            if save_kwargs:
                raise TypeError(f"{sorted(save_kwargs)} only apply when pushing a model, not the folder {model_or_dir}")
            model, folder = None, Path(model_or_dir)
        # Everything that can be checked locally is, before the first request: a bad folder creates nothing.
        reloaded = _check_folder_for_push(folder)
        config = _read_config(folder / CONFIG_NAME)
        card = str(render_model_card(config, repo_id)).encode("utf-8")
        images = config.get("hubclf", {}).get("images") or []
        # Remote code: generated by this hubclf, never the folder's copy (nobody checked it); only where config.json
        # has the auto_map that points transformers at it (re-save or update_card a folder saved without one).
        remote_code = {name: text.encode("utf-8") for name, text in remote_code_files(config).items()}
        remote_code = remote_code if "auto_map" in config else {}

        def operations() -> list[CommitOperationAdd]:  # fresh for every attempt: an operation is single-use
            return [
                CommitOperationAdd(path_in_repo=CONFIG_NAME, path_or_fileobj=str(folder / CONFIG_NAME)),
                CommitOperationAdd(path_in_repo=WEIGHTS_NAME, path_or_fileobj=str(folder / WEIGHTS_NAME)),
                CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=card),
                *(CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in images),
                *(CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in remote_code.items()),
            ]

        message = commit_message or f"Upload {config['architecture']} ({config['num_classes']} classes) with hubclf"
        api = HfApi(token=token, library_name="hubclf", library_version=__version__)
        try:
            commit = commit_to_hub(
                api, repo_id, operations, commit_message=message, private=private, revision=revision,
                create_pr=create_pr,
            )  # fmt: skip
        except PublishError as e:
            kept = "" if model is not None else f" (the local save in {folder} is unchanged)"
            raise RuntimeError(f"push to {repo_id} failed{kept}: {e}") from e
    logger.info("pushed %s to %s", config["architecture"], commit.commit_url)

    if verify:
        try:
            result = verify_push(model if model is not None else reloaded, repo_id, commit.oid, token=token)
        except HfHubHTTPError as e:
            raise RuntimeError(
                f"pushed {commit.commit_url}, but downloading it back to verify failed: {redact(str(e))}"
            ) from e
        if not result.ok:
            raise RuntimeError(f"{result}; the commit {commit.commit_url} is on the Hub but does not match the model")
        logger.info("%s", result)
    return commit.commit_url


def _check_folder_for_push(folder: Path) -> nn.Module:
    """Everything a push can check without the network; returns the model as loaded from ``folder``.

    The three files must be there, ``config.json`` valid, ``model.safetensors`` must load strictly into the
    architecture config.json describes, ``README.md`` must parse as a model card, and every picture config.json
    lists (the card links to them) must be a PNG in the folder.
    """
    _check_model_folder(folder)
    card_path = folder / CARD_NAME
    if not card_path.is_file():
        raise FileNotFoundError(f"{folder} has no {CARD_NAME} (model card); write it with hubclf.save_pretrained()")
    try:
        ModelCard.load(card_path)
    except (ValueError, yaml.YAMLError) as e:
        raise ValueError(f"{card_path} is not a model card huggingface_hub can parse: {e}") from e
    images = _read_config(folder / CONFIG_NAME).get("hubclf", {}).get("images") or []
    if not isinstance(images, list) or not all(isinstance(name, str) for name in images):
        raise ValueError(f"{folder / CONFIG_NAME}: hubclf.images must be a list of file names, got {images!r:.200}")
    for name in images:
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} has no {name}, which config.json lists and the model card shows")
        _check_images({name: (folder / name).read_bytes()[: len(PNG_SIGNATURE)]}, where=str(folder / name))
    return from_pretrained(folder)


def verify_push(
    model: nn.Module, repo_id: str, revision: str, *, token: str | None = None, tolerance: float = 1e-4
) -> PushVerification:
    """Download ``repo_id@revision`` into a fresh cache, load it and compare logits with ``model`` on a fixed input.

    print(verify_push(model, "me/flowers-alexnet", commit_sha))
    """
    model = _unwrap(model)
    with tempfile.TemporaryDirectory(prefix="hubclf-verify-") as cache_dir:
        reloaded = from_pretrained(repo_id, revision=revision, cache_dir=cache_dir, token=token)
    input_shape = (2, *reloaded.pretrained_cfg["input_size"])
    inputs = torch.randn(input_shape, generator=torch.Generator().manual_seed(0))
    was_training = model.training
    try:
        with torch.inference_mode():
            device = next(model.parameters()).device
            expected = model.eval()(inputs.to(device)).float().cpu()
            actual = reloaded.eval()(inputs).float()
    finally:
        model.train(was_training)
    if expected.shape != actual.shape:
        raise RuntimeError(
            f"pushed model gives logits of shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
        )
    max_abs_diff = (expected - actual).abs().max().item()
    # Scale the tolerance with the logits so large-magnitude outputs are not judged on float32 rounding alone.
    scale = max(1.0, expected.abs().max().item())
    return PushVerification(repo_id, revision, max_abs_diff, tolerance * scale, input_shape)


# ---- load -----------------------------------------------------------------------------------------------------
def from_pretrained(
    repo_id_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    num_classes: int | None = None,
    max_param_bytes: int | None = None,
    **overrides: Any,
) -> nn.Module:
    """Load a hubclf model from a Hub repo id, a local folder, or an ``hf-hub:`` / ``local-dir:`` name.

    Label names come back as ``model.label_names`` and ``model.pretrained_cfg["label_names"]``, the input size as
    ``model.pretrained_cfg["input_size"]``. ``num_classes=N`` (if it differs from the saved count) puts a new
    N-class classifier on the loaded backbone. ``cache_dir`` and ``token`` steer the download; other ``overrides``
    go to ``timm.create_model`` (e.g. ``drop_rate=0.2``).

    Nothing is built before it is checked: ``config.json`` and the ``model.safetensors`` header
    (``hubclf.config_check``), then the architecture is instantiated on the meta device, which allocates nothing,
    and its parameter bytes must fit ``max_param_bytes`` (default: ``HUBCLF_MAX_PARAM_BYTES``, else 2 GiB) and its
    tensors must be exactly those of the file. From the Hub, the weights are downloaded only once the budget holds.

        model = from_pretrained("me/flowers-alexnet", revision="v1", num_classes=5)
    """
    cache_dir, token = overrides.pop("cache_dir", None), overrides.pop("token", None)
    folder, hub_id, fetch_weights = _locate(repo_id_or_path, revision, cache_dir=cache_dir, token=token)
    source = hub_id or str(folder)
    config = _read_config(folder / CONFIG_NAME, source)
    _check_architecture(config["architecture"], source)

    # timm parses config.json (model_args, pretrained_cfg, label names) exactly as for its own "local-dir:" models;
    # the weights are loaded below, strictly, instead of through timm's head-dropping pretrained path.
    def build() -> nn.Module:
        return timm.create_model(f"local-dir:{folder}", pretrained=False, num_classes=config["num_classes"],
                                 **overrides)  # fmt: skip

    try:
        with torch.device("meta"):  # shapes and sizes only: no memory, no initialisation
            skeleton = build()
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as e:  # every timm family builds there
        if isinstance(e, TypeError) and any(f"'{key}'" in str(e) for key in overrides):
            raise  # an argument of the caller's own (train's img_size for a ResNet), not the config: theirs to handle
        raise ConfigError(
            f"{source}/{CONFIG_NAME}: {config['architecture']} cannot be built on the meta device to check its size "
            f"before memory is allocated ({type(e).__name__}: {e})"
        ) from e
    check_model_cost(skeleton, None, source, budget=max_param_bytes)  # before the weights are downloaded
    weights = fetch_weights()
    header = safetensors_header_shapes(weights, name=f"{source}/{WEIGHTS_NAME}")
    check_model_files(folder / CONFIG_NAME, weights, source)  # the config against the header it now has
    check_model_cost(skeleton, header, source, budget=max_param_bytes)
    del skeleton
    model = build()
    _load_strict(model, safetensors.torch.load_file(weights), source)

    pretrained_cfg = {k: v for k, v in model.pretrained_cfg.items() if k not in ("file", "source")}
    if hub_id:
        pretrained_cfg.update(hf_hub_id=hub_id if revision is None else f"{hub_id}@{revision}", source="hf-hub")
    label_names = config.get("label_names")
    if num_classes is not None and num_classes != model.num_classes:
        model.reset_classifier(num_classes)
        label_names = None  # the new classifier's classes have no names yet
        pretrained_cfg["num_classes"] = num_classes
    pretrained_cfg.pop("label_names", None)
    if label_names:
        pretrained_cfg["label_names"] = list(label_names)
    model.pretrained_cfg = model.default_cfg = pretrained_cfg
    model.label_names = list(label_names) if label_names else None
    return model


def _locate(
    name: str | os.PathLike, revision: str | None, *, cache_dir: str | None, token: str | None
) -> tuple[Path, str | None, Callable[[], Path]]:
    """The folder holding a checked config.json (downloaded first for a Hub id), the Hub id, and how to get
    ``model.safetensors`` (for a Hub id: a download, which ``from_pretrained`` starts once the config passed)."""
    ref = ModelRef.parse(name, revision=revision)
    if ref.kind == "architecture":
        raise FileNotFoundError(
            f"{ref.text!r} is neither a folder nor a Hub repo id (owner/name); an architecture name is created with "
            "timm.create_model, or trained with hubclf train"
        )
    if ref.kind == "folder":
        if not ref.path.exists() and is_hub_id(ref.text):
            hint = f"for the Hub repo, write hf-hub:{ref.text}"
            raise FileNotFoundError(f"model folder {ref.text} does not exist ({hint})")
        _check_model_folder(ref.path)
        return ref.path, None, lambda: ref.path / WEIGHTS_NAME

    hub_id, revision = ref.repo_id, ref.revision
    download = dict(revision=revision, cache_dir=cache_dir, token=token, library_name="hubclf",
                    library_version=__version__)  # fmt: skip
    config_file = _download_config(hub_id, download)

    def fetch_weights() -> Path:
        try:
            return Path(hf_hub_download(hub_id, WEIGHTS_NAME, **download))
        except EntryNotFoundError as e:
            raise _no_safetensors_error(hub_id, _pickle_files_on_hub(hub_id, revision, token)) from e

    # Both files sit in the same snapshot folder of the cache.
    return Path(config_file).parent, hub_id, fetch_weights


def fetch_config(name: str | os.PathLike | ModelRef, *, token: str | None = None) -> dict[str, Any]:
    """The checked ``config.json`` of a saved model (a Hub repo: downloaded alone, before any weights; a folder:
    read), for checks that need the architecture or input size before anything is built.

        fetch_config("me/flowers-alexnet")["architecture"]   # "hubclf_alexnet"
    """
    ref = name if isinstance(name, ModelRef) else ModelRef.parse(name)
    if ref.kind == "folder":
        if not (ref.path / CONFIG_NAME).is_file():
            _check_model_folder(ref.path)  # says what the folder is instead (missing, a run's output folder...)
        return _read_config(ref.path / CONFIG_NAME, str(ref.path))
    if ref.kind != "hub":
        raise ValueError(f"{ref.text} is an architecture name, not a saved model")
    download = dict(revision=ref.revision, token=token, library_name="hubclf", library_version=__version__)
    return check_model_files(_download_config(ref.repo_id, download), None, ref.repo_id)


def _download_config(hub_id: str, download: dict[str, Any]) -> Path:
    """``config.json`` of a Hub repo, downloaded and checked (a hostile one is refused before the weights are
    downloaded); every way the download fails is one clear ``FileNotFoundError``."""
    revision = download.get("revision")
    try:
        config_file = Path(hf_hub_download(hub_id, CONFIG_NAME, **download))
    except RevisionNotFoundError as e:
        raise FileNotFoundError(f"Hub repo {hub_id} has no revision {revision!r}") from e
    except RepositoryNotFoundError as e:  # also what the Hub answers for a private repo without a token
        raise FileNotFoundError(
            f"no Hub repo {hub_id} (or it is private: set HF_TOKEN), and no local folder {hub_id}"
        ) from e
    except LocalEntryNotFoundError as e:
        raise FileNotFoundError(
            f"{hub_id}/{CONFIG_NAME} is not in the Hub cache and the Hub cannot be reached (no local folder {hub_id})"
        ) from e
    except EntryNotFoundError as e:
        raise FileNotFoundError(f"{hub_id} has no {CONFIG_NAME}, so it is not a hubclf/timm model repo") from e
    check_model_files(config_file, None, hub_id)
    return config_file


def _check_model_folder(folder: Path) -> None:
    if not folder.is_dir():
        what = "is a file, not a model folder" if folder.exists() else "does not exist"
        raise FileNotFoundError(f"model folder {folder} {what}")
    if not (folder / CONFIG_NAME).is_file():
        # `hubclf train`'s output folder holds the models in best/ and final/: the likeliest folder one level too high.
        models = sorted(sub.name for sub in folder.iterdir() if (sub / CONFIG_NAME).is_file())
        if models:
            raise FileNotFoundError(
                f"{folder} has no {CONFIG_NAME}, but its subfolder(s) {', '.join(f'{m}/' for m in models[:5])} do: "
                f"give one of them, e.g. {folder / models[0]}"
            )
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}; write the folder with hubclf.save_pretrained()")
    if not (folder / WEIGHTS_NAME).is_file():
        raise _no_safetensors_error(
            str(folder), sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        )


def _no_safetensors_error(source: str, pickles: list[str]) -> ValueError:
    found = f" (it has only the pickle file(s) {pickles})" if pickles else ""
    return ValueError(
        f"{source} has no {WEIGHTS_NAME}{found}. hubclf loads weights only from safetensors, because unpickling a "
        f".bin/.pth file can run arbitrary code. Load it once in a trusted environment and re-save it with "
        f"hubclf.save_pretrained(), or convert a torchvision checkpoint with `hubclf convert`."
    )


def _pickle_files_on_hub(repo_id: str, revision: str | None, token: str | None) -> list[str]:
    """Best effort, for the error message only: which pickle weights the repo does have."""
    try:
        files = HfApi(token=token).list_repo_files(repo_id, revision=revision)
    except (HfHubHTTPError, OSError) as e:
        logger.debug("could not list %s: %s", repo_id, e)
        return []
    return sorted(f for f in files if f.endswith(PICKLE_SUFFIXES))


def _read_config(path: Path, source: str | None = None) -> dict[str, Any]:
    """Read and validate config.json against the model.safetensors header next to it, before anything is built.

    ``source`` (a folder or Hub repo id) names the file in errors; every check is in ``hubclf.config_check``.
    """
    weights = path.parent / WEIGHTS_NAME
    return check_model_files(path, weights if weights.is_file() else None, source or str(path.parent))


def _check_architecture(architecture: str, source: str) -> None:
    """Any architecture timm knows loads (hubclf's own once ``import hubclf`` has registered them, which loading
    through hubclf always has); an unknown name gets an error that says why it may be unknown."""
    if timm.is_model(architecture):
        return
    hubclf_models = timm.list_models("hubclf_*")
    if architecture.startswith("hubclf_"):
        why = (
            f"it is not one of the architectures this hubclf ({__version__}) registers with timm on "
            f"`import hubclf` ({hubclf_models}): the model needs a newer hubclf"
        )
    else:
        why = (
            f"timm {timm.__version__} does not know it, and neither does `import hubclf` (which registers "
            f"{hubclf_models}): it needs a newer timm, or the package that registers it imported first"
        )
    raise ValueError(f"{source} names the architecture {architecture!r}, which is not registered with timm: {why}")


def _load_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with one error listing every missing, unexpected and mis-shaped tensor."""
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    parts = shape_differences(expected, {name: tuple(tensor.shape) for name, tensor in state_dict.items()})
    if parts:
        raise RuntimeError(
            f"{WEIGHTS_NAME} from {source} does not fit {type(model).__name__} as configured in {CONFIG_NAME} "
            f"(nothing was loaded): " + "; ".join(parts)
        )
    model.load_state_dict(state_dict, strict=True)


# ---- small helpers ------------------------------------------------------------------------------------------------
def _unwrap(model: nn.Module) -> nn.Module:
    """The bare timm model inside DDP / DataParallel / FSDP / torch.compile wrappers, so keys stay bare timm keys."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    from accelerate.utils import extract_model_from_parallel  # accelerate only where a wrapper may need peeling

    model = extract_model_from_parallel(model, keep_torch_compile=False)
    if not hasattr(model, "pretrained_cfg") or not hasattr(model, "num_classes"):
        raise TypeError(f"{type(model).__name__} is not a timm model (no pretrained_cfg / num_classes)")
    return model


def _check_label_names(label_names: list[str] | None, num_classes: int) -> list[str] | None:
    """The rules from_pretrained applies to a loaded config, so a saved folder always loads back."""
    if label_names is None:
        if num_classes:
            logger.warning("no label_names given: the model card and pipelines will show class indices")
        return None
    label_names = list(label_names)
    problems = label_name_problems(label_names, num_classes)
    if problems:
        raise ValueError("label_names: " + "; ".join(problems))
    return label_names


def _check_images(images: dict[str, bytes], where: str = "images") -> list[str]:
    """Pictures are PNGs with plain file names that are not one of the model's own files; returns the names."""
    for name, png in images.items():
        if Path(name).name != name or not name.endswith(".png") or name in (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME):
            raise ValueError(f"{where}: picture names are plain .png file names, got {name!r}")
        if not isinstance(png, bytes) or not png.startswith(PNG_SIGNATURE):
            raise ValueError(f"{where}: {name!r} is not PNG data")
    return sorted(images)


def _checked_extra_config(extra_config: dict | None) -> dict:
    """A copy of ``extra_config`` that sets none of the keys hubclf and timm own and holds only JSON."""
    extra_config = dict(extra_config or {})
    clashes = sorted(RESERVED_CONFIG_KEYS & set(extra_config))
    if clashes:
        raise ValueError(f"extra_config may not set {clashes}: hubclf writes those keys itself")
    _check_json("extra_config", extra_config)
    return extra_config


def _check_json(what: str, value: Any) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be JSON-serialisable plain numbers/strings/lists/dicts: {e}") from e
