"""Data pipeline vs training: pages/s that rendering + preprocessing produce per mode, against the pages/s a
training step consumes, measured interleaved in the same run. The pipeline must never be the bottleneck.

    python benchmarks/bench_data_pipeline.py [--config small] [--batch 4] [--quick]

Producer: `benchmarks/bench_preprocess.py`'s measurement (render the same English text into pages with the
processor's font, then global view + tiles + ToTensor/Normalize), one process, no DataLoader workers. Consumer: one
training step of the model (run_instruct's defaults: vision and instruction encoder frozen, AdamW) on a batch of
one-page documents in that mode. Rounds alternate producer and consumer. Headroom = produced / consumed pages/s:
> 1 means one single-threaded worker keeps up; the "share" column is the fraction of a step's wall time that
rendering its pages would take if done on the same core.
"""

import common as C
import bench_preprocess as BP
from processing_deepsynth import DeepSynthImageProcessor


def main():
    p = C.parser(__doc__)
    C.add_config_arg(p)
    p.add_argument("--batch", type=int, default=None, help="pages (one-page documents) per step (default 2)")
    p.add_argument("--modes", default=None, help="comma list (default all: tiny,small,base,large,gundam)")
    args = p.parse_args()
    C.setup(args)
    import torch

    from bench_mfu import make_batch

    batch_size = args.batch or 2
    repeats = 2 if args.quick else 3
    modes = (args.modes or ("tiny,base" if args.quick else "tiny,small,base,large,gundam")).split(",")
    settings = dict(BP.ROWS)
    cfg = C.load_config(args.config)
    model = C.build_model(cfg)
    model.model.vision_tower.requires_grad_(False)
    if model.model.instruction_encoder is not None:
        model.model.instruction_encoder.requires_grad_(False)
    model.train()
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-5)
    proc = C.make_processor(cfg, mode="tiny")
    rows, results = [], {}
    for mode in modes:
        ip = DeepSynthImageProcessor(**settings[mode])
        proc.image_processor = ip
        batch = make_batch(proc, batch_size)
        pages_per_step = len(batch["pixel_values"])
        produced = []

        def produce():
            produced.append(BP.bench(ip, 0.8 if args.quick else 1.5))

        def step():
            model(**batch).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        times = C.interleave({"produce": produce, "step": step}, repeats)
        prod = C.med([r["total"] for r in produced[-repeats:]])
        render = C.med([r["render"] for r in produced[-repeats:]])
        prep = C.med([r["prep"] for r in produced[-repeats:]])
        cons = pages_per_step / C.med(times["step"])
        headroom = C.med([r["total"] / (pages_per_step / t) for r, t in zip(produced[-repeats:], times["step"])])
        share = (pages_per_step / prod) / C.med(times["step"])
        tokens = produced[-1]["tokens"]
        tiles = produced[-1]["tiles"]
        rows.append([f"{mode}", f"{tokens}" + (f" ({tiles:.0f} tiles)" if tiles else ""), f"{render:.1f}",
                     f"{prep:.1f}", f"**{prod:.1f}**", f"**{cons:.2f}**", f"**{headroom:.0f}×**",
                     f"{share * 100:.1f}%"])
        results[mode] = {"render": render, "prep": prep, "produce": prod, "consume": cons, "headroom": headroom,
                         "share": share, "step_seconds": times["step"]}
    body = (
        f"Config `{args.config}` ({C.describe_config(cfg)}); training batch = {batch_size} one-page documents; "
        f"{repeats} interleaved rounds. Pages per document and page sizes as in bench_preprocess.py (gundam on a "
        "1280x1664 page so that it tiles).\n\n"
        + C.md_table(["mode", "vision tokens/page", "render pages/s", "preprocess pages/s",
                      "produced pages/s (render + preprocess)", "consumed pages/s (training step)",
                      "headroom", "share of step time"], rows)
        + "\n\nThe pipeline is not the bottleneck when headroom > 1 (one DataLoader worker suffices); with "
        "`--dataloader_num_workers N` it scales with free cores."
    )
    C.finish(args, "Data pipeline (rendering + preprocessing) vs training-step consumption", body, results)


if __name__ == "__main__":
    main()
