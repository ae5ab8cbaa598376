import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "src"))

import pytest  # noqa: E402
from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value  # noqa: E402

from deepsynth.data import (  # noqa: E402
    convert_dataset,
    convert_ms_marco,
    convert_natural_questions,
    convert_squad,
    load_instruction_dataset,
    validate_rows,
)

# --- hand-made rows in the real Hugging Face schemas ------------------------------------------

SQUAD_FEATURES = Features(
    {
        "id": Value("string"),
        "title": Value("string"),
        "context": Value("string"),
        "question": Value("string"),
        "answers": Sequence({"text": Value("string"), "answer_start": Value("int32")}),
    }
)


def squad_rows(unanswerable=True):
    rows = [
        {"id": "q1", "title": "Paris", "context": "The Eiffel Tower is in Paris.", "question": "Where is the tower?",
         "answers": {"text": ["Paris", "in Paris"], "answer_start": [23, 20]}},
        {"id": "q2", "title": "Paris", "context": "It opened in 1889.", "question": "When did it open?",
         "answers": {"text": ["1889"], "answer_start": [13]}},
    ]
    if unanswerable:
        rows.insert(1, {"id": "q3", "title": "Paris", "context": "It is 330 m tall.", "question": "Who painted it?",
                        "answers": {"text": [], "answer_start": []}})
    return Dataset.from_list(rows, features=SQUAD_FEATURES)


def test_squad_v1_takes_first_answer():
    out = convert_dataset(squad_rows(unanswerable=False), source="squad")
    assert sorted(out.column_names) == ["answer", "id", "instruction", "text"]  # source columns removed
    assert out[0] == {"text": "The Eiffel Tower is in Paris.", "instruction": "Where is the tower?", "answer": "Paris", "id": "q1"}
    assert out["answer"] == ["Paris", "1889"]


def test_squad_v1_rejects_empty_answers_naming_the_row():
    with pytest.raises(ValueError, match=r"squad row 1: .*no answer"):
        convert_dataset(squad_rows(), source="squad")


def test_squad_v2_unanswerable_target_is_configurable():
    assert convert_dataset(squad_rows(), source="squad_v2")["answer"] == ["Paris", "No answer", "1889"]
    assert convert_dataset(squad_rows(), source="squad_v2", no_answer="")["answer"] == ["Paris", "", "1889"]
    dropped = convert_dataset(squad_rows(), source="squad_v2", no_answer=None)
    assert dropped["id"] == ["q1", "q2"]


def test_convert_dataset_rejects_unknown_source_and_options():
    with pytest.raises(ValueError, match="unknown source"):
        convert_dataset(squad_rows(), source="trivia_qa")
    with pytest.raises(ValueError, match="bad options"):
        convert_dataset(squad_rows(), source="squad", no_answer="x")  # v1.1 has no unanswerables


def test_convert_dataset_names_row_with_wrong_schema():
    ds = Dataset.from_list([{"context": "c", "question": "q", "answers": {"text": ["a"]}}, {"context": "c", "question": "q"}])
    with pytest.raises(ValueError, match=r"squad_v2 row 1: cannot convert \(TypeError"):  # answers is null
        convert_dataset(ds, source="squad_v2")
    with pytest.raises(ValueError, match=r"squad_v2 row 0: cannot convert \(KeyError: 'question'\)"):
        convert_dataset(ds.remove_columns("question"), source="squad_v2")


NQ_FEATURES = Features(
    {
        "id": Value("string"),
        "document": {
            "title": Value("string"),
            "url": Value("string"),
            "html": Value("string"),
            "tokens": Sequence({"token": Value("string"), "is_html": Value("bool")}),
        },
        "question": {"text": Value("string"), "tokens": Sequence(Value("string"))},
        "annotations": Sequence(
            {
                "id": Value("string"),
                "long_answer": {
                    "start_token": Value("int64"), "end_token": Value("int64"),
                    "start_byte": Value("int64"), "end_byte": Value("int64"),
                },
                "short_answers": Sequence(
                    {
                        "start_token": Value("int64"), "end_token": Value("int64"),
                        "start_byte": Value("int64"), "end_byte": Value("int64"),
                        "text": Value("string"),
                    }
                ),
                "yes_no_answer": ClassLabel(names=["NO", "YES"]),
            }
        ),
    }
)
#          0       1         2        3        4      5     6     7      8        9    10
TOKENS = ["<H1>", "Eiffel", "Tower", "</H1>", "<P>", "It", "is", "in", "Paris", ".", "</P>"]
IS_HTML = [t.startswith("<") for t in TOKENS]
NO_SPAN = {"start_token": -1, "end_token": -1, "start_byte": -1, "end_byte": -1}
PARAGRAPH = {"start_token": 4, "end_token": 11, "start_byte": 0, "end_byte": 0}
NO_SHORT = {"start_token": [], "end_token": [], "start_byte": [], "end_byte": [], "text": []}


def nq_row(example_id, question, annotations):
    return {
        "id": example_id,
        "document": {"title": "Eiffel Tower", "url": "u", "html": "<html/>", "tokens": {"token": TOKENS, "is_html": IS_HTML}},
        "question": {"text": question, "tokens": question.split()},
        "annotations": {
            "id": [str(i) for i in range(len(annotations))],
            "long_answer": [a[0] for a in annotations],
            "short_answers": [a[1] for a in annotations],
            "yes_no_answer": [a[2] for a in annotations],
        },
    }


def short(start, end, text):
    return {"start_token": [start], "end_token": [end], "start_byte": [0], "end_byte": [0], "text": [text]}


def nq_rows():
    return Dataset.from_list(
        [
            # first annotator found nothing, the second the short answer "Paris"
            nq_row("1", "where is the eiffel tower", [(NO_SPAN, NO_SHORT, -1), (PARAGRAPH, short(8, 9, "Paris"), -1)]),
            # short answer without text: rebuilt from tokens 0..3, the HTML ones left out
            nq_row("2", "what is this page about", [(NO_SPAN, short(0, 3, ""), -1)]),
            nq_row("3", "is the tower in paris", [(PARAGRAPH, NO_SHORT, 1)]),  # yes/no annotation
            nq_row("4", "who built it", [(NO_SPAN, NO_SHORT, -1)]),  # no answer at all
        ],
        features=NQ_FEATURES,
    )


def test_natural_questions_plain_text_and_short_answers():
    out = convert_dataset(nq_rows(), source="natural_questions")
    assert out["id"] == ["1", "2", "3"]  # the unanswerable row 4 is skipped by default
    assert out["answer"] == ["Paris", "Eiffel Tower", "Yes"]
    assert out[0]["text"] == "Eiffel Tower It is in Paris ."  # no <H1>, <P> tokens
    assert out[0]["instruction"] == "where is the eiffel tower"


def test_natural_questions_options():
    kept = convert_dataset(nq_rows(), source="nq", no_answer="No answer")
    assert kept["answer"] == ["Paris", "Eiffel Tower", "Yes", "No answer"]
    paragraph = convert_dataset(nq_rows(), source="natural_questions", context="long_answer")
    # rows 1 and 3 have an annotated long answer (tokens 4..11); row 2 falls back to the page
    assert paragraph["text"] == ["It is in Paris .", "Eiffel Tower It is in Paris .", "It is in Paris ."]
    one = convert_natural_questions(nq_rows()[3])
    assert one["answer"] is None  # a single example cannot be dropped: None marks it


MS_MARCO_FEATURES = Features(
    {
        "answers": Sequence(Value("string")),
        "passages": Sequence({"is_selected": Value("int32"), "passage_text": Value("string"), "url": Value("string")}),
        "query": Value("string"),
        "query_id": Value("int32"),
        "query_type": Value("string"),
        "wellFormedAnswers": Sequence(Value("string")),
    }
)


def marco_row(query_id, query, passages, selected, answers, well_formed=()):
    return {
        "answers": list(answers),
        "passages": {"is_selected": selected, "passage_text": passages, "url": ["u"] * len(passages)},
        "query": query,
        "query_id": query_id,
        "query_type": "DESCRIPTION",
        "wellFormedAnswers": list(well_formed),
    }


def marco_rows():
    return Dataset.from_list(
        [
            marco_row(10, "where is the eiffel tower", ["Rome is old.", "The tower is in Paris.", "Cats."], [0, 1, 0],
                      ["Paris"], ["The Eiffel Tower is in Paris."]),
            marco_row(11, "how tall is it", ["It is 330 m tall.", "Tall: 330 m."], [1, 1], ["330 m"]),
            marco_row(12, "who painted it", ["A passage.", "Another."], [0, 0], ["No Answer Present."]),
        ],
        features=MS_MARCO_FEATURES,
    )


def test_ms_marco_selected_passages_and_answers():
    out = convert_dataset(marco_rows(), source="ms_marco")
    assert out["id"] == ["10", "11"]  # "No Answer Present." skipped by default
    assert out["text"] == ["The tower is in Paris.", "It is 330 m tall.\n\nTall: 330 m."]
    assert out["answer"] == ["Paris", "330 m"]
    assert out["instruction"] == ["where is the eiffel tower", "how tall is it"]


def test_ms_marco_options():
    well = convert_dataset(marco_rows(), source="msmarco", prefer_well_formed=True)
    assert well["answer"] == ["The Eiffel Tower is in Paris.", "330 m"]  # row 11 has no well-formed answer
    kept = convert_dataset(marco_rows(), source="ms_marco", no_answer="No answer", passage_sep=" ")
    assert kept["answer"][2] == "No answer"
    assert kept["text"][2] == "A passage. Another."  # nothing selected: every passage
    assert convert_ms_marco(marco_rows()[2])["answer"] is None


def test_convert_dataset_maps_every_split():
    out = convert_dataset(DatasetDict({"train": squad_rows(), "validation": squad_rows(False)}), source="squad_v2")
    assert {k: len(v) for k, v in out.items()} == {"train": 3, "validation": 2}
    assert convert_squad(squad_rows()[0])["answer"] == "Paris"


# --- loading ----------------------------------------------------------------------------------

ROWS = [
    {"text": "Invoice total: $10.00", "instruction": "What is the total?", "answer": "$10.00"},
    {"text": "Meeting on May 2, 2024", "instruction": "When is the meeting?", "answer": "May 2, 2024"},
    {"text": "Revenue: $4.5M", "instruction": "Extract the revenue.", "answer": "$4.5M"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_load_jsonl_csv_and_saved_datasets(tmp_path):
    write_jsonl(tmp_path / "one.jsonl", ROWS)
    assert load_instruction_dataset(tmp_path / "one.jsonl").to_list() == ROWS
    assert load_instruction_dataset(str(tmp_path / "one.jsonl"), max_samples=2)["answer"] == ["$10.00", "May 2, 2024"]

    Dataset.from_list(ROWS).to_csv(str(tmp_path / "rows.csv"), index=False)
    assert load_instruction_dataset(tmp_path / "rows.csv")["instruction"] == [r["instruction"] for r in ROWS]

    DatasetDict({"train": Dataset.from_list(ROWS), "test": Dataset.from_list(ROWS[:1])}).save_to_disk(str(tmp_path / "dd"))
    assert len(load_instruction_dataset(tmp_path / "dd", split="test")) == 1
    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "single"))
    assert len(load_instruction_dataset(tmp_path / "single")) == 3


def test_load_folder_of_jsonl_files_as_splits(tmp_path):
    folder = tmp_path / "synth"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", ROWS)
    write_jsonl(folder / "test_values.jsonl", ROWS[1:])
    splits = load_instruction_dataset(folder, max_samples=1)
    assert {k: len(v) for k, v in splits.items()} == {"train": 1, "test_values": 1}
    assert load_instruction_dataset(folder, split="test_values")["answer"] == ["May 2, 2024", "$4.5M"]
    with pytest.raises(ValueError, match=r"no split 'test'; available: \['test_values', 'train'\]"):
        load_instruction_dataset(folder, split="test")


def test_load_converts_source_rows(tmp_path):
    squad = [{"id": "a", "context": "C1", "question": "Q1", "answers": {"text": ["A1"], "answer_start": [0]}},
             {"id": "b", "context": "C2", "question": "Q2", "answers": {"text": [], "answer_start": []}}]
    write_jsonl(tmp_path / "squad.jsonl", squad)
    out = load_instruction_dataset(tmp_path / "squad.jsonl", source="squad_v2", no_answer="unanswerable")
    assert out.to_list() == [
        {"text": "C1", "instruction": "Q1", "answer": "A1", "id": "a"},
        {"text": "C2", "instruction": "Q2", "answer": "unanswerable", "id": "b"},
    ]
    with pytest.raises(ValueError, match="without a source"):
        load_instruction_dataset(tmp_path / "squad.jsonl", no_answer="x")


def test_load_rejects_bad_paths(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="unsupported file type '.txt'"):
        load_instruction_dataset(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_instruction_dataset(tmp_path / "missing.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no save_to_disk dataset"):
        load_instruction_dataset(tmp_path / "empty")


def test_load_validates_rows(tmp_path):
    write_jsonl(tmp_path / "bad.jsonl", ROWS[:2] + [{"text": "t", "instruction": "  ", "answer": "a"}])
    with pytest.raises(ValueError, match="bad.jsonl, line 3: column 'instruction' is empty"):  # rows 0-based, lines 1-based
        load_instruction_dataset(tmp_path / "bad.jsonl")
    assert len(load_instruction_dataset(tmp_path / "bad.jsonl", validate=False)) == 3


# --- validate_rows ----------------------------------------------------------------------------


def test_validate_rows_accepts_good_rows_and_empty_answers():
    rows = ROWS + [{"text": "t", "instruction": "Who?", "answer": ""}]
    ds = Dataset.from_list(rows)
    assert validate_rows(ds) is ds
    with pytest.raises(ValueError, match="row 3: column 'answer' is empty"):
        validate_rows(ds, allow_empty=())


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"text": "t", "instruction": "i"}], r"no \['answer'\] column"),
        ([{"text": "t", "instruction": "i", "answer": "a"}, {"text": None, "instruction": "i", "answer": "a"}],
         "row 1: column 'text' is missing"),
        ([{"text": "t", "instruction": "i", "answer": 5}], "row 0: column 'answer' must be a string, got int"),
        ([{"text": "t", "instruction": "i", "answer": "a"}] * 3 + [{"text": "", "instruction": "i", "answer": "a"}],
         "row 3: column 'text' is empty"),
    ],
)
def test_validate_rows_names_bad_row(rows, message):
    with pytest.raises(ValueError, match=message):
        validate_rows(Dataset.from_list(rows), batch_size=2)  # small batches: row numbers span batches


def test_validate_rows_document_column_may_replace_text():
    only_images = Dataset.from_list([{"image": "pages/p1.png", "instruction": "i", "answer": "a"},
                                     {"image": "scan.PDF", "instruction": "i", "answer": "a"}])
    validate_rows(only_images)
    mixed = Dataset.from_list([{"text": "t", "document": None, "instruction": "i", "answer": "a"},
                               {"text": "", "document": "report.pdf", "instruction": "i", "answer": "a"},
                               {"text": "", "document": None, "instruction": "i", "answer": "a"}])
    with pytest.raises(ValueError, match="row 2: no document"):
        validate_rows(mixed)
    wrong = Dataset.from_list([{"document": "The quarterly report says...", "instruction": "i", "answer": "a"}])
    with pytest.raises(ValueError, match="row 0: column 'document' = 'The quarterly report says...' is not an image/PDF path"):
        validate_rows(wrong)


def test_validate_rows_names_the_split():
    dd = DatasetDict({"train": Dataset.from_list(ROWS), "test": Dataset.from_list([{"text": "t", "instruction": "", "answer": "a"}])})
    with pytest.raises(ValueError, match="split 'test': row 0: column 'instruction' is empty"):
        validate_rows(dd)
