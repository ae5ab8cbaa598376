"""The comparison of vLLM's outputs with our Hugging Face implementation's reference (shared by the tests)."""

import math

# fp32 on both sides; what differs is the kernels (vLLM's CPU paged attention and fused MoE vs transformers' eager /
# sdpa ops): measured max |diff| 1e-6 on the test checkpoints (tokens and pooled), 100x margin here.
LOGPROB_ATOL = 1e-4


def sampling_params(ref: dict):
    from vllm import SamplingParams

    # raw logprobs (vLLM's default logprobs_mode) are the model's log-softmax, as the reference's
    return SamplingParams(temperature=0, max_tokens=ref["max_new_tokens"], ignore_eos=True, logprobs=5)


def prompt_of(case: dict, uuid: str | None = None) -> dict:
    """uuid: a fresh id per call (made unique per case here), so vLLM's caches do not hand back features computed
    by an earlier request."""
    mm = {"image": case["images"]}
    text = ""
    if case["instruction"] is not None and case.get("fused", True):
        mm["instruction"] = case["instruction"]
    elif case["instruction"] is not None:  # no instruction encoder: the instruction is the prompt's text
        text = case["instruction"]
    prompt = {"prompt": text, "multi_modal_data": mm}
    if uuid is not None:
        key = f"{uuid}-{case_name(case)}"
        prompt["multi_modal_uuids"] = {k: [f"{key}-{k}-{i}" for i in range(len(v) if k == "image" else 1)]
                                       for k, v in mm.items()}
    return prompt


def max_logprob_diff(case: dict, output) -> float:
    completion, worst = output.outputs[0], 0.0
    for step, top in enumerate(case["top"]):
        got = completion.logprobs[step]
        for t, v in top.items():
            if int(t) in got:
                worst = max(worst, abs(got[int(t)].logprob - v))
    return worst


def mismatches(case: dict, output) -> list[str]:
    """Empty when vLLM's request output agrees with the reference case; else what differs."""
    problems = []
    if list(output.prompt_token_ids) != case["prompt_ids"]:
        problems.append(f"prompt ids differ: {len(output.prompt_token_ids)} vs {len(case['prompt_ids'])} tokens")
    completion = output.outputs[0]
    ids = list(completion.token_ids)
    if ids != case["greedy_ids"]:
        problems.append(f"greedy ids {ids} != reference {case['greedy_ids']}")
        return problems
    worst = 0.0
    for step, (token, want, top) in enumerate(zip(ids, case["logprobs"], case["top"])):
        got = completion.logprobs[step]
        worst = max(worst, abs(got[token].logprob - want))
        ref_top = {int(k): v for k, v in top.items()}
        for t, v in ref_top.items():
            if t in got:
                worst = max(worst, abs(got[t].logprob - v))
        if set(list(ref_top)[:3]) - set(got):  # vLLM returns the chosen token + its top 5
            problems.append(f"step {step}: reference top tokens {sorted(ref_top)} not in vLLM's {sorted(got)}")
    if not worst <= LOGPROB_ATOL or math.isnan(worst):
        problems.append(f"logprobs differ by {worst:.2e} > {LOGPROB_ATOL}")
    return problems


def case_name(case: dict) -> str:
    instr = case["instruction"]
    if case.get("text"):
        return f"text-instr{len(instr)}"
    return f"{len(case['pages'])}page-" + ("noinstr" if instr is None else f"instr{len(instr)}")
