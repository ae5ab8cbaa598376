"""Offline use: `{"document": ..., "instruction": ...}` requests -> vLLM prompts -> `LLM.generate`.

    from vllm import LLM, SamplingParams
    from deepsynth_vllm.offline import generate
    llm = LLM(model="path/to/deepsynth-checkpoint")
    outputs = generate(llm, [{"document": "Q3 revenue was $45M.", "instruction": "What was the revenue?"}])

A document is anything the checkpoint's own processor takes (text, a path to a .txt/.md/image/.pdf file, image or
PDF bytes, a PIL image, or a list of those, one per page). Pages are made by the checkpoint's processing_deepsynth.py
(text rendered with its font, PDFs rasterised), loaded here with a stand-in for configuration_deepsynth: that module
needs transformers 5.24, and the processor only takes three pure functions from it (given below, the same maths).
"""

import importlib.util
import math
import os
import sys
import types
from functools import lru_cache

from PIL import Image

from .processing import FUSION_MODES, num_image_tokens


def _configuration_stand_in() -> types.ModuleType:
    module = types.ModuleType("configuration_deepsynth")
    module.FUSION_MODES = FUSION_MODES
    module.num_image_tokens = lambda base, image, w=1, h=1, patch=16, ratio=4: num_image_tokens(
        base, image, w, h, patch, ratio)
    module.vision_grid_size = lambda view, patch=16, ratio=4: math.ceil((view // patch) / ratio)
    return module


def _load_file(name: str, path: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@lru_cache(maxsize=8)
def checkpoint_image_processor(model_dir: str):
    """The checkpoint's DeepSynthImageProcessor, from its own processing_deepsynth.py (and the renderer it imports,
    rendering_deepsynth.py, pure Pillow, loaded from the same folder: not whatever module of that name is on
    sys.path)."""
    path = os.path.join(model_dir, "processing_deepsynth.py")
    if not os.path.isfile(path):
        raise ValueError(f"{model_dir} has no processing_deepsynth.py: pass the pages as images instead")
    renderer = os.path.join(model_dir, "rendering_deepsynth.py")
    names = ("configuration_deepsynth", "rendering_deepsynth")
    saved = {name: sys.modules.get(name) for name in names}
    sys.modules["configuration_deepsynth"] = _configuration_stand_in()
    try:
        if os.path.isfile(renderer):  # older checkpoints render inside processing_deepsynth.py
            sys.modules["rendering_deepsynth"] = _load_file("rendering_deepsynth", renderer)
        module = _load_file("deepsynth_checkpoint_processing", path)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    return module.DeepSynthImageProcessor.from_pretrained(model_dir)


def to_prompt(model_dir: str, request: dict, fused: bool = True) -> dict:
    """One `{"document", "instruction"}` request (instruction optional) -> a vLLM prompt dict. fused: the model has
    an instruction encoder (else the instruction is decoder text: the prompt's)."""
    if not isinstance(request, dict) or "document" not in request:
        raise ValueError(f"a request is a dict with a 'document' (and an optional 'instruction'), got {request!r}")
    unknown = set(request) - {"document", "instruction"}
    if unknown:
        raise ValueError(f"unknown request keys {sorted(unknown)}: expected 'document' and 'instruction'")
    document = request["document"]
    pages = [document] if isinstance(document, Image.Image) else document
    is_pages = isinstance(pages, (list, tuple)) and pages and all(isinstance(p, Image.Image) for p in pages)
    if is_pages and not os.path.isfile(os.path.join(model_dir, "processing_deepsynth.py")):
        pages = list(pages)  # an original DeepSeek-OCR folder: page images go to vLLM as they are
    else:
        pages = checkpoint_image_processor(model_dir).load_pages(document)
    mm = {"image": pages}
    instruction = request.get("instruction")
    if instruction is not None:
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError(f"instruction must be a non-empty string or None, got {instruction!r}")
        if not fused:
            return {"prompt": instruction, "multi_modal_data": mm}
        mm["instruction"] = instruction
    return {"prompt": "", "multi_modal_data": mm}


def generate(llm, requests: list[dict], sampling_params=None, **kwargs):
    """`LLM.generate` on DeepSynth requests; returns vLLM's RequestOutputs in request order."""
    from .config import deepsynth_config

    model_config = llm.llm_engine.model_config
    fused = deepsynth_config(model_config).instruction_fusion != "none"
    return llm.generate([to_prompt(model_config.model, r, fused) for r in requests], sampling_params, **kwargs)
