"""DeepSynth checkpoint keys -> the original DeepSeek-OCR layout, which vLLM's DeepSeek-OCR loader reads.

DeepSynth saves each module's own parameter names (transformers' `unlimited_ocr` modules: SAM `layers.N.layer_norm1`,
CLIP q/k/v split, routed experts packed in 3-D tensors). This undoes those renames (the inverse of transformers'
unlimited_ocr conversion mapping plus modeling_deepsynth.ORIGINAL_KEY_MAPPING); original DeepSeek-OCR keys pass
through unchanged, so original folders load too. Instruction encoder / projector keys pass through as they are.
"""

import os
import re
from collections.abc import Iterable, Iterator

import torch

# Tests only: break one step on purpose, to show the agreement test catches it ("expert_halves" swaps the gate and up
# halves of every routed expert; "splice_order" is read by the model).
FAULT_ENV = "DEEPSYNTH_VLLM_TEST_FAULT"

PREFIX_RENAMES = [  # ours -> original, first match wins
    (r"^model\.vision_tower\.sam_encoder\.", "model.sam_model."),
    (r"^model\.vision_tower\.vision_encoder\.encoder\.", "model.vision_model.transformer."),
    (r"^model\.vision_tower\.vision_encoder\.", "model.vision_model."),
    (r"^model\.multi_modal_projector\.", "model.projector.layers."),
    (r"^model\.view_separator$", "model.view_seperator"),  # sic, the original's spelling
    (r"^model\.language_model\.", "model."),
]
SAM_RENAMES = [
    (r"layers\.(\d+)\.layer_norm1\.", r"blocks.\1.norm1."),
    (r"layers\.(\d+)\.layer_norm2\.", r"blocks.\1.norm2."),
    (r"layers\.(\d+)\.(attn|mlp)\.", r"blocks.\1.\2."),
    (r"patch_embed\.projection\.", "patch_embed.proj."),
    (r"neck\.conv1\.", "neck.0."),
    (r"neck\.layer_norm1\.", "neck.1."),
    (r"neck\.conv2\.", "neck.2."),
    (r"neck\.layer_norm2\.", "neck.3."),
    (r"proj\.conv1\.", "net_2."),
    (r"proj\.conv2\.", "net_3."),
]
CLIP_QKV = re.compile(r"^(model\.vision_model\.transformer\.layers\.\d+\.self_attn\.)([qkv])_proj\.(weight|bias)$")
PACKED_EXPERTS = re.compile(r"^(model\.layers\.\d+\.mlp\.experts\.)(gate_up_proj|down_proj)$")


def original_name(name: str) -> str:
    for pattern, repl in PREFIX_RENAMES:
        if re.match(pattern, name):
            name = re.sub(pattern, repl, name, count=1)
            break
    if name.startswith("model.sam_model."):
        head, tail = "model.sam_model.", name[len("model.sam_model."):]
        for pattern, repl in SAM_RENAMES:
            tail = re.sub("^" + pattern, repl, tail, count=1)
        name = head + tail
    return name


def to_original_layout(weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """Renamed (name, tensor) pairs; CLIP q/k/v are fused into `qkv_proj` (once all three are read), packed experts
    are split into per-expert `gate_proj` / `up_proj` / `down_proj`."""
    fault = os.environ.get(FAULT_ENV, "")
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in weights:
        name = original_name(name)
        if m := CLIP_QKV.match(name):
            key = m.group(1) + "qkv_proj." + m.group(3)
            parts = pending.setdefault(key, {})
            parts[m.group(2)] = tensor
            if len(parts) == 3:
                yield key, torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
                del pending[key]
        elif m := PACKED_EXPERTS.match(name):
            prefix, kind = m.groups()
            for e, w in enumerate(tensor):
                if kind == "down_proj":  # (E, H, I)
                    yield f"{prefix}{e}.down_proj.weight", w
                else:  # (E, 2I, H): gate rows then up rows (unlimited_ocr chunks gate, up)
                    gate, up = w.chunk(2, dim=0)
                    if fault == "expert_halves":
                        gate, up = up, gate
                    yield f"{prefix}{e}.gate_proj.weight", gate
                    yield f"{prefix}{e}.up_proj.weight", up
        else:
            yield name, tensor
    if pending:
        raise ValueError(f"CLIP attention weights without all of q/k/v: {sorted(pending)}")
