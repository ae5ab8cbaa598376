"""Drop-in for DeepSeek-OCR users: AutoModel, infer(), loud loading, the repetition guard (issue 14)."""

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from _processor_helpers import byte_tokenizer
from configuration_deepsynth import DeepSynthConfig
from deepsynth.tiny import tiny_bert_config, tiny_config
from generation_deepsynth import NGramRepetitionGuard, exempt_token_ids, repetition_guard
from infer_deepsynth import draw_grounding, markdown_of, parse_grounding, write_results
from modeling_deepsynth import DeepSynthForConditionalGeneration

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO = REPO_ROOT / "checkpoints" / "deepsynth-demo"
BOS = 0
CYCLE = [10, 11, 12, 13, 14]  # the looping model writes these forever


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    yield


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    return DeepSynthForConditionalGeneration(tiny_config(**kw)).eval()


# ---- AutoModel resolves to the generation class ------------------------------------------------------------------
def test_automodel_is_the_generation_class_in_a_fresh_process(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "ckpt")
    saved = json.loads((tmp_path / "ckpt" / "config.json").read_text())["auto_map"]
    demo = json.loads((DEMO / "config.json").read_text())["auto_map"]
    for auto_map in (saved, demo):
        for auto in ("AutoModel", "AutoModelForCausalLM", "AutoModelForImageTextToText"):
            assert auto_map[auto] == "modeling_deepsynth.DeepSynthForConditionalGeneration", auto_map
    # the modules modeling imports travel with the checkpoint (transformers copies relative imports)
    files = set(os.listdir(tmp_path / "ckpt"))
    assert {"generation_deepsynth.py", "infer_deepsynth.py", "processing_deepsynth.py"} <= files
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):  # this repo must not be importable here
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("deepsynth", "modeling_deepsynth", "generation_deepsynth", "infer_deepsynth"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText
        for auto in (AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText):
            m = auto.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True)
            assert type(m).__name__ == "DeepSynthForConditionalGeneration", type(m)
            assert type(m.model).__name__ == "DeepSynthModel" and callable(m.infer) and callable(m.generate)
        print("FRESH-OK")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FRESH-OK" in result.stdout
    assert "UNEXPECTED" not in result.stdout + result.stderr  # no `lm_head.weight | UNEXPECTED` row
    assert "MISSING" not in result.stdout + result.stderr


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_processor_load_has_no_model_type_warning():
    from transformers.utils import logging as hf_logging

    from processing_deepsynth import DeepSynthProcessor

    records = _Records()
    root = hf_logging.get_logger("transformers")
    root.addHandler(records)
    try:
        processor = DeepSynthProcessor.from_pretrained(DEMO)
    finally:
        root.removeHandler(records)
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == 3
    assert not [m for m in records.messages if "to instantiate a model of type" in m], records.messages


def test_from_deepseek_ocr_loads_the_encoder_in_the_same_pass(fixture_dir, tmp_path):
    """The load report lists only what really starts fresh (the projector), not the encoder loaded after."""
    from transformers import BertModel

    from test_parity import fixture_config

    torch.manual_seed(3)
    encoder = BertModel(BertModel.config_class(**{k: v for k, v in tiny_bert_config().items() if k != "model_type"}))
    encoder.save_pretrained(tmp_path / "encoder")
    cfg = fixture_config(fixture_dir, instruction_fusion="tokens", instruction_encoder_config=tiny_bert_config())
    model, info = DeepSynthForConditionalGeneration.from_deepseek_ocr(
        str(fixture_dir), config=cfg, instruction_encoder=str(tmp_path / "encoder"), output_loading_info=True
    )
    assert info["missing_keys"] and all(k.startswith("model.instruction_projector.") for k in info["missing_keys"])
    assert info["unexpected_keys"] == set()
    ours = model.model.instruction_encoder.state_dict()
    for name, value in encoder.state_dict().items():
        assert torch.equal(ours[name], value), name


# ---- loud loading ------------------------------------------------------------------------------------------------
def test_missing_weights_fail_with_their_names(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    dropped = sorted(k for k in weights if k.startswith("model.instruction_projector."))
    save_file({k: v for k, v in weights.items() if k not in dropped}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ValueError, match="lacks 4 weight tensors") as err:
        DeepSynthForConditionalGeneration.from_pretrained(tmp_path)
    for name in dropped:
        assert name in str(err.value)
    # asked for: a fresh projector, everything else loaded
    loaded = DeepSynthForConditionalGeneration.from_pretrained(tmp_path, allow_missing="model.instruction_projector.")
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_truncated_weight_file_is_named(tmp_path):
    tiny_model(instruction_fusion="none").save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="cannot read weight file .*model.safetensors"):
        DeepSynthForConditionalGeneration.from_pretrained(tmp_path)


# ---- infer() -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(fixture_dir):
    from test_parity import fixture_config

    model = DeepSynthForConditionalGeneration.from_deepseek_ocr(
        str(fixture_dir), config=fixture_config(fixture_dir, instruction_fusion="none")
    )
    return model.eval(), byte_tokenizer(image_token_id=511)


def test_infer_streams_prints_compression_and_saves_results(reference, fixture_dir, tmp_path):
    model, tokenizer = reference
    page = str(fixture_dir / "page_a.png")
    expected = model.infer(tokenizer, prompt="<image>\nFree OCR. ", image_file=page, base_size=256, image_size=256,
                           crop_mode=False, eval_mode=True, max_new_tokens=12)
    out = io.StringIO()
    with redirect_stdout(out):
        text = model.infer(tokenizer, prompt="<image>\nFree OCR. ", image_file=page, output_path=str(tmp_path),
                           base_size=256, image_size=256, crop_mode=False, test_compress=True, save_results=True,
                           max_new_tokens=12, no_repeat_ngram_size=35)
    printed = out.getvalue()
    assert text == expected
    assert printed.startswith(tokenizer.decode(tokenizer.encode(expected, add_special_tokens=False)))  # streamed
    # 256 px squashed view: 4x4 grid = 16 vision tokens cover the page
    assert "valid image tokens:  16\n" in printed and "image size:  (600, 400)\n" in printed
    text_tokens = len(tokenizer.encode(text, add_special_tokens=False))
    assert f"output texts tokens (valid):  {text_tokens}\n" in printed
    assert f"compression ratio:  {round(text_tokens / 16, 2)}\n" in printed
    assert (tmp_path / "result.mmd").read_text(encoding="utf-8") == text  # no grounding tags in this output
    assert Image.open(tmp_path / "result_with_boxes.jpg").size == (600, 400)
    assert (tmp_path / "images").is_dir()


def test_infer_bad_calls(reference, fixture_dir):
    model, tokenizer = reference
    page = str(fixture_dir / "page_a.png")
    with pytest.raises(ValueError, match="needs a prompt"):
        model.infer(tokenizer, prompt="", image_file=page)
    with pytest.raises(ValueError, match="exactly one <image>"):
        model.infer(tokenizer, prompt="Free OCR.", image_file=page, eval_mode=True)
    with pytest.raises(ValueError, match="needs an output_path"):
        model.infer(tokenizer, prompt="<image>\nFree OCR.", image_file=page, save_results=True)
    with pytest.raises(ValueError, match="no instruction encoder"):
        model.infer(tokenizer, prompt="<image>\nFree OCR.", image_file=page, base_size=256, image_size=256,
                    crop_mode=False, eval_mode=True, instruction="Summarise.")


def test_prompt_with_fused_instruction_layout():
    """instruction= next to an original prompt: laid out as in training ("\\n", <instruction> x k, then the
    prompt's own text where training has the decoder instruction text, then the answer separator)."""
    from _processor_helpers import byte_ids, minilm_tokenizer

    from processing_deepsynth import DeepSynthImageProcessor, DeepSynthProcessor

    processor = DeepSynthProcessor(DeepSynthImageProcessor(mode=None, base_size=128), byte_tokenizer(300, 301),
                                   minilm_tokenizer())
    page = Image.new("RGB", (100, 80), "white")
    ex = processor.encode_example([page], "total?", prompt=" Page 1: <image>\nFree OCR. ")
    k = len(ex["instruction_input_ids"])
    assert ex["input_ids"] == ([0] + byte_ids("Page 1: ") + [300] * 7 + byte_ids("\n") + [301] * k
                               + byte_ids("\nFree OCR.") + byte_ids("\n"))
    # nothing after <image>: exactly the trained prompt
    assert processor.encode_example([page], "total?", prompt="<image>\n")["input_ids"] == processor.encode_example(
        [page], "total?")["input_ids"]


def test_infer_with_a_fused_instruction_equals_the_processor_path(tmp_path):
    """On the fused demo checkpoint: infer(prompt="<image>\\n", instruction=...) builds exactly the trained prompt
    (the processor's own layout) and answers as generate() on it."""
    from transformers import AutoTokenizer

    from infer_deepsynth import infer_inputs
    from processing_deepsynth import DeepSynthProcessor

    model = DeepSynthForConditionalGeneration.from_pretrained(DEMO).eval()
    tokenizer = AutoTokenizer.from_pretrained(DEMO, trust_remote_code=True)  # as DeepSeek-OCR users load it
    processor = DeepSynthProcessor.from_pretrained(DEMO)
    ip = processor.image_processor
    ip.bf16_round = True  # as infer() (upstream rounds its pixels through bfloat16)
    page = tmp_path / "page.png"
    ip.render_text("Invoice 7. Total: 42 EUR.")[0].save(page)
    geometry = dict(base_size=ip.base_size, image_size=ip.image_size, crop_mode=ip.crop_mode)
    question = "What is the total?"
    inputs, _, _ = infer_inputs(model, tokenizer, "<image>\n", str(page), *geometry.values(), instruction=question)
    trained = processor(document=str(page), instruction=question, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "pixel_values", "instruction_input_ids", "images_spatial_crop"):
        assert torch.equal(inputs[key], trained[key]), key
    text = model.infer(tokenizer, prompt="<image>\n", image_file=str(page), **geometry, instruction=question,
                       eval_mode=True, max_new_tokens=24)
    trained.pop("num_pages")
    ids = model.generate(**trained, do_sample=False, max_new_tokens=24, no_repeat_ngram_size=35)
    expected = tokenizer.decode(ids[0, trained["input_ids"].shape[1] :], skip_special_tokens=False)
    assert text == expected.removesuffix(tokenizer.eos_token).strip() and text


def test_grounding_boxes_crops_and_markdown(tmp_path):
    page = Image.new("RGB", (1000, 500), "white")
    text = ("<|ref|>title<|/ref|><|det|>[[100, 100, 500, 200]]<|/det|>\n# Report\n"
            "<|ref|>image<|/ref|><|det|>[[0, 500, 499, 999]]<|/det|>\nx \\coloneqq 1")
    refs = parse_grounding(text)
    assert [(label, boxes) for _, label, boxes in refs] == [
        ("title", [[100.0, 100.0, 500.0, 200.0]]), ("image", [[0.0, 500.0, 499.0, 999.0]])]
    assert markdown_of(text, refs) == "\n# Report\n![](images/0.jpg)\n\nx := 1"
    (tmp_path / "images").mkdir()
    write_results(text, page, str(tmp_path))
    assert (tmp_path / "result.mmd").read_text(encoding="utf-8") == markdown_of(text, refs)
    drawn = Image.open(tmp_path / "result_with_boxes.jpg").convert("RGB")
    assert drawn.size == page.size
    # title box: 0..999 coordinates scaled to the page -> x 100..500, y int(100 / 999 * 500) = 50..100
    r, g, b = drawn.getpixel((101, 75))
    assert r > 150 and g < 110 and b < 110  # the first palette colour (red), 4 px wide
    assert drawn.getpixel((300, 75))[0] > 230 and drawn.getpixel((300, 75))[1] > 200  # inside: a faint fill only
    assert min(drawn.getpixel((700, 75))) > 245  # outside every box: the page
    crop = Image.open(tmp_path / "images" / "0.jpg")
    assert crop.size == (int(499 / 999 * 1000), 500 - int(500 / 999 * 500))
    drawn2 = draw_grounding(page, [], str(tmp_path))
    assert drawn2.tobytes() == page.tobytes()  # nothing to draw: the page unchanged


# ---- the repetition guard ----------------------------------------------------------------------------------------
def make_loop(model):
    """Decoder layers silenced: the next token depends only on the current one, bos -> 10 -> 11 -> ... -> 14 -> 10
    (any other token has a zero embedding, all-zero logits, and is followed by id 0 = bos)."""
    lm = model.model.language_model
    torch.manual_seed(0)
    with torch.no_grad():
        for p in lm.layers.parameters():
            p.zero_()
        lm.embed_tokens.weight.zero_()
        model.lm_head.weight.normal_(0, 0.01)
        for slot, token in enumerate([BOS] + CYCLE):
            lm.embed_tokens.weight[token, slot] = 1.0
            model.lm_head.weight[CYCLE[slot % len(CYCLE)], slot] = 1.0
    assert model.lm_head.weight.data_ptr() != lm.embed_tokens.weight.data_ptr()
    return model


def looping_model():
    return make_loop(tiny_model(instruction_fusion="none"))


def generate(model, steps=40, **kw):
    return model.generate(input_ids=torch.tensor([[BOS]]), max_new_tokens=steps, do_sample=False, **kw)[0, 1:].tolist()


def repeats_in_window(ids, n, window):
    seq = [BOS] + ids
    for end in range(n, len(seq) + 1):
        gram = seq[end - n : end]
        earlier = seq[max(0, end - 1 - window + 1) : end - 1]  # the window before the last token was written
        if any(earlier[i : i + n] == gram for i in range(len(earlier) - n + 1)):
            return True
    return False


def test_guard_stops_a_loop_and_nothing_else():
    model = looping_model()
    plain = generate(model)
    assert plain == [CYCLE[i % 5] for i in range(40)]  # forced into a loop
    guarded = generate(model, repetition_guard={"ngram_size": 6, "window_size": 30})
    assert guarded[:9] == plain[:9]  # the first repeat of a 6-gram would be the 10th token
    assert guarded != plain and not repeats_in_window(guarded, 6, 30)
    assert repeats_in_window(plain, 6, 30)
    # a window as long as the sequence is the whole-sequence ban of transformers' no_repeat_ngram_size
    assert generate(model, repetition_guard={"ngram_size": 6, "window_size": 1000}) == generate(
        model, no_repeat_ngram_size=6)
    # exempt tokens are never banned (table cells); the same guard through logits_processor
    assert generate(model, repetition_guard={"ngram_size": 6, "window_size": 30, "exempt_token_ids": CYCLE}) == plain
    assert generate(model, logits_processor=[NGramRepetitionGuard(6, 30)]) == guarded
    # the shipped defaults: 30 in 90
    defaults = generate(model, steps=60, repetition_guard=True)
    assert defaults[:34] == plain[:34] and defaults != [CYCLE[i % 5] for i in range(60)]
    # a checkpoint can turn it on in its generation config
    model.generation_config.repetition_guard = {"ngram_size": 6, "window_size": 30}
    assert generate(model) == guarded
    assert generate(model, repetition_guard=False) == plain


def test_guard_settings_are_checked():
    for bad in ({"ngram_size": 0}, {"window_size": 5, "ngram_size": 6}, {"n": 3}, "yes"):
        with pytest.raises(ValueError):
            repetition_guard(bad)
    tokenizer = byte_tokenizer()
    tokenizer.add_tokens(["<td>", "</td>"])
    assert exempt_token_ids(tokenizer) == [tokenizer.convert_tokens_to_ids("<td>"),
                                           tokenizer.convert_tokens_to_ids("</td>")]
    guard = repetition_guard(True, tokenizer)
    assert (guard.ngram_size, guard.window_size, guard.exempt_token_ids) == (30, 90, exempt_token_ids(tokenizer))


@pytest.fixture(scope="module")
def looping_checkpoint(tmp_path_factory):
    """The looping model saved as a servable checkpoint (processor + pipeline), for engine / pipeline / CLI / API."""
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    from make_tiny_checkpoint import make_tiny_checkpoint

    from pipeline_deepsynth import save_with_pipeline

    out = tmp_path_factory.mktemp("looping") / "ckpt"
    model, processor = make_tiny_checkpoint(out, fusion="none")
    save_with_pipeline(make_loop(model), processor, out)
    return str(out)


GUARD = {"ngram_size": 6, "window_size": 30}


def test_guard_through_engine_pipeline_and_cli(looping_checkpoint, capsys):
    from transformers import pipeline

    from deepsynth.inference import InstructionEngine
    from deepsynth.inference.instruct import main

    engine = InstructionEngine(looping_checkpoint, cache_size=0)
    plain = engine.generate_result("Total: 42", "What is the total?", max_length=40)
    guarded = engine.generate_result("Total: 42", "What is the total?", max_length=40, repetition_guard=GUARD)
    assert plain.tokens_generated == guarded.tokens_generated == 40  # the loop never writes eos
    assert guarded.answer != plain.answer
    assert engine.generate("Total: 42", "What is the total?", 40, repetition_guard=True) != plain.answer
    with pytest.raises(ValueError, match="ngram_size"):
        engine.stream("Total: 42", "What is the total?", 40, repetition_guard={"ngram_size": 0})

    pipe = pipeline(model=looping_checkpoint, trust_remote_code=True)
    assert pipe(document="Total: 42", instruction="What is the total?", max_new_tokens=40)["answer"] == plain.answer
    out = pipe(document="Total: 42", instruction="What is the total?", max_new_tokens=40, repetition_guard=GUARD)
    assert out["answer"] == guarded.answer

    argv = ["--model", looping_checkpoint, "--document", "Total: 42", "--instruction", "What is the total?",
            "--max-length", "40", "--json"]
    assert main(argv + ["--repetition-guard", "--guard-ngram-size", "6", "--guard-window-size", "30"]) == 0
    assert json.loads(capsys.readouterr().out)["answer"] == guarded.answer
    with pytest.raises(SystemExit) as exit_:
        main(argv + ["--guard-ngram-size", "6"])
    assert exit_.value.code == 2 and "need --repetition-guard" in capsys.readouterr().err


def test_guard_through_the_rest_api(looping_checkpoint):
    import requests

    from _serving_helpers import start_server, stop_server
    from deepsynth.inference import InstructionEngine

    engine = InstructionEngine(looping_checkpoint, cache_size=0)
    expected = engine.generate("Total: 42", "What is the total?", 40, repetition_guard=GUARD)
    plain = engine.generate("Total: 42", "What is the total?", 40)
    proc, url = start_server(looping_checkpoint)
    try:
        body = {"document": "Total: 42", "instruction": "What is the total?", "max_length": 40}
        r = requests.post(f"{url}/api/inference/instruct", json={**body, "repetition_guard": GUARD}, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["answer"] == expected
        r = requests.post(f"{url}/api/inference/instruct", json=body, timeout=120)
        assert r.json()["answer"] == plain
        r = requests.post(f"{url}/api/inference/instruct", json={**body, "repetition_guard": {"ngram_size": 0}},
                          timeout=120)
        assert r.status_code == 422 and "ngram_size" in r.text
    finally:
        stop_server(proc)
