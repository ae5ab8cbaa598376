"""DeepSeek-OCR's real sizes (SAM-B, CLIP-L, the 3B MoE decoder: 3.3B parameters) with random weights, one 1024-px
page: ours vs vLLM with the deepsynth-vllm plugin, one after the other (each needs 7-15 GB; never both at once).

    python benchmarks/bench_vllm_real.py [--dtype float32|bfloat16] [--new-tokens 32] [--work-dir tmp/vllm-real]
                                         [--keep] [--profile]

--dtype: what both sides compute in (the checkpoint is stored in bf16). Default float32: on a CPU without
AVX512-BF16 / AMX, torch's bf16 matmul is tens of times slower than fp32 (the output measures it).

Steps, each its own process so that its memory is returned: (1) build the checkpoint (bf16, 6.7 GB; no instruction
encoder: the document-only model both sides share; base mode: one 1024-px view, 273 vision tokens; the logits rows
of eos, the special tokens and the ids past the tokenizer's are zeroed, so both sides write --new-tokens ordinary
tokens), (2) ours: vision tower alone, prefill (pixels -> first logits), then a greedy loop on the KV cache, (3)
vLLM: vllm_plugin/tools/time_page.py in `.venv-vllm` (what scripts/test_vllm.sh builds). The folder is deleted at
the end unless --keep. --profile: both sides print their top ops by self CPU time (stderr).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import common as C

SIDE_ENV = {"OMP_NUM_THREADS": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def build(folder: Path) -> None:
    import torch

    from configuration_deepsynth import DeepSynthConfig
    from processing_deepsynth import DeepSynthImageProcessor

    cfg = DeepSynthConfig(vision_config={}, text_config={}, instruction_encoder_config=None, instruction_fusion="none",
                          image_token_id=C.IMAGE_TOKEN_ID, instruction_token_id=C.INSTRUCTION_TOKEN_ID)
    torch.set_default_dtype(torch.bfloat16)  # built in bf16: 6.7 GB, not 13 GB of fp32 first
    model = C.build_model(cfg)
    torch.set_default_dtype(torch.float32)
    proc = C.make_processor(cfg, mode="base")
    tok = proc.tokenizer
    with torch.no_grad():
        model.lm_head.weight[len(tok):] = 0
        model.lm_head.weight[[tok.eos_token_id, tok.pad_token_id, tok.bos_token_id, cfg.image_token_id,
                              cfg.instruction_token_id]] = 0
    print(f"[build] {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters", file=sys.stderr, flush=True)
    C.save_checkpoint(model, proc, folder / "checkpoint")
    page = DeepSynthImageProcessor.from_pretrained(folder / "checkpoint").load_pages(C.DOC_TEXT)[0]
    page.save(folder / "page.png")


def ours(folder: Path, new_tokens: int, profile: bool, dtype: str) -> dict:
    import resource

    import torch
    from PIL import Image

    from modeling_deepsynth import DeepSynthForConditionalGeneration
    from processing_deepsynth import DeepSynthProcessor

    torch.set_grad_enabled(False)
    started = time.perf_counter()
    model = DeepSynthForConditionalGeneration.from_pretrained(folder / "checkpoint", dtype=getattr(torch, dtype)).eval()
    load_s = time.perf_counter() - started
    print(f"[ours] loaded in {load_s:.0f} s", file=sys.stderr, flush=True)
    proc = DeepSynthProcessor.from_pretrained(folder / "checkpoint")
    vision = proc.image_processor.preprocess([Image.open(folder / "page.png").convert("RGB")])
    ids = [proc.tokenizer.bos_token_id] + [model.config.image_token_id] * int(vision["num_image_tokens"].sum())
    ids += proc._text_ids("\n" + proc.answer_separator)
    pixels = vision["pixel_values"].to(getattr(torch, dtype))
    vision_s = []
    for _ in range(2):  # the first call also pages the weights in and warms the allocator: best of 2, as vLLM's
        t0 = time.perf_counter()
        model.model.get_image_features(pixels)
        vision_s.append(time.perf_counter() - t0)
    print(f"[ours] vision {vision_s} s", file=sys.stderr, flush=True)
    input_ids = torch.tensor([ids])
    mask = torch.ones_like(input_ids)
    t0 = time.perf_counter()
    out = model(input_ids=input_ids, attention_mask=mask, pixel_values=pixels, use_cache=True, logits_to_keep=1)
    first_token_s = time.perf_counter() - t0
    print(f"[ours] vision + prefill {first_token_s:.1f} s", file=sys.stderr, flush=True)
    tokens, step_s = [int(out.logits[0, -1].argmax())], []

    def step(out, mask):
        mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
        return model(input_ids=torch.tensor([[tokens[-1]]]), attention_mask=mask, cache=out.cache,
                     use_cache=True), mask

    for _ in range(new_tokens - 1):
        t0 = time.perf_counter()
        out, mask = step(out, mask)
        tokens.append(int(out.logits[0, -1].argmax()))
        step_s.append(time.perf_counter() - t0)
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(4):
                out, mask = step(out, mask)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), file=sys.stderr)
    return {"load_s": load_s, "vision_s": vision_s, "first_token_s": first_token_s, "prompt_tokens": len(ids),
            "decode_tokens_per_s": len(step_s) / sum(step_s), "ids": tokens,
            "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def bf16_penalty() -> float:
    """torch's bf16 matmul time over fp32's on this CPU (1 thread, 1024 x 768 x 768)."""
    import torch

    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(1024, 768, dtype=dtype), torch.randn(768, 768, dtype=dtype)
        a @ b
        t0 = time.perf_counter()
        for _ in range(3):
            a @ b
        times[dtype] = time.perf_counter() - t0
    return times[torch.bfloat16] / times[torch.float32]


def run_side(cmd: list[str], name: str) -> dict:
    env = {**os.environ, **SIDE_ENV}
    print(f"[bench_vllm_real] {name}: {' '.join(cmd[1:3])} ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, cwd=C.REPO, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise SystemExit(f"{name} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    p = C.parser(__doc__)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--work-dir", default=str(C.REPO / "tmp" / "vllm-real"))
    p.add_argument("--keep", action="store_true", help="keep the 6.7 GB checkpoint folder")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--side", choices=["build", "ours"], help=argparse.SUPPRESS)  # the subprocesses
    p.add_argument("--vllm-python", default=str(C.REPO / ".venv-vllm" / "bin" / "python"))
    args = p.parse_args()
    C.setup(args)
    folder = Path(args.work_dir)
    if args.side == "build":
        return build(folder)
    if args.side == "ours":
        return print(json.dumps(ours(folder, args.new_tokens, args.profile, args.dtype)))
    machine = C.machine_line(args.threads)
    bf16 = bf16_penalty()
    print(f"[bench_vllm_real] bf16 / fp32 matmul time: {bf16:.0f}x", file=sys.stderr, flush=True)
    me = [sys.executable, __file__, "--work-dir", str(folder), "--new-tokens", str(args.new_tokens), "--dtype",
          args.dtype]
    me += ["--profile"] if args.profile else []
    try:
        if not (folder / "checkpoint" / "model.safetensors").is_file():
            t0 = time.perf_counter()
            subprocess.run(me + ["--side", "build"], check=True, cwd=C.REPO, env={**os.environ, **SIDE_ENV})
            print(f"[bench_vllm_real] built in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        res = {"ours": run_side(me + ["--side", "ours"], "ours")}
        res["vllm"] = run_side([args.vllm_python, str(C.REPO / "vllm_plugin" / "tools" / "time_page.py"), "--model",
                                str(folder / "checkpoint"), "--page", str(folder / "page.png"), "--new-tokens",
                                str(args.new_tokens), "--dtype", args.dtype, *(["--profile"] if args.profile else [])],
                               "vllm")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    load_end = os.getloadavg()[0]
    a, b = res["ours"], res["vllm"]
    same = next((i for i, (x, y) in enumerate(zip(a["ids"], b["ids"])) if x != y), len(a["ids"]))
    rows = [
        ["vision tower, one 1024-px page (s)", f"{min(a['vision_s']):.1f}", f"{min(b['vision_s']):.1f}",
         f"{min(a['vision_s']) / min(b['vision_s']):.2f}×"],
        ["first token: vision + prefill (s)", f"{a['first_token_s']:.1f}", f"{b['first_token_s']:.1f}",
         f"{a['first_token_s'] / b['first_token_s']:.2f}×"],
        ["decode (tokens/s, batch 1)", f"{a['decode_tokens_per_s']:.2f}", f"{b['decode_tokens_per_s']:.2f}",
         f"{b['decode_tokens_per_s'] / a['decode_tokens_per_s']:.2f}×"],
        ["peak RSS (MiB)", f"{a['max_rss_mib']:,.0f}", f"{b['max_rss_mib']:,.0f}", ""],
    ]
    body = (
        f"{machine}; 1-min load average at the end {load_end:.2f}. Model: DeepSeek-OCR's sizes (SAM-B 768x12, "
        f"CLIP-L 1024x24, decoder 1280x12, 64 routed experts top-6 + 2 shared, vocab 129,280; 3.3B parameters), "
        f"random weights stored in bf16, computed in {args.dtype} on both sides (torch's bf16 / fp32 matmul time "
        f"on this CPU: {bf16:.0f}×), no instruction encoder; base mode ({a['prompt_tokens']} prompt tokens); "
        f"{args.new_tokens} greedy tokens; 1 thread each; ours first, then vLLM. Ours: the vision tower "
        f"(`get_image_features`, best of 2), one prefill forward, then a greedy loop on the KV cache. vLLM: "
        f"`LLM.generate` with 1 and {args.new_tokens} tokens (vision timed inside the engine, best of 2), decode = "
        f"the difference. Same greedy ids for the first {same} of {args.new_tokens} tokens (different kernels)."
        f" Load: ours {a['load_s']:.0f} s, vLLM start-up {b['init_s']:.0f} s.\n\n"
        + C.md_table(["one page", "ours", "vLLM", "ours / vLLM time (decode: vLLM / ours rate)"], rows)
    )
    C.finish(args, "vLLM vs our engine at DeepSeek-OCR's real sizes (1 thread)", body, res)


if __name__ == "__main__":
    main()
