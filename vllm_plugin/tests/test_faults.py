"""The agreement check is able to fail: break the instruction splice or the weight mapping on purpose (the test-only
hook weights.FAULT_ENV) and it reports mismatches where that part matters."""

from agreement import case_name, mismatches, prompt_of, sampling_params
from conftest import load_reference, make_llm, release

from deepsynth_vllm.weights import FAULT_ENV


def run(ref, uuid=None) -> dict:
    llm = make_llm("tokens")
    try:
        outputs = llm.generate([prompt_of(c, uuid) for c in ref["cases"]], sampling_params(ref))
        return {case_name(c): mismatches(c, o) for c, o in zip(ref["cases"], outputs)}
    finally:
        release(llm)


def test_reversed_instruction_rows_fail_only_with_an_instruction(monkeypatch):
    ref = load_reference("tokens")
    monkeypatch.setenv(FAULT_ENV, "splice_order")
    report = run(ref, uuid="splice-fault")
    print("splice_order fault:", report)
    assert all(report[k] for k in report if "-instr" in k), report
    assert not any(report[k] for k in report if "-noinstr" in k), report


def test_swapped_expert_halves_fail_everywhere(monkeypatch):
    ref = load_reference("tokens")
    monkeypatch.setenv(FAULT_ENV, "expert_halves")
    report = run(ref)
    print("expert_halves fault:", report)
    assert all(report.values()), report
