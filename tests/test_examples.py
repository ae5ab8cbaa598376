"""Every script in examples/instruction_prompting runs as a user runs it (a subprocess, offline) and prints what the
library computes for the same input: the demo model for inference, a tiny random model for training."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from _serving_helpers import REPO_ROOT, subprocess_env
from deepsynth.inference import InstructionEngine

EXAMPLES = REPO_ROOT / "examples" / "instruction_prompting"
REPORT = REPO_ROOT / "examples" / "financial_report.txt"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_example(name: str, *args, cwd: Path) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *map(str, args)], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def demo():
    return InstructionEngine(cache_size=0)  # the bundled demo model, as the scripts load it


@pytest.mark.parametrize("script, instruction, max_length", [
    ("qa.py", "What was the revenue?", 24),
    ("focused_summary.py", "Summarize focusing only on revenue.", 48),
    ("extraction.py", "Extract all percentages.", 48),
])
def test_inference_examples_print_the_engines_answer(demo, tmp_path, script, instruction, max_length):
    out = run_example(script, "--instruction", instruction, cwd=tmp_path)
    expected = demo.generate_result(str(REPORT), instruction, max_length)
    assert out.startswith(f"> {instruction}\n{expected.answer}\n(confidence ")
    assert f"{expected.tokens_generated} tokens)" in out


def test_squad_conversion_example(tmp_path):
    out = run_example("convert_squad.py", "--output", tmp_path / "rows.jsonl", cwd=tmp_path)
    assert "wrote 4 rows" in out
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    squad = [json.loads(line) for line in (EXAMPLES / "squad_sample.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == [s["context"] for s in squad]
    assert [r["instruction"] for r in rows] == [s["question"] for s in squad]
    assert [r["answer"] for r in rows] == ["$45.2M", "as cloud costs fell", "four", "No answer"]


def test_training_example_on_a_tiny_model(tmp_path):
    rows = tmp_path / "rows.jsonl"  # the conversion example's rows (its own test checks them)
    run_example("convert_squad.py", "--output", rows, cwd=tmp_path)
    run_example("train_tiny.py", "--data", rows, "--work", tmp_path / "work", "--steps", 2, cwd=tmp_path)
    out = tmp_path / "work" / "deepsynth-qa"
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["log_history"][-1]["train_loss"] > 0
    answer = InstructionEngine(out, cache_size=0).generate_result("Revenue: $1M", "What was the revenue?", max_length=2)
    assert answer.tokens_generated <= 2 and isinstance(answer.answer, str)


def test_evaluation_example(demo, tmp_path):
    out = run_example("evaluate.py", "--max-samples", 2, cwd=tmp_path)
    report = json.loads(out[out.index("{"):])
    assert report["samples"] == 2 and {"exact_match", "f1_score", "rougeL"} <= report.keys()
    rows = [json.loads(line) for line in (tmp_path / "heldout-values.jsonl").read_text().splitlines()]
    predictions = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [p["prediction"] for p in predictions] == demo.generate_batch(
        [r["text"] for r in rows], [r["instruction"] for r in rows], max_length=64)
