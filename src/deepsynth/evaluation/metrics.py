"""Answer-quality metrics: SQuAD-v2 exact match and token F1, and ROUGE.

EM/F1 follow the official SQuAD v2.0 evaluation script exactly (normalisation,
empty-answer handling, max over several gold answers). ROUGE comes from
`rouge_score`; `rougeLsum` treats each line as a sentence (nltk's punkt data is
not available offline, and our generated answers put one sentence per line).
JSON extraction answers also get field-level precision / recall / exact match (`json_field_scores`).

The same functions back the local `evaluate` module in `metrics/deepsynth_qa/`
(`evaluate.load(METRIC_MODULE_PATH)`). That folder has no `__init__.py` on
purpose: Python then imports this file for `deepsynth.evaluation.metrics`.
"""

import json
import re
import string
from collections import Counter
from collections.abc import Sequence

from rouge_score import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
DEFAULT_METRICS = ("exact_match", "f1_score", "rouge")
# Names accepted by `compute_metrics`; "f1" is the SQuAD script's own name for F1.
_ALIASES = {"exact_match": "exact_match", "em": "exact_match", "f1_score": "f1_score", "f1": "f1_score", "rouge": "rouge"}

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace (SQuAD v2 rules)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _golds(references: str | Sequence[str]) -> list[str]:
    """Gold answers as the SQuAD v2 script sees them: blank ones dropped, none left -> [""] (unanswerable)."""
    golds = [references] if isinstance(references, str) else list(references)
    return [g for g in golds if normalize_answer(g)] or [""]


def _f1_single(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        # "No answer" scores 1 only against "no answer".
        return float(pred_tokens == gold_tokens)
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:
        return 0.0
    precision, recall = num_same / len(pred_tokens), num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, references: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0."""
    return max(float(normalize_answer(prediction) == normalize_answer(g)) for g in _golds(references))


def f1_score(prediction: str, references: str | Sequence[str]) -> float:
    """Token-overlap F1 in [0, 1], maximised over the gold answers (SQuAD v2 rules)."""
    return max(_f1_single(prediction, g) for g in _golds(references))


def rouge_scores(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    rouge_types: Sequence[str] = ROUGE_TYPES,
    use_stemmer: bool = False,
) -> dict[str, float]:
    """Mean ROUGE F-measure per type in [0, 1]; with several references the best one counts.

    A plain mean rather than evaluate's bootstrap aggregate, so results are deterministic.
    """
    _check_lengths(predictions, references)
    # split_summaries=False: rougeLsum splits sentences on "\n" (no nltk data needed).
    scorer = rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=use_stemmer, split_summaries=False)
    totals = dict.fromkeys(rouge_types, 0.0)
    for prediction, refs in zip(predictions, references):
        refs = [refs] if isinstance(refs, str) else (list(refs) or [""])  # [] = unanswerable
        scores = scorer.score_multi(refs, prediction)
        for rouge_type in rouge_types:
            totals[rouge_type] += scores[rouge_type].fmeasure
    return {k: v / len(predictions) for k, v in totals.items()}


def _check_lengths(predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")


def compute_metrics(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    metrics: str | Sequence[str] = DEFAULT_METRICS,
    use_stemmer: bool = False,
) -> dict[str, float]:
    """Corpus-level scores as a flat dict of floats, ALL on a 0-100 scale.

    `references[i]` is one gold string or a list of acceptable golds (an empty list or
    "" means unanswerable). `metrics` takes the CLI names "exact_match", "f1_score"
    (alias "f1") and "rouge". Keys returned: "exact_match" and "f1_score" (mean per-example
    EM/F1 in percent) and "rouge1", "rouge2", "rougeL", "rougeLsum" (mean F-measure x 100).
    """
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in names if m not in _ALIASES]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {sorted(_ALIASES)}")
    _check_lengths(predictions, references)
    results: dict[str, float] = {}
    for name in dict.fromkeys(_ALIASES[m] for m in names):  # de-duplicated, order kept
        if name == "rouge":
            scores = rouge_scores(predictions, references, use_stemmer=use_stemmer)
            results.update({k: 100.0 * v for k, v in scores.items()})
        else:
            fn = exact_match if name == "exact_match" else f1_score
            results[name] = 100.0 * sum(fn(p, r) for p, r in zip(predictions, references)) / len(predictions)
    return results


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def character_error_rate(preds: list[str], refs: list[str]) -> float:
    """Sum of edit distances over the sum of reference lengths (transcription CER on the eval set)."""
    return sum(levenshtein(p, r) for p, r in zip(preds, refs, strict=True)) / max(1, sum(len(r) for r in refs))


# ---- JSON extraction ---------------------------------------------------------------------------------------------
def _json_object(value, what: str, index: int) -> dict | None:
    """A JSON object from a dict or its text; None for a prediction that is not one (a gold answer must be)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if v is not None}  # null = the field is absent
    if what == "reference":
        raise ValueError(f"reference {index} is not a JSON object: {value!r:.80}")
    return None


def _same_value(prediction, gold) -> bool:
    """Strings compare as the SQuAD script compares answers (normalised); other JSON values exactly."""
    if isinstance(prediction, str) and isinstance(gold, str):
        return normalize_answer(prediction) == normalize_answer(gold)
    return prediction == gold


def json_field_scores(predictions: Sequence, references: Sequence) -> dict[str, float]:
    """Field-level scores of JSON extraction (0-100), a prediction/reference being a JSON object or its text.

    A field is predicted / expected when its key holds a non-null value; it is correct when both hold the same
    value (strings normalised as for exact_match). Returns json_parse_rate (predictions that are JSON objects),
    json_exact_match (every field right, none extra), micro json_field_precision / _recall / _f1, and per field
    name: json_field/<name>/precision, /recall and /exact_match (rows where either side has the field, right).
    """
    _check_lengths(predictions, references)
    parsed = [_json_object(p, "prediction", i) for i, p in enumerate(predictions)]
    golds = [_json_object(r, "reference", i) for i, r in enumerate(references)]
    counts = {}  # name -> [correct, predicted, expected, seen]
    exact = 0
    for pred, gold in zip(parsed, golds):
        pred = pred or {}
        right = {k for k in gold if k in pred and _same_value(pred[k], gold[k])}
        exact += right == set(gold) == set(pred)
        for name in set(pred) | set(gold):
            c = counts.setdefault(name, [0, 0, 0, 0])
            c[0] += name in right
            c[1] += name in pred
            c[2] += name in gold
            c[3] += 1
    correct, predicted, expected = (sum(c[i] for c in counts.values()) for i in range(3))
    precision, recall = correct / max(predicted, 1), correct / max(expected, 1)
    scores = {
        "json_parse_rate": 100.0 * sum(p is not None for p in parsed) / len(parsed),
        "json_exact_match": 100.0 * exact / len(parsed),
        "json_field_precision": 100.0 * precision,
        "json_field_recall": 100.0 * recall,
        "json_field_f1": 100.0 * (2 * precision * recall / (precision + recall) if correct else 0.0),
    }
    for name in sorted(counts):
        right, pred_n, gold_n, seen = counts[name]
        scores[f"json_field/{name}/precision"] = 100.0 * right / max(pred_n, 1)
        scores[f"json_field/{name}/recall"] = 100.0 * right / max(gold_n, 1)
        scores[f"json_field/{name}/exact_match"] = 100.0 * right / seen
    return scores


def is_json_object_text(value) -> bool:
    """Whether a gold answer is a JSON object (a dict, or text that parses to one)."""
    if isinstance(value, dict):
        return True
    try:
        return isinstance(value, str) and value.lstrip().startswith("{") and isinstance(json.loads(value), dict)
    except json.JSONDecodeError:
        return False
