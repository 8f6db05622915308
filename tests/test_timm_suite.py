"""timm's own ``tests/test_models.py``, for the installed timm version, run on every hubclf model.

The file comes from timm's source distribution on the package index (``pip download --no-binary :all:``) and is
cached under ``~/.cache/hubclf/timm-tests/<version>/`` (``HUBCLF_TIMM_TESTS_CACHE`` moves the cache); it is never
copied into this repository. Without the package index and without a cached copy the test fails, it never skips.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from importlib.metadata import version
from pathlib import Path

import pytest
import timm

import hubclf  # noqa: F401

SELECTION = "hubclf and not pretrained"  # pretrained tests would download torchvision's real weights
DOWNLOAD_TIMEOUT_S = 600
SUITE_TIMEOUT_S = 3600


def cached_timm_tests(timm_version: str) -> Path:
    """Folder holding timm ``timm_version``'s ``tests/`` and ``pyproject.toml`` (its pytest markers), downloaded
    once. Only those are unpacked: the sdist's ``timm/`` sources must not shadow the installed timm."""
    root = Path(os.environ.get("HUBCLF_TIMM_TESTS_CACHE") or Path.home() / ".cache" / "hubclf" / "timm-tests")
    target = root / timm_version
    if (target / "tests" / "test_models.py").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"timm=={timm_version}", "--dest", tmp, "--quiet"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"pip download of timm=={timm_version}'s source distribution timed out after "
                        f"{DOWNLOAD_TIMEOUT_S} s: is the package index reachable?", pytrace=False)
        sdists = sorted(Path(tmp).glob("timm-*.tar.gz"))
        if done.returncode != 0 or not sdists:
            pip_said = (done.stderr or done.stdout).strip().splitlines()[-3:]
            pytest.fail(f"cannot run timm's own model tests: pip could not download timm=={timm_version}'s source "
                        f"distribution from the package index ({' | '.join(pip_said) or 'no sdist'})", pytrace=False)
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(sdists[0]) as sdist:
            prefix = f"{sdist.getnames()[0].split('/')[0]}/"
            members = []
            for member in sdist.getmembers():
                relative = member.name.removeprefix(prefix)
                if relative == "pyproject.toml" or relative.startswith("tests/"):
                    member.name = relative
                    members.append(member)
            sdist.extractall(unpacked, members=members, filter="data")
        if not (unpacked / "tests" / "test_models.py").is_file():
            pytest.fail(f"timm=={timm_version}'s source distribution has no tests/test_models.py", pytrace=False)
        try:
            unpacked.rename(target)  # atomic: a concurrent or interrupted run never sees a half-unpacked folder
        except OSError:
            if not (target / "tests" / "test_models.py").is_file():  # another run won the race
                raise
    return target


def _junit_results(path: Path) -> dict[str, list[str]]:
    results: dict[str, list[str]] = {"passed": [], "failed": [], "skipped": []}
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = "passed"
        if case.find("failure") is not None or case.find("error") is not None:
            outcome = "failed"
        elif case.find("skipped") is not None:
            outcome = "skipped"
        results[outcome].append(case.get("name", ""))
    return results


@pytest.mark.slow
def test_timm_test_models_pass_on_every_hubclf_model(tmp_path, capsys):
    timm_version = version("timm")
    assert timm_version == timm.__version__
    suite = cached_timm_tests(timm_version)
    assert sorted(p.name for p in suite.iterdir()) == ["pyproject.toml", "tests"]  # never the sdist's timm/
    junit = tmp_path / "timm-test-models.xml"
    cmd = [
        sys.executable, "-m", "pytest", "tests/test_models.py", "-k", SELECTION,
        "-p", "hubclf",  # imported as a plugin, before collection, so timm.list_models() sees the hubclf models
        "-p", "no:cacheprovider", "-q", "-rfE", "-W", "ignore::pytest.PytestUnknownMarkWarning",
        f"--junitxml={junit}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    try:
        done = subprocess.run(cmd, cwd=suite, env=env, capture_output=True, text=True, timeout=SUITE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"timm's test_models.py did not finish in {SUITE_TIMEOUT_S} s", pytrace=False)
    lines = done.stdout.strip().splitlines()
    summary = lines[-1].strip("= ") if lines else "(no output)"
    with capsys.disabled():
        print(f"\n[timm {timm_version} tests/test_models.py -k {SELECTION!r}] {summary}")

    assert junit.is_file(), f"timm's test_models.py did not run (exit {done.returncode}):\n{done.stdout}{done.stderr}"
    results = _junit_results(junit)
    assert not results["failed"], f"{len(results['failed'])} of timm's tests failed:\n" + "\n".join(lines[-60:])
    assert done.returncode == 0, f"pytest exited with {done.returncode}:\n{done.stdout[-4000:]}{done.stderr[-2000:]}"
    # Every registered hubclf model went through timm's tests, not just some of them.
    passed_models = {m for name in results["passed"] for m in re.findall(r"hubclf_\w+?(?=[.\]-]|$)", name)}
    assert passed_models == set(timm.list_models("hubclf_*")), f"models with passing tests: {sorted(passed_models)}"


def test_unreachable_package_index_fails_the_run_with_a_clear_message(tmp_path, monkeypatch):
    """No cached copy and no package index: a failure that says why, never a skip or a silent pass."""
    monkeypatch.setenv("HUBCLF_TIMM_TESTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))  # empty: nothing to find
    with pytest.raises(pytest.fail.Exception, match=r"pip could not download timm==\S+'s source distribution"):
        cached_timm_tests(version("timm"))
    assert not (tmp_path / "cache" / version("timm")).exists()
