"""SQuAD-shaped rows (`context`, `question`, `answers.text`) -> DeepSynth rows {text, instruction, answer} (the
guide's "Convert Existing Dataset"). The first gold answer is the target; an unanswerable SQuAD v2 question gets
--no-answer. Runs offline on a local file (squad_sample.jsonl here, four rows we wrote in SQuAD's shape); with
network, `--input squad_v2 --split "train[:10000]"` converts the hub dataset the same way.

    python examples/instruction_prompting/convert_squad.py [--input FILE_OR_HUB_NAME] [--output OUT.jsonl] \
        [--push-to-hub USER/NAME]
"""

import argparse
import sys
from pathlib import Path

from deepsynth.data.loading import load_instruction_dataset

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default=str(HERE / "squad_sample.jsonl"))
    parser.add_argument("--split", default="train", help="split of a hub dataset (e.g. 'train[:10000]')")
    parser.add_argument("--output", default="deepsynth-squad-qa.jsonl")
    parser.add_argument("--no-answer", default="No answer", help="target of unanswerable questions")
    parser.add_argument("--push-to-hub", default=None, help="also upload the rows as this hub dataset")
    args = parser.parse_args(argv)
    try:
        rows = load_instruction_dataset(args.input, split=args.split, source="squad_v2", no_answer=args.no_answer)
    except (FileNotFoundError, ValueError) as e:
        parser.exit(2, f"error: {e}\n")
    rows.to_json(args.output)  # JSON lines: {"text", "instruction", "answer", "id"}
    print(f"wrote {len(rows)} rows to {args.output}")
    if args.push_to_hub:
        rows.push_to_hub(args.push_to_hub)
    return 0


if __name__ == "__main__":
    sys.exit(main())
