#!/usr/bin/env bash
# The demo model's ablation (issue 7): stage C again from the same stage-B checkpoint, same data, steps and seed,
# with one thing changed; then every variant is scored on the held-out splits by evaluate_demo.py.
#   (a) fusion on          recipes/demo/stage_c.json as is (runs/demo/C, trained by the main recipe)
#   (b) fusion off         the instruction only as decoder text (the encoder is dropped from the B checkpoint)
#   (c) no instruction     every row's instruction replaced by one fixed text (no task information at all)
#   (d) random encoder     MiniLM's architecture and tokenizer with random weights, frozen like MiniLM
# Usage (repo root, venv active): bash recipes/demo/ablations.sh [b c d]
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p runs/demo/logs runs/demo/eval
common=(--config recipes/demo/stage_c.json --do_predict False)
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(b c d)
for variant in "${variants[@]}"; do
  case $variant in
    b) out=runs/demo/C_no_fusion;       label="(b) fusion off: instruction as decoder text"
       args=(--use_text_encoder False) ;;
    c) out=runs/demo/C_no_instruction;  label="(c) no instruction"
       args=(--use_text_encoder False --constant_instruction "Answer.") ;;
    d) out=runs/demo/C_random_encoder;  label="(d) random frozen encoder"
       args=(--text_encoder_random_init True) ;;
    *) echo "unknown variant $variant (b, c or d)" >&2; exit 2 ;;
  esac
  python run_instruct.py "${common[@]}" "${args[@]}" --output_dir "$out" > "runs/demo/logs/C_$variant.log" 2>&1
  extra=()
  [ "$variant" = c ] && extra=(--constant-instruction "Answer.")
  python recipes/demo/evaluate_demo.py --model "$out" --label "$label" "${extra[@]}" \
      --out "runs/demo/eval/$variant.json" > "runs/demo/logs/eval_$variant.log" 2>&1
done
