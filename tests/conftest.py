import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Our own copy of the original DeepSeek-OCR reference outputs (tests/fixtures/deepseek-ocr-reference/README.md):
# a clone of this repository runs its tests with nothing beside it.
FIXTURE_DIR = REPO_ROOT / "tests" / "fixtures" / "deepseek-ocr-reference"
for path in (REPO_ROOT, REPO_ROOT / "src"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    # The parity fixture is part of the contract: a missing fixture is a failure, never a skip.
    if not (FIXTURE_DIR / "model.safetensors").is_file():
        raise FileNotFoundError(f"DeepSeek-OCR reference fixture missing at {FIXTURE_DIR}")
    return FIXTURE_DIR


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on 2 shared cores: one thread avoids threads fighting other processes (~10x faster here)."""
    from _serving_helpers import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """One tiny serving checkpoint (with the pipeline) shared by the serving tests; they only read it."""
    from _serving_helpers import make_serving_checkpoint

    return make_serving_checkpoint(tmp_path_factory.mktemp("serving") / "tiny")
