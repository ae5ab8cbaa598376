"""Parity with the ORIGINAL DeepSeek-OCR code: tests/fixtures/deepseek-ocr-reference (see its README).

The tiny reference model is loaded from the original key layout through our converter; every stage must match the
upstream tensors within 1e-4 (observed platform noise ~5e-6), ids and expert choices exactly.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from configuration_deepsynth import DeepSynthConfig
from modeling_deepsynth import DeepSynthForConditionalGeneration

ATOL = 1e-4


def fixture_config(fixture_dir, **overrides) -> DeepSynthConfig:
    rc = json.loads((fixture_dir / "reference_config.json").read_text())
    s, c, d = rc["sam"], rc["clip"], rc["decoder"]
    n_layers = d["num_hidden_layers"]
    return DeepSynthConfig(
        vision_config={
            "sam_config": {
                "hidden_size": s["embed_dim"],
                "num_hidden_layers": s["depth"],
                "num_attention_heads": s["num_heads"],
                "mlp_dim": s["mlp_dim"],
                "image_size": s["img_size_for_pos_embed"],
                "patch_size": s["patch_size"],
                "window_size": s["window_size"],
                "global_attn_indexes": s["global_attn_indexes"],
                "output_channels": s["neck_channels"],
                "downsample_channels": s["downsample_channels"],
                "layer_norm_eps": s["layernorm_eps"],
            },
            "encoder_config": {
                "hidden_size": c["hidden_size"],
                "num_hidden_layers": c["num_layers"],
                "num_attention_heads": c["num_attention_heads"],
                "intermediate_size": c["ffn_hidden_size"],
                "image_size": c["image_size"],
                "patch_size": c["patch_size"],
                "layer_norm_eps": c["layernorm_eps"],
            },
        },
        text_config={
            "vocab_size": d["vocab_size"],
            "hidden_size": d["hidden_size"],
            "intermediate_size": d["intermediate_size"],
            "moe_intermediate_size": d["moe_intermediate_size"],
            "num_hidden_layers": n_layers,
            "num_attention_heads": d["num_attention_heads"],
            "num_key_value_heads": d["num_key_value_heads"],
            "n_routed_experts": d["n_routed_experts"],
            "n_shared_experts": d["n_shared_experts"],
            "num_experts_per_tok": d["num_experts_per_tok"],
            "routed_scaling_factor": d["routed_scaling_factor"],
            "rms_norm_eps": d["rms_norm_eps"],
            "mlp_layer_types": ["dense" if i < d["first_k_dense_replace"] else "sparse" for i in range(n_layers)],
        },
        image_token_id=rc["image_token_id"],
        instruction_token_id=3,  # byte 0x00: never in the fixture ids
        **overrides,
    )


@pytest.fixture(scope="module")
def data(fixture_dir):
    return load_file(fixture_dir / "inputs.safetensors"), load_file(fixture_dir / "expected.safetensors")


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def model(request, fixture_dir):
    cfg = fixture_config(fixture_dir, instruction_fusion="none")
    m, info = DeepSynthForConditionalGeneration.from_deepseek_ocr(
        str(fixture_dir), config=cfg, attn_implementation=request.param, output_loading_info=True
    )
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set(), info
    return m.eval()


def pages(inp):
    return [inp["item0.images_ori"], inp["item1.images_ori"]]


def test_vision_stages(model, data):
    inp, exp = data
    tower = model.model.vision_tower
    with torch.no_grad():
        for i, pixels in enumerate(pages(inp)):
            sam = tower.sam_encoder(pixels).last_hidden_state
            torch.testing.assert_close(sam, exp[f"item{i}.global.sam_out"], atol=ATOL, rtol=ATOL)
            clip = tower.vision_encoder(sam).last_hidden_state
            torch.testing.assert_close(clip, exp[f"item{i}.global.clip_out"], atol=ATOL, rtol=ATOL)
            proj = model.model.multi_modal_projector(tower(pixels).last_hidden_state)
            torch.testing.assert_close(proj, exp[f"item{i}.global.projector_out"], atol=ATOL, rtol=ATOL)
        features = model.get_image_features(pages(inp))  # both sizes in one call
    for i in range(2):
        torch.testing.assert_close(features[i], exp[f"item{i}.vision_features"], atol=ATOL, rtol=ATOL)
        # layout: a newline after every grid row, the separator last
        g = {0: 4, 1: 3}[i]
        newline_rows = [r for r in range(len(features[i])) if torch.equal(features[i][r], model.model.image_newline)]
        assert newline_rows == [(g + 1) * k + g for k in range(g)]
        assert torch.equal(features[i][-1], model.model.view_separator)


def test_teacher_forced_forward(model, data):
    inp, exp = data
    captured = {}
    model.model.language_model.register_forward_hook(
        lambda mod, args, kwargs, out: captured.__setitem__("embeds", kwargs["inputs_embeds"]), with_kwargs=True
    )
    routers = [layer.mlp.gate for layer in model.model.language_model.layers if hasattr(layer.mlp, "gate")]
    for idx, router in enumerate(routers):
        router.register_forward_hook(lambda mod, a, out, idx=idx: captured.__setitem__(f"moe{idx}", out[2]))
    with torch.no_grad():
        out = model(
            input_ids=inp["tf_input_ids"],
            attention_mask=inp["tf_attention_mask"],
            position_ids=inp["tf_position_ids"],
            pixel_values=pages(inp),
            use_cache=False,
            output_hidden_states=True,
        )
    model.model.language_model._forward_hooks.clear()
    for r in routers:
        r._forward_hooks.clear()
    real = inp["tf_attention_mask"].bool()
    torch.testing.assert_close(captured["embeds"][real], exp["inputs_embeds"][real], atol=ATOL, rtol=ATOL)
    assert len(out.hidden_states) == len(exp["hidden_states"])
    for got, want in zip(out.hidden_states, exp["hidden_states"]):
        torch.testing.assert_close(got[real], want[real], atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(out.logits[real], exp["logits"][real], atol=ATOL, rtol=ATOL)
    assert out.logits.dtype == torch.float32
    for idx in range(len(routers)):
        chosen = captured[f"moe{idx}"].view(2, 73, -1).sort(-1).values
        assert torch.equal(chosen[real], exp[f"moe.layer{idx + 1}.topk_idx_sorted"][real])


def generate_kwargs():
    return dict(max_new_tokens=12, do_sample=False, eos_token_id=1, pad_token_id=2, no_repeat_ngram_size=20)


def test_batched_left_padded_generate(model, data):
    inp, exp = data
    with torch.no_grad():
        out = model.generate(
            input_ids=inp["input_ids"],
            attention_mask=inp["attention_mask"],
            pixel_values=pages(inp),
            output_logits=True,
            return_dict_in_generate=True,
            **generate_kwargs(),
        )
    assert torch.equal(out.sequences, exp["sequences"])
    assert torch.equal(out.sequences[:, -12:], exp["generated_ids"])
    torch.testing.assert_close(torch.stack(out.logits), exp["generate_step_logits"], atol=ATOL, rtol=ATOL)


def test_single_item_generate_and_logits(model, data):
    inp, exp = data
    for i in range(2):
        real = inp["attention_mask"][i].bool()
        ids = inp["input_ids"][i][real][None]
        pixels = [pages(inp)[i]]
        with torch.no_grad():
            gen = model.generate(input_ids=ids, pixel_values=pixels, **generate_kwargs())
            assert torch.equal(gen[0, -12:], exp[f"single.item{i}.generated_ids"])
            full = torch.cat([ids[0], gen[0, -12:]])[None]
            logits = model(input_ids=full, pixel_values=pixels, use_cache=False).logits[0]
        torch.testing.assert_close(logits, exp[f"single.item{i}.logits"], atol=ATOL, rtol=ATOL)


def test_converter_script_writes_loadable_checkpoint(fixture_dir, tmp_path, data):
    """scripts/convert_deepseek_ocr.py: original folder (+ instruction encoder) -> DeepSynth checkpoint."""
    inp, exp = data
    cfg_path = tmp_path / "deepsynth_config.json"
    cfg = fixture_config(fixture_dir, instruction_fusion="none")
    cfg_path.write_text(cfg.to_json_string())
    out_dir = tmp_path / "converted"
    script = Path(__file__).resolve().parents[1] / "scripts" / "convert_deepseek_ocr.py"
    subprocess.run(
        [sys.executable, str(script), str(fixture_dir), str(out_dir), "--config", str(cfg_path)], check=True
    )
    model = DeepSynthForConditionalGeneration.from_pretrained(out_dir).eval()
    with torch.no_grad():
        out = model(
            input_ids=inp["tf_input_ids"],
            attention_mask=inp["tf_attention_mask"],
            position_ids=inp["tf_position_ids"],
            pixel_values=pages(inp),
            use_cache=False,
        )
    real = inp["tf_attention_mask"].bool()
    torch.testing.assert_close(out.logits[real], exp["logits"][real], atol=ATOL, rtol=ATOL)


# ---- the original's entry point: model.infer(tokenizer, prompt=..., image_file=..., ...) --------------------------
INFER_CASES = [  # (item, page, view size, prompt): the prompts upstream infer() was given for the fixture
    (0, "page_a.png", 256, "<image>\nFree OCR. "),
    (1, "page_b.png", 160, "<image>\n<|grounding|>Convert the document to markdown. "),
]


def upstream_ids(fixture_dir, item, image_token_id) -> list[int]:
    pre = load_file(fixture_dir / "preprocess.safetensors")
    ids = pre[f"item{item}.input_ids_upstream"]
    return torch.where(ids == 128815, image_token_id, ids).tolist()  # the fixture's 511 substitution


@pytest.mark.parametrize("item,page,size,prompt", INFER_CASES)
def test_infer_inputs_equal_upstream(model, data, fixture_dir, item, page, size, prompt):
    from _processor_helpers import byte_ids, byte_tokenizer
    from infer_deepsynth import infer_inputs

    inp, _ = data
    tokenizer = byte_tokenizer(image_token_id=511)
    expected = upstream_ids(fixture_dir, item, 511)
    inputs, _, _ = infer_inputs(model, tokenizer, prompt, str(fixture_dir / page), size, size, False)
    assert inputs["input_ids"][0].tolist() == expected
    assert torch.equal(inputs["pixel_values"], inp[f"item{item}.images_ori"])  # bf16-rounded as upstream
    assert inputs["images_spatial_crop"].tolist() == [[1, 1]]
    # Text before <image> (upstream's "Page 1: <image>\n..." prompts): bos, that text, then the same image tokens
    # and text after, as upstream's infer() lays them out (each split tokenised on its own).
    paged, _, _ = infer_inputs(model, tokenizer, "Page 1: " + prompt, str(fixture_dir / page), size, size, False)
    assert paged["input_ids"][0].tolist() == [0] + byte_ids("Page 1: ") + expected[1:]


@pytest.mark.parametrize("item,page,size,prompt", INFER_CASES)
def test_infer_generates_upstream_ids(model, data, fixture_dir, item, page, size, prompt):
    """infer() end to end (eval_mode=True returns the text) writes the ids upstream's generate() wrote."""
    from _processor_helpers import byte_tokenizer

    _, exp = data
    tokenizer = byte_tokenizer(image_token_id=511)
    outputs = []
    real_generate = model.generate
    model.generate = lambda **kw: outputs.append(real_generate(**kw)) or outputs[-1]  # records, runs the real one
    try:
        text = model.infer(tokenizer, prompt=prompt, image_file=str(fixture_dir / page), base_size=size,
                           image_size=size, crop_mode=False, eval_mode=True, max_new_tokens=12)
    finally:
        del model.generate
    generated = outputs[0][0, len(upstream_ids(fixture_dir, item, 511)) :]
    assert torch.equal(generated, exp[f"single.item{item}.generated_ids"])
    assert text == tokenizer.decode(generated, skip_special_tokens=False).strip()
