"""What ``--model`` and ``--data`` name, decided once: every command parses them here, so they mean the same
thing everywhere (a bare ``owner/name`` is a Hub repo to ``train`` as it is to ``predict``).

    ModelRef.parse("hubclf_alexnet").kind          # "architecture"
    ModelRef.parse("me/flowers-alexnet").kind      # "hub"
    ModelRef.parse("out/best").kind                # "folder"
    DataSource.parse("photos/").kind               # "folder" (an image folder, or a save_to_disk folder)
    DataSource.parse("user/flowers@v2").revision   # "v2"
    DataSource.parse("wds:shards/train-{000..009}.tar").kind   # "webdataset" (streamed, shard by shard)
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

HF_HUB_PREFIX, LOCAL_DIR_PREFIX = "hf-hub:", "local-dir:"  # timm's spellings
WDS_PREFIX, PARQUET_PREFIX = "wds:", "parquet:"
STREAM_KINDS = ("webdataset", "parquet", "hub-stream")  # read shard by shard (hubclf.data.streaming)
_SHARD_SUFFIXES = {".tar": "webdataset", ".parquet": "parquet"}
CONFIG_NAME = "config.json"
SAVED_DATASET_MARKERS = ("dataset_dict.json", "state.json")  # what datasets.save_to_disk writes


def is_hub_id(name: str) -> bool:
    """``owner/name`` that huggingface_hub's rules accept, and no local path of that name.

        is_hub_id("me/flowers")   # True; "me//flowers", "photos/" and an existing folder "out/best" are False
    """
    if name.count("/") != 1 or os.path.exists(name):
        return False
    return is_valid_repo_id(name)


def is_valid_repo_id(repo_id: str) -> bool:
    """Whether huggingface_hub's own rules accept ``repo_id`` (``name`` or ``owner/name``)."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return False
    return True


def check_repo_id(repo_id: str) -> None:
    """Refuse, before any work, a repo id the Hub would refuse at push time (huggingface_hub's own rules).

        check_repo_id("me/flowers-alexnet")   # fine; "me//flowers" raises ValueError
    """
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        reason = str(e).replace(" Use `repo_type` argument if needed.", "")
        raise ValueError(f"{repo_id!r} is not a Hub repo id: {reason}") from None


def looks_like_a_path(name: str) -> bool:
    """A name that can only mean a local folder: never looked up on the Hub, even when the folder is missing.

    Hub ids are ``owner/name``; ``./x``, ``../x``, ``/x``, ``~/x``, ``x/``, ``a/b/c``, a backslash, or ``owner/name``
    whose ``owner`` is a local folder (``out/best`` next to ``out/``) are paths.

        looks_like_a_path("out/best")   # True when out/ exists; looks_like_a_path("me/model") is False otherwise
    """
    parts = name.replace("\\", "/").split("/")
    return (
        name.startswith(("/", "./", "../", "~", "."))
        or name.endswith(("/", "\\"))
        or "\\" in name
        or len(parts) >= 3
        or (len(parts) == 2 and Path(parts[0]).is_dir())
    )


def split_revision(text: str) -> tuple[str, str | None]:
    """``"user/name@v2"`` -> ``("user/name", "v2")``: the Hub id and the branch, tag or commit after ``@``.

        split_revision("user/flowers")   # ("user/flowers", None)
    """
    repo_id, at, revision = text.partition("@")
    if at and not revision:
        raise ValueError(f"{text}: nothing after '@'; write user/name@BRANCH_TAG_OR_COMMIT")
    return repo_id, revision or None


@dataclass(frozen=True)
class ModelRef:
    """What a ``--model`` (or a command's ``MODEL`` argument) names.

    ``kind`` is ``"architecture"`` (a timm or hubclf architecture name, maybe with a pretrained tag:
    ``resnet18.a1_in1k``), ``"hub"`` (a saved model on the Hub: ``owner/name``, ``hf-hub:owner/name[@revision]``) or
    ``"folder"`` (a saved model folder: an existing path, ``local-dir:PATH``, or anything spelled like a path).

        ref = ModelRef.parse("hf-hub:me/flowers@v1")   # ModelRef(kind="hub", repo_id="me/flowers", revision="v1")
    """

    text: str
    kind: str
    repo_id: str | None = None
    revision: str | None = None
    path: Path | None = None

    @classmethod
    def parse(cls, text: str | os.PathLike, revision: str | None = None) -> ModelRef:
        text = os.fspath(text)
        if text.startswith(LOCAL_DIR_PREFIX):
            return cls._folder(text, Path(text.removeprefix(LOCAL_DIR_PREFIX)).expanduser(), revision)
        if text.startswith(HF_HUB_PREFIX):
            return cls._hub(text, text.removeprefix(HF_HUB_PREFIX), revision)
        path = Path(text).expanduser()
        if path.exists() or looks_like_a_path(text):
            return cls._folder(text, path, revision)
        if "/" in text:
            if not is_hub_id(split_revision(text)[0]):
                raise FileNotFoundError(f"{text!r} is neither a folder nor a Hub repo id (owner/name)")
            return cls._hub(text, text, revision)
        if revision is not None:
            raise ValueError(f"revision={revision!r} only applies to Hub repos, not the architecture {text}")
        return cls(text=text, kind="architecture")

    @classmethod
    def _hub(cls, text: str, hub_id: str, revision: str | None) -> ModelRef:
        repo_id, at_revision = split_revision(hub_id)
        if revision is not None and at_revision is not None and revision != at_revision:
            raise ValueError(f"two revisions given: {at_revision!r} in the name and revision={revision!r}")
        return cls(text=text, kind="hub", repo_id=repo_id, revision=revision or at_revision)

    @classmethod
    def _folder(cls, text: str, path: Path, revision: str | None) -> ModelRef:
        if revision is not None:
            raise ValueError(f"revision={revision!r} only applies to Hub repos, not the folder {path}")
        return cls(text=text, kind="folder", path=path)

    @property
    def is_saved(self) -> bool:
        """A model saved by hubclf/timm (Hub repo or folder), as opposed to an architecture name."""
        return self.kind != "architecture"

    @property
    def display_name(self) -> str:
        """How a card names it without revealing local paths: the Hub id, a folder by its name, the architecture.

            ModelRef.parse("out/best").display_name   # "best (local model folder)"
        """
        if self.kind == "hub":
            return self.repo_id
        if self.kind == "folder":
            return f"{self.path.resolve().name} (local model folder)"
        return self.text

    def local_architecture(self) -> str | None:
        """The ``architecture`` in a local folder's config.json (a bounded, checked read), else None."""
        if self.kind != "folder" or not (self.path / CONFIG_NAME).is_file():
            return None
        from hubclf.config_check import read_config_file  # torch and timm: only when there is a folder to read

        architecture = read_config_file(self.path / CONFIG_NAME).get("architecture")
        return architecture if isinstance(architecture, str) else None


@dataclass(frozen=True)
class DataSource:
    """What a ``--data`` (with an optional ``--labels`` CSV) names.

    ``kind`` is ``"folder"`` (an image folder: one subfolder of images per class), ``"saved"`` (a
    ``datasets.save_to_disk`` folder), ``"csv"`` (a labels CSV of ``path,label`` rows; with ``labels``, a CSV whose
    paths start in the ``data`` folder) or ``"hub"`` (a Hub dataset id, ``user/name[@revision]``); or one of the
    streamed kinds (``STREAM_KINDS``): ``"webdataset"`` (``wds:PATH``, or a ``.tar`` file, a folder of them, a glob or
    ``{000..009}`` range), ``"parquet"`` (``parquet:PATH``, or a ``.parquet`` file, folder or glob) and
    ``"hub-stream"`` (a Hub dataset id with ``streaming=True``). A stream's ``labels`` CSV maps sample keys to labels.

        DataSource.parse("photos/", labels="labels.csv").kind   # "csv"
        DataSource.parse("user/flowers", streaming=True).kind   # "hub-stream"
    """

    text: str
    kind: str
    path: Path | None = None
    repo_id: str | None = None
    revision: str | None = None
    labels: Path | None = None

    @classmethod
    def parse(
        cls, text: str | os.PathLike, labels: str | os.PathLike | None = None, streaming: bool = False
    ) -> DataSource:
        """Fails at once on a ``--data`` that names no existing path and cannot be a Hub dataset id, before a run
        spends time on anything else; what exists is read and checked later (``hubclf.data.sources``)."""
        text = os.fspath(text)
        labels_path = Path(labels).expanduser() if labels is not None else None
        for prefix, kind in ((WDS_PREFIX, "webdataset"), (PARQUET_PREFIX, "parquet")):
            if text.startswith(prefix):
                return cls(text=text, kind=kind, path=Path(text.removeprefix(prefix)).expanduser(), labels=labels_path)
        path = Path(text).expanduser()
        shard_kind = _shard_kind(path)
        if shard_kind is not None:
            return cls(text=text, kind=shard_kind, path=path, labels=labels_path)
        if streaming and (path.exists() or looks_like_a_path(text)):
            raise ValueError(
                f"--streaming reads a Hub dataset; --data {text} is local: WebDataset (.tar) and parquet shards "
                "always stream, an image folder is read as it is"
            )
        if labels is not None:
            if not path.is_dir():
                raise ValueError(f"--labels {labels} needs --data to be the folder its paths start from; got {text}")
            return cls(text=text, kind="csv", path=path, labels=labels_path)
        if path.is_dir():
            saved = any((path / marker).is_file() for marker in SAVED_DATASET_MARKERS)
            return cls(text=text, kind="saved" if saved else "folder", path=path)
        if path.suffix.lower() == ".csv":
            if not path.is_file():
                raise FileNotFoundError(f"labels CSV {path} does not exist")
            return cls(text=text, kind="csv", path=path)
        if path.exists():
            raise ValueError(
                f"--data {text} is a file; give an image folder, a labels .csv, a saved dataset directory, "
                ".tar/.parquet shards or a Hub id"
            )
        repo_id, revision = split_revision(text)
        # huggingface_hub's own id rules also refuse "photos/", a missing folder's most likely spelling.
        if text.startswith((".", "/", "~")) or not is_valid_repo_id(repo_id):
            raise FileNotFoundError(f"--data {text}: no such directory (and it does not look like a Hub dataset id)")
        return cls(text=text, kind="hub-stream" if streaming else "hub", repo_id=repo_id, revision=revision)

    @property
    def is_stream(self) -> bool:
        """Read shard by shard, never whole (``hubclf.data.streaming``)."""
        return self.kind in STREAM_KINDS

    @property
    def display_name(self) -> str:
        """How a card names the data without revealing local paths: a Hub id without its revision, a local folder
        or CSV by its name.

            DataSource.parse("photos/").display_name   # "photos (local image folder)"
        """
        if self.kind in ("hub", "hub-stream"):
            return self.repo_id
        if self.kind in ("webdataset", "parquet"):
            what = "WebDataset" if self.kind == "webdataset" else "parquet"
            name = self.path.resolve().name if self.path.exists() else self.path.name
            return f"{name} (local {what} shards)"
        if self.kind == "csv":
            return f"{(self.labels or self.path).resolve().name} (local labels CSV)"
        what = "saved dataset" if self.kind == "saved" else "local image folder"
        return f"{self.path.resolve().name} ({what})"


def _shard_kind(path: Path) -> str | None:
    """``"webdataset"``/``"parquet"`` for a ``.tar``/``.parquet`` file, glob or brace range, or a folder that
    holds such shards (at its top or one level down, e.g. ``train/`` and ``validation/``) and no saved dataset."""
    text = str(path)
    suffix = next((s for s in _SHARD_SUFFIXES if text.lower().endswith(s)), None)
    if suffix is not None and (path.is_file() or any(c in text for c in "*?[{")):
        return _SHARD_SUFFIXES[suffix]
    if not path.is_dir() or any((path / marker).is_file() for marker in SAVED_DATASET_MARKERS):
        return None
    found = set()
    folders = [path, *(p for p in itertools.islice(path.iterdir(), 1000) if p.is_dir() and not p.name.startswith("."))]
    for folder in folders[:64]:
        # A few entries of each folder tell: a class folder of an image folder may hold a million images.
        for child in itertools.islice(folder.iterdir(), 100):
            if child.suffix.lower() in _SHARD_SUFFIXES and child.is_file():
                found.add(_SHARD_SUFFIXES[child.suffix.lower()])
    return found.pop() if len(found) == 1 else None
