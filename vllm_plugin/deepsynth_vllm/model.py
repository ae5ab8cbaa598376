"""DeepSynthForConditionalGeneration on vLLM: vLLM's DeepSeek-OCR model with its vision tower built from our config
(vLLM 0.32 hard-codes SAM ViT-B and CLIP-L) and the instruction encoder as a second modality, whose projected rows
vLLM's runner splices at the `<instruction>` placeholders like image rows at `<image>`."""

import os
from collections.abc import Iterable
from functools import partial

import torch
from torch import nn
from transformers import AutoModel, CLIPVisionConfig
from vllm.config import VllmConfig
from vllm.model_executor.layers.conv import Conv2dLayer
from vllm.model_executor.models.deepencoder import DeepCLIPVisionTransformer, ImageEncoderViT
from vllm.model_executor.models.deepseek_ocr import DeepseekOCRForCausalLM
from vllm.model_executor.models.deepseek_vl2 import MlpProjector
from vllm.model_executor.models.utils import init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY

from .config import DeepSynthVllmConfig, deepsynth_config
from .processing import (
    INSTRUCTION_TOKEN,
    DeepSynthDummyInputsBuilder,
    DeepSynthMultiModalProcessor,
    DeepSynthProcessingInfo,
)
from .weights import FAULT_ENV, to_original_layout


UNUSED_CLIP_PATCH_CONV = "vision_model.embeddings.patch_embedding.weight"


def build_sam(sam: dict) -> ImageEncoderViT:
    """vLLM's SAM encoder at our config's sizes; its two stride-2 convs after the neck are rebuilt at our
    `downsample_channels` (vLLM fixes them at 256 -> 512 -> 1024)."""
    encoder = ImageEncoderViT(
        img_size=sam["image_size"],
        patch_size=sam["patch_size"],
        embed_dim=sam["hidden_size"],
        depth=sam["num_hidden_layers"],
        num_heads=sam["num_attention_heads"],
        mlp_ratio=sam["mlp_dim"] / sam["hidden_size"],
        out_chans=sam["output_channels"],
        qkv_bias=sam["qkv_bias"],
        norm_layer=partial(nn.LayerNorm, eps=sam["layer_norm_eps"]),
        use_abs_pos=sam["use_abs_pos"],
        use_rel_pos=sam["use_rel_pos"],
        window_size=sam["window_size"],
        global_attn_indexes=tuple(sam["global_attn_indexes"]),
        last_conv_output=sam["downsample_channels"][-1],
    )
    mid, last = sam["downsample_channels"]
    conv = partial(Conv2dLayer, kernel_size=3, stride=2, padding=1, bias=False)
    encoder.net_2, encoder.net_3 = conv(sam["output_channels"], mid), conv(mid, last)
    return encoder


def build_clip(clip: dict, quant_config, prefix: str) -> DeepCLIPVisionTransformer:
    config = CLIPVisionConfig(**{k: clip[k] for k in (
        "hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "image_size", "patch_size",
        "layer_norm_eps", "hidden_act")})
    model = DeepCLIPVisionTransformer(config=config, quant_config=quant_config, prefix=prefix)
    # CLIP reads SAM's features as its patch embeddings: its own patch conv is never run (nor stored by DeepSynth).
    model.embeddings.patch_embedding = nn.Identity()
    return model


class InstructionProjector(nn.Module):
    """modeling_deepsynth.DeepSynthInstructionProjector (same parameter names), encoder width -> decoder width."""

    def __init__(self, config: DeepSynthVllmConfig):
        super().__init__()
        in_dim, out_dim = config.instruction_encoder_config.hidden_size, config.text_config.hidden_size
        k = config.num_pooled_instruction_tokens if config.instruction_fusion == "pooled" else 1
        if config.instruction_projector_type == "mlp":
            self.layers = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim * k))
        else:
            self.layers = nn.Sequential(nn.Linear(in_dim, out_dim * k))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.layers(hidden_states)


@MULTIMODAL_REGISTRY.register_processor(
    DeepSynthMultiModalProcessor, info=DeepSynthProcessingInfo, dummy_inputs=DeepSynthDummyInputsBuilder
)
class DeepSynthForConditionalGeneration(DeepseekOCRForCausalLM):
    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality == "instruction":
            return INSTRUCTION_TOKEN
        return super().get_placeholder_str(modality, i)

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        nn.Module.__init__(self)  # not DeepseekOCRForCausalLM.__init__: it builds SAM-B / CLIP-L whatever the config
        config = deepsynth_config(vllm_config.model_config)
        self.config = config
        self.model_config = vllm_config.model_config
        self.multimodal_config = vllm_config.model_config.multimodal_config
        self.projector_config, self.text_config = config.projector_config, config.text_config
        self.image_token_id = config.image_token_id
        self.instruction_token_id = config.instruction_token_id
        self.tile_tag, self.global_view_pos = config.tile_tag, config.global_view_pos
        vision = config.vision_config
        with self._mark_tower_model(vllm_config, "image"):
            self.sam_model = build_sam(vision["sam_config"])
            self.vision_model = build_clip(
                vision["encoder_config"], vllm_config.quant_config, maybe_prefix(prefix, "vision_model"))
            self.projector = MlpProjector(self.projector_config)
            n_embed = self.projector_config.n_embed
            self.image_newline = nn.Parameter(torch.empty(n_embed))
            self.view_seperator = nn.Parameter(torch.empty(n_embed))  # sic: vLLM's (and the original's) name
        self.instruction_encoder = self.instruction_projector = None
        if config.instruction_fusion != "none":
            with self._mark_tower_model(vllm_config, "instruction"):
                # The instruction encoder is any transformers encoder (BERT, Qwen2, Qwen3, ...), run as
                # transformers runs it: it reads each instruction once at prefill, no KV cache to page.
                self.instruction_encoder = AutoModel.from_config(config.instruction_encoder_config)
                self.instruction_projector = InstructionProjector(config)
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config, hf_config=self.text_config, prefix=maybe_prefix(prefix, "language_model"))
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    # ---- instruction ----------------------------------------------------------------------------------------
    def _instruction_rows(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """modeling_deepsynth.get_instruction_features for one instruction: (k, D)."""
        ids, mask = ids.reshape(1, -1).long(), mask.reshape(1, -1).long()
        states = self.instruction_encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (1, Ti, De)
        if self.config.instruction_fusion == "pooled":
            m = mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * m).sum(1) / m.sum(1).clamp(min=1)  # (1, De)
            rows = self.instruction_projector(pooled).reshape(-1, self.text_config.hidden_size)
        else:
            rows = self.instruction_projector(states)[mask.bool()]  # (k, D)
        if os.environ.get(FAULT_ENV) == "splice_order":  # tests only (weights.FAULT_ENV)
            rows = rows.flip(0)
        return rows

    def embed_multimodal(self, **kwargs):
        if "instruction_input_ids" in kwargs:  # vLLM's runner calls this once per modality group
            ids, masks = kwargs["instruction_input_ids"], kwargs["instruction_attention_mask"]
            return [self._instruction_rows(i, m) for i, m in zip(ids, masks)]
        return super().embed_multimodal(**kwargs)

    def get_encoder_cudagraph_config(self):
        # The parent's encoder CUDA-graph paths (opt-in: compilation_config.cudagraph_mm_encoder) hard-code gundam
        # mode's 1024/640 views and know no instruction modality.
        raise ValueError("DeepSynth on vLLM does not support cudagraph_mm_encoder; leave it off (the default)")

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        # original folders store CLIP's patch conv, which never runs (build_clip): not loaded
        used = ((n, w) for n, w in to_original_layout(weights) if not n.endswith(UNUSED_CLIP_PATCH_CONV))
        return super().load_weights(used)
