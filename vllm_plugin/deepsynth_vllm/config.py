"""DeepSynth's config.json (model_type "deepsynth") read without our remote code, for vLLM.

vLLM runs transformers < 5.20, which has neither `unlimited_ocr` nor what configuration_deepsynth.py imports, so
this class reads the same JSON: the decoder sub-config becomes the DeepSeek-V2 config vLLM's decoder takes (as
vLLM's DeepSeek-OCR does with `language_config`), the vision sub-config is kept as plain dicts (the plugin builds
SAM / CLIP from it), the instruction encoder's becomes a transformers config of its own model type.
"""

from transformers import AutoConfig, PretrainedConfig
from vllm.transformers_utils.configs.deepseek_vl2 import DeepseekVLV2TextConfig, MlpProjectorConfig

# unlimited_ocr's SAM / CLIP defaults (the released DeepSeek-OCR sizes), used for keys a config.json leaves out.
SAM_DEFAULTS = {
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "mlp_dim": 3072, "image_size": 1024,
    "patch_size": 16, "window_size": 14, "global_attn_indexes": [2, 5, 8, 11], "output_channels": 256,
    "downsample_channels": [512, 1024], "layer_norm_eps": 1e-6, "qkv_bias": True, "use_abs_pos": True,
    "use_rel_pos": True,
}
CLIP_DEFAULTS = {
    "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
    "image_size": 224, "patch_size": 14, "layer_norm_eps": 1e-5, "hidden_act": "quick_gelu",
}


def deepseek_v2_text_config(text: dict) -> DeepseekVLV2TextConfig:
    """Our `unlimited_ocr_text` decoder as vLLM's DeepSeek-V2 config (plain multi-head attention, as
    DeepSeek-OCR's `language_config`: no MLA, qk/v head dims 0)."""
    layers = text.get("num_hidden_layers", 12)
    kinds = text.get("mlp_layer_types") or ["dense"] + ["sparse"] * (layers - 1)
    first_sparse = kinds.index("sparse") if "sparse" in kinds else layers
    if any(k != "sparse" for k in kinds[first_sparse:]):
        raise ValueError(
            f"vLLM's DeepSeek-V2 decoder takes dense layers first, then MoE on every layer; got mlp_layer_types={kinds}"
        )
    hidden, heads = text.get("hidden_size", 1280), text.get("num_attention_heads", 10)
    if text.get("head_dim") not in (None, hidden // heads):
        raise ValueError(f"head_dim {text['head_dim']} != hidden_size / num_attention_heads: vLLM's decoder derives it")
    if any(t != "full_attention" for t in text.get("layer_types") or []):
        raise ValueError("DeepSeek-OCR's decoder attends to the whole sequence: layer_types must be full_attention")
    rope = text.get("rope_parameters") or {"rope_type": "default", "rope_theta": 10000.0}
    keep = (
        "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "n_routed_experts", "n_shared_experts", "num_experts_per_tok",
        "routed_scaling_factor", "topk_method", "n_group", "topk_group", "max_position_embeddings", "rms_norm_eps",
        "hidden_act", "bos_token_id", "eos_token_id", "pad_token_id", "attention_bias",
    )
    return DeepseekVLV2TextConfig(
        **{k: text[k] for k in keep if text.get(k) is not None},
        first_k_dense_replace=first_sparse,
        moe_layer_freq=1,
        norm_topk_prob=False,  # unlimited_ocr scales the top-k softmax weights without renormalising
        kv_lora_rank=None, q_lora_rank=None, qk_nope_head_dim=0, qk_rope_head_dim=0, v_head_dim=0, use_mla=False,
        rope_parameters=dict(rope),
        architectures=["DeepseekV2ForCausalLM"],
        tie_word_embeddings=False,
    )


class DeepSynthVllmConfig(PretrainedConfig):
    model_type = "deepsynth"

    def __init__(
        self,
        vision_config: dict | None = None,
        text_config: dict | PretrainedConfig | None = None,
        instruction_encoder_config: dict | PretrainedConfig | None = None,
        instruction_fusion: str = "tokens",
        num_pooled_instruction_tokens: int = 4,
        instruction_projector_type: str = "mlp",
        max_instruction_length: int = 128,
        image_token_id: int = 128815,
        instruction_token_id: int = 129279,
        **kwargs,
    ):
        vision = dict(vision_config or {})
        self.vision_config = {
            "sam_config": {**SAM_DEFAULTS, **_plain(vision.get("sam_config"))},
            "encoder_config": {**CLIP_DEFAULTS, **_plain(vision.get("encoder_config"))},
        }
        if isinstance(text_config, PretrainedConfig):
            self.text_config = text_config
        else:
            self.text_config = deepseek_v2_text_config(dict(text_config or {}))
        enc = instruction_encoder_config
        if isinstance(enc, dict):
            enc = dict(enc)
            enc = AutoConfig.for_model(enc.pop("model_type"), **enc)
        self.instruction_encoder_config = enc if instruction_fusion != "none" else None
        self.instruction_fusion = instruction_fusion if self.instruction_encoder_config is not None else "none"
        self.num_pooled_instruction_tokens = num_pooled_instruction_tokens
        self.instruction_projector_type = instruction_projector_type
        self.max_instruction_length = max_instruction_length
        self.image_token_id = image_token_id
        self.instruction_token_id = instruction_token_id
        sam, clip = self.vision_config["sam_config"], self.vision_config["encoder_config"]
        # vLLM's DeepSeek-OCR reads these two sub-configs
        self.projector_config = MlpProjectorConfig(
            projector_type="linear",
            input_dim=sam["downsample_channels"][-1] + clip["hidden_size"],
            n_embed=self.text_config.hidden_size,
        )
        self.tile_tag, self.global_view_pos = "2D", "head"
        self.vocab_size = self.text_config.vocab_size
        kwargs.pop("sub_configs", None)
        super().__init__(**kwargs)

    @property
    def patch_size(self) -> int:
        return self.vision_config["sam_config"]["patch_size"]

    @property
    def downsample_ratio(self) -> int:
        return 2 ** len(self.vision_config["sam_config"]["downsample_channels"])

    def get_text_config(self, *args, **kwargs):
        return self.text_config


def _plain(cfg) -> dict:
    """A sub-config dict without transformers' bookkeeping keys."""
    if cfg is None:
        return {}
    cfg = cfg if isinstance(cfg, dict) else cfg.to_dict()
    return {k: v for k, v in cfg.items() if k in SAM_DEFAULTS or k in CLIP_DEFAULTS}


def from_original(config: PretrainedConfig, image_token_id: int) -> DeepSynthVllmConfig:
    """An original DeepSeek-OCR folder's config (vLLM's DeepseekVLV2Config, model_type deepseek_vl_v2) as ours,
    document-only (no instruction encoder): SAM / CLIP sizes from its `vision_config.width` entries (as
    modeling_deepsynth._vision_config_from_original; every key optional, the released sizes by default), its
    decoder config unchanged. Used when such a folder is served with the architecture overridden to ours."""
    if isinstance(config, DeepSynthVllmConfig):
        return config
    vision = getattr(config, "vision_config", None)
    width = getattr(vision, "width", None)
    width = width if isinstance(width, dict) else {}
    sam = next((v for k, v in width.items() if k.startswith("sam")), {})
    clip = next((v for k, v in width.items() if k.startswith("clip")), {})
    sam_config = {"hidden_size": sam.get("width"), "num_hidden_layers": sam.get("layers"),
                  "num_attention_heads": sam.get("heads"), "global_attn_indexes": sam.get("global_attn_indexes"),
                  "downsample_channels": sam.get("downsample_channels"), "window_size": sam.get("window_size"),
                  "output_channels": sam.get("neck_channels"), "image_size": sam.get("image_size"),
                  "mlp_dim": sam.get("mlp_dim") or (4 * sam["width"] if sam.get("width") else None)}
    clip_mlp = clip.get("intermediate_size") or (4 * clip["width"] if clip.get("width") else None)
    clip_config = {"hidden_size": clip.get("width"), "num_hidden_layers": clip.get("layers"),
                   "num_attention_heads": clip.get("heads"), "image_size": clip.get("image_size"),
                   "patch_size": clip.get("patch_size"), "intermediate_size": clip_mlp}
    return DeepSynthVllmConfig(
        vision_config={"sam_config": {k: v for k, v in sam_config.items() if v is not None},
                       "encoder_config": {k: v for k, v in clip_config.items() if v is not None}},
        text_config=config.text_config, instruction_encoder_config=None, instruction_fusion="none",
        image_token_id=image_token_id, instruction_token_id=image_token_id,  # no instruction rows without an encoder
    )


def deepsynth_config(model_config) -> DeepSynthVllmConfig:
    """The served folder's config as ours: a DeepSynth folder's as it is, an original DeepSeek-OCR folder's (served
    with `hf_overrides={"architectures": ["DeepSynthForConditionalGeneration"]}`) converted, its `<image>` id read
    from its tokenizer as vLLM's DeepSeek-OCR does."""
    config = model_config.hf_config
    if isinstance(config, DeepSynthVllmConfig):
        return config
    from vllm.tokenizers import cached_tokenizer_from_config

    return from_original(config, cached_tokenizer_from_config(model_config).vocab["<image>"])
