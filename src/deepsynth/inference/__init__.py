"""Inference: `InstructionEngine` (Python API), the `instruct` CLI, the REST `api_server` and its web UI."""

from .engine import DEFAULT_MODEL_PATH, DocumentCache, GenerationResult, InstructionEngine, TextStream

__all__ = ["DEFAULT_MODEL_PATH", "DocumentCache", "GenerationResult", "InstructionEngine", "TextStream"]
