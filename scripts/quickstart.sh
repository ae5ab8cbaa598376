#!/usr/bin/env bash
# Set up (idempotent), then answer an instruction about a document with the bundled model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
MODEL=checkpoints/deepsynth-demo  # the committed demo model (recipes/demo); the engine default too
# The demo model answers from the page, then transcribes it (README, "The demo model").
for instruction in "What was the Q3 revenue?" "Transcribe the document."; do
  python -m deepsynth.inference.instruct --model "$MODEL" \
    --document examples/financial_report.txt \
    --instruction "$instruction" --max-length 400 --json
done
