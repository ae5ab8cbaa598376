"""DeepSynth model on tiny configs: fusion is live, caching/batching/checkpointing are exact, bad input is loud."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from configuration_deepsynth import DeepSynthConfig
from deepsynth.tiny import tiny_bert_config, tiny_config, tiny_text_config, tiny_vision_config
from modeling_deepsynth import DeepSynthForConditionalGeneration

IMG, INSTR, BOS, EOS, PAD = 510, 511, 0, 1, 2
VIEW = 128  # tiny global view: 2x2 grid -> 7 vision tokens


def make_model(fusion="tokens", seed=0, **kw):
    torch.manual_seed(seed)
    model = DeepSynthForConditionalGeneration(tiny_config(instruction_fusion=fusion, **kw)).eval()
    # Untrained projector outputs are tiny next to token embeddings; scale them up so that a wrong splice
    # would show in every assertion below.
    with torch.no_grad():
        if model.model.instruction_projector is not None:
            for p in model.model.instruction_projector.parameters():
                p.mul_(20)
    return model


def sample(model, instruction_len=5, text=(20, 21, 22), n_pages=1, seed=0):
    """One un-padded sample laid out like the processor does: bos, image tokens, \\n, instruction slots, text."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    n_img = cfg.num_image_tokens(VIEW, VIEW) * n_pages
    slots = {"tokens": instruction_len, "pooled": cfg.num_pooled_instruction_tokens, "none": 0}[cfg.instruction_fusion]
    ids = [BOS] + [IMG] * n_img + [13] + [INSTR] * slots + list(text)
    out = {
        "input_ids": torch.tensor([ids]),
        "pixel_values": torch.randn(n_pages, 3, VIEW, VIEW, generator=g),
    }
    if cfg.instruction_fusion != "none":
        out["instruction_input_ids"] = torch.randint(1000, 5000, (1, instruction_len), generator=g)
    return out


def left_pad_batch(samples, model):
    """Left-pad a list of samples into one generation batch (what the collator does for inference)."""
    length = max(s["input_ids"].shape[1] for s in samples)
    ilen = max(s.get("instruction_input_ids", torch.zeros(1, 0)).shape[1] for s in samples)
    ids, mask, iids, imask = [], [], [], []
    for s in samples:
        n = s["input_ids"].shape[1]
        ids.append(torch.cat([torch.full((1, length - n), PAD), s["input_ids"]], 1))
        mask.append(torch.cat([torch.zeros(1, length - n, dtype=torch.long), torch.ones(1, n, dtype=torch.long)], 1))
        if "instruction_input_ids" in s:
            m = s["instruction_input_ids"].shape[1]
            iids.append(torch.cat([s["instruction_input_ids"], torch.zeros(1, ilen - m, dtype=torch.long)], 1))
            imask.append(torch.cat([torch.ones(1, m, dtype=torch.long), torch.zeros(1, ilen - m, dtype=torch.long)], 1))
    batch = {
        "input_ids": torch.cat(ids),
        "attention_mask": torch.cat(mask),
        "pixel_values": torch.cat([s["pixel_values"] for s in samples]),
    }
    if iids:
        batch["instruction_input_ids"] = torch.cat(iids)
        batch["instruction_attention_mask"] = torch.cat(imask)
    return batch


# ---- fusion is live ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", ["tokens", "pooled"])
def test_instruction_changes_logits_and_gradients_reach_encoder(fusion):
    model = make_model(fusion).train()
    a = sample(model, seed=1)
    b = dict(a, instruction_input_ids=torch.randint(1000, 5000, a["instruction_input_ids"].shape))
    la, lb = model(**a).logits, model(**b).logits
    text_start = a["input_ids"].shape[1] - 3
    assert (la[0, text_start:] - lb[0, text_start:]).abs().max() > 1e-2  # answer positions see the instruction
    # causal: positions before the instruction slots cannot (up to matmul blocking noise in the MoE)
    torch.testing.assert_close(la[0, :5], lb[0, :5], atol=1e-5, rtol=1e-5)

    labels = a["input_ids"].clone()
    labels[:, :text_start] = -100
    model(**a, labels=labels).loss.backward()
    proj_grad = sum(p.grad.abs().sum() for p in model.model.instruction_projector.parameters())
    enc_grad = model.model.instruction_encoder.embeddings.word_embeddings.weight.grad
    assert proj_grad > 0
    assert enc_grad is not None and enc_grad[a["instruction_input_ids"][0]].abs().sum() > 0


def test_frozen_encoder_gets_no_gradient_but_projector_does():
    model = make_model().train()
    model.model.instruction_encoder.requires_grad_(False)
    a = sample(model)
    model(**a, labels=a["input_ids"]).loss.backward()
    assert all(p.grad is None for p in model.model.instruction_encoder.parameters())
    assert all(p.grad is not None for p in model.model.instruction_projector.parameters())


def test_fused_rows_land_at_placeholders():
    model = make_model()
    a = sample(model)
    out = model(**a, output_hidden_states=True)
    embeds = out.hidden_states[0][0]
    slots = (a["input_ids"][0] == INSTR).nonzero().flatten()
    expected = model.get_instruction_features(a["instruction_input_ids"])
    torch.testing.assert_close(embeds[slots], expected)
    img = (a["input_ids"][0] == IMG).nonzero().flatten()
    torch.testing.assert_close(embeds[img], torch.cat(model.get_image_features(a["pixel_values"])))


def test_pooled_fusion_uses_masked_mean():
    model = make_model("pooled")
    a = sample(model, instruction_len=4)
    padded = torch.cat([a["instruction_input_ids"], torch.zeros(1, 3, dtype=torch.long)], 1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0]])
    torch.testing.assert_close(
        model.get_instruction_features(padded, mask), model.get_instruction_features(a["instruction_input_ids"])
    )
    assert model.get_instruction_features(padded, mask).shape == (model.config.num_pooled_instruction_tokens, 64)


def test_fusion_report_diagnoses_live_and_missing_encoder():
    model = make_model()
    a = sample(model)
    b = dict(a, instruction_input_ids=a["instruction_input_ids"].flip(-1))
    report = model.instruction_fusion_report(a, b)
    assert report["instruction_encoder"] == "BertModel" and report["fusion_mode"] == "tokens"
    assert report["fused_instruction_rows"] == report["placeholder_tokens"] == 5
    assert report["next_token_logit_change_max"] > 1e-3 and report["instruction_used"]

    plain = make_model("none")
    c = sample(plain)
    report = plain.instruction_fusion_report(c, c)
    assert report["instruction_encoder"] is None and report["fused_instruction_rows"] == 0
    assert not report["instruction_used"]


# ---- exactness of caching, batching, checkpointing --------------------------------------------------------------
def test_cached_and_uncached_generation_agree():
    model = make_model()
    a = sample(model)
    kwargs = dict(max_new_tokens=12, do_sample=False, output_logits=True, return_dict_in_generate=True)
    cached = model.generate(**a, **kwargs)
    uncached = model.generate(**a, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(torch.stack(cached.logits), torch.stack(uncached.logits), atol=1e-4, rtol=1e-4)


def test_left_padded_batch_equals_one_by_one():
    model = make_model()
    samples = [
        sample(model, instruction_len=3, text=(20, 21), seed=1),
        sample(model, instruction_len=7, text=(30, 31, 32, 33, 34), n_pages=2, seed=2),
        sample(model, instruction_len=5, text=(40,), seed=3),
    ]
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=PAD, output_logits=True, return_dict_in_generate=True)
    batch = model.generate(**left_pad_batch(samples, model), **kwargs)
    for i, s in enumerate(samples):
        single = model.generate(**s, **kwargs)
        assert torch.equal(batch.sequences[i, -8:], single.sequences[0, -8:])
        torch.testing.assert_close(
            torch.stack(batch.logits)[:, i], torch.stack(single.logits)[:, 0], atol=1e-4, rtol=1e-4
        )


def test_gradient_checkpointing_gives_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = make_model().train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            assert model.model.language_model.gradient_checkpointing
        a = sample(model)
        model(**a, labels=a["input_ids"]).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 50
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4, msg=name)


def test_loss_is_mean_over_answer_tokens_and_honours_num_items_in_batch():
    model = make_model()
    a = sample(model)
    labels = torch.full_like(a["input_ids"], -100)
    labels[0, -3:] = a["input_ids"][0, -3:]
    out = model(**a, labels=labels)
    logits = out.logits[0, -4:-1]
    manual = nn.functional.cross_entropy(logits, a["input_ids"][0, -3:])
    torch.testing.assert_close(out.loss, manual)
    summed = model(**a, labels=labels, num_items_in_batch=torch.tensor(6)).loss
    torch.testing.assert_close(summed, manual * 3 / 6)


def test_local_tiles_match_transformers_unlimited_ocr_layout():
    """Pages with local tiles (gundam-style) are laid out like transformers' own unlimited_ocr implementation."""
    from transformers.models.unlimited_ocr.configuration_unlimited_ocr import UnlimitedOcrConfig
    from transformers.models.unlimited_ocr.modeling_unlimited_ocr import UnlimitedOcrModel

    model = make_model("none")
    cfg = model.config
    ref = UnlimitedOcrModel(UnlimitedOcrConfig(vision_config=tiny_vision_config(), text_config=tiny_text_config()))
    ref.load_state_dict(model.model.state_dict(), strict=False)
    torch.manual_seed(3)
    glob = torch.randn(2, 3, 256, 256)  # two pages, global views of 256 px -> 4x4 grid
    tiles = torch.randn(6 + 0, 3, VIEW, VIEW)  # page 0: 3 wide x 2 high tiles, page 1: no tiles
    crop = torch.tensor([[3, 2], [1, 1]])
    ours = model.get_image_features(glob, tiles, crop)
    theirs = ref.get_image_features(glob, tiles, [6, 0], [[3, 2], [1, 1]]).pooler_output
    for o, t, (w, h) in zip(ours, theirs, crop.tolist()):
        assert o.shape[0] == cfg.num_image_tokens(256, VIEW, w, h)
        torch.testing.assert_close(o, t)


# ---- bad input and bad config -----------------------------------------------------------------------------------
def test_placeholder_count_mismatch_is_a_clear_error():
    model = make_model()
    a = sample(model)
    short = dict(a, instruction_input_ids=a["instruction_input_ids"][:, :3])
    with pytest.raises(ValueError, match="instruction: the input has 5 placeholder tokens .* but 3 feature rows"):
        model(**short)
    with pytest.raises(ValueError, match="image: the input has 7 placeholder tokens .* but 14 feature rows"):
        model(**dict(a, pixel_values=torch.randn(2, 3, VIEW, VIEW)))
    with pytest.raises(ValueError, match="<image> placeholder tokens but no image inputs"):
        model(input_ids=a["input_ids"], instruction_input_ids=a["instruction_input_ids"])
    with pytest.raises(ValueError, match="images_spatial_crop asks for 6 local tiles, pixel_values_local has 0"):
        model.get_image_features(a["pixel_values"], None, torch.tensor([[3, 2]]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"text_config": dict(tiny_text_config(), hidden_size=60, num_attention_heads=8)}, "not a multiple"),
        ({"instruction_fusion": "cross"}, "instruction_fusion must be one of"),
        ({"instruction_projector_type": "conv"}, "instruction_projector_type must be one of"),
        ({"image_token_id": 600}, "image_token_id=600 is outside the decoder vocab"),
        ({"instruction_token_id": 510}, "must differ"),
        ({"num_pooled_instruction_tokens": 0}, "num_pooled_instruction_tokens must be >= 1"),
        (
            {"instruction_encoder_config": {"model_type": "bert", "hidden_size": None}},
            "has no hidden_size|hidden_size",
        ),
    ],
)
def test_bad_config_values_raise(kwargs, message):
    base = dict(
        vision_config=tiny_vision_config(),
        text_config=tiny_text_config(),
        instruction_encoder_config=tiny_bert_config(),
        image_token_id=IMG,
        instruction_token_id=INSTR,
    )
    with pytest.raises(Exception, match=message):
        DeepSynthConfig(**{**base, **kwargs})


def test_clip_width_must_match_sam_output():
    vision = tiny_vision_config()
    vision["encoder_config"]["hidden_size"] = 32
    with pytest.raises(Exception, match="must equal sam_config.downsample_channels"):
        DeepSynthConfig(vision_config=vision, text_config=tiny_text_config(), image_token_id=IMG, instruction_token_id=INSTR)


def test_beam_search_repeats_each_samples_own_pages():
    """Beams and return sequences with page inputs: each sample's pages (1 or 2) expanded to its own beams, so a
    left-padded batch decodes as each sample does alone, from pixels or from precomputed image_features."""
    model = make_model()
    samples = [
        sample(model, instruction_len=3, text=(20, 21), seed=1),
        sample(model, instruction_len=7, text=(30, 31, 32, 33, 34), n_pages=2, seed=2),
    ]
    kwargs = dict(max_new_tokens=6, num_beams=3, num_return_sequences=2, do_sample=False, pad_token_id=PAD)
    batch = left_pad_batch(samples, model)
    from_pixels = model.generate(**batch, **kwargs)[:, -6:]
    assert from_pixels.shape == (4, 6)
    for i, s in enumerate(samples):
        assert torch.equal(from_pixels[2 * i : 2 * i + 2], model.generate(**s, **kwargs)[:, -6:])
    features = torch.cat(model.get_image_features(batch.pop("pixel_values")))
    assert torch.equal(model.generate(**batch, image_features=features, **kwargs)[:, -6:], from_pixels)


def test_beam_search_refuses_a_prefilled_cache_clearly():
    model = make_model()
    a = sample(model)
    n = a["input_ids"].shape[1] - 1
    prefix = model(input_ids=a["input_ids"][:, :n], pixel_values=a["pixel_values"],
                   instruction_input_ids=a["instruction_input_ids"], use_cache=True)
    with pytest.raises(ValueError, match="cannot expand a pre-filled cache"):
        model.generate(input_ids=a["input_ids"], image_features=prefix.image_features, cache=prefix.cache,
                       num_beams=2, max_new_tokens=2)


# ---- save / load -------------------------------------------------------------------------------------------------
def test_save_load_round_trip_and_fresh_process_remote_code(tmp_path):
    model = make_model()
    a = sample(model)
    model.save_pretrained(tmp_path / "ckpt")
    files = set(os.listdir(tmp_path / "ckpt"))
    assert {"configuration_deepsynth.py", "modeling_deepsynth.py", "model.safetensors", "config.json"} <= files
    reloaded = DeepSynthForConditionalGeneration.from_pretrained(tmp_path / "ckpt").eval()
    expected = model(**a).logits
    torch.testing.assert_close(reloaded(**a).logits, expected, atol=0, rtol=0)
    assert reloaded.generation_config.suppress_tokens == [IMG, INSTR]

    torch.save({k: v for k, v in a.items()}, tmp_path / "inputs.pt")
    torch.save(expected, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys, torch
        class Block(importlib.abc.MetaPathFinder):  # this repo must not be importable here
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("deepsynth", "modeling_deepsynth", "configuration_deepsynth"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText
        d = {str(tmp_path / "ckpt")!r}
        cfg = AutoConfig.from_pretrained(d, trust_remote_code=True)
        assert type(cfg).__name__ == "DeepSynthConfig" and cfg.instruction_fusion == "tokens", cfg
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        for auto in (AutoModelForCausalLM, AutoModelForImageTextToText):
            m = auto.from_pretrained(d, trust_remote_code=True).eval()
            assert type(m).__name__ == "DeepSynthForConditionalGeneration"
            assert type(m).__module__.startswith("transformers_modules"), type(m).__module__
            torch.testing.assert_close(m(**inputs).logits, expected, atol=0, rtol=0)
        base = AutoModel.from_pretrained(d, trust_remote_code=True)  # as DeepSeek-OCR: the generation class
        assert type(base).__name__ == "DeepSynthForConditionalGeneration"
        assert type(base.model).__name__ == "DeepSynthModel"
        print("FRESH-OK")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FRESH-OK" in result.stdout


def test_checkpoint_keys_are_the_modules_own_names(tmp_path):
    """Trainer's resume reads model.safetensors with a plain load_state_dict: the saved names must be ours."""
    from safetensors.torch import load_file

    model = make_model()
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert set(saved) == set(model.state_dict())
    fresh = make_model(seed=1)
    fresh.load_state_dict(saved, strict=True)
    a = sample(model)
    torch.testing.assert_close(fresh(**a).logits, model(**a).logits, atol=0, rtol=0)
