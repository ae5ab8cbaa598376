"""A small byte-level BPE decoder tokenizer with DeepSeek-OCR's special-token layout.

The real DeepSeek-OCR tokenizer (129,280 ids) cannot be downloaded here, and tiny test / demo decoders want a
vocabulary of a few hundred ids anyway. Ids 0/1/2 are bos/eos/pad exactly as in the real tokenizer, so prompts
built by the processor have the same shape as with the real one; `<image>` and `<instruction>` follow at 3 and 4.
"""

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

BOS_TOKEN = "<｜begin▁of▁sentence｜>"
EOS_TOKEN = "<｜end▁of▁sentence｜>"
PAD_TOKEN = "<｜▁pad▁｜>"
IMAGE_TOKEN = "<image>"  # must match processing_deepsynth.IMAGE_TOKEN
INSTRUCTION_TOKEN = "<instruction>"  # must match processing_deepsynth.INSTRUCTION_TOKEN
SPECIAL_TOKENS = [BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, IMAGE_TOKEN, INSTRUCTION_TOKEN]

# Used when no corpus is given: document / question / answer English with digits and punctuation, so the merges
# cover the words the demo data is made of.
DEFAULT_CORPUS = (
    "The quarterly report shows that revenue grew by 15% to $45 million, while operating costs fell to $12 million.",
    "Question: What is the main topic of the document? Answer: The document describes the results of the study.",
    "Summarize the key points of the text in one sentence. Extract all dates, names and numbers from the page.",
    "In 2024 the company opened three new offices in Paris, Berlin and Tokyo and hired 120 engineers.",
    "The patient was treated with the new drug for six weeks; the symptoms improved in 82 of the 100 cases.",
    "Artificial intelligence has transformed healthcare through improved diagnostics and faster research.",
    "Section 1. Introduction. This document explains how the system works and what the user needs to know.",
    "Who wrote the letter? When was the contract signed? Where is the meeting? How many people attended?",
    "The river flows north through the valley, and the village on its bank has a population of 4,300 people.",
    "Table 2: sales by region. North: 1,250 units. South: 980 units. East: 1,100 units. West: 1,475 units.",
    "Instructions: read the document carefully, then answer the question using only the information given.",
    "The committee approved the budget on March 3rd, after a long discussion about the cost of the project.",
)


def build_decoder_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (every string is encodable, no unk) on `corpus` (default: a built-in English text).

    Ids: 0 bos, 1 eos, 2 pad, 3 `<image>`, 4 `<instruction>`, 5..260 the 256 bytes, then merges up to
    `vocab_size` (fewer if the corpus has fewer distinct pairs). Deterministic: same corpus, same tokenizer.
    """
    min_size = len(SPECIAL_TOKENS) + 256
    if vocab_size < min_size:
        raise ValueError(f"vocab_size must be >= {min_size} (5 special tokens + 256 bytes), got {vocab_size}")
    texts = list(DEFAULT_CORPUS if corpus is None else corpus)
    if not any(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError("corpus has no non-empty string to train the tokenizer on")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,  # ids 0..4 in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens={"image_token": IMAGE_TOKEN, "instruction_token": INSTRUCTION_TOKEN},
        padding_side="left",  # generation batches are left-padded
    )


__all__ = ["build_decoder_tokenizer", "BOS_TOKEN", "EOS_TOKEN", "PAD_TOKEN", "IMAGE_TOKEN", "INSTRUCTION_TOKEN"]
