"""Score a demo-model checkpoint on the held-out splits, per task, as the model card reports it.

    python recipes/demo/evaluate_demo.py --model runs/demo/C --out runs/demo/eval/C.json
    python recipes/demo/evaluate_demo.py --table runs/demo/eval/*.json      # markdown ablation table

Q&A and extraction: exact match / F1 (SQuAD normalisation); focused summaries: ROUGE-L; transcription: character
error rate on fresh pages; for Q&A and extraction also the calibration of the engine's confidence (exact match of
the more confident half vs the less confident half); and Q&A on documents typed by hand in a new user's styles
(`--user-documents`, default `recipes/demo/user_documents.jsonl`). Splits (scripts/make_synthetic_dataset.py): `test_values` (names and numbers never seen
in training), `test_paraphrases` (instruction templates never seen), `test_layouts` (page layouts never seen).
Greedy decoding, batched through InstructionEngine (the product's serving path).

Reading diagnostic (`--reading`; needs a `validation.jsonl` in `--data`: fresh documents drawn like the training
ones, with training names and digits): Q&A exact match there and on `test_values`, and how often the gold answer occurs
verbatim in the model's own transcription of the same document -- the exact match a perfect locator would get
from this model's reading. It separates "cannot read unseen values" from "cannot find the asked value".
"""

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

from deepsynth.data.synthetic import TRANSCRIPTION_INSTRUCTIONS
from deepsynth.evaluation.evaluate import evaluate
from deepsynth.evaluation.metrics import character_error_rate, exact_match
from deepsynth.inference.engine import InstructionEngine

SPLITS = ("test_values", "test_paraphrases", "test_layouts")
TASK_METRICS = {"qa": ("exact_match", "f1_score"), "extraction": ("exact_match", "f1_score"), "summary": ("rouge",)}
# transcription: a byte-vocabulary model spends one token a character (a page of the byte grid holds 512)
MAX_NEW_TOKENS = {"qa": 32, "extraction": 96, "summary": 96, "transcription": 640}


def calibration(records: list[dict]) -> dict:
    """Does the engine's confidence separate right answers from wrong ones? Exact match over the more confident
    half of the records vs the less confident half (an uninformative confidence gives equal halves)."""
    ranked = sorted(records, key=lambda r: r["confidence"], reverse=True)
    half = len(ranked) // 2
    if half == 0:
        raise ValueError("calibration needs at least 2 records")

    def em(part):
        return round(100 * sum(exact_match(r["prediction"], r["answer"]) for r in part) / len(part), 2)

    return {"em_top_half": em(ranked[:half]), "em_bottom_half": em(ranked[half:]),
            "median_confidence": round(ranked[half]["confidence"], 4)}


def score_user_documents(engine, path: Path, constant_instruction=None) -> dict:
    """Q&A on documents typed by hand in a new user's styles (`recipes/demo/user_documents.jsonl`: lines, bullets,
    a table, prose, fields reordered; names and numbers not from the generator): exact match overall and per
    style, and the calibration."""
    rows = [json.loads(line) for line in open(path)]
    for row in rows:
        row["instruction"] = constant_instruction or row["instruction"]
    _, records = evaluate(engine, rows, ("exact_match",), 16, MAX_NEW_TOKENS["qa"])
    by_style = defaultdict(list)
    for row, record in zip(rows, records):
        by_style[row["style"]].append(exact_match(record["prediction"], row["answer"]))
    hits = [h for style in by_style.values() for h in style]
    out = {"n": len(rows), "exact_match": round(100 * sum(hits) / len(hits), 2),
           "by_style": {s: f"{int(sum(h))}/{len(h)}" for s, h in by_style.items()}, "calibration": calibration(records),
           "wrong": [{k: r[k] for k in ("instruction", "prediction", "answer")} for r in records
                     if not exact_match(r["prediction"], r["answer"])][:5]}
    print("user documents", {k: out[k] for k in ("exact_match", "by_style", "calibration")}, flush=True)
    return out


def score_checkpoint(engine, data: Path, transcription: Path | None, constant_instruction=None, limit=None,
                     reading=False, user_documents: Path | None = None):
    report = {}
    for split in SPLITS:
        rows = [json.loads(line) for line in open(data / f"{split}.jsonl")]
        by_task = defaultdict(list)
        for row in rows:
            if constant_instruction:
                row["instruction"] = constant_instruction
            by_task[row["task"]].append(row)
        for task, task_rows in by_task.items():
            task_rows = task_rows[:limit]
            scores, records = evaluate(engine, task_rows, TASK_METRICS[task], 16, MAX_NEW_TOKENS[task])
            report.setdefault(split, {})[task] = {
                "n": len(task_rows), **{k: round(v, 2) for k, v in scores.items()},
                "examples": [{k: r[k] for k in ("instruction", "prediction", "answer")} for r in records[:3]],
            }
            if task in ("qa", "extraction"):
                report[split][task]["calibration"] = calibration(records)
            print(split, task, {k: round(v, 1) for k, v in scores.items()}, flush=True)
    if transcription is not None:
        rows = [json.loads(line) for line in open(transcription)][:limit]
        for row in rows:
            row["instruction"] = constant_instruction or row["instruction"]
        _, records = evaluate(engine, rows, ("exact_match",), 16, MAX_NEW_TOKENS["transcription"])
        cer = character_error_rate([r["prediction"] for r in records], [r["answer"] for r in records])
        report["transcription"] = {"n": len(rows), "cer": round(cer, 4)}
        print("transcription CER", round(cer, 4), flush=True)
    if user_documents is not None:
        report["user_documents"] = score_user_documents(engine, user_documents, constant_instruction)
    if reading:  # test_values Q&A was just answered with the same rows: reuse its exact match
        report["reading"] = reading_diagnostic(engine, data, limit, {"test_values": report["test_values"]["qa"]})
    return report


def reading_diagnostic(engine, data: Path, limit=None, answered: dict | None = None) -> dict:
    """`answered`: split -> an already computed {"exact_match": ...} of that split's Q&A rows (same `limit`)."""
    out = {}
    for split in ("validation", "test_values"):
        qa = [row for row in map(json.loads, open(data / f"{split}.jsonl")) if row["task"] == "qa"][:limit]
        scores = (answered or {}).get(split) or evaluate(engine, qa, ("exact_match",), 16, MAX_NEW_TOKENS["qa"])[0]
        read = [dict(row, instruction=TRANSCRIPTION_INSTRUCTIONS[0], answer=row["text"]) for row in qa]
        _, records = evaluate(engine, read, ("exact_match",), 16, MAX_NEW_TOKENS["transcription"])
        # line breaks are the page's wrapping, not content: compare with whitespace collapsed
        transcripts = [" ".join(r["prediction"].split()) for r in records]
        texts = [" ".join(row["text"].split()) for row in qa]
        copied = sum(row["answer"] in t for row, t in zip(qa, transcripts))
        out[split] = {"n": len(qa), "qa_exact_match": round(scores["exact_match"], 2),
                      "gold_in_own_transcript": round(100 * copied / len(qa), 2),
                      "cer": round(character_error_rate(transcripts, texts), 4)}
        print("reading", split, out[split], flush=True)
    return out


def reading_table(paths: list[str]) -> str:
    """Q&A exact match next to how often the model's own transcription contains the gold answer verbatim."""
    lines = ["| model | documents | Q&A EM | gold value verbatim in its own transcription | transcription CER |",
             "|---|---|---|---|---|"]
    names = {"validation": "training distribution (fresh pages, training names and digits)",
             "test_values": "held-out values"}
    for path in paths:
        report = json.load(open(path))
        for split, r in report["scores"].get("reading", {}).items():
            lines.append(f"| {report['label']} | {names[split]} | {r['qa_exact_match']:.1f} | "
                         f"{r['gold_in_own_transcript']:.1f} | {r['cer']:.3f} |")
    return "\n".join(lines) if len(lines) > 2 else ""  # no report measured it


def calibration_table(paths: list[str]) -> str:
    """Exact match of the more confident half vs the less confident half, per split and task."""
    lines = ["| model | task | " + " | ".join(f"EM top / bottom half ({s.removeprefix('test_')})" for s in SPLITS) + " |",
             "|" + "---|" * (len(SPLITS) + 2)]
    for path in paths:
        report = json.load(open(path))
        for task in ("qa", "extraction"):
            cal = [report["scores"][split][task].get("calibration") for split in SPLITS]
            if all(cal):
                lines.append(f"| {report['label']} | {task} | " + " | ".join(
                    f"{c['em_top_half']:.1f} / {c['em_bottom_half']:.1f}" for c in cal) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""  # reports written before calibration was measured


def user_documents_table(paths: list[str]) -> str:
    lines = ["| model | hand-typed Q&A EM | by style (exact / asked) | EM top / bottom half of confidence |",
             "|---|---|---|---|"]
    for path in paths:
        report = json.load(open(path))
        u = report["scores"].get("user_documents")
        if u:
            styles = ", ".join(f"{s} {v}" for s, v in u["by_style"].items())
            lines.append(f"| {report['label']} | {u['exact_match']:.1f} ({u['n']} questions) | {styles} | "
                         f"{u['calibration']['em_top_half']:.1f} / {u['calibration']['em_bottom_half']:.1f} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def table(paths: list[str]) -> str:
    """One markdown row per checkpoint report: Q&A and extraction EM/F1, summary ROUGE-L per split + CER."""
    head = ["model"]
    for split in SPLITS:
        short = split.removeprefix("test_")
        head += [f"Q&A EM/F1 ({short})", f"extract EM/F1 ({short})", f"summary R-L ({short})"]
    lines = ["| " + " | ".join(head + ["CER"]) + " |", "|" + "---|" * (len(head) + 1)]
    for path in paths:
        report = json.load(open(path))
        cells = [report["label"]]
        for split in SPLITS:
            r = report["scores"][split]
            cells += [f"{r['qa']['exact_match']:.1f} / {r['qa']['f1_score']:.1f}",
                      f"{r['extraction']['exact_match']:.1f} / {r['extraction']['f1_score']:.1f}",
                      f"{r['summary']['rougeL']:.1f}"]
        cells.append(f"{report['scores'].get('transcription', {}).get('cer', float('nan')):.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint folder")
    parser.add_argument("--label", help="row name in the table (default: the folder name)")
    parser.add_argument("--data", default="runs/demo/data/eval", help="folder with the test_*.jsonl splits")
    parser.add_argument("--transcription", default="runs/demo/data/eval_transcription/test_values.jsonl")
    parser.add_argument("--user-documents", default=str(Path(__file__).parent / "user_documents.jsonl"),
                        help="hand-typed documents and questions in a new user's styles ('' skips them)")
    parser.add_argument("--constant-instruction", help="the ablation's fixed instruction (run_instruct --constant_instruction)")
    parser.add_argument("--limit", type=int, default=None, help="rows per split and task")
    parser.add_argument("--reading", action="store_true", help="add the reading diagnostic (validation + test_values)")
    parser.add_argument("--out", help="write the report here (JSON)")
    parser.add_argument("--table", nargs="+", help="print the markdown tables of these reports and exit")
    args = parser.parse_args(argv)
    if args.table:
        tables = (table(args.table), calibration_table(args.table), user_documents_table(args.table),
                  reading_table(args.table))
        print("\n\n".join(t for t in tables if t))
        return 0
    if not args.model:
        parser.error("--model is required (or --table)")
    for name, path in (("--data", Path(args.data) / "test_values.jsonl"), ("--transcription", args.transcription),
                       ("--user-documents", args.user_documents)):
        if path and not Path(path).is_file():  # before the model runs for minutes, not after
            parser.error(f"{name}: {path} does not exist (make it with scripts/make_synthetic_dataset.py, "
                         "see recipes/demo/README.md; --transcription '' skips transcription)")
    started = time.perf_counter()
    engine = InstructionEngine(args.model)
    transcription = Path(args.transcription) if args.transcription else None
    scores = score_checkpoint(engine, Path(args.data), transcription, args.constant_instruction, args.limit,
                              args.reading, Path(args.user_documents) if args.user_documents else None)
    report = {"label": args.label or Path(args.model).name, "model": args.model, "scores": scores,
              "constant_instruction": args.constant_instruction, "seconds": round(time.perf_counter() - started)}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
