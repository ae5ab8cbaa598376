"""The committed demo model (checkpoints/deepsynth-demo, issue 7), on held-out documents: names and numbers it never
saw in training, read from rendered pixels. What it measurably does (model card): it transcribes unseen pages
(CER ~0.2), the instruction, through the frozen MiniLM, picks the kind of answer, and it answers about one held-out
question in nine exactly (Q&A exact match ~11%, far below the 95% goal). The assertions pin what it does, against
baselines that a model ignoring the page or the instruction would sit at."""

import functools
import subprocess
import sys

import pytest

from _serving_helpers import REPO_ROOT, subprocess_env
from deepsynth.data.synthetic import generate_split
from deepsynth.evaluation.metrics import character_error_rate, levenshtein
from deepsynth.inference import DEFAULT_MODEL_PATH, InstructionEngine

DEMO = REPO_ROOT / "checkpoints" / "deepsynth-demo"
EXAMPLE = REPO_ROOT / "examples" / "financial_report.txt"

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixtures: tests/conftest.py


@pytest.fixture(scope="module")
def engine():
    assert DEFAULT_MODEL_PATH == DEMO  # the engine, CLI and server default to it
    return InstructionEngine()


def heldout(task: str, n: int, seed: int = 11) -> list[dict]:
    tasks = ("qa", "extraction", "summary", "transcription")
    return [r for r in generate_split("test_values", 4 * n, seed=seed, tasks=tasks) if r["task"] == task][:n]


def page_lines(engine, text: str) -> str:
    """What the pages show, line by line: the transcription target (as scripts/make_synthetic_dataset.py)."""
    pages = engine.processor.image_processor.layout_text(text)
    return "\n".join(line for lines in pages for line in lines)


def similarity(a: str, b: str) -> float:
    return 1 - levenshtein(a, b) / max(len(a), len(b), 1)


def test_transcribes_pages_with_unseen_values(engine):
    rows = heldout("transcription", 8)
    truth = [page_lines(engine, r["text"]) for r in rows]
    read = engine.generate_batch([r["text"] for r in rows], [r["instruction"] for r in rows], max_length=200)
    own = character_error_rate(read, truth)
    other = character_error_rate(read, truth[1:] + truth[:1])  # another document of the same kinds
    assert own < 0.4 and other - own > 0.4, (own, other, read[0], truth[0])


def test_heldout_answers_come_from_their_own_page(engine):
    rows = heldout("qa", 24)
    answers = engine.generate_batch([r["text"] for r in rows], [r["instruction"] for r in rows], max_length=32)
    own = sum(similarity(a, r["answer"]) for a, r in zip(answers, rows)) / len(rows)
    other = sum(similarity(a, r["answer"]) for a, r in zip(answers, rows[1:] + rows[:1])) / len(rows)
    assert own > other + 0.15, (own, other, list(zip(answers, [r["answer"] for r in rows]))[:6])


@functools.cache
def training_text() -> str:
    return "\n".join(r["text"] for r in generate_split("train", 3000, seed=0))


def exact_heldout_answers(engine, rows, max_length, documents=None) -> list[tuple[str, str]]:
    """(prediction, gold) where the model wrote exactly the gold answer and that answer occurs in no training
    document (a memorised or guessable answer such as "2-year" does not count)."""
    documents = documents or [r["text"] for r in rows]
    answers = engine.generate_batch(documents, [r["instruction"] for r in rows], max_length=max_length)
    seen = training_text()
    return [(a, r["answer"]) for a, r in zip(answers, rows) if a.strip() == r["answer"] and r["answer"] not in seen]


@pytest.mark.parametrize("task,max_length,at_least", [("qa", 32, 3), ("extraction", 96, 2)])
def test_answers_some_heldout_questions_exactly(engine, task, max_length, at_least):
    """Exact answers made of names and numbers that never occurred in training can only come from reading the
    page. Measured on these 40 rows: Q&A 4, extraction 3 (issue 7 asks for 95%; the model card says so). Shown
    another row's page instead, the same questions get none of these answers."""
    rows = heldout(task, 40)
    exact = exact_heldout_answers(engine, rows, max_length)
    assert len(exact) >= at_least, exact
    other_pages = [r["text"] for r in rows[1:] + rows[:1]]
    assert exact_heldout_answers(engine, rows, max_length, other_pages) == []


def test_the_instruction_picks_the_kind_of_answer(engine):
    """Same page, different instructions (through the frozen MiniLM only: fusion 'tokens', no instruction text in
    the decoder prompt): an amount, a percentage, a name, a multi-line transcript."""
    assert not engine.processor.instruction_in_decoder
    doc = str(EXAMPLE)
    revenue = engine.generate(doc, "What was the Q3 revenue?", max_length=32)
    growth = engine.generate(doc, "What is the revenue growth rate?", max_length=32)
    company = engine.generate(doc, "What is the company name?", max_length=32)
    transcript = engine.generate(doc, "Transcribe the document.", max_length=160)
    assert revenue.startswith("$") and revenue.endswith("M"), revenue
    assert growth.endswith("%") and not growth.startswith("$"), growth
    assert not any(c.isdigit() for c in company), company
    assert transcript.count("\n") >= 5 and "$45.2M" in transcript and "Q3" in transcript, transcript


def test_pipeline_loads_the_committed_checkpoint_in_a_fresh_process(engine):
    script = (
        "from transformers import pipeline\n"
        f"pipe = pipeline(model={str(DEMO)!r}, trust_remote_code=True)\n"
        f"out = pipe(document=open({str(EXAMPLE)!r}).read(), instruction='Transcribe the document.', max_new_tokens=160)\n"
        "print(repr(out['answer']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], env=subprocess_env(), capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = engine.generate(EXAMPLE.read_text(), "Transcribe the document.", max_length=160)
    assert proc.stdout.strip().splitlines()[-1] == repr(expected)


@pytest.mark.parametrize("name", ["configuration_deepsynth.py", "modeling_deepsynth.py", "processing_deepsynth.py",
                                  "generation_deepsynth.py", "infer_deepsynth.py", "rendering_deepsynth.py",
                                  "pipeline_deepsynth.py", "structured_deepsynth.py"])
def test_committed_checkpoint_carries_the_current_remote_code(name):
    """pipeline(model=DEMO, trust_remote_code=True) runs the checkpoint's copy: after editing the top-level file,
    copy it into checkpoints/deepsynth-demo (the weights do not change)."""
    assert (DEMO / name).read_bytes() == (REPO_ROOT / name).read_bytes(), f"cp {name} checkpoints/deepsynth-demo/"
