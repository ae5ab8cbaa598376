"""vLLM with the plugin vs our Hugging Face implementation on the same checkpoint: same prompt ids, same greedy ids,
logprobs within agreement.LOGPROB_ATOL, on 1- and 2-page image documents with and without an instruction, and on a
text document (rendered by the checkpoint's processor file)."""

import pytest
from agreement import case_name, max_logprob_diff, mismatches, prompt_of, sampling_params
from conftest import load_reference, make_llm, release

# reference folders: BERT encoder with tokens / pooled fusion, Qwen3 and Qwen2 encoders with tokens fusion, crop mode
# (128-px global view + 64-px local tiles), an original-layout DeepSeek-OCR folder (document-only, 1024-px view)
VARIANTS = ("tokens", "pooled", "qwen3", "qwen2", "crop", "original")


@pytest.fixture(scope="module", params=VARIANTS)
def setup(request):
    llm = make_llm(request.param)
    yield llm, load_reference(request.param)
    release(llm)


def test_agrees_with_hf_reference(setup):
    llm, ref = setup
    outputs = llm.generate([prompt_of(c) for c in ref["cases"]], sampling_params(ref))
    report = {case_name(c): mismatches(c, o) for c, o in zip(ref["cases"], outputs)}
    worst = max(max_logprob_diff(c, o) for c, o in zip(ref["cases"], outputs))
    print(f"fusion={ref['fusion']} encoder={ref['encoder']} crop={ref['crop']}: {len(report)} cases, max |logprob diff| {worst:.2e}")
    kinds = {"1page-noinstr", "1page-instr", "2page-noinstr", "2page-instr"} | (
        set() if ref.get("original") else {"text-instr"})  # an original folder has no processor file to render text
    assert len(report) == len(kinds) + 1 and {k.rstrip("0123456789") for k in report} == kinds
    assert not any(report.values()), report


def test_instruction_changes_the_answer(setup):
    """The splice is live: same pages, different instructions, different greedy ids (also in the reference)."""
    llm, ref = setup
    one_page = [c for c in ref["cases"] if len(c["pages"]) == 1]  # no instruction and two instructions
    outputs = llm.generate([prompt_of(c) for c in one_page], sampling_params(ref))
    answers = [tuple(o.outputs[0].token_ids) for o in outputs]
    if ref.get("original"):  # document-only: the instruction is decoder text, it moves the logprobs, not the ids
        first = [o.outputs[0].logprobs[0][o.outputs[0].token_ids[0]].logprob for o in outputs]
        assert len({round(v, 4) for v in first}) == len(one_page) == 3, first
        return
    assert len(set(answers)) == len(one_page) == 3, answers


def test_offline_helper(setup):
    """deepsynth_vllm.offline.generate on {"document", "instruction"} requests: a text document and an image."""
    from deepsynth_vllm.offline import generate

    llm, ref = setup
    image_case = next(c for c in ref["cases"] if len(c["pages"]) == 2 and c["instruction"])
    if ref.get("original"):  # no processor file: pages only (PIL images pass through)
        outputs = generate(llm, [{"document": image_case["images"], "instruction": image_case["instruction"]}],
                           sampling_params(ref))
        assert mismatches(image_case, outputs[0]) == []
        with pytest.raises(ValueError, match="has no processing_deepsynth.py"):
            generate(llm, [{"document": "some text", "instruction": "x"}])
        return
    text_case = next(c for c in ref["cases"] if c.get("text"))
    requests = [{"document": text_case["text"], "instruction": text_case["instruction"]},
                {"document": image_case["images"], "instruction": image_case["instruction"]}]
    outputs = generate(llm, requests, sampling_params(ref))
    assert [mismatches(c, o) for c, o in zip((text_case, image_case), outputs)] == [[], []]
    with pytest.raises(ValueError, match="instruction must be a non-empty string"):
        generate(llm, [{"document": text_case["text"], "instruction": "  "}])
    with pytest.raises(ValueError, match="unknown request keys"):
        generate(llm, [{"document": text_case["text"], "question": "x"}])


def test_repetition_guard(setup):
    """vLLM's DeepSeek-OCR no-repeat n-gram processor on DeepSynth: with ngram_size=2 no bigram repeats; the answer
    follows the reference up to its first repeated bigram and leaves it there."""
    from vllm import SamplingParams

    llm, ref = setup
    # the first instruction case whose reference answer repeats a bigram, and where it first does
    repeats = [(c, first_repeated_bigram(c["greedy_ids"])) for c in ref["cases"] if c["instruction"]]
    case, first_repeat = next((c, i) for c, i in repeats if i is not None)
    want = case["greedy_ids"]
    params = SamplingParams(temperature=0, max_tokens=len(want), ignore_eos=True,
                            extra_args={"ngram_size": 2, "window_size": 100})
    got = list(llm.generate([prompt_of(case)], params)[0].outputs[0].token_ids)
    bigrams = list(zip(got, got[1:]))
    assert len(set(bigrams)) == len(bigrams), got
    assert got[:first_repeat] == want[:first_repeat] and got[first_repeat] != want[first_repeat], (got, want)


def first_repeated_bigram(ids: list[int]) -> int | None:
    """The index of the token that completes the first bigram seen before, if any."""
    return next((i for i in range(2, len(ids)) if (ids[i - 1], ids[i]) in set(zip(ids[:i - 1], ids[1:i]))), None)
