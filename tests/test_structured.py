"""Schema-constrained generation (structured_deepsynth.py, issue 18): schema checks, the tokenizer refusal, and a
property test on a tiny random model: for random schemas every constrained output is JSON valid under its schema,
while the same model's unconstrained output is not."""

import json
import math

import jsonschema
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from _serving_helpers import DOC_A
from modeling_deepsynth import DeepSynthForConditionalGeneration
from pipeline_deepsynth import build_json_constraint, constrained_kwargs, generate_with_scores
from processing_deepsynth import DeepSynthProcessor
from structured_deepsynth import (
    JsonConstraint, canonical_json, check_schema, json_schema_logits_processor, schema_from_fields,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixtures: tests/conftest.py


@pytest.fixture(scope="module")
def tiny(checkpoint):
    model = DeepSynthForConditionalGeneration.from_pretrained(checkpoint).eval()
    processor = DeepSynthProcessor.from_pretrained(checkpoint)
    inputs = processor.collate([processor(document=DOC_A, instruction="Extract the fields as JSON.")])
    return model, processor, inputs


def test_schema_from_fields_and_canonical_form():
    schema = schema_from_fields(["revenue", "growth"])
    assert schema == {"type": "object", "properties": {"revenue": {"type": "string"}, "growth": {"type": "string"}},
                      "required": ["revenue", "growth"], "additionalProperties": False}
    assert schema_from_fields("revenue, growth") == schema
    assert canonical_json({"revenue": "$45M", "growth": "15%", "nested": [1, None]}) == \
        '{"revenue": "$45M", "growth": "15%", "nested": [1, null]}'
    for bad in ([], ["a", " "], ["a", "a"], [3]):
        with pytest.raises(ValueError, match="field"):
            schema_from_fields(bad)


@pytest.mark.parametrize("schema, message", [
    ({"type": "objekt"}, "invalid JSON Schema at type"),
    ({"type": "object", "properties": {"a": {"type": "string", "maxLength": -1}}},
     "invalid JSON Schema at properties/a/maxLength: -1 is less than the minimum of 0"),
    ({"type": "object", "required": "a"}, "invalid JSON Schema at required"),
    ("{not json", "schema is not valid JSON"),
    (["a"], "a JSON Schema must be an object, got list"),
])
def test_invalid_schemas_are_value_errors_naming_the_problem(schema, message):
    with pytest.raises(ValueError, match=message):
        check_schema(schema)


def test_a_tokenizer_that_cannot_write_json_is_refused_up_front():
    # A word-level vocabulary of letters and quotes only: no token for "{" (it would become [UNK]).
    vocab = {"[UNK]": 0, "</s>": 1, '"': 2, **{c: i + 3 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="</s>")
    with pytest.raises(ValueError, match=r"the tokenizer cannot write '\{'"):
        JsonConstraint(tokenizer, schema_from_fields(["a"]))


def test_the_demo_tokenizer_writes_json_punctuation_and_unicode_keys(tiny):
    _, processor, _ = tiny
    constraint = JsonConstraint(processor.tokenizer, schema_from_fields(["revenue", "croissance_prévue"]))
    assert constraint.grammar.tokenizer_info.vocab_size == len(processor.tokenizer)


def test_beam_search_and_two_constraint_kinds_are_refused(tiny):
    model, processor, _ = tiny
    with pytest.raises(ValueError, match="either schema or fields"):
        build_json_constraint(model, processor.tokenizer, schema={"type": "object"}, fields=["a"])
    constraint = build_json_constraint(model, processor.tokenizer, fields=["a"])
    with pytest.raises(ValueError, match="num_beams must be 1"):
        constrained_kwargs(model, constraint, {"num_beams": 2})


# ---- property test ----------------------------------------------------------------------------------------------
NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=6)
LEAVES = st.one_of(
    st.integers(0, 6).map(lambda n: {"type": "string", "maxLength": n}),
    st.tuples(st.integers(-50, 50), st.integers(0, 200)).map(
        lambda t: {"type": "integer", "minimum": t[0], "maximum": t[0] + t[1]}),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.lists(st.text(alphabet="abcXYZ $%.0123", min_size=1, max_size=5), min_size=1, max_size=3, unique=True).map(
        lambda values: {"enum": values}),
)


def _objects(values):
    def build(props, required_mask):
        names = list(props)
        return {"type": "object", "properties": props, "additionalProperties": False,
                "required": [n for n, keep in zip(names, required_mask) if keep]}

    return st.dictionaries(NAMES, values, min_size=1, max_size=3).flatmap(
        lambda props: st.lists(st.booleans(), min_size=len(props), max_size=len(props)).map(
            lambda mask: build(props, mask)))


VALUES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        _objects(inner),
        st.tuples(inner, st.integers(0, 3)).map(lambda t: {"type": "array", "items": t[0], "maxItems": t[1]}),
    ),
    max_leaves=5,
)
SCHEMAS = _objects(VALUES)


def max_bytes(schema: dict) -> int:
    """Most bytes any JSON text valid under `schema` has in the compact form (a token writes >= 1 byte, so this
    bounds the tokens too): every schema drawn above is finite."""
    if "enum" in schema:
        return max(len(json.dumps(v).encode()) for v in schema["enum"])
    kind = schema["type"]
    if kind == "string":
        return 2 + 12 * schema["maxLength"]  # a code point is at most a \\uXXXX\\uXXXX surrogate pair
    if kind == "integer":
        return max(len(str(schema["minimum"])), len(str(schema["maximum"])))
    if kind in ("boolean", "null"):
        return 5
    if kind == "array":
        return 2 + schema["maxItems"] * (max_bytes(schema["items"]) + 2)
    return 2 + sum(len(json.dumps(k).encode()) + 4 + max_bytes(v) for k, v in schema["properties"].items())


def validates(text: str, schema: dict) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema)
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return False
    return True


@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schema=SCHEMAS, seed=st.integers(0, 2**16), sample=st.booleans())
def test_constrained_output_always_validates_unconstrained_does_not(tiny, schema, seed, sample):
    model, processor, inputs = tiny
    tokenizer = processor.tokenizer
    budget = max_bytes(schema) + 1  # + eos: the grammar cannot run out of room
    prompt = inputs["input_ids"].shape[1]
    kwargs = {"max_new_tokens": budget, "do_sample": sample, "top_k": 0}

    torch.manual_seed(seed)
    processor_ = json_schema_logits_processor(tokenizer, schema)
    constrained = model.generate(**inputs, **kwargs, logits_processor=[processor_])[0, prompt:]
    text = tokenizer.decode(constrained, skip_special_tokens=True)
    assert validates(text, schema), (schema, text)
    assert int(constrained[-1]) == tokenizer.eos_token_id or len(constrained) < budget, "ended by eos"

    torch.manual_seed(seed)
    free = model.generate(**inputs, **{**kwargs, "max_new_tokens": min(budget, 48)})[0, prompt:]
    assert not validates(tokenizer.decode(free, skip_special_tokens=True), schema)


def test_field_confidence_is_the_mean_probability_of_each_values_tokens(tiny):
    model, processor, inputs = tiny
    tokenizer = processor.tokenizer
    schema = {"type": "object", "additionalProperties": False, "required": ["unit", "amount", "note"],
              "properties": {"unit": {"enum": ["USD", "EUR"]}, "amount": {"type": "integer", "minimum": 0,
                                                                         "maximum": 999},
                             "note": {"type": "string", "maxLength": 4}}}
    constraint = build_json_constraint(model, tokenizer, schema)
    out = generate_with_scores(model, dict(inputs), **constrained_kwargs(model, constraint, {"max_new_tokens": 80}))
    length = int(out["lengths"][0])
    tokens, logprobs = out["tokens"][0, :length].tolist(), out["logprobs"][0, :length].tolist()
    parsed = constraint.parse(tokens, logprobs)
    assert parsed["json_error"] is None and set(parsed["json"]) == {"unit", "amount", "note"}
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    assert json.loads(text) == parsed["json"]
    # Independently: each token's end offset by decoding prefixes, the value's span by searching the text.
    ends = [len(tokenizer.decode(tokens[: i + 1], skip_special_tokens=True)) for i in range(len(tokens))]
    for name, value in parsed["json"].items():
        needle = f'"{name}": ' + json.dumps(value, ensure_ascii=False)
        lo = text.index(needle) + len(needle) - len(json.dumps(value, ensure_ascii=False))
        hi = lo + len(json.dumps(value, ensure_ascii=False))
        chosen = [lp for i, lp in enumerate(logprobs) if (ends[i - 1] if i else 0) < hi and ends[i] > lo]
        assert parsed["field_confidence"][name] == pytest.approx(math.exp(sum(chosen) / len(chosen)), rel=1e-6)
        assert 0 < parsed["field_confidence"][name] <= 1


def test_running_out_of_tokens_is_reported_not_raised(tiny):
    model, processor, inputs = tiny
    constraint = build_json_constraint(model, processor.tokenizer, fields=["revenue", "growth"])
    out = generate_with_scores(model, dict(inputs), **constrained_kwargs(model, constraint, {"max_new_tokens": 5}))
    parsed = constraint.parse(out["tokens"][0].tolist(), out["logprobs"][0].tolist())
    assert parsed["json"] is None and "ended before the JSON was complete" in parsed["json_error"]
