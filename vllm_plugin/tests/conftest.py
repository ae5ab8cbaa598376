"""Fixtures of the plugin's tests. They run in the vLLM environment and read what vllm_plugin/tools/make_reference.py
wrote in the project's environment: `DEEPSYNTH_VLLM_REFERENCE`/<fusion>/{checkpoint, pages, reference.json}
(scripts/test_vllm.sh sets it up). A missing reference is a failure, not a skip."""

import gc
import json
import os
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process: one model load per test module
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # one thread, not pinned: the machine is shared
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
from PIL import Image  # noqa: E402

MAX_MODEL_LEN = 1024
ORIGINAL_OVERRIDE = "DeepSynthForConditionalGeneration"


def reference_dir(fusion: str) -> Path:
    root = os.environ.get("DEEPSYNTH_VLLM_REFERENCE")
    if not root or not (Path(root) / fusion / "reference.json").is_file():
        pytest.fail(f"no reference for fusion={fusion!r} under DEEPSYNTH_VLLM_REFERENCE={root!r}: "
                    "run `bash scripts/test_vllm.sh`", pytrace=False)
    return Path(root) / fusion


def load_reference(fusion: str) -> dict:
    ref = json.loads((reference_dir(fusion) / "reference.json").read_text())
    for case in ref["cases"]:
        case["fused"] = ref["fusion"] != "none"
        case["images"] = [Image.open(reference_dir(fusion) / "pages" / n).convert("RGB") for n in case["pages"]]
        if case.get("text"):  # pages rendered by the checkpoint's own processor file (deepsynth_vllm.offline)
            from deepsynth_vllm.offline import checkpoint_image_processor

            case["images"] = checkpoint_image_processor(str(reference_dir(fusion) / "checkpoint")).load_pages(
                case["text"])
    return ref


def engine_args(fusion: str) -> dict:
    from vllm.model_executor.models.deepseek_ocr import NGramPerReqLogitsProcessor  # idle unless a request asks

    return dict(logits_processors=[NGramPerReqLogitsProcessor],
        model=str(reference_dir(fusion) / "checkpoint"), dtype="float32", max_model_len=MAX_MODEL_LEN,
        enforce_eager=True, limit_mm_per_prompt={"image": 2}, max_num_seqs=8, kv_cache_memory_bytes=256 << 20, seed=0,
        # an original DeepSeek-OCR folder names vLLM's stock class; the plugin's serves it at any size
        **({"hf_overrides": {"architectures": [ORIGINAL_OVERRIDE]}} if fusion == "original" else {}),
    )


def make_llm(fusion: str):
    from vllm import LLM

    return LLM(**engine_args(fusion))


def release(llm):
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    del llm
    gc.collect()
    cleanup_dist_env_and_memory()


@pytest.fixture(scope="module")
def tokens_llm():
    llm = make_llm("tokens")
    yield llm
    release(llm)
