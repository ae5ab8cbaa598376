#!/usr/bin/env bash
# Set up (idempotent), then answer an instruction about a document with the bundled model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
MODEL=checkpoints/deepsynth-demo
if [ ! -f "$MODEL/config.json" ]; then
  # Not an answer-quality model: the trained demo checkpoint is not in this checkout yet (see README, "Status").
  echo "!! $MODEL is missing: using a tiny RANDOM checkpoint, so the answer below is noise." >&2
  MODEL=.quickstart-tiny
  [ -f "$MODEL/config.json" ] || python scripts/make_tiny_checkpoint.py "$MODEL"
fi
python -m deepsynth.inference.instruct --model "$MODEL" \
  --document examples/financial_report.txt \
  --instruction "What was the Q3 revenue?" --max-length 32 --json
