"""Our REST server vs vLLM's OpenAI server with the deepsynth-vllm plugin: same checkpoint, same requests, one after
the other in this one run, over HTTP on loopback.

    python benchmarks/bench_vllm.py [--max-tokens 32] [--rounds 2] [--vllm-python .venv-vllm/bin/python] [--quick]

The checkpoint is the `small` preset (decoder head size 64: vLLM's CPU attention takes 32..512) with random weights,
its processor in tiny mode (512-px views); the logits rows of eos and the special tokens are zeroed, so that neither
side stops early and every answer is exactly --max-tokens tokens (checked). Every request is a different one-page
image document (a PNG data URI of a rendered page) with an instruction as the text part, POST /v1/chat/completions,
temperature 0, on both servers; no document is sent twice, and both servers run with their caches off (ours
`--cache-size 0`; vLLM no prefix caching, no multi-modal processor cache). Each server gets OMP_NUM_THREADS=1 (vLLM:
VLLM_CPU_OMP_THREADS_BIND=nobind as well) and float32. Levels: 1 (requests one after another), 8 and 32 clients at
once. Peak RSS = the largest sum of the RSS of the server's process tree (vLLM: API server + engine core) sampled
every 0.1 s while it served. `.venv-vllm` is what `bash scripts/test_vllm.sh` builds.
"""

import base64
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import common as C

LEVELS = (1, 8, 32)
SERIAL_REQUESTS = 8  # level 1: this many requests one after another
MODEL_ID = "deepsynth-bench"  # the checkpoint folder's name: our server's model id


def build_checkpoint(out_dir: Path) -> Path:
    """The `small` preset with a vocabulary the size of its tokenizer (vLLM detokenizes every id it picks)."""
    import torch

    from configuration_deepsynth import DeepSynthConfig

    d = C._presets()["small"]()
    d["text_config"] = C.small_text_config(vocab_size=4096)
    cfg = DeepSynthConfig(**d, image_token_id=C.IMAGE_TOKEN_ID, instruction_token_id=C.INSTRUCTION_TOKEN_ID,
                          instruction_fusion="tokens")
    model = C.build_model(cfg)
    proc = C.make_processor(cfg, mode="tiny")
    tok = proc.tokenizer
    with torch.no_grad():  # zero logits for eos / special tokens: random weights would otherwise stop at random
        for token_id in {tok.eos_token_id, tok.pad_token_id, tok.bos_token_id, cfg.image_token_id,
                         cfg.instruction_token_id}:
            model.lm_head.weight[token_id] = 0
    C.save_checkpoint(model, proc, out_dir)
    return out_dir


def page_uris(checkpoint: Path, n: int) -> list[str]:
    """n different one-page documents rendered by the checkpoint's processor, as PNG data URIs."""
    from processing_deepsynth import DeepSynthImageProcessor

    processor = DeepSynthImageProcessor.from_pretrained(checkpoint)
    uris = []
    for text in C.documents(n):
        buf = io.BytesIO()
        processor.load_pages(text)[0].save(buf, format="PNG")
        uris.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
    return uris


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], env: dict, health: str, log_path: Path, timeout: float = 300) -> subprocess.Popen:
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=C.REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[2]} exited with {proc.returncode}: see {log_path}")
        try:
            with urllib.request.urlopen(health, timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{cmd[2]} not healthy after {timeout:.0f} s: see {log_path}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def env_one_thread(pythonpath: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", VLLM_CPU_OMP_THREADS_BIND="nobind", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


class PeakRss:
    """The largest summed RSS of a process and its descendants, sampled in a thread."""

    def __init__(self, pid: int, every: float = 0.1):
        import psutil

        self.root, self.every, self.peak = psutil.Process(pid), every, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import psutil

        while not self._done.is_set():
            total = 0
            for p in [self.root, *self.root.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.every)

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self.peak


def chat(session, base: str, uri: str, instruction: str, max_tokens: int) -> dict:
    body = {"model": MODEL_ID, "temperature": 0, "max_tokens": max_tokens, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": instruction}]}]}
    started = time.perf_counter()
    r = session.post(f"{base}/v1/chat/completions", json=body, timeout=900)
    r.raise_for_status()
    out = r.json()
    return {"latency": time.perf_counter() - started, "tokens": out["usage"]["completion_tokens"],
            "answer": out["choices"][0]["message"]["content"]}


def run_level(base: str, requests_: list[tuple[str, str]], clients: int, max_tokens: int) -> dict:
    """`requests_` sent by `clients` threads released together (1: one after another); wall time and per-request
    latencies / tokens."""
    import requests

    barrier = threading.Barrier(clients)
    per_client = [requests_[i::clients] for i in range(clients)]

    def client(share):
        with requests.Session() as s:
            barrier.wait()
            return [chat(s, base, uri, q, max_tokens) for uri, q in share]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for share in pool.map(client, per_client) for r in share]
    return {"wall": time.perf_counter() - started, "results": results}


def serve_and_measure(name, cmd, env, base, health, log_path, plan, max_tokens) -> dict:
    """Start one server, warm it up, run every round's levels, stop it; peak RSS over the whole time it served."""
    proc = start(cmd, env, health, log_path)
    rss = PeakRss(proc.pid)
    try:
        run_level(base, plan["warmup"], 1, max_tokens)  # first-call costs (allocator, kernels) out of the timing
        rounds = [{n: run_level(base, reqs, n, max_tokens) for n, reqs in levels.items()} for levels in plan["rounds"]]
    finally:
        peak = rss.stop()
        stop(proc)
    print(f"[bench_vllm] {name}: done, peak RSS {peak / 2**20:.0f} MiB", file=sys.stderr, flush=True)
    return {"rounds": rounds, "peak_rss": peak}


def percentile(xs: list[float], q: int) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] if len(xs) > 1 else xs[0]


def summarise(measured: dict, level: int) -> dict:
    runs = [r[level] for r in measured["rounds"]]
    lat = [x["latency"] for r in runs for x in r["results"]]
    return {
        "requests_per_s": statistics.median(len(r["results"]) / r["wall"] for r in runs),
        "tokens_per_s": statistics.median(sum(x["tokens"] for x in r["results"]) / r["wall"] for r in runs),
        "p50_ms": percentile(lat, 50) * 1000, "p95_ms": percentile(lat, 95) * 1000,
        "tokens": sorted({x["tokens"] for r in runs for x in r["results"]}),
    }


def main():
    p = C.parser(__doc__)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--vllm-python", default=str(C.REPO / ".venv-vllm" / "bin" / "python"))
    p.add_argument("--work-dir", default=None, help="where the checkpoint and server logs go (default: a temp dir)")
    args = p.parse_args()
    C.setup(args)
    if not Path(args.vllm_python).is_file():
        raise SystemExit(f"--vllm-python {args.vllm_python}: not found (build it with `bash scripts/test_vllm.sh`)")
    rounds = 1 if args.quick else args.rounds
    machine = C.machine_line(args.threads)  # the load average at the start
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_vllm_"))
    checkpoint = build_checkpoint(work / MODEL_ID)  # our server serves it under its folder name
    per_round = SERIAL_REQUESTS + sum(n for n in LEVELS if n > 1)
    uris = page_uris(checkpoint, 2 + rounds * per_round)
    pairs = [(u, C.INSTRUCTIONS[i % len(C.INSTRUCTIONS)]) for i, u in enumerate(uris)]
    plan = {"warmup": pairs[:2], "rounds": []}
    at = 2
    for _ in range(rounds):
        levels = {}
        for n in LEVELS:
            k = SERIAL_REQUESTS if n == 1 else n
            levels[n], at = pairs[at:at + k], at + k
        plan["rounds"].append(levels)

    port = free_port()
    ours = serve_and_measure(
        "ours", [sys.executable, "-m", "deepsynth.inference.api_server", "--model", str(checkpoint), "--port",
                 str(port), "--cache-size", "0", "--log-level", "warning"],
        env_one_thread(str(C.REPO / "src")), f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/api/health",
        work / "ours.log", plan, args.max_tokens)
    port = free_port()
    vllm = serve_and_measure(
        "vllm", [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(checkpoint),
                 "--served-model-name", MODEL_ID, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
                 "--max-model-len", "1024", "--enforce-eager", "--kv-cache-memory-bytes", str(512 << 20),
                 "--max-num-seqs", "32", "--limit-mm-per-prompt", '{"image": 1}', "--no-enable-prefix-caching",
                 "--mm-processor-cache-gb", "0"],
        env_one_thread(None), f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/health",
        work / "vllm.log", plan, args.max_tokens)
    load_end = os.getloadavg()[0]

    rows = []
    results = {"machine": machine, "load_avg_1m_end": load_end, "max_tokens": args.max_tokens, "rounds": rounds}
    answers = {side: [x["answer"] for r in m["rounds"] for n in LEVELS for x in r[n]["results"]]
               for side, m in (("ours", ours), ("vllm", vllm))}
    same = sum(a == b for a, b in zip(answers["ours"], answers["vllm"]))
    for n in LEVELS:
        a, b = summarise(ours, n), summarise(vllm, n)
        results[str(n)] = {"ours": a, "vllm": b}
        label = f"1 (x{SERIAL_REQUESTS} in a row)" if n == 1 else f"{n} at once"
        for side, s in (("ours", a), ("vLLM", b)):
            rows.append([label, side, f"{s['requests_per_s']:.2f}", f"{s['tokens_per_s']:.1f}", f"{s['p50_ms']:,.0f}",
                         f"{s['p95_ms']:,.0f}", "/".join(map(str, s["tokens"]))])
        rows.append([label, "**vLLM / ours**", f"**{b['requests_per_s'] / a['requests_per_s']:.2f}×**",
                     f"{b['tokens_per_s'] / a['tokens_per_s']:.2f}×", "", "", ""])
    results["peak_rss_mib"] = {"ours": ours["peak_rss"] / 2**20, "vllm": vllm["peak_rss"] / 2**20}
    results["same_answers"] = [same, len(answers["ours"])]
    cfg = C.load_config(str(checkpoint))
    body = (
        f"{machine}; 1-min load average at the end {load_end:.2f}. Checkpoint: `small` preset "
        f"({C.describe_config(cfg)}), tiny mode (512-px view, 73 vision tokens), "
        f"random weights, float32. {args.max_tokens} answer tokens per request (every answer measured that long: "
        f"tokens column), greedy; {rounds} round(s) per server after a 2-request warm-up, our server first, then "
        f"vLLM (never both at once); each request a different page. Answers identical between the two servers: "
        f"{same}/{len(answers['ours'])}.\n\n"
        + C.md_table(["concurrent requests", "server", "requests/s", "generated tokens/s", "p50 latency ms",
                      "p95 latency ms", "tokens per answer"], rows)
        + f"\n\nPeak RSS while serving (process tree): ours {ours['peak_rss'] / 2**20:,.0f} MiB, vLLM "
        f"{vllm['peak_rss'] / 2**20:,.0f} MiB (API server + engine core, with its 512 MiB KV cache reserved up "
        f"front). Ours: `python -m deepsynth.inference.api_server --model DIR --cache-size 0` (dynamic batching, "
        f"defaults: window 5 ms, max batch 16). vLLM: `python -m vllm.entrypoints.openai.api_server --model DIR "
        f"--dtype float32 --max-model-len 1024 --enforce-eager --kv-cache-memory-bytes {512 << 20} --max-num-seqs 32 "
        f"--limit-mm-per-prompt '{{\"image\": 1}}' --no-enable-prefix-caching --mm-processor-cache-gb 0` "
        f"(vllm-cpu 0.32.0 with deepsynth-vllm)."
    )
    C.finish(args, "vLLM vs our engine: the two OpenAI servers, same checkpoint", body, results)


if __name__ == "__main__":
    main()
