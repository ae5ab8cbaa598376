"""Score a model on held-out rows with the guide's evaluation command (exact match, F1, ROUGE; 0-100).

    python examples/instruction_prompting/evaluate.py [--model DIR] [--dataset ROWS.jsonl] [--max-samples N]

Without --dataset it writes a few rows of the synthetic `test_values` split (names and numbers the demo model
never saw in training) and scores the bundled demo model on them, that is:

    python -m deepsynth.evaluation.evaluate --model checkpoints/deepsynth-demo --dataset ROWS.jsonl \
        --split test --metrics exact_match f1_score rouge --output predictions.jsonl
"""

import argparse
import json
import subprocess
import sys

from deepsynth.data.synthetic import generate_split


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the bundled demo model)")
    parser.add_argument("--dataset", default=None, help="rows {text, instruction, answer} (default: synthetic)")
    parser.add_argument("--max-samples", type=int, default=6)
    parser.add_argument("--output", default="predictions.jsonl")
    args = parser.parse_args(argv)
    dataset = args.dataset
    if dataset is None:
        dataset = "heldout-values.jsonl"
        with open(dataset, "w") as f:
            for row in generate_split("test_values", args.max_samples, seed=0):
                f.write(json.dumps({k: row[k] for k in ("text", "instruction", "answer")}) + "\n")
    command = [sys.executable, "-m", "deepsynth.evaluation.evaluate", "--dataset", dataset, "--split", "test",
               "--metrics", "exact_match", "f1_score", "rouge", "--max-samples", str(args.max_samples),
               "--output", args.output]
    if args.model:
        command += ["--model", args.model]
    return subprocess.run(command).returncode


if __name__ == "__main__":
    sys.exit(main())
