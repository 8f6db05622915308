"""A small Hugging Face Hub look-alike for tests: the commit API over real HTTP on 127.0.0.1.

Test infrastructure, not product. huggingface.co cannot be reached from the test machines, and no Hub server that
accepts uploads can be installed from a registry, so this module implements exactly the endpoints that
huggingface_hub 2.4 calls for ``create_repo``, ``create_commit`` / ``upload_folder`` / ``upload_file`` (with the
basic LFS transfer), ``repo_info`` / ``model_info``, ``list_repo_tree`` / ``list_repo_files``, ``list_repo_refs``,
``list_repo_commits``, ``create_branch`` / ``delete_branch``, ``delete_repo``, and ``hf_hub_download`` /
``snapshot_download``. Paths, headers and error codes were read from the installed client
(``hf_api.py``, ``_commit_api.py``, ``lfs.py``, ``file_download.py``, ``utils/_http.py``), so the client raises its
real exceptions (``RepositoryNotFoundError``, ``RevisionNotFoundError``, ``EntryNotFoundError``...).

Every repo is a real git repository, ``<root>/models/<namespace>/<name>/.git`` (``<root>/datasets/...`` for dataset
repos), one git commit per Hub commit, so commit SHAs are real. LFS files are git-lfs pointer files in git and their
content lives in ``.git/lfs/objects/<aa>/<bb>/<sha256>``: the layout that olah
(``tests/hub_fixtures.py::olah_server``) serves read-only from the very same ``root``. Model and dataset repos are
supported (no Spaces).

Xet is never advertised: no ``X-Xet-*`` header, no xet token route. Note that huggingface_hub does not ask the
server before uploading: when ``hf_xet`` is installed it uploads through Xet unless ``HF_HUB_DISABLE_XET`` is set,
which is why ``use_hub`` sets it.

Endpoints of the API server (``HubServer.endpoint``), ``{repo_id}`` being ``namespace/name``:

=======  ===========================================================  =============================================
GET      /api/whoami-v2                                               ``whoami``
POST     /api/repos/create                                            ``create_repo`` (409 if it exists: exist_ok)
DELETE   /api/repos/delete                                            ``delete_repo``
POST     /api/validate-yaml                                           README.md metadata check in ``create_commit``
GET      /api/models/{repo_id}                                        ``model_info`` / ``repo_info`` (``?blobs``)
GET      /api/models/{repo_id}/revision/{revision}                    same, at a revision
GET      /api/models/{repo_id}/tree/{revision}[/{path}]               ``list_repo_tree`` / ``list_repo_files``
POST     /api/models/{repo_id}/paths-info/{revision}                  ``get_paths_info``
GET      /api/models/{repo_id}/refs                                   ``list_repo_refs`` (``?include_prs=1``)
GET      /api/models/{repo_id}/commits/{revision}                     ``list_repo_commits``
POST     /api/models/{repo_id}/branch/{branch}                        ``create_branch`` (409 if it exists)
DELETE   /api/models/{repo_id}/branch/{branch}                        ``delete_branch``
POST     /api/models/{repo_id}/preupload/{revision}                   upload mode per file: "lfs" or "regular"
POST     /api/models/{repo_id}/commit/{revision}                      NDJSON commit (``?create_pr=1``)
POST     /{repo_id}.git/info/lfs/objects/batch                        LFS batch API, "basic" transfer only
POST     /{repo_id}.git/info/lfs/objects/verify                       LFS verify action
HEAD|GET /{repo_id}/resolve/{revision}/{path}                         file download (see below)
=======  ===========================================================  =============================================

Dataset repos (``repo_type="dataset"``, created with ``"type": "dataset"`` in ``/api/repos/create``) have the same
endpoints under ``/api/datasets/{repo_id}/...``, ``/datasets/{repo_id}.git/info/lfs/...`` and
``/datasets/{repo_id}/resolve/...``, which is all that ``datasets.load_dataset("user/name", revision=...)`` (through
``HfFileSystem``: ``/api/datasets/{repo_id}/revision/{revision}``, ``tree/{revision}/{path}?recursive=...`` and
``paths-info``, then ``resolve``) and ``Dataset.push_to_hub`` call. Their routes are ``_DATASET_API_ROUTES``, built from
the model routes by ``_dataset_routes``; handlers read the repo type from ``_Request.repo_type``.

``resolve`` (and the LFS storage) honour ``Range: bytes=...`` with 206, as the Hub does; otherwise it answers a
regular file with 200, ``ETag: "<git blob sha>"``, ``X-Repo-Commit`` and ``Content-Length``;
an LFS file with a 302 to the storage server plus ``X-Linked-Etag: "<sha256>"``, ``X-Linked-Size`` and
``X-Repo-Commit``; a missing file with 404 ``X-Error-Code: EntryNotFound`` (with ``X-Repo-Commit``).

Endpoints of the storage server (``HubServer.storage_endpoint``, a second port standing in for S3 / the CDN: a
different origin, so the client drops the Authorization header, and access is by signed URL only):

=======  ===========================================================  =============================================
PUT      /upload/{repo_id}/{sha256}?expires=..&signature=..           LFS basic-transfer upload href
HEAD|GET /objects/{repo_id}/{sha256}?expires=..&signature=..          LFS download (the resolve redirect target)
=======  ===========================================================  =============================================

Auth: ``Authorization: Bearer <HubServer.token>`` (user ``HubServer.user``). Writes need it (401 without, 403 outside
the user's namespace); private repos need it for reads too (401/404 ``RepoNotFound``, as the Hub does, never
revealing that the repo exists); a wrong token is a 401 "Invalid credentials in Authorization header".

Faults for retry tests: ``HubServer.fail_next(endpoint, status=500, times=1)`` answers the next ``times`` requests
to ``endpoint`` (a handler name from the tables above: ``"commit"``, ``"create_repo"``, ``"storage_upload"``...)
with that status; ``drop_connection_next(endpoint)`` reads half of the request body and closes the socket without
answering, as a connection lost mid-upload; ``clear_faults()`` forgets the rest (``use_hub`` calls it after
each test).

Every request is recorded (``HubServer.requests``) so tests can check what the client sent, and
``HubServer.find_secret(token)`` lists every place a secret appears outside the Authorization header: request paths,
other headers, bodies, and every git object and LFS object of every stored repo.

Example:
    >>> with HubServer(tmp_path) as hub:
    ...     HfApi(endpoint=hub.endpoint, token=hub.token).create_repo("hubclf-test/demo")
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml  # a hubclf runtime dependency; needed to read model card metadata like the Hub does

logger = logging.getLogger(__name__)

DEFAULT_USER = "hubclf-test"

# What the Hub writes in the first commit of every new model repo: these patterns decide what goes through LFS.
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
        "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle",
        "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite",
        "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
    )
)  # fmt: skip
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # the Hub sends anything this large through LFS, whatever its name
MAX_RECORDED_BODY = 1024 * 1024  # bodies above this (LFS uploads) are recorded as None
SIGNED_URL_LIFETIME_S = 3600

_FULL_SHA = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_REPO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Exactly the pointer format git-lfs writes and olah parses.
_LFS_POINTER = re.compile(rb"version https://git-lfs\.github\.com/spec/v1\noid sha256:([0-9a-f]{64})\nsize ([0-9]+)\n")
_FRONT_MATTER = re.compile(r"\A\s*---\s*\n(.*?)\n---\s*(?:\n|\Z)", re.S)


class HubError(Exception):
    """An error answered the way the Hub answers it: a status, ``X-Error-Code`` / ``X-Error-Message`` and JSON."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


def _repo_not_found(user: str | None) -> HubError:
    # Like the Hub: 401 to anonymous callers, 404 to authenticated ones, and the same answer for "missing" and
    # "private and not yours", so a private repo's existence never leaks.
    return HubError(401 if user is None else 404, "Repository not found", "RepoNotFound")


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def lfs_pointer(oid: str, size: int) -> bytes:
    """The git-lfs pointer file stored in git in place of an LFS file's content."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


@dataclass(frozen=True)
class TreeEntry:
    """A file or directory at one commit. For LFS files ``size`` is the content's size, not the pointer's."""

    path: str
    type: str  # "file" or "directory", as the Hub's tree API names them
    oid: str  # git object id (of the pointer file, for LFS files)
    size: int
    lfs_oid: str | None = None  # sha256 of the content, for LFS files
    pointer_size: int | None = None

    def to_json(self) -> dict:
        item = {"type": self.type, "oid": self.oid, "size": self.size, "path": self.path}
        if self.lfs_oid is not None:
            item["lfs"] = {"oid": self.lfs_oid, "size": self.size, "pointerSize": self.pointer_size}
        return item


class GitRepo:
    """One Hub repo stored as a git repository, driven through the git CLI (plumbing only, no working tree)."""

    def __init__(self, path: Path):
        self.path = path
        self._trees: dict[str, dict[str, TreeEntry]] = {}  # commit -> entries; commits are immutable

    # -- plumbing ---------------------------------------------------------------------------------------------------
    def git(self, *args: str, input: bytes | None = None, env: dict | None = None, check: bool = True) -> bytes:
        # The developer's own git config (signing, hooks, templates) must not change what the tests store.
        git_env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C"}
        result = subprocess.run(
            ["git", *args], cwd=self.path, input=input, capture_output=True, env={**git_env, **(env or {})}
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed in {self.path}: {result.stderr.decode().strip()}")
        return result.stdout

    @property
    def _meta_path(self) -> Path:
        return self.path / ".git" / "hubserver.json"

    @property
    def meta(self) -> dict:
        return json.loads(self._meta_path.read_text())

    def exists(self) -> bool:
        return self._meta_path.exists()

    def create(self, *, private: bool, author: str) -> None:
        self.path.mkdir(parents=True)
        self.git("init", "-q", "--initial-branch=main")
        self.git("config", "gc.auto", "0")  # no background gc while olah may be reading
        self._meta_path.write_text(json.dumps({"private": private, "created_at": time.time()}))
        self.commit(
            "refs/heads/main", None, author=author, message="initial commit", description="",
            additions={".gitattributes": DEFAULT_GITATTRIBUTES.encode()},
        )  # fmt: skip

    def lfs_object_path(self, oid: str) -> Path:
        return self.path / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid

    def resolve(self, revision: str) -> str | None:
        """Commit SHA of a branch, tag, ``refs/...`` name or full commit SHA; None if there is no such revision."""
        if _FULL_SHA.fullmatch(revision):
            candidates = [revision]
        else:
            candidates = [f"refs/heads/{revision}", f"refs/tags/{revision}"]
            if revision.startswith("refs/"):
                candidates.insert(0, revision)
        for candidate in candidates:
            out = self.git("rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}", check=False)
            if out:
                return out.decode().strip()
        return None

    def refs(self, prefix: str) -> dict[str, str]:
        """``{ref name without prefix: commit}`` for every ref under ``prefix`` (e.g. ``refs/heads/``)."""
        out = self.git("for-each-ref", "--format=%(refname) %(objectname)", prefix).decode()
        return {ref[len(prefix) :]: sha for ref, sha in (line.split() for line in out.splitlines())}

    def read_blobs(self, oids: list[str]) -> dict[str, bytes]:
        out = self.git("cat-file", "--batch", input="".join(f"{oid}\n" for oid in oids).encode())
        blobs, position = {}, 0
        for oid in oids:
            header_end = out.index(b"\n", position)
            size = int(out[position:header_end].split()[2])
            blobs[oid] = out[header_end + 1 : header_end + 1 + size]
            position = header_end + 1 + size + 1  # content is followed by a newline
        return blobs

    def tree(self, commit: str) -> dict[str, TreeEntry]:
        """Every file and directory at ``commit``, LFS pointers already decoded."""
        if commit in self._trees:
            return self._trees[commit]
        entries: dict[str, TreeEntry] = {}
        out = self.git("ls-tree", "-r", "-t", "-l", "-z", "--full-tree", commit)
        for record in filter(None, out.split(b"\0")):
            meta, raw_path = record.split(b"\t", 1)
            _, kind, oid, size = meta.decode().split()
            path = raw_path.decode()
            if kind == "tree":
                entries[path] = TreeEntry(path, "directory", oid, 0)
            elif kind == "blob":
                entries[path] = TreeEntry(path, "file", oid, int(size))
        small_files = [entry for entry in entries.values() if entry.type == "file" and entry.size < 200]
        if small_files:
            contents = self.read_blobs([entry.oid for entry in small_files])
            for entry in small_files:
                match = _LFS_POINTER.fullmatch(contents[entry.oid])
                if match:
                    entries[entry.path] = TreeEntry(
                        entry.path, "file", entry.oid, int(match[2]), match[1].decode(), entry.size
                    )
        self._trees[commit] = entries
        return entries

    def read_file(self, entry: TreeEntry) -> bytes:
        if entry.lfs_oid is not None:
            return self.lfs_object_path(entry.lfs_oid).read_bytes()
        return self.git("cat-file", "blob", entry.oid)

    def commit_time(self, commit: str) -> float:
        return float(self.git("show", "-s", "--format=%ct", commit).decode().strip())

    def log(self, commit: str, limit: int = 100) -> list[dict]:
        out = self.git("log", f"-n{limit}", "--format=%H%x00%an%x00%ct%x00%s%x00%b%x1e", commit).decode()
        commits = []
        for record in filter(None, (chunk.strip("\n") for chunk in out.split("\x1e"))):
            sha, author, timestamp, title, message = record.split("\x00")
            commits.append(
                {"id": sha, "title": title, "message": message.strip(), "authors": [{"user": author}],
                 "date": _iso(float(timestamp))}
            )  # fmt: skip
        return commits

    # -- writes -----------------------------------------------------------------------------------------------------
    def commit(
        self,
        ref: str,
        parent: str | None,
        *,
        author: str,
        message: str,
        description: str,
        additions: dict[str, bytes],
        deletions: tuple[str, ...] = (),
        folder_deletions: tuple[str, ...] = (),
        new_ref: bool = False,
    ) -> str:
        """Write one commit with parent ``parent`` on ``ref`` and return its SHA.

        ``ref`` must still point at ``parent``, or not exist yet when ``new_ref``. ``additions`` maps paths to the
        bytes git stores (an LFS pointer, for LFS files). The caller serialises writes; ``update-ref`` with the old
        value still makes a lost race an error instead of a lost commit.
        """
        existing = self.tree(parent) if parent else {}
        removed = set()
        for path in deletions:
            if existing.get(path, TreeEntry(path, "directory", "", 0)).type != "file":
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            removed.add(path)
        for folder in folder_deletions:
            prefix = folder.rstrip("/") + "/"
            inside = [path for path, entry in existing.items() if entry.type == "file" and path.startswith(prefix)]
            if not inside:
                raise HubError(404, f"A folder with this name doesn't exist: {folder}", "EntryNotFound")
            removed.update(inside)

        with tempfile.TemporaryDirectory() as scratch:
            index_env = {"GIT_INDEX_FILE": os.path.join(scratch, "index")}
            if parent:
                self.git("read-tree", parent, env=index_env)
            if removed:
                self.git("update-index", "--force-remove", "-z", "--stdin", input="\0".join(removed).encode(),
                         env=index_env)  # fmt: skip
            index_info = []
            for path, data in additions.items():
                blob = self.git("hash-object", "-w", "--stdin", input=data).decode().strip()
                index_info.append(f"100644 {blob}\t{path}\0")
            if index_info:
                self.git("update-index", "-z", "--index-info", input="".join(index_info).encode(), env=index_env)
            tree = self.git("write-tree", env=index_env).decode().strip()

        identity = {
            "GIT_AUTHOR_NAME": author, "GIT_AUTHOR_EMAIL": f"{author}@users.noreply.hubserver.test",
            "GIT_COMMITTER_NAME": author, "GIT_COMMITTER_EMAIL": f"{author}@users.noreply.hubserver.test",
        }  # fmt: skip
        full_message = f"{message}\n\n{description}" if description else message
        parent_args = ["-p", parent] if parent else []
        commit = self.git("commit-tree", tree, *parent_args, "-F", "-", input=full_message.encode(), env=identity)
        commit = commit.decode().strip()
        self.git("update-ref", ref, commit, "0" * 40 if new_ref or parent is None else parent)
        return commit


@dataclass
class RecordedRequest:
    """One request as the server received it. ``body`` is None for bodies over ``MAX_RECORDED_BODY`` bytes."""

    server: str  # "api" or "storage"
    method: str
    path: str  # with the query string
    headers: dict[str, str]  # lower-cased names
    body: bytes | None


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    raw_query: str = ""
    user: str | None = None
    repo_type: str = "model"  # "dataset" on the /api/datasets/... and /datasets/... routes

    def json(self) -> dict:
        try:
            payload = json.loads(self.body or b"{}")
        except json.JSONDecodeError as error:
            raise HubError(400, f"Invalid JSON body: {error}") from error
        if not isinstance(payload, dict):
            raise HubError(400, "Expected a JSON object")
        return payload

    def flag(self, name: str) -> bool:
        return self.query.get(name, [""])[0].lower() in ("1", "true")


@dataclass
class _Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, payload: object, status: int = 200, headers: dict[str, str] | None = None) -> _Response:
        return cls(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})


@dataclass
class _Fault:
    """An injected failure: an HTTP ``status``, or (``status=None``) a connection closed mid-request."""

    endpoint: str
    status: int | None
    times: int | None  # None: every request until cleared

    def response(self) -> _Response:
        message = f"Injected fault: HTTP {self.status} from the test Hub"
        return _Response.json({"error": message}, status=self.status, headers={"X-Error-Message": message})


_REPO_ID = r"(?P<repo_id>[^/]+/[^/]+)"
_API_ROUTES: list[tuple[str, str, str]] = [  # (methods, path regex, handler name); groups are URL-decoded
    ("GET", r"/api/whoami-v2", "whoami"),
    ("POST", r"/api/repos/create", "create_repo"),
    ("DELETE", r"/api/repos/delete", "delete_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET HEAD", rf"/api/models/{_REPO_ID}(?:/revision/(?P<revision>[^/]+))?", "repo_info"),
    ("GET", rf"/api/models/{_REPO_ID}/tree/(?P<revision>[^/]+)(?:/(?P<path>.*))?", "tree"),
    ("POST", rf"/api/models/{_REPO_ID}/paths-info/(?P<revision>[^/]+)", "paths_info"),
    ("GET", rf"/api/models/{_REPO_ID}/refs", "refs"),
    ("GET", rf"/api/models/{_REPO_ID}/commits/(?P<revision>[^/]+)", "commits"),
    ("POST", rf"/api/models/{_REPO_ID}/branch/(?P<branch>[^/]+)", "create_branch"),
    ("DELETE", rf"/api/models/{_REPO_ID}/branch/(?P<branch>[^/]+)", "delete_branch"),
    ("POST", rf"/api/models/{_REPO_ID}/preupload/(?P<revision>[^/]+)", "preupload"),
    ("POST", rf"/api/models/{_REPO_ID}/commit/(?P<revision>[^/]+)", "commit"),
    ("POST", rf"/{_REPO_ID}\.git/info/lfs/objects/batch", "lfs_batch"),
    ("POST", rf"/{_REPO_ID}\.git/info/lfs/objects/verify", "lfs_verify"),
    ("GET HEAD", rf"/{_REPO_ID}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", "resolve"),
]
_STORAGE_ROUTES: list[tuple[str, str, str]] = [
    ("PUT", rf"/upload/{_REPO_ID}/(?P<oid>[0-9a-f]{{64}})", "storage_upload"),
    ("GET HEAD", rf"/objects/{_REPO_ID}/(?P<oid>[0-9a-f]{{64}})", "storage_download"),
]
DATASET_HANDLER_PREFIX = "dataset:"  # a route whose handler name starts with this serves a dataset repo


def _dataset_routes(routes: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """The dataset-repo twin of every repo route: ``/api/models/`` -> ``/api/datasets/``, ``/{repo}`` ->
    ``/datasets/{repo}`` (resolve, LFS), ``/objects/{repo}`` -> ``/objects/datasets/{repo}`` (storage)."""
    twins = []
    for methods, pattern, handler in routes:
        if pattern.startswith("/api/models/"):
            twin = "/api/datasets/" + pattern.removeprefix("/api/models/")
        elif pattern.startswith(f"/{_REPO_ID}"):
            twin = "/datasets" + pattern
        elif pattern.startswith(("/upload/", "/objects/")):
            route, rest = pattern[1:].split("/", 1)
            twin = f"/{route}/datasets/{rest}"
        else:
            continue  # not about one repo (whoami, create, delete...): the payload says the type
        twins.append((methods, twin, DATASET_HANDLER_PREFIX + handler))
    return twins


_DATASET_API_ROUTES = _dataset_routes(_API_ROUTES)
_DATASET_STORAGE_ROUTES = _dataset_routes(_STORAGE_ROUTES)


class HubServer:
    """The commit-API test server: an API port and a storage port, both on 127.0.0.1, serving git repos in ``root``.

    Args:
        root: where the repos are stored, as ``<root>/models/<namespace>/<name>`` (olah's ``mirrors-path`` layout).
        user: the user that ``token`` authenticates; the only namespace writes are allowed in.

    Example:
        >>> hub = HubServer(tmp_path).start()
        >>> HfApi(endpoint=hub.endpoint, token=hub.token).create_repo(f"{hub.user}/demo")
        >>> hub.stop()
    """

    def __init__(self, root: Path, *, user: str = DEFAULT_USER):
        if shutil.which("git") is None:
            raise RuntimeError("tests/hubserver.py stores repos with the git CLI, and `git` is not on PATH")
        self.root = Path(root)
        self.user = user
        self.token = f"hf_{secrets.token_hex(16)}"  # looks like a real user token, so leaks are easy to grep
        self.requests: list[RecordedRequest] = []
        self._signing_key = secrets.token_bytes(32)  # signs storage URLs: those carry no user token
        self._write_lock = threading.Lock()
        self._repos: dict[str, GitRepo] = {}  # one per repo id, so each keeps its cache of trees across requests
        self._servers: list[ThreadingHTTPServer] = []
        self._faults: list[_Fault] = []  # injected by fail_next / drop_connection_next
        self.endpoint = ""
        self.storage_endpoint = ""

    # -- lifecycle --------------------------------------------------------------------------------------------------
    def start(self) -> HubServer:
        for folder in ("models", "datasets"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        api = self._serve("api", _API_ROUTES + _DATASET_API_ROUTES)
        storage = self._serve("storage", _STORAGE_ROUTES + _DATASET_STORAGE_ROUTES)
        self.endpoint = f"http://127.0.0.1:{api.server_address[1]}"
        self.storage_endpoint = f"http://127.0.0.1:{storage.server_address[1]}"
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _serve(self, role: str, routes: list[tuple[str, str, str]]) -> _HubHTTPServer:
        compiled = [(methods.split(), re.compile(pattern), self._handler(name)) for methods, pattern, name in routes]
        server = _HubHTTPServer(self, role, compiled)
        threading.Thread(target=server.serve_forever, name=f"hubserver-{role}", daemon=True).start()
        self._servers.append(server)
        return server

    def _handler(self, name: str):
        """The method serving a route; a ``dataset:`` route's marks its request as one for a dataset repo first."""
        if not name.startswith(DATASET_HANDLER_PREFIX):
            return getattr(self, f"_{name}")
        handler = getattr(self, f"_{name.removeprefix(DATASET_HANDLER_PREFIX)}")

        def for_dataset(request: _Request, **params: str) -> _Response:
            request.repo_type = "dataset"
            return handler(request, **params)

        return for_dataset

    # -- helpers for tests ------------------------------------------------------------------------------------------
    def repo(self, repo_id: str, repo_type: str = "model") -> GitRepo:
        """The git repository behind ``repo_id`` of type ``repo_type`` ("model" or "dataset"; it may not exist yet)."""
        if repo_type not in ("model", "dataset"):
            raise HubError(400, f"The test Hub stores model and dataset repos, not {repo_type!r}")
        key = repo_id if repo_type == "model" else f"{repo_type}s/{repo_id}"
        if key not in self._repos:
            namespace, name = repo_id.split("/")
            self._repos[key] = GitRepo(self.root / f"{repo_type}s" / namespace / name)
        return self._repos[key]

    def find_secret(self, secret: str) -> list[str]:
        """Every place ``secret`` appears other than an Authorization header: requests and all stored repo content.

        Example:
            >>> assert hub_server.find_secret(hub_server.token) == []
        """
        needle = secret.encode()
        found = []
        for number, request in enumerate(list(self.requests)):
            where = f"request #{number} {request.method} {request.path.split('?')[0]}"
            if secret in request.path:
                found.append(f"{where}: URL")
            found += [f"{where}: header {name}" for name, value in request.headers.items()
                      if name.lower() != "authorization" and secret in value]  # fmt: skip
            if request.body is not None and needle in request.body:
                found.append(f"{where}: body")
        for git_dir in sorted([*self.root.glob("models/*/*/.git"), *self.root.glob("datasets/*/*/.git")]):
            repo = GitRepo(git_dir.parent)
            name = "/".join(git_dir.parent.parts[-2:])
            if needle in repo.git("cat-file", "--batch-all-objects", "--batch"):
                found.append(f"repo {name}: git objects")
            found += [f"repo {name}: LFS object {path.name}" for path in (git_dir / "lfs" / "objects").rglob("*")
                      if path.is_file() and needle in path.read_bytes()]  # fmt: skip
        return found

    # -- fault injection (retry and cleanup tests) ----------------------------------------------------------------
    def fail_next(self, endpoint: str, *, status: int = 500, times: int | None = 1) -> None:
        """Answer the next ``times`` requests to ``endpoint`` (a handler name, e.g. ``"commit"``) with ``status``.

        ``times=None`` fails every request until ``clear_faults()``.

        Example:
            >>> hub.fail_next("commit", status=503, times=2)
        """
        self._add_fault(_Fault(endpoint, status, times))

    def drop_connection_next(self, endpoint: str, *, times: int | None = 1) -> None:
        """Close the connection in the middle of the next ``times`` requests to ``endpoint``, without an answer.

        Example:
            >>> hub.drop_connection_next("storage_upload")  # an LFS upload loses its connection halfway
        """
        self._add_fault(_Fault(endpoint, None, times))

    def clear_faults(self) -> None:
        self._faults.clear()

    def _add_fault(self, fault: _Fault) -> None:
        known = {handler.__name__.lstrip("_") for server in self._servers for _, _, handler in server.routes}
        if fault.endpoint not in known:
            raise ValueError(f"no endpoint {fault.endpoint!r} on the test Hub; known: {sorted(known)}")
        self._faults.append(fault)

    def take_fault(self, routes: list, method: str, path: str) -> _Fault | None:
        """The fault to inject into this request, if one is armed for its endpoint (and count it)."""
        if not self._faults:
            return None
        endpoint = next(
            (handler.__name__.lstrip("_") for methods, pattern, handler in routes
             if method in methods and pattern.fullmatch(path)),
            None,
        )  # fmt: skip
        with self._write_lock:
            for fault in self._faults:
                if fault.endpoint == endpoint:
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    # -- routing, auth, access --------------------------------------------------------------------------------------
    def handle(self, role: str, routes: list, request: _Request, fault: _Fault | None = None) -> _Response:
        """Record ``request``, route it, and turn ``HubError`` into the Hub's error response."""
        body = request.body if len(request.body) <= MAX_RECORDED_BODY else None
        query = f"?{request.raw_query}" if request.raw_query else ""
        self.requests.append(RecordedRequest(role, request.method, request.path + query, request.headers, body))
        if fault is not None:
            return fault.response()
        try:
            return self._dispatch(role, routes, request)
        except HubError as error:
            error_headers = {"X-Error-Message": error.message, **error.headers}
            if error.code:
                error_headers["X-Error-Code"] = error.code
            return _Response.json({"error": error.message}, status=error.status, headers=error_headers)
        except Exception as error:  # a bug in this test server: say so loudly, in the response and in the log
            logger.exception("hubserver failed on %s %s", request.method, request.path)
            return _Response.json({"error": f"hubserver internal error: {error!r}"}, status=500)

    def _dispatch(self, server: str, routes: list, request: _Request) -> _Response:
        path_known = False
        for methods, pattern, handler in routes:
            match = pattern.fullmatch(request.path)
            if match:
                if request.method not in methods:  # another route may take this method on the same path
                    path_known = True
                    continue
                if server == "api":
                    request.user = self._authenticate(request)
                params = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
                return handler(request, **params)
        if path_known:
            raise HubError(405, f"{request.method} is not allowed on {request.path}")
        raise HubError(404, f"No such endpoint on the test Hub: {request.method} {request.path}")

    def _authenticate(self, request: _Request) -> str | None:
        authorization = request.headers.get("authorization")
        if authorization is None:
            return None
        if authorization != f"Bearer {self.token}":
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.user

    def _readable(self, request: _Request, repo_id: str) -> GitRepo:
        repo = self.repo(repo_id, request.repo_type)
        if not repo.exists() or (repo.meta["private"] and request.user != repo_id.split("/")[0]):
            raise _repo_not_found(request.user)
        return repo

    def _writable(self, request: _Request, repo_id: str) -> GitRepo:
        if request.user is None:
            raise HubError(401, "You must be authenticated to write to a repository (Authorization: Bearer <token>)")
        repo = self._readable(request, repo_id)
        if repo_id.split("/")[0] != request.user:
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    def _commit_at(self, repo: GitRepo, revision: str) -> str:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _sign(self, method: str, repo_id: str, oid: str, expires: int, repo_type: str = "model") -> str:
        message = f"{method} {repo_id} {oid} {expires}" + ("" if repo_type == "model" else f" {repo_type}")
        return hmac.new(self._signing_key, message.encode(), hashlib.sha256).hexdigest()

    def _signed_url(self, method: str, route: str, repo_id: str, oid: str, repo_type: str = "model") -> str:
        expires = int(time.time()) + SIGNED_URL_LIFETIME_S
        signature = self._sign(method, repo_id, oid, expires, repo_type)
        typed = route if repo_type == "model" else f"{route}/{repo_type}s"
        return f"{self.storage_endpoint}/{typed}/{repo_id}/{oid}?expires={expires}&signature={signature}"

    def _check_signature(self, request: _Request, method: str, repo_id: str, oid: str) -> None:
        try:
            expires = int(request.query["expires"][0])
            signature = request.query["signature"][0]
        except (KeyError, ValueError) as error:
            raise HubError(403, "Missing or malformed URL signature") from error
        expected = self._sign(method, repo_id, oid, expires, request.repo_type)
        if expires < time.time() or not hmac.compare_digest(signature, expected):
            raise HubError(403, "Invalid or expired URL signature")

    # -- account and repos ------------------------------------------------------------------------------------------
    @staticmethod
    def _url_prefix(request: _Request) -> str:
        """What comes between the host and ``{repo_id}`` in a repo's web URLs: nothing for models, ``datasets/``."""
        return "" if request.repo_type == "model" else f"{request.repo_type}s/"

    def _whoami(self, request: _Request) -> _Response:
        if request.user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return _Response.json(
            {"type": "user", "id": hashlib.sha1(self.user.encode()).hexdigest()[:24], "name": self.user,
             "fullname": self.user, "orgs": [],
             "auth": {"type": "access_token", "accessToken": {"displayName": "hubserver", "role": "write"}}}
        )  # fmt: skip

    def _repo_id_from_payload(self, request: _Request) -> str:
        """``namespace/name`` of a create/delete payload; its ``type`` becomes ``request.repo_type``."""
        payload = request.json()
        if payload.get("type") not in (None, "model", "dataset"):
            raise HubError(400, f"The test Hub only stores model and dataset repos, not {payload['type']!r}")
        request.repo_type = payload.get("type") or "model"
        name, namespace = payload.get("name"), payload.get("organization") or request.user
        if not isinstance(name, str) or not _REPO_NAME.fullmatch(name) or "--" in name or ".." in name:
            raise HubError(400, f"Invalid repo name: {name!r}")
        return f"{namespace}/{name}"

    def _create_repo(self, request: _Request) -> _Response:
        if request.user is None:
            raise HubError(401, "You must be authenticated to create a repository")
        repo_id = self._repo_id_from_payload(request)
        if repo_id.split("/")[0] != request.user:
            raise HubError(
                403, f"You don't have the rights to create a {request.repo_type} under the namespace {repo_id!r}"
            )
        payload = request.json()
        private = payload.get("visibility") == "private" or payload.get("private") is True
        url = f"{self.endpoint}/{self._url_prefix(request)}{repo_id}"
        with self._write_lock:
            repo = self.repo(repo_id, request.repo_type)
            if repo.exists():
                error = f"You already created this {request.repo_type} repo"
                return _Response.json({"error": error, "url": url}, status=409)
            repo.create(private=private, author=request.user)
        return _Response.json({"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

    def _delete_repo(self, request: _Request) -> _Response:
        repo_id = self._repo_id_from_payload(request)
        repo = self._writable(request, repo_id)
        with self._write_lock:
            shutil.rmtree(repo.path)
            self._repos = {key: value for key, value in self._repos.items() if value is not repo}
        return _Response()

    def _validate_yaml(self, request: _Request) -> _Response:
        content = request.json().get("content", "")
        match = _FRONT_MATTER.match(content)
        if match:
            try:
                metadata = yaml.safe_load(match[1])
            except yaml.YAMLError as error:
                return _Response.json({"errors": [{"message": f"Invalid YAML: {error}"}]}, status=400)
            if metadata is not None and not isinstance(metadata, dict):
                return _Response.json({"errors": [{"message": "Metadata must be a YAML mapping"}]}, status=400)
        return _Response.json({"errors": [], "warnings": []})

    def _repo_info(self, request: _Request, repo_id: str, revision: str = "main") -> _Response:
        repo = self._readable(request, repo_id)
        commit = self._commit_at(repo, revision)
        tree = repo.tree(commit)
        files = [entry for entry in tree.values() if entry.type == "file"]
        siblings = []
        for entry in files:
            sibling: dict = {"rfilename": entry.path}
            if request.flag("blobs"):
                sibling.update(size=entry.size, blobId=entry.oid)
                if entry.lfs_oid is not None:
                    sibling["lfs"] = {"size": entry.size, "sha256": entry.lfs_oid, "pointerSize": entry.pointer_size}
            siblings.append(sibling)
        card_data = self._card_data(repo, tree.get("README.md"))
        info = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id, "modelId": repo_id,
            "author": repo_id.split("/")[0], "sha": commit, "lastModified": _iso(repo.commit_time(commit)),
            "createdAt": _iso(repo.meta["created_at"]), "private": repo.meta["private"], "gated": False,
            "disabled": False, "downloads": 0, "likes": 0, "library_name": card_data.get("library_name"),
            "pipeline_tag": card_data.get("pipeline_tag"), "tags": self._tags(card_data), "cardData": card_data or None,
            "siblings": siblings, "spaces": [], "usedStorage": sum(entry.size for entry in files),
        }  # fmt: skip
        if request.repo_type == "dataset":  # DatasetInfo has no model fields
            for key in ("modelId", "library_name", "pipeline_tag", "spaces"):
                del info[key]
        expand = request.query.get("expand") or request.query.get("expand[]")
        if expand:  # like the Hub: only the requested properties (plus the ids)
            info = {key: value for key, value in info.items() if key in {"_id", "id", *expand}}
        return _Response.json(info)

    @staticmethod
    def _card_data(repo: GitRepo, readme: TreeEntry | None) -> dict:
        if readme is None:
            return {}
        match = _FRONT_MATTER.match(repo.read_file(readme).decode(errors="replace"))
        try:
            metadata = yaml.safe_load(match[1]) if match else None
        except yaml.YAMLError:
            return {}
        return metadata if isinstance(metadata, dict) else {}

    @staticmethod
    def _tags(card_data: dict) -> list[str]:
        tags = card_data.get("tags") or []
        tags = [tags] if isinstance(tags, str) else list(tags)
        for key in ("library_name", "pipeline_tag"):
            if card_data.get(key) and card_data[key] not in tags:
                tags.append(card_data[key])
        if card_data.get("license"):
            tags.append(f"license:{card_data['license']}")
        return tags

    # -- listings ---------------------------------------------------------------------------------------------------
    def _tree(self, request: _Request, repo_id: str, revision: str, path: str = "") -> _Response:
        repo = self._readable(request, repo_id)
        commit = self._commit_at(repo, revision)
        tree = repo.tree(commit)
        folder = path.strip("/")
        if folder and tree.get(folder, TreeEntry(folder, "file", "", 0)).type != "directory":
            raise HubError(404, f"Path {folder} not found", "EntryNotFound", {"X-Repo-Commit": commit})
        prefix = f"{folder}/" if folder else ""
        recursive = request.flag("recursive")
        listed = [
            entry for entry in tree.values()
            if entry.path.startswith(prefix) and (recursive or "/" not in entry.path[len(prefix):])
        ]  # fmt: skip
        items = []
        for entry in sorted(listed, key=lambda entry: entry.path):
            item = entry.to_json()
            if request.flag("expand"):
                item["lastCommit"] = self._last_commit(repo, commit, entry.path)
            items.append(item)
        return _Response.json(items)

    @staticmethod
    def _last_commit(repo: GitRepo, commit: str, path: str) -> dict:
        out = repo.git("log", "-1", "--format=%H%x00%s%x00%ct", commit, "--", path).decode()
        sha, title, timestamp = out.strip().split("\0")
        return {"id": sha, "title": title, "date": _iso(float(timestamp))}

    def _paths_info(self, request: _Request, repo_id: str, revision: str) -> _Response:
        repo = self._readable(request, repo_id)
        commit = self._commit_at(repo, revision)
        if request.headers.get("content-type", "").startswith("application/json"):
            payload = request.json()
            paths, expand = payload.get("paths", []), bool(payload.get("expand"))
        else:  # huggingface_hub posts a form: paths=a&paths=b&expand=False
            form = parse_qs(request.body.decode())
            paths, expand = form.get("paths", []), form.get("expand", ["false"])[0].lower() == "true"
        tree = repo.tree(commit)
        items = []
        for path in paths:
            entry = tree.get(path.strip("/"))
            if entry is not None:
                item = entry.to_json()
                if expand:
                    item["lastCommit"] = self._last_commit(repo, commit, entry.path)
                items.append(item)
        return _Response.json(items)

    def _refs(self, request: _Request, repo_id: str) -> _Response:
        repo = self._readable(request, repo_id)

        def listing(prefix: str) -> list[dict]:
            refs = repo.refs(prefix).items()
            return [{"name": name, "ref": f"{prefix}{name}", "targetCommit": sha} for name, sha in refs]

        refs = {"branches": listing("refs/heads/"), "tags": listing("refs/tags/"), "converts": []}
        if request.flag("include_prs"):
            refs["pullRequests"] = listing("refs/pr/")
        return _Response.json(refs)

    def _commits(self, request: _Request, repo_id: str, revision: str) -> _Response:
        repo = self._readable(request, repo_id)
        return _Response.json(repo.log(self._commit_at(repo, revision)))

    def _create_branch(self, request: _Request, repo_id: str, branch: str) -> _Response:
        repo = self._writable(request, repo_id)
        start = self._commit_at(repo, request.json().get("startingPoint") or "main")
        with self._write_lock:
            if repo.resolve(f"refs/heads/{branch}") is not None:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            repo.git("update-ref", f"refs/heads/{branch}", start, "0" * 40)
        return _Response()

    def _delete_branch(self, request: _Request, repo_id: str, branch: str) -> _Response:
        repo = self._writable(request, repo_id)
        if branch == "main":
            raise HubError(403, "The main branch cannot be deleted")
        with self._write_lock:
            head = self._commit_at(repo, f"refs/heads/{branch}")
            repo.git("update-ref", "-d", f"refs/heads/{branch}", head)
        return _Response()

    # -- uploads ----------------------------------------------------------------------------------------------------
    def _preupload(self, request: _Request, repo_id: str, revision: str) -> _Response:
        repo = self._writable(request, repo_id)
        commit = self._commit_at(repo, revision)
        tree = repo.tree(commit)
        lfs_patterns = self._lfs_patterns(repo, tree.get(".gitattributes"))
        files = []
        for item in request.json().get("files", []):
            path, size = item["path"], int(item["size"])
            sample = base64.b64decode(item.get("sample", ""))
            name = path.rsplit("/", 1)[-1]
            is_lfs = (
                any(fnmatch(path if "/" in pattern else name, pattern) for pattern in lfs_patterns)
                or size >= LFS_SIZE_THRESHOLD
                or b"\0" in sample  # binary content
            )
            existing = tree.get(path)
            remote_oid = None
            if existing is not None and existing.type == "file":  # lets the client skip unchanged files
                remote_oid = existing.lfs_oid or existing.oid
            files.append({"path": path, "uploadMode": "lfs" if is_lfs else "regular", "shouldIgnore": False,
                          "oid": remote_oid})  # fmt: skip
        return _Response.json({"files": files, "commitOid": commit})

    @staticmethod
    def _lfs_patterns(repo: GitRepo, gitattributes: TreeEntry | None) -> list[str]:
        if gitattributes is None:
            return []
        lines = repo.read_file(gitattributes).decode(errors="replace").splitlines()
        return [line.split()[0] for line in lines if "filter=lfs" in line.split()[1:]]

    def _lfs_batch(self, request: _Request, repo_id: str) -> _Response:
        repo = self._writable(request, repo_id)
        payload = request.json()
        if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", ["basic"]):
            raise HubError(422, "The test Hub only implements LFS uploads with the 'basic' transfer")
        objects = []
        for item in payload.get("objects", []):
            oid, size = item["oid"], int(item["size"])
            if not _SHA256.fullmatch(oid):
                objects.append({"oid": oid, "size": size, "error": {"code": 422, "message": "Invalid sha256 oid"}})
                continue
            entry: dict = {"oid": oid, "size": size, "authenticated": True}
            repo_url = f"{self.endpoint}/{self._url_prefix(request)}{repo_id}"
            if not repo.lfs_object_path(oid).exists():  # no "actions": the client skips objects already stored
                entry["actions"] = {
                    "upload": {"href": self._signed_url("PUT", "upload", repo_id, oid, request.repo_type),
                               "expires_in": 3600},
                    "verify": {"href": f"{repo_url}.git/info/lfs/objects/verify"},
                }
            objects.append(entry)
        return _Response.json(
            {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
            headers={"Content-Type": "application/vnd.git-lfs+json"},
        )

    def _lfs_verify(self, request: _Request, repo_id: str) -> _Response:
        repo = self._writable(request, repo_id)
        payload = request.json()
        path = repo.lfs_object_path(str(payload.get("oid", "")))
        if not path.exists() or path.stat().st_size != payload.get("size"):
            raise HubError(404, f"LFS object {payload.get('oid')} was not uploaded (or has another size)")
        return _Response.json({"message": "Verified"})

    def _storage_upload(self, request: _Request, repo_id: str, oid: str) -> _Response:
        self._check_signature(request, "PUT", repo_id, oid)
        if hashlib.sha256(request.body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not hash to {oid}")
        path = self.repo(repo_id, request.repo_type).lfs_object_path(oid)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{oid}.{secrets.token_hex(4)}.partial")
        partial.write_bytes(request.body)
        partial.replace(path)  # atomic: a reader never sees half an object
        return _Response(headers={"ETag": f'"{hashlib.md5(request.body).hexdigest()}"'})

    def _commit(self, request: _Request, repo_id: str, revision: str) -> _Response:
        repo = self._writable(request, repo_id)
        lines = [json.loads(line) for line in request.body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "A commit payload starts with a 'header' line")
        header = lines[0]["value"]
        additions: dict[str, bytes] = {}
        deletions, folder_deletions = [], []
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            path = self._checked_path(value["path"])
            if key == "file":
                additions[path] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                stored = repo.lfs_object_path(value["oid"])
                if not stored.exists():
                    raise HubError(422, f"LFS object {value['oid']} for {path} was never uploaded")
                additions[path] = lfs_pointer(value["oid"], stored.stat().st_size)
            elif key == "deletedFile":
                deletions.append(path)
            elif key == "deletedFolder":
                folder_deletions.append(path)
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")

        with self._write_lock:
            create_pr = request.flag("create_pr")
            if create_pr:  # a new refs/pr/N, branching off the target branch
                parent = self._commit_at(repo, f"refs/heads/{revision}")
                number = len(repo.refs("refs/pr/")) + 1
                ref = f"refs/pr/{number}"
            else:
                ref = f"refs/heads/{revision}"
                parent = repo.resolve(ref)
                if parent is None:
                    raise HubError(404, f"Invalid rev id: {revision} is not a branch", "RevisionNotFound")
            if header.get("parentCommit") not in (None, parent):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            commit = repo.commit(
                ref, parent, author=request.user, message=header.get("summary") or "Update",
                description=header.get("description") or "", additions=additions,
                deletions=tuple(deletions), folder_deletions=tuple(folder_deletions), new_ref=create_pr,
            )  # fmt: skip
        repo_url = f"{self.endpoint}/{self._url_prefix(request)}{repo_id}"
        result = {"success": True, "commitOid": commit, "commitUrl": f"{repo_url}/commit/{commit}", "hookOutput": ""}
        if create_pr:
            result["pullRequestUrl"] = f"{repo_url}/discussions/{number}"
        return _Response.json(result)

    @staticmethod
    def _checked_path(path: str) -> str:
        parts = path.split("/")
        if not path or path.startswith("/") or any(part in ("", ".", "..", ".git") for part in parts):
            raise HubError(400, f"Invalid path in repo: {path!r}")
        return path

    # -- downloads --------------------------------------------------------------------------------------------------
    def _resolve(self, request: _Request, repo_id: str, revision: str, path: str) -> _Response:
        repo = self._readable(request, repo_id)
        commit = self._commit_at(repo, revision)
        entry = repo.tree(commit).get(path)
        if entry is None or entry.type != "file":
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit})
        headers = {"X-Repo-Commit": commit}
        if entry.lfs_oid is not None:
            # Like the Hub: LFS content comes from the storage host, through a signed URL that needs no token.
            location = self._signed_url("GET", "objects", repo_id, entry.lfs_oid, request.repo_type)
            headers.update({"Location": location, "ETag": f'"{entry.oid}"', "X-Linked-Etag": f'"{entry.lfs_oid}"',
                            "X-Linked-Size": str(entry.size)})  # fmt: skip
            return _Response(302, b"", headers)
        headers["ETag"] = f'"{entry.oid}"'
        return _ranged(request, _Response(200, repo.read_file(entry), headers))

    def _storage_download(self, request: _Request, repo_id: str, oid: str) -> _Response:
        self._check_signature(request, "GET", repo_id, oid)
        path = self.repo(repo_id, request.repo_type).lfs_object_path(oid)
        if not path.exists():
            raise HubError(404, "No such object")
        headers = {"ETag": f'"{oid}"', "Content-Type": "application/octet-stream"}
        return _ranged(request, _Response(200, path.read_bytes(), headers))


def _ranged(request: _Request, response: _Response) -> _Response:
    """A ``Range: bytes=A-B`` (or ``A-``, ``-N``) request gets 206 and those bytes, as from the Hub and its storage:
    ``HfFileSystem`` reads a parquet file's footer, then its row groups, this way (``--streaming``)."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", request.headers.get("range", "").strip())
    if match is None or not any(match.groups()):
        return response
    size = len(response.body)
    first, last = match.groups()
    start, stop = (size - int(last), size) if not first else (int(first), min(size, int(last) + 1) if last else size)
    start = max(0, start)
    if start >= size:
        return _Response(416, b"", {"Content-Range": f"bytes */{size}"})
    headers = {**response.headers, "Content-Range": f"bytes {start}-{stop - 1}/{size}", "Accept-Ranges": "bytes"}
    return _Response(206, response.body[start:stop], headers)


class _HubHTTPServer(ThreadingHTTPServer):
    """One listening port of the test Hub (its API, or its storage) on a free port of 127.0.0.1."""

    daemon_threads = True

    def __init__(self, hub: HubServer, role: str, routes: list):
        super().__init__(("127.0.0.1", 0), _HubRequestHandler)
        self.hub, self.role, self.routes = hub, role, routes


class _HubRequestHandler(BaseHTTPRequestHandler):
    """HTTP in and out only: parses a ``_Request``, lets ``HubServer.handle`` answer, writes the ``_Response``."""

    protocol_version = "HTTP/1.1"  # keep-alive, like the real Hub; every response carries a Content-Length
    server: _HubHTTPServer

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        fault = self.server.hub.take_fault(self.server.routes, self.command, url.path)
        if fault is not None and fault.status is None:
            return self._drop_connection()
        request = _Request(
            method=self.command,
            path=url.path,
            query=parse_qs(url.query, keep_blank_values=True),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=self._read_body(),
            raw_query=url.query,
        )
        self._send(self.server.hub.handle(self.server.role, self.server.routes, request, fault))

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def _drop_connection(self) -> None:
        """Read half the body, then close the socket unanswered: a connection lost in the middle of a transfer."""
        url = urlsplit(self.path)
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.server.hub.requests.append(RecordedRequest(self.server.role, self.command, self.path, headers, None))
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(max(1, length // 2))
        logger.debug("%s: dropped the connection of %s %s", self.server.role, self.command, url.path)
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF closing each chunk
            while self.rfile.readline().strip():  # optional trailers, up to the final blank line
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, response: _Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if "Content-Length" not in response.headers:
            self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("%s: %s", self.server.role, format % args)
