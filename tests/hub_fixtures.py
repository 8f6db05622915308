"""pytest fixtures for a local Hub over real HTTP: the commit-API test server and olah serving the same repos.

Registered as a plugin from ``tests/conftest.py`` (which also gives each test session its own ``HF_HOME``).

- ``hub_server`` (session): ``tests/hubserver.py``'s ``HubServer`` on a free 127.0.0.1 port, with ``.endpoint``,
  ``.token`` (a write token), ``.root`` (the git repos), ``.requests`` (every request received) and
  ``.find_secret(s)``.
- ``use_hub`` (function): points every Hub client of this process at ``hub_server`` for one test.
- ``olah_server`` (session) / ``use_olah`` (function): the same for olah 0.5.4, serving ``hub_server.root``
  read-only and offline. Skipped when ``.venv-olah`` is missing (``bash tests/olah/install.sh`` creates it).
- ``new_repo_id`` (function): a factory of unique repo ids in the test user's namespace.

Example:
    >>> def test_roundtrip(use_hub, new_repo_id, tmp_path):
    ...     repo_id = new_repo_id("roundtrip")
    ...     HfApi(token=use_hub.token).create_repo(repo_id)
"""

from __future__ import annotations

import os
import string
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from huggingface_hub import constants, hf_api, hf_file_system
from huggingface_hub.utils import _http

from tests.hubserver import DEFAULT_USER, HubServer
from tests.launch import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
OLAH_DIR = Path(__file__).resolve().parent / "olah"
OLAH_CLI = REPO_ROOT / ".venv-olah" / "bin" / "olah-cli"
OLAH_STARTUP_TIMEOUT_S = 60  # generous: the test machines share 2 cores between several jobs


def point_hub_clients_at(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Make ``HfApi()``, ``hf_hub_download``, timm's ``hf-hub:``, transformers and 🤗 datasets use ``endpoint`` until
    undone.

    huggingface_hub reads ``HF_ENDPOINT`` once, at import, into several module-level values; each is patched here
    (``monkeypatch`` restores them). Xet is switched off because the client picks Xet uploads on its own whenever
    ``hf_xet`` is installed, without asking the server, and neither local server speaks Xet.

    Example:
        >>> point_hub_clients_at(monkeypatch, "http://127.0.0.1:41234")
    """
    monkeypatch.setenv("HF_ENDPOINT", endpoint)  # for subprocesses and code that reads the environment late
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {urlsplit(endpoint).hostname})
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    # Origins whose redirects keep the Authorization header: the configured endpoint is one of them.
    monkeypatch.setattr(_http, "_HUB_ORIGINS", _http._HUB_ORIGINS | {_http._url_origin(endpoint)})
    # Objects built at import time with the endpoint of that moment: `huggingface_hub.create_repo`, `model_info`,
    # `upload_folder`... are bound methods of `hf_api.api`; `hffs` is the default HfFileSystem.
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)
    monkeypatch.setattr(hf_file_system.hffs, "endpoint", endpoint)
    monkeypatch.setattr(hf_file_system.hffs._api, "endpoint", endpoint)
    # 🤗 datasets keeps its own copy of HF_ENDPOINT (load_dataset / push_to_hub build their HfApi/HfFileSystem on it).
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", endpoint)
    monkeypatch.setattr(datasets.config, "HUB_DATASETS_URL", endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}")


def set_hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """``HF_HUB_OFFLINE=1`` for the rest of the test, including huggingface_hub's copy read at import time.

    Example:
        >>> set_hub_offline(monkeypatch)
        >>> hf_hub_download(repo_id, "config.json")  # served from the cache, no HTTP
    """
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    """The commit-API test server (``tests/hubserver.py``), for the whole session."""
    with HubServer(tmp_path_factory.mktemp("hub-repos")) as server:
        yield server


@pytest.fixture
def use_hub(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """Every Hub client talks to ``hub_server`` during the test. Tokens are not set: pass ``hub_server.token``.

    Faults a test injected (``hub_server.fail_next``...) and did not use up are cleared afterwards.
    """
    point_hub_clients_at(monkeypatch, hub_server.endpoint)
    yield hub_server
    hub_server.clear_faults()


@pytest.fixture
def new_repo_id() -> Callable[[str], str]:
    """A factory of unique repo ids in the test user's namespace.

    Example:
        >>> new_repo_id("push")
        'hubclf-test/push-1a2b3c4d'
    """

    def make(prefix: str = "repo") -> str:
        return f"{DEFAULT_USER}/{prefix}-{uuid.uuid4().hex[:8]}"

    return make


@dataclass
class OlahServer:
    """A running olah process; ``endpoint`` is what clients use, ``log_path`` says what went wrong."""

    endpoint: str
    process: subprocess.Popen
    config_path: Path
    log_path: Path


def _wait_until_listening(server: OlahServer) -> None:
    deadline = time.monotonic() + OLAH_STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            urllib.request.urlopen(f"{server.endpoint}/api/whoami-v2", timeout=2)
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer means it is serving
        except OSError:
            time.sleep(0.2)
    server.process.kill()
    log = server.log_path.read_text(errors="replace")[-3000:]
    exit_code = server.process.poll()
    raise RuntimeError(f"olah did not start within {OLAH_STARTUP_TIMEOUT_S}s (exit code {exit_code}):\n{log}")


@pytest.fixture(scope="session")
def olah_server(hub_server: HubServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OlahServer]:
    """olah 0.5.4 serving ``hub_server.root`` read-only and offline, on a free 127.0.0.1 port.

    Command line (run from a temp dir, with the config rendered from ``tests/olah/olah.toml.template``)::

        .venv-olah/bin/olah-cli -c <tmp>/olah.toml --log-path <tmp>/logs

    where olah.toml holds ``[basic] host = "127.0.0.1"``, ``port``, ``mirror-netloc``, ``repos-path`` (its unused
    cache) and ``mirrors-path = ["<hub_server.root>"]``, and ``[accessibility] offline = true``; offline mode and
    mirrors-path can only be set in the TOML file. olah serves every mirrored repo as public (private repos too)
    and needs an explicit ``revision=`` for ``model_info``.
    """
    if not OLAH_CLI.exists():
        pytest.skip(f"olah is not installed ({OLAH_CLI} is missing): run `bash tests/olah/install.sh`")
    workdir = tmp_path_factory.mktemp("olah")
    port = free_port()
    config = string.Template((OLAH_DIR / "olah.toml.template").read_text()).substitute(
        port=port, repos_path=workdir / "cache", mirrors_path=hub_server.root
    )
    config_path = workdir / "olah.toml"
    config_path.write_text(config)
    log_path = workdir / "olah.out"
    command = [str(OLAH_CLI), "-c", str(config_path), "--log-path", str(workdir / "logs")]
    with open(log_path, "wb") as log:
        # HF_ENDPOINT or proxies from the test environment must not reach olah: it is an upstream-less mirror here.
        env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
        process = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = OlahServer(f"http://127.0.0.1:{port}", process, config_path, log_path)
    try:
        _wait_until_listening(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def use_olah(olah_server: OlahServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[OlahServer]:
    """Every Hub client reads from olah during the test, starting from an empty Hub cache.

    The cache is emptied because olah answers with the same ETags as ``hub_server`` (git blob SHA, or sha256 for LFS
    files): with the session cache, files fetched earlier from ``hub_server`` would be reused and no byte would come
    through olah. olah is read-only: push with ``HfApi(endpoint=hub_server.endpoint)``, or request ``use_hub`` and
    call ``point_hub_clients_at(monkeypatch, olah_server.endpoint)`` once the push is done.
    """
    point_hub_clients_at(monkeypatch, olah_server.endpoint)
    cache = tmp_path / "hf-hub-cache-olah"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    yield olah_server
