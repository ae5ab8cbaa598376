"""Batching: 8 requests (8 different documents and instructions) as ONE batched generate vs 8 sequential ones,
through the serving engine.

    python benchmarks/bench_batching.py [--config small] [--quick] [--settings tiny:64,base:16,tiny:64:warm]

Uses `deepsynth.inference.engine.InstructionEngine` (documented API: `generate_batch_results(documents,
instructions, max_length, **generate_kwargs)` = one padded generate() call; `generate_result(...)` = one request),
with `cache_size=0` so that only batching differs. Every answer is exactly N tokens (min_new_tokens), so both sides
generate the same number of tokens. One row per (page mode, answer length) setting: decode-heavy (short prompt, long
answer) and vision-heavy (base page, short answer); a `:warm` setting uses the engine's document cache, filled
before timing (documents seen before: both sides skip the vision encoder, the batch takes the cached features and
single requests the cached prefix). Throughput = generated tokens / wall time; rounds alternate batched /
sequential.
"""

import tempfile

import common as C


def model_only(engine, docs, instructions, n, repeats, rows, results, mode):
    """The model's own batching: generate() on prepared inputs with precomputed vision features (no rendering,
    no vision encoder, no engine), batch of k vs k single calls."""
    import torch

    model, proc = engine.model, engine.processor
    examples = [proc(document=d, instruction=q) for d, q in zip(docs, instructions)]
    pixel_keys = ("pixel_values", "pixel_values_local", "images_spatial_crop", "num_pages")
    with torch.no_grad():
        feats = [torch.cat(model.get_image_features(e["pixel_values"], e.get("pixel_values_local"),
                                                    e["images_spatial_crop"])) for e in examples]
    singles = []
    for e, f in zip(examples, feats):
        b = {k: v for k, v in proc.collate([e]).items() if k not in pixel_keys}
        singles.append({**b, "image_features": f})
    batch = {k: v for k, v in proc.collate(examples).items() if k not in pixel_keys}
    batch["image_features"] = torch.cat(feats)
    kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False)

    def batched():
        with torch.no_grad():
            model.generate(**batch, **kw)

    def sequential():
        with torch.no_grad():
            for s in singles:
                model.generate(**s, **kw)

    times = C.interleave({"sequential": sequential, "batched": batched}, repeats)
    ratio = C.paired_ratios(times, "sequential", "batched")
    tokens = len(examples) * n
    rows.append([f"model.generate only ({mode} prompts, vision features precomputed, no engine), {n}-token answers",
                 f"{tokens / C.med(times['sequential']):.1f}", f"{tokens / C.med(times['batched']):.1f}",
                 f"**{ratio:.1f}×**", "", f"{C.spread(times['sequential'])} / {C.spread(times['batched'])}"])
    results[f"model_only:{mode}:{n}"] = {"ratio": ratio, "times": times}


def main():
    p = C.parser(__doc__)
    C.add_config_arg(p)
    p.add_argument("--settings", default=None, help="comma list of mode:answer_tokens (default tiny:64,base:16)")
    p.add_argument("--requests", type=int, default=8)
    args = p.parse_args()
    C.setup(args)
    if not C.engine_available():
        raise SystemExit(f"{C.ENGINE_MODULE} does not exist yet: this benchmark needs the serving engine")
    from deepsynth.inference.engine import InstructionEngine

    settings = args.settings or ("tiny:32" if args.quick else "tiny:64,base:16,tiny:64:warm")
    repeats = 2 if args.quick else 3
    k = args.requests
    docs = C.documents(k)
    instructions = [C.INSTRUCTIONS[i % len(C.INSTRUCTIONS)] for i in range(k)]
    rows, results = [], {}
    tmp = tempfile.TemporaryDirectory()  # kept until exit: the processor reads its font from the checkpoint
    for setting in settings.split(","):
        mode, n, *warm = setting.split(":")
        n = int(n)
        path = f"{tmp.name}/{mode}"
        if not (C.Path(path) / "config.json").is_file():
            C.write_engine_checkpoint(args.config, mode, path)
        engine = InstructionEngine(model_path=path, cache_size=32 if warm else 0)
        kw = dict(max_length=n, min_new_tokens=n)
        if warm:  # every document seen once (features + prefix cached)
            for d, q in zip(docs, instructions):
                engine.generate_result(d, q, max_length=1)
        answers = {}

        def batched():
            answers["batched"] = [r.answer for r in engine.generate_batch_results(docs, instructions, **kw)]

        def sequential():
            answers["sequential"] = [engine.generate_result(d, q, **kw).answer for d, q in zip(docs, instructions)]

        times = C.interleave({"sequential": sequential, "batched": batched}, repeats)
        ratio = C.paired_ratios(times, "sequential", "batched")
        agree = sum(a == b for a, b in zip(answers["batched"], answers["sequential"]))
        n_img = engine.processor.image_processor(docs[0])["num_image_tokens"].sum().item()
        tokens = k * n
        rows.append([
            f"{mode} pages ({n_img} vision tokens), {n}-token answers" + (", documents cached" if warm else ""),
            f"{tokens / C.med(times['sequential']):.1f}", f"{tokens / C.med(times['batched']):.1f}",
            f"**{ratio:.1f}×**", f"{agree}/{k}",
            f"{C.spread(times['sequential'])} / {C.spread(times['batched'])}",
        ])
        results[setting] = {"ratio": ratio, "agree": agree, "times": times}
        if setting == settings.split(",")[0]:
            model_only(engine, docs, instructions, n, repeats, rows, results, mode)
        engine = None  # free the model before the next setting
    body = (
        f"Config `{args.config}`; {k} requests, each a different one-page document and instruction, greedy, "
        f"exactly N answer tokens; engine document cache off unless the row says 'documents cached'. {repeats} "
        "rounds, interleaved; ratio = median over rounds of sequential time / batched time.\n\n"
        + C.md_table(["setting", "sequential tokens/s", "batched tokens/s", "throughput ratio",
                      "same answers", "spread (seq / batch)"], rows)
        + "\n\n\"same answers\": batched rows are left-padded, so greedy ids can differ from the single-request run "
        "where random-weight logits nearly tie (float summation order); the parity tests pin the padded logits. "
        "Target ≥ 4×. What bounds the engine's ratio on CPU: the vision tower costs the same per page batched or "
        "not (compute-bound; see bench_hotpaths section 8), and every request is rendered, preprocessed and hashed "
        "before it is batched (section 7); only the decode steps amortise, which the model.generate-only row "
        "isolates (left-padded batches also rebuild a 4-D attention mask every step)."
    )
    C.finish(args, f"Batching: {k} requests as one generate vs sequential", body, results)


if __name__ == "__main__":
    main()
