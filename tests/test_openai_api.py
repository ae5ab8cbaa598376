"""The OpenAI-compatible endpoint with the real `openai` client against the real server on loopback: images as data
URIs, documents as text parts or file parts, streaming, stop strings, batched concurrent calls, errors in OpenAI's
shape, and the API key as a Bearer token."""

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest
import requests
from PIL import Image

from _serving_helpers import DOC_A, DOC_B, start_server, stop_server
from deepsynth.inference import InstructionEngine

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PAGE = Image.fromarray(np.random.default_rng(5).integers(0, 255, (120, 160, 3), dtype=np.uint8))
KEY = "sk-test-key"


@pytest.fixture(scope="module")
def engine(checkpoint):
    return InstructionEngine(checkpoint, cache_size=0)


@pytest.fixture(scope="module")
def server(checkpoint):
    proc, base = start_server(checkpoint, "--api-key", KEY, "--max-pages", "2", "--batch-window-ms", "100")
    yield base
    log = stop_server(proc)
    assert "Traceback" not in log, log[-3000:]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model_id(client):
    return client.models.list().data[0].id


def png_uri(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def chat(document_text, instruction):
    return [{"role": "user", "content": [{"type": "text", "text": document_text}, {"type": "text", "text": instruction}]}]


def test_models_and_a_text_document(client, model_id, engine):
    assert model_id == "tiny" and [m.id for m in client.models.list().data] == ["tiny"]
    completion = client.chat.completions.create(model=model_id, messages=chat(DOC_A, "What was the revenue?"),
                                                max_tokens=8)
    expected = engine.generate_result(DOC_A, "What was the revenue?", max_length=8)
    choice = completion.choices[0]
    assert completion.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.message.content == expected.answer and choice.finish_reason == "length"
    assert completion.usage.completion_tokens == 8 == expected.tokens_generated
    assert completion.usage.prompt_tokens > 8 and completion.usage.total_tokens == completion.usage.prompt_tokens + 8
    extra = completion.model_extra["deepsynth"]
    assert (extra["pages_used"], extra["pages_total"], extra["truncated"]) == (1, 1, False)
    assert extra["confidence"] == pytest.approx(expected.confidence, abs=1e-4)


def test_image_and_file_parts(client, model_id, engine):
    messages = [{"role": "system", "content": "You are helpful."},  # accepted, not read
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_uri(PAGE)}},
                                             {"type": "text", "text": "Extract all numbers"}]}]
    answer = client.chat.completions.create(model=model_id, messages=messages, max_tokens=6).choices[0].message.content
    assert answer == engine.generate(PAGE, "Extract all numbers", max_length=6)
    text_file = {"type": "file", "file": {"filename": "notes.md",
                                          "file_data": "data:text/markdown;base64," + base64.b64encode(DOC_B.encode()).decode()}}
    messages = [{"role": "user", "content": [text_file, {"type": "text", "text": "Summarize the key points"}]}]
    answer = client.chat.completions.create(model=model_id, messages=messages, max_tokens=6).choices[0].message.content
    assert answer == engine.generate(DOC_B, "Summarize the key points", max_length=6)
    pdf = io.BytesIO()
    PAGE.save(pdf, format="PDF", save_all=True, append_images=[PAGE] * 2, resolution=72)
    pdf_part = {"type": "file", "file": {"filename": "scan.pdf",
                                         "file_data": "data:application/pdf;base64," + base64.b64encode(pdf.getvalue()).decode()}}
    completion = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": [pdf_part, {"type": "text", "text": "q"}]}], max_tokens=2)
    extra = completion.model_extra["deepsynth"]
    assert (extra["pages_used"], extra["pages_total"], extra["truncated"]) == (2, None, True)  # --max-pages 2


def test_streaming_equals_the_answer(client, model_id, engine):
    stream = client.chat.completions.create(model=model_id, messages=chat(DOC_B, "Summarize the key points"),
                                            max_tokens=12, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == engine.generate(DOC_B, "Summarize the key points", max_length=12)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"] and chunks[-1].usage.completion_tokens == 12


def test_stop_strings_streamed_and_not(client, model_id, engine):
    full = engine.generate(DOC_A, "What was the revenue?", max_length=12)
    stop = full[len(full) // 2: len(full) // 2 + 2]
    expected = full[: full.index(stop)]
    kwargs = dict(model=model_id, messages=chat(DOC_A, "What was the revenue?"), max_tokens=12, stop=[stop])
    choice = client.chat.completions.create(**kwargs).choices[0]
    assert (choice.message.content, choice.finish_reason) == (expected, "stop")
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_concurrent_calls_are_batched(client, model_id, engine, server):
    questions = ["What was the revenue?", "Summarize focusing only on costs", "Extract all numbers", "Who wrote it?"]
    docs = [DOC_A, DOC_B, DOC_B, DOC_A]
    before = requests.get(f"{server}/api/health").json()["batching"]

    def call(i):
        return client.chat.completions.create(model=model_id, messages=chat(docs[i], questions[i]), max_tokens=5)

    with ThreadPoolExecutor(4) as pool:
        answers = [c.choices[0].message.content for c in pool.map(call, range(4))]
    assert answers == [engine.generate(d, q, max_length=5) for d, q in zip(docs, questions)]
    after = requests.get(f"{server}/api/health").json()["batching"]
    assert after["requests"] - before["requests"] == 4 and after["batches"] - before["batches"] < 4


@pytest.mark.parametrize("kwargs, status, message", [
    ({"model": "gpt-4o"}, 404, "is not served here"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}, {"type": "text", "text": "q"}]}]}, 400, "remote image URLs are refused"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}, {"type": "text", "text": "q"}]}]}, 400, "invalid base64"),
    ({"messages": [{"role": "user", "content": "just a question"}]}, 400, "no document"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "no instruction"),
    ({"temperature": 1e-39}, 400, "too small to sample with"),
    ({"temperature": 3}, 400, "temperature"),
    ({"top_p": 0}, 400, "top_p"),
    ({"max_tokens": 5000}, 400, "max_tokens"),
    ({"n": 2}, 400, "n"),
    ({"stop": [""]}, 400, "stop strings must not be empty"),
    ({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_data": "data:application/zip;base64,UEs="}}, {"type": "text", "text": "q"}]}]}, 415, "unsupported file type"),
])
def test_errors_have_openai_shape(client, model_id, kwargs, status, message):
    request = {"model": model_id, "messages": chat(DOC_A, "q"), "max_tokens": 2, **kwargs}
    with pytest.raises(openai.APIStatusError) as error:
        client.chat.completions.create(**request)
    assert error.value.status_code == status
    body = error.value.body  # the client unwraps {"error": {...}}
    assert set(body) == {"message", "type", "param", "code"} and message in body["message"], body
    with pytest.raises(openai.APIStatusError) as error:  # the same refusal before a stream would start
        client.chat.completions.create(**request, stream=True)
    assert error.value.status_code == status


def test_api_key_is_a_bearer_token(server, model_id):
    bad = openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as error:
        bad.chat.completions.create(model=model_id, messages=chat(DOC_A, "q"), max_tokens=1)
    assert "API key" in error.value.body["message"]
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    r = requests.post(f"{server}/v1/chat/completions", json={"model": model_id, "messages": chat(DOC_A, "q")})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_raw_bad_bodies_get_openai_errors(server, model_id):
    """What the client cannot send: JSON with a lone surrogate escape, broken JSON, invalid UTF-8."""
    url, auth = f"{server}/v1/chat/completions", {"Authorization": f"Bearer {KEY}"}
    for stream in (False, True):
        r = requests.post(url, headers=auth, json={"model": model_id, "messages": chat(DOC_A, "q\ud800"), "stream": stream})
        assert r.status_code == 400 and "lone surrogate" in r.json()["error"]["message"], r.text
    for body in (b"{not json", b'{"model": "\xff"}', b"[]"):
        r = requests.post(url, headers={**auth, "Content-Type": "application/json"}, data=body)
        assert 400 <= r.status_code < 500 and set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text


JSON_SCHEMA = {"type": "object", "properties": {"revenue": {"type": "string", "maxLength": 8},
                                                "quarter": {"type": "integer", "minimum": 1, "maximum": 4}},
               "required": ["revenue", "quarter"], "additionalProperties": False}


def test_response_format_json_schema_is_the_engines_constrained_answer(client, model_id, engine):
    instruction = "Extract the revenue and the quarter."
    completion = client.chat.completions.create(
        model=model_id, messages=chat(DOC_A, instruction), max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "report", "schema": JSON_SCHEMA}})
    expected = engine.generate_json(DOC_A, instruction, JSON_SCHEMA, max_length=60)
    assert expected.json_error is None and set(expected.json) == {"revenue", "quarter"}
    assert completion.choices[0].message.content == expected.answer
    assert completion.model_extra["deepsynth"]["json"] == expected.json
    # unconstrained, the same random model writes no such object
    free = client.chat.completions.create(model=model_id, messages=chat(DOC_A, instruction), max_tokens=60)
    assert free.choices[0].message.content != expected.answer


def test_response_format_errors_are_openai_400s(client, model_id):
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object",
                                                                          "properties": {"a": {"type": "strng"}}}}}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model_id, messages=chat(DOC_A, "q"), max_tokens=4, response_format=bad)
    assert "strng" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model_id, messages=chat(DOC_A, "q"), max_tokens=4, stream=True,
                                       response_format={"type": "json_object"})
    assert "not streamed" in err.value.body["message"]
