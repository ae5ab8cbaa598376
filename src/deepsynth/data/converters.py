"""Convert public QA datasets to DeepSynth rows: {"text", "instruction", "answer"} (+ "id").

Each source has a converter for ONE example in the source's Hugging Face schema, and
`convert_dataset` applies it to a whole `datasets.Dataset` with `Dataset.map`.

Unanswerable examples: a converter's `no_answer` argument is the target written for
them (SQuAD v2 defaults to "No answer", like the user guide). `no_answer=None` means
"drop the row": the one-example converter then returns `answer=None`, and
`convert_dataset` filters those rows out (the NQ and MS MARCO defaults).
"""

import inspect
from collections.abc import Callable

from datasets import Dataset, DatasetDict

SQUAD_V2_NO_ANSWER = "No answer"
MS_MARCO_NO_ANSWER = "No Answer Present."  # MS MARCO's own marker for "the passages don't answer"


def _row(text: str, instruction: str, answer: str | None, example_id=None) -> dict:
    row = {"text": text, "instruction": instruction, "answer": answer}
    if example_id is not None:
        row["id"] = str(example_id)
    return row


# --- SQuAD ---------------------------------------------------------------------------


def convert_squad(example: dict) -> dict:
    """SQuAD v1.1 (`context`, `question`, `answers.text`): the first gold answer is the target.

    v1.1 has no unanswerable questions, so an empty answer list is bad data (ValueError).
    """
    answers = example["answers"]["text"]
    if not answers:
        raise ValueError("SQuAD v1.1 example has no answer (use source='squad_v2' for unanswerable rows)")
    return _row(example["context"], example["question"], answers[0], example.get("id"))


def convert_squad_v2(example: dict, no_answer: str | None = SQUAD_V2_NO_ANSWER) -> dict:
    """SQuAD v2: like v1.1, but an unanswerable question (empty `answers.text`) gets `no_answer`."""
    answers = example["answers"]["text"]
    answer = answers[0] if answers else no_answer
    return _row(example["context"], example["question"], answer, example.get("id"))


# --- Natural Questions -----------------------------------------------------------------


def _nq_span(tokens: dict, start: int, end: int) -> str:
    """Plain text of document tokens [start, end), HTML tokens (<p>, <td>...) left out."""
    words = tokens["token"][start:end]
    is_html = tokens["is_html"][start:end]
    return " ".join(word for word, html in zip(words, is_html) if not html)


def nq_answer(example: dict) -> str | None:
    """The first annotator's short answer (its `text`, else rebuilt from tokens), or "Yes"/"No"
    for a yes/no annotation; None when no annotator gave either."""
    annotations = example["annotations"]
    tokens = example["document"]["tokens"]
    yes_no = annotations.get("yes_no_answer") or [-1] * len(annotations["short_answers"])
    for short, yn in zip(annotations["short_answers"], yes_no):
        texts = short.get("text") or []
        if texts and texts[0]:
            return texts[0]
        if short["start_token"]:
            return _nq_span(tokens, short["start_token"][0], short["end_token"][0])
        if yn in (0, 1):  # ClassLabel NO=0, YES=1; -1 = none
            return "Yes" if yn == 1 else "No"
    return None


def convert_natural_questions(example: dict, no_answer: str | None = None, context: str = "document") -> dict:
    """Natural Questions (HF `natural_questions` schema) -> one row.

    text: the page's non-HTML tokens joined by spaces (`context="document"`), or only the
    first annotated long-answer paragraph (`context="long_answer"`, far shorter to render;
    falls back to the whole page when no long answer was annotated).
    answer: `nq_answer`, else `no_answer` (None = drop the row).
    """
    if context not in ("document", "long_answer"):
        raise ValueError(f"context must be 'document' or 'long_answer', got {context!r}")
    tokens = example["document"]["tokens"]
    start, end = 0, len(tokens["token"])
    if context == "long_answer":
        spans = [la for la in example["annotations"]["long_answer"] if la["start_token"] >= 0]
        if spans:
            start, end = spans[0]["start_token"], spans[0]["end_token"]
    answer = nq_answer(example)
    return _row(
        _nq_span(tokens, start, end),
        example["question"]["text"],
        answer if answer is not None else no_answer,
        example.get("id"),
    )


# --- MS MARCO --------------------------------------------------------------------------


def ms_marco_answer(example: dict, prefer_well_formed: bool = False) -> str | None:
    """First answer (first well-formed answer when asked and present); None for "No Answer Present."."""
    well_formed = [a for a in example.get("wellFormedAnswers") or [] if a.strip() and a != "[]"]
    answers = [a for a in example["answers"] if a.strip()]
    candidates = well_formed + answers if prefer_well_formed else answers
    if not candidates or candidates[0] == MS_MARCO_NO_ANSWER:
        return None
    return candidates[0]


def convert_ms_marco(
    example: dict, no_answer: str | None = None, prefer_well_formed: bool = False, passage_sep: str = "\n\n"
) -> dict:
    """MS MARCO v2.1 (`query`, `passages.{is_selected,passage_text}`, `answers`, `wellFormedAnswers`).

    text: the passage(s) annotators marked `is_selected`, joined by `passage_sep`; all
    passages when none is selected (typical of unanswerable queries kept with `no_answer`).
    """
    passages = example["passages"]
    selected = [t for t, sel in zip(passages["passage_text"], passages["is_selected"]) if sel]
    answer = ms_marco_answer(example, prefer_well_formed)
    return _row(
        passage_sep.join(selected or passages["passage_text"]),
        example["query"],
        answer if answer is not None else no_answer,
        example.get("query_id"),
    )


# --- whole datasets --------------------------------------------------------------------

CONVERTERS: dict[str, Callable[..., dict]] = {
    "squad": convert_squad,
    "squad_v2": convert_squad_v2,
    "natural_questions": convert_natural_questions,
    "ms_marco": convert_ms_marco,
}
_SOURCE_ALIASES = {"squad_v1": "squad", "nq": "natural_questions", "msmarco": "ms_marco"}


def convert_dataset(ds: Dataset | DatasetDict, source: str = "squad_v2", num_proc: int | None = None, **opts):
    """Convert a whole dataset (or every split of a DatasetDict) with the `source` converter.

    `opts` go to the converter (`no_answer`, `context`, `prefer_well_formed`, ...). Source
    columns are removed; rows whose answer is None (unanswerable, `no_answer=None`) are
    dropped. A row that does not fit the source schema raises ValueError naming its index.
    """
    if isinstance(ds, DatasetDict):
        return DatasetDict({name: convert_dataset(split, source, num_proc, **opts) for name, split in ds.items()})
    source = _SOURCE_ALIASES.get(source, source)
    if source not in CONVERTERS:
        raise ValueError(f"unknown source {source!r}; choose from {sorted(CONVERTERS)}")
    convert = CONVERTERS[source]
    try:  # a misspelt option should fail here, not as a confusing error on row 0
        inspect.signature(convert).bind({}, **opts)
    except TypeError as err:
        raise ValueError(f"bad options for source {source!r}: {err}") from err

    def convert_row(example, index):
        try:
            return convert(example, **opts)
        except (KeyError, TypeError, IndexError, ValueError) as err:
            # Re-raised as ValueError so the message names the bad row, whatever went wrong.
            raise ValueError(f"{source} row {index}: cannot convert ({type(err).__name__}: {err})") from err

    converted = ds.map(convert_row, with_indices=True, remove_columns=ds.column_names, num_proc=num_proc)
    return converted.filter(lambda answer: answer is not None, input_columns="answer", num_proc=num_proc)
