"""Time one page through vLLM with the deepsynth-vllm plugin (run in the vLLM environment; benchmarks/bench_vllm_real.py
calls it): seconds in the vision tower, seconds to the first token, decode tokens/s. Prints one JSON line.

    python vllm_plugin/tools/time_page.py --model DIR --page PAGE.png [--new-tokens 32] [--dtype bfloat16] [--profile]

The engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) so that the vision tower's calls can be timed;
prefix caching and the multi-modal processor cache are off and every request has a fresh uuid, so each request
encodes its page again. Decode rate = (N - 1) / (t(N tokens) - t(1 token)): vision and prefill cancel out.
--profile: torch.profiler's top ops (self CPU time) over one N-token request, on stderr.
"""

import argparse
import json
import os
import resource
import sys
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--page", required=True)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()

    from PIL import Image
    from vllm import LLM, SamplingParams

    from deepsynth_vllm.model import DeepSynthForConditionalGeneration

    vision_seconds = []
    embed = DeepSynthForConditionalGeneration.embed_multimodal

    def timed_embed(self, **kwargs):
        started = time.perf_counter()
        out = embed(self, **kwargs)
        vision_seconds.append(time.perf_counter() - started)
        return out

    DeepSynthForConditionalGeneration.embed_multimodal = timed_embed
    started = time.perf_counter()
    llm = LLM(model=args.model, dtype=args.dtype, max_model_len=2048, enforce_eager=True, max_num_seqs=1,
              limit_mm_per_prompt={"image": 1}, kv_cache_memory_bytes=512 << 20, enable_prefix_caching=False,
              mm_processor_cache_gb=0, seed=0)
    init_s = time.perf_counter() - started
    vision_seconds.clear()  # the start-up profiling run
    page = Image.open(args.page).convert("RGB")

    def request(n: int, uuid: str):
        params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
        prompt = {"prompt": "", "multi_modal_data": {"image": [page]}, "multi_modal_uuids": {"image": [uuid]}}
        t0 = time.perf_counter()
        out = llm.generate([prompt], params, use_tqdm=False)[0]
        return time.perf_counter() - t0, list(out.outputs[0].token_ids), len(out.prompt_token_ids)

    t_first, _, prompt_len = request(1, "first")
    t_full, ids, _ = request(args.new_tokens, "full")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            request(args.new_tokens, "profiled")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), file=sys.stderr)
    print(json.dumps({
        "init_s": init_s, "vision_s": vision_seconds[:2], "first_token_s": t_first, "full_s": t_full,
        "decode_tokens_per_s": (args.new_tokens - 1) / (t_full - t_first), "prompt_tokens": prompt_len,
        "ids": ids, "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
