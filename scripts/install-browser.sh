#!/usr/bin/env bash
# Install headless Chromium and its driver for tests/test_app.py (Debian packages `chromium`, `chromium-driver`).
# Idempotent: does nothing when both are already there. Needs root and apt-get (as on CI); otherwise it says so and
# exits 0, and the browser test then fails in CI (CI=true) with the same hint, or is skipped locally.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "[install-browser] chromium/chromedriver missing and cannot apt-get them here (needs root + apt-get):" \
        "sudo apt-get install chromium chromium-driver" >&2
    exit 0
fi
echo "[install-browser] installing chromium + chromium-driver with apt-get (a few minutes on first run)"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }; then
    echo "[install-browser] apt-get could not install chromium chromium-driver; the browser test will say so" >&2
fi
