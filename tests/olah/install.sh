#!/usr/bin/env bash
# Install olah 0.5.4 (the independent, read-only Hub server the tests load pushed repos from) into .venv-olah.
# It gets its own venv so that its pinned dependencies (fastapi, pydantic, httpx, huggingface_hub...) never touch
# the main .venv. Idempotent and quiet: a second run only checks the installed version.
set -euo pipefail
cd "$(dirname "$0")/../.."

OLAH_VERSION=0.5.4
VENV=.venv-olah
PYTHON=${PYTHON:-python3}

if "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('olah') != '$OLAH_VERSION')" 2>/dev/null; then
    exit 0
fi
echo "[olah] installing olah==$OLAH_VERSION into $VENV"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "olah==$OLAH_VERSION"
