"""Build a small DeepSynth checkpoint that vLLM's CPU kernels accept, and write our Hugging Face implementation's
greedy outputs on it as the reference the vLLM plugin's tests check. Runs in the project's own environment
(transformers 5.24, our remote code); the plugin's tests run in the vLLM environment and only read the files.

    python vllm_plugin/tools/make_reference.py OUTDIR [--fusion tokens|pooled|none] [--encoder bert|qwen2|qwen3]
                                               [--crop]
    python vllm_plugin/tools/make_reference.py OUTDIR --original

--original: OUTDIR/checkpoint is an ORIGINAL DeepSeek-OCR folder instead (config.json `deepseek_vl_v2` with
`language_config` / `vision_config.width`, the original key names, a tokenizer; no instruction encoder, no processor
file), read back by our converter (`deepsynth.conversion.convert_original`, base mode: the 1024-px view a folder
without our processor_config.json gets on vLLM too); the reference is that model's outputs.

OUTDIR/checkpoint: the checkpoint (decoder head size 32: vLLM's CPU attention needs 32..512).
OUTDIR/pages/*.png: the page images of the cases. OUTDIR/reference.json: per case the page files (or the text
document, rendered by our processor here and by the checkpoint's processor file on the vLLM side), the instruction
(or none), the prompt ids our processor builds, the greedy ids and each chosen token's logprob and top-5 logprobs.
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for path in (ROOT, ROOT / "src", ROOT / "scripts", ROOT / "vllm_plugin"):
    sys.path.insert(0, str(path))

import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from configuration_deepsynth import DeepSynthConfig  # noqa: E402
from deepsynth.conversion import convert_original  # noqa: E402
from deepsynth.tiny import tiny_bert_config, tiny_vision_config  # noqa: E402
from deepsynth.tokenization import build_decoder_tokenizer  # noqa: E402
from deepsynth_vllm.weights import to_original_layout  # noqa: E402  (torch only: no vLLM needed)
from make_tiny_checkpoint import TINY_VIEW, minilm_tokenizer  # noqa: E402
from modeling_deepsynth import DeepSynthForConditionalGeneration  # noqa: E402
from pipeline_deepsynth import save_with_pipeline  # noqa: E402
from processing_deepsynth import DeepSynthImageProcessor, DeepSynthProcessor  # noqa: E402

MAX_NEW_TOKENS = 8
TOP_LOGPROBS = 5
INSTRUCTIONS = ("What is the total revenue?", "Summarize the page in one sentence.")
TEXT_DOCUMENT = "Q3 2024 Financial Report: revenue was $45M, up 15% year over year. Operating costs were $12M."


def text_config(vocab_size: int) -> dict:
    """Hidden 128 / 4 heads = head size 32 (the smallest vLLM's CPU attention takes); layer 0 dense, 1 MoE."""
    return {
        "vocab_size": vocab_size, "hidden_size": 128, "intermediate_size": 256, "moe_intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 32,
        "n_routed_experts": 4, "n_shared_experts": 1, "num_experts_per_tok": 2,
        "mlp_layer_types": ["dense", "sparse"], "max_position_embeddings": 2048,
    }


def tiny_qwen3_config(vocab_size: int = 30522) -> dict:
    """A causal decoder as the instruction encoder (the guide's Qwen option), read by the same MiniLM tokenizer."""
    return {
        "model_type": "qwen3", "vocab_size": vocab_size, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
        "max_position_embeddings": 256,
    }


def tiny_qwen2_config(vocab_size: int = 30522) -> dict:
    """Qwen2: biased q/k/v projections and no q/k norms (what sets it apart from Qwen3 in the weights)."""
    return {**tiny_qwen3_config(vocab_size), "model_type": "qwen2"}


ENCODERS = {"bert": tiny_bert_config, "qwen2": tiny_qwen2_config, "qwen3": tiny_qwen3_config}


def build_checkpoint(out_dir: Path, fusion: str, seed: int = 0, encoder: str = "bert", crop: bool = False,
                     vision: dict | None = None):
    tokenizer = build_decoder_tokenizer(vocab_size=512)
    instruction_tokenizer = None if fusion == "none" else minilm_tokenizer()
    # crop: gundam-like mode at tiny sizes, a 128-px global view plus 64-px local tiles (2..9 of them)
    image_processor = DeepSynthImageProcessor(
        base_size=TINY_VIEW, image_size=TINY_VIEW // 2 if crop else TINY_VIEW, crop_mode=crop,
        page_width=256, page_height=256, margin=12, font_size=14, max_pages=4,
    )
    processor = DeepSynthProcessor(image_processor, tokenizer, instruction_tokenizer, instruction_fusion=fusion)
    config = DeepSynthConfig(
        vision_config=vision or tiny_vision_config(),
        text_config=text_config(len(tokenizer)),
        instruction_encoder_config=None if fusion == "none" else ENCODERS[encoder](),
        instruction_fusion=fusion,
        image_token_id=processor.image_token_id,
        instruction_token_id=processor.instruction_token_id or 4,
        max_instruction_length=processor.max_instruction_length,
        num_pooled_instruction_tokens=processor.num_pooled_instruction_tokens,
    )
    torch.manual_seed(seed)
    model = DeepSynthForConditionalGeneration(config).eval()
    with torch.no_grad():  # answers that depend on the pages and the instruction (as tests/_serving_helpers.py)
        for module in (model.model.multi_modal_projector, model.model.instruction_projector):
            for p in [] if module is None else module.parameters():
                p.mul_(20)
        for module in model.model.vision_tower.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.reset_parameters()
    model.generation_config.update(
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id
    )
    save_with_pipeline(model, processor, out_dir)
    return model, processor


def write_original_folder(out_dir: Path, seed: int = 1):
    """An original-layout DeepSeek-OCR folder: a document-only model of our tiny sizes (decoder head 32), its weights
    under the original key names (the plugin's mapping; plus the unused CLIP patch conv the original stores), the
    original config.json layout, the decoder tokenizer. Returns our converter's (model, processor) for it."""
    from safetensors.torch import save_file

    vision = tiny_vision_config()  # tiny widths, position grids at the released 1024 / 224 px (no interpolation:
    vision["sam_config"]["image_size"], vision["encoder_config"]["image_size"] = 1024, 224  # 2x2 -> 16x16 blurs)
    model, processor = build_checkpoint(out_dir.with_name("deepsynth-layout"), "none", seed=seed, vision=vision)
    cfg = model.config
    sam, clip, text = cfg.vision_config.sam_config, cfg.vision_config.encoder_config, cfg.text_config
    weights = dict(to_original_layout(model.state_dict().items()))
    weights["model.vision_model.embeddings.patch_embedding.weight"] = torch.randn(clip.hidden_size, 3, 14, 14) * 0.02
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, out_dir / "model.safetensors")
    language = {k: getattr(text, k) for k in (
        "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "n_routed_experts", "n_shared_experts", "num_experts_per_tok",
        "topk_method", "rms_norm_eps", "max_position_embeddings")}
    # plain multi-head attention spelled as DeepSeek-OCR's config.json spells it (no MLA ranks / head dims)
    language.update(kv_lora_rank=None, q_lora_rank=None, qk_nope_head_dim=0, qk_rope_head_dim=0, v_head_dim=0,
                    norm_topk_prob=False, moe_layer_freq=1, scoring_func="softmax", n_group=1, topk_group=1)
    language.update(first_k_dense_replace=text.mlp_layer_types.index("sparse"), use_mla=False,
                    bos_token_id=processor.tokenizer.bos_token_id, eos_token_id=processor.tokenizer.eos_token_id)
    width = {"sam_vit_b": {"width": sam.hidden_size, "layers": sam.num_hidden_layers, "heads": sam.num_attention_heads,
                           "global_attn_indexes": list(sam.global_attn_indexes), "window_size": sam.window_size,
                           "downsample_channels": list(sam.downsample_channels), "neck_channels": sam.output_channels,
                           "image_size": sam.image_size, "mlp_dim": sam.mlp_dim},
             "clip-l-14-224": {"width": clip.hidden_size, "layers": clip.num_hidden_layers,
                               "heads": clip.num_attention_heads, "intermediate_size": clip.intermediate_size,
                               "image_size": clip.image_size, "patch_size": clip.patch_size}}
    (out_dir / "config.json").write_text(json.dumps({
        "model_type": "deepseek_vl_v2", "architectures": ["DeepseekOCRForCausalLM"], "language_config": language,
        "vision_config": {"width": width}}))
    processor.tokenizer.save_pretrained(out_dir)
    converted, converted_processor = convert_original(str(out_dir), fusion="none", mode="base")
    converted.generation_config.update(bos_token_id=processor.tokenizer.bos_token_id)
    return converted.eval(), converted_processor


def make_pages(out_dir: Path) -> list[str]:
    """Two page images of a size that is not the view size (the resize path runs), with different content."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for i, (colour, text) in enumerate([((250, 250, 240), "Revenue $45M, up 15%"), ((230, 240, 255), "AI in care")]):
        page = Image.new("RGB", (200 + 40 * i, 260), colour)
        draw = ImageDraw.Draw(page)
        draw.rectangle((20 + 30 * i, 30, 120 + 20 * i, 90 + 40 * i), fill=(40 * i, 90, 160))
        draw.text((15, 150), text, fill=(0, 0, 0))
        names.append(f"page{i}.png")
        page.save(out_dir / names[-1])
    return names


def model_inputs(processor, vision, instruction) -> dict:
    """Our processor's batch; without an instruction: bos, pages, "\n\n" (the prompt with no instruction rows)."""
    if instruction is not None:
        return processor.collate([processor.encode_example(None, instruction, vision=vision)])
    ids = [processor.tokenizer.bos_token_id] + [processor.image_token_id] * int(vision["num_image_tokens"].sum())
    ids += processor._text_ids("\n" + processor.answer_separator)
    batch = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    batch.update({k: vision[k] for k in ("pixel_values", "pixel_values_local", "images_spatial_crop") if k in vision})
    return batch


@torch.no_grad()
def greedy(model, batch) -> dict:
    """Greedy decoding on the raw logits (no suppressed tokens, eos not stopping): what vLLM computes with
    temperature 0 and ignore_eos, its logprobs being raw log-softmaxes too."""
    out = model(**batch, use_cache=True)
    mask = batch["attention_mask"]
    ids, logprobs, top = [], [], []
    for _ in range(MAX_NEW_TOKENS):
        step = out.logits[0, -1].float().log_softmax(-1)  # (V,)
        token = int(step.argmax())
        values, indices = step.topk(TOP_LOGPROBS)
        ids.append(token)
        logprobs.append(float(step[token]))
        top.append(dict(zip(indices.tolist(), values.tolist())))
        mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
        out = model(input_ids=torch.tensor([[token]]), attention_mask=mask, cache=out.cache, use_cache=True)
    return {"prompt_ids": batch["input_ids"][0].tolist(), "greedy_ids": ids, "logprobs": logprobs, "top": top}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--fusion", default="tokens", choices=["tokens", "pooled", "none"])
    parser.add_argument("--encoder", default="bert", choices=sorted(ENCODERS))
    parser.add_argument("--crop", action="store_true", help="crop (gundam-like) mode: global view + local tiles")
    parser.add_argument("--original", action="store_true", help="an original-layout DeepSeek-OCR folder (see above)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.original:
        args.fusion, args.encoder = "none", None
        model, processor = write_original_folder(args.out_dir / "checkpoint")
    else:
        model, processor = build_checkpoint(args.out_dir / "checkpoint", args.fusion, encoder=args.encoder,
                                            crop=args.crop)
    pages = make_pages(args.out_dir / "pages")
    cases = []
    for page_names in (pages[:1], pages):
        images = [Image.open(args.out_dir / "pages" / n).convert("RGB") for n in page_names]
        vision = processor.image_processor.preprocess(images)
        for instruction in (None,) + INSTRUCTIONS[: 2 if len(page_names) == 1 else 1]:
            result = greedy(model, model_inputs(processor, vision, instruction))
            cases.append({"pages": page_names, "instruction": instruction, **result})
            print(f"{len(page_names)} page(s), instruction={instruction!r}: {result['greedy_ids']}")
    # a text document is rendered by our processor (an original folder has no processor file for the vLLM side to
    # render with: its cases are images only)
    if not args.original:
        vision = processor.image_processor.preprocess(TEXT_DOCUMENT)
        result = greedy(model, model_inputs(processor, vision, INSTRUCTIONS[0]))
        cases.append({"pages": [], "text": TEXT_DOCUMENT, "instruction": INSTRUCTIONS[0], **result})
        print(f"text document, instruction={INSTRUCTIONS[0]!r}: {result['greedy_ids']}")
    ref = {"fusion": args.fusion, "encoder": args.encoder, "crop": args.crop, "original": args.original,
           "max_new_tokens": MAX_NEW_TOKENS, "cases": cases}
    (args.out_dir / "reference.json").write_text(json.dumps(ref))
    print(f"wrote {args.out_dir}: {len(cases)} cases")


if __name__ == "__main__":
    main()
