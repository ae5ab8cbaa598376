#!/usr/bin/env bash
# Create .venv (once) and install DeepSynth with its test dependencies. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
# Headless Chromium for the web UI test (Debian packages; Playwright drives this binary, it never downloads one).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver
  else
    echo "note: install Chromium for the UI test: sudo apt-get install chromium chromium-driver" >&2
  fi
fi
# torch first: 2.13.0 is the CPU wheel our machines hold; a looser spec would pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
# DS_BUILD_OPS=0: DeepSpeed installs without compiling its C++ ops (they build on first use, if ever)
DS_BUILD_OPS=0 python -m pip install -q -e ".[dev]"
