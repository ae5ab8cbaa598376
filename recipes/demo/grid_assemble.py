"""Stage T's decoder under stage V's vision tower: one plain DeepSynth checkpoint (issue 16's byte-grid recipe),
ready for `run_instruct.py` (stage J: answering from pixels, end to end) and for the engine.

    python recipes/demo/grid_assemble.py --stage-t runs/grid/T128 --stage-v runs/grid/V --out runs/grid/TV
"""

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
for path in (ROOT, ROOT / "src"):
    sys.path.insert(0, str(path))

from modeling_deepsynth import DeepSynthForConditionalGeneration  # noqa: E402
from processing_deepsynth import DeepSynthProcessor  # noqa: E402
from run_instruct import declare_pipeline  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage-t", type=Path, required=True, help="grid_text_stage.py's output folder")
    parser.add_argument("--stage-v", type=Path, required=True, help="grid_align_stage.py's output folder (vision.pt)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    model = DeepSynthForConditionalGeneration.from_pretrained(args.stage_t)
    vision = torch.load(args.stage_v / "vision.pt")
    missing = sorted(set(vision) - set(model.state_dict()))
    if missing:
        raise ValueError(f"{args.stage_v / 'vision.pt'} does not fit {args.stage_t}: {missing[:3]}")
    model.load_state_dict(vision, strict=False)
    declare_pipeline(model.config)
    model.save_pretrained(args.out)
    DeepSynthProcessor.from_pretrained(args.stage_t).save_pretrained(args.out)
    print(f"{len(vision)} vision tensors from {args.stage_v} under {args.stage_t}'s decoder -> {args.out}")


if __name__ == "__main__":
    main()
