"""Schema-constrained JSON generation: the decoder can only write JSON that validates against a JSON Schema.

    from structured_deepsynth import JsonConstraint, json_schema_logits_processor, schema_from_fields
    schema = schema_from_fields(["revenue", "growth"])       # or any JSON Schema (Draft 2020-12)
    out = model.generate(**inputs, max_new_tokens=64,
                         logits_processor=[json_schema_logits_processor(processor.tokenizer, schema)])

The grammar comes from xgrammar (the library vLLM's guided decoding uses, so both serving paths constrain the same
way): the schema is compiled against the tokenizer's vocabulary once (cached), and at every step a token bitmask
sets the logits of every token that cannot continue valid JSON to -inf. After the JSON is complete only the
end-of-sequence token stays allowed. Output is compact, keys in the schema's order, separators (", ", ": "): the
same text as `canonical_json`, the form training rows are serialised in.

A logits processor holds one grammar state per row and serves ONE generate() call (build a new one per call);
greedy and sampling only: beam search reorders rows between steps, which the per-row states cannot follow.

`JsonConstraint.parse` turns generated token ids (+ their log-probabilities) into the object, validated against
the schema, and a confidence per top-level field: exp(mean log p) of the tokens that overlap the field's value.
The only way constrained output is not valid JSON is running out of tokens (max_new_tokens) before it ends.

xgrammar and jsonschema are imported lazily: a model or pipeline loads without them; building a constraint
raises ImportError naming the package.
"""

import importlib
import json
import math
import re
import weakref
from collections.abc import Sequence

CANONICAL_SEPARATORS = (", ", ": ")
# Every character JSON's syntax needs, besides the schema's own keys and literals.
JSON_SYNTAX = '{}[]:,"-.0123456789' + "truefalsn" + " "
_WHITESPACE = re.compile(r"[ \t\n\r]*")
PIP_NAMES = {"xgrammar": "'xgrammar>=0.2.9,<0.3'", "jsonschema": "'jsonschema>=4.18'"}


def _require(module: str):
    """Import an optional dependency when a constraint is built. Through importlib, not an import statement:
    transformers' remote-code loader requires every module a file imports, and these are optional."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise ImportError(f"schema-constrained generation needs {package}: pip install {PIP_NAMES[package]}") from None


def canonical_json(obj) -> str:
    """The one serialisation of a JSON answer: compact, non-ASCII kept, (", ", ": ") separators, keys in the
    object's own order (the schema's property order). Constrained decoding writes exactly this form."""
    return json.dumps(obj, ensure_ascii=False, separators=CANONICAL_SEPARATORS)


def schema_from_fields(fields: Sequence[str]) -> dict:
    """["revenue", "growth"] -> an object schema with those required string fields, and no others."""
    if isinstance(fields, str):
        fields = [f.strip() for f in fields.split(",")]
    fields = list(fields)
    if not fields or any(not isinstance(f, str) or not f.strip() for f in fields):
        raise ValueError(f"fields must be a non-empty list of non-blank names, got {fields!r}")
    duplicates = sorted({f for f in fields if fields.count(f) > 1})
    if duplicates:
        raise ValueError(f"duplicate field names: {duplicates}")
    return {
        "type": "object",
        "properties": {f: {"type": "string"} for f in fields},
        "required": fields,
        "additionalProperties": False,
    }


def check_schema(schema) -> dict:
    """A JSON Schema (dict, or its JSON text) checked against the Draft 2020-12 meta-schema; ValueError naming the
    problem otherwise."""
    jsonschema = _require("jsonschema")
    if isinstance(schema, (str, bytes)):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise ValueError(f"schema is not valid JSON: {e}") from None
    if not isinstance(schema, dict):
        raise ValueError(f"a JSON Schema must be an object, got {type(schema).__name__}")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        where = "/".join(str(p) for p in e.path) or "(root)"
        raise ValueError(f"invalid JSON Schema at {where}: {e.message}") from None
    return schema


def _schema_literals(schema) -> set[str]:
    """Property names and string enum/const values: text the output may have to contain verbatim."""
    found = set()
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key in ("properties", "patternProperties", "$defs", "definitions") and isinstance(value, dict):
                found.update(k for k in value if key == "properties")
                for sub in value.values():
                    found |= _schema_literals(sub)
            elif key in ("enum", "const"):
                found.update(v for v in (value if key == "enum" else [value]) if isinstance(v, str))
            else:
                found |= _schema_literals(value)
    elif isinstance(schema, list):
        for item in schema:
            found |= _schema_literals(item)
    return found


def check_tokenizer_can_write(tokenizer, schema: dict) -> None:
    """Refuse up front a schema whose syntax or literals the tokenizer cannot spell: it would round-trip text
    through unknown tokens, and the grammar would then have no allowed token at some step."""
    unk = getattr(tokenizer, "unk_token_id", None)
    for text in [*JSON_SYNTAX, *sorted(_schema_literals(schema))]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        if not ids or (unk is not None and unk in ids) or tokenizer.decode(ids) != text:
            raise ValueError(f"the tokenizer cannot write {text!r} (encodes to {ids}): this schema cannot be "
                             "generated with its vocabulary")


# tokenizer -> {(vocab_size, stop ids): _Vocabulary}. Its compiler caches the schemas it compiled.
_COMPILERS = weakref.WeakKeyDictionary()


class _Vocabulary:
    """What every constraint over one tokenizer shares: the grammar compiler and each token's bytes."""

    def __init__(self, tokenizer, vocab_size: int, stop_token_ids: tuple):
        xgr = _require("xgrammar")
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                  stop_token_ids=list(stop_token_ids) or None)
        self.compiler = xgr.GrammarCompiler(info, max_threads=1)
        self.token_bytes = info.decoded_vocab  # bytes each token writes: exact offsets, even mid-character
        self.stop = set(info.stop_token_ids)
        self.silent = set(info.special_token_ids) | self.stop  # write nothing into the answer


def _vocabulary(tokenizer, vocab_size: int, stop_token_ids: tuple) -> _Vocabulary:
    per_tokenizer = _COMPILERS.setdefault(tokenizer, {})
    key = (vocab_size, stop_token_ids)
    if key not in per_tokenizer:
        per_tokenizer[key] = _Vocabulary(tokenizer, vocab_size, stop_token_ids)
    return per_tokenizer[key]


class JsonConstraint:
    """One schema compiled for one tokenizer: builds logits processors and parses what they let through.

    vocab_size: the model's logits width (default: the tokenizer's length). stop_token_ids: what ends generation
    (default: the tokenizer's eos), the only tokens allowed once the JSON is complete."""

    def __init__(self, tokenizer, schema, vocab_size: int | None = None, stop_token_ids=None):
        self.schema = check_schema(schema)
        check_tokenizer_can_write(tokenizer, self.schema)
        if stop_token_ids is None:
            stop_token_ids = tokenizer.eos_token_id
        stop = tuple([stop_token_ids] if isinstance(stop_token_ids, int) else stop_token_ids or ())
        self._vocabulary = _vocabulary(tokenizer, vocab_size or len(tokenizer), stop)
        try:
            self.grammar = self._vocabulary.compiler.compile_json_schema(json.dumps(self.schema), any_whitespace=False)
        except RuntimeError as e:  # valid JSON Schema, but a feature xgrammar does not support
            raise ValueError(f"this JSON Schema cannot be compiled to a grammar: {e}") from None
        self._validator = _require("jsonschema").Draft202012Validator(self.schema)

    def logits_processor(self):
        """A fresh transformers LogitsProcessor for one generate() call (xgrammar's own HF integration)."""
        return _require("xgrammar.contrib.hf").LogitsProcessor(self.grammar)

    def parse(self, token_ids, logprobs=None) -> dict:
        """Generated ids (no prompt; padding after eos is ignored) -> {"json": object or None, "field_confidence":
        {field: float}, "json_error": None or why there is no object}. `logprobs`: one log-probability per id."""
        vocabulary = self._vocabulary
        ids = [int(t) for t in token_ids]
        ids = ids[: next((i for i, t in enumerate(ids) if t in vocabulary.stop), len(ids))]  # up to the first stop
        pieces = [b"" if t in vocabulary.silent else vocabulary.token_bytes[t] for t in ids]
        raw = b"".join(pieces).decode("utf-8", errors="replace")
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            why = ("generation ended before the JSON was complete (raise max_length / max_new_tokens)"
                   if raw.strip() else "nothing was generated")
            return {"json": None, "field_confidence": {}, "json_error": f"{why}: {e.msg} (char {e.pos})"}
        errors = sorted(self._validator.iter_errors(obj), key=lambda e: list(e.path))
        if errors:  # the grammar enforces the schema; a few keywords (e.g. formats) it may not
            return {"json": None, "field_confidence": {},
                    "json_error": f"output does not match the schema: {errors[0].message}"}
        confidence = {}
        if logprobs is not None and isinstance(obj, dict):
            starts = [0]
            for piece in pieces:
                starts.append(starts[-1] + len(piece))
            for name, (lo, hi) in _top_level_value_spans(raw).items():
                lo, hi = len(raw[:lo].encode()), len(raw[:hi].encode())  # chars -> bytes
                chosen = [float(logprobs[i]) for i in range(len(pieces)) if starts[i] < hi and starts[i + 1] > lo]
                confidence[name] = math.exp(sum(chosen) / len(chosen)) if chosen else None
        return {"json": obj, "field_confidence": confidence, "json_error": None}


def _top_level_value_spans(text: str) -> dict[str, tuple[int, int]]:
    """{key: (start, end) char span of its value} for a JSON object text. The json module reports no positions,
    so walk the top level with its own scanner (`raw_decode` from an index), one key/value pair at a time."""
    decoder = json.JSONDecoder()
    spans = {}
    i = _WHITESPACE.match(text, 0).end()
    if text[i : i + 1] != "{":
        return spans
    i += 1
    while True:
        i = _WHITESPACE.match(text, i).end()
        if text[i : i + 1] in ("}", ""):
            return spans
        key, i = decoder.raw_decode(text, i)
        i = _WHITESPACE.match(text, i).end() + 1  # past ":"
        start = _WHITESPACE.match(text, i).end()
        _, end = decoder.raw_decode(text, start)
        spans[key] = (start, end)
        i = _WHITESPACE.match(text, end).end()
        if text[i : i + 1] == ",":
            i += 1


def json_schema_logits_processor(tokenizer, schema, vocab_size: int | None = None, stop_token_ids=None):
    """A LogitsProcessor for `model.generate(..., logits_processor=[...])` that only lets through JSON valid under
    `schema` (a dict, JSON text, or a list of field names). One per generate() call; greedy or sampling."""
    if isinstance(schema, (list, tuple)):
        schema = schema_from_fields(schema)
    return JsonConstraint(tokenizer, schema, vocab_size, stop_token_ids).logits_processor()


__all__ = [
    "CANONICAL_SEPARATORS",
    "JsonConstraint",
    "canonical_json",
    "check_schema",
    "check_tokenizer_can_write",
    "json_schema_logits_processor",
    "schema_from_fields",
]
