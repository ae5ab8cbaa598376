"""KV cache on vs off for a 128-token answer (greedy generate, batch 1).

    python benchmarks/bench_kv_cache.py [--config small] [--mode tiny] [--tokens 128] [--quick]

Both runs get the page's vision features precomputed (`image_features=`), so the ratio is the decoder's: with the
cache each step runs one token; without it every step re-runs the whole prompt + answer so far (and the
instruction encoder, whose inputs generate() then passes to every step). Checked first: both write the same ids.
"""

import torch

import common as C


def main():
    p = C.parser(__doc__)
    C.add_config_arg(p)
    p.add_argument("--mode", default="tiny")
    p.add_argument("--tokens", type=int, default=None, help="answer length (default 128, quick 32)")
    args = p.parse_args()
    C.setup(args)
    n = args.tokens or (32 if args.quick else 128)
    repeats = 3

    cfg = C.load_config(args.config)
    model = C.build_model(cfg)
    proc = C.make_processor(cfg, mode=args.mode)
    b = proc(document=C.DOC_TEXT[:700], instruction="Summarize the document in one sentence.", return_tensors="pt")
    torch.set_grad_enabled(False)
    feats = torch.cat(model.get_image_features(b["pixel_values"], b.get("pixel_values_local"), b["images_spatial_crop"]))
    inputs = {k: v for k, v in b.items() if k not in ("pixel_values", "pixel_values_local", "images_spatial_crop", "num_pages")}
    inputs["image_features"] = feats
    kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=2, **C.never_stop_kwargs(model))

    on = model.generate(**inputs, **kw, use_cache=True)
    off = model.generate(**inputs, **kw, use_cache=False)
    same = torch.equal(on, off)
    assert same, "cache on/off disagree"
    times = C.interleave(
        {"cache on": lambda: model.generate(**inputs, **kw, use_cache=True),
         "cache off": lambda: model.generate(**inputs, **kw, use_cache=False)},
        repeats, warmup=0,
    )
    ratio = C.paired_ratios(times, "cache off", "cache on")
    prompt = inputs["input_ids"].shape[1]
    rows = [
        [name, f"{C.med(t):.2f}", f"{n / C.med(t):.1f}", C.spread(t)] for name, t in times.items()
    ]
    body = (
        f"Config `{args.config}` ({C.describe_config(cfg)}); prompt {prompt} tokens ({args.mode} page + instruction), "
        f"answer {n} tokens, greedy, batch 1; ids identical with and without the cache. Medians of {repeats} "
        "interleaved rounds.\n\n"
        + C.md_table(["generate", "seconds", "tokens/s", "spread"], rows)
        + f"\n\n**KV cache speed-up: {ratio:.1f}×** for a {n}-token answer (grows with the answer length: without "
        "the cache step t re-runs prompt + t tokens)."
    )
    C.finish(args, "KV cache on vs off", body, {"ratio": ratio, "tokens": n, "prompt": prompt, "times": times})


if __name__ == "__main__":
    main()
