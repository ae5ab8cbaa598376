"""DeepSynth vs transformers' own `unlimited_ocr` (UnlimitedOcrForConditionalGeneration) on the same weights.

    python benchmarks/bench_vs_reference.py [--config small] [--quick] [--real-vision]

The reference is built from the same vision / text sub-configs and loaded with DeepSynth's state_dict (the shared
parts have the same module names; strict=False only skips DeepSynth's instruction encoder, which the parity model
does not have: it runs with instruction_fusion="none", the same architecture as the reference). Before timing, the
script checks that both give the same vision features (tiny / base / gundam with tiles), prefill logits and greedy
ids. Timed, interleaved, medians of paired ratios: vision encoding per mode, a prefill forward (pixels -> logits),
end-to-end generate, and the decode rate = (N_long - N_short) / (t_long - t_short), which leaves vision and prefill
out. `--real-vision` adds one base-mode page through the released SAM-B + CLIP-L dimensions (random weights).
"""

import torch
from transformers import GenerationConfig
from transformers.models.unlimited_ocr.configuration_unlimited_ocr import UnlimitedOcrConfig
from transformers.models.unlimited_ocr.modeling_unlimited_ocr import UnlimitedOcrForConditionalGeneration

import common as C
from processing_deepsynth import DeepSynthImageProcessor


def build_pair(spec: str):
    cfg = C.load_config(spec, fusion="none")
    ours = C.build_model(cfg)
    ref_cfg = UnlimitedOcrConfig(
        vision_config=cfg.vision_config.to_dict(),
        text_config=cfg.text_config.to_dict(),  # layer_types: full attention on every layer, as the original
        image_token_id=cfg.image_token_id,
    )
    ref = UnlimitedOcrForConditionalGeneration(ref_cfg).eval()
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return cfg, ours, ref


def ref_vision_kwargs(batch) -> dict:
    """The processor's page inputs in the reference's vocabulary."""
    kw = {"pixel_values": batch["pixel_values"]}
    crops = batch["images_spatial_crop"].tolist()
    if batch.get("pixel_values_local") is not None:
        kw["pixel_values_local"] = batch["pixel_values_local"]
        kw["num_local_patches"] = [w * h if w * h > 1 else 0 for w, h in crops]
        kw["patches_grid"] = [[w, h] for w, h in crops]
    return kw


def ours_vision_kwargs(batch) -> dict:
    return {k: batch.get(k) for k in ("pixel_values", "pixel_values_local", "images_spatial_crop")}


def gen_config(cfg, n: int) -> GenerationConfig:
    return GenerationConfig(
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        suppress_tokens=[cfg.image_token_id, cfg.instruction_token_id],
    )


def main():
    p = C.parser(__doc__)
    C.add_config_arg(p)
    p.add_argument("--real-vision", action="store_true", help="also time one base page at SAM-B + CLIP-L size")
    p.add_argument("--repeats", type=int, default=None)
    args = p.parse_args()
    C.setup(args)
    repeats = args.repeats or (3 if args.quick else 5)
    cfg, ours, ref = build_pair(args.config)
    modes = ["tiny", "base"] if args.quick else ["tiny", "base", "gundam"]
    proc = C.make_processor(cfg, mode="tiny")
    results = {"config": C.describe_config(cfg), "checks": {}, "timings": {}}
    rows, checks = [], []

    def page_batch(mode):
        kwargs = {"page_width": 1280, "page_height": 1664, "font_size": 32, "margin": 48} if mode == "gundam" else {}
        proc.image_processor = DeepSynthImageProcessor(mode=mode, **kwargs)
        return proc(document=C.DOC_TEXT[:900], instruction="What was the revenue?", return_tensors="pt")

    torch.set_grad_enabled(False)
    batches = {m: page_batch(m) for m in modes}
    # ---- correctness first -----------------------------------------------------------------------------
    for mode, b in batches.items():
        a = torch.cat(ours.get_image_features(**ours_vision_kwargs(b)))
        r = torch.cat(ref.model.get_image_features(**ref_vision_kwargs(b), return_dict=True).pooler_output)
        diff = (a - r).abs().max().item()
        checks.append((f"vision features, {mode} ({a.shape[0]} tokens)", f"max abs diff {diff:.1e}"))
        assert a.shape == r.shape and diff < 1e-4, (mode, a.shape, r.shape, diff)
    b = batches["tiny"]
    lo = ours(input_ids=b["input_ids"], attention_mask=b["attention_mask"], **ours_vision_kwargs(b)).logits
    lr = ref(input_ids=b["input_ids"], attention_mask=b["attention_mask"], **ref_vision_kwargs(b)).logits
    diff = (lo - lr).abs().max().item()
    checks.append((f"prefill logits ({lo.shape[1]} tokens)", f"max abs diff {diff:.1e}"))
    assert diff < 1e-4, diff
    n_short, n_long = (4, 16) if args.quick else (8, 40)
    go = ours.generate(input_ids=b["input_ids"], attention_mask=b["attention_mask"], **ours_vision_kwargs(b),
                       generation_config=gen_config(cfg, n_long))
    gr = ref.generate(input_ids=b["input_ids"], attention_mask=b["attention_mask"], **ref_vision_kwargs(b),
                      generation_config=gen_config(cfg, n_long))
    same = torch.equal(go, gr)
    checks.append((f"greedy generate, {n_long} tokens", "identical ids" if same else "IDS DIFFER"))
    assert same
    results["checks"] = dict(checks)

    # ---- timing ----------------------------------------------------------------------------------------
    def add_row(label, unit_fn, times, slow="reference", fast="deepsynth"):
        ratio = C.paired_ratios(times, slow, fast)
        rows.append([label, unit_fn(C.med(times["deepsynth"])), unit_fn(C.med(times["reference"])),
                     f"**{ratio:.2f}×**", f"{C.spread(times['deepsynth'])} / {C.spread(times['reference'])}"])
        results["timings"][label] = {"ratio_ref_over_ours": ratio, **{k: v for k, v in times.items()}}

    for mode, b in batches.items():
        ok, rk = ours_vision_kwargs(b), ref_vision_kwargs(b)
        t = C.interleave(
            {"deepsynth": lambda ok=ok: ours.get_image_features(**ok),
             "reference": lambda rk=rk: ref.model.get_image_features(**rk, return_dict=True)},
            repeats,
        )
        n_tok = int(b["input_ids"].eq(cfg.image_token_id).sum())
        add_row(f"vision encoding, {mode} page ({n_tok} vision tokens)", lambda s: f"{s * 1000:,.0f} ms", t)

    b = batches["tiny"]
    ids = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
    t = C.interleave(
        {"deepsynth": lambda: ours(**ids, **ours_vision_kwargs(b)),
         "reference": lambda: ref(**ids, **ref_vision_kwargs(b))},
        repeats,
    )
    add_row(f"prefill forward, tiny page ({b['input_ids'].shape[1]} tokens)", lambda s: f"{s * 1000:,.0f} ms", t)

    gen = {}
    for n in (n_short, n_long):
        gen[f"deepsynth_{n}"] = lambda n=n: ours.generate(**ids, **ours_vision_kwargs(b), generation_config=gen_config(cfg, n))
        gen[f"reference_{n}"] = lambda n=n: ref.generate(**ids, **ref_vision_kwargs(b), generation_config=gen_config(cfg, n))
    t = C.interleave(gen, repeats)
    e2e = {"deepsynth": t[f"deepsynth_{n_long}"], "reference": t[f"reference_{n_long}"]}
    add_row(f"generate {n_long} tokens end to end (tiny page)", lambda s: f"{s * 1000:,.0f} ms", e2e)
    # marginal decode rate per round: (n_long - n_short) tokens / time difference
    rate = {
        name: [(n_long - n_short) / max(1e-9, a - s) for a, s in zip(t[f"{name}_{n_long}"], t[f"{name}_{n_short}"])]
        for name in ("deepsynth", "reference")
    }
    ratio = C.med([a / r for a, r in zip(rate["deepsynth"], rate["reference"])])
    rows.append([f"decode rate (tokens {n_short + 1}..{n_long}, batch 1)", f"{C.med(rate['deepsynth']):.1f} tok/s",
                 f"{C.med(rate['reference']):.1f} tok/s", f"**{ratio:.2f}×**",
                 f"{C.spread(rate['deepsynth'])} / {C.spread(rate['reference'])}"])
    results["timings"]["decode_tokens_per_s"] = {"ratio_ours_over_ref": ratio, **rate}

    if args.real_vision:
        del ours, ref
        rcfg, rours, rref = build_pair("real-vision")
        rb = DeepSynthImageProcessor(mode="base")(C.DOC_TEXT[:900])
        rb = {k: rb[k] for k in ("pixel_values", "images_spatial_crop")}
        t = C.interleave(
            {"deepsynth": lambda: rours.get_image_features(**ours_vision_kwargs(rb)),
             "reference": lambda: rref.model.get_image_features(**ref_vision_kwargs(rb), return_dict=True)},
            2,
        )
        add_row("vision encoding, base page, **real SAM-B + CLIP-L dims** (273 tokens)",
                lambda s: f"{s:,.1f} s", t)

    body = (
        f"Model: `{args.config}` preset with `instruction_fusion=\"none\"` (the reference architecture): "
        f"{results['config']}.\n\n"
        "Parity checked before timing:\n\n" + C.md_table(["check", "result"], checks) + "\n\n"
        f"Timings (medians of {repeats} interleaved rounds; ratio = median over rounds of reference time / DeepSynth "
        "time, so > 1 means DeepSynth is faster; spread = half the interquartile range):\n\n"
        + C.md_table(["what", "DeepSynth", "reference (unlimited_ocr)", "speed ratio", "spread"], rows)
        + "\n\nBoth models run the same transformers modules (SAM, CLIP, DeepSeek-V2 decoder); what differs is the "
        "wrapper: DeepSynth's per-page layout (views grouped by size, newline/separator splice) and its forward. "
        "Target \"not slower\" = ratio ≥ 1 within the spread."
    )
    C.finish(args, "DeepSynth vs the transformers reference (unlimited_ocr), same weights", body, results)


if __name__ == "__main__":
    main()
