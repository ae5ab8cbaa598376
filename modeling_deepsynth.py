"""DeepSynth: DeepSeek-OCR with a live instruction fusion.

Data path: pages -> SAM ViT-B -> CLIP-L (SAM features as patch embeddings) -> linear projector -> laid out like
DeepSeek-OCR (local tile grid, global grid, a newline after every row, one view separator) and spliced at `<image>`
positions; instruction -> instruction encoder (BERT / Qwen / ...) -> projector -> spliced at `<instruction>`
positions; -> DeepSeek-V2 MoE decoder -> LM head.

The vision tower and the decoder are transformers' own `unlimited_ocr` modules (same architecture and numbers as
the original DeepSeek-OCR). Written here, because no library has them: the per-page layout with pages of different
sizes in one batch, the instruction fusion, and loading of the original checkpoint layout.
"""

import json
import math
import os
import shutil
import tempfile
import types
from dataclasses import dataclass

import torch
from torch import nn
from safetensors import SafetensorError, safe_open
from transformers import AutoModel, GenerationMixin, LogitsProcessorList, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.unlimited_ocr.modeling_unlimited_ocr import UnlimitedOcrTextModel, UnlimitedOcrVisionModel

try:
    from .configuration_deepsynth import DeepSynthConfig
    from .generation_deepsynth import repetition_guard as build_repetition_guard
    from .infer_deepsynth import infer as deepseek_ocr_infer
except ImportError:  # imported from the repo root rather than as remote code
    from configuration_deepsynth import DeepSynthConfig
    from generation_deepsynth import repetition_guard as build_repetition_guard
    from infer_deepsynth import infer as deepseek_ocr_infer

# Model inputs that belong to the prompt only: generate() passes them to the first (prefill) forward, not to
# the cached decode steps (transformers already drops `pixel_values`).
PAGE_INPUTS = ("pixel_values", "pixel_values_local", "images_spatial_crop", "image_features")
PREFILL_ONLY_INPUTS = PAGE_INPUTS + ("instruction_input_ids", "instruction_attention_mask")

# Renames from the original DeepSeek-OCR checkpoint to this model's keys. The nested SAM / CLIP / MoE renames
# (fused CLIP qkv split, per-expert weights packed) are applied by transformers' own unlimited_ocr conversion
# mapping, scoped to those sub-modules.
ORIGINAL_KEY_MAPPING = {
    r"^model\.sam_model\.": "model.vision_tower.sam_encoder.",
    r"^model\.vision_model\.": "model.vision_tower.vision_encoder.",
    r"^model\.projector\.layers\.": "model.multi_modal_projector.",
    r"^model\.view_seperator": "model.view_separator",
    r"^model\.image_newline": "model.image_newline",
    r"^model\.embed_tokens\.": "model.language_model.embed_tokens.",
    r"^model\.layers\.": "model.language_model.layers.",
    r"^model\.norm\.": "model.language_model.norm.",
}


def check_placeholder_rows(n_tokens: int, n_rows: int, token_id: int, name: str):
    """Features are spliced one row per placeholder token: the counts must agree."""
    if n_tokens != n_rows:
        raise ValueError(
            f"{name}: the input has {n_tokens} placeholder tokens (id {token_id}) but {n_rows} feature rows. "
            "Build inputs with the DeepSynth processor of this checkpoint (same mode / fusion settings)."
        )


def _contiguous_decomposed_rel_pos(self, query, rel_pos_h, rel_pos_w, q_size, k_size):
    """unlimited_ocr SAM's `get_decomposed_rel_pos`, with the two einsum outputs made contiguous before the
    broadcast add: the (B*heads, h, w, h, w) bias then comes out in its final layout and the attention's reshape is
    a view, not a second copy of an N^2 tensor. Bit-identical; base page 1.27x faster, half the peak memory
    (BENCHMARKS.md, profiling note 3)."""
    rel_h_pos = self.get_rel_pos(q_size[0], k_size[0], rel_pos_h)
    rel_w_pos = self.get_rel_pos(q_size[1], k_size[1], rel_pos_w)
    batch_size, _, dim = query.shape
    q = query.reshape(batch_size, q_size[0], q_size[1], dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", q, rel_h_pos).contiguous()
    rel_w = torch.einsum("bhwc,wkc->bhwk", q, rel_w_pos).contiguous()
    return rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]


# SAM's global attention materialises a (views*heads, N, N) fp32 bias: vision calls are chunked to keep it under
# this many bytes (one base page per call at SAM-B size). On CPU a bigger vision batch is not faster anyway.
VISION_BIAS_BUDGET = 256 << 20


@dataclass
class DeepSynthModelOutputWithPast(BaseModelOutputWithPast):
    """`image_features`: vision rows spliced at `<image>` positions, (N_image_tokens, D) (None on decode steps).
    `instruction_features`: projected instruction rows spliced at `<instruction>` positions, (N_instr_tokens, D)."""

    image_features: torch.Tensor | None = None
    instruction_features: torch.Tensor | None = None


@dataclass
class DeepSynthCausalLMOutputWithPast(CausalLMOutputWithPast):
    image_features: torch.Tensor | None = None
    instruction_features: torch.Tensor | None = None


class DeepSynthInstructionProjector(nn.Module):
    """Instruction-encoder width -> decoder width. In "pooled" mode one pooled vector becomes `num_tokens` soft
    tokens, so the last layer is `num_tokens` times wider."""

    def __init__(self, config: DeepSynthConfig):
        super().__init__()
        in_dim = config.instruction_encoder_config.hidden_size
        out_dim = config.text_config.hidden_size
        self.num_tokens = config.num_pooled_instruction_tokens if config.instruction_fusion == "pooled" else 1
        if config.instruction_projector_type == "mlp":
            self.layers = nn.Sequential(
                nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim * self.num_tokens)
            )
        else:
            self.layers = nn.Sequential(nn.Linear(in_dim, out_dim * self.num_tokens))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.layers(hidden_states)


class DeepSynthPreTrainedModel(PreTrainedModel):
    config: DeepSynthConfig
    config_class = DeepSynthConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = False  # SAM's relative-position bias needs an additive mask
    _supports_flex_attn = False
    _supports_attention_backend = True
    _no_split_modules = ["UnlimitedOcrEncoderLayer", "UnlimitedOcrSamVisionLayer", "UnlimitedOcrTextDecoderLayer"]
    _keep_in_fp32_modules_strict = ["gate.weight"]  # MoE router, as in unlimited_ocr

    @classmethod
    def _can_set_experts_implementation(cls):
        # transformers looks for `@use_experts_implementation` in this file's source; the decoder's experts
        # (unlimited_ocr) do support grouped_mm / eager.
        return True

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, DeepSynthModel):
            std = 1 / math.sqrt(self.config.text_config.hidden_size)  # as the original DeepSeek-OCR
            nn.init.normal_(module.image_newline, mean=0.0, std=std)
            nn.init.normal_(module.view_separator, mean=0.0, std=std)

    # DeepSynth checkpoints store each module's own parameter names. transformers would otherwise write the nested
    # unlimited_ocr modules back in the original layout (its renames reversed), which Trainer's resume reads with a
    # plain load_state_dict that then misses them. The original layout is only read, by `from_deepseek_ocr`.
    @property
    def _weight_conversions(self):
        return []

    @_weight_conversions.setter
    def _weight_conversions(self, value):
        pass

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, allow_missing=(), **kwargs):
        r"""
        allow_missing: names (or name prefixes) of weights that may be absent from the checkpoint and start from
            their initialisation, e.g. `("model.instruction_projector.",)` for a fresh projector. Any other missing
            weight is an error that names it: a DeepSynth checkpoint holds every weight, so a missing one means a
            truncated or mismatched checkpoint, never something to fill with random numbers silently.
        """
        allow_missing = (allow_missing,) if isinstance(allow_missing, str) else tuple(allow_missing)
        _check_safetensors_files(pretrained_model_name_or_path, kwargs.get("subfolder") or "")
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        missing = sorted(k for k in info["missing_keys"] if not k.startswith(allow_missing))
        if missing:
            raise ValueError(
                f"{pretrained_model_name_or_path} lacks {len(missing)} weight tensors of {cls.__name__}: "
                f"{missing[:8]}{' ...' if len(missing) > 8 else ''}. Pass allow_missing=(names or prefixes) to start "
                "those from their initialisation on purpose."
            )
        return (model, info) if want_info else model

    def save_pretrained(self, save_directory, *args, **kwargs):
        # One checkpoint answers every Auto class a user may reach for, AutoModel included (as DeepSeek-OCR's
        # checkpoint: `AutoModel.from_pretrained(...).infer(...)`); the base model is `model.model`.
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        auto_map.update(
            {
                "AutoConfig": "configuration_deepsynth.DeepSynthConfig",
                "AutoModel": "modeling_deepsynth.DeepSynthForConditionalGeneration",
                "AutoModelForCausalLM": "modeling_deepsynth.DeepSynthForConditionalGeneration",
                "AutoModelForImageTextToText": "modeling_deepsynth.DeepSynthForConditionalGeneration",
            }
        )
        self.config.auto_map = auto_map
        result = super().save_pretrained(save_directory, *args, **kwargs)
        # A checkpoint that names our pipeline (config.custom_pipelines) must carry its file, Trainer checkpoints too.
        pipeline_file = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pipeline_deepsynth.py")
        if getattr(self.config, "custom_pipelines", None) and os.path.isfile(pipeline_file):
            shutil.copy(pipeline_file, os.path.join(save_directory, "pipeline_deepsynth.py"))
            # ...and the module it imports for schema-constrained generation (the remote-code loader needs it).
            structured_file = os.path.join(os.path.dirname(pipeline_file), "structured_deepsynth.py")
            if os.path.isfile(structured_file):
                shutil.copy(structured_file, os.path.join(save_directory, "structured_deepsynth.py"))
        return result


def _weight_files(folder: str) -> list[str]:
    """The safetensors files from_pretrained reads in a local folder: those of model.safetensors.index.json, else
    model.safetensors ([] if neither is there)."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            return sorted(set(json.load(f)["weight_map"].values()))
    return ["model.safetensors"] if os.path.isfile(os.path.join(folder, "model.safetensors")) else []


def _check_safetensors_files(name_or_path, subfolder: str = "") -> None:
    """A local checkpoint's weight files must be readable: a truncated or corrupt file fails here, naming the file
    (safetensors itself reports only what is wrong, not where)."""
    folder = os.path.join(str(name_or_path), subfolder)
    if not os.path.isdir(folder):
        return
    for name in _weight_files(folder):
        path = os.path.join(folder, name)
        try:
            with safe_open(path, framework="pt"):  # reads the header and checks it covers the file exactly
                pass
        except (SafetensorError, OSError) as e:
            raise ValueError(f"cannot read weight file {path} (truncated or corrupt?): {e}") from None


class DeepSynthModel(DeepSynthPreTrainedModel):
    def __init__(self, config: DeepSynthConfig):
        super().__init__(config)
        hidden = config.text_config.hidden_size
        self.vision_tower = UnlimitedOcrVisionModel(config.vision_config)
        for layer in self.vision_tower.sam_encoder.layers:
            layer.attn.get_decomposed_rel_pos = types.MethodType(_contiguous_decomposed_rel_pos, layer.attn)
        self.multi_modal_projector = nn.Linear(config.projector_input_dim, hidden)
        self.image_newline = nn.Parameter(torch.empty(hidden))
        self.view_separator = nn.Parameter(torch.empty(hidden))
        self.language_model = UnlimitedOcrTextModel(config.text_config)
        if config.instruction_fusion != "none":
            self.instruction_encoder = AutoModel.from_config(config.instruction_encoder_config)
            self.instruction_projector = DeepSynthInstructionProjector(config)
        else:
            self.instruction_encoder = None
            self.instruction_projector = None
        self.post_init()

    def train(self, mode: bool = True):
        super().train(mode)
        # A frozen tower runs as at inference (no dropout): frozen features should not be perturbed in training.
        for module in (self.vision_tower, self.instruction_encoder):
            if mode and module is not None and not any(p.requires_grad for p in module.parameters()):
                module.eval()
        return self

    def get_input_embeddings(self):
        return self.language_model.embed_tokens

    def set_input_embeddings(self, value):
        self.language_model.embed_tokens = value

    # ---- vision ---------------------------------------------------------------------------------------------
    def _encode_views(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """Projected vision features per view, (g*g, D) each. Views of the same size run as one batch."""
        out: list[torch.Tensor | None] = [None] * len(views)
        by_size: dict[tuple, list[int]] = {}
        for i, view in enumerate(views):
            by_size.setdefault(tuple(view.shape[-2:]), []).append(i)
        sam = self.config.vision_config.sam_config
        for (height, width), idx in by_size.items():
            tokens = (height // sam.patch_size) * (width // sam.patch_size)
            per_call = max(1, VISION_BIAS_BUDGET // (4 * sam.num_attention_heads * tokens**2))
            for start in range(0, len(idx), per_call):
                chunk = idx[start : start + per_call]
                pixels = torch.stack([views[i] for i in chunk]).to(self.multi_modal_projector.weight.dtype)
                feats = self.multi_modal_projector(self.vision_tower(pixels).last_hidden_state)  # (n, g*g, D)
                for i, f in zip(chunk, feats):
                    out[i] = f
        return out

    def _with_newlines(self, grid: torch.Tensor) -> torch.Tensor:
        """(rows, cols, D) -> (rows * (cols + 1), D): `image_newline` after every row."""
        rows, _, dim = grid.shape
        newline = self.image_newline.to(grid.dtype).expand(rows, 1, dim)
        return torch.cat([grid, newline], dim=1).reshape(-1, dim)

    def get_image_features(
        self,
        pixel_values: torch.Tensor | list[torch.Tensor],
        pixel_values_local: torch.Tensor | list[torch.Tensor] | None = None,
        images_spatial_crop: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Vision rows of every page, in the order they are spliced into the sequence.

        pixel_values: (P, 3, S, S) global views, or a list of P views of possibly different sizes.
        pixel_values_local: (T, 3, s, s) local tiles of all pages, page after page, row-major; None if no tiles.
        images_spatial_crop: (P, 2) [width_tiles, height_tiles] per page; [1, 1] means no tiles (upstream's rule).
        Returns P tensors, each (num_image_tokens(page), D): local grid + newlines, global grid + newlines, separator.
        """
        globals_ = [v.squeeze(0) if v.dim() == 4 else v for v in pixel_values]
        num_pages = len(globals_)
        if images_spatial_crop is None:
            images_spatial_crop = torch.ones(num_pages, 2, dtype=torch.long)
        if len(images_spatial_crop) != num_pages:
            raise ValueError(f"images_spatial_crop has {len(images_spatial_crop)} rows for {num_pages} pages")
        crops = [(int(w), int(h)) for w, h in images_spatial_crop.tolist()]
        tiles_per_page = [w * h if w * h > 1 else 0 for w, h in crops]
        locals_ = [] if pixel_values_local is None else list(pixel_values_local)
        if sum(tiles_per_page) != len(locals_):
            raise ValueError(
                f"images_spatial_crop asks for {sum(tiles_per_page)} local tiles, pixel_values_local has {len(locals_)}"
            )

        feats = self._encode_views(globals_ + locals_)
        global_feats, local_feats = feats[:num_pages], feats[num_pages:]
        separator = self.view_separator.unsqueeze(0)
        pages, start = [], 0
        for page, ((w, h), n_tiles) in enumerate(zip(crops, tiles_per_page)):
            g = math.isqrt(global_feats[page].shape[0])
            parts = []
            if n_tiles:
                tiles = torch.stack(local_feats[start : start + n_tiles])  # (h*w, t*t, D)
                start += n_tiles
                t = math.isqrt(tiles.shape[1])
                # (h, w, t, t, D) -> (h, t, w, t, D) -> (h*t, w*t, D): tiles stitched into one grid
                grid = tiles.reshape(h, w, t, t, -1).permute(0, 2, 1, 3, 4).reshape(h * t, w * t, -1)
                parts.append(self._with_newlines(grid))
            parts.append(self._with_newlines(global_feats[page].reshape(g, g, -1)))
            parts.append(separator.to(global_feats[page].dtype))
            pages.append(torch.cat(parts))
        return pages

    # ---- instruction ----------------------------------------------------------------------------------------
    def get_instruction_features(
        self, instruction_input_ids: torch.LongTensor, instruction_attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Projected instruction rows in batch order, (N, D): one per real instruction token ("tokens"), or
        `num_pooled_instruction_tokens` per sample ("pooled")."""
        if self.instruction_encoder is None:
            raise ValueError("This model has no instruction encoder (instruction_fusion='none')")
        if instruction_attention_mask is None:
            instruction_attention_mask = torch.ones_like(instruction_input_ids)
        states = self.instruction_encoder(
            input_ids=instruction_input_ids, attention_mask=instruction_attention_mask
        ).last_hidden_state  # (B, Ti, De)
        dim = self.config.text_config.hidden_size
        if self.config.instruction_fusion == "pooled":
            mask = instruction_attention_mask.unsqueeze(-1).to(states.dtype)  # (B, Ti, 1)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, De)
            return self.instruction_projector(pooled).reshape(-1, dim)  # (B * k, D)
        projected = self.instruction_projector(states)  # (B, Ti, D)
        return projected[instruction_attention_mask.bool()]  # (N_real_tokens, D)

    @staticmethod
    def _splice(inputs_embeds, input_ids, token_id, features, name):
        """Scatter `features` rows into the positions of `token_id`, in sequence order; counts must agree."""
        mask = input_ids == token_id
        check_placeholder_rows(int(mask.sum()), features.shape[0], token_id, name)
        mask = mask.unsqueeze(-1).expand_as(inputs_embeds)
        return inputs_embeds.masked_scatter(mask, features.to(inputs_embeds.device, inputs_embeds.dtype))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | list[torch.Tensor] | None = None,
        pixel_values_local: torch.Tensor | None = None,
        images_spatial_crop: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        instruction_input_ids: torch.LongTensor | None = None,
        instruction_attention_mask: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> DeepSynthModelOutputWithPast:
        r"""
        image_features: precomputed vision rows, (N_image_tokens, D) (e.g. a cached document), instead of pixels.
        instruction_input_ids / instruction_attention_mask: the instruction, tokenized by the encoder's tokenizer.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)  # (B, L, D)

        if pixel_values is not None and image_features is not None:
            raise ValueError("Pass pixel_values or image_features, not both")
        if pixel_values is not None:
            image_features = torch.cat(self.get_image_features(pixel_values, pixel_values_local, images_spatial_crop))
        instruction_features = None
        if instruction_input_ids is not None and self.config.instruction_fusion != "none":
            instruction_features = self.get_instruction_features(instruction_input_ids, instruction_attention_mask)

        # Placeholders are only read at prefill: a decode step that emits a placeholder id embeds it as a token.
        prefill = cache is None or cache.get_seq_length() == 0
        if input_ids is not None:
            for token_id, features, name in (
                (self.config.image_token_id, image_features, "image"),
                (self.config.instruction_token_id, instruction_features, "instruction"),
            ):
                fused = name == "image" or self.config.instruction_fusion != "none"
                if features is not None:
                    inputs_embeds = self._splice(inputs_embeds, input_ids, token_id, features, name)
                elif fused and prefill and (input_ids == token_id).any():
                    raise ValueError(f"The input has <{name}> placeholder tokens but no {name} inputs were given")

        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
        return DeepSynthModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_features=image_features,
            instruction_features=instruction_features,
        )


class DeepSynthForConditionalGeneration(DeepSynthPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: DeepSynthConfig):
        super().__init__(config)
        self.model = DeepSynthModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()
        self.set_generation_defaults()

    def set_generation_defaults(self):
        """Placeholder ids are inputs, never outputs: generate() must not emit them."""
        placeholders = [self.config.image_token_id, self.config.instruction_token_id]
        suppressed = list(self.generation_config.suppress_tokens or [])
        self.generation_config.suppress_tokens = suppressed + [t for t in placeholders if t not in suppressed]

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def generate(self, *args, repetition_guard=None, logits_processor=None, **kwargs):
        r"""
        repetition_guard: ban tokens that would repeat an n-gram of the recent tokens (`NGramRepetitionGuard` of
            generation_deepsynth.py): True (n-gram 30 inside a 90-token window), a dict of its settings
            (`ngram_size`, `window_size`, `exempt_token_ids`) or a guard. Default: the generation config's
            `repetition_guard` (off when it has none).
        """
        if repetition_guard is None:
            repetition_guard = getattr(self.generation_config, "repetition_guard", None)
        guard = build_repetition_guard(repetition_guard)
        if guard is not None:
            logits_processor = LogitsProcessorList([*(logits_processor or []), guard])
        return super().generate(*args, logits_processor=logits_processor, **kwargs)

    def infer(
        self,
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
        r"""The original DeepSeek-OCR `infer()`: read `image_file` with `prompt` and return the text.

        prompt: upstream's prompts, text before and after `<image>` ("<image>\n<|grounding|>Convert the document to
            markdown. ", "<image>\nFree OCR. ", "Page 1: <image>\n..."). tokenizer: the decoder tokenizer.
        base_size / image_size / crop_mode: upstream's modes (Tiny 512/512/False, Small 640/640/False, Base
            1024/1024/False, Large 1280/1280/False, Gundam 1024/640/True).
        eval_mode: return the text without printing (n-gram ban 35); otherwise the text is streamed to stdout as it
            is written (n-gram ban 20) and returned as well.
        test_compress: print the image size, vision tokens covering the page, text tokens and their ratio.
        save_results: write `result.mmd`, `result_with_boxes.jpg` (grounding boxes drawn) and `images/<i>.jpg`
            (crops of boxes labelled `image`) into `output_path`.
        instruction: DeepSynth's addition: an instruction for the fused instruction encoder.
        Other keyword arguments go to `generate()` (e.g. `max_new_tokens`, `repetition_guard=True`).
        """
        return deepseek_ocr_infer(
            self, tokenizer, prompt, image_file, output_path, base_size, image_size, crop_mode, test_compress,
            save_results, eval_mode, instruction, **generate_kwargs,
        )

    def get_output_embeddings(self):
        return self.lm_head

    def get_image_features(self, pixel_values, pixel_values_local=None, images_spatial_crop=None):
        return self.model.get_image_features(pixel_values, pixel_values_local, images_spatial_crop)

    def get_instruction_features(self, instruction_input_ids, instruction_attention_mask=None):
        return self.model.get_instruction_features(instruction_input_ids, instruction_attention_mask)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | list[torch.Tensor] | None = None,
        pixel_values_local: torch.Tensor | None = None,
        images_spatial_crop: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        instruction_input_ids: torch.LongTensor | None = None,
        instruction_attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        num_pages=None,  # from the collator; the page count is implied by images_spatial_crop
        **kwargs,
    ) -> DeepSynthCausalLMOutputWithPast:
        r"""
        labels: (B, L) token ids, -100 where no loss is taken (prompt, padding); shifted inside the loss.
        The loss honours `num_items_in_batch` (passed by Trainer), so gradient accumulation and multi-process
        training average over answer tokens, not over micro-batches.
        """
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            pixel_values=pixel_values,
            pixel_values_local=pixel_values_local,
            images_spatial_crop=images_spatial_crop,
            image_features=image_features,
            instruction_input_ids=instruction_input_ids,
            instruction_attention_mask=instruction_attention_mask,
            use_cache=use_cache,
            **{k: v for k, v in kwargs.items() if k != "num_items_in_batch"},
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden_states = hidden_states[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden_states = hidden_states[:, logits_to_keep]
        logits = self.lm_head(hidden_states).float()  # (B, L, V); the original returns float32 logits

        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return DeepSynthCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_features=outputs.image_features,
            instruction_features=outputs.instruction_features,
        )

    def prepare_inputs_for_generation(self, input_ids, *args, is_first_iteration=False, **kwargs):
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, *args, is_first_iteration=is_first_iteration, **kwargs
        )
        if not is_first_iteration and kwargs.get("use_cache", True):
            for key in PREFILL_ONLY_INPUTS:
                model_inputs.pop(key, None)
        model_inputs.pop("num_pages", None)
        return model_inputs

    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None, **model_kwargs):
        """Beams / return sequences: the generic expansion repeats tensors along dim 0, but page tensors are indexed
        by page and `image_features` by vision row, not by sample. Encode the pages once and repeat each sample's
        vision rows instead (also spares running the vision tower once per beam)."""
        if expand_size == 1 or not any(model_kwargs.get(k) is not None for k in PAGE_INPUTS):
            return super()._expand_inputs_for_generation(expand_size, is_encoder_decoder, input_ids, **model_kwargs)
        if input_ids is None:
            raise ValueError("num_beams > 1 / num_return_sequences > 1 with page inputs need input_ids")
        cache = model_kwargs.get("cache")
        if cache is not None and cache.get_seq_length() > 0:
            raise ValueError("num_beams > 1 / num_return_sequences > 1 cannot expand a pre-filled cache: pass "
                             "image_features (or pixels) and the whole prompt instead")
        pages = {k: model_kwargs.pop(k, None) for k in PAGE_INPUTS}
        features = pages["image_features"]
        if features is None:
            features = torch.cat(self.get_image_features(
                pages["pixel_values"], pages["pixel_values_local"], pages["images_spatial_crop"]))
        rows_per_sample = (input_ids == self.config.image_token_id).sum(dim=1).tolist()
        check_placeholder_rows(sum(rows_per_sample), features.shape[0], self.config.image_token_id, "image")
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size, is_encoder_decoder, input_ids, **model_kwargs)
        per_sample = features.split(rows_per_sample)  # sample b's rows, in sequence order
        model_kwargs["image_features"] = torch.cat([rows for rows in per_sample for _ in range(expand_size)])
        return input_ids, model_kwargs

    # ---- diagnostics ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def instruction_fusion_report(self, inputs: dict, other_instruction_inputs: dict | None = None) -> dict:
        """One call for the guide's "text embeddings not used" symptom.

        inputs: a processed batch (document + instruction). other_instruction_inputs: the same document with a
        different instruction. Reports whether an instruction encoder is loaded, how many instruction rows were
        fused into the decoder input, and how much the next-token logits move when the instruction is swapped.
        """
        enc = self.model.instruction_encoder
        report = {
            "fusion_mode": self.config.instruction_fusion,
            "instruction_encoder": None if enc is None else type(enc).__name__,
            "instruction_encoder_params": 0 if enc is None else sum(p.numel() for p in enc.parameters()),
            "instruction_encoder_trainable": bool(enc is not None and any(p.requires_grad for p in enc.parameters())),
            "placeholder_tokens": int((inputs["input_ids"] == self.config.instruction_token_id).sum()),
        }
        out = self(**inputs, use_cache=False)
        report["fused_instruction_rows"] = 0 if out.instruction_features is None else out.instruction_features.shape[0]
        report["fused_rows_norm_mean"] = (
            0.0 if out.instruction_features is None else out.instruction_features.norm(dim=-1).mean().item()
        )
        if other_instruction_inputs is not None:
            other = self(**other_instruction_inputs, use_cache=False)
            a, b = out.logits[:, -1].softmax(-1), other.logits[:, -1].softmax(-1)
            report["next_token_prob_change_max"] = (a - b).abs().max().item()
            report["next_token_logit_change_max"] = (out.logits[:, -1] - other.logits[:, -1]).abs().max().item()
        report["instruction_used"] = report["fused_instruction_rows"] > 0 and (
            other_instruction_inputs is None or report["next_token_logit_change_max"] > 0
        )
        return report

    # ---- loading the original DeepSeek-OCR ------------------------------------------------------------------
    @classmethod
    def from_deepseek_ocr(
        cls,
        checkpoint_dir: str,
        config: DeepSynthConfig | None = None,
        instruction_encoder: str | None = None,
        instruction_fusion: str = "tokens",
        image_token_id: int | None = None,
        instruction_token_id: int | None = None,
        **kwargs,
    ) -> "DeepSynthForConditionalGeneration":
        """Load an original DeepSeek-OCR checkpoint folder (keys `model.sam_model.*`, `model.vision_model.*`,
        `model.projector.layers.*`, `model.layers.*`, ...), optionally with a pretrained instruction encoder
        (a local folder or hub id loadable with AutoModel). The unused CLIP `patch_embedding` is ignored.

        Without `config`, the decoder dimensions are read from the folder's original config.json
        (`language_config`) and the vision dimensions are the released ones (they are hard-coded upstream).
        """
        ids = {k: v for k, v in (("image_token_id", image_token_id), ("instruction_token_id", instruction_token_id)) if v is not None}
        if config is None:
            config = deepsynth_config_from_original(checkpoint_dir, instruction_encoder, instruction_fusion, **ids)
        else:
            for name, value in ids.items():
                setattr(config, name, value)
            config.validate()
        # The original has no instruction projector: it starts fresh. Without a pretrained `instruction_encoder`,
        # a fused config's encoder starts from its initialisation too.
        allow_missing = ("model.instruction_projector.",) + tuple(kwargs.pop("allow_missing", ()))
        if config.instruction_fusion != "none" and instruction_encoder is None:
            allow_missing += ("model.instruction_encoder.",)
        # Stage the weights (symlinks, + the encoder's weights under our names) beside a DeepSynth config.json:
        # from_pretrained then loads everything in one pass, reads our config and generation defaults instead of
        # the original's `deepseek_vl_v2` config, and its load report lists only what really starts fresh.
        with tempfile.TemporaryDirectory() as staged:
            weight_map = _stage_original_weights(checkpoint_dir, staged)
            if config.instruction_fusion != "none" and instruction_encoder is not None:
                weight_map.update(_stage_instruction_encoder(instruction_encoder, staged))
            with open(os.path.join(staged, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {}, "weight_map": weight_map}, f)
            config.save_pretrained(staged)
            loaded = cls.from_pretrained(
                staged, config=config, key_mapping=ORIGINAL_KEY_MAPPING, allow_missing=allow_missing, **kwargs
            )
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, loading_info) on request
        model.set_generation_defaults()
        return loaded

    def load_instruction_encoder(self, name_or_path: str, **kwargs):
        """Copy pretrained weights (AutoModel.from_pretrained) into the instruction encoder; configs must agree."""
        if self.model.instruction_encoder is None:
            raise ValueError("This model was built without an instruction encoder (instruction_fusion='none')")
        pretrained = AutoModel.from_pretrained(name_or_path, **kwargs)
        missing, unexpected = self.model.instruction_encoder.load_state_dict(pretrained.state_dict(), strict=False)
        # Pooler weights are the only keys allowed to differ (BERT-style encoders built with/without a pooler).
        bad = [k for k in missing + unexpected if not k.startswith("pooler.")]
        if bad:
            raise ValueError(f"Instruction encoder weights from {name_or_path} do not fit the config: {bad[:8]}")
        return self


def _stage_original_weights(checkpoint_dir: str, staged: str) -> dict[str, str]:
    """Symlink the original's weight files (those its model.safetensors.index.json names, else model.safetensors)
    into `staged`, renamed so that our index is the one read; returns their weight map (key -> staged name)."""
    _check_safetensors_files(checkpoint_dir)  # errors name the original files, not the staged links
    files = _weight_files(checkpoint_dir)
    if not files:
        raise ValueError(f"{checkpoint_dir} has neither model.safetensors nor model.safetensors.index.json")
    weight_map = {}
    for name in files:
        source = os.path.abspath(os.path.join(checkpoint_dir, name))
        os.symlink(source, os.path.join(staged, f"original-{name}"))
        with safe_open(source, framework="pt") as f:
            weight_map.update(dict.fromkeys(f.keys(), f"original-{name}"))
    return weight_map


def _stage_instruction_encoder(name_or_path: str, staged: str) -> dict[str, str]:
    """The pretrained encoder's weights (AutoModel.from_pretrained) as `model.instruction_encoder.*` in one staged
    file; returns its weight map."""
    from safetensors.torch import save_file

    encoder = AutoModel.from_pretrained(name_or_path)
    # clone: safetensors refuses tensors that share memory (tied embeddings)
    state = encoder.state_dict()
    tensors = {f"model.instruction_encoder.{k}": v.detach().clone().contiguous() for k, v in state.items()}
    save_file(tensors, os.path.join(staged, "instruction-encoder.safetensors"))
    return dict.fromkeys(tensors, "instruction-encoder.safetensors")


def deepsynth_config_from_original(
    checkpoint_dir: str, instruction_encoder: str | None = None, instruction_fusion: str = "tokens", **overrides
) -> DeepSynthConfig:
    """DeepSynthConfig for an original DeepSeek-OCR folder: decoder dims from `language_config` of its
    config.json (falling back to the top level), released vision dims, instruction encoder config if given."""
    path = os.path.join(checkpoint_dir, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"{checkpoint_dir} has no config.json: pass config=DeepSynthConfig(...) explicitly")
    with open(path) as f:
        original = json.load(f)
    lang = original.get("language_config") or original
    keys = (
        "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "n_routed_experts", "n_shared_experts",
        "num_experts_per_tok", "routed_scaling_factor", "topk_method", "n_group", "topk_group",
        "max_position_embeddings", "rms_norm_eps", "bos_token_id", "eos_token_id",
    )
    text = {k: lang[k] for k in keys if lang.get(k) is not None}
    first_dense = lang.get("first_k_dense_replace", 1)
    n_layers = text.get("num_hidden_layers", 12)
    text["mlp_layer_types"] = ["dense" if i < first_dense else "sparse" for i in range(n_layers)]
    if lang.get("use_mla", False):
        raise ValueError("DeepSeek-OCR checkpoints use plain multi-head attention; this one sets use_mla=True")
    enc_config = None
    vision = _vision_config_from_original(original.get("vision_config") or {})
    if instruction_encoder is not None and instruction_fusion != "none":
        from transformers import AutoConfig

        enc_config = AutoConfig.from_pretrained(instruction_encoder)
    return DeepSynthConfig(
        vision_config=vision,
        text_config=text,
        instruction_encoder_config=enc_config,
        instruction_fusion=instruction_fusion if enc_config is not None else "none",
        **overrides,
    )


def _vision_config_from_original(vision: dict) -> dict:
    """SAM / CLIP dims from the original `vision_config.width` entries ("sam_vit_b", "clip-l-14-224"); upstream's
    code hard-codes the released sizes, which are also our defaults, so every key here is optional."""
    width = vision.get("width") if isinstance(vision.get("width"), dict) else {}
    sam = next((v for k, v in width.items() if k.startswith("sam")), {})
    clip = next((v for k, v in width.items() if k.startswith("clip")), {})
    sam_config = {
        "hidden_size": sam.get("width"),
        "num_hidden_layers": sam.get("layers"),
        "num_attention_heads": sam.get("heads"),
        "global_attn_indexes": sam.get("global_attn_indexes"),
        "downsample_channels": sam.get("downsample_channels"),
        "window_size": sam.get("window_size"),
        "output_channels": sam.get("neck_channels"),
        "image_size": sam.get("image_size"),
        "mlp_dim": sam.get("mlp_dim") or (4 * sam["width"] if sam.get("width") else None),
    }
    clip_config = {
        "hidden_size": clip.get("width"),
        "num_hidden_layers": clip.get("layers"),
        "num_attention_heads": clip.get("heads"),
        "intermediate_size": clip.get("intermediate_size") or (4 * clip["width"] if clip.get("width") else None),
        "image_size": clip.get("image_size"),
        "patch_size": clip.get("patch_size"),
    }
    return {
        "sam_config": {k: v for k, v in sam_config.items() if v is not None},
        "encoder_config": {k: v for k, v in clip_config.items() if v is not None},
    }


__all__ = [
    "DeepSynthForConditionalGeneration",
    "DeepSynthModel",
    "DeepSynthPreTrainedModel",
    "deepsynth_config_from_original",
]

# save_pretrained copies this file and the modules it imports next to the weights (Hub remote code); its auto_map
# sends AutoModel, AutoModelForCausalLM and AutoModelForImageTextToText to the generation class.
DeepSynthForConditionalGeneration.register_for_auto_class("AutoModel")
