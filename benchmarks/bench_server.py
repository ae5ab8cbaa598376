"""The REST server under concurrent load: 8 and 32 clients at once vs the same requests sent one after another,
against a real server subprocess on loopback (dynamic batching on, the default settings).

    python benchmarks/bench_server.py [--model checkpoints/deepsynth-demo] [--max-length 32] [--quick]

Each request is a different one-page document and instruction (greedy), sent to POST /api/inference/instruct.
Sequential: one client, each request waits for the previous answer. Concurrent: N client threads released together.
Rounds alternate the variants; throughput = answer tokens (eos included, as the server reports them) / wall time;
latency = per request, from send to answer; ratio = median over rounds of concurrent / sequential throughput.
"""

import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import common as C

sys.path.insert(0, str(C.REPO / "tests"))


def percentile(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] if len(xs) > 1 else xs[0]


def send(session, base, document, instruction, max_length) -> tuple[float, dict]:
    started = time.perf_counter()
    r = session.post(f"{base}/api/inference/instruct", timeout=600,
                     json={"document": document, "instruction": instruction, "max_length": max_length})
    r.raise_for_status()
    return time.perf_counter() - started, r.json()


def sequential(base, requests_, max_length):
    import requests

    with requests.Session() as s:
        return [send(s, base, d, q, max_length) for d, q in requests_]


def concurrent(base, requests_, max_length):
    import requests

    barrier = threading.Barrier(len(requests_))

    def one(pair):
        with requests.Session() as s:
            barrier.wait()
            return send(s, base, *pair, max_length)

    with ThreadPoolExecutor(len(requests_)) as pool:
        return list(pool.map(one, requests_))


def main():
    p = C.parser(__doc__)
    p.add_argument("--model", default=str(C.REPO / "checkpoints" / "deepsynth-demo"))
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--server-args", default="", help="extra api_server arguments, space-separated")
    args = p.parse_args()
    C.setup(args)
    from _serving_helpers import start_server, stop_server

    repeats = 2 if args.quick else 3
    docs = C.documents(32)
    pairs = [(d, C.INSTRUCTIONS[i % len(C.INSTRUCTIONS)]) for i, d in enumerate(docs)]
    proc, base = start_server(args.model, *args.server_args.split())
    try:
        variants = {
            "sequential, 8": lambda: sequential(base, pairs[:8], args.max_length),
            "8 concurrent": lambda: concurrent(base, pairs[:8], args.max_length),
            "sequential, 32": lambda: sequential(base, pairs, args.max_length),
            "32 concurrent": lambda: concurrent(base, pairs, args.max_length),
        }
        for fn in variants.values():  # warm-up: first-call costs (fonts, allocator) out of the timing
            fn()
        runs = {name: [] for name in variants}
        order = list(variants)
        for r in range(repeats):
            for name in order if r % 2 == 0 else order[::-1]:
                started = time.perf_counter()
                out = variants[name]()
                runs[name].append((time.perf_counter() - started, out))
        import requests

        batching = requests.get(f"{base}/api/health", timeout=30).json()["batching"]
    finally:
        stop_server(proc)

    rows, results = [], {}
    answers = {name: [o["answer"] for _, o in runs[name][-1][1]] for name in runs}
    for name, rounds in runs.items():
        walls = [wall for wall, _ in rounds]
        tokens = [sum(o["tokens_generated"] for _, o in out) for _, out in rounds]
        latencies = [lat for _, out in rounds for lat, _ in out]
        queue = [o["queue_time_ms"] for _, out in rounds for _, o in out]
        tps = [t / w for t, w in zip(tokens, walls)]
        results[name] = {"walls": walls, "tokens": tokens, "tokens_per_s": tps, "latencies": latencies}
        n = 8 if "8" in name else 32
        base_name = f"sequential, {n}"
        ratio = statistics.median(
            t / s for t, s in zip(tps, results[base_name]["tokens_per_s"])) if base_name in results else None
        same = sum(a == b for a, b in zip(answers[name], answers[base_name]))
        rows.append([name, f"{statistics.median(tps):.1f}", f"{percentile(latencies, 50) * 1000:.0f}",
                     f"{percentile(latencies, 95) * 1000:.0f}", f"{statistics.median(queue):.0f}",
                     "" if name.startswith("sequential") else f"**{ratio:.1f}×**",
                     "" if name.startswith("sequential") else f"{same}/{n}"])
    body = (
        f"{C.machine_line(args.threads)}. Model `{C.Path(args.model).name}`, server started with the defaults "
        f"(batch window {batching['window_ms']} ms, max batch {batching['max_batch_size']}) and OMP_NUM_THREADS=1, "
        f"client threads in another process on the same cores; {args.max_length} answer tokens at most, greedy, "
        f"each request a different one-page document. {repeats} rounds, variants interleaved; server batches: "
        f"{batching['batches']} for {batching['requests']} requests (largest {batching['largest_batch']}).\n\n"
        + C.md_table(["requests", "tokens/s", "p50 latency ms", "p95 latency ms", "median queue_time_ms",
                      "throughput vs sequential", "same answers as sequential"], rows)
        + "\n\nTarget ≥ 4× for 8 concurrent requests on tiny pages. Latency includes HTTP, rendering and the wait "
        "for the batch; queue_time_ms is the part spent waiting for the model (reported apart from "
        "inference_time_ms)."
    )
    C.finish(args, "Server: concurrent requests, dynamic batching", body, results)


if __name__ == "__main__":
    main()
