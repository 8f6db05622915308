#!/usr/bin/env bash
# The README's first command: set-up (.venv + install, scripts/setup.sh), then the offline transfer-learning demo
# (scripts/demo.py: data -> local Hub -> base model -> transfer vs. scratch -> publish, reload, predict -> summary).
# Arguments go to scripts/demo.py: `bash scripts/demo.sh --smoke` (~1 min), `--help` for the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
setup_started=$SECONDS
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py --setup-seconds $((SECONDS - setup_started)) "$@"
