import hashlib
import importlib.util
import json
import pathlib
import re
import sys
from collections import Counter

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "src"))

import pytest  # noqa: E402

from deepsynth.data import synthetic  # noqa: E402
from deepsynth.data.synthetic import (  # noqa: E402
    DOC_KINDS,
    HELDOUT_LAYOUTS,
    SPLITS,
    TASKS,
    TEMPLATES,
    TRAIN_LAYOUTS,
    Document,
    Fact,
    build_dataset_dict,
    document_packets,
    generate_split,
    iter_examples,
    render,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
N = 150  # 10 rows of every (kind, task) pair


@pytest.fixture(scope="module")
def rows():
    return {split: generate_split(split, N, seed=7) for split in SPLITS}


def test_same_seed_same_rows_other_seed_other_rows(rows):
    assert generate_split("test_values", N, seed=7) == rows["test_values"]
    assert generate_split("train", N, seed=8) != rows["train"]
    assert generate_split("validation", N, seed=7) != rows["train"]  # splits draw their own streams
    assert generate_split("train", 20, seed=7) == rows["train"][:20]  # a prefix does not depend on n


def test_rows_have_the_documented_keys(rows):
    keys = {"id", "text", "instruction", "answer", "task", "doc_kind", "layout", "template_id"}
    for split, split_rows in rows.items():
        assert len(split_rows) == N
        assert all(set(r) == keys and all(isinstance(v, str) and v for v in r.values()) for r in split_rows)
        assert len({r["id"] for r in split_rows}) == N


def test_every_kind_task_and_layout_is_produced(rows):
    for split, split_rows in rows.items():
        assert {(r["doc_kind"], r["task"]) for r in split_rows} == {(k, t) for k in DOC_KINDS for t in TASKS}
        layouts = HELDOUT_LAYOUTS if split == "test_layouts" else TRAIN_LAYOUTS
        assert {r["layout"] for r in split_rows} == set(layouts), split


def test_documents_stay_short(rows):
    for split_rows in rows.values():
        for r in split_rows:
            assert 4 <= r["text"].count("\n") + 1 <= 10
            assert 20 <= len(r["text"].split()) <= 120
            assert max(len(line) for line in r["text"].splitlines()) <= 80


def _template_regex(template):
    # "What is the {q}?" -> ^What\ is\ the\ .+\?$
    return re.compile("^" + re.sub(r"\\\{\w+\\\}", ".+", re.escape(template)) + "$")


def test_paraphrase_split_uses_only_unseen_templates(rows):
    for task, sets in TEMPLATES.items():
        assert len(sets["train"]) >= 8 and len(sets["heldout"]) >= 4
        assert not set(sets["train"]) & set(sets["heldout"])
    train_patterns = [_template_regex(t) for sets in TEMPLATES.values() for t in sets["train"]]
    heldout_patterns = [_template_regex(t) for sets in TEMPLATES.values() for t in sets["heldout"]]
    for r in rows["test_paraphrases"]:
        assert re.fullmatch(r"(qa|extraction|summary)/h\d\d", r["template_id"])
        assert not any(p.match(r["instruction"]) for p in train_patterns), r["instruction"]
    for split in ("train", "validation", "test_values", "test_layouts"):
        for r in rows[split]:
            assert re.fullmatch(r"(qa|extraction|summary)/t\d\d", r["template_id"])
            assert not any(p.match(r["instruction"]) for p in heldout_patterns), r["instruction"]
    # many paraphrases are really used, not just defined
    assert len({r["template_id"] for r in rows["train"]}) >= 25


def test_layout_split_uses_only_unseen_layouts(rows):
    assert not set(TRAIN_LAYOUTS) & set(HELDOUT_LAYOUTS)
    assert {r["layout"] for r in rows["train"] + rows["validation"]} <= set(TRAIN_LAYOUTS)
    assert {r["layout"] for r in rows["test_layouts"]} <= set(HELDOUT_LAYOUTS)


@pytest.fixture(scope="module")
def training_rows():
    return generate_split("train", 3000, seed=0)


def test_value_split_never_repeats_a_training_value(training_rows):
    train_text = "\n".join(r["text"] for r in training_rows)
    checked = 0
    for _, doc in iter_examples("test_values", 400, seed=0):
        for value in doc.values():
            assert value not in train_text, value
            checked += 1
    assert checked > 400 * 6
    for name in synthetic.HELDOUT_POOLS.first + synthetic.HELDOUT_POOLS.last + synthetic.HELDOUT_POOLS.stems:
        assert name not in train_text


def test_value_split_numbers_end_in_heldout_digits():
    for _, doc in iter_examples("test_values", 100, seed=1):
        for fact in doc.facts:
            if fact.type in ("money", "percent", "number", "id", "product"):
                integer_part = re.search(r"\d[\d,]*", fact.value).group().replace(",", "")
                assert integer_part[-1] in "789", fact.value
            if fact.type == "date":
                assert re.fullmatch(r"[A-Z][a-z]+ (7|8|9|17|18|19|27|28), \d{4}", fact.value), fact.value


def test_answers_are_derivable_from_the_text(rows):
    money_or_percent = re.compile(r"\$[\d,]+(?:\.\d+)?M?|\d+\.\d%")
    for split_rows in rows.values():
        for r in split_rows:
            text, answer = r["text"], r["answer"]
            if r["task"] == "qa":
                assert answer in text
            elif r["task"] == "extraction":
                items = answer.split("; ")
                assert len(items) >= 2 and len(set(items)) == len(items)
                positions = [text.index(item) for item in items]
                assert positions == sorted(positions), (text, answer)  # document order
            else:
                assert answer.endswith(".") and answer.count(". ") == 0  # one sentence
                assert all(v in text for v in money_or_percent.findall(answer)), (text, answer)


def test_computed_figures_are_consistent():
    for _, doc in iter_examples("train", 100, seed=2):
        facts = {f.label: f.value for f in doc.facts}
        if doc.kind == "financial_report":
            revenue, prev = float(facts["Revenue"][1:-1]), float(facts["Prior-year revenue"][1:-1])
            assert facts["Revenue growth"] == f"{(revenue / prev - 1) * 100:.1f}%"
        if doc.kind == "invoice":
            amounts = [float(f.value[1:].replace(",", "")) for f in doc.facts if f.type == "money"]
            assert amounts[0] + amounts[1] == pytest.approx(amounts[2])


DOC = Document(
    "invoice",
    "Invoice INV-10234",
    [
        Fact("From", "Acme Corp", "org", "It was issued by Acme Corp.", "vendor"),
        Fact("Total due", "$1,250.50", "money", "The total due is $1,250.50.", "total amount due"),
        Fact("Due date", "March 3, 2024", "date", "Pay by March 3, 2024.", "due date"),
    ],
)


def test_render_layouts_exactly():
    assert render(DOC, "fields") == "Invoice INV-10234\nFrom: Acme Corp\nTotal due: $1,250.50\nDue date: March 3, 2024"
    assert render(DOC, "bullets") == (
        "Invoice INV-10234\n- It was issued by Acme Corp.\n- The total due is $1,250.50.\n"
        "- Pay by March 3, 2024."
    )
    assert render(DOC, "table") == (
        "Invoice INV-10234\nItem        Value\nFrom        Acme Corp\nTotal due   $1,250.50\nDue date    March 3, 2024"
    )
    # A plain 72-column wrap would end line 1 with "Pay by March 3," (71 chars); the date moves whole.
    assert render(DOC, "prose") == (
        "Invoice INV-10234\n"
        "It was issued by Acme Corp. The total due is $1,250.50. Pay by\n"
        "March 3, 2024."
    )
    assert render(DOC, "inline") == (
        "Invoice INV-10234\nFrom - Acme Corp | Total due - $1,250.50 | Due date - March 3, 2024"
    )
    with pytest.raises(ValueError, match="unknown layout 'html'"):
        render(DOC, "html")


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="unknown split 'test'"):
        generate_split("test", 1, seed=0)


def test_build_dataset_dict_and_script(tmp_path):
    dd = build_dataset_dict({"train": 30, "test_layouts": 15}, seed=5)
    assert {k: len(v) for k, v in dd.items()} == {"train": 30, "test_layouts": 15}
    assert dd["train"].to_list() == generate_split("train", 30, seed=5)

    spec = importlib.util.spec_from_file_location("make_synthetic_dataset", REPO / "scripts" / "make_synthetic_dataset.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--out", str(tmp_path), "--train", "12", "--validation", "3", "--test-values", "0",
                 "--test-paraphrases", "4", "--test-layouts", "5", "--seed", "5"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "test_layouts.jsonl", "test_paraphrases.jsonl", "train.jsonl", "validation.jsonl"
    ]
    written = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert written == generate_split("train", 12, seed=5)

    # stage C's mix: the same training rows plus a fraction of random-character pages, shuffled in, train only
    mixed = tmp_path / "mixed"
    args = ["--out", str(mixed), "--task", "mixed", "--train", "20", "--validation", "6", "--test-values", "0",
            "--test-paraphrases", "0", "--test-layouts", "0", "--random-lines-fraction", "0.25"]
    script.main(args)
    train = [json.loads(line) for line in (mixed / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    random_rows = [r for r in train if r["doc_kind"] == "random_lines"]
    assert len(train) == 25 and len(random_rows) == 5
    assert {r["id"] for r in train} - {r["id"] for r in random_rows} == {
        r["id"] for r in generate_split("train", 20, tasks=("qa", "extraction", "summary", "transcription", "transcription"))
    }
    assert [r["doc_kind"] for r in train[-5:]] != ["random_lines"] * 5  # shuffled in, not appended
    assert all(3 <= r["answer"].count("\n") + 1 <= 8 and r["answer"] == r["text"] for r in random_rows)
    validation = (mixed / "validation.jsonl").read_text(encoding="utf-8")
    assert "random_lines" not in validation
    script.main(args)
    assert [json.loads(line) for line in (mixed / "train.jsonl").read_text(encoding="utf-8").splitlines()] == train

    # stage D's mix: twice as many Q&A and extraction rows as summaries or transcriptions
    answering = tmp_path / "answering"
    script.main(["--out", str(answering), "--task", "answering", "--train", "60", "--validation", "0",
                 "--test-values", "0", "--test-paraphrases", "0", "--test-layouts", "0"])
    tasks = Counter(json.loads(line)["task"] for line in (answering / "train.jsonl").read_text().splitlines())
    assert tasks == {"qa": 20, "extraction": 20, "summary": 10, "transcription": 10}

    # the training-only variety options reach the train and validation rows, never a held-out split
    varied = tmp_path / "varied"
    script.main(["--out", str(varied), "--train", "30", "--validation", "0", "--test-values", "10", "--test-paraphrases",
                 "0", "--test-layouts", "0", "--all-digits", "1", "--shuffled-fields", "1", "--invented-names", "0.5",
                 "--long-names", "0.5", "--more-layouts", "0.5", "--label-synonyms", "0.3", "--direct-questions", "0.5"])
    read = {s: [json.loads(line) for line in (varied / f"{s}.jsonl").read_text().splitlines()] for s in ("train", "test_values")}
    assert read["train"] == generate_split("train", 30, all_digits=1.0, shuffled_fields=1.0, invented_names=0.5,
                                           long_names=0.5, more_layouts=0.5, label_synonyms=0.3, direct_questions=0.5)
    assert read["test_values"] == generate_split("test_values", 10)


def test_invented_names_are_new_to_every_split_and_leave_the_default_data_alone(training_rows):
    """The invented-names experiment's data: documents with made-up names (the model must copy them), never a
    held-out value; without the option every dataset is byte for byte what it was before the option existed."""
    default = generate_split("train", 60, seed=0, tasks=synthetic.ALL_TASKS)
    digest = hashlib.sha256(json.dumps(default, sort_keys=True).encode()).hexdigest()
    assert digest == "9f5774d818536f8993602485366276e4deb57c45a07062cd9d65f9a072764039"  # rows before the option

    def words(rows):
        return {w for r in rows for w in re.findall(r"\b[A-Z][a-z]+\b", r["text"])}

    usual = words(training_rows)  # the training pools and every template word
    invented = generate_split("train", 300, seed=4, invented_names=0.5)
    assert len(words(generate_split("train", 300, seed=4)) - usual) == 0
    assert len(words(invented) - usual) > 300  # about half of 300 documents, several made-up names each
    train_text = "\n".join(r["text"] for r in invented)
    for _, doc in iter_examples("test_values", 300, seed=0):
        for value in doc.values():
            assert value not in train_text, value
    with pytest.raises(ValueError, match="train and validation"):
        generate_split("test_values", 5, invented_names=0.5)


def test_all_digits_lifts_the_digit_rule_for_training_documents_only():
    """`all_digits`: numbers of that share of documents end in any digit (a small decoder learns the 0-6 rule
    otherwise); names stay training names, and the default data is unchanged."""
    def last_digits(rows):
        return Counter(m.group(1)[-1] for r in rows for m in re.finditer(r"\$([\d,]+)", r["text"]))

    assert generate_split("train", 200, seed=4, all_digits=0.0) == generate_split("train", 200, seed=4)
    assert set(last_digits(generate_split("train", 200, seed=4))) <= set("0123456")
    lifted = last_digits(generate_split("train", 200, seed=4, all_digits=1.0))
    assert set(lifted) == set("0123456789") and min(lifted[d] for d in "789") > 20
    half = generate_split("train", 400, seed=4, all_digits=0.5)
    with_789 = sum(bool(set(last_digits([r])) & set("789")) for r in half)
    assert 60 < with_789 < 200  # only the lifted half (about 200 documents) can, and most of it does
    heldout_names = {f.value for _, doc in iter_examples("test_values", 100, seed=0) for f in doc.facts
                     if f.type in ("person", "org", "product")}
    text = "\n".join(r["text"] for r in half)
    assert heldout_names and not any(name in text for name in heldout_names)
    with pytest.raises(ValueError, match="all_digits applies to the train and validation"):
        generate_split("test_layouts", 5, all_digits=0.5)


def test_shuffled_fields_change_the_order_and_keep_every_answer_on_the_page():
    assert generate_split("train", 100, seed=4, shuffled_fields=0.0) == generate_split("train", 100, seed=4)
    plain = [doc for _, doc in iter_examples("train", 200, seed=4)]
    shuffled = list(iter_examples("train", 200, seed=4, shuffled_fields=1.0, tasks=("qa", "extraction")))
    first_labels = Counter(doc.facts[0].label for doc in plain if doc.kind == "invoice")
    assert len(first_labels) == 1  # in the generator's order an invoice always opens with the same field
    assert len(Counter(doc.facts[0].label for _, doc in shuffled if doc.kind == "invoice")) >= 4
    for row, doc in shuffled:
        assert row["text"].splitlines()[0] == doc.title
        if row["task"] == "qa":
            assert row["answer"] in row["text"]
        else:  # the extracted values in the order the page shows them
            values = row["answer"].split("; ")
            assert [row["text"].find(v) for v in values] == sorted(row["text"].find(v) for v in values)
    with pytest.raises(ValueError, match="shuffled_fields applies to the train and validation"):
        generate_split("test_paraphrases", 5, shuffled_fields=0.5)


def test_wider_variety_renders_new_layouts_labels_questions_and_names_for_training_only():
    """The generator's wider variety (issue 16): extra training layouts, other labels for a field, direct who /
    when questions and long made-up names. Off by default (the data is unchanged); never a held-out layout or
    wording; every Q&A answer stays verbatim on the page and every field is still on one line with its label."""
    variety = {"more_layouts": 0.5, "label_synonyms": 0.5, "direct_questions": 0.5}
    off = {name: 0.0 for name in (*variety, "long_names")}
    assert generate_split("train", 100, seed=4, **off) == generate_split("train", 100, seed=4)
    pairs = list(iter_examples("train", 600, seed=4, tasks=("qa", "extraction"), **variety))
    layouts = Counter(row["layout"] for row, _ in pairs)
    assert set(layouts) == set(TRAIN_LAYOUTS) | set(synthetic.EXTRA_TRAIN_LAYOUTS)
    assert not set(synthetic.EXTRA_TRAIN_LAYOUTS) & set(HELDOUT_LAYOUTS) and 200 < sum(
        layouts[name] for name in synthetic.EXTRA_TRAIN_LAYOUTS) < 400
    renamed = questions = 0
    for row, doc in pairs:
        labels = [f.label for f in doc.facts]
        assert len(set(labels)) == len(labels)  # a synonym never repeats another field's label
        renamed += sum(label in {s for syns in synthetic.LABEL_SYNONYMS.values() for s in syns}
                       and label not in synthetic.LABEL_SYNONYMS for label in labels)
        if row["task"] == "qa":
            assert row["answer"] in row["text"]
            if row["template_id"].startswith("qa/d"):
                questions += 1
                fact = next(f for f in doc.facts if f.value == row["answer"])
                assert row["instruction"] in synthetic.DIRECT_QUESTIONS[fact.ask]
        if row["layout"] in ("equals", "dotted", "semicolons"):
            lines = row["text"].replace("\n", " ") if row["layout"] == "semicolons" else row["text"]
            for f in doc.facts:  # label, then its value, with only the layout's separator between them
                assert re.search(re.escape(f.label) + r"(:| =| \.+) " + re.escape(f.value), lines), (f, row["text"])
        if row["layout"] == "next_line":
            lines = row["text"].splitlines()
            assert all(lines[lines.index(f"{f.label}:") + 1] == f"  {f.value}" for f in doc.facts)
    assert renamed > 500 and 60 < questions < 240  # about a quarter of 300 Q&A rows have a direct wording

    # long names: as long as the held-out names (8-12 letters for a company stem), clusters, never a held-out name
    def stems(rows):
        return [f.value.split()[0] for _, doc in rows for f in doc.facts if f.type == "org"]

    short = stems(iter_examples("train", 300, seed=4, invented_names=1.0))
    long = stems(iter_examples("train", 300, seed=4, invented_names=1.0, long_names=1.0))
    assert sum(map(len, long)) / len(long) > sum(map(len, short)) / len(short) + 2.5
    assert sum(any(c in w.lower() for c in ("st", "kr", "ph", "qu", "th", "sch")) for w in long) > len(long) / 3
    heldout = [n.lower() for n in synthetic._HELDOUT_NAMES]
    assert not any(n in w.lower() for w in long for n in heldout)
    for name in ("more_layouts", "label_synonyms", "direct_questions", "long_names"):
        with pytest.raises(ValueError, match=f"{name} applies to the train and validation"):
            generate_split("test_layouts", 5, **{name: 0.5})


def test_document_packets_ask_about_one_document_that_only_it_answers():
    limit = 2000
    packets = document_packets("test_values", 30, seed=1, documents=(3, 7), fits=lambda t: len(t) <= limit)
    assert packets == document_packets("test_values", 30, seed=1, documents=(3, 7), fits=lambda t: len(t) <= limit)
    assert {r["documents"] for r in packets} >= {3, 5, 6} and max(r["asked_document"] for r in packets) >= 4
    by_text = {r["text"]: r for r in generate_split("test_values", 400, seed=1, tasks=("qa",))}
    kinds_of_wording = {}
    for r in generate_split("train", 3000, seed=0, tasks=("qa",)):
        kinds_of_wording.setdefault(r["instruction"], set()).add(r["doc_kind"])
    assert all(len(kinds) == 1 for kinds in kinds_of_wording.values())  # a Q&A wording names its kind of document
    for packet in packets:
        parts = [by_text[part] for part in packet["text"].split("\n\n")]
        assert len(parts) == packet["documents"] and len(packet["text"]) <= limit
        asked = parts[packet["asked_document"]]
        assert (packet["instruction"], packet["answer"]) == (asked["instruction"], asked["answer"])
        assert [p["doc_kind"] for p in parts].count(asked["doc_kind"]) == 1  # so no other document answers it
