"""Write the synthetic instruction dataset as one JSONL file per split.

    python scripts/make_synthetic_dataset.py --out data/synthetic --train 5000 --validation 300 \
        --test-values 300 --test-paraphrases 300 --test-layouts 300 --seed 0

Tasks (`--task`):
    instructions   QA / extraction / summary rows (default; unchanged)
    transcription  "Transcribe the document." -> the document text (reading stage B)
    mixed          QA / extraction / summary + 40% transcription rows (stage C: keeps reading alive)
    answering      1/3 Q&A, 1/3 extraction, 1/6 summary, 1/6 transcription (stage D: more answering steps
                   without forgetting summaries or reading)
    json_extraction  JSON extraction only: 2-4 named fields -> the canonical JSON object; rows carry `fields`
    json_mixed     QA / extraction / summary + 1/4 JSON extraction rows
    random_lines   reading warm-up: `--lines` lines of random characters -> the same text (stage A); the
                   document-kind splits do not apply, every split is fresh random pages (own seed per split)

With `--processor DIR` (a DeepSynth processor), transcription rows are laid out by its renderer first: the row's
text is the wrapped page lines ("\\f" between pages) and the answer is exactly the lines shown on the pages, in
order, joined by "\\n"; random lines are trimmed to fit one rendered line. Without it the answer is the raw text.

The folder loads back with `deepsynth.data.load_instruction_dataset("data/synthetic", split="train")`.
"""

import argparse
import json
import random
import sys
from pathlib import Path

# Runs from a plain checkout too, without `pip install -e .`.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from deepsynth.data.synthetic import (  # noqa: E402
    SPLITS, TASKS, VARIETY_SPLITS, build_dataset_dict, generate_split, random_lines_split,
)

TASK_SETS = {
    "instructions": TASKS,
    "transcription": ("transcription",),
    "mixed": TASKS + ("transcription", "transcription"),
    "answering": ("qa", "extraction", "qa", "extraction", "summary", "transcription"),
    "json_extraction": ("json_extraction",),
    "json_mixed": TASKS + ("json_extraction",),
}


def load_image_processor(path):
    sys.path.insert(0, str(ROOT))
    from processing_deepsynth import DeepSynthImageProcessor

    return DeepSynthImageProcessor.from_pretrained(str(path))


def as_rendered(row: dict, ip) -> dict:
    """A transcription row whose text and answer are the processor's page lines."""
    pages = ip.layout_text(row["text"])[: ip.max_pages]
    text = "\f".join("\n".join(lines) for lines in pages)
    return {**row, "text": text, "answer": "\n".join(line for lines in pages for line in lines)}


def make_rows(task, split, n, seed, ip=None, lines=(1, 2), **variety):
    """`variety`: the training-only fractions of `generate_split` (invented_names, all_digits, shuffled_fields,
    long_names, more_layouts, label_synonyms, direct_questions), applied to the train and validation splits only."""
    if task == "random_lines":
        fits = None
        if ip is not None:
            font, room = ip._font(), ip.page_width - 2 * ip.margin
            fits = lambda s: ip._width(font, s) <= room  # noqa: E731
        return random_lines_split(split, n, seed, lines=lines, fits=fits)
    rows = generate_split(split, n, seed, tasks=TASK_SETS[task], **(variety if split in VARIETY_SPLITS else {}))
    if ip is not None:
        rows = [as_rendered(r, ip) if r["task"] == "transcription" else r for r in rows]
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", default="instructions", choices=[*TASK_SETS, "random_lines"])
    parser.add_argument("--json-extraction", action="store_const", dest="task", const="json_mixed",
                        help="same as --task json_mixed: add JSON extraction rows (answers are JSON objects)")
    parser.add_argument("--processor", type=Path, default=None, help="lay transcription rows out as this processor")
    parser.add_argument("--lines", default="1,2", help="random_lines: min,max lines per page")
    parser.add_argument(
        "--random-lines-fraction", type=float, default=0.0,
        help="train split only: add this fraction (of --train) of random-character pages (3-8 lines, fresh seed), "
        "shuffled in. They keep the decoder copying what it sees: digits 7-9 never end a training number's "
        "integer part (that is the test_values split), but they do occur on these pages.",
    )
    parser.add_argument(
        "--invented-names", type=float, default=0.0,
        help="train and validation only: this fraction of documents takes made-up names (people, companies, "
        "products) instead of the training pools, so the model must copy names rather than recall them",
    )
    parser.add_argument("--all-digits", type=float, default=0.0,
                        help="train and validation only: this fraction of documents ends its numbers in any digit")
    parser.add_argument("--shuffled-fields", type=float, default=0.0,
                        help="train and validation only: this fraction of documents lists its facts in a random order")
    parser.add_argument("--long-names", type=float, default=0.0,
                        help="train and validation only: this fraction of the --invented-names documents takes long "
                             "names with consonant clusters")
    parser.add_argument("--more-layouts", type=float, default=0.0,
                        help="train and validation only: this fraction of documents is rendered in one of the extra "
                             "training layouts (key = value, dot leaders, numbered, label above value, semicolons)")
    parser.add_argument("--label-synonyms", type=float, default=0.0,
                        help="train and validation only: each field takes another name for its label with this "
                             "probability (\"Issued by\" for \"From\")")
    parser.add_argument("--direct-questions", type=float, default=0.0,
                        help="train and validation only: this fraction of Q&A rows is asked as a direct who / when "
                             "question (\"Who sent this invoice?\")")
    defaults = {"train": 5000, "validation": 300, "test_values": 300, "test_paraphrases": 300, "test_layouts": 300}
    for split in SPLITS:
        parser.add_argument(f"--{split.replace('_', '-')}", type=int, default=defaults[split], help=f"rows (default {defaults[split]}; 0 skips)")
    args = parser.parse_args(argv)

    sizes = {split: getattr(args, split) for split in SPLITS if getattr(args, split) > 0}
    args.out.mkdir(parents=True, exist_ok=True)
    variety = {"invented_names": args.invented_names, "all_digits": args.all_digits,
               "shuffled_fields": args.shuffled_fields, "long_names": args.long_names,
               "more_layouts": args.more_layouts, "label_synonyms": args.label_synonyms,
               "direct_questions": args.direct_questions}
    if args.task == "instructions" and args.processor is None and not any(variety.values()):  # the original path
        for split, ds in build_dataset_dict(sizes, seed=args.seed).items():
            path = args.out / f"{split}.jsonl"
            ds.to_json(str(path), lines=True, force_ascii=False)
            print(f"{split}: {len(ds)} rows -> {path}")
        return
    ip = load_image_processor(args.processor) if args.processor else None
    lines = tuple(int(x) for x in args.lines.split(","))
    for split, n in sizes.items():
        path = args.out / f"{split}.jsonl"
        rows = make_rows(args.task, split, n, args.seed, ip, lines, **variety)
        if split == "train" and args.random_lines_fraction > 0:
            extra = make_rows("random_lines", split, round(n * args.random_lines_fraction), args.seed + 1000, ip, (3, 8))
            rows = rows + extra
            random.Random(f"deepsynth-mix:{args.seed}").shuffle(rows)
        with open(path, "w") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{split}: {len(rows)} rows -> {path}")


if __name__ == "__main__":
    main()
