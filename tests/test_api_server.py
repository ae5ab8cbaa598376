"""The REST server, started for real as a subprocess on a free loopback port: the guide's curl and Python client
examples, uploads, server-sent events, limits, API keys, and a burst of concurrent clients."""

import base64
import http.client
import io
import json
import shutil
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import numpy as np
import pytest
import requests
from fastapi import HTTPException
from PIL import Image

from _serving_helpers import DOC_A, DOC_B, start_server, stop_server
from deepsynth.inference import InstructionEngine
from deepsynth.inference.api_server import Gate

RESULT_FIELDS = {"answer", "confidence", "tokens_generated", "inference_time_ms", "queue_time_ms", "pages_used",
                 "pages_total", "truncated"}
PAGE = Image.fromarray(np.random.default_rng(2).integers(0, 255, (160, 120, 3), dtype=np.uint8))


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixtures: tests/conftest.py


@pytest.fixture(scope="module")
def server(checkpoint):
    proc, base = start_server(checkpoint, "--max-pages", "3", "--max-body-mb", "1")
    yield base
    log = stop_server(proc)
    assert "Traceback" not in log, log[-3000:]  # no request crashed anything


@pytest.fixture(scope="module")
def engine(checkpoint):
    """The same model in-process: what the server's answers must equal (greedy)."""
    return InstructionEngine(checkpoint, cache_size=0)


def instruct(base, **payload):
    return requests.post(f"{base}/api/inference/instruct", json=payload, timeout=120)


def pdf_bytes(pages: int) -> bytes:
    buffer = io.BytesIO()
    PAGE.save(buffer, format="PDF", save_all=True, append_images=[PAGE] * (pages - 1), resolution=72)
    return buffer.getvalue()


def sse_events(response) -> list[tuple[str, dict]]:
    events = []
    for block in response.text.split("\n\n"):
        if block.strip():
            lines = dict(line.split(": ", 1) for line in block.splitlines())
            events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_seed_curl_example(server):
    payload = """{
    "document": "AI has transformed healthcare...",
    "instruction": "What are the benefits?",
    "max_length": 256
  }"""
    url = f"{server}/api/inference/instruct"
    if shutil.which("curl"):
        out = subprocess.run(["curl", "-s", "-X", "POST", url, "-H", "Content-Type: application/json", "-d", payload],
                             capture_output=True, text=True, timeout=120, check=True).stdout
    else:
        out = requests.post(url, data=payload, headers={"Content-Type": "application/json"}, timeout=120).text
    data = json.loads(out)
    assert set(data) == RESULT_FIELDS
    assert isinstance(data["answer"], str) and data["answer"]
    assert isinstance(data["confidence"], float) and 0 < data["confidence"] <= 1
    assert isinstance(data["tokens_generated"], int) and 1 <= data["tokens_generated"] <= 256
    assert isinstance(data["inference_time_ms"], int) and data["inference_time_ms"] >= 0


def test_seed_python_client_matches_the_engine(server, engine):
    response = requests.post(
        f"{server}/api/inference/instruct",
        json={"document": "Financial report Q3 2024...", "instruction": "Extract revenue numbers", "max_length": 12},
    )
    data = response.json()
    assert response.status_code == 200 and set(data) == RESULT_FIELDS
    expected = engine.generate_result("Financial report Q3 2024...", "Extract revenue numbers", max_length=12)
    assert data["answer"] == expected.answer and data["tokens_generated"] == expected.tokens_generated == 12
    assert data["confidence"] == pytest.approx(expected.confidence, abs=1e-5)


def test_upload_txt_png_pdf(server, engine):
    form = {"instruction": "What was the revenue?", "max_length": "6"}
    by_json = instruct(server, document=DOC_A, instruction="What was the revenue?", max_length=6).json()
    r = requests.post(f"{server}/api/inference/upload", files={"file": ("report.txt", DOC_A.encode())}, data=form)
    assert r.status_code == 200 and r.json()["answer"] == by_json["answer"]
    png = io.BytesIO()
    PAGE.save(png, format="PNG")
    r = requests.post(f"{server}/api/inference/upload", files={"file": ("scan.png", png.getvalue())}, data=form)
    assert r.status_code == 200 and r.json()["answer"] == engine.generate(PAGE, form["instruction"], max_length=6)
    r = requests.post(f"{server}/api/inference/upload", files={"file": ("doc.pdf", pdf_bytes(2))}, data=form)
    assert r.status_code == 200 and set(r.json()) == RESULT_FIELDS


def test_stream_sends_pieces_then_the_result(server):
    payload = {"document": DOC_B, "instruction": "Summarize the key points", "max_length": 16}
    r = requests.post(f"{server}/api/inference/stream", json=payload, timeout=120)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r)
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "done" and set(kinds[:-1]) == {"token"} and len(kinds) > 2
    result = events[-1][1]
    assert set(result) == RESULT_FIELDS
    streamed = "".join(data["text"] for _, data in events[:-1])
    assert streamed == result["answer"] == instruct(server, **payload).json()["answer"]
    r = requests.post(f"{server}/api/inference/upload/stream", files={"file": ("b.md", DOC_B.encode())},
                      data={"instruction": payload["instruction"], "max_length": "16"})
    kind, data = sse_events(r)[-1]
    assert kind == "done" and data["answer"] == result["answer"]


def test_page_preview(server, engine):
    document = "word " * 150
    r = requests.post(f"{server}/api/inference/pages", json={"document": document})
    data = r.json()
    assert r.status_code == 200 and data["page_count"] == len(data["pages"]) == len(engine.text_pages(document)) > 1
    header, encoded = data["pages"][0]["png"].split(",", 1)
    assert header == "data:image/png;base64"
    assert Image.open(io.BytesIO(base64.b64decode(encoded))).size == (256, 256)  # the tiny checkpoint's pages
    r = requests.post(f"{server}/api/inference/pages/upload", files={"file": ("d.pdf", pdf_bytes(3))})
    assert r.status_code == 200 and r.json()["page_count"] == 3


BAD_JSON_REQUESTS = [
    ({"instruction": "q"}, 422, "document"),
    ({"document": DOC_A}, 422, "instruction"),
    ({"document": DOC_A, "instruction": ""}, 422, "must not be empty"),
    ({"document": "   ", "instruction": "q"}, 422, "must not be empty"),
    ({"document": 123, "instruction": "q"}, 422, "valid string"),
    ({"document": ["a"], "instruction": "q"}, 422, "valid string"),
    ({"document": DOC_A, "instruction": "q", "max_length": "5"}, 422, "valid integer"),
    ({"document": DOC_A, "instruction": "q", "max_length": True}, 422, "valid integer"),
    ({"document": DOC_A, "instruction": "q", "max_length": 0}, 422, "greater than or equal to 1"),
    ({"document": DOC_A, "instruction": "q", "max_length": 1025}, 422, "less than or equal to 1024"),
    ({"document": DOC_A, "instruction": "q", "temperature": -1}, 422, "greater than or equal to 0"),
    ({"document": DOC_A, "instruction": "q", "temperature": "hot"}, 422, "valid number"),
    ({"document": DOC_A, "instruction": "q", "model": "other/model"}, 422, "'model' cannot be chosen per request"),
    ({"document": DOC_A, "instruction": "q", "top_k": 5}, 422, "Extra inputs are not permitted"),
    ({"document": DOC_A, "instruction": "q\ud800"}, 422, "lone surrogate"),
    ({"document": "\udfff" + DOC_A, "instruction": "q"}, 422, "document is not valid Unicode text"),
    ({"document": DOC_A, "instruction": "q", "temperature": 1e-40}, 422, "too small to sample with"),
    ({"document": DOC_A, "instruction": "q", "temperature": 5e-324}, 422, "too small to sample with"),
    ({"document": "x" * (1 << 20), "instruction": "q"}, 413, "larger than the server limit"),
]


@pytest.mark.parametrize("payload, status, message", BAD_JSON_REQUESTS)
def test_bad_json_gives_4xx_and_the_server_keeps_serving(server, payload, status, message):
    r = instruct(server, **payload)
    assert r.status_code == status and message in json.dumps(r.json()), r.text[:500]
    assert instruct(server, document=DOC_A, instruction="q", max_length=1).status_code == 200


def test_malformed_bodies_and_uploads(server):
    url = f"{server}/api/inference/instruct"
    assert requests.post(url, data="{bad json", headers={"Content-Type": "application/json"}).status_code == 422
    assert requests.post(url, data="[1, 2]", headers={"Content-Type": "application/json"}).status_code == 422
    # A body streamed without Content-Length is cut off at the limit too.
    host = urlparse(server)
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
    conn.request("POST", "/api/inference/instruct", body=iter([b'{"document": "' + b"y" * 65536] * 20 + [b'"}']),
                 headers={"Content-Type": "application/json"}, encode_chunked=True)
    assert conn.getresponse().status == 413
    conn.close()
    upload = f"{server}/api/inference/upload"
    form = {"instruction": "q", "max_length": "2"}
    cases = [
        ({"file": ("notes.docx", b"PK..")}, form, 415, "unsupported file type"),
        ({"file": ("empty.txt", b"")}, form, 422, "empty document"),
        ({"file": ("latin1.txt", "caf\xe9".encode("latin-1"))}, form, 422, "not UTF-8"),
        ({"file": ("broken.pdf", b"%PDF-1.4 not really")}, form, 422, "cannot read"),
        ({"file": ("fake.png", b"not an image")}, form, 422, "cannot read"),
        ({"file": ("a.txt", b"text")}, {**form, "model": "/etc"}, 422, "'model' cannot be chosen per request"),
        ({"file": ("a.txt", b"text")}, {**form, "top_k": "5"}, 422, "unknown form field(s) ['top_k']"),
        ({"file": ("a.txt", b"text")}, {"instruction": "q", "temperature": "1e-39"}, 422, "too small to sample"),
        ({"file": ("a.txt", b"text")}, {"instruction": "  "}, 422, "instruction must not be empty"),
        ({"file": ("a.txt", b"text")}, {"instruction": "q", "max_length": "many"}, 422, "max_length"),
        ({"file": ("a.txt", b"text")}, {"instruction": "q", "temperature": "9"}, 422, "temperature"),
        ({}, form, 422, "file"),
    ]
    for files, data, status, message in cases:
        r = requests.post(upload, files=files or None, data=data)
        assert r.status_code == status and message in r.text, (files, r.status_code, r.text[:300])
    r = requests.post(f"{server}/api/inference/stream", json={"document": DOC_A, "instruction": ""})
    assert r.status_code == 422 and r.headers["content-type"] == "application/json"
    for bad in ({"document": DOC_A, "instruction": "\ud800"}, {"document": DOC_A, "instruction": "q", "temperature": 1e-39}):
        r = requests.post(f"{server}/api/inference/stream", json=bad)  # refused before the event stream starts
        assert r.status_code == 422 and r.headers["content-type"] == "application/json", r.text[:300]
    r = requests.post(f"{server}/api/inference/upload/stream", files={"file": ("a.txt", b"t")},
                      data={"instruction": "q", "model": "x"})
    assert r.status_code == 422 and "'model' cannot be chosen" in r.text
    r = requests.post(f"{server}/api/inference/pages/upload", files={"file": ("a.txt", b"t")}, data={"x": "1"})
    assert r.status_code == 422 and "unknown form field(s) ['x']" in r.text
    # invalid UTF-8 in a JSON body: 422 with a reason, as documented
    r = requests.post(url, data=b'{"document": "\xff\xfe", "instruction": "q"}', headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert instruct(server, document=DOC_A, instruction="q", max_length=1).status_code == 200


def test_long_documents_are_read_up_to_the_page_limit_and_say_so(server, engine):
    r = instruct(server, document="word " * 2000, instruction="q", max_length=2)
    data = r.json()
    assert r.status_code == 200 and (data["pages_used"], data["pages_total"], data["truncated"]) == (3, None, True)
    data = instruct(server, document=DOC_A, instruction="q", max_length=2).json()
    assert (data["pages_used"], data["pages_total"], data["truncated"]) == (1, 1, False)
    form = {"instruction": "What was the revenue?", "max_length": "4"}
    r = requests.post(f"{server}/api/inference/upload", files={"file": ("long.pdf", pdf_bytes(5))}, data=form)
    assert r.status_code == 200 and (r.json()["pages_used"], r.json()["pages_total"], r.json()["truncated"]) == (3, None, True), r.text
    assert r.json()["answer"] == engine.generate(pdf_bytes(3), form["instruction"], max_length=4)  # its first 3
    events = sse_events(requests.post(f"{server}/api/inference/upload/stream", data=form,
                                      files={"file": ("long.pdf", pdf_bytes(4))}))
    assert events[-1][0] == "done" and events[-1][1]["truncated"] is True
    preview = requests.post(f"{server}/api/inference/pages", json={"document": "word " * 2000}).json()
    assert preview["page_count"] == 3 and preview["pages_total"] is None and preview["truncated"] is True


def test_host_header_allow_list_and_cors(server, checkpoint):
    url = f"{server}/api/inference/instruct"
    payload = {"document": DOC_A, "instruction": "q", "max_length": 1}
    port = urlparse(server).port
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        assert requests.post(url, json=payload, headers={"Host": host}).status_code == 200, host
    r = requests.post(url, json=payload, headers={"Host": "evil.example"})  # DNS rebinding: refused before any work
    assert r.status_code == 400 and "Invalid host header" in r.text
    # A page on another origin: refused, also as a "simple" multipart POST that needs no preflight.
    evil = {"Origin": "http://evil.example"}
    r = requests.post(f"{server}/api/inference/upload", files={"file": ("a.txt", b"x")}, data={"instruction": "q"},
                      headers=evil)
    assert r.status_code == 403 and "cross-origin request from http://evil.example refused" in r.text
    assert "access-control-allow-origin" not in r.headers
    preflight = {**evil, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    r = requests.options(url, headers=preflight)
    assert r.status_code >= 400 and "access-control-allow-origin" not in r.headers
    assert requests.post(url, json=payload, headers={"Origin": server}).status_code == 200  # the web UI itself
    proc, base = start_server(checkpoint, "--allowed-host", "deepsynth.internal", "--cors-origin", "https://app.example")
    try:
        url = f"{base}/api/inference/instruct"
        assert requests.post(url, json=payload, headers={"Host": "deepsynth.internal"}).status_code == 200
        assert requests.post(url, json=payload, headers={"Host": "evil.example"}).status_code == 400
        ok = {"Origin": "https://app.example"}
        r = requests.options(url, headers={**ok, "Access-Control-Request-Method": "POST",
                                           "Access-Control-Request-Headers": "content-type,x-api-key"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        assert "POST" in r.headers["access-control-allow-methods"]
        r = requests.post(url, json=payload, headers=ok)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        assert requests.post(url, json=payload, headers=evil).status_code == 403
    finally:
        stop_server(proc)


def test_health_and_openapi(server):
    health = requests.get(f"{server}/api/health").json()
    assert health["status"] == "ok" and health["limits"]["max_pages"] == 3 and health["auth_required"] is False
    schema = requests.get(f"{server}/openapi.json").json()
    assert {"/api/inference/instruct", "/api/inference/upload", "/api/inference/stream", "/api/inference/upload/stream",
            "/api/inference/pages", "/api/inference/pages/upload", "/api/health"} <= set(schema["paths"])
    for path in ("/api/inference/upload", "/api/inference/upload/stream", "/api/inference/pages/upload"):
        assert "415" in schema["paths"][path]["post"]["responses"], path
    fields = schema["components"]["schemas"]["InstructRequest"]["properties"]
    assert set(fields) == {"document", "instruction", "max_length", "temperature", "repetition_guard"}
    assert fields["max_length"]["maximum"] == 1024


def test_concurrent_burst_all_succeed(server, engine):
    questions = [f"Question number {i}?" for i in range(12)]
    expected = {q: engine.generate(DOC_B, q, max_length=8) for q in questions[:3]}

    def ask(q):
        if q.endswith(("3?", "7?")):  # a few streams in the mix
            payload = {"document": DOC_B, "instruction": q, "max_length": 8}
            r = requests.post(f"{server}/api/inference/stream", json=payload, timeout=300)
            return q, r.status_code, sse_events(r)[-1][1]
        r = instruct(server, document=DOC_B, instruction=q, max_length=8)
        return q, r.status_code, r.json()

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(ask, questions))
    assert [status for _, status, _ in results] == [200] * 12
    assert all(set(data) == RESULT_FIELDS for _, _, data in results)
    assert {q: data["answer"] for q, _, data in results if q in expected} == expected  # no cross-talk


def test_queue_limit_gives_503():
    gate = Gate(1)
    with gate.slot():
        with pytest.raises(HTTPException) as busy:
            gate.acquire()
    assert busy.value.status_code == 503
    gate.acquire()  # the slot came back


def test_binds_loopback_by_default(server):
    port = urlparse(server).port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outward interface
            outward = s.getsockname()[0]
        except OSError:
            outward = None
    if outward and not outward.startswith("127."):
        with pytest.raises(OSError):
            socket.create_connection((outward, port), timeout=2).close()


def test_api_key(checkpoint):
    proc, base = start_server(checkpoint, "--api-key", "s3cret")
    try:
        payload = {"document": DOC_A, "instruction": "q", "max_length": 2}
        url = f"{base}/api/inference/instruct"
        assert requests.get(f"{base}/api/health").json()["auth_required"] is True
        assert requests.post(url, json=payload).status_code == 401
        r = requests.post(url, json=payload, headers={"X-API-Key": "wrong"})
        assert r.status_code == 401 and "API key" in r.json()["detail"]
        assert requests.post(url, json=payload, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert requests.post(url, json=payload, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert requests.post(url, json=payload, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert requests.post(f"{base}/api/inference/pages", json={"document": "x y"}).status_code == 401
    finally:
        stop_server(proc)
