"""Schema-constrained JSON decoding (xgrammar, structured_deepsynth.py) vs unconstrained decoding, per token.

    python benchmarks/bench_structured.py [--config small] [--tokens 64] [--quick]

Two models: the bundled demo checkpoint (its trained 384-token BPE) and a random-weight `--config` preset (its
logits 8192 wide: the bitmask covers the whole vocabulary). For each, greedy generate() of the same prompt at
batch 1 and 8, with and without `logits_processor=[constraint]`, interleaved; vision features precomputed so the
time is the decoder's. Unconstrained rows never stop (eos suppressed) and write exactly --tokens; constrained rows
write JSON of `{"answer": string}` and stop when it is complete, so time is divided by the tokens each call wrote.
Also: the processor alone per step (accept the last token, fill the bitmask, apply it) and the schema compile.
"""

import sys
import time

import torch

import common as C

sys.path.insert(0, str(C.REPO))
from structured_deepsynth import JsonConstraint, _COMPILERS, schema_from_fields  # noqa: E402

SCHEMA = schema_from_fields(["answer"])
INSTRUCTION = "Extract the answer as JSON."


def decoder_inputs(model, processor, batch: int) -> dict:
    rows = [processor(document=C.DOC_TEXT[:600], instruction=INSTRUCTION) for _ in range(batch)]
    b = processor.collate(rows)
    feats = torch.cat(model.get_image_features(b["pixel_values"], b.get("pixel_values_local"), b["images_spatial_crop"]))
    inputs = {k: v for k, v in b.items() if k not in ("pixel_values", "pixel_values_local", "images_spatial_crop", "num_pages")}
    inputs["image_features"] = feats
    return inputs


def measure(name, model, processor, n, repeats, batches):
    tokenizer = processor.tokenizer
    vocab = model.get_output_embeddings().weight.shape[0]
    eos = model.generation_config.eos_token_id
    _COMPILERS.pop(tokenizer, None)
    t0 = time.perf_counter()
    constraint = JsonConstraint(tokenizer, SCHEMA, vocab_size=vocab, stop_token_ids=eos)
    first_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    JsonConstraint(tokenizer, SCHEMA, vocab_size=vocab, stop_token_ids=eos)
    cached_compile = time.perf_counter() - t0
    rows, results = [], {"compile_s": first_compile, "cached_compile_s": cached_compile, "vocab": vocab}
    for batch in batches:
        inputs = decoder_inputs(model, processor, batch)
        prompt = inputs["input_ids"].shape[1]
        free_kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, **C.never_stop_kwargs(model))
        cons_kw = dict(max_new_tokens=n, do_sample=False)
        written = {}

        def free():
            written["free"] = model.generate(**inputs, **free_kw).shape[1] - prompt

        def constrained():
            out = model.generate(**inputs, **cons_kw, logits_processor=[constraint.logits_processor()])
            written["constrained"] = out.shape[1] - prompt
            parsed = [constraint.parse(row[prompt:].tolist()) for row in out]
            written["complete"] = sum(p["json"] is not None for p in parsed)

        times = C.interleave({"unconstrained": free, "constrained": constrained}, repeats)
        per_token = {k: C.med(v) / written["free" if k == "unconstrained" else "constrained"] for k, v in times.items()}
        # median of per-round ratios (both variants ran back to back in each round), per written token
        overhead = C.paired_ratios(times, "constrained", "unconstrained") * written["free"] / written["constrained"] - 1
        step = processor_step(constraint, vocab, eos, batch, n, repeats)
        share = step / per_token["unconstrained"]
        results[f"{name}:b{batch}"] = {"per_token_s": per_token, "tokens": dict(written), "overhead": overhead,
                                       "processor_step_s": step, "processor_share": share, "times": times}
        for k in ("unconstrained", "constrained"):
            steps = written["free" if k == "unconstrained" else "constrained"]
            extra = [f"{overhead * 100:+.1f}%", f"{step * 1e6:.0f} µs ({share * 100:.1f}%)"] if k == "constrained" else ["", ""]
            rows.append([name, batch, k, steps, f"{per_token[k] * 1e3:.2f}", f"{batch / per_token[k]:.0f}",
                         C.spread(times[k]), *extra])
    return rows, results


def processor_step(constraint, vocab: int, eos: int, batch: int, n: int, repeats: int) -> float:
    """Seconds per step of the logits processor alone (accept the last tokens, fill the bitmask, apply it) over
    random logits for `batch` rows: only its own call is timed."""
    per_step = []
    for _ in range(repeats):
        proc = constraint.logits_processor()
        ids = torch.zeros(batch, 1, dtype=torch.long)
        scores = torch.randn(n, batch, vocab)
        spent = 0.0
        for step in range(n):
            row = scores[step].clone()
            t0 = time.perf_counter()
            masked = proc(ids, row)
            spent += time.perf_counter() - t0
            ids = torch.cat([ids, masked.argmax(-1, keepdim=True)], dim=1)
            if bool((masked[:, eos] > -1e30).any()):  # a row's JSON is complete: only eos is left for it
                break
        per_step.append(spent / (step + 1))
    return C.med(per_step)


def main():
    p = C.parser(__doc__)
    C.add_config_arg(p)
    p.add_argument("--tokens", type=int, default=None, help="most answer tokens (default 64, quick 16)")
    args = p.parse_args()
    C.setup(args)
    n = args.tokens or (16 if args.quick else 64)
    repeats = 3 if args.quick else 5
    torch.set_grad_enabled(False)

    from modeling_deepsynth import DeepSynthForConditionalGeneration
    from processing_deepsynth import DeepSynthProcessor

    demo = C.REPO / "checkpoints" / "deepsynth-demo"
    models = [("demo", DeepSynthForConditionalGeneration.from_pretrained(demo).eval(),
               DeepSynthProcessor.from_pretrained(demo))]
    cfg = C.load_config(args.config)
    model = C.build_model(cfg).eval()
    processor = C.make_processor(cfg, mode="tiny")
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    models.append((args.config, model, processor))

    rows, results = [], {}
    for name, m, proc in models:
        r, res = measure(name, m, proc, n, repeats, (1, 8))
        rows += r
        results[name] = res
    compile_rows = [[name, res["vocab"], f"{res['compile_s'] * 1e3:.1f}", f"{res['cached_compile_s'] * 1e3:.2f}"]
                    for name, res in results.items()]
    body = (
        f"Machine: {C.machine_line(args.threads)}.\n\n"
        f"Greedy, answers of at most {n} tokens, vision features precomputed; medians of {repeats} interleaved "
        "rounds. Per token = call time / tokens the call wrote (a batch writes its tokens in lockstep). "
        "Overhead = median over rounds of (constrained / unconstrained time per written token) - 1: on a loaded "
        "machine it is mostly noise, so the last column times the logits processor alone (accept the last tokens, "
        "fill the bitmask, apply it; random logits, same batch) per step, and its share of the unconstrained time "
        "per token: the constraint's real cost.\n\n"
        + C.md_table(["model", "batch", "decoding", "tokens", "ms / token", "tokens/s (all rows)", "spread",
                      "overhead", "processor / step (share)"], rows)
        + "\n\nSchema compile (xgrammar `GrammarCompiler`, one string field, the vocabulary set up the first time; "
        "the first model's row also pays xgrammar's one-time start-up; cached: the same schema again, as every later "
        "request):\n\n"
        + C.md_table(["model", "vocabulary", "first compile ms", "cached ms"], compile_rows)
    )
    C.finish(args, "Schema-constrained JSON decoding vs unconstrained", body, results)


if __name__ == "__main__":
    main()
