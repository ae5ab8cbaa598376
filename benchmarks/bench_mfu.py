"""Model-FLOPs utilisation (MFU) of a training step and of inference, against this machine's fp32 matmul peak
measured in the same run.

    python benchmarks/bench_mfu.py [--config small|tiny|real-vision|path/to/config.json] [--mode tiny]
                                   [--batch 8] [--train-vision] [--quick]

FLOPs are counted, not estimated: torch's FlopCounterMode over one call (matmuls, convolutions, attention, forward
and backward; MoE experts through grouped_mm, counted with S x K x N per call, so only routed tokens count). The
frozen vision tower's and instruction encoder's forward FLOPs count (the step must run them); the optimizer's
elementwise work does not. MFU = counted FLOPs / median time / median peak, where the peak is a 2048^3 fp32 matmul
timed interleaved with the workloads (A B C A B C ...), so both see the same machine load.

Rows: the full training step (as run_instruct.py trains by default: SAM+CLIP and the instruction encoder frozen,
AdamW), the same step on cached vision features (what a frozen tower allows), inference prefill (pixels ->
logits, no grad) and batched greedy decoding.
"""

from pathlib import Path

import torch

import common as C


def make_batch(proc, batch: int, answer_words: int = 24):
    answer = " ".join(("revenue grew by 15% to $45 million while costs fell " * 4).split()[:answer_words])
    examples = [
        proc.encode_example(C.DOC_TEXT[:700], C.INSTRUCTIONS[i % len(C.INSTRUCTIONS)], answer) for i in range(batch)
    ]
    out = dict(proc.collate(examples, padding_side="right"))
    out.pop("num_pages")
    return out


def main():
    p = C.parser(__doc__)
    C.add_config_arg(p)
    p.add_argument("--mode", default="tiny", help="page mode of the training batch (tiny/small/base/large/gundam)")
    p.add_argument("--batch", type=int, default=None, help="samples per step (default 8, quick 4)")
    p.add_argument("--train-vision", action="store_true", help="train SAM+CLIP too (default: frozen, as run_instruct)")
    p.add_argument("--peak-n", type=int, default=2048)
    p.add_argument("--thread-counts", default=None, help="comma list of intra-op thread counts (default 1,2; quick 1)")
    args = p.parse_args()
    C.setup(args)
    batch_size = args.batch or (4 if args.quick else 8)
    repeats = 3 if args.quick else 5
    decode_tokens = 8 if args.quick else 16

    cfg = C.load_config(args.config)
    model = C.build_model(cfg)
    if Path(args.config).is_dir() and (Path(args.config) / "processor_config.json").is_file():
        from processing_deepsynth import DeepSynthProcessor  # a checkpoint: its own pages (e.g. the demo's 128 px)

        proc = DeepSynthProcessor.from_pretrained(args.config)
        ip = proc.image_processor
        pages = f"its own {ip.base_size}-px pages"
    else:
        proc = C.make_processor(cfg, mode=args.mode)
        pages = f"{args.mode} pages"
    batch = make_batch(proc, batch_size)
    seq = batch["input_ids"].shape[1]
    inner = model.model
    # run_instruct.py defaults: vision frozen, instruction encoder frozen, projectors + decoder trained.
    inner.vision_tower.requires_grad_(args.train_vision)
    if inner.instruction_encoder is not None:
        inner.instruction_encoder.requires_grad_(False)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)

    def train_step(b=batch):
        loss = model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with torch.no_grad():
        feats = torch.cat(model.get_image_features(batch["pixel_values"], batch.get("pixel_values_local"),
                                                   batch["images_spatial_crop"]))
    cached = {k: v for k, v in batch.items() if k not in ("pixel_values", "pixel_values_local", "images_spatial_crop")}
    cached["image_features"] = feats

    prompt = make_batch(proc, batch_size, answer_words=0)  # the same prompts without answers
    prompt = {k: v for k, v in prompt.items() if k != "labels"}
    left = dict(proc.collate([proc.encode_example(C.DOC_TEXT[:700], C.INSTRUCTIONS[i % 8]) for i in range(batch_size)]))
    left.pop("num_pages")
    gen_kw = dict(max_new_tokens=decode_tokens, min_new_tokens=decode_tokens, do_sample=False,
                  pad_token_id=2, **C.never_stop_kwargs(model))

    def prefill():
        with torch.no_grad():
            model(**prompt, use_cache=False)

    def decode():
        with torch.no_grad():
            model.generate(**left, **gen_kw)

    def decode_short():
        with torch.no_grad():
            model.generate(**left, **{**gen_kw, "max_new_tokens": 1, "min_new_tokens": 1})

    train_step()  # warm-up + optimizer state allocation
    flops = {}
    flops["train"], train_ops = C.count_flops(train_step)
    flops["train_cached"], _ = C.count_flops(lambda: train_step(cached))
    model.eval()
    flops["prefill"], _ = C.count_flops(prefill)
    f_dec, _ = C.count_flops(decode)
    f_dec1, _ = C.count_flops(decode_short)
    flops["decode"] = f_dec - f_dec1
    model.train()

    mm, mm_flops = C.matmul_fn(args.peak_n)
    thread_counts = [int(x) for x in (args.thread_counts or ("1" if args.quick else "1,2")).split(",")]

    def at(threads, fn, train=True):
        def run():
            torch.set_num_threads(threads)
            if not train:
                model.eval()
            fn()
            model.train()
        return run

    fns = {}
    for i, th in enumerate(thread_counts):
        fns.update({f"peak@{th}": at(th, mm), f"train@{th}": at(th, train_step)})
        if i == 0:  # the other workloads at the first thread count only (time budget)
            fns.update({
                f"train_cached@{th}": at(th, lambda: train_step(cached)), f"prefill@{th}": at(th, prefill, False),
                f"decode@{th}": at(th, decode, False), f"decode_short@{th}": at(th, decode_short, False),
            })
    times = C.interleave(fns, repeats)
    labels = {
        "train": f"training step (fwd+bwd+AdamW), batch {batch_size} x {seq} tokens, {pages}"
                 + (", vision trained" if args.train_vision else ", vision + instruction encoder frozen"),
        "train_cached": "same step on cached vision features (no SAM/CLIP)",
        "prefill": f"inference prefill (pixels -> logits), batch {batch_size}",
        "decode_only": f"greedy decoding, batch {batch_size}, tokens 2..{decode_tokens}",
    }
    rows, res = [], {"rows": {}, "peak": {}}
    for th in thread_counts:
        tp = times[f"peak@{th}"]
        peak = mm_flops / C.med(tp)
        res["peak"][th] = {"gflops": peak / 1e9, "spread": C.spread(tp)}
        if f"decode@{th}" in times:  # per-round decode time = full generate - 1-token generate
            times[f"decode_only@{th}"] = [a - b for a, b in zip(times[f"decode@{th}"], times[f"decode_short@{th}"])]
        rows.append([f"**peak: {args.peak_n}³ fp32 matmul**", th, f"{mm_flops / 1e9:,.1f}",
                     f"{C.med(tp) * 1000:,.0f}", f"**{peak / 1e9:.1f}**", "100%", "", C.spread(tp)])
        for key, label in labels.items():
            if f"{key}@{th}" not in times:
                continue
            f = flops["decode" if key == "decode_only" else key]
            tk = times[f"{key}@{th}"]
            t = C.med(tk)
            mfu = f / t / peak
            # per-round MFU against the same round's peak: robust to load drifts
            paired = C.med([f / a / (mm_flops / b) for a, b in zip(tk, tp)])
            rows.append([label, th, f"{f / 1e9:,.1f}", f"{t * 1000:,.0f}", f"{f / t / 1e9:.1f}",
                         f"**{mfu * 100:.1f}%**", f"{paired * 100:.1f}%", C.spread(tk)])
            res["rows"][f"{key}@{th}"] = {"gflop": f / 1e9, "seconds": t, "mfu": mfu, "mfu_paired": paired}
    trainable = sum(p.numel() for p in params)
    top = sorted(train_ops.items(), key=lambda kv: -kv[1])[:6]
    body = (
        f"Config: `{args.config}`: {C.describe_config(cfg)}; {C.n_params(model) / 1e6:.1f}M parameters, "
        f"{trainable / 1e6:.1f}M trained.\n\n"
        f"Every row, the peak included, is timed interleaved with all others ({repeats} rounds, medians), at each "
        "intra-op thread count; MFU is against the peak at the same thread count. Under contention from other "
        "processes two OpenMP threads lose time at every barrier, which is why the 1-thread rows can beat them.\n\n"
        + C.md_table(["workload", "threads", "GFLOP (counted)", "median ms", "GFLOP/s", "MFU", "MFU (per-round)",
                      "spread"], rows)
        + "\n\nTraining-step FLOPs by op: " + ", ".join(f"{k.replace('aten.', '')} {v / 1e9:.1f}G" for k, v in top)
        + ".\n\n"
        "Target: training-step MFU ≥ 35% for the demo config."
    )
    res.update(config=C.describe_config(cfg), batch=batch_size, seq=seq, mode=pages)
    C.finish(args, f"Model-FLOPs utilisation (config `{args.config}`)", body, res)


if __name__ == "__main__":
    main()
