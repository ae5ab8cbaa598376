"""Held-out Q&A of an evidence-first model (make_evidence_data.py): the answer is the last line of what it writes.
Same rows, metrics and greedy batched engine path as recipes/demo/evaluate_demo.py; on a model that answers directly
the last line is the whole answer, so the numbers equal evaluate_demo's Q&A rows.

    python research/evidence/evaluate_evidence.py --model runs/demo/E_evidence [--data runs/demo/data/eval]
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from deepsynth.evaluation.evaluate import evaluate  # noqa: E402
from deepsynth.evaluation.metrics import compute_metrics  # noqa: E402
from deepsynth.inference.engine import InstructionEngine  # noqa: E402


def last_line(text: str) -> str:
    lines = [line for line in text.split("\n") if line.strip()]
    return lines[-1].strip() if lines else ""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default="runs/demo/data/eval")
    parser.add_argument("--out")
    args = parser.parse_args()
    engine = InstructionEngine(args.model)
    report = {}
    for split in ("validation", "test_values", "test_paraphrases", "test_layouts"):
        rows = [r for r in map(json.loads, open(Path(args.data) / f"{split}.jsonl")) if r["task"] == "qa"]
        raw = [r["prediction"] for r in evaluate(engine, rows, ("exact_match",), 16, 64)[1]]
        answers = [last_line(t) for t in raw]
        scores = compute_metrics(answers, [r["answer"] for r in rows], metrics=("exact_match", "f1_score"))
        with_evidence = sum("\n" in t.strip() for t in raw)
        report[split] = {"n": len(rows), **{k: round(v, 2) for k, v in scores.items()},
                         "answers_with_evidence_line": with_evidence,
                         "predictions": [{"prediction": t, "answer": r["answer"], "text": r["text"]} for t, r in zip(raw, rows)]}
        print(split, {k: v for k, v in report[split].items() if k != "predictions"}, flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
