"""Score a DeepSynth model on an instruction dataset.

    PYTHONPATH=./src python3 -m deepsynth.evaluation.evaluate --model ./models/deepsynth-qa \
        --dataset username/deepsynth-squad-qa --split test --metrics exact_match f1_score rouge \
        [--max-samples N] [--batch-size 8] [--max-length 64] [--output predictions.jsonl]

Rows are loaded with `deepsynth.data.loading.load_instruction_dataset` (a .jsonl/.json/.csv file, a folder, or a
Hub dataset), answered greedily in batches (one padded generate() per batch, `InstructionEngine.generate_batch`),
and scored with `deepsynth.evaluation.metrics.compute_metrics` (0-100 scale). Prints one JSON object.

Rows whose gold answer is a JSON object (e.g. `make_synthetic_dataset.py --task json_extraction`) are also scored
field by field (`json_field_scores`: json_field_precision / _recall / _f1, json_exact_match, per-field scores, over
those rows). --constrain-json answers rows that have a `fields` list with schema-constrained decoding
(`InstructionEngine.generate_json(fields=row["fields"])`, one request each) instead of free text.
"""

import argparse
import json
import sys

from deepsynth.data.loading import load_instruction_dataset
from deepsynth.evaluation.metrics import DEFAULT_METRICS, compute_metrics, is_json_object_text, json_field_scores
from deepsynth.inference.engine import InstructionEngine
from processing_deepsynth import row_document  # noqa: E402  (top-level remote-code module, on sys.path via the engine)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepsynth-evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the bundled demo model)")
    parser.add_argument("--dataset", required=True, help="a .jsonl/.json/.csv file, a dataset folder or a Hub name")
    parser.add_argument("--split", default="test")
    parser.add_argument("--source", default=None, help="convert rows from squad, squad_v2, natural_questions, ms_marco")
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS), help="exact_match f1_score rouge")
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64, help="most answer tokens")
    parser.add_argument("--temperature", type=float, default=None, help="default greedy")
    parser.add_argument("--output", default=None, help="write one JSON line per row (prediction, answer, confidence)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--constrain-json", action="store_true",
                        help="answer rows with a `fields` list by schema-constrained JSON decoding")
    return parser


def evaluate(engine: InstructionEngine, rows, metrics, batch_size: int = 8, max_length: int = 64, temperature=None):
    """(metrics dict, per-row records) for an iterable of rows with a document, `instruction` and `answer`."""
    rows = list(rows)
    if not rows:
        raise ValueError("the dataset split has no rows")
    records = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        results = engine.generate_batch_results(
            [row_document(r) for r in batch], [r["instruction"] for r in batch], max_length, temperature
        )
        for i, (row, result) in enumerate(zip(batch, results), start):
            records.append({"index": i, "instruction": row["instruction"], "prediction": result.answer,
                            "answer": row["answer"], "confidence": result.confidence,
                            "tokens_generated": result.tokens_generated})
    scores = compute_metrics([r["prediction"] for r in records], [r["answer"] for r in records], metrics=metrics)
    return {**scores, **json_scores(records)}, records


def json_scores(records: list[dict]) -> dict:
    """Field-level scores over the records whose gold answer is a JSON object (none: {})."""
    structured = [r for r in records if is_json_object_text(r["answer"])]
    if not structured:
        return {}
    scores = json_field_scores([r["prediction"] for r in structured], [r["answer"] for r in structured])
    return {"json_samples": len(structured), **scores}


def evaluate_constrained(engine: InstructionEngine, rows, metrics, batch_size: int = 8, max_length: int = 64,
                         temperature=None):
    """As `evaluate`, rows with a `fields` list answered by `generate_json` (constrained), the others as free text."""
    rows = list(rows)
    free = [i for i, r in enumerate(rows) if not r.get("fields")]
    records = []
    if free:
        _, records = evaluate(engine, [rows[i] for i in free], metrics, batch_size, max_length, temperature)
        for record in records:
            record["index"] = free[record["index"]]
    for i, row in enumerate(rows):
        if row.get("fields"):
            result = engine.generate_json(row_document(row), row["instruction"], max_length=max_length,
                                          temperature=temperature, fields=row["fields"])
            records.append({"index": i, "instruction": row["instruction"], "prediction": result.answer,
                            "answer": row["answer"], "confidence": result.confidence,
                            "tokens_generated": result.tokens_generated, "field_confidence": result.field_confidence})
    records.sort(key=lambda r: r["index"])
    scores = compute_metrics([r["prediction"] for r in records], [r["answer"] for r in records], metrics=metrics)
    return {**scores, **json_scores(records)}, records


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1 or (args.max_samples is not None and args.max_samples < 1):
        parser.error("--batch-size and --max-samples must be >= 1")
    try:
        rows = load_instruction_dataset(args.dataset, split=args.split, source=args.source, max_samples=args.max_samples)
        engine = InstructionEngine(args.model, device=args.device)
        if args.constrain_json:
            scores, records = evaluate_constrained(engine, rows, args.metrics, args.batch_size, args.max_length,
                                                   args.temperature)
        else:
            scores, records = evaluate(engine, rows, args.metrics, args.batch_size, args.max_length, args.temperature)
    except (FileNotFoundError, ValueError) as e:
        parser.exit(2, f"error: {e}\n")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    report = {"model": engine.model_path, "dataset": args.dataset, "split": args.split, "samples": len(records), **scores}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
