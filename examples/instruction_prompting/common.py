"""What the three inference examples share: load a checkpoint with the engine and ask it instructions about one
document. The default checkpoint is the bundled demo model (checkpoints/deepsynth-demo), trained on synthetic
business documents such as ../financial_report.txt; for your own documents pass --model with a model you trained."""

import argparse
from pathlib import Path

from deepsynth.inference import InstructionEngine

DEFAULT_DOCUMENT = Path(__file__).resolve().parents[1] / "financial_report.txt"


def ask(description: str, instructions: list[str], max_length: int, argv=None) -> int:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the bundled demo model)")
    parser.add_argument("--document", default=str(DEFAULT_DOCUMENT), help="a text/PDF/image file, or the text")
    parser.add_argument("--instruction", action="append", help="ask this instead (repeatable)")
    parser.add_argument("--max-length", type=int, default=max_length, help="most answer tokens")
    parser.add_argument("--temperature", type=float, default=None, help="default greedy; the guide suggests 0.3 "
                        "for Q&A and 0.7 for summaries when sampling")
    args = parser.parse_args(argv)
    engine = InstructionEngine(model_path=args.model, use_text_encoder=True)
    for instruction in args.instruction or instructions:
        result = engine.generate_result(args.document, instruction, args.max_length, args.temperature)
        print(f"> {instruction}\n{result.answer}\n(confidence {result.confidence:.2f}, "
              f"{result.tokens_generated} tokens)\n")
    return 0
