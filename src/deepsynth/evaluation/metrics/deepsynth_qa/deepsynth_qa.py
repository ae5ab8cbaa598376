"""DeepSynth QA metric: SQuAD-v2 exact match / token F1 and ROUGE, for `evaluate.load`.

Works offline: `evaluate.load("<path to this folder>")`. The Hub metric scripts
("squad_v2", "rouge") cannot be downloaded here, and the scoring code lives in one
place, `deepsynth.evaluation.metrics`, which this module only wraps; the `deepsynth`
package must therefore be importable (installed, or `src/` on sys.path).

evaluate parses this file's imports line by line, so keep one import per line.
"""

import datasets
import evaluate
from deepsynth.evaluation.metrics import DEFAULT_METRICS
from deepsynth.evaluation.metrics import compute_metrics

_DESCRIPTION = """Exact match and token F1 with the official SQuAD v2 normalisation (lowercase,
no punctuation, no articles a/an/the, single spaces; empty gold = unanswerable), plus
ROUGE-1/2/L/Lsum F-measures (Lsum splits sentences on newlines). All scores are 0-100."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predicted answers (str).
    references: list of gold answers, each one str or a list of acceptable str.
    metrics: any of "exact_match", "f1_score" (or "f1"), "rouge"; default all three.
    use_stemmer: Porter-stem tokens before ROUGE (default False).
Returns:
    dict with "exact_match", "f1_score", "rouge1", "rouge2", "rougeL", "rougeLsum" (0-100),
    restricted to the requested metrics.
Example:
    >>> metric = evaluate.load("src/deepsynth/evaluation/metrics/deepsynth_qa")
    >>> metric.compute(predictions=["The cat."], references=[["cat", "a dog"]], metrics=["exact_match"])
    {'exact_match': 100.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class DeepsynthQa(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            # Two accepted shapes: several golds per example, or exactly one.
            features=[
                datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
                ),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
        )

    def _compute(self, predictions, references, metrics=DEFAULT_METRICS, use_stemmer=False):
        return compute_metrics(predictions, references, metrics=metrics, use_stemmer=use_stemmer)
