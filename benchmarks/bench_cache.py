"""Document reuse: 8 instructions about one document (base mode) through the serving engine, with its document
cache vs without.

    python benchmarks/bench_cache.py [--config small] [--mode base] [--answer-tokens 16] [--quick]

Uses `deepsynth.inference.engine.InstructionEngine` (documented API: `InstructionEngine(model_path, cache_size=)`,
`generate_result(document, instruction, max_length, **generate_kwargs) -> GenerationResult(cache_hit, ...)`,
`cache.clear()`). Two engines on the same random-weight checkpoint: `cache_size=0` and the default cache. A round
= the 8 requests one after the other, the cache cleared first (so request 1 is a miss that encodes the page and
pre-fills the `bos, <image> x n` prefix; requests 2-8 reuse both). Rounds alternate between the engines; every
answer is exactly `--answer-tokens` long (min_new_tokens) and the answers must be the same with and without cache.
"""

import tempfile
import time

import common as C


def main():
    p = C.parser(__doc__)
    C.add_config_arg(p)
    p.add_argument("--mode", default="base")
    p.add_argument("--answer-tokens", type=int, default=16)
    args = p.parse_args()
    C.setup(args)
    if not C.engine_available():
        raise SystemExit(f"{C.ENGINE_MODULE} does not exist yet: this benchmark needs the serving engine")
    from deepsynth.inference.engine import InstructionEngine

    repeats = 2 if args.quick else 3
    n = args.answer_tokens
    instructions = C.INSTRUCTIONS[:4] if args.quick else C.INSTRUCTIONS
    doc = C.documents(1)[0]
    tmp = tempfile.TemporaryDirectory()  # kept until exit: the processor reads its font from the checkpoint
    path = C.write_engine_checkpoint(args.config, args.mode, tmp.name)
    cold = InstructionEngine(model_path=path, cache_size=0)
    warm = InstructionEngine(model_path=path)
    kw = dict(max_length=n, min_new_tokens=n)
    per_request = {"no cache": [], "cache miss": [], "cache hit": []}
    answers = {}

    def round_(engine, name):
        if engine.cache is not None:
            engine.cache.clear()
        out = []
        for q in instructions:
            t0 = time.perf_counter()
            r = engine.generate_result(doc, q, **kw)
            dt = time.perf_counter() - t0
            key = "no cache" if engine.cache is None else ("cache hit" if r.cache_hit else "cache miss")
            per_request[key].append(dt)
            out.append(r.answer)
        answers[name] = out

    times = C.interleave({"no cache": lambda: round_(cold, "no cache"), "cache": lambda: round_(warm, "cache")},
                         repeats)
    same = answers["no cache"] == answers["cache"]
    ratio = C.paired_ratios(times, "no cache", "cache")
    k = len(instructions)
    rows = [
        ["no cache", f"{C.med(times['no cache']):.2f}", f"{k / C.med(times['no cache']):.2f}", C.spread(times["no cache"])],
        ["document cache", f"{C.med(times['cache']):.2f}", f"{k / C.med(times['cache']):.2f}", C.spread(times["cache"])],
    ]
    lat = [[key, f"{C.med(v) * 1000:,.0f}", len(v)] for key, v in per_request.items() if v]
    n_img = cold.processor.image_processor(doc)["num_image_tokens"].sum().item()
    body = (
        f"Config `{args.config}` ({C.describe_config(cold.model.config)}); one text document rendered as "
        f"{args.mode} pages ({n_img} vision tokens), {k} different instructions, answers of exactly {n} tokens, "
        f"greedy. {repeats} rounds per engine, interleaved. Answers identical with and without the cache: "
        f"{'yes' if same else 'NO'}.\n\n"
        + C.md_table([f"{k} requests", "seconds (median)", "requests/s", "spread"], rows)
        + f"\n\n**Document cache speed-up: {ratio:.1f}×** for {k} instructions on one document (paired median).\n\n"
        "Per-request latency (median over rounds):\n\n"
        + C.md_table(["request", "ms", "samples"], lat)
        + "\n\nWhat a hit skips: rendering and preprocessing (the cache is keyed on the document's source: text, "
        "bytes, or a file's path, size and mtime), the vision encoder and the prefill of the document prefix; the "
        "instruction encoder, the instruction tokens and the answer still run. Target ≥ 4×."
    )
    C.finish(args, "Document cache: 8 instructions on one document", body,
             {"ratio": ratio, "same_answers": same, "times": times, "per_request": per_request})


if __name__ == "__main__":
    main()
