"""What a ``.pth`` hook that installs ``hubclf/_timm_hook.py`` at interpreter start would cost every Python process.

Builds bare venvs (no pip, no packages) from this interpreter's base Python in a temporary folder and times
``python -c pass`` in each, interleaved, hyperfine-style (warm-up runs, then ``--runs`` runs of every variant):

- **none**: no ``.pth`` (the baseline);
- **top-level**: ``hubclf-timm-hook.pth`` = ``import _hubclf_timm_hook; _hubclf_timm_hook.install()``, the hook as a
  top-level module next to the package (as setuptools ships ``_distutils_hack`` for ``distutils-precedence.pth``);
- **top-level, opted out**: the same with ``HUBCLF_NO_TIMM_HOOK=1``;
- **package**: ``import hubclf._timm_hook; hubclf._timm_hook.install()``, where ``hubclf/__init__.py`` imports what
  the lazy facade of the new layout imports (``importlib``, ``typing``, ``hubclf._version``, ``hubclf._timm_hook``).

Every site-packages is byte-compiled first, as pip does on install. It also prints ``python -X importtime`` lines
of one run of each variant.

    python scripts/pth_startup.py               # 300 runs per variant (about a minute)
    python scripts/pth_startup.py --runs 50
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import venv
from pathlib import Path

HOOK = Path(__file__).resolve().parents[1] / "hubclf" / "_timm_hook.py"
# What the new layout's lazy `hubclf/__init__.py` imports at `import hubclf` (its names are resolved on first use).
FACADE = '''from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hubclf import _timm_hook
from hubclf._version import __version__

_timm_hook.install()
'''


def make_venv(root: Path, name: str, files: dict[str, str]) -> Path:
    """A bare venv with ``files`` (relative path in site-packages -> text) installed and byte-compiled."""
    venv.EnvBuilder(with_pip=False).create(root / name)
    python = root / name / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    for relative, text in files.items():
        path = Path(purelib, relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    compileall.compile_dir(purelib, quiet=1)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300, help="timed runs per variant (default 300)")
    args = parser.parse_args()
    hook = HOOK.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="hubclf-pth-") as tmp:
        root = Path(tmp)
        top_level = {"_hubclf_timm_hook.py": hook,
                     "hubclf-timm-hook.pth": "import _hubclf_timm_hook; _hubclf_timm_hook.install()\n"}  # fmt: skip
        package = {"hubclf/__init__.py": FACADE, "hubclf/_version.py": '__version__ = "0.1.0"\n',
                   "hubclf/_timm_hook.py": hook,
                   "hubclf-timm-hook.pth": "import hubclf._timm_hook; hubclf._timm_hook.install()\n"}  # fmt: skip
        pythons = {"none": make_venv(root, "none", {}), "top-level": make_venv(root, "top", top_level),
                   "package": make_venv(root, "package", package)}  # fmt: skip
        clean = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        variants = {
            "no .pth": (pythons["none"], clean),
            ".pth -> top-level hook module": (pythons["top-level"], clean),
            ".pth -> top-level, HUBCLF_NO_TIMM_HOOK=1": (pythons["top-level"], {**clean, "HUBCLF_NO_TIMM_HOOK": "1"}),
            ".pth -> hubclf._timm_hook (package)": (pythons["package"], clean),
        }
        for name, (python, env) in variants.items():
            lines = subprocess.run([python, "-X", "importtime", "-c", "pass"], env=env, capture_output=True,
                                   text=True, check=True).stderr.splitlines()  # fmt: skip
            shown = [line for line in lines if line.rstrip().endswith(("| site", "hubclf", "_timm_hook", "typing"))]
            print(f"-X importtime, {name}:\n  " + "\n  ".join(shown))
        times: dict[str, list[float]] = {name: [] for name in variants}
        for run in range(5 + args.runs):  # 5 warm-up rounds, not counted
            for name, (python, env) in variants.items():
                start = time.perf_counter()
                subprocess.run([python, "-c", "pass"], env=env, check=True)
                if run >= 5:
                    times[name].append((time.perf_counter() - start) * 1000)
    base = statistics.median(times["no .pth"])
    print(f"\npython -c pass, {args.runs} interleaved runs each ({sys.version.split()[0]}, "
          f"{sysconfig.get_platform()}):")  # fmt: skip
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:44s} median {median:6.2f} ms  mean {statistics.mean(values):6.2f} ± "
              f"{statistics.stdev(values):4.2f} ms  overhead {median - base:+6.2f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
