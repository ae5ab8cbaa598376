"""run_instruct.py end to end on tiny checkpoints: train -> eval -> predict -> fresh reload, the guide's config.json,
LoRA + merge, DeepSpeed ZeRO-2/3, two processes, kill-and-resume."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from make_tiny_checkpoint import make_tiny_checkpoint  # noqa: E402

from _training_helpers import write_tiny_original_folder, write_tiny_qwen3  # noqa: E402
from deepsynth.data.synthetic import generate_split  # noqa: E402


def env():
    e = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    e.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return e


def run(args, cwd, timeout=600, launcher=None):
    cmd = (launcher or [sys.executable]) + [str(ROOT / "run_instruct.py"), *map(str, args)]
    result = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("run_instruct")
    make_tiny_checkpoint(d / "tiny")
    data = d / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", generate_split("train", 8, seed=1))
    write_jsonl(data / "validation.jsonl", generate_split("validation", 4, seed=2))
    write_jsonl(data / "test.jsonl", generate_split("test_values", 4, seed=3))
    return d


def common(work, out, *extra):
    return [
        "--model_name_or_path", work / "tiny", "--dataset_name", work / "data", "--output_dir", out,
        "--per_device_train_batch_size", 4, "--per_device_eval_batch_size", 4, "--logging_steps", 1,
        "--generation_max_length", 6, "--dataloader_num_workers", 0, "--seed", 7, *extra,
    ]


def log_losses(out):
    state = json.loads((Path(out) / "trainer_state.json").read_text())
    return {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}


def test_train_eval_predict_then_reload_in_fresh_process(work):
    out = work / "out_full"
    run(common(work, out, "--do_train", "--do_eval", "--do_predict", "--max_steps", 3,
               "--dataloader_num_workers", 2), cwd=work)
    results = json.loads((out / "all_results.json").read_text())
    for key in ("train_loss", "eval_loss", "eval_exact_match", "eval_f1_score", "eval_rougeL", "test_exact_match"):
        assert isinstance(results[key], float), key
    assert results["world_size"] == 1
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 4 and {"id", "instruction", "prediction", "answer"} <= predictions[0].keys()
    card = (out / "README.md").read_text()
    assert "custom_code" in card and "model-index" in card and "library_name: transformers" in card
    assert any((out / "runs").rglob("events.out.tfevents*"))  # TensorBoard
    assert (out / "checkpoint-3" / "pipeline_deepsynth.py").is_file()  # checkpoints open with pipeline() too

    script = textwrap.dedent(
        f"""
        import importlib.abc, sys, torch
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("deepsynth", "modeling_deepsynth", "processing_deepsynth", "configuration_deepsynth"):
                    raise ImportError(name)
        sys.meta_path.insert(0, Block())
        from transformers import AutoModelForCausalLM, AutoProcessor
        d = {str(out)!r}
        processor = AutoProcessor.from_pretrained(d, trust_remote_code=True)
        model = AutoModelForCausalLM.from_pretrained(d, trust_remote_code=True).eval()
        batch = processor(document="Revenue: $45.2M", instruction="What was the revenue?", return_tensors="pt")
        logits = model(**batch).logits
        torch.save(logits, {str(work / "fresh_logits.pt")!r})
        from transformers import pipeline
        pipe = pipeline(model=d, trust_remote_code=True)
        result = pipe(document="Revenue: $45.2M", instruction="What was the revenue?", max_new_tokens=3)
        assert set(result) == {{"answer", "score"}} and 0 < result["score"] <= 1, result
        """
    )
    subprocess.run([sys.executable, "-c", script], cwd=work, env=env(), check=True, timeout=300)
    sys.path.insert(0, str(ROOT))
    from modeling_deepsynth import DeepSynthForConditionalGeneration
    from processing_deepsynth import DeepSynthProcessor

    model = DeepSynthForConditionalGeneration.from_pretrained(out).eval()
    processor = DeepSynthProcessor.from_pretrained(out)
    batch = processor(document="Revenue: $45.2M", instruction="What was the revenue?", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(torch.load(work / "fresh_logits.pt"), model(**batch).logits)
    # training moved the weights away from the starting checkpoint
    start = DeepSynthForConditionalGeneration.from_pretrained(work / "tiny")
    assert not torch.equal(start.lm_head.weight, model.lm_head.weight)


def test_predict_with_beam_search(work):
    """--generation_num_beams through Seq2SeqTrainer's predict: each sample's pages expanded to its beams, so the
    predictions are what model.generate(num_beams=2) writes for the same rows."""
    out = work / "out_beams"
    run(common(work, out, "--do_predict", "--generation_num_beams", 2), cwd=work)
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (work / "data" / "test.jsonl").read_text().splitlines()]
    assert [p["instruction"] for p in predictions] == [r["instruction"] for r in rows]

    sys.path.insert(0, str(ROOT))
    from modeling_deepsynth import DeepSynthForConditionalGeneration
    from processing_deepsynth import DeepSynthProcessor, row_document

    model = DeepSynthForConditionalGeneration.from_pretrained(work / "tiny").eval()
    processor = DeepSynthProcessor.from_pretrained(work / "tiny")
    expected = []
    for r in rows:
        batch = processor(document=row_document(r), instruction=r["instruction"], return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**batch, num_beams=2, max_new_tokens=6, do_sample=False)
        expected.append(processor.tokenizer.decode(ids[0, batch["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    assert [p["prediction"] for p in predictions] == expected


def test_guide_config_json_runs_as_written(work, fixture_dir):
    """The guide's config.json with only the model ids swapped for local folders (no hub here): a DeepSeek-OCR
    checkpoint in the original layout + a Qwen3 text encoder, trainable, bf16 requested (fp32 on CPU)."""
    original = write_tiny_original_folder(fixture_dir, work / "deepseek-ocr-tiny")
    qwen = write_tiny_qwen3(work / "qwen3-tiny")
    out = work / "models" / "deepsynth-qa"
    config = {
        "model_name": str(original),
        "output_dir": str(out),
        "use_text_encoder": True,
        "text_encoder_type": "qwen3",
        "text_encoder_model": str(qwen),
        "text_encoder_trainable": True,
        "batch_size": 4,
        "num_epochs": 3,
        "learning_rate": 1e-5,
        "mixed_precision": "bf16",
    }
    (work / "config.json").write_text(json.dumps(config, indent=2))
    result = run(["--config", "config.json", "--hf-dataset", work / "data" / "train.jsonl"], cwd=work)
    assert "requested but no GPU: training in fp32" in result.stderr
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and state["num_train_epochs"] == 3  # 8 rows / batch 4 * 3 epochs
    saved = json.loads((out / "config.json").read_text())
    assert saved["instruction_encoder_config"]["model_type"] == "qwen3"
    assert saved["instruction_fusion"] == "tokens"
    # the text encoder was trainable: its weights moved
    from safetensors.torch import load_file

    trained = load_file(out / "model.safetensors")
    base = load_file(qwen / "model.safetensors")
    key = next(k for k in trained if k.startswith("model.instruction_encoder.") and k.endswith("q_proj.weight"))
    assert not torch.equal(trained[key], base[key.replace("model.instruction_encoder.", "")])


def test_lora_train_save_merge_reload(work):
    out = work / "out_lora"
    run(common(work, out, "--do_train", "--max_steps", 3, "--use_lora", True, "--lora_rank", 4,
               "--learning_rate", 5e-2, "--use_gradient_checkpointing", True), cwd=work)
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and "instruction_projector" in adapter["modules_to_save"]
    merged_dir = out / "merged"
    sys.path.insert(0, str(ROOT))
    from peft import PeftModel

    from modeling_deepsynth import DeepSynthForConditionalGeneration
    from processing_deepsynth import DeepSynthProcessor

    merged = DeepSynthForConditionalGeneration.from_pretrained(merged_dir).eval()
    assert (merged_dir / "modeling_deepsynth.py").is_file() and (merged_dir / "processor_config.json").is_file()
    base = DeepSynthForConditionalGeneration.from_pretrained(work / "tiny").eval()
    with_adapter = PeftModel.from_pretrained(DeepSynthForConditionalGeneration.from_pretrained(work / "tiny"), out)
    processor = DeepSynthProcessor.from_pretrained(merged_dir)
    batch = processor(document="Total due: $1,250.00", instruction="What is the total?", return_tensors="pt")
    with torch.no_grad():
        a, b, c = merged(**batch).logits, with_adapter.eval()(**batch).logits, base(**batch).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert (a - c).abs().max() > 1e-3  # the adapters changed the model


@pytest.mark.parametrize("stage", ["zero2", "zero3", "zero3_offload"])
def test_deepspeed_single_process(work, stage):
    out = work / f"out_{stage}"
    # DeepSpeed's shm op compiles once (~45 s) into ~/.cache/torch_extensions, then is reused
    run(common(work, out, "--do_train", "--max_steps", 2, "--deepspeed", ROOT / "ds_configs" / f"{stage}.json"),
        cwd=work)
    losses = log_losses(out)
    assert sorted(losses) == [1, 2] and all(0 < v < 20 for v in losses.values())
    assert (out / "model.safetensors").is_file()
    sys.path.insert(0, str(ROOT))
    from modeling_deepsynth import DeepSynthForConditionalGeneration

    model = DeepSynthForConditionalGeneration.from_pretrained(out)
    assert model.lm_head.weight.shape == (512, 64)  # gathered, not a ZeRO-3 shard


def test_two_processes_with_accelerate(work):
    single = work / "out_single"
    run(common(work, single, "--do_train", "--max_steps", 1, "--per_device_train_batch_size", 4), cwd=work)
    double = work / "out_double"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    e = dict(os.environ, ACCELERATE_USE_CPU="true")
    os.environ.update(e)
    run(common(work, double, "--do_train", "--max_steps", 1, "--per_device_train_batch_size", 2), cwd=work,
        launcher=launcher)
    results = json.loads((double / "train_results.json").read_text())
    assert results["world_size"] == 2
    one, two = log_losses(single)[1], log_losses(double)[1]
    # same 4 rows, same init: the 2-rank loss is the same mean, not multiplied by the world size
    assert abs(one - two) < 0.05 * one, (one, two)


def test_kill_and_resume_gives_the_same_losses(work):
    args = ("--do_train", "--max_steps", 24, "--save_steps", 4, "--per_device_train_batch_size", 2,
            "--learning_rate", 1e-3)
    straight = work / "out_straight"
    run(common(work, straight, *args), cwd=work)

    resumed = work / "out_resumed"
    cmd = [sys.executable, str(ROOT / "run_instruct.py"), *map(str, common(work, resumed, *args))]
    proc = subprocess.Popen(cmd, cwd=work, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (resumed / "checkpoint-4" / "trainer_state.json").is_file():
        assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (resumed / "checkpoint-24").exists(), "killed too late to test resuming"
    run(common(work, resumed, *args), cwd=work)  # finds its last checkpoint by itself
    a, b = log_losses(straight), log_losses(resumed)
    assert sorted(b) == list(range(1, 25))
    for step in range(1, 25):
        assert abs(a[step] - b[step]) < 1e-4, (step, a[step], b[step])


def test_ablation_switches_fusion_off_random_encoder_constant_instruction(work):
    """The demo model's ablations (recipes/demo): each switch really changes what the model receives."""
    sys.path.insert(0, str(ROOT))
    import run_instruct
    from modeling_deepsynth import DeepSynthForConditionalGeneration

    fused = DeepSynthForConditionalGeneration.from_pretrained(work / "tiny")
    assert fused.config.instruction_fusion != "none"

    # (b) fusion off from a fused checkpoint: encoder gone, shared weights kept, instruction written for the decoder
    args = run_instruct.ModelArguments(model_name_or_path=str(work / "tiny"), use_text_encoder=False)
    plain, processor = run_instruct.build_model_and_processor(args)
    assert plain.config.instruction_fusion == "none" and plain.model.instruction_encoder is None
    torch.testing.assert_close(plain.lm_head.weight, fused.lm_head.weight, rtol=0, atol=0)
    torch.testing.assert_close(plain.model.multi_modal_projector.state_dict(), fused.model.multi_modal_projector.state_dict())
    example = processor.encode_example("Revenue: $4M", "What was the revenue?")
    assert "What was the revenue?" in processor.tokenizer.decode(example["input_ids"])
    assert "instruction_input_ids" not in example
    # the next stage continues from that plain checkpoint with the same config (which names the encoder)
    plain.save_pretrained(work / "plain")
    processor.save_pretrained(work / "plain")
    args = run_instruct.ModelArguments(model_name_or_path=str(work / "plain"), use_text_encoder=False,
                                       text_encoder_model="minilm")
    again, _ = run_instruct.build_model_and_processor(args)
    assert again.config.instruction_fusion == "none" and again.model.instruction_encoder is None

    # (d) random encoder: same architecture, fresh weights, everything else as loaded
    args = run_instruct.ModelArguments(model_name_or_path=str(work / "tiny"), text_encoder_random_init=True)
    randomized, _ = run_instruct.build_model_and_processor(args)
    before = dict(fused.model.instruction_encoder.named_parameters())
    changed = [n for n, p in randomized.model.instruction_encoder.named_parameters() if not torch.equal(p, before[n])]
    assert any("embeddings.word_embeddings" in n for n in changed) and any("query" in n for n in changed)
    torch.testing.assert_close(randomized.lm_head.weight, fused.lm_head.weight, rtol=0, atol=0)

    # (c) constant instruction: two rows with different instructions give identical inputs
    from processing_deepsynth import DeepSynthProcessor

    fused_processor = DeepSynthProcessor.from_pretrained(work / "tiny")
    collator = run_instruct.RenderingCollator(fused_processor, constant_instruction="Answer.")
    rows = [{"text": "Total: $9", "instruction": q, "answer": "$9"} for q in ("What is the total?", "Who signed?")]
    a, b = collator(rows[:1]), collator(rows[1:])
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert torch.equal(a["instruction_input_ids"], b["instruction_input_ids"])
    plain_collator = run_instruct.RenderingCollator(fused_processor)
    assert not torch.equal(plain_collator(rows[:1])["instruction_input_ids"], plain_collator(rows[1:])["instruction_input_ids"])

    # a dataset `text` that looks like a file name is content, not a path (a random-lines warm-up row crashed on it)
    batch = plain_collator([{"text": "LxRpHsOg.epmH.MD", "instruction": "Free OCR.", "answer": "LxRpHsOg.epmH.MD"}])
    assert batch["pixel_values"].shape[0] == 1
