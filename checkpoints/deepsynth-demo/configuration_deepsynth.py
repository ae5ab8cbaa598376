"""DeepSynth configuration: DeepSeek-OCR (SAM + CLIP + linear projector + DeepSeek-V2 MoE decoder) plus an
instruction encoder whose hidden states are fused into the decoder's input embeddings.

The vision and decoder sub-configs are transformers' own `unlimited_ocr` configs (the DeepSeek-OCR design);
their defaults are the released DeepSeek-OCR dimensions. This file also holds the one function that says how
many vision tokens a page takes (`num_image_tokens`), used by the processor to count and by the model to lay out.
"""

import math

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.unlimited_ocr.configuration_unlimited_ocr import (
    UnlimitedOcrTextConfig,
    UnlimitedOcrVisionConfig,
)

FUSION_MODES = ("tokens", "pooled", "none")
PROJECTOR_TYPES = ("linear", "mlp")


def vision_grid_size(view_size: int, patch_size: int = 16, downsample_ratio: int = 4) -> int:
    """Side of the feature grid one square view of `view_size` pixels becomes (SAM patches, then two stride-2
    convs). Upstream counts it as ceil((size // patch) / 4), which equals what the padded convs produce."""
    return math.ceil((view_size // patch_size) / downsample_ratio)


def num_image_tokens(
    base_size: int,
    image_size: int,
    width_tiles: int = 1,
    height_tiles: int = 1,
    patch_size: int = 16,
    downsample_ratio: int = 4,
) -> int:
    """Vision tokens of one page: [local grid rows + newline each] + [global grid rows + newline each] + separator.

    `width_tiles` x `height_tiles` is the local tile grid (1 x 1 means no local tiles, as upstream).
    tiny 512 -> 73, small 640 -> 111, base 1024 -> 273, large 1280 -> 421.
    """
    g = vision_grid_size(base_size, patch_size, downsample_ratio)
    count = g * (g + 1)
    if width_tiles * height_tiles > 1:
        t = vision_grid_size(image_size, patch_size, downsample_ratio)
        count += (height_tiles * t) * (width_tiles * t + 1)
    return count + 1


@strict
class DeepSynthConfig(PreTrainedConfig):
    r"""
    vision_config: SAM (`sam_config`) + CLIP (`encoder_config`) settings, an `UnlimitedOcrVisionConfig`.
    text_config: the DeepSeek-V2 MoE decoder, an `UnlimitedOcrTextConfig` (full attention on every layer).
    instruction_encoder_config: any transformers config (bert, qwen2, qwen3, ...) or None for no encoder.
    instruction_fusion: "tokens" splices one projected encoder state per instruction token at the
        `instruction_token_id` placeholders; "pooled" masks-means the encoder states and projects them into
        `num_pooled_instruction_tokens` soft tokens; "none" disables fusion (instruction only as decoder text).
    instruction_projector_type: "linear" or "mlp" (Linear-GELU-Linear), encoder width -> decoder width.
    """

    model_type = "deepsynth"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=UnlimitedOcrVisionConfig),
        "text_config": SubConfigSpec(config_class=UnlimitedOcrTextConfig),
        "instruction_encoder_config": SubConfigSpec(config_class=AutoConfig, model_type="bert", optional=True),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    instruction_encoder_config: dict | PreTrainedConfig | None = None
    instruction_fusion: str = "tokens"
    num_pooled_instruction_tokens: int = 4
    instruction_projector_type: str = "mlp"
    max_instruction_length: int = 128
    image_token_id: int = 128815
    instruction_token_id: int = 129279
    bos_token_id: int | None = 0
    eos_token_id: int | None = 1
    pad_token_id: int | None = 2
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if isinstance(self.text_config, dict) or self.text_config is None:
            text = dict(self.text_config or {})
            # The original DeepSeek-OCR attends to the whole sequence; unlimited_ocr's default is a sliding window.
            text.setdefault("layer_types", ["full_attention"] * text.get("num_hidden_layers", 12))
            self.text_config = text
        if isinstance(self.vision_config, dict) or self.vision_config is None:
            vision = dict(self.vision_config or {})
            sam = dict(vision.get("sam_config") or {})
            # unlimited_ocr's SAM initialises its convs with std 1e-10 (fine under pretrained weights): a model
            # trained from scratch would start with every page giving the same features.
            sam.setdefault("initializer_range", 0.02)
            vision["sam_config"] = sam
            self.vision_config = vision
        if self.instruction_fusion == "none":
            self.instruction_encoder_config = None
        super().__post_init__(**kwargs)
        if self.instruction_encoder_config is None and self.instruction_fusion != "none":
            self.instruction_fusion = "none"

    def validate_architecture(self):
        if self.instruction_fusion not in FUSION_MODES:
            raise ValueError(f"instruction_fusion must be one of {FUSION_MODES}, got {self.instruction_fusion!r}")
        if self.instruction_projector_type not in PROJECTOR_TYPES:
            raise ValueError(
                f"instruction_projector_type must be one of {PROJECTOR_TYPES}, got {self.instruction_projector_type!r}"
            )
        if self.num_pooled_instruction_tokens < 1:
            raise ValueError(f"num_pooled_instruction_tokens must be >= 1, got {self.num_pooled_instruction_tokens}")
        text, sam, clip = self.text_config, self.vision_config.sam_config, self.vision_config.encoder_config
        if text.hidden_size % text.num_attention_heads:
            raise ValueError(
                f"text_config.hidden_size ({text.hidden_size}) is not divisible by num_attention_heads "
                f"({text.num_attention_heads})"
            )
        if any(t != "full_attention" for t in text.layer_types):
            raise ValueError(f"DeepSeek-OCR uses full attention on every layer, got layer_types={text.layer_types}")
        if len(sam.downsample_channels) != 2:
            raise ValueError(
                f"sam_config.downsample_channels must list the 2 stride-2 convs after SAM, got {sam.downsample_channels}"
            )
        if clip.hidden_size != sam.downsample_channels[-1]:
            raise ValueError(
                f"CLIP takes SAM features as patch embeddings: vision_config.encoder_config.hidden_size "
                f"({clip.hidden_size}) must equal sam_config.downsample_channels[-1] ({sam.downsample_channels[-1]})"
            )
        for name in ("image_token_id", "instruction_token_id"):
            if not 0 <= getattr(self, name) < text.vocab_size:
                raise ValueError(f"{name}={getattr(self, name)} is outside the decoder vocab (0..{text.vocab_size - 1})")
        if self.image_token_id == self.instruction_token_id:
            raise ValueError("image_token_id and instruction_token_id must differ")
        enc = self.instruction_encoder_config
        if enc is not None and getattr(enc, "hidden_size", None) is None:
            raise ValueError(
                f"instruction_encoder_config ({enc.model_type}) has no hidden_size: the projector needs the encoder width"
            )

    # Derived geometry, read by the processor and the model.
    @property
    def patch_size(self) -> int:
        return self.vision_config.sam_config.patch_size

    @property
    def downsample_ratio(self) -> int:
        return 2 ** len(self.vision_config.sam_config.downsample_channels)

    @property
    def projector_input_dim(self) -> int:
        return self.vision_config.sam_config.downsample_channels[-1] + self.vision_config.encoder_config.hidden_size

    def num_image_tokens(self, base_size: int, image_size: int, width_tiles: int = 1, height_tiles: int = 1) -> int:
        return num_image_tokens(
            base_size, image_size, width_tiles, height_tiles, self.patch_size, self.downsample_ratio
        )


__all__ = ["DeepSynthConfig", "num_image_tokens", "vision_grid_size"]

DeepSynthConfig.register_for_auto_class()
