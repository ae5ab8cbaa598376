"""Peak resident memory (RSS) of inference and of a training step per configuration, each in its own subprocess,
and a check that the MoE decoder only touches the routed experts.

    python benchmarks/bench_memory.py [--configs tiny,small] [--real-vision] [--quick]

Per (config, workload) a fresh Python process builds the model, records its RSS (weights + runtime), resets the
kernel's peak counter (/proc/self/clear_refs), runs the workload and reads VmHWM: "peak" is the whole process,
"workload" is peak minus the RSS before it (activations, KV cache, gradients, optimizer state, allocator slack).
Workloads: inference = one base-mode page + instruction, greedy generate of 32 tokens (batch 1); training = one
AdamW step, batch 4, tiny-mode pages, run_instruct's default freezing; real-vision = one base page through
SAM-B + CLIP-L at the released dimensions (vision tower only).

MoE check: the experts of one MoE layer (the small config's shape, with 64 routed experts top-4 so that "all
experts" would be 16x the routed work) run on 512 tokens under each transformers experts implementation.
Recorded: the rows grouped_mm multiplies (must be tokens x top-k, not tokens x experts), counted FLOPs vs
the routed-only and all-experts FLOPs, time, and the process's workload memory (batched_mm gathers a copy of
the expert weights for every (token, expert) pair: that is the "materialise experts per token" failure mode).
"""

import json
import subprocess
import sys

import torch

import common as C


# ---- child workloads ----------------------------------------------------------------------------------------


def child_model(spec: str, kind: str) -> dict:
    cfg = C.load_config(spec)
    model = C.build_model(cfg)
    params = C.n_params(model)
    if kind == "real-vision":
        from processing_deepsynth import DeepSynthImageProcessor

        pv = DeepSynthImageProcessor(mode="base")(C.DOC_TEXT[:900])["pixel_values"]
        torch.set_grad_enabled(False)
        work = lambda: model.get_image_features(pv)  # noqa: E731
    elif kind == "infer":
        proc = C.make_processor(cfg, mode="base")
        b = dict(proc(document=C.DOC_TEXT[:900], instruction="What was the revenue?", return_tensors="pt"))
        b.pop("num_pages")
        kw = dict(max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=2, **C.never_stop_kwargs(model))
        torch.set_grad_enabled(False)
        work = lambda: model.generate(**b, **kw)  # noqa: E731
    else:  # train
        from bench_mfu import make_batch

        proc = C.make_processor(cfg, mode="tiny")
        batch = make_batch(proc, 4)
        model.model.vision_tower.requires_grad_(False)
        if model.model.instruction_encoder is not None:
            model.model.instruction_encoder.requires_grad_(False)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

        def work():
            model(**batch).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    before = C.rss()
    reset = C.reset_peak_rss()
    work()
    return {"params": params, "rss_before": before, "peak": C.peak_rss(), "reset_ok": reset}


def moe_layer(n_experts: int = 64, top_k: int = 4):
    from transformers.models.unlimited_ocr.configuration_unlimited_ocr import UnlimitedOcrTextConfig
    from transformers.models.unlimited_ocr.modeling_unlimited_ocr import UnlimitedOcrTextMoe

    tc = dict(C.small_text_config())
    tc.update(n_routed_experts=n_experts, num_experts_per_tok=top_k)
    cfg = UnlimitedOcrTextConfig(**tc)
    torch.manual_seed(0)
    moe = UnlimitedOcrTextMoe(cfg).eval()
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.02)
    return cfg, moe


def child_moe(impl: str, tokens: int = 512) -> dict:
    import time

    cfg, moe = moe_layer()
    cfg._experts_implementation = impl
    x = torch.randn(1, tokens, cfg.hidden_size)
    rows = []
    orig = torch.nn.functional.grouped_mm

    def spy(a, b, *args, offs=None, **kw):
        rows.append((a.shape[0], int((torch.diff(offs, prepend=offs.new_zeros(1)) > 0).sum()) if offs is not None else -1))
        return orig(a, b, *args, offs=offs, **kw)

    torch.nn.functional.grouped_mm = spy
    torch.set_grad_enabled(False)
    experts = moe.experts
    _, w, idx = moe.gate(x)
    h = x.view(-1, cfg.hidden_size)
    experts(h, idx, w)  # warm-up (allocator, one-time init)
    rows.clear()
    flops, _ = C.count_flops(lambda: experts(h, idx, w))
    before = C.rss()
    reset = C.reset_peak_rss()
    t0 = time.perf_counter()
    experts(h, idx, w)
    dt = time.perf_counter() - t0
    peak = C.peak_rss()
    i, hdim, e, k = cfg.moe_intermediate_size, cfg.hidden_size, cfg.n_routed_experts, cfg.num_experts_per_tok
    per_pair = 2 * (hdim * 2 * i + i * hdim)
    return {
        "impl": impl, "tokens": tokens, "experts": e, "top_k": k, "seconds": dt, "flops": flops,
        "flops_routed": tokens * k * per_pair, "flops_all": tokens * e * per_pair,
        "grouped_rows": rows[:1], "workload": peak - before, "reset_ok": reset,
        "experts_hit": int(torch.unique(idx).numel()),
    }


# ---- parent -------------------------------------------------------------------------------------------------


def run_child(*child_args) -> dict:
    cmd = [sys.executable, __file__, "--child", *child_args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{' '.join(child_args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    if "--child" in sys.argv:
        args = sys.argv[sys.argv.index("--child") + 1 :]
        threads = [a for a in sys.argv if a.startswith("--threads=")]
        torch.set_num_threads(int(threads[0].split("=")[1]) if threads else C.DEFAULT_THREADS)
        result = child_moe(args[1]) if args[0] == "moe" else child_model(args[0], args[1])
        print(json.dumps(result))
        return
    p = C.parser(__doc__)
    p.add_argument("--configs", default=None, help="comma list of presets / config.json paths (default tiny,small)")
    p.add_argument("--real-vision", action="store_true", help="also one base page through SAM-B + CLIP-L dims")
    args = p.parse_args()
    C.setup(args)
    configs = (args.configs or ("tiny,small")).split(",")
    rows, results = [], {"models": {}, "moe": {}}
    jobs = [(c, k) for c in configs for k in ("infer", "train")]
    if args.real_vision:
        jobs.append(("real-vision", "real-vision"))
    for spec, kind in jobs:
        r = run_child(spec, kind, f"--threads={args.threads}")
        results["models"][f"{spec}:{kind}"] = r
        label = {"infer": "inference: base page, generate 32 tokens", "train": "training step: batch 4, tiny pages",
                 "real-vision": "vision encoding, base page, SAM-B + CLIP-L (vision tower only)"}[kind]
        weights = r["params"] * 4
        rows.append([f"`{spec}`", label, f"{r['params'] / 1e6:.1f}M", C.mib(weights), C.mib(r["rss_before"]),
                     f"**{C.mib(r['peak'])}**", C.mib(r["peak"] - r["rss_before"])])
    moe_rows = []
    for impl in ("grouped_mm", "eager", "batched_mm"):
        r = run_child("moe", impl, f"--threads={args.threads}")
        results["moe"][impl] = r
        moe_rows.append([impl, f"{r['flops'] / 1e9:.2f}", f"{r['flops_routed'] / 1e9:.2f}",
                         f"{r['flops_all'] / 1e9:.2f}", f"{r['seconds'] * 1000:.0f}", C.mib(r["workload"])])
    g = results["moe"]["grouped_mm"]
    rows_mul = g["grouped_rows"][0][0] if g["grouped_rows"] else "?"
    resets = all(r.get("reset_ok") for r in list(results["models"].values()) + list(results["moe"].values()))
    body = (
        "Each row is a fresh subprocess; fp32 weights. MiB = 2^20 bytes."
        + ("" if resets else " (peak counter reset refused by the kernel: peaks include model building)")
        + "\n\n"
        + C.md_table(["config", "workload", "params", "weights MiB", "RSS before MiB", "peak RSS MiB",
                      "workload MiB (peak - before)"], rows)
        + f"\n\n**MoE experts only touch routed experts.** One MoE layer, {g['tokens']} tokens, {g['experts']} routed "
        f"experts top-{g['top_k']} (hidden {C.small_text_config()['hidden_size']}, expert width "
        f"{C.small_text_config()['moe_intermediate_size']}); {g['experts_hit']} experts received tokens. The default "
        f"implementation (grouped_mm) multiplied {rows_mul} rows = tokens x top-k "
        f"({g['tokens'] * g['top_k']}), not tokens x experts ({g['tokens'] * g['experts']}).\n\n"
        + C.md_table(["experts implementation", "GFLOP counted", "GFLOP routed-only", "GFLOP if all experts",
                      "ms", "workload MiB"], moe_rows)
        + "\n\nThe DeepSynth default is grouped_mm (transformers' default); eager loops over the experts that got "
        "tokens; batched_mm (never the default) gathers each routed expert's weights per token: its memory column is "
        "what materialising experts per token costs."
    )
    C.finish(args, "Memory: peak RSS per configuration, MoE routing", body, results)


if __name__ == "__main__":
    main()
