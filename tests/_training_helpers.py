"""Local stand-ins for the hub models the training guide names: a tiny ORIGINAL-layout DeepSeek-OCR folder (the
reference fixture's weights), a tiny Qwen3 encoder, and a Hugging Face cache holding them under their hub ids."""

import json
import shutil
from pathlib import Path

import torch

from deepsynth.tokenization import build_decoder_tokenizer

# what the original config.json's `language_config` holds, read from the fixture's reference config
DECODER_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "n_routed_experts", "n_shared_experts",
                "num_experts_per_tok", "first_k_dense_replace", "topk_method", "rms_norm_eps", "use_mla")


def write_tiny_original_folder(fixture_dir: Path, folder: Path) -> Path:
    """An original DeepSeek-OCR folder: the fixture's weights, an original-style config.json, a tokenizer."""
    if folder.exists():
        return folder
    folder.mkdir(parents=True)
    shutil.copy(fixture_dir / "model.safetensors", folder / "model.safetensors")
    ref = json.loads((fixture_dir / "reference_config.json").read_text())
    sam, clip = ref["sam"], ref["clip"]
    width = {  # the original layout; window / neck / pos-embed size are given because the model is tiny
        "sam_vit_b": {"width": sam["embed_dim"], "layers": sam["depth"], "heads": sam["num_heads"],
                      "global_attn_indexes": sam["global_attn_indexes"],
                      "downsample_channels": sam["downsample_channels"], "window_size": sam["window_size"],
                      "neck_channels": sam["neck_channels"], "image_size": sam["img_size_for_pos_embed"]},
        "clip-l-14-224": {"width": clip["hidden_size"], "layers": clip["num_layers"],
                          "heads": clip["num_attention_heads"], "intermediate_size": clip["ffn_hidden_size"],
                          "image_size": clip["image_size"], "patch_size": clip["patch_size"]},
    }
    original = {"model_type": "deepseek_vl_v2", "language_config": {k: ref["decoder"][k] for k in DECODER_KEYS},
                "vision_config": {"width": width}}
    (folder / "config.json").write_text(json.dumps(original))
    build_decoder_tokenizer(vocab_size=500).save_pretrained(folder)
    return folder


def write_tiny_qwen3(folder: Path, hidden_size: int = 32) -> Path:
    """A tiny random Qwen3 encoder with a tokenizer, saved like a hub repo (AutoModel / AutoTokenizer load it)."""
    from transformers import Qwen3Config, Qwen3Model

    if folder.exists():
        return folder
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=512, hidden_size=hidden_size, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    Qwen3Model(config).save_pretrained(folder)
    build_decoder_tokenizer(vocab_size=512).save_pretrained(folder)
    return folder


def put_in_hub_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """Lay `folder` out as the Hugging Face cache (HF_HUB_CACHE) holds a downloaded `repo_id`: refs/main names a
    snapshot folder with the files. Returns the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    if not snapshot.exists():
        shutil.copytree(folder, snapshot)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
    return snapshot
