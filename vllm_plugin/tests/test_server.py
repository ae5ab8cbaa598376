"""vLLM's OpenAI-compatible server with the plugin, as a real subprocess on loopback, called with the real `openai`
client: the chat message's image parts are the pages, its text part the instruction. Same ids as our reference."""

import base64
import io
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import MAX_MODEL_LEN, load_reference, reference_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(reference_dir("tokens") / "checkpoint"),
           "--served-model-name", "deepsynth", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--max-model-len", str(MAX_MODEL_LEN), "--enforce-eager", "--kv-cache-memory-bytes", str(256 << 20),
           "--limit-mm-per-prompt", '{"image": 2}', "--max-num-seqs", "8"]
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    log = open(reference_dir("tokens") / "server.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}: see {log.name}", pytrace=False)
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"server not healthy after 240 s: see {log.name}", pytrace=False)
                time.sleep(1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def data_uri(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")  # lossless: the server decodes the very pixels the reference used
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def chat(client, case, **extra):
    content = [{"type": "image_url", "image_url": {"url": data_uri(im)}} for im in case["images"]]
    if case["instruction"] is not None:
        content.append({"type": "text", "text": case["instruction"]})
    return client.chat.completions.create(
        model="deepsynth", messages=[{"role": "user", "content": content}], temperature=0,
        max_tokens=len(case["greedy_ids"]), logprobs=True, top_logprobs=5,
        extra_body={"ignore_eos": True, "return_token_ids": True, **extra},
    )


def test_chat_completions_agree_with_reference(server):
    from openai import OpenAI

    client = OpenAI(base_url=server + "/v1", api_key="unused")
    ref = load_reference("tokens")
    for case in ref["cases"]:
        reply = chat(client, case)
        choice = reply.choices[0]
        assert reply.prompt_token_ids == case["prompt_ids"], case["instruction"]
        assert choice.token_ids == case["greedy_ids"], case["instruction"]
        got = [t.logprob for t in choice.logprobs.content]
        assert max(abs(a - b) for a, b in zip(got, case["logprobs"])) < 1e-4


def test_too_many_pages_is_a_client_error(server):
    from openai import BadRequestError, OpenAI

    client = OpenAI(base_url=server + "/v1", api_key="unused")
    case = next(c for c in load_reference("tokens")["cases"] if len(c["pages"]) == 2)
    with pytest.raises(BadRequestError) as err:  # 4 pages, the server allows 2 (--limit-mm-per-prompt)
        chat(client, {**case, "images": case["images"] * 2})
    assert err.value.status_code == 400 and "image" in str(err.value)
