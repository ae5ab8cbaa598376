"""Schema-constrained extraction through every surface (issue 18): the remote-code pipeline, the engine, the CLI
(a real subprocess) and the REST API (a real server on loopback) return the same object for the same request, and
an invalid schema is a ValueError / exit 2 / 422 naming the problem."""

import json
import subprocess
import sys

import pytest
import requests
from transformers import pipeline

from _serving_helpers import DOC_A, DOC_B, REPO_ROOT, start_server, stop_server, subprocess_env
from deepsynth.inference import InstructionEngine, instruct

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixtures: tests/conftest.py

INSTRUCTION = "Extract the revenue, the growth rate and the quarter."
# Bounded values: a random model cannot run out of tokens before the object ends.
SCHEMA = {
    "type": "object",
    "properties": {
        "revenue": {"type": "string", "maxLength": 8},
        "growth": {"enum": ["15%", "12%", "n/a"]},
        "quarter": {"type": "integer", "minimum": 1, "maximum": 4},
    },
    "required": ["revenue", "growth", "quarter"],
    "additionalProperties": False,
}
MAX_LENGTH = 120
BAD_SCHEMA = {"type": "object", "properties": {"revenue": {"type": "strng"}}}


@pytest.fixture(scope="module")
def engine(checkpoint):
    return InstructionEngine(checkpoint)


@pytest.fixture(scope="module")
def server(checkpoint):
    proc, base = start_server(checkpoint)
    yield base
    stop_server(proc)


def run_cli(checkpoint, *args):
    cmd = [sys.executable, "-m", "deepsynth.inference.instruct", "--model", checkpoint, *args]
    return subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)


def test_pipeline_engine_cli_and_api_return_the_same_object(checkpoint, engine, server, tmp_path):
    result = engine.generate_json(DOC_A, INSTRUCTION, SCHEMA, max_length=MAX_LENGTH)
    assert result.json_error is None and set(result.json) == set(SCHEMA["properties"]), result
    assert set(result.field_confidence) == set(SCHEMA["properties"])
    assert all(0 < c <= 1 for c in result.field_confidence.values())

    pipe = pipeline(model=checkpoint, trust_remote_code=True)  # the checkpoint's own copy of the remote code
    piped = pipe(document=DOC_A, instruction=INSTRUCTION, schema=SCHEMA, max_new_tokens=MAX_LENGTH)
    assert piped["json"] == result.json and piped["answer"] == result.answer
    assert piped["field_confidence"] == pytest.approx(result.field_confidence, rel=1e-4)

    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(SCHEMA))
    cli = run_cli(checkpoint, "--document", DOC_A, "--instruction", INSTRUCTION, "--schema", str(schema_file),
                  "--max-length", str(MAX_LENGTH))
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert json.loads(cli.stdout) == result.json

    payload = {"document": DOC_A, "instruction": INSTRUCTION, "schema": SCHEMA, "max_length": MAX_LENGTH}
    response = requests.post(f"{server}/api/inference/extract-json", json=payload, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["json"] == result.json and body["answer"] == result.answer
    assert body["field_confidence"] == pytest.approx(result.field_confidence, rel=1e-4)

    # Another document, another object: the constraint does not make every answer the same.
    other = engine.generate_json(DOC_B, INSTRUCTION, SCHEMA, max_length=MAX_LENGTH)
    assert other.answer != result.answer


def test_fields_shorthand_is_the_same_request_everywhere(checkpoint, engine, server):
    fields = ["revenue", "growth"]
    result = engine.generate_json(DOC_A, INSTRUCTION, fields=fields, max_length=24)
    body = requests.post(f"{server}/api/inference/extract-json", timeout=120, json={
        "document": DOC_A, "instruction": INSTRUCTION, "fields": fields, "max_length": 24}).json()
    assert body["answer"] == result.answer and body["json"] == result.json and body["json_error"] == result.json_error
    cli = run_cli(checkpoint, "--document", DOC_A, "--instruction", INSTRUCTION, "--fields", "revenue,growth",
                  "--max-length", "24", "--json")
    assert json.loads(cli.stdout)["answer"] == result.answer
    # A random model's strings run past 24 tokens: no object, a reason, and the raw text kept.
    assert result.json is None and "ended before the JSON was complete" in result.json_error
    assert cli.returncode == 1 and "ended before the JSON was complete" in cli.stderr
    assert result.answer.startswith('{"revenue": "')


def test_invalid_schema_is_a_client_error_everywhere(checkpoint, engine, server, tmp_path, capsys):
    message = "invalid JSON Schema at properties/revenue/type"
    with pytest.raises(ValueError, match=message):
        engine.generate_json(DOC_A, INSTRUCTION, BAD_SCHEMA)
    with pytest.raises(ValueError, match="needs a schema"):
        engine.generate_json(DOC_A, INSTRUCTION)
    pipe = pipeline(model=checkpoint, trust_remote_code=True)
    with pytest.raises(ValueError, match=message):
        pipe(document=DOC_A, instruction=INSTRUCTION, schema=BAD_SCHEMA)

    schema_file = tmp_path / "bad.json"
    schema_file.write_text(json.dumps(BAD_SCHEMA))
    cli = run_cli(checkpoint, "--document", DOC_A, "--instruction", INSTRUCTION, "--schema", str(schema_file))
    assert cli.returncode == 2 and message in cli.stderr, cli.stderr[-2000:]
    # The CLI's own main() in this process (the subprocess above shows the same path end to end).
    for args, reason in ((["--schema", "nope.json"], "nope.json"), (["--fields", "a,,b"], "non-blank names"),
                         (["--schema", "{}", "--fields", "a"], "not allowed with argument"),
                         (["--schema", "{}", "--stream"], "--stream does not apply")):
        with pytest.raises(SystemExit) as exit_:
            instruct.main(["--model", checkpoint, "--document", DOC_A, "--instruction", INSTRUCTION, *args])
        assert exit_.value.code == 2 and reason in capsys.readouterr().err

    url = f"{server}/api/inference/extract-json"
    bad = requests.post(url, json={"document": DOC_A, "instruction": INSTRUCTION, "schema": BAD_SCHEMA}, timeout=60)
    assert bad.status_code == 422 and message in json.dumps(bad.json()["detail"])  # the schema's list of errors
    for extra in ({}, {"schema": SCHEMA, "fields": ["a"]}):
        neither = requests.post(url, json={"document": DOC_A, "instruction": INSTRUCTION, **extra}, timeout=60)
        assert neither.status_code == 422 and "exactly one of 'schema'" in json.dumps(neither.json())
    dup = requests.post(url, json={"document": DOC_A, "instruction": INSTRUCTION, "fields": ["a", "a"]}, timeout=60)
    assert dup.status_code == 422 and "duplicate field names" in json.dumps(dup.json()["detail"])


def test_upload_extract_json_matches_the_json_endpoint(server):
    text_result = requests.post(f"{server}/api/inference/extract-json", timeout=120, json={
        "document": DOC_A, "instruction": INSTRUCTION, "schema": SCHEMA, "max_length": MAX_LENGTH}).json()
    files = {"file": ("report.txt", DOC_A.encode(), "text/plain")}
    data = {"instruction": INSTRUCTION, "schema": json.dumps(SCHEMA), "max_length": str(MAX_LENGTH)}
    uploaded = requests.post(f"{server}/api/inference/upload/extract-json", files=files, data=data, timeout=120)
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["json"] == text_result["json"]
    no_schema = requests.post(f"{server}/api/inference/upload/extract-json", files=files,
                              data={"instruction": INSTRUCTION}, timeout=60)
    assert no_schema.status_code == 422
