"""The guide's training command as printed (`python -m deepsynth.training.train --use-deepseek-ocr ...`), real
subprocesses, no network: the hub models it names come from a Hugging Face cache we lay out (HF_HUB_CACHE) with a
tiny original-layout DeepSeek-OCR (the reference fixture's weights) and a tiny Qwen3; missing models end with one
clear error (exit 2); a new text encoder type on an existing checkpoint rebuilds the encoder and projector;
resuming skips a half-written last checkpoint."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _serving_helpers import REPO_ROOT, subprocess_env
from _training_helpers import put_in_hub_cache, write_tiny_original_folder, write_tiny_qwen3
from deepsynth.data.synthetic import generate_split

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from make_tiny_checkpoint import make_tiny_checkpoint  # noqa: E402

GUIDE_COMMAND = ["--use-deepseek-ocr", "--hf-dataset", "deepsynth-squad-qa.jsonl", "--output", "./models/deepsynth-qa",
                 "--use-text-encoder", "--text-encoder-type", "qwen3", "--text-encoder-trainable",
                 "--batch-size", "4", "--num-epochs", "3"]


@pytest.fixture(scope="module")
def work(tmp_path_factory, fixture_dir):
    d = tmp_path_factory.mktemp("train_cli")
    original = write_tiny_original_folder(fixture_dir, d / "deepseek-ocr-tiny")
    qwen = write_tiny_qwen3(d / "qwen3-tiny", hidden_size=48)  # not BERT's 32: a new projector has another shape
    full, only_ocr = d / "hub-full", d / "hub-ocr-only"
    put_in_hub_cache(full, "deepseek-ai/DeepSeek-OCR", original)
    put_in_hub_cache(full, "Qwen/Qwen3-0.6B", qwen)
    put_in_hub_cache(only_ocr, "deepseek-ai/DeepSeek-OCR", original)
    (d / "hub-empty").mkdir()
    make_tiny_checkpoint(d / "tiny-bert")  # a DeepSynth checkpoint with a (tiny) BERT instruction encoder
    with open(d / "deepsynth-squad-qa.jsonl", "w") as f:
        for row in generate_split("train", 4, seed=1):
            f.write(json.dumps(row) + "\n")
    return d


def train(cwd: Path, *args, cache: Path) -> subprocess.CompletedProcess:
    """`PYTHONPATH=<repo>/src python3 -m deepsynth.training.train ARGS`, offline, with `cache` as the HF cache."""
    env = dict(subprocess_env(), HF_HUB_CACHE=str(cache))
    return subprocess.run([sys.executable, "-m", "deepsynth.training.train", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_guide_command_as_printed_starts_from_deepseek_ocr_in_the_cache(work):
    result = train(work, *GUIDE_COMMAND, cache=work / "hub-full")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--use-deepseek-ocr: starting from deepseek-ai/DeepSeek-OCR" in result.stderr
    out = work / "models" / "deepsynth-qa"
    state = json.loads((out / "trainer_state.json").read_text())
    assert (state["global_step"], state["num_train_epochs"]) == (3, 3)  # 4 rows / batch 4 * 3 epochs
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_type"] == "deepsynth" and saved["instruction_encoder_config"]["model_type"] == "qwen3"
    trained = load_file(out / "model.safetensors")
    qwen = load_file(work / "qwen3-tiny" / "model.safetensors")
    key = "layers.0.self_attn.q_proj.weight"
    assert not torch.equal(trained["model.instruction_encoder." + key], qwen[key])  # --text-encoder-trainable
    # the vision tower (frozen) is the cached DeepSeek-OCR's, converted from the original key layout
    fixture = load_file(work / "deepseek-ocr-tiny" / "model.safetensors")
    assert torch.equal(trained["model.vision_tower.sam_encoder.patch_embed.projection.weight"],
                       fixture["model.sam_model.patch_embed.proj.weight"])


def test_offline_without_deepseek_ocr_is_one_clear_error(work):
    result = train(work, *GUIDE_COMMAND, "--output", work / "out-no-ocr", cache=work / "hub-empty")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: model deepseek-ai/DeepSeek-OCR is not available: no such local folder, and offline (HF_HUB_OFFLINE=1) "
        "and not in the Hugging Face cache. Download it where there is network (`hf download deepseek-ai/DeepSeek-OCR --local-dir DIR`) and "
        "pass the folder with --model_name_or_path DIR (or `model_name` in the config file)"
    ]
    assert not (work / "out-no-ocr").exists()


def test_offline_without_the_text_encoder_is_one_clear_error(work):
    result = train(work, *GUIDE_COMMAND, "--output", work / "out-no-qwen", cache=work / "hub-ocr-only")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: text encoder Qwen/Qwen3-0.6B is not available: no such local folder, and offline")
    assert error.endswith("pass the folder with --text_encoder_model DIR (or `text_encoder_model` in the config file)")


def test_local_deepseek_ocr_folder_instead_of_the_hub(work):
    """What the error tells the user to do: the same command with the folder."""
    out = work / "out-local"
    result = train(work, *GUIDE_COMMAND, "--output", out, "--model_name_or_path", work / "deepseek-ocr-tiny",
                   "--text_encoder_model", work / "qwen3-tiny", "--max_steps", 1, cache=work / "hub-empty")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 1


def test_bert_type_on_a_bert_checkpoint_keeps_its_encoder_without_the_hub(work):
    out = work / "out-bert"
    result = train(work, "--model_name_or_path", work / "tiny-bert", "--hf-dataset", "deepsynth-squad-qa.jsonl",
                   "--output", out, "--use-text-encoder", "--text-encoder-type", "bert", "--batch-size", 4,
                   "--max_steps", 1, "--report_to", "none", cache=work / "hub-empty")
    assert result.returncode == 0, result.stderr[-3000:]
    before, after = load_file(work / "tiny-bert" / "model.safetensors"), load_file(out / "model.safetensors")
    encoder = [k for k in before if k.startswith("model.instruction_encoder.")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)  # frozen, and not replaced
    assert not torch.equal(before["lm_head.weight"], after["lm_head.weight"])  # it did train


def test_guide_config_qwen3_on_a_bert_checkpoint_rebuilds_encoder_and_projector(work):
    config = work / "config-qwen3.json"
    out = work / "out-qwen3-on-bert"
    config.write_text(json.dumps({"model_name": str(work / "tiny-bert"), "output_dir": str(out),
                                  "use_text_encoder": True, "text_encoder_type": "qwen3", "batch_size": 4,
                                  "num_epochs": 1, "learning_rate": 0.0}))  # lr 0: the weights stay as built
    result = train(work, "--config", config, "--hf-dataset", "deepsynth-squad-qa.jsonl", "--report_to", "none",
                   cache=work / "hub-full")
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("Replacing the instruction encoder: the checkpoint's is a bert (hidden 32), Qwen/Qwen3-0.6B is a qwen3 "
            "(hidden 48). The encoder and the instruction projector are rebuilt") in result.stderr
    saved = json.loads((out / "config.json").read_text())
    assert saved["instruction_encoder_config"]["model_type"] == "qwen3"
    before, after = load_file(work / "tiny-bert" / "model.safetensors"), load_file(out / "model.safetensors")
    qwen = load_file(work / "qwen3-tiny" / "model.safetensors")
    for key, value in qwen.items():
        assert torch.equal(after["model.instruction_encoder." + key], value), key
    projector = [k for k in after if k.startswith("model.instruction_projector.") and k.endswith("weight")]
    assert projector and after[projector[0]].shape[1] == 48
    kept = [k for k in before if ".instruction_" not in k]
    assert kept and all(torch.equal(before[k], after[k]) for k in kept)
    # the processor carries the new encoder's tokenizer, so the saved checkpoint works as a whole
    from modeling_deepsynth import DeepSynthForConditionalGeneration
    from processing_deepsynth import DeepSynthProcessor

    processor = DeepSynthProcessor.from_pretrained(out)
    assert processor.instruction_tokenizer.vocab_size == 512 != 30522  # Qwen's, not MiniLM's WordPiece
    model = DeepSynthForConditionalGeneration.from_pretrained(out).eval()
    batch = processor(document="Revenue: $45.2M", instruction="What was the revenue?", return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.shape[0] == 1


def resume_args(work):
    return ["--model_name_or_path", work / "tiny-bert", "--hf-dataset", "deepsynth-squad-qa.jsonl", "--output",
            work / "out-resume", "--batch-size", 2, "--max_steps", 4, "--save_steps", 2, "--logging_steps", 1,
            "--learning_rate", 1e-3, "--seed", 7, "--report_to", "none"]


def logged_losses(out: Path) -> dict:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return {h["step"]: h["loss"] for h in history if "loss" in h}


@pytest.fixture(scope="module")
def first_run(work):
    """4 steps with checkpoints at 2 and 4; returns (output_dir, losses by step)."""
    result = train(work, *resume_args(work), cache=work / "hub-empty")
    assert result.returncode == 0, result.stderr[-3000:]
    out = work / "out-resume"
    return out, logged_losses(out)


def test_resume_skips_a_half_written_last_checkpoint(work, first_run):
    out, losses = first_run
    assert sorted(losses) == [1, 2, 3, 4]
    # a kill while checkpoint-4 was written: trainer_state.json (written last) is missing, the weights cut short
    last = out / "checkpoint-4"
    (last / "trainer_state.json").unlink()
    weights = last / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    again = train(work, *resume_args(work), cache=work / "hub-empty")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Skipping the incomplete checkpoint {last} (no trainer_state.json)" in again.stderr
    assert f"Resuming from the last checkpoint found: {out / 'checkpoint-2'}" in again.stderr
    resumed = logged_losses(out)
    for step in (3, 4):  # steps 3-4 were trained again from checkpoint-2: the same losses
        assert abs(resumed[step] - losses[step]) < 1e-4, (step, resumed[step], losses[step])


@pytest.mark.parametrize("damage, problem", [
    ("no_state", "no trainer_state.json"),
    ("cut_state", "trainer_state.json is cut short"),
    ("cut_weights", "model.safetensors is unreadable"),
    ("no_weights", "no weights file"),
    (None, None),
])
def test_checkpoint_problem(first_run, tmp_path, damage, problem):
    from run_instruct import checkpoint_problem, last_complete_checkpoint

    source = first_run[0] / "checkpoint-2"  # complete, whichever test ran first
    folder = tmp_path / "checkpoint-6"
    shutil.copytree(source, folder)
    shutil.copytree(source, tmp_path / "checkpoint-2")
    state, weights = folder / "trainer_state.json", folder / "model.safetensors"
    if damage == "no_state":
        state.unlink()
    elif damage == "cut_state":
        state.write_text(state.read_text()[:40])
    elif damage == "cut_weights":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "no_weights":
        weights.unlink()
    found = checkpoint_problem(str(folder))
    if problem is None:
        assert found is None
    else:
        assert found.startswith(problem), found
    expected = tmp_path / ("checkpoint-2" if problem else "checkpoint-6")
    assert last_complete_checkpoint(str(tmp_path)) == str(expected)


def test_a_cut_short_weights_file_is_named(work, tmp_path, capsys):
    """A damaged checkpoint folder fails before anything loads, naming the file (in process: no training starts)."""
    from deepsynth.training.train import main

    broken = tmp_path / "broken"
    shutil.copytree(work / "tiny-bert", broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    status = main(["--model_name_or_path", str(broken), "--hf-dataset", str(work / "deepsynth-squad-qa.jsonl"),
                   "--output", str(tmp_path / "out"), "--report_to", "none"])
    assert status == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: model {broken}: model.safetensors is unreadable (")
