"""Dataset and config files that cannot be used fail with the file's name and the 1-based line of the problem."""

import json

import pytest

from deepsynth.data.loading import load_instruction_dataset

GOOD = {"text": "Revenue: $45.2M", "instruction": "What was the revenue?", "answer": "$45.2M"}


def test_empty_files_are_named(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"empty\.jsonl: the file has no rows \(it is empty\)"):
        load_instruction_dataset(tmp_path / "empty.jsonl")
    (tmp_path / "blank.json").write_text("\n  \n")
    with pytest.raises(ValueError, match=r"blank\.json: the file has no rows"):
        load_instruction_dataset(tmp_path / "blank.json")
    (tmp_path / "header.csv").write_text("text,instruction,answer\n")
    with pytest.raises(ValueError, match=r"header\.csv: the file has no rows \(only a header line\)"):
        load_instruction_dataset(tmp_path / "header.csv")


def test_an_empty_split_file_in_a_folder_is_named(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps(GOOD) + "\n")
    (tmp_path / "test.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"test\.jsonl: the file has no rows"):
        load_instruction_dataset(tmp_path)


def test_malformed_json_line_is_named(tmp_path):
    lines = [json.dumps(GOOD), "", json.dumps(GOOD), '{"text": "t", "instruction": what?, "answer": "a"}',
             json.dumps(GOOD)]
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as err:
        load_instruction_dataset(tmp_path / "data.jsonl")
    assert str(err.value) == f"{tmp_path / 'data.jsonl'}, line 4: not valid JSON (Expecting value, column 30)"
    (tmp_path / "list.jsonl").write_text(json.dumps(GOOD) + "\n[1, 2]\n")
    with pytest.raises(ValueError, match=r"list\.jsonl, line 2: expected a JSON object per line, got list"):
        load_instruction_dataset(tmp_path / "list.jsonl")


def test_malformed_json_array_file_is_named(tmp_path):
    (tmp_path / "data.json").write_text("[\n" + json.dumps(GOOD) + ",\n" + json.dumps(GOOD)[:-1] + "\n")
    with pytest.raises(ValueError, match=r"data\.json, line 4: not valid JSON"):
        load_instruction_dataset(tmp_path / "data.json")


def test_missing_columns_name_the_file_and_line(tmp_path):
    rows = [GOOD, GOOD, {"text": "t", "instruction": "i"}]  # the third row has no answer
    (tmp_path / "data.jsonl").write_text(json.dumps(rows[0]) + "\n\n" + "".join(json.dumps(r) + "\n" for r in rows[1:]))
    with pytest.raises(ValueError) as err:
        load_instruction_dataset(tmp_path / "data.jsonl")
    assert str(err.value) == f"{tmp_path / 'data.jsonl'}, line 4: column 'answer' is missing (null)"
    (tmp_path / "noanswer.jsonl").write_text(json.dumps({"text": "t", "instruction": "i"}) + "\n")
    with pytest.raises(ValueError, match=r"noanswer\.jsonl, line 1: dataset has no \['answer'\] column"):
        load_instruction_dataset(tmp_path / "noanswer.jsonl")


def test_csv_lines_count_quoted_newlines_and_blank_lines(tmp_path):
    (tmp_path / "data.csv").write_text('text,instruction,answer\n"two\nlines",q,a\n\nc,,b\n')
    with pytest.raises(ValueError, match=r"data\.csv, line 5: column 'instruction' is missing"):
        load_instruction_dataset(tmp_path / "data.csv")


def test_split_files_in_a_folder_name_their_file(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps(GOOD) + "\n")
    blank = {**GOOD, "instruction": " "}
    (tmp_path / "validation.jsonl").write_text(json.dumps(GOOD) + "\n" + json.dumps(blank) + "\n")
    with pytest.raises(ValueError, match=r"validation\.jsonl, line 2: column 'instruction' is empty"):
        load_instruction_dataset(tmp_path, split="validation")
    with pytest.raises(ValueError, match=r"validation\.jsonl, line 2: column 'instruction' is empty"):
        load_instruction_dataset(tmp_path)


def test_a_hub_name_that_cannot_be_reached_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"dataset username/deepsynth-squad-qa: not a local file or folder"):
        load_instruction_dataset("username/deepsynth-squad-qa")


def test_config_file_errors_name_the_file(tmp_path):
    from run_instruct import read_config_file

    with pytest.raises(FileNotFoundError, match=r"config file .*nothere\.json: no such file"):
        read_config_file(tmp_path / "nothere.json")
    (tmp_path / "config.json").write_text('{\n  "model_name": "m",\n  "batch_size": 4,\n}\n')
    with pytest.raises(ValueError, match=r"config file .*config\.json, line 4: not valid JSON"):
        read_config_file(tmp_path / "config.json")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(ValueError, match=r"list\.json: expected a JSON object of arguments, got a list"):
        read_config_file(tmp_path / "list.json")
