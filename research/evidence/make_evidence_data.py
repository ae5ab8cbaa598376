"""Evidence-first answers (experiment): rewrite Q&A rows so the target is the rendered line that holds the answer,
then the answer on its own line ("quarter was $129.7M.\n$129.7M"). The decoder then reads the value in left-to-right
context, as when transcribing, and copies it from its own text. Other rows (and Q&A rows whose answer is not on one
rendered line) are unchanged.

    python research/evidence/make_evidence_data.py --processor checkpoints/deepsynth-demo \
        --rows runs/demo/data/D2/train.jsonl --out runs/demo/data/D2_evidence/train.jsonl
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from processing_deepsynth import DeepSynthProcessor  # noqa: E402


def evidence_line(ip, text: str, answer: str) -> str | None:
    """The first rendered line (as the page shows it) that contains `answer`, or None."""
    for page in ip.layout_text(text)[: ip.max_pages]:
        for line in page:
            if answer in line:
                return line.strip()
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processor", required=True)
    parser.add_argument("--rows", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    ip = DeepSynthProcessor.from_pretrained(args.processor).image_processor
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    changed = total = 0
    with open(args.rows) as src, open(out, "w") as dst:
        for row in map(json.loads, src):
            if row["task"] == "qa":
                total += 1
                line = evidence_line(ip, row["text"], row["answer"])
                if line is not None:
                    row = dict(row, answer=f"{line}\n{row['answer']}")
                    changed += 1
            dst.write(json.dumps(row) + "\n")
    print(f"{changed} of {total} Q&A rows answer evidence-first -> {out}")


if __name__ == "__main__":
    main()
