#!/usr/bin/env bash
# The main job on a fresh machine (placeholder until the demo issue): set-up, then a model smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/smoke.py
