"""Shared by the serving tests: a tiny checkpoint whose answers depend on the document and the instruction."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))

from make_tiny_checkpoint import make_tiny_checkpoint  # noqa: E402
from pipeline_deepsynth import save_with_pipeline  # noqa: E402

DOC_A = "Q3 2024 Financial Report: revenue was $45M, up 15% year over year. Operating costs were $12M."
DOC_B = "AI has transformed healthcare through improved diagnostics, faster triage and fewer errors in radiology."


def make_serving_checkpoint(out_dir, fusion: str = "tokens") -> str:
    """Tiny random checkpoint whose answers depend on the document and the instruction: without the changes below
    every request would get nearly the same answer, and a batching or caching bug that mixes requests up would go
    unseen."""
    model, processor = make_tiny_checkpoint(out_dir, fusion=fusion)
    with torch.no_grad():
        for module in (model.model.multi_modal_projector, model.model.instruction_projector):
            for p in [] if module is None else module.parameters():
                p.mul_(20)
        # Kaiming-scaled convs (larger than the config's std 0.02) make the vision features strongly page-dependent.
        for module in model.model.vision_tower.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.reset_parameters()
    save_with_pipeline(model, processor, out_dir)
    return str(out_dir)


@contextmanager
def torch_threads(n: int):
    """Tiny models on 2 shared cores: one intra-op thread is ~10x faster than two fighting other processes."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(pythonpath: str | None = str(REPO_ROOT / "src")) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")  # see torch_threads
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def start_server(model_dir, *extra_args, timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """The real API server as a subprocess on a free loopback port; returns (process, base URL) once healthy."""
    port = free_port()
    cmd = [sys.executable, "-m", "deepsynth.inference.api_server", "--model", str(model_dir), "--port", str(port),
           *extra_args]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            with urllib.request.urlopen(base + "/api/health", timeout=2) as r:
                if r.status == 200:
                    return proc, base
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"server did not become healthy in {timeout}s:\n{proc.stdout.read()}")


def stop_server(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out
