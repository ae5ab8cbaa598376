"""Evaluation: SQuAD-v2 EM/F1 and ROUGE as plain functions and as a local `evaluate` module."""

from pathlib import Path

from .metrics import (
    DEFAULT_METRICS,
    ROUGE_TYPES,
    compute_metrics,
    exact_match,
    f1_score,
    normalize_answer,
    rouge_scores,
)

# Folder of the offline `evaluate` module: `evaluate.load(METRIC_MODULE_PATH)`.
METRIC_MODULE_PATH = str(Path(__file__).resolve().parent / "metrics" / "deepsynth_qa")

__all__ = [
    "DEFAULT_METRICS",
    "METRIC_MODULE_PATH",
    "ROUGE_TYPES",
    "compute_metrics",
    "exact_match",
    "f1_score",
    "normalize_answer",
    "rouge_scores",
]
