"""Answer one instruction about one document from the command line.

    PYTHONPATH=./src python3 -m deepsynth.inference.instruct \
        --model ./models/deepsynth-qa --document path/to/document.txt \
        --instruction "What are the key findings?" --max-length 256 [--temperature 0.3] [--stream] [--json]
        [--repetition-guard [--guard-ngram-size 30] [--guard-window-size 90]]

--document is a file (.txt/.md, .pdf, .png/.jpg, ...) when such a file exists, otherwise the text itself.
--json prints {answer, confidence, tokens_generated, inference_time_ms, queue_time_ms, pages_used, pages_total,
truncated}; --stream prints the answer as it is written. A document longer than the model's page limit is read up
to its first pages, with a notice on stderr. Exit status 2 on bad input (missing file, empty instruction, a
temperature that is not a finite number >= 0, text that is not valid Unicode, ...).

Structured extraction: --schema schema.json (a JSON Schema file, or its JSON text) or --fields revenue,growth
constrains the answer to JSON of that schema and prints the object (one line); with --json, the whole result
(answer, json, field_confidence, json_error, confidence, ...). Exit 2 for an invalid schema, 1 when generation ran
out of tokens before the JSON ended (the raw text is printed, the reason goes to stderr).
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
    structured = parser.add_mutually_exclusive_group()
    structured.add_argument("--schema", default=None, help="a JSON Schema file (or JSON text): answer JSON of it")
    structured.add_argument("--fields", default=None, help="comma-separated field names: answer a JSON object of them")
    parser.add_argument("--no-text-encoder", dest="use_text_encoder", action="store_false",
                        help="only for checkpoints trained without an instruction encoder")
    guard = parser.add_argument_group("repetition guard", "ban n-grams that repeat inside a recent window (loops)")
    guard.add_argument("--repetition-guard", action="store_true", help="turn it on (n-gram 30 in 90 tokens)")
    guard.add_argument("--guard-ngram-size", type=int, default=None, help="n-gram length (default 30)")
    guard.add_argument("--guard-window-size", type=int, default=None, help="tokens looked back (default 90)")
    return parser


def guard_kwargs(args) -> dict:
    """generate() kwargs of the repetition guard flags ({} when off)."""
    settings = {k: v for k, v in (("ngram_size", args.guard_ngram_size), ("window_size", args.guard_window_size))
                if v is not None}
    if settings and not args.repetition_guard:
        raise ValueError("--guard-ngram-size / --guard-window-size need --repetition-guard")
    return {"repetition_guard": settings or True} if args.repetition_guard else {}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.schema is not None or args.fields is not None:
        return extract_json(parser, args)
    try:
        extra = guard_kwargs(args)
        engine = InstructionEngine(args.model, use_text_encoder=args.use_text_encoder, device=args.device, cache_size=0)
        if args.stream:
            stream = engine.stream(args.document, args.instruction, args.max_length, args.temperature, **extra)
            for piece in stream:
                # with --json, the pieces go to stderr so that stdout stays one JSON document
                print(piece, end="", flush=True, file=sys.stderr if args.json else sys.stdout)
            print(file=sys.stderr if args.json else sys.stdout)
            result = stream.result
        else:
            result = engine.generate_result(args.document, args.instruction, args.max_length, args.temperature, **extra)
    except (FileNotFoundError, ValueError) as e:
        parser.exit(2, f"error: {_printable(str(e))}\n")
    if result.truncated:
        print(f"notice: the document has more than {result.pages_used} pages; only the first {result.pages_used} "
              f"were read (the model's page limit)", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    elif not args.stream:
        print(result.answer)
    return 0


def read_schema(value: str):
    """--schema: JSON text when it looks like an object, otherwise a file holding it."""
    if value.lstrip().startswith("{"):
        return value
    with open(value, encoding="utf-8") as f:
        return f.read()


def extract_json(parser, args) -> int:
    """--schema / --fields: one schema-constrained answer (`InstructionEngine.generate_json`)."""
    # top-level remote-code module, on sys.path via the engine
    from structured_deepsynth import canonical_json, check_schema, schema_from_fields

    if args.stream:
        parser.exit(2, "error: --stream does not apply to --schema / --fields (the object is printed whole)\n")
    try:
        schema = read_schema(args.schema) if args.schema is not None else None
        fields = args.fields.split(",") if args.fields is not None else None
        check_schema(schema) if schema is not None else schema_from_fields(fields)  # before the model loads
        engine = InstructionEngine(args.model, use_text_encoder=args.use_text_encoder, device=args.device, cache_size=0)
        result = engine.generate_json(args.document, args.instruction, schema, args.max_length, args.temperature,
                                      fields=fields)
    except (OSError, ValueError) as e:
        parser.exit(2, f"error: {_printable(str(e))}\n")
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    elif result.json_error is None:
        print(canonical_json(result.json))
    else:
        print(result.answer)
    if result.json_error is not None:
        print(f"error: {result.json_error}", file=sys.stderr)
        return 1
    return 0


def _printable(message: str) -> str:
    """A message that quotes bad input (a lone surrogate) must still print."""
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


if __name__ == "__main__":
    sys.exit(main())
