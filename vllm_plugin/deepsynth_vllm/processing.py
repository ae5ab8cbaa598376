"""DeepSynth's inputs on vLLM: pages -> DeepSeek-OCR views at the checkpoint's own resolution mode, and the
instruction -> the instruction encoder's tokens, as a second modality with one `<instruction>` placeholder per row.

The page path ports processing_deepsynth.DeepSynthImageProcessor.page_views (it cannot be imported here: it needs
transformers 5.24): same Pillow ops, same normalisation, same token counts. The decoder prompt is DeepSynth's fixed
one, which this module builds itself from whatever prompt vLLM passes in:

    bos, <image> x n(page 1), ..., <image> x n(page P), "\n", <instruction> x k, "\n"

Any text in the incoming prompt (besides image placeholders) is the instruction: that is how the instruction of an
OpenAI chat request (the message's text part) reaches the instruction encoder. Offline it can also be given as
`multi_modal_data={"image": pages, "instruction": text}`.
"""

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from functools import cached_property

import torch
from PIL import Image, ImageOps
from transformers import AutoTokenizer, BatchFeature
from vllm.model_executor.models.deepseek_ocr import (
    DeepseekOCRDummyInputsBuilder,
    DeepseekOCRMultiModalProcessor,
    DeepseekOCRProcessingInfo,
)
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import ImageProcessorItems, ImageSize, MultiModalDataParser, ProcessorBatchItems
from vllm.multimodal.processing import BaseMultiModalProcessor, PromptReplacement
from vllm.transformers_utils.processors.deepseek_ocr import count_tiles, dynamic_preprocess

from .config import deepsynth_config

IMAGE_TOKEN, INSTRUCTION_TOKEN = "<image>", "<instruction>"
SQUASH_MAX = 640  # as processing_deepsynth: without crop mode, views <= 640 px squash the page, larger letterbox
FUSION_MODES = ("tokens", "pooled", "none")


def num_image_tokens(base_size, image_size, width_tiles, height_tiles, patch_size, downsample_ratio) -> int:
    """configuration_deepsynth.num_image_tokens: local grid + newlines, global grid + newlines, separator."""
    g = math.ceil((base_size // patch_size) / downsample_ratio)
    count = g * (g + 1)
    if width_tiles * height_tiles > 1:
        t = math.ceil((image_size // patch_size) / downsample_ratio)
        count += (height_tiles * t) * (width_tiles * t + 1)
    return count + 1


class InstructionItems(ProcessorBatchItems[str]):
    def __init__(self, data: Sequence[str]):
        super().__init__(list(data), "instruction")


class DeepSynthDataParser(MultiModalDataParser):
    def _parse_instruction_data(self, data):
        texts = [data] if isinstance(data, str) else list(data)
        if not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError(f"an instruction must be a non-empty string, got {data!r}")
        return InstructionItems([t.strip() for t in texts])

    def _get_subparsers(self):
        return {**super()._get_subparsers(), "instruction": self._parse_instruction_data}


class DeepSynthPageProcessor:
    """The checkpoint's processor_config.json (image processor + instruction settings) and tokenizers."""

    def __init__(self, model_dir: str, tokenizer, config):
        path = os.path.join(model_dir, "processor_config.json")
        saved = json.load(open(path)) if os.path.isfile(path) else {}
        ip = saved.get("image_processor", {})
        self.base_size, self.image_size = ip.get("base_size", 1024), ip.get("image_size", 1024)
        self.crop_mode = ip.get("crop_mode", False)
        self.min_tiles, self.max_tiles = ip.get("min_tiles", 2), ip.get("max_tiles", 9)
        self.image_mean, self.image_std = tuple(ip.get("image_mean", (0.5,) * 3)), tuple(ip.get("image_std", (0.5,) * 3))
        self.bf16_round = ip.get("bf16_round", False)
        self.patch_size, self.downsample_ratio = config.patch_size, config.downsample_ratio
        self.fusion = saved.get("instruction_fusion", config.instruction_fusion)
        if self.fusion not in FUSION_MODES:
            raise ValueError(f"instruction_fusion must be one of {FUSION_MODES}, got {self.fusion!r}")
        self.num_pooled = saved.get("num_pooled_instruction_tokens", config.num_pooled_instruction_tokens)
        self.max_instruction_length = saved.get("max_instruction_length", config.max_instruction_length)
        in_decoder = saved.get("instruction_in_decoder")
        self.instruction_in_decoder = self.fusion == "none" if in_decoder is None else in_decoder
        self.answer_separator = saved.get("answer_separator", "\n")
        self.tokenizer = tokenizer
        self.instruction_tokenizer = None
        if self.fusion != "none":
            self.instruction_tokenizer = AutoTokenizer.from_pretrained(os.path.join(model_dir, "instruction_tokenizer"))
        self.image_token_id, self.instruction_token_id = config.image_token_id, config.instruction_token_id

    # ---- pages ----------------------------------------------------------------------------------------------
    def page_views(self, page: Image.Image) -> tuple[Image.Image, list[Image.Image], tuple[int, int]]:
        """processing_deepsynth.page_views: (global view, local tiles row-major, (width_tiles, height_tiles))."""
        page = ImageOps.exif_transpose(page).convert("RGB")
        fill = tuple(int(x * 255) for x in self.image_mean)
        if not self.crop_mode:
            if self.image_size <= SQUASH_MAX:
                page = page.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
            return ImageOps.pad(page, (self.image_size, self.image_size), color=fill), [], (1, 1)
        tiles, grid = [], (1, 1)
        if page.width > self.image_size or page.height > self.image_size:
            # vLLM's port of upstream tiling, line for line ours (its resize default is bicubic too)
            tiles, grid = dynamic_preprocess(page, self.min_tiles, self.max_tiles, self.image_size)
        return ImageOps.pad(page, (self.base_size, self.base_size), color=fill), tiles, tuple(grid)

    def grid(self, width: int, height: int) -> tuple[int, int]:
        if self.crop_mode and (width > self.image_size or height > self.image_size):
            return tuple(count_tiles(width, height, self.min_tiles, self.max_tiles, self.image_size))
        return (1, 1)

    def num_image_tokens(self, width: int, height: int) -> int:
        w, h = self.grid(width, height)
        global_size = self.base_size if self.crop_mode else self.image_size
        return num_image_tokens(global_size, self.image_size, w, h, self.patch_size, self.downsample_ratio)

    def to_tensor(self, views: list[Image.Image]) -> torch.Tensor:
        """ToTensor + Normalize, as processing_deepsynth.to_tensor: (N, 3, S, S) float32."""
        x = torch.stack([torch.frombuffer(bytearray(v.tobytes()), dtype=torch.uint8).view(v.height, v.width, 3)
                         for v in views]).permute(0, 3, 1, 2).float().div_(255)
        mean = torch.tensor(self.image_mean).view(1, -1, 1, 1)
        std = torch.tensor(self.image_std).view(1, -1, 1, 1)
        x = x.sub_(mean).div_(std)
        return x.to(torch.bfloat16).float() if self.bf16_round else x

    # ---- instruction ----------------------------------------------------------------------------------------
    def instruction_ids(self, instruction: str) -> list[int]:
        enc = self.instruction_tokenizer(instruction, truncation=True, max_length=self.max_instruction_length)
        return list(enc["input_ids"])

    def num_instruction_rows(self, instruction: str) -> int:
        return len(self.instruction_ids(instruction)) if self.fusion == "tokens" else self.num_pooled

    def text_ids(self, text: str) -> list[int]:
        if not text:
            return []
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def prompt_ids(self, num_pages: int, instruction: str | None) -> list[int]:
        """DeepSynth's decoder prompt with ONE placeholder per page and per instruction (vLLM expands them)."""
        fused = instruction is not None and self.fusion != "none"
        tail = (instruction if instruction and self.instruction_in_decoder else "") + self.answer_separator
        text = self.text_ids("\n") + [self.instruction_token_id] + self.text_ids(tail) if fused else (
            self.text_ids("\n" + tail))
        return [self.tokenizer.bos_token_id] + [self.image_token_id] * num_pages + text

    def __call__(self, images=None, instructions=None, **kwargs) -> BatchFeature:
        data = {}
        if images:
            views, tiles, grids = [], [], []
            for page in images:
                view, page_tiles, grid = self.page_views(page)
                views.append(view)
                tiles += page_tiles
                grids.append(grid)
            if len({v.size for v in views}) != 1:
                raise ValueError("all pages of a request must have the same view size")
            data["pixel_values"] = self.to_tensor(views)
            data["images_spatial_crop"] = torch.tensor(grids, dtype=torch.long)
            s = self.image_size
            data["images_crop"] = self.to_tensor(tiles) if tiles else torch.zeros(0, 3, s, s)
        if instructions:
            if self.instruction_tokenizer is None:
                raise ValueError("this checkpoint has no instruction encoder (instruction_fusion='none')")
            ids = [self.instruction_ids(t) for t in instructions]
            width = max(map(len, ids))
            pad = self.instruction_tokenizer.pad_token_id or 0
            data["instruction_input_ids"] = torch.tensor([i + [pad] * (width - len(i)) for i in ids])
            data["instruction_attention_mask"] = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])
        return BatchFeature(data)


class DeepSynthProcessingInfo(DeepseekOCRProcessingInfo):
    @cached_property
    def _config(self):
        return deepsynth_config(self.ctx.model_config)

    def get_hf_config(self):
        return self._config

    @cached_property
    def page_processor(self) -> DeepSynthPageProcessor:
        return DeepSynthPageProcessor(self.ctx.model_config.model, self.get_tokenizer(), self.get_hf_config())

    def get_hf_processor(self, **kwargs):
        return self.page_processor

    def get_data_parser(self):
        return DeepSynthDataParser(expected_hidden_size=self._get_expected_hidden_size(),
                                   allow_missing_mm_embeddings=self.allow_missing_mm_embeddings)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        limits = {"image": None}
        if self.get_hf_config().instruction_fusion != "none":
            limits["instruction"] = 1
        return limits

    def get_num_image_tokens(self, *, image_width: int, image_height: int, cropping: bool = True) -> int:
        return self.page_processor.num_image_tokens(image_width, image_height)

    def get_image_size_with_most_features(self) -> ImageSize:
        p = self.page_processor
        if not p.crop_mode:
            return ImageSize(width=p.image_size, height=p.image_size)
        best = max(((w, h) for w in range(1, p.max_tiles + 1) for h in range(1, p.max_tiles + 1)
                    if p.min_tiles <= w * h <= p.max_tiles), key=lambda g: g[0] * g[1])
        return ImageSize(width=p.image_size * best[0], height=p.image_size * best[1])

    def get_mm_max_tokens_per_item(self, seq_len, mm_counts):
        size = self.get_image_size_with_most_features()
        counts = {"image": self.get_num_image_tokens(image_width=size.width, image_height=size.height)}
        if "instruction" in self.get_supported_mm_limits():
            p = self.page_processor
            counts["instruction"] = p.max_instruction_length if p.fusion == "tokens" else p.num_pooled
        return counts


class DeepSynthDummyInputsBuilder(DeepseekOCRDummyInputsBuilder):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return IMAGE_TOKEN * mm_counts.get("image", 0)

    def get_dummy_mm_data(self, seq_len, mm_counts, mm_options):
        data = dict(super().get_dummy_mm_data(seq_len, mm_counts, mm_options))
        if mm_counts.get("instruction", 0):
            # long enough to be truncated at max_instruction_length: the largest instruction
            data["instruction"] = ["word " * self.info.page_processor.max_instruction_length] * mm_counts["instruction"]
        return data


class DeepSynthMultiModalProcessor(DeepseekOCRMultiModalProcessor):
    def _get_hf_mm_text(self, mm_counts):
        return None  # our processor builds no text: the prompt is built in `apply`

    def _get_hf_mm_inputs(self, mm_items, hf_kwargs):
        return BaseMultiModalProcessor._get_hf_mm_inputs(self, mm_items, hf_kwargs)

    def _call_hf_processor(self, hf_data, hf_kwargs):
        return self.info.page_processor(**hf_data)

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):
        fields = {}
        if "pixel_values" in hf_inputs:
            fields.update(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        if "instruction_input_ids" in hf_inputs:
            fields.update(
                instruction_input_ids=MultiModalFieldConfig.batched("instruction"),
                instruction_attention_mask=MultiModalFieldConfig.batched("instruction"),
            )
        return fields

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        p = self.info.page_processor

        def image_rows(i: int) -> list[int]:
            size = mm_items.get_items("image", ImageProcessorItems).get_image_size(i)
            return [p.image_token_id] * p.num_image_tokens(size.width, size.height)

        def instruction_rows(i: int) -> list[int]:
            return [p.instruction_token_id] * p.num_instruction_rows(mm_items["instruction"].get(i))

        updates = [PromptReplacement(modality="image", target=[p.image_token_id], replacement=image_rows)]
        if "instruction" in mm_items:
            updates.append(PromptReplacement(
                modality="instruction", target=[p.instruction_token_id], replacement=instruction_rows))
        return updates

    def apply(self, inputs, timing_ctx):
        """Rebuild DeepSynth's prompt: the prompt's text (without bos and placeholders) is the instruction."""
        p = self.info.page_processor
        special = {p.tokenizer.bos_token_id, p.image_token_id, p.instruction_token_id}
        text = p.tokenizer.decode([t for t in inputs.prompt if t not in special]).strip()
        items = inputs.mm_data_items
        if "instruction" in items and text:
            raise ValueError("give the instruction as the prompt's text or as multi_modal_data['instruction'], "
                             "not both")
        instruction = items["instruction"].get(0) if "instruction" in items else (text or None)
        if instruction is not None and p.fusion != "none" and "instruction" not in items:
            items = type(items)({**items, "instruction": InstructionItems([instruction])})
        num_pages = len(items["image"]) if "image" in items else 0
        prompt = p.prompt_ids(num_pages, instruction)
        return super().apply(dataclasses.replace(inputs, prompt=prompt, mm_data_items=items), timing_ctx)
