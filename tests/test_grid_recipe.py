"""Issue 16's byte-grid recipe (recipes/demo/grid_*.py): stage T puts the page grid in front of the decoder as a fixed
cell code, stage V trains the vision tower to write that code, grid_assemble.py joins them into one checkpoint."""

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes" / "demo"))

import grid_align_stage  # noqa: E402
import grid_assemble  # noqa: E402
import grid_soup  # noqa: E402
import grid_text_stage  # noqa: E402
import make_processor  # noqa: E402
import package_demo  # noqa: E402
from modeling_deepsynth import DeepSynthForConditionalGeneration  # noqa: E402

from deepsynth.data.synthetic import iter_examples  # noqa: E402
from deepsynth.training.labels import char_cell_labels  # noqa: E402

TINY = ["--hidden", "32", "--layers", "1"]


@pytest.fixture(scope="module")
def processor_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid") / "processor"
    make_processor.make_processor(geometry="byte_grid").save_pretrained(str(out))
    return out


def tiny_build(processor_dir, cells_path):
    args = grid_text_stage.argparse.Namespace(
        processor=str(processor_dir), config=str(grid_text_stage.HERE / "grid" / "model_config.json"),
        hidden=32, layers=1, seed=0, cells=cells_path)
    return grid_text_stage.build(args)


def test_byte_grid_processor(processor_dir):
    from processing_deepsynth import DeepSynthProcessor

    processor = DeepSynthProcessor.from_pretrained(str(processor_dir))
    assert len(processor.tokenizer) == 261  # 5 special tokens + 256 bytes: one token per character
    row = next(iter_examples("train", 1, seed=0))[0]
    assert processor.tokenizer.decode(processor.tokenizer(row["answer"])["input_ids"]) == row["answer"]
    assert len(processor.tokenizer(row["answer"])["input_ids"]) == len(row["answer"].encode())
    assert int(processor.image_processor.preprocess(row["text"])["num_image_tokens"][0]) == 16 * 17 + 1


def test_cell_code_is_fixed_and_shared(processor_dir, tmp_path):
    path = tmp_path / "cells.pt"
    _, _, first = tiny_build(processor_dir, path)
    assert path.exists() and not any(p.requires_grad for p in first.parameters())
    _, _, again = tiny_build(processor_dir, path)
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    labels = torch.tensor([[3, 0], [0, 0]])
    assert torch.equal(first(labels)[0], first.slots[0].weight[3] + first.slots[1].weight[0])


def test_grid_rows_sit_where_the_vision_rows_would(processor_dir, tmp_path):
    model, processor, cells = tiny_build(processor_dir, tmp_path / "cells.pt")
    batcher = grid_text_stage.GridBatcher(model, processor, cells)
    row = next(iter_examples("train", 1, seed=3))[0]
    ex = batcher.example(row)
    rows = batcher.page_rows([ex])  # (N, D)
    labels = char_cell_labels(processor.image_processor, row["text"])
    g = labels.shape[1]
    assert rows.shape[0] == ex["input_ids"].count(model.config.image_token_id) == len(labels) * (g * (g + 1) + 1)
    r, c = 2, 5  # cell (2, 5) of page 0 is row r * (g + 1) + c; a row ends with image_newline
    assert torch.equal(rows[r * (g + 1) + c], cells(labels[0, r, c]))
    assert torch.equal(rows[r * (g + 1) + g], model.model.image_newline)
    assert torch.equal(rows[g * (g + 1)], model.model.view_separator)


def test_stage_t_learns_a_fixed_batch(processor_dir, tmp_path):
    torch.manual_seed(0)
    model, processor, cells = tiny_build(processor_dir, tmp_path / "cells.pt")
    batcher = grid_text_stage.GridBatcher(model, processor, cells)
    rows = [r for r, _ in iter_examples("train", 4, seed=0, tasks=("qa",))]
    params = grid_text_stage.trainable(model)
    assert not any(p.requires_grad for p in model.model.instruction_encoder.parameters())
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    first = batcher.loss(rows, 0.0).item()
    for _ in range(40):
        loss = batcher.loss(rows, 0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first, (first, loss.item())


def test_stages_run_and_assemble(processor_dir, tmp_path):
    cells = tmp_path / "cells.pt"
    common = ["--processor", str(processor_dir), "--cells", str(cells)]
    grid_text_stage.main([*common, *TINY, "--out", str(tmp_path / "T"), "--steps", "6", "--stop-after", "2",
                          "--batch", "2", "--eval-every", "2", "--eval-rows", "1", "--eval-packets", "1",
                          "--eval-documents", "1", "--eval-lines", "1", "--warmup", "1"])
    assert torch.load(tmp_path / "T" / "state.pt", weights_only=False)["step"] == 2
    with pytest.raises(ValueError, match="code of shape"):  # the code is 32 wide, the config's decoder 128
        grid_align_stage.main([*common, "--out", str(tmp_path / "V"), "--steps", "1"])
    grid_align_stage.main([*common, "--hidden", "32", "--out", str(tmp_path / "V"), "--steps", "2", "--batch", "2", "--warmup", "1"])
    log = (tmp_path / "T" / "log.jsonl").read_text().splitlines()
    assert all(k in log[-1] for k in ("test_values/qa", "random_lines_cer", "transcription_cer", "packets/qa"))
    # --evaluate-only scores the saved weights on the same rows: the last logged evaluation, number for number
    bound = tmp_path / "bound.json"
    grid_text_stage.main([*common, *TINY, "--init", str(tmp_path / "T"), "--evaluate-only", str(bound),
                          "--eval-rows", "1", "--eval-packets", "1", "--eval-documents", "1", "--eval-lines", "1"])
    scored = json.loads(bound.read_text())
    assert scored["rows"] == 1 and {k: scored[k] for k in json.loads(log[-1])["eval"]} == json.loads(log[-1])["eval"]
    vision = torch.load(tmp_path / "V" / "vision.pt")
    assert vision and all(k.startswith(("model.vision_tower.", "model.multi_modal_projector.")) for k in vision)
    grid_assemble.main(["--stage-t", str(tmp_path / "T"), "--stage-v", str(tmp_path / "V"), "--out", str(tmp_path / "TV")])
    joined = DeepSynthForConditionalGeneration.from_pretrained(tmp_path / "TV").state_dict()
    decoder = DeepSynthForConditionalGeneration.from_pretrained(tmp_path / "T").state_dict()
    for key, value in vision.items():
        assert torch.equal(joined[key], value), key
    for key in (k for k in decoder if k.startswith("model.language_model.")):
        assert torch.equal(joined[key], decoder[key]), key
    package_demo.main(["--model", str(tmp_path / "TV"), "--out", str(tmp_path / "demo"), "--recipe-minutes", "2 s"])
    card = (tmp_path / "demo" / "README.md").read_text()
    assert "up to 4 pages of 256x256 px, DejaVuSansMono at 13 px: 16 lines x 32 characters a page, 273 vision" in card
    assert (tmp_path / "demo" / "DejaVuSansMono-LICENSE").is_file()
    packaged = DeepSynthForConditionalGeneration.from_pretrained(tmp_path / "demo")
    assert packaged.dtype == torch.float32  # stored float16, loaded float32
    for key, value in packaged.state_dict().items():
        assert torch.equal(value, joined[key].half().float()), key
    # resuming a finished stage is a no-op that loads its state
    grid_text_stage.main([*common, *TINY, "--out", str(tmp_path / "T"), "--steps", "2", "--batch", "2"])


def test_the_committed_tower_is_exported_only_for_its_own_cell_code(tmp_path):
    """The recipe continues from the committed model in a fresh checkout: the seed-made code is the one its tower
    writes (exported exactly), and a tower is refused for a code it was not trained on."""
    from safetensors.torch import load_file

    demo = ROOT / "checkpoints" / "deepsynth-demo"
    common = ["--processor", str(demo), "--from-checkpoint", str(demo)]
    grid_align_stage.main([*common, "--cells", str(tmp_path / "cells.pt"), "--out", str(tmp_path / "V")])
    vision, stored = torch.load(tmp_path / "V" / "vision.pt"), load_file(demo / "model.safetensors")
    assert len(vision) > 50 and all(torch.equal(v, stored[k].float()) for k, v in vision.items())
    ip = grid_text_stage.DeepSynthProcessor.from_pretrained(str(demo)).image_processor
    other = grid_text_stage.CellEmbedder(len(ip.ocr_charset) + 1, ip.ocr_cell_slots, 128, seed=1)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not write this cell code"):
        grid_align_stage.main([*common, "--cells", str(tmp_path / "other.pt"), "--out", str(tmp_path / "V2")])
    assert not (tmp_path / "V2" / "vision.pt").exists()


def test_a_grown_decoder_answers_as_before_and_then_learns(processor_dir, tmp_path):
    """--init a 2-layer stage with --layers 5: layers 0 and 1 move to 0 and 2, the three new ones start as
    identities (zero output projections), so the logits are the old decoder's; then every layer trains."""
    cells = tmp_path / "cells.pt"
    common = ["--processor", str(processor_dir), "--cells", str(cells), "--hidden", "32", "--batch", "2",
              "--eval-rows", "1", "--eval-packets", "1", "--eval-documents", "1", "--eval-lines", "1", "--warmup", "1"]
    grid_text_stage.main([*common, "--layers", "2", "--out", str(tmp_path / "T"), "--steps", "3", "--eval-every", "3"])
    args = grid_text_stage.argparse.Namespace(processor=str(processor_dir), hidden=32, seed=1, cells=cells,
                                              config=str(grid_text_stage.HERE / "grid" / "model_config.json"))
    small, processor, code = grid_text_stage.build(grid_text_stage.argparse.Namespace(**vars(args), layers=2))
    grown, _, _ = grid_text_stage.build(grid_text_stage.argparse.Namespace(**vars(args), layers=5))
    grid_text_stage.load_stage(small, tmp_path / "T")
    grid_text_stage.load_stage(grown, tmp_path / "T")
    small.eval(), grown.eval()  # no dropout in the frozen MiniLM
    layers = grown.model.language_model.layers
    assert len(layers) == 5 and not layers[1].self_attn.o_proj.weight.any() and layers[2].self_attn.o_proj.weight.any()
    assert torch.equal(layers[2].mlp.up_proj.weight, small.model.language_model.layers[1].mlp.up_proj.weight)
    rows = [r for r, _ in iter_examples("validation", 2, seed=4, tasks=("qa",))]
    old_batcher, new_batcher = (grid_text_stage.GridBatcher(m, processor, code) for m in (small, grown))
    examples = [old_batcher.example(r) for r in rows]
    batch = processor.collate(examples, padding_side="right")
    with torch.no_grad():
        before = old_batcher.logits(examples, batch["input_ids"], batch["attention_mask"])
        after = new_batcher.logits(examples, batch["input_ids"], batch["attention_mask"])
    assert (before - after).abs().max() < 1e-5 and before.abs().max() > 0.1
    with pytest.raises(ValueError, match="cannot grow"):
        grid_text_stage.grown_decoder_state({}, 3, 2)
    # the grown stage trains: its new layers' output projections move off zero
    grid_text_stage.main([*common, "--layers", "5", "--init", str(tmp_path / "T"), "--out", str(tmp_path / "G"),
                          "--steps", "2", "--eval-every", "2"])
    trained = DeepSynthForConditionalGeneration.from_pretrained(tmp_path / "G").model.language_model.layers
    assert len(trained) == 5 and trained[1].self_attn.o_proj.weight.abs().sum() > 0


def test_a_widened_decoder_answers_as_before_and_then_learns(processor_dir, tmp_path):
    """--init a stage with --intermediate above its MLP size: units split in two (copied input rows, the down
    projection shared half and half), so the logits are the old decoder's (exactly without the symmetry-breaking
    noise, nearly with it); the copies then train apart; grid_soup.py averages the result with its narrower start."""
    cells = tmp_path / "cells.pt"
    common = ["--processor", str(processor_dir), "--cells", str(cells), "--hidden", "32", "--layers", "2",
              "--batch", "2", "--eval-rows", "1", "--eval-packets", "1", "--eval-documents", "1", "--eval-lines", "1",
              "--warmup", "1"]
    grid_text_stage.main([*common, "--out", str(tmp_path / "T"), "--steps", "3", "--eval-every", "3"])
    args = dict(processor=str(processor_dir), hidden=32, layers=2, seed=1, cells=cells,
                config=str(grid_text_stage.HERE / "grid" / "model_config.json"))
    narrow, processor, code = grid_text_stage.build(grid_text_stage.argparse.Namespace(**args, intermediate=None))
    wide, _, _ = grid_text_stage.build(grid_text_stage.argparse.Namespace(**args, intermediate=160))
    grid_text_stage.load_stage(narrow, tmp_path / "T")
    state = grid_text_stage.stage_state(tmp_path / "T", 2)
    rows = [r for r, _ in iter_examples("validation", 2, seed=4, tasks=("qa",))]
    old_batcher, new_batcher = (grid_text_stage.GridBatcher(m.eval(), processor, code) for m in (narrow, wide))
    examples = [old_batcher.example(r) for r in rows]
    batch = processor.collate(examples, padding_side="right")
    with torch.no_grad():
        before = old_batcher.logits(examples, batch["input_ids"], batch["attention_mask"])
        wide.load_state_dict(grid_text_stage.widened_mlp_state(state, 160, noise=0.0), strict=False)
        exact = new_batcher.logits(examples, batch["input_ids"], batch["attention_mask"])
        grid_text_stage.load_stage(wide, tmp_path / "T")  # the default noise
        near = new_batcher.logits(examples, batch["input_ids"], batch["attention_mask"])
    assert (before - exact).abs().max() < 1e-5 and before.abs().max() > 0.1
    assert 0 < (before - near).abs().max() < 0.01 * before.abs().max()
    mlp = wide.model.language_model.layers[1].mlp
    assert mlp.up_proj.weight.shape == (160, 32)
    assert torch.equal(mlp.down_proj.weight[:, 96:], mlp.down_proj.weight[:, :64])  # shared half and half
    with pytest.raises(ValueError, match="cannot widen"):
        grid_text_stage.widened_mlp_state(state, 64)
    grid_text_stage.main([*common, "--intermediate", "160", "--init", str(tmp_path / "T"), "--out",
                          str(tmp_path / "W"), "--steps", "2", "--eval-every", "2"])
    trained = DeepSynthForConditionalGeneration.from_pretrained(tmp_path / "W").model.language_model.layers
    down = trained[1].mlp.down_proj.weight
    assert not torch.allclose(down[:, 96:], down[:, :64])  # the copies move apart
    grid_soup.main(["--tuned", str(tmp_path / "W"), "--start", str(tmp_path / "T"), "--alpha", "0.5",
                    "--out", str(tmp_path / "S")])
    soup = DeepSynthForConditionalGeneration.from_pretrained(tmp_path / "S").model.language_model.layers[1].mlp
    start = grid_text_stage.widened_mlp_state(state, 160)
    key = "model.language_model.layers.1.mlp.up_proj.weight"
    assert torch.allclose(soup.up_proj.weight, (trained[1].mlp.up_proj.weight + start[key].float()) / 2, atol=1e-6)


def test_cached_greedy_answers_equal_the_uncached_ones(tmp_path):
    """Stage T's evaluation decodes with the KV cache; it must write exactly what recomputing the whole prompt
    every step writes (a page is 273 positions, so the cache is what makes an evaluation affordable). On the
    committed model, whose answers depend on where things are (an untrained decoder's barely do)."""
    demo = ROOT / "checkpoints" / "deepsynth-demo"
    processor = grid_text_stage.DeepSynthProcessor.from_pretrained(str(demo))
    model = DeepSynthForConditionalGeneration.from_pretrained(demo).eval()
    cells = grid_text_stage.CellEmbedder.for_processor(processor, 128, tmp_path / "cells.pt")
    batcher = grid_text_stage.GridBatcher(model, processor, cells, from_pixels=True)
    rows = [r for r, _ in iter_examples("test_values", 6, seed=1, tasks=("qa", "transcription"))]
    answers = [batcher.answer(r, 48) for r in rows]
    assert answers == [batcher.answer(r, 48, use_cache=False) for r in rows]
    assert sum(a == r["answer"] for a, r in zip(answers, rows) if r["task"] == "qa") >= 1
    assert all(len(a) >= 40 for a, r in zip(answers, rows) if r["task"] == "transcription")


def test_stage_t_trains_on_long_packets(processor_dir, tmp_path):
    """--packet-batches 1: every batch is multi-document packets, laid out on up to --max-pages pages (saved
    with the output, so the checkpoint reads documents that long)."""
    from processing_deepsynth import DeepSynthProcessor

    args = ["--processor", str(processor_dir), "--cells", str(tmp_path / "cells.pt"), *TINY, "--out",
            str(tmp_path / "T"), "--steps", "1", "--batch", "2", "--packet-batches", "1", "--packet-batch", "2",
            "--max-pages", "6", "--eval-every", "1", "--eval-rows", "1", "--eval-packets", "1", "--eval-documents", "1",
            "--eval-lines", "1", "--warmup", "1"]
    parsed = grid_text_stage.parse_args(args)
    _, processor, _ = grid_text_stage.build(parsed)
    batch = next(grid_text_stage.training_batches(parsed, processor.image_processor))
    assert len(batch) == 2 and all(r["doc_kind"] == "packet" for r in batch)
    pages = [len(processor.image_processor.layout_text(r["text"])) for r in batch]
    assert all(p <= 6 for p in pages) and max(pages) > 2, pages
    grid_text_stage.main(args)
    assert DeepSynthProcessor.from_pretrained(str(tmp_path / "T")).image_processor.max_pages == 6
    assert "packets/qa" in (tmp_path / "T" / "log.jsonl").read_text()


def test_learned_code_starts_at_the_byte_embeddings(processor_dir, tmp_path):
    args = grid_text_stage.argparse.Namespace(
        processor=str(processor_dir), config=str(grid_text_stage.HERE / "grid" / "model_config.json"),
        hidden=32, layers=1, seed=0, cells=tmp_path / "code.pt", learn_code=True, out=tmp_path / "T")
    model, processor, cells = grid_text_stage.build(args)
    charset = processor.image_processor.ocr_charset
    embeddings = model.get_input_embeddings().weight
    k = charset.index("$") + 1  # class of "$" (0 = empty slot)
    assert torch.equal(cells.slots[0].weight[k], embeddings[processor.tokenizer.convert_tokens_to_ids("$")])
    assert not torch.allclose(cells.slots[1].weight[k], cells.slots[0].weight[k])  # the slots differ
    assert torch.equal(cells.slots[0].weight[0], torch.zeros(32)) and all(p.requires_grad for p in cells.parameters())
    args.cells.write_bytes(b"")  # a code already at --cells: a fresh learned run refuses to overwrite it
    with pytest.raises(ValueError, match="exists"):
        grid_text_stage.build(args)


def test_evaluate_demo_refuses_missing_data_before_running(tmp_path):
    import evaluate_demo

    with pytest.raises(SystemExit) as stop:
        evaluate_demo.main(["--model", "checkpoints/deepsynth-demo", "--data", str(tmp_path), "--transcription", ""])
    assert stop.value.code == 2


def test_calibration_compares_the_confident_half_with_the_rest():
    import evaluate_demo

    records = [{"prediction": p, "answer": "$45.2M", "confidence": c}
               for p, c in [("$45.2M", 0.99), ("$45.2M", 0.9), ("$45.3M", 0.8), ("$45.2M", 0.5), ("$1M", 0.2)]]
    assert evaluate_demo.calibration(records) == {"em_top_half": 100.0, "em_bottom_half": 33.33,
                                                  "median_confidence": 0.8}
    with pytest.raises(ValueError, match="at least 2"):
        evaluate_demo.calibration(records[:1])


def test_stage_t_from_the_tower_sees_what_the_product_computes(tmp_path):
    """`--pages-from-tower`: the decoder trains on the frozen tower's features of the rendered pages, so its logits
    are the full model's on the processor's own inputs (pixels in), and nothing flows back into the tower."""
    demo = ROOT / "checkpoints" / "deepsynth-demo"
    processor = grid_text_stage.DeepSynthProcessor.from_pretrained(str(demo))
    model = DeepSynthForConditionalGeneration.from_pretrained(demo).eval()
    cells = grid_text_stage.CellEmbedder.for_processor(processor, 128, tmp_path / "cells.pt")
    row = next(iter_examples("test_values", 1, seed=1, tasks=("qa",)))[0]
    pixels = grid_text_stage.GridBatcher(model, processor, cells, from_pixels=True)
    ex = pixels.example(row)
    batch = processor.collate([ex], padding_side="right")
    rendered = processor.collate([processor.encode_example(row["text"], row["instruction"], row["answer"])],
                                 padding_side="right")  # what the product feeds the model: pixels
    assert torch.equal(rendered["input_ids"], batch["input_ids"])
    full = model(**{k: v for k, v in rendered.items() if k != "labels"}).logits  # (1, L, V)
    ours = pixels.logits([ex], batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(ours, full, rtol=1e-4, atol=1e-4)
    code = grid_text_stage.GridBatcher(model, processor, cells).page_rows([ex])  # the exact cell code
    tower = pixels.page_rows([ex])
    assert tower.shape == code.shape and 0 < F.mse_loss(tower, code).item() < 0.01  # close to the code, not it
    grid_text_stage.trainable(model)
    pixels.loss([row], 0.1).backward()
    assert all(p.grad is None for p in model.model.vision_tower.parameters())
    assert model.model.language_model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_soup_interpolates_a_tuned_decoder_with_the_smaller_one_it_grew_from(tmp_path):
    """grid_soup.py: alpha x tuned + (1 - alpha) x start, the start grown first (new layers as identities)."""
    from safetensors.torch import load_file, save_file

    def stage(folder, state, layers):
        folder.mkdir()
        save_file(state, folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps({"text_config": {"num_hidden_layers": layers}}))

    layer = "model.language_model.layers."
    start = {f"{layer}0.self_attn.o_proj.weight": torch.full((2, 2), 4.0), f"{layer}0.mlp.up_proj.weight":
             torch.full((2, 2), 2.0), "model.norm.weight": torch.zeros(2)}
    tuned = {f"{layer}{i}.{name}": torch.full((2, 2), 8.0) for i in (0, 1) for name in ("self_attn.o_proj.weight",
                                                                                      "mlp.up_proj.weight")}
    tuned["model.norm.weight"] = torch.ones(2)
    stage(tmp_path / "start", start, 1), stage(tmp_path / "tuned", tuned, 2)
    grid_soup.main(["--tuned", str(tmp_path / "tuned"), "--start", str(tmp_path / "start"), "--alpha", "0.25",
                    "--out", str(tmp_path / "soup")])
    soup = load_file(tmp_path / "soup" / "model.safetensors")
    assert soup.keys() == tuned.keys()
    assert torch.equal(soup[f"{layer}0.self_attn.o_proj.weight"], torch.full((2, 2), 5.0))  # 0.25 * 8 + 0.75 * 4
    assert torch.equal(soup[f"{layer}1.self_attn.o_proj.weight"], torch.full((2, 2), 2.0))  # the new layer's start: 0
    assert torch.equal(soup[f"{layer}1.mlp.up_proj.weight"], torch.full((2, 2), 3.5))  # copied from layer 0: 2
    assert torch.equal(soup["model.norm.weight"], torch.full((2,), 0.25))
    assert json.loads((tmp_path / "soup" / "config.json").read_text())["text_config"]["num_hidden_layers"] == 2
    with pytest.raises(ValueError, match="tuned \\(2, 2\\) vs start \\(3,\\)"):
        grid_soup.interpolated({"w": torch.zeros(2, 2)}, {"w": torch.zeros(3)}, 0.5)
    with pytest.raises(ValueError, match="lacks 1"):
        grid_soup.interpolated({"w": torch.zeros(2)}, {}, 0.5)
