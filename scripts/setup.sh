#!/usr/bin/env bash
# Create .venv and install hubclf with its test extras. Idempotent: a second run only re-checks.
# Used by scripts/demo.sh, scripts/test.sh and .ci/run, so all three set up the same way.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${HUBCLF_VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi

# torch/torchvision are pinned explicitly: they are the tested versions and, on this workplace's machines,
# pip takes them from local disk instead of downloading several GB.
if ! "$VENV/bin/python" -c "import torch, torchvision; assert torch.__version__.startswith('2.14.1')" 2>/dev/null; then
    echo "[setup] installing torch 2.14.1 + torchvision 0.29.1 (a few minutes on first run)"
    "$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi

EXTRAS=${HUBCLF_EXTRAS:-test,transformers,app,export,plots}
echo "[setup] installing hubclf[$EXTRAS] (editable)"
"$VENV/bin/python" -m pip install -q -e ".[${EXTRAS}]"
