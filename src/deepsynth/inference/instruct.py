"""Answer one instruction about one document from the command line.

    PYTHONPATH=./src python3 -m deepsynth.inference.instruct \
        --model ./models/deepsynth-qa --document path/to/document.txt \
        --instruction "What are the key findings?" --max-length 256 [--temperature 0.3] [--stream] [--json]

--document is a file (.txt/.md, .pdf, .png/.jpg, ...) when such a file exists, otherwise the text itself.
--json prints {answer, confidence, tokens_generated, inference_time_ms, queue_time_ms, pages_used, pages_total,
truncated}; --stream prints the answer as it is written. A document longer than the model's page limit is read up
to its first pages, with a notice on stderr. Exit status 2 on bad input (missing file, empty instruction, a
temperature that is not a finite number >= 0, text that is not valid Unicode, ...).
"""

import argparse
import json
import sys

from .engine import InstructionEngine


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepsynth-instruct", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the bundled demo model)")
    parser.add_argument("--document", required=True, help="a document file, or the document text")
    parser.add_argument("--instruction", required=True, help="the question or instruction")
    parser.add_argument("--max-length", type=int, default=256, help="most answer tokens (default 256)")
    parser.add_argument("--temperature", type=float, default=None, help="0/unset: greedy; > 0: sampling")
    parser.add_argument("--stream", action="store_true", help="print the answer while it is generated")
    parser.add_argument("--json", action="store_true", help="print the answer with confidence and timing as JSON")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-text-encoder", dest="use_text_encoder", action="store_false",
                        help="only for checkpoints trained without an instruction encoder")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        engine = InstructionEngine(args.model, use_text_encoder=args.use_text_encoder, device=args.device, cache_size=0)
        if args.stream:
            stream = engine.stream(args.document, args.instruction, args.max_length, args.temperature)
            for piece in stream:
                # with --json, the pieces go to stderr so that stdout stays one JSON document
                print(piece, end="", flush=True, file=sys.stderr if args.json else sys.stdout)
            print(file=sys.stderr if args.json else sys.stdout)
            result = stream.result
        else:
            result = engine.generate_result(args.document, args.instruction, args.max_length, args.temperature)
    except (FileNotFoundError, ValueError) as e:
        parser.exit(2, f"error: {_printable(str(e))}\n")
    if result.truncated:
        print(f"notice: the document has {result.pages_total} pages; only the first {result.pages_used} were read "
              f"(the model's page limit)", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    elif not args.stream:
        print(result.answer)
    return 0


def _printable(message: str) -> str:
    """A message that quotes bad input (a lone surrogate) must still print."""
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


if __name__ == "__main__":
    sys.exit(main())
