"""From an original DeepSeek-OCR folder (+ an instruction encoder) to a complete DeepSynth checkpoint:
weights through `DeepSynthForConditionalGeneration.from_deepseek_ocr`, and a processor assembled from the folder's
own tokenizer (with an `<instruction>` placeholder added), the encoder's tokenizer and our image processor."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the remote-code files live at the repo root
    sys.path.insert(0, str(ROOT))

from transformers import AutoTokenizer  # noqa: E402

from modeling_deepsynth import DeepSynthForConditionalGeneration  # noqa: E402
from processing_deepsynth import (  # noqa: E402
    IMAGE_TOKEN,
    INSTRUCTION_TOKEN,
    DeepSynthImageProcessor,
    DeepSynthProcessor,
)

# The DeepSeek-OCR mode fine-tuning defaults to: 640 px, 111 vision tokens a page (see README "Resolution modes").
DEFAULT_MODE = "small"


def original_tokenizer(checkpoint_dir: str):
    """The folder's decoder tokenizer with the `<instruction>` placeholder added (a new id past the last one)."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir)
    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) in (None, tokenizer.unk_token_id):
        raise ValueError(f"the tokenizer in {checkpoint_dir} has no {IMAGE_TOKEN} token")
    tokenizer.add_special_tokens({"additional_special_tokens": [INSTRUCTION_TOKEN]}, replace_extra_special_tokens=False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def processor_for_original(
    checkpoint_dir: str, instruction_encoder: str | None, fusion: str = "tokens", mode: str = DEFAULT_MODE
) -> DeepSynthProcessor:
    tokenizer = original_tokenizer(checkpoint_dir)
    instruction_tokenizer = AutoTokenizer.from_pretrained(instruction_encoder) if fusion != "none" else None
    return DeepSynthProcessor(
        DeepSynthImageProcessor(mode=mode),
        tokenizer,
        instruction_tokenizer,
        instruction_fusion=fusion if instruction_tokenizer is not None else "none",
    )


def convert_original(
    checkpoint_dir: str, instruction_encoder: str | None = None, fusion: str = "tokens", mode: str = DEFAULT_MODE,
    config=None,
):
    """(model, processor) for an original folder. With a tokenizer in the folder, the placeholder ids come from it;
    without one (weights only), `config` must say them and no processor is built (None)."""
    has_tokenizer = any((Path(checkpoint_dir) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    processor = processor_for_original(checkpoint_dir, instruction_encoder, fusion, mode) if has_tokenizer else None
    ids = {}
    if processor is not None:
        ids = {"image_token_id": processor.image_token_id, "instruction_token_id": processor.tokenizer.convert_tokens_to_ids(INSTRUCTION_TOKEN)}
    model = DeepSynthForConditionalGeneration.from_deepseek_ocr(
        checkpoint_dir, config=config, instruction_encoder=instruction_encoder, instruction_fusion=fusion, **ids
    )
    if processor is not None:
        model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
        model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    return model, processor
