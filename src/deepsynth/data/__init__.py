"""Data: converters from public QA datasets, loading/validation, and the synthetic generator."""

from .converters import (
    CONVERTERS,
    convert_dataset,
    convert_ms_marco,
    convert_natural_questions,
    convert_squad,
    convert_squad_v2,
)
from .loading import load_instruction_dataset, validate_rows
from .synthetic import SPLITS, build_dataset_dict, generate_split

__all__ = [
    "CONVERTERS",
    "SPLITS",
    "build_dataset_dict",
    "convert_dataset",
    "convert_ms_marco",
    "convert_natural_questions",
    "convert_squad",
    "convert_squad_v2",
    "generate_split",
    "load_instruction_dataset",
    "validate_rows",
]
