"""Train with the guide's command on a tiny random model, to check a setup end to end in about a minute on a CPU
(the guide's "Train small model ... to verify setup"). The model learns nothing useful at this size.

    python examples/instruction_prompting/train_tiny.py [--data ROWS.jsonl] [--work DIR] [--steps N]

It writes a tiny DeepSynth checkpoint (scripts/make_tiny_checkpoint.py: random weights, a tiny BERT instruction
encoder with MiniLM's tokenizer, no download), then runs

    python -m deepsynth.training.train --model_name_or_path WORK/tiny --hf-dataset ROWS.jsonl \
        --output WORK/deepsynth-qa --use-text-encoder --batch-size 2 --num-epochs 1 --max_steps N

For the real model replace --model_name_or_path with --use-deepseek-ocr and add --text-encoder-type qwen3 (see
the repository README, "Fine-tune").
"""

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="DeepSynth rows (default: convert squad_sample.jsonl first)")
    parser.add_argument("--work", default="tiny-training", help="folder for the tiny model and the trained one")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = args.data
    if data is None:
        data = str(work / "deepsynth-squad-qa.jsonl")
        subprocess.run([sys.executable, str(HERE / "convert_squad.py"), "--output", data], check=True)
    if not (work / "tiny" / "config.json").is_file():
        subprocess.run([sys.executable, str(REPO / "scripts" / "make_tiny_checkpoint.py"), str(work / "tiny")],
                       check=True)
    command = [sys.executable, "-m", "deepsynth.training.train", "--model_name_or_path", str(work / "tiny"),
               "--hf-dataset", data, "--output", str(work / "deepsynth-qa"), "--use-text-encoder",
               "--batch-size", "2", "--num-epochs", "1", "--max_steps", str(args.steps), "--report_to", "none"]
    return subprocess.run(command).returncode


if __name__ == "__main__":
    sys.exit(main())
