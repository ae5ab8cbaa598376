"""Pages per second of text rendering + DeepSeek-OCR preprocessing, per resolution mode (markdown table).

    python benchmarks/bench_preprocess.py [--seconds 4]

Each row renders the same English text into pages and turns them into model pixels (global view, tiles,
ToTensor + Normalize). Gundam runs on a 1280x1664 page (twice the default page size, font doubled) so that it
actually tiles; a 640 px page never does. Single process; the numbers depend on the machine printed above.
"""

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from processing_deepsynth import DeepSynthImageProcessor  # noqa: E402

TEXT = (
    "Quarterly report. Revenue grew by 15% to $45 million while operating costs fell to $12 million; the "
    "company opened offices in Zürich, Kraków and São Paulo and hired 120 engineers. "
) * 60
ROWS = [  # label, image processor settings
    ("tiny", dict(mode="tiny")),
    ("small", dict(mode="small")),
    ("base", dict(mode="base")),
    ("large", dict(mode="large")),
    ("gundam", dict(mode="gundam", page_width=1280, page_height=1664, font_size=32, margin=48)),
]


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} usable cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def bench(ip: DeepSynthImageProcessor, seconds: float) -> dict:
    ip(ip.render_text(TEXT)[:1])  # warm-up: font load, allocator
    render = prep = 0.0
    pages = 0
    while render + prep < seconds:
        t0 = time.perf_counter()
        images = ip.render_text(TEXT)
        t1 = time.perf_counter()
        out = ip(images)
        prep += time.perf_counter() - t1
        render += t1 - t0
        pages += len(images)
    return {
        "pages": len(images),
        "tokens": int(out["num_image_tokens"][0]),
        "tiles": len(out.get("pixel_values_local", [])) / len(images),
        "render": pages / render,
        "prep": pages / prep,
        "total": pages / (render + prep),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="time budget per mode")
    args = parser.parse_args()
    print(f"Machine: {machine()}\n")
    print(
        "| mode | views (base/tile, crop) | page px | pages/doc | vision tokens/page | tiles/page "
        "| render pages/s | preprocess pages/s | total pages/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label, settings in ROWS:
        ip = DeepSynthImageProcessor(**settings)
        r = bench(ip, args.seconds)
        print(
            f"| {label} | {ip.base_size}/{ip.image_size}, {ip.crop_mode} | {ip.page_width}x{ip.page_height} "
            f"| {r['pages']} | {r['tokens']} | {r['tiles']:.1f} | {r['render']:.1f} | {r['prep']:.1f} "
            f"| {r['total']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
