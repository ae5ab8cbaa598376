"""Training and evaluation for JSON extraction (issue 18): JSON-object answers in run_instruct rows, synthetic
extraction rows with JSON answers, and field-level precision / recall / exact match."""

import json
import subprocess
import sys
from types import SimpleNamespace

import jsonschema
import pytest

import run_instruct
from _serving_helpers import REPO_ROOT, subprocess_env
from deepsynth.data.loading import load_instruction_dataset
from deepsynth.data.synthetic import generate_split
from deepsynth.evaluation.evaluate import evaluate_constrained
from deepsynth.evaluation.metrics import json_field_scores
from deepsynth.inference import InstructionEngine
from processing_deepsynth import DeepSynthProcessor
from structured_deepsynth import canonical_json, schema_from_fields

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixtures: tests/conftest.py


def test_json_field_scores_by_hand():
    refs = ['{"revenue": "$45M", "growth": "15%"}', {"revenue": "$12M", "growth": "3%", "cfo": "Ann Lee"}, '{"a": 1}']
    preds = ['{"revenue": "$45m", "growth": "16%"}',  # revenue right (normalised), growth wrong
             {"revenue": "$12M", "growth": "3%", "cfo": None, "extra": "x"},  # cfo missing (null), one extra
             "not json"]
    scores = json_field_scores(preds, refs)
    # correct 3 (revenue x2, growth x1); predicted 5 (revenue, growth, revenue, growth, extra); expected 6
    assert scores["json_field_precision"] == pytest.approx(100 * 3 / 5)
    assert scores["json_field_recall"] == pytest.approx(100 * 3 / 6)
    assert scores["json_field_f1"] == pytest.approx(100 * 2 * 0.6 * 0.5 / 1.1)
    assert scores["json_parse_rate"] == pytest.approx(100 * 2 / 3) and scores["json_exact_match"] == 0
    assert scores["json_field/revenue/exact_match"] == 100 and scores["json_field/growth/exact_match"] == 50
    assert scores["json_field/growth/precision"] == 50 and scores["json_field/cfo/recall"] == 0
    assert scores["json_field/extra/precision"] == 0 and "json_field/extra/recall" in scores
    assert json_field_scores([refs[0]], [refs[0]])["json_exact_match"] == 100
    with pytest.raises(ValueError, match="reference 0 is not a JSON object"):
        json_field_scores(["{}"], ["$45M"])


def test_synthetic_json_extraction_rows():
    rows = generate_split("test_values", 30, seed=4, tasks=("json_extraction",))
    assert rows == generate_split("test_values", 30, seed=4, tasks=("json_extraction",))  # deterministic
    for row in rows:
        obj = json.loads(row["answer"])
        assert row["answer"] == canonical_json(obj) and list(obj) == row["fields"] and 2 <= len(obj) <= 4
        jsonschema.validate(obj, schema_from_fields(row["fields"]))
        assert all(value in row["text"] for value in obj.values())  # values exactly as printed
        assert all(name in row["instruction"] for name in row["fields"])
    assert len({tuple(r["fields"]) for r in rows}) > 10 and {r["doc_kind"] for r in rows} >= {"invoice", "hr_letter"}
    # the other tasks are what they were: the new task draws nothing unless asked for
    mixed = generate_split("train", 20, seed=1, tasks=("qa", "extraction", "summary", "json_extraction"))
    assert [r["task"] for r in mixed].count("json_extraction") == 5 and "fields" not in mixed[0]


def test_make_synthetic_dataset_writes_json_rows_that_load(tmp_path):
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "make_synthetic_dataset.py"), "--out", str(tmp_path),
           "--json-extraction", "--train", "20", "--validation", "0", "--test-values", "0", "--test-paraphrases", "4",
           "--test-layouts", "0"]
    proc = subprocess.run(cmd, env=subprocess_env(None), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    train = load_instruction_dataset(tmp_path / "train.jsonl")
    json_rows = [r for r in train if r["task"] == "json_extraction"]
    assert len(json_rows) == 5 and all(json.loads(r["answer"]) for r in json_rows)
    assert all(r["fields"] is None for r in train if r["task"] != "json_extraction")
    paraphrased = load_instruction_dataset(tmp_path / "test_paraphrases.jsonl")
    assert len(paraphrased) == 4


def test_run_instruct_trains_on_json_object_answers_as_canonical_text(tmp_path, checkpoint):
    objects = [{"revenue": "$45.2M", "growth": "12.5%"}, {"revenue": "€3,1 M", "growth": None}]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": f"Report {i}: revenue {o['revenue']}.", "instruction": "Extract.",
                                        "answer": o}) + "\n" for i, o in enumerate(objects)))
    data_args = run_instruct.DataArguments(train_file=str(path))
    splits = run_instruct.load_splits(data_args, SimpleNamespace(do_train=True, do_eval=False, do_predict=False))
    answers = list(splits["train"]["answer"])
    assert answers == ['{"revenue": "$45.2M", "growth": "12.5%"}', '{"revenue": "€3,1 M", "growth": null}']
    # ... and the collator's labels are exactly that text (+ eos), which constrained decoding writes.
    processor = DeepSynthProcessor.from_pretrained(checkpoint)
    batch = run_instruct.RenderingCollator(processor)(list(splits["train"]))
    for row_labels, answer in zip(batch["labels"], answers):
        target = row_labels[row_labels != -100].tolist()
        assert target[-1] == processor.tokenizer.eos_token_id
        assert processor.tokenizer.decode(target[:-1]) == answer
    # A string answer column is left as it is.
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"text": "x y", "instruction": "q", "answer": '{"a": "b"}'}) + "\n")
    ds = run_instruct.load_splits(run_instruct.DataArguments(train_file=str(plain)),
                                  SimpleNamespace(do_train=True, do_eval=False, do_predict=False))["train"]
    assert ds["answer"] == ['{"a": "b"}']


def test_evaluate_constrained_reports_field_scores(checkpoint):
    drawn = generate_split("test_values", 10, seed=2, tasks=("json_extraction", "qa"))  # 5 of each, in turn
    rows = [drawn[5], drawn[0], drawn[6], drawn[1]]  # interleaved: the records keep the rows' order
    engine = InstructionEngine(checkpoint)
    scores, records = evaluate_constrained(engine, rows, ["exact_match"], batch_size=4, max_length=30)
    assert [r["index"] for r in records] == list(range(4))
    assert [r["answer"] for r in records] == [r["answer"] for r in rows]
    json_rows = [r for r in rows if r["task"] == "json_extraction"]
    assert scores["json_samples"] == len(json_rows) == 2
    for record, row in zip(records, rows):
        if row["task"] == "json_extraction":  # constrained: starts as the schema's object must
            assert record["prediction"].startswith('{"' + row["fields"][0] + '": "')
    expected = json_field_scores([r["prediction"] for r in records if r["index"] in
                                  [i for i, row in enumerate(rows) if row["task"] == "json_extraction"]],
                                 [r["answer"] for r in json_rows])
    assert {k: scores[k] for k in expected} == expected
    assert any(key.startswith("json_field/") and key.endswith("/exact_match") for key in scores)
