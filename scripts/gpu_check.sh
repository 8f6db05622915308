#!/usr/bin/env bash
# Every GPU measurement docs/performance.md needs, in one command of under 8 minutes (issues 21 and 24):
#
#   bash scripts/gpu_check.sh                    # prints the report: paste it into the issue or the docs
#   bash scripts/gpu_check.sh --json gpu.json    # and writes it as JSON
#   PYTHON=/path/to/python bash scripts/gpu_check.sh
#
# It runs `python scripts/bench.py gpu`: the device's name; its matmul peak (fp32 and bf16 torch.mm); AlexNet and
# VGG11 training img/s in fp32 and bf16 with their MFU; the input pipeline's img/s with CPU decoding (hubclf's
# loader) and with batched GPU decoding (torchvision), and whether hubclf decodes on the GPU yet; hubclf against
# the plain PyTorch loop on one GPU; the compute floor on CUDA, eager, compiled and with CUDA graphs. A part that
# fails prints one line and the others still run; parts that would overrun the budget are skipped.
#
# Without a GPU it stops at once with one line and exit status 2.
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
# The flags first (help and usage errors come back at once, GPU or not) ...
"$PYTHON" scripts/bench.py gpu --parse-only "$@" || exit $?
for arg in "$@"; do
    case "$arg" in -h | --help) exit 0 ;; esac
done
# ... then the GPU, without importing torch where there is no driver.
if ! compgen -G "/dev/nvidia[0-9]*" >/dev/null && ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check.sh: error: no NVIDIA GPU here (no /dev/nvidia* device, no nvidia-smi); run it on a machine with one" >&2
    exit 2
fi
# 8 minutes at most: the Python side budgets 450 s and skips what would not fit; this is the backstop.
exec timeout --signal=INT --kill-after=10 470 "$PYTHON" scripts/bench.py gpu --budget 450 "$@"
