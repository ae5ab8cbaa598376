#!/usr/bin/env bash
# The demo model's ablation (issue 7): stages C and D again from the same stage-B checkpoint, same data, steps and
# seed, with one thing changed; then every variant's stage-D model is scored on the held-out splits.
#   (a) fusion on          recipes/demo/stage_c.json and stage_d.json as they are (runs/demo/C, runs/demo/D)
#   (b) fusion off         the instruction only as decoder text (the encoder is dropped from the B checkpoint)
#   (c) no instruction     every row's instruction replaced by one fixed text (no task information at all)
#   (d) random encoder     MiniLM's architecture and tokenizer with random weights, frozen like MiniLM
# A stage whose final model is already saved is not rerun; a killed stage resumes from its last checkpoint.
# Usage (repo root, venv active): bash recipes/demo/ablations.sh [b c d]
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p runs/demo/logs runs/demo/eval
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(b c d)
for variant in "${variants[@]}"; do
  case $variant in
    b) name=no_fusion;       label="(b) fusion off: instruction as decoder text"
       args=(--use_text_encoder False) ;;
    c) name=no_instruction;  label="(c) no instruction"
       args=(--use_text_encoder False --constant_instruction "Answer.") ;;
    d) name=random_encoder;  label="(d) random frozen encoder"
       args=(--text_encoder_random_init True) ;;
    *) echo "unknown variant $variant (b, c or d)" >&2; exit 2 ;;
  esac
  from=()  # stage C starts from the B checkpoint named in stage_c.json; each later stage from this variant's last
  for stage in C D; do
    out=runs/demo/${stage}_$name
    [ -f "$out/model.safetensors" ] ||
      python run_instruct.py --config "recipes/demo/stage_${stage,,}.json" --do_predict False "${args[@]}" "${from[@]}" \
          --output_dir "$out" > "runs/demo/logs/${stage}_$variant.log" 2>&1
    from=(--model_name_or_path "$out" --processor_name_or_path "$out")
  done
  extra=()
  [ "$variant" = c ] && extra=(--constant-instruction "Answer.")
  python recipes/demo/evaluate_demo.py --model "$out" --label "$label" "${extra[@]}" \
      --out "runs/demo/eval/$variant.json" > "runs/demo/logs/eval_$variant.log" 2>&1
done
