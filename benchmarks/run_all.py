"""Run every benchmark and write BENCHMARKS.md (machine, date, exact commands, a headline table against the
targets of issue 6, then each benchmark's own section). Nothing in BENCHMARKS.md is typed by hand.

    python benchmarks/run_all.py [--quick] [--config small] [--only mfu,cache] [--out BENCHMARKS.md]

Each benchmark runs in its own subprocess (`python benchmarks/bench_X.py [--quick] --json ...`); a failing one is
reported in the file with its error instead of its table.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import common as C

# name -> (script, extra args in the full run, needs a model config)
BENCHMARKS = {
    "mfu": ("bench_mfu.py", [], True),
    # the demo model (issue 6 sets the MFU target on its config): its processor's 128-px pages, vision trained as
    # in the recipe, random weights
    "mfu_demo": ("bench_mfu.py", ["--config", "checkpoints/deepsynth-demo", "--train-vision"], False),
    "vs_reference": ("bench_vs_reference.py", ["--real-vision"], True),
    "cache": ("bench_cache.py", [], True),
    "batching": ("bench_batching.py", [], True),
    "kv_cache": ("bench_kv_cache.py", [], True),
    "data_pipeline": ("bench_data_pipeline.py", [], True),
    "memory": ("bench_memory.py", ["--real-vision"], False),
    "compression": ("bench_compression.py", [], False),
    "hotpaths": ("bench_hotpaths.py", ["--real-vision"], True),
    "structured": ("bench_structured.py", [], True),  # issue 18: JSON-constrained decoding overhead
}


def run(name, script, extra, args, tmp) -> dict:
    out = Path(tmp) / f"{name}.json"
    cmd = [sys.executable, str(C.REPO / "benchmarks" / script), "--json", str(out)]
    if args.quick:
        cmd.append("--quick")
    else:
        cmd += extra
    if BENCHMARKS[name][2] and args.config:
        cmd += ["--config", args.config]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    shown = "python " + " ".join([os.path.relpath(cmd[1], C.REPO)] + [c for c in cmd[2:] if c not in (str(out), "--json")])
    print(f"[run_all] {shown}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=C.REPO, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    dt = time.perf_counter() - t0
    print(f"[run_all]   {name}: exit {proc.returncode} in {dt:.0f} s", flush=True)
    if proc.returncode or not out.is_file():
        err = (proc.stderr or "")[-2500:]
        return {"name": name, "command": shown, "seconds": dt, "error": err,
                "markdown": f"## {name}\n\n`{shown}`\n\n**FAILED** (exit {proc.returncode}):\n\n```\n{err}\n```\n"}
    data = json.loads(out.read_text())
    data.update(name=name, command=shown, seconds=dt)
    return data


def verdict(ratio: float) -> str:
    """Same-module comparisons: within ±5% is measurement noise on these shared machines."""
    return "met" if ratio >= 1.0 else "met (within ±5% noise)" if ratio >= 0.95 else "**missed**"


def headline(res: dict) -> str:
    """Targets of issue 6 vs the measured numbers, read from the benchmarks' JSON."""
    rows = []

    def get(name):
        r = res.get(name)
        return None if r is None or "error" in r else r["results"]

    for name, which in (("mfu_demo", "demo model config"), ("mfu", "`small` preset")):
        if (r := get(name)) is None:
            continue
        for key, label in (("train@1", "training step MFU, 1 thread"), ("train@2", "training step MFU, 2 threads"),
                           ("prefill@1", "inference (prefill) MFU, 1 thread"),
                           ("decode_only@1", "inference (decode, batch 8) MFU, 1 thread")):
            if key in r["rows"]:
                th = key.split("@")[1]
                v = r["rows"][key]["mfu"] * 100
                peak = r["peak"][th]["gflops"] if th in r["peak"] else r["peak"][int(th)]["gflops"]
                target = "≥ 35%" if key.startswith("train") else "(report)"
                met = "" if target == "(report)" else ("met" if v >= 35 else "**missed**")
                rows.append([f"{label} ({which})", target, f"{v:.1f}% of {peak:.0f} GFLOP/s", met])
    if (r := get("vs_reference")) is not None:
        for label, t in r["timings"].items():
            if label.startswith("vision encoding"):
                v = t["ratio_ref_over_ours"]
                rows.append([f"vs reference: {label}", "≥ 1.0× (not slower)", f"{v:.2f}×", verdict(v)])
        if "decode_tokens_per_s" in r["timings"]:
            v = r["timings"]["decode_tokens_per_s"]["ratio_ours_over_ref"]
            rows.append(["vs reference: decode tokens/s", "≥ 1.0× (not slower)", f"{v:.2f}×", verdict(v)])
    if (r := get("cache")) is not None:
        rows.append(["document cache, 8 instructions on one base-mode document", "≥ 4×", f"{r['ratio']:.1f}×",
                     "met" if r["ratio"] >= 4 else "**missed**"])
    if (r := get("batching")) is not None:
        for setting, v in r.items():
            if setting.startswith("model_only:"):
                _, mode, n = setting.split(":")
                label = f"batching, model.generate only (batch 8 vs 8 x 1, {mode} prompts, {n}-token answers)"
            else:
                mode, n, *warm = setting.split(":")
                label = f"batching 8 requests ({mode} pages, {n}-token answers{', documents cached' if warm else ''})"
            rows.append([label, "≥ 4×", f"{v['ratio']:.1f}×", "met" if v["ratio"] >= 4 else "**missed**"])
    if (r := get("kv_cache")) is not None:
        rows.append([f"KV cache on vs off, {r['tokens']}-token answer", "(report)", f"{r['ratio']:.1f}×", ""])
    if (r := get("data_pipeline")) is not None:
        worst = min(r.items(), key=lambda kv: kv[1]["headroom"])
        rows.append(["data pipeline headroom (produced / consumed pages/s), worst mode", "> 1",
                     f"{worst[1]['headroom']:.0f}× ({worst[0]})", "met" if worst[1]["headroom"] > 1 else "**missed**"])
    if (r := get("memory")) is not None:
        what = {"infer": "inference (base page, 32 tokens)", "train": "training step (batch 4, tiny pages)",
                "real-vision": "SAM-B + CLIP-L vision encoding of a base page"}
        for key, v in r["models"].items():
            spec, kind = key.split(":")
            label = f"peak RSS, `{spec}`, {what.get(kind, kind)}" if kind != "real-vision" else f"peak RSS, {what[kind]}"
            rows.append([label, "(report)", f"{C.mib(v['peak'])} MiB ({C.mib(v['peak'] - v['rss_before'])} above "
                         "the loaded model)", ""])
        g = r["moe"].get("grouped_mm")
        if g:
            ok = g["grouped_rows"] and g["grouped_rows"][0][0] == g["tokens"] * g["top_k"]
            rows.append(["MoE: rows multiplied by the experts (grouped_mm)", "tokens × top-k only",
                         f"{g['grouped_rows'][0][0] if g['grouped_rows'] else '?'} = {g['tokens']} × {g['top_k']}",
                         "met" if ok else "**missed**"])
    if (r := get("compression")) is not None:
        for row in r["rows"]:
            if row["mode"] in ("tiny", "small") and "dense" in row["layout"]:
                rows.append([f"compression, {row['mode']} mode, dense page", "(report; paper: 10×/20×)",
                             f"{row['compression_mean']:.1f}× ({row['text_tokens_per_page']:.0f} text / "
                             f"{row['vision_tokens_per_page']:.0f} vision tokens per page)", ""])
    return C.md_table(["measure", "target", "measured", ""], rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--config", default=None, help="model config for the model benchmarks (preset or JSON)")
    p.add_argument("--threads", type=int, default=None, help="passed to every benchmark (default: theirs, 1)")
    p.add_argument("--only", default=None, help="comma list of " + ",".join(BENCHMARKS))
    p.add_argument("--out", default=str(C.REPO / "BENCHMARKS.md"))
    p.add_argument("--results", default=str(C.REPO / "benchmarks" / "results"),
                   help="folder for each benchmark's raw JSON (kept, so the markdown can be rebuilt)")
    p.add_argument("--from-results", action="store_true",
                   help="do not run anything: rebuild the markdown from the JSON in --results")
    args = p.parse_args()
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    started = datetime.datetime.now().astimezone()
    machine = C.machine_line(args.threads or C.DEFAULT_THREADS)
    res = {}
    t0 = time.perf_counter()
    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    if args.from_results:
        meta = json.loads((results_dir / "run.json").read_text())
        started, machine, argv, total, end_load = (datetime.datetime.fromisoformat(meta["started"]), meta["machine"],
                                                   meta["argv"], meta["total"], meta["end_load"])
        for name in names:
            res[name] = json.loads((results_dir / f"{name}.json").read_text())
    else:
        for name in names:
            script, extra, _ = BENCHMARKS[name]
            res[name] = run(name, script, extra, args, results_dir)
            res[name]["measured_at"] = f"{started:%Y-%m-%d %H:%M %Z}"
            (results_dir / f"{name}.json").write_text(json.dumps(res[name], indent=1))
        total = time.perf_counter() - t0
        argv = " ".join(a for a in sys.argv[1:] if not a.startswith("--results"))
        end_load = os.getloadavg()[0]
        if args.only and (results_dir / "run.json").is_file():
            # a partial run keeps the other benchmarks' latest results, each section saying when it was measured
            earlier = json.loads((results_dir / "run.json").read_text())
            for name in BENCHMARKS:
                path = results_dir / f"{name}.json"
                if name not in res and path.is_file():
                    res[name] = json.loads(path.read_text())
                    res[name].setdefault("measured_at", f"{datetime.datetime.fromisoformat(earlier['started']):%Y-%m-%d %H:%M %Z}")
            res = {name: res[name] for name in BENCHMARKS if name in res}
        (results_dir / "run.json").write_text(json.dumps({"started": started.isoformat(), "machine": machine,
                                                          "argv": argv, "total": total, "end_load": end_load}))
    lines = [
        "# DeepSynth benchmarks",
        "",
        "Generated by `benchmarks/run_all.py`; do not edit by hand: re-run "
        f"`python benchmarks/run_all.py{(' ' + argv) if argv else ''}` (from the repo root, venv active).",
        "",
        f"- Date: {started:%Y-%m-%d %H:%M %Z}; total {total / 60:.1f} min"
        + (" (`--quick`: smoke-run sizes)" if args.quick else ""),
        f"- Machine: {machine}",
        f"- Load average at the end: {end_load:.2f} (1 min)",
        "- Method: the machines are shared and noisy, so every comparison is measured inside one run, the "
        "variants interleaved (A B, B A, ...), and reported as medians / medians of per-round ratios; the spread "
        "column is half the interquartile range. Models have random weights (speed does not depend on them); SAM "
        "is initialised with std 0.02 rather than unlimited_ocr's 1e-10 so that activations are realistic.",
        "- Default model: the `small` preset of benchmarks/common.py (CPU-sized DeepSynth: "
        + C.describe_config(C.load_config("small")) + "); `--config` takes another preset or a config.json.",
        "",
        "## Commands",
        "",
        "| benchmark | command | seconds |",
        "|---|---|---|",
    ]
    lines[-2:] = ["| benchmark | command | seconds | measured |", "|---|---|---|---|"]
    lines += [f"| {n} | `{r['command']}` | {r['seconds']:.0f} | {r.get('measured_at', '')} |" for n, r in res.items()]
    lines += ["", "## Headline: targets of issue 6", "", headline(res), ""]
    for r in res.values():
        lines += [r["markdown"].strip(), ""]
    Path(args.out).write_text("\n".join(lines))
    print(f"[run_all] wrote {args.out} ({total / 60:.1f} min)")


if __name__ == "__main__":
    main()
