#!/usr/bin/env bash
# One command from a fresh clone to a full test run: set-up, lint, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash tests/olah/install.sh   # olah (the independent read-only Hub server) lives in its own venv
bash scripts/install-browser.sh   # headless Chromium + chromedriver (apt) for the hubclf app browser test
.venv/bin/python -m ruff check hubclf tests scripts
# The documentation site, into site/: any warning (a broken link or anchor, a page left out of the nav, a docstring
# mkdocstrings cannot render) fails. The two variables silence banners that plugins print about MkDocs' future.
NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true .venv/bin/python -m mkdocs build --strict --quiet
# Everything is offline: Hub traffic only ever goes to servers the tests start on 127.0.0.1. One pytest worker per
# CPU (pytest-xdist): most tests wait on a subprocess's imports or on I/O. The bench's end-to-end smoke runs
# (`-m bench`, about 13 CPU-minutes) check scripts/bench.py, not hubclf: run them with `bash scripts/test.sh -m bench`.
exec env HF_HUB_DISABLE_TELEMETRY=1 .venv/bin/python -m pytest -n auto -m "not bench" "$@"
