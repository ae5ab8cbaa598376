"""The guide's command lines on a tiny checkpoint: instruct, evaluate, train (`PYTHONPATH=./src python3 -m ...`)."""

import json
import subprocess
import sys

import pytest

from _serving_helpers import DOC_A, DOC_B, REPO_ROOT, subprocess_env
from deepsynth.evaluation import evaluate as evaluate_cli
from deepsynth.evaluation.metrics import compute_metrics
from deepsynth.inference import InstructionEngine
from deepsynth.inference import instruct as instruct_cli
from deepsynth.training.train import with_default_action


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixtures: tests/conftest.py


@pytest.fixture(scope="module")
def engine(checkpoint):
    return InstructionEngine(checkpoint, cache_size=0)


def run_module(module, *args, cwd=REPO_ROOT):
    """`PYTHONPATH=<repo>/src python3 -m MODULE ARGS` as the guide prints it."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)


def test_seed_instruct_commands(checkpoint, engine, tmp_path, capsys, monkeypatch):
    document = tmp_path / "path" / "to" / "document.txt"
    document.parent.mkdir(parents=True)
    document.write_text(DOC_A)
    proc = run_module("deepsynth.inference.instruct", "--model", checkpoint, "--document", "path/to/document.txt",
                      "--instruction", "What are the key findings?", "--max-length", "256", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == engine.generate(DOC_A, "What are the key findings?", max_length=256) + "\n"
    # the second example (default --max-length 256), in-process
    (tmp_path / "financial_report.txt").write_text(DOC_B)
    monkeypatch.chdir(tmp_path)
    assert instruct_cli.main(["--model", checkpoint, "--document", "financial_report.txt",
                              "--instruction", "Extract all revenue numbers and growth rates"]) == 0
    assert capsys.readouterr().out == engine.generate(DOC_B, "Extract all revenue numbers and growth rates") + "\n"


def test_instruct_json_and_stream(checkpoint, engine, tmp_path, capsys):
    assert instruct_cli.main(["--model", checkpoint, "--document", DOC_B, "--instruction", "Who benefits?",
                              "--max-length", "10", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    expected = engine.generate_result(DOC_B, "Who benefits?", max_length=10)
    assert set(result) == {"answer", "confidence", "tokens_generated", "inference_time_ms", "queue_time_ms",
                           "pages_used", "pages_total", "truncated"}
    assert (result["answer"], result["tokens_generated"]) == (expected.answer, 10)
    assert result["confidence"] == pytest.approx(expected.confidence, abs=1e-5)
    assert instruct_cli.main(["--model", checkpoint, "--document", DOC_B, "--instruction", "Who benefits?",
                              "--max-length", "10", "--stream", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["answer"] == expected.answer
    assert captured.err.endswith(expected.answer + "\n")  # the pieces, streamed to stderr under --json
    assert instruct_cli.main(["--model", checkpoint, "--document", DOC_B, "--instruction", "Who benefits?",
                              "--max-length", "10", "--temperature", "0.7"]) == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--document", "missing_report.txt", "--instruction", "q"], "no such file"),
        (["--document", DOC_A, "--instruction", " "], "instruction must be a non-empty string"),
        (["--document", DOC_A, "--instruction", "q", "--max-length", "0"], "max_length must be a positive integer"),
        (["--document", DOC_A, "--instruction", "q", "--temperature", "inf"], "finite number"),
        (["--document", DOC_A, "--instruction", "q", "--temperature", "nan"], "finite number"),
        (["--document", DOC_A, "--instruction", "q", "--temperature", "1e-40"], "too small to sample with"),
        (["--document", DOC_A, "--instruction", "q\udcff"], "lone surrogate"),
        (["--document", "\ud800" + DOC_A, "--instruction", "q", "--stream"], "lone surrogate"),
    ],
)
def test_instruct_bad_input_exits_2(checkpoint, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        instruct_cli.main(["--model", checkpoint, *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_instruct_invalid_utf8_argument_exits_2_without_a_traceback(checkpoint):
    proc = subprocess.run([sys.executable, "-m", "deepsynth.inference.instruct", "--model", checkpoint,
                           "--document", DOC_A.encode(), "--instruction", b"q\xff\xfe"],
                          cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, timeout=600)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2 and "lone surrogate" in err and "Traceback" not in err, err[-2000:]


def test_instruct_says_when_a_document_was_truncated(checkpoint, engine, capsys):
    long_text = "word " * 3000
    assert instruct_cli.main(["--model", checkpoint, "--document", long_text, "--instruction", "q",
                              "--max-length", "2"]) == 0
    captured = capsys.readouterr()
    assert "notice: the document has more than 4 pages; only the first 4 were read" in captured.err
    assert captured.out == engine.generate(long_text, "q", max_length=2) + "\n"
    assert instruct_cli.main(["--model", checkpoint, "--document", DOC_A, "--instruction", "q",
                              "--max-length", "2"]) == 0
    assert "notice" not in capsys.readouterr().err


def test_instruct_without_model_names_the_missing_demo(capsys, monkeypatch, tmp_path):
    from deepsynth.inference import engine as engine_module

    monkeypatch.setattr(engine_module, "DEFAULT_MODEL_PATH", tmp_path / "deepsynth-demo")
    with pytest.raises(SystemExit) as exit_:
        instruct_cli.main(["--document", DOC_A, "--instruction", "q"])
    assert exit_.value.code == 2 and "Pass model_path" in capsys.readouterr().err


def test_seed_evaluate_command(checkpoint, engine, tmp_path):
    rows = [
        {"text": DOC_A, "instruction": "What was the revenue?"},
        {"text": DOC_B, "instruction": "What improved?"},
        {"text": DOC_A + " Costs fell.", "instruction": "What were the costs?"},
    ]
    predictions = [engine.generate(r["text"], r["instruction"], max_length=8) for r in rows]
    # gold answers: the model's own for row 0, a longer one for row 1, unrelated for row 2 -> EM is exactly 1/3
    golds = [predictions[0], predictions[1] + " plus more words", "completely different words"]
    dataset = tmp_path / "deepsynth-squad-qa"
    dataset.mkdir()
    (dataset / "test.jsonl").write_text("".join(json.dumps({**r, "answer": g}) + "\n" for r, g in zip(rows, golds)))
    (dataset / "train.jsonl").write_text(json.dumps({**rows[0], "answer": "unused"}) + "\n")
    output = tmp_path / "preds.jsonl"
    proc = run_module("deepsynth.evaluation.evaluate", "--model", checkpoint, "--dataset", dataset, "--split", "test",
                      "--metrics", "exact_match", "f1_score", "rouge", "--batch-size", "2", "--max-length", "8",
                      "--output", output)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    expected = compute_metrics(predictions, golds, metrics=["exact_match", "f1_score", "rouge"])
    assert report["samples"] == 3 and report["split"] == "test"
    assert {k: report[k] for k in expected} == pytest.approx(expected, abs=1e-9)
    assert report["exact_match"] == pytest.approx(100 / 3)
    assert [json.loads(line)["prediction"] for line in output.read_text().splitlines()] == predictions


def test_evaluate_bad_input_exits_2(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        evaluate_cli.main(["--model", checkpoint, "--dataset", str(tmp_path / "missing.jsonl")])
    assert exit_.value.code == 2 and "no such file" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "t", "answer": "a"}) + "\n")
    with pytest.raises(SystemExit) as exit_:
        evaluate_cli.main(["--model", checkpoint, "--dataset", str(tmp_path / "bad.jsonl")])
    assert exit_.value.code == 2 and "instruction" in capsys.readouterr().err


def test_seed_train_command(checkpoint, tmp_path):
    data = tmp_path / "deepsynth-squad-qa.jsonl"
    data.write_text("".join(json.dumps({"text": t, "instruction": q, "answer": a}) + "\n" for t, q, a in [
        (DOC_A, "What was the revenue?", "$45M"), (DOC_B, "What improved?", "diagnostics"),
        (DOC_A, "What were the costs?", "$12M"), (DOC_B, "Summarize", "AI helps healthcare")]))
    out = tmp_path / "models" / "deepsynth-qa"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({  # the guide's config, with the tiny checkpoint as base and no hub encoder
        "model_name": checkpoint, "output_dir": str(out), "use_text_encoder": True, "text_encoder_trainable": True,
        "batch_size": 2, "num_epochs": 3, "learning_rate": 1e-5, "mixed_precision": "bf16",
    }))
    proc = run_module("deepsynth.training.train", "--config", config, "--hf-dataset", data, "--max_steps", "2",
                      "--report_to", "none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and (out / "model.safetensors").is_file()
    assert isinstance(InstructionEngine(out, cache_size=0).generate(DOC_A, "What was the revenue?", max_length=2), str)


def test_train_adds_do_train_only_when_no_action_is_given(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"model_name": "m", "do_predict": True}))
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"model_name": "m"}))
    argv = ["--config", str(plain), "--hf-dataset", "d"]
    assert with_default_action(argv) == argv + ["--do_train"]
    assert with_default_action(["--hf-dataset", "d", "--do-eval"]) == ["--hf-dataset", "d", "--do-eval"]
    assert with_default_action(["--config", str(config)]) == ["--config", str(config)]
    assert with_default_action([str(plain)]) == ["--config", str(plain), "--do_train"]
