"""Answer-quality metrics: SQuAD-v2 exact match and token F1, and ROUGE.

EM/F1 follow the official SQuAD v2.0 evaluation script exactly (normalisation,
empty-answer handling, max over several gold answers). ROUGE comes from
`rouge_score`; `rougeLsum` treats each line as a sentence (nltk's punkt data is
not available offline, and our generated answers put one sentence per line).

The same functions back the local `evaluate` module in `metrics/deepsynth_qa/`
(`evaluate.load(METRIC_MODULE_PATH)`). That folder has no `__init__.py` on
purpose: Python then imports this file for `deepsynth.evaluation.metrics`.
"""

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
