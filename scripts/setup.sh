#!/usr/bin/env bash
# Create .venv and install hubclf with its test extras. Idempotent: a second run only re-checks.
# Used by scripts/demo.sh, scripts/test.sh and .ci/run, so all three set up the same way.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${HUBCLF_VENV:-.venv}

# pip that runs out of disk stops half-way with "[Errno 28] No space left on device" (seen on a CI machine), so an
# install first checks that the venv's disk can hold it, and says so in one line. Sizes measured in a new venv.
require_free_gib() {  # GIB WHAT
    local parent free_kib
    parent=$(dirname "$VENV")
    mkdir -p "$parent"
    free_kib=$(df -Pk "$parent" | awk 'NR == 2 {print $4}')
    if [ "$free_kib" -lt $(($1 * 1024 * 1024)) ]; then
        echo "[setup] error: $2 needs about $1 GiB free in $(cd "$parent" && pwd), which has $((free_kib / 1024))" \
            "MiB free; free some space, or set HUBCLF_VENV to a folder on a larger disk" >&2
        exit 2
    fi
}

if [ ! -x "$VENV/bin/python" ]; then
    require_free_gib 8 "a new $VENV (torch's CUDA build and hubclf's dependencies: 6.6 GiB installed)"
    echo "[setup] creating $VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi

# torch/torchvision are pinned explicitly: they are the tested versions and, on this workplace's machines,
# pip takes them from local disk instead of downloading several GB.
if ! "$VENV/bin/python" -c "import torch, torchvision; assert torch.__version__.startswith('2.14.1')" 2>/dev/null; then
    require_free_gib 6 "torch 2.14.1 + torchvision 0.29.1 (5.3 GiB installed)"
    echo "[setup] installing torch 2.14.1 + torchvision 0.29.1 (a few minutes on first run)"
    "$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi

EXTRAS=${HUBCLF_EXTRAS:-test,transformers,app,export,plots,docs}
echo "[setup] installing hubclf[$EXTRAS] (editable)"
"$VENV/bin/python" -m pip install -q -e ".[${EXTRAS}]"
