"""vLLM with the plugin vs our Hugging Face implementation on the same checkpoint: same prompt ids, same greedy ids,
logprobs within agreement.LOGPROB_ATOL, on 1- and 2-page image documents with and without an instruction."""

import pytest
from agreement import case_name, max_logprob_diff, mismatches, prompt_of, sampling_params
from conftest import load_reference, make_llm, release

FUSIONS = ("tokens", "pooled")


@pytest.fixture(scope="module", params=FUSIONS)
def setup(request):
    llm = make_llm(request.param)
    yield llm, load_reference(request.param)
    release(llm)


def test_agrees_with_hf_reference(setup):
    llm, ref = setup
    outputs = llm.generate([prompt_of(c) for c in ref["cases"]], sampling_params(ref))
    report = {case_name(c): mismatches(c, o) for c, o in zip(ref["cases"], outputs)}
    worst = max(max_logprob_diff(c, o) for c, o in zip(ref["cases"], outputs))
    print(f"fusion={ref['fusion']}: {len(report)} cases, max |logprob diff| {worst:.2e}")
    assert len(report) == 5 and {k.rstrip("0123456789") for k in report} == {
        "1page-noinstr", "1page-instr", "2page-noinstr", "2page-instr"}
    assert not any(report.values()), report


def test_instruction_changes_the_answer(setup):
    """The splice is live: same pages, different instructions, different greedy ids (also in the reference)."""
    llm, ref = setup
    one_page = [c for c in ref["cases"] if len(c["pages"]) == 1]
    outputs = llm.generate([prompt_of(c) for c in one_page], sampling_params(ref))
    answers = [tuple(o.outputs[0].token_ids) for o in outputs]
    assert len(set(answers)) == len(one_page) == 3, answers
