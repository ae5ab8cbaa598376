"""Tiny DeepSynth configurations (hidden 32-64, 2 layers) for tests and smoke runs: no download needed."""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # the remote-code files live at the repo root
    sys.path.insert(0, str(REPO_ROOT))

from configuration_deepsynth import DeepSynthConfig  # noqa: E402


def tiny_vision_config() -> dict:
    """SAM dim 32 (2 blocks, one global) -> 64 channels; CLIP 64 wide, 2 layers; 128 px views -> 2x2 grid."""
    return {
        "sam_config": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "mlp_dim": 64,
            "image_size": 128,
            "patch_size": 16,
            "window_size": 4,
            "global_attn_indexes": [1],
            "output_channels": 16,
            "downsample_channels": [32, 64],
        },
        "encoder_config": {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 128,
            "image_size": 28,
            "patch_size": 14,
        },
    }


def tiny_text_config(vocab_size: int = 512) -> dict:
    """DeepSeek-V2 MoE decoder, hidden 64: layer 0 dense, layer 1 MoE (4 routed experts, top-2, 1 shared)."""
    return {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "moe_intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "n_routed_experts": 4,
        "n_shared_experts": 1,
        "num_experts_per_tok": 2,
        "mlp_layer_types": ["dense", "sparse"],
        "max_position_embeddings": 2048,
    }


def tiny_bert_config(vocab_size: int = 30522) -> dict:
    return {
        "model_type": "bert",
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
    }


def tiny_config(
    instruction_fusion: str = "tokens",
    vocab_size: int = 512,
    image_token_id: int = 510,
    instruction_token_id: int = 511,
    instruction_encoder_config: dict | None = None,
    **overrides,
) -> DeepSynthConfig:
    """A tiny DeepSynthConfig; `instruction_fusion="none"` builds no instruction encoder."""
    encoder = None
    if instruction_fusion != "none":
        encoder = instruction_encoder_config or tiny_bert_config()
    return DeepSynthConfig(
        vision_config=tiny_vision_config(),
        text_config=tiny_text_config(vocab_size),
        instruction_encoder_config=encoder,
        instruction_fusion=instruction_fusion,
        image_token_id=image_token_id,
        instruction_token_id=instruction_token_id,
        **overrides,
    )
