"""`model.infer(tokenizer, prompt=..., image_file=..., ...)` as the original DeepSeek-OCR has it.

Same signature, defaults and behaviour as deepseek-ai/DeepSeek-OCR's `DeepseekOCRForCausalLM.infer`: the prompt
template (text before and after `<image>`), the preprocessing modes (base_size / image_size / crop_mode), greedy
generation with `no_repeat_ngram_size` 20 (streamed) or 35 (`eval_mode=True`, the text returned), the compression
numbers of `test_compress`, and what `save_results` writes into `output_path`: `result.mmd` (the text, grounding
tags removed, figures linked as `images/<i>.jpg`), `result_with_boxes.jpg` (the page with the `<|det|>` boxes
drawn) and `images/<i>.jpg` (the crops of the boxes labelled `image`). Written for this repository; the inputs go
through our processor (one place for the prompt layout).

Remote code: copied into every checkpoint (modeling_deepsynth.py imports it).
"""

import math
import os
import re

import torch
from PIL import Image, ImageDraw, ImageFont
from transformers import TextStreamer

try:
    from .configuration_deepsynth import vision_grid_size
    from .generation_deepsynth import resolve_guard_kwarg
    from .processing_deepsynth import SQUASH_MAX, DeepSynthImageProcessor, DeepSynthProcessor
except ImportError:  # imported from the repo root rather than as remote code
    from configuration_deepsynth import vision_grid_size
    from generation_deepsynth import resolve_guard_kwarg
    from processing_deepsynth import SQUASH_MAX, DeepSynthImageProcessor, DeepSynthProcessor

# Upstream's generation settings: greedy, at most 8192 new tokens, n-gram ban 20 when streaming, 35 in eval mode.
MAX_NEW_TOKENS = 8192
NO_REPEAT_NGRAM_SIZE = {False: 20, True: 35}
# `<|ref|>label<|/ref|><|det|>[[x1, y1, x2, y2], ...]<|/det|>`, coordinates normalised to 0..999.
GROUNDING = re.compile(r"<\|ref\|>(.*?)<\|/ref\|><\|det\|>(.*?)<\|/det\|>", re.DOTALL)
BOX_SCALE = 999
# Box colours, one per reference in turn (upstream picks random ones).
PALETTE = [(220, 40, 40), (30, 120, 220), (30, 160, 60), (200, 120, 0), (140, 60, 200), (0, 150, 150)]


class _EosAsNewlineStreamer(TextStreamer):
    """Prints the answer as it is written, the end-of-sequence marker shown as a line break (as upstream)."""

    def on_finalized_text(self, text: str, stream_end: bool = False):
        eos = self.tokenizer.decode([self.tokenizer.eos_token_id], skip_special_tokens=False)
        print(text.replace(eos, "\n") if eos else text, flush=True, end="")


def infer_inputs(model, tokenizer, prompt, image_file, base_size, image_size, crop_mode, instruction=None):
    """(model inputs (batch of 1), the page images, the image processor) for one `infer()` call, built by our
    processor."""
    if not prompt:
        raise ValueError("infer() needs a prompt, e.g. '<image>\\nFree OCR. '")
    if not image_file:
        raise ValueError("infer() needs an image_file (the page to read)")
    # bf16_round: upstream casts its pixels to bfloat16 before the model, whatever the model's dtype.
    image_processor = DeepSynthImageProcessor(
        mode=None, base_size=base_size, image_size=image_size, crop_mode=crop_mode, bf16_round=True,
        patch_size=model.config.patch_size, downsample_ratio=model.config.downsample_ratio,
    )
    instruction_tokenizer, settings = None, {}
    if instruction is not None:
        if model.config.instruction_fusion == "none":
            raise ValueError("this model has no instruction encoder: write the instruction into the prompt")
        # the checkpoint's own instruction tokenizer and fusion settings (the tokenizer argument is the decoder's)
        checkpoint = DeepSynthProcessor.from_pretrained(model.name_or_path)
        instruction_tokenizer = checkpoint.instruction_tokenizer
        settings = {
            "instruction_fusion": checkpoint.instruction_fusion,
            "num_pooled_instruction_tokens": checkpoint.num_pooled_instruction_tokens,
            "max_instruction_length": checkpoint.max_instruction_length,
        }
    processor = DeepSynthProcessor(image_processor, tokenizer, instruction_tokenizer, **settings)
    if processor.image_token_id != model.config.image_token_id:
        raise ValueError(
            f"the tokenizer's <image> id {processor.image_token_id} is not the model's {model.config.image_token_id}"
        )
    pages = image_processor.load_pages(image_file)
    example = processor.encode_example(pages, instruction, prompt=prompt)
    inputs = processor.collate([example])
    inputs.pop("num_pages")
    return inputs.to(model.device), pages, image_processor


def valid_image_tokens(page: Image.Image, inputs, image_processor) -> int:
    """Upstream's `test_compress` count: vision tokens that cover the page, i.e. a letterboxed global view counts
    only the share of the page (min side / max side), a squashed one counts fully, plus every local tile."""
    base_size, image_size, crop_mode = image_processor.geometry()

    def tokens(size):
        return vision_grid_size(size, image_processor.patch_size, image_processor.downsample_ratio) ** 2

    letterboxed = crop_mode or image_size > SQUASH_MAX
    ratio = min(page.size) / max(page.size) if letterboxed else 1.0
    count = int(tokens(base_size if crop_mode else image_size) * ratio)
    width_tiles, height_tiles = inputs["images_spatial_crop"][0].tolist()
    if width_tiles * height_tiles > 1:
        count += width_tiles * height_tiles * tokens(image_size)
    return count


def parse_grounding(text: str) -> list[tuple[str, str, list[list[float]]]]:
    """[(whole tag, label, boxes)] of every `<|ref|>..<|/ref|><|det|>..<|/det|>` in `text` (unreadable boxes: [])."""
    found = []
    for match in GROUNDING.finditer(text):
        boxes = re.findall(r"\[\s*([-\d.]+)\s*,\s*([-\d.]+)\s*,\s*([-\d.]+)\s*,\s*([-\d.]+)\s*\]", match.group(2))
        found.append((match.group(0), match.group(1), [[float(v) for v in box] for box in boxes]))
    return found


def draw_grounding(page: Image.Image, refs, output_path: str) -> Image.Image:
    """The page with every box drawn (label above it, a faint fill); boxes labelled `image` are also cropped
    into `output_path/images/<i>.jpg`."""
    page = page.convert("RGB")
    drawn = page.copy()
    draw = ImageDraw.Draw(drawn)
    overlay = Image.new("RGBA", drawn.size, (0, 0, 0, 0))
    fill = ImageDraw.Draw(overlay)
    font = ImageFont.load_default()
    width, height = page.size
    crops = 0
    for i, (_, label, boxes) in enumerate(refs):
        color = PALETTE[i % len(PALETTE)]
        for x1, y1, x2, y2 in boxes:
            box = [int(x1 / BOX_SCALE * width), int(y1 / BOX_SCALE * height),
                   int(x2 / BOX_SCALE * width), int(y2 / BOX_SCALE * height)]
            if box[2] < box[0] or box[3] < box[1]:
                continue  # a malformed box from the model: nothing to draw
            if label == "image":
                page.crop(box).save(os.path.join(output_path, "images", f"{crops}.jpg"))
                crops += 1
            draw.rectangle(box, outline=color, width=4 if label == "title" else 2)
            fill.rectangle(box, fill=color + (20,))
            left, top = box[0], max(0, box[1] - 15)
            text_box = draw.textbbox((left, top), label, font=font)
            draw.rectangle(text_box, fill=(255, 255, 255))
            draw.text((left, top), label, font=font, fill=color)
    drawn.paste(overlay, (0, 0), overlay)
    return drawn


def markdown_of(text: str, refs) -> str:
    """result.mmd: figure tags become image links, other grounding tags go, `\\coloneqq` / `\\eqqcolon` are
    written as `:=` / `=:` (as upstream)."""
    figure = 0
    for tag, label, _ in refs:
        if label == "image":
            text = text.replace(tag, f"![](images/{figure}.jpg)\n", 1)
            figure += 1
        else:
            text = text.replace(tag, "")
    return text.replace("\\coloneqq", ":=").replace("\\eqqcolon", "=:")


def write_results(text: str, page: Image.Image, output_path: str) -> None:
    """What `save_results=True` writes: result.mmd and result_with_boxes.jpg (+ images/<i>.jpg)."""
    refs = parse_grounding(text)
    with open(os.path.join(output_path, "result.mmd"), "w", encoding="utf-8") as f:
        f.write(markdown_of(text, refs))
    draw_grounding(page, refs, output_path).save(os.path.join(output_path, "result_with_boxes.jpg"))


def infer(
    model,
    tokenizer,
    prompt="",
    image_file="",
    output_path="",
    base_size=1024,
    image_size=640,
    crop_mode=True,
    test_compress=False,
    save_results=False,
    eval_mode=False,
    instruction=None,
    **generate_kwargs,
):
    """See `DeepSynthForConditionalGeneration.infer`."""
    if save_results and not output_path:
        raise ValueError("save_results=True needs an output_path")
    if output_path:
        os.makedirs(os.path.join(output_path, "images"), exist_ok=True)
    inputs, pages, image_processor = infer_inputs(
        model, tokenizer, prompt, image_file, base_size, image_size, crop_mode, instruction
    )
    settings = {
        "do_sample": False,
        "max_new_tokens": MAX_NEW_TOKENS,
        "no_repeat_ngram_size": NO_REPEAT_NGRAM_SIZE[bool(eval_mode)],
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if not eval_mode:
        settings["streamer"] = _EosAsNewlineStreamer(tokenizer, skip_prompt=True, skip_special_tokens=False)
    generate_kwargs = resolve_guard_kwarg(generate_kwargs, tokenizer)  # table cells exempt from the guard
    with torch.no_grad():
        output_ids = model.generate(**inputs, **{**settings, **generate_kwargs})
    new_ids = output_ids[0, inputs["input_ids"].shape[1] :]
    text = tokenizer.decode(new_ids, skip_special_tokens=False)
    if tokenizer.eos_token and text.endswith(tokenizer.eos_token):
        text = text[: -len(tokenizer.eos_token)]
    text = text.strip()
    if eval_mode:
        return text
    if test_compress:
        text_tokens = len(tokenizer.encode(text, add_special_tokens=False))
        image_tokens = valid_image_tokens(pages[0], inputs, image_processor)
        print("=" * 50)
        print("image size: ", pages[0].size)
        print("valid image tokens: ", image_tokens)
        print("output texts tokens (valid): ", text_tokens)
        print("compression ratio: ", round(text_tokens / image_tokens, 2))
        print("=" * 50)
    if save_results:
        print("=" * 15 + "save results:" + "=" * 15)
        write_results(text, pages[0], output_path)
    return text


__all__ = [
    "draw_grounding", "infer", "infer_inputs", "markdown_of", "parse_grounding", "valid_image_tokens", "write_results",
]
