"""`pipeline(model=DIR, trust_remote_code=True)` -> the document-instruction pipeline: fresh process, document
forms, real batching, generation kwargs."""

import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from _serving_helpers import DOC_A, DOC_B, subprocess_env

QUESTIONS = ["What was the revenue?", "Summarize focusing only on costs", "Extract all numbers"]
PAGE = Image.fromarray(np.random.default_rng(1).integers(0, 255, (180, 140, 3), dtype=np.uint8))


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixtures: tests/conftest.py


@pytest.fixture(scope="module")
def pipe(checkpoint):
    from transformers import pipeline

    return pipeline(model=checkpoint, trust_remote_code=True)


class GenerateSpy:
    """Records each model.generate call's kwargs and calls through."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __enter__(self):
        original = self.model.generate

        def generate(*args, **kwargs):
            self.calls.append(kwargs)
            return original(*args, **kwargs)

        self.model.generate = generate
        return self

    def __exit__(self, *exc):
        del self.model.generate


def test_checkpoint_declares_the_pipeline(checkpoint):
    from pathlib import Path

    config = json.loads((Path(checkpoint) / "config.json").read_text())
    assert config["custom_pipelines"] == {
        "document-instruction": {
            "impl": "pipeline_deepsynth.DocumentInstructionPipeline", "pt": ["AutoModelForImageTextToText"]
        }
    }
    files = {p.name for p in Path(checkpoint).iterdir()}
    assert {"pipeline_deepsynth.py", "processing_deepsynth.py", "modeling_deepsynth.py", "processor_config.json"} <= files
    assert "preprocessor_config.json" not in files  # the processor saves its image processor itself


def test_fresh_process_picks_the_task(checkpoint, pipe, tmp_path):
    """A new interpreter, started elsewhere, with neither this repo nor src/ importable, gets the same answer."""
    script = textwrap.dedent(
        f"""
        import importlib.abc, json, sys
        class Block(importlib.abc.MetaPathFinder):  # an editable install would make the repo importable
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("deepsynth", "pipeline_deepsynth", "modeling_deepsynth",
                                          "processing_deepsynth", "configuration_deepsynth"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import torch
        torch.set_num_threads(1)
        from transformers import pipeline
        pipe = pipeline(model={checkpoint!r}, trust_remote_code=True)
        out = pipe(document={DOC_A!r}, instruction={QUESTIONS[0]!r}, max_new_tokens=6)
        print(json.dumps({{"cls": type(pipe).__name__, "module": type(pipe).__module__, "out": out}}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=subprocess_env(None),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["cls"] == "DocumentInstructionPipeline" and got["module"].startswith("transformers_modules.")
    expected = pipe(document=DOC_A, instruction=QUESTIONS[0], max_new_tokens=6)
    assert got["out"]["answer"] == expected["answer"]
    assert got["out"]["score"] == pytest.approx(expected["score"], abs=1e-6)


def test_call_forms_and_output(pipe):
    out = pipe(document=DOC_A, instruction=QUESTIONS[0], max_new_tokens=4)
    assert set(out) == {"answer", "score"} and isinstance(out["answer"], str) and 0 < out["score"] <= 1
    assert pipe({"document": DOC_A, "instruction": QUESTIONS[0]}, max_new_tokens=4) == out
    assert pipe([{"document": DOC_A, "instruction": QUESTIONS[0]}], max_new_tokens=4) == [out]


def test_document_forms_agree(pipe, tmp_path):
    """Text vs a .txt file, a PIL image vs its PNG file, a PDF path vs its bytes, a list of pages."""
    (tmp_path / "doc.txt").write_text(DOC_B)
    PAGE.save(tmp_path / "page.png")
    pdf = io.BytesIO()
    PAGE.save(pdf, format="PDF", resolution=72)
    (tmp_path / "doc.pdf").write_bytes(pdf.getvalue())

    def ask(document):
        return pipe(document=document, instruction=QUESTIONS[1], max_new_tokens=5)["answer"]

    assert ask(str(tmp_path / "doc.txt")) == ask(DOC_B)
    assert ask(str(tmp_path / "page.png")) == ask(PAGE)
    assert ask(str(tmp_path / "doc.pdf")) == ask(pdf.getvalue())
    assert ask([PAGE, DOC_B]) != ask(DOC_B)  # two pages are read as two pages


def test_batch_size_batches_and_matches_single_calls(pipe):
    documents = [DOC_A, DOC_B, PAGE, DOC_A, DOC_B]
    questions = QUESTIONS + QUESTIONS[:2]
    singles = [pipe(document=d, instruction=q, max_new_tokens=6) for d, q in zip(documents, questions)]
    assert len({s["answer"] for s in singles}) > 1
    with GenerateSpy(pipe.model) as spy:
        batched = pipe(document=documents, instruction=questions, batch_size=2, max_new_tokens=6)
    assert len(spy.calls) == 3  # 2 + 2 + 1
    assert [b["answer"] for b in batched] == [s["answer"] for s in singles]
    assert [b["score"] for b in batched] == pytest.approx([s["score"] for s in singles], abs=1e-5)


def test_generation_kwargs_pass_through(pipe):
    with GenerateSpy(pipe.model) as spy:
        pipe(document=DOC_A, instruction=QUESTIONS[0], max_new_tokens=3, do_sample=True, temperature=0.7, top_k=5)
        pipe(document=DOC_A, instruction=QUESTIONS[0], generate_kwargs={"max_new_tokens": 2, "repetition_penalty": 1.3})
    first, second = spy.calls
    assert {k: first[k] for k in ("max_new_tokens", "do_sample", "temperature", "top_k")} == {
        "max_new_tokens": 3, "do_sample": True, "temperature": 0.7, "top_k": 5}
    assert (second["max_new_tokens"], second["repetition_penalty"]) == (2, 1.3)
    with pytest.raises(ValueError, match="not_a_generate_arg"):  # generate() rejects what it does not know
        pipe(document=DOC_A, instruction=QUESTIONS[0], max_new_tokens=2, not_a_generate_arg=1)


def test_beam_search_batched_equals_single_and_model_generate(pipe):
    documents, questions = [DOC_A, DOC_B, PAGE], QUESTIONS[:3]
    singles = [pipe(document=d, instruction=q, max_new_tokens=6, num_beams=3) for d, q in zip(documents, questions)]
    batched = pipe(document=documents, instruction=questions, batch_size=3, max_new_tokens=6, num_beams=3)
    assert [b["answer"] for b in batched] == [s["answer"] for s in singles]
    assert [b["score"] for b in batched] == pytest.approx([s["score"] for s in singles], abs=1e-5)
    for document, question, single in zip(documents, questions, singles):
        inputs = pipe.processor(document=document, instruction=question, return_tensors="pt")
        ids = pipe.model.generate(**inputs, max_new_tokens=6, num_beams=3)[0, inputs["input_ids"].shape[1]:]
        assert single["answer"] == pipe.processor.tokenizer.decode(ids, skip_special_tokens=True).strip()
    with pytest.raises(ValueError, match="num_return_sequences must be 1"):
        pipe(document=DOC_A, instruction=QUESTIONS[0], max_new_tokens=2, num_beams=2, num_return_sequences=2)


def test_default_answer_length_is_256_tokens(pipe):
    with GenerateSpy(pipe.model) as spy:
        pipe(document=DOC_A, instruction=QUESTIONS[0])
    assert spy.calls[0]["max_new_tokens"] == 256


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"document": DOC_A}, "pass document=... and instruction=..."),
        ({"document": [DOC_A], "instruction": QUESTIONS[:2]}, "as many documents"),
        ({"document": "", "instruction": "q"}, "empty document"),
        ({"document": DOC_A, "instruction": "  "}, "empty instruction"),
        ({"inputs": [{"document": DOC_A}]}, "'document' and 'instruction'"),
    ],
)
def test_bad_input_raises(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe(**kwargs, max_new_tokens=2)
