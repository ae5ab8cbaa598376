"""Interpolate two stage-T decoders weight by weight (WiSE-FT: a fine-tuned model averaged with the model it was
fine-tuned from keeps most of the fine-tuning's gain and more of the start's robustness off its data).

    python recipes/demo/grid_soup.py --tuned runs/grid/TJ --start checkpoints/deepsynth-demo --alpha 0.5 --out runs/grid/TS

`--start` may have fewer decoder layers: it is grown first (`stage_state`, new layers as identities), which is how
`--tuned` began. The output is `--tuned`'s folder with `alpha * tuned + (1 - alpha) * start` weights.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grid_text_stage import stage_state  # noqa: E402


def interpolated(tuned: dict, start: dict, alpha: float) -> dict:
    """alpha * tuned + (1 - alpha) * start for every tensor of `tuned`; both must hold the same names and shapes."""
    missing = sorted(set(tuned) - set(start))
    if missing:
        raise ValueError(f"the start lacks {len(missing)} of the tuned model's tensors, e.g. {missing[:3]}")
    out = {}
    for name, t in tuned.items():
        s = start[name]
        if s.shape != t.shape:
            raise ValueError(f"{name}: tuned {tuple(t.shape)} vs start {tuple(s.shape)}")
        out[name] = torch.lerp(s.float(), t.float(), alpha).to(t.dtype) if t.is_floating_point() else t
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tuned", type=Path, required=True, help="the fine-tuned stage-T folder")
    parser.add_argument("--start", type=Path, required=True, help="the folder it was fine-tuned from")
    parser.add_argument("--alpha", type=float, required=True, help="weight of --tuned (1: --tuned unchanged)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    tuned = load_file(args.tuned / "model.safetensors")
    tc = json.loads((args.tuned / "config.json").read_text())["text_config"]
    start = stage_state(args.start, tc["num_hidden_layers"], tc.get("intermediate_size"))
    soup = interpolated(tuned, start, args.alpha)
    shutil.copytree(args.tuned, args.out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("state.pt", "log.jsonl"))
    save_file(soup, args.out / "model.safetensors", metadata={"format": "pt"})
    print(f"{len(soup)} tensors: {args.alpha} x {args.tuned} + {1 - args.alpha:g} x {args.start} -> {args.out}")


if __name__ == "__main__":
    main()
