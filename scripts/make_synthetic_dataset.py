"""Write the synthetic instruction dataset as one JSONL file per split.

    python scripts/make_synthetic_dataset.py --out data/synthetic --train 5000 --validation 300 \
        --test-values 300 --test-paraphrases 300 --test-layouts 300 --seed 0

The folder loads back with `deepsynth.data.load_instruction_dataset("data/synthetic", split="train")`.
"""

import argparse
import sys
from pathlib import Path

# Runs from a plain checkout too, without `pip install -e .`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from deepsynth.data.synthetic import SPLITS, build_dataset_dict  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--seed", type=int, default=0)
    defaults = {"train": 5000, "validation": 300, "test_values": 300, "test_paraphrases": 300, "test_layouts": 300}
    for split in SPLITS:
        parser.add_argument(f"--{split.replace('_', '-')}", type=int, default=defaults[split], help=f"rows (default {defaults[split]}; 0 skips)")
    args = parser.parse_args(argv)

    sizes = {split: getattr(args, split) for split in SPLITS if getattr(args, split) > 0}
    args.out.mkdir(parents=True, exist_ok=True)
    for split, ds in build_dataset_dict(sizes, seed=args.seed).items():
        path = args.out / f"{split}.jsonl"
        ds.to_json(str(path), lines=True, force_ascii=False)
        print(f"{split}: {len(ds)} rows -> {path}")


if __name__ == "__main__":
    main()
