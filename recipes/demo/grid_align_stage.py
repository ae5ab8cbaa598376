"""Stage V of the byte-grid recipe (issue 16): the vision tower learns to write, for every cell of a rendered page,
the cell embedding that stage T's decoder reads (`grid_text_stage.py`), so the decoder's locate-and-copy runs on
pixels unchanged. Only SAM, CLIP and the vision projector train (MSE to the frozen cell embeddings); no decoder
compute. Pages: half business documents of the generator, half random characters (no language prior to lean on).

    python recipes/demo/grid_align_stage.py --processor runs/grid/processor --cells runs/grid/cells.pt \
        --out runs/grid/V --steps 2000

The cell code is fixed (`--cells`, shared with stage T), so this runs beside stage T. Reports the MSE and the
cell accuracy (a projected cell decoded to the nearest code among the distinct cells of the batch; all cells and
cells with a character). Writes `vision.pt` (SAM, CLIP, projector), which stage J puts under stage T's decoder.
Resumes from OUT/state.pt.

`--from-checkpoint DIR` trains nothing: it takes the tower of a byte-grid checkpoint (the committed demo model),
checks on 16 fresh pages that it writes `--cells`' code (the code is made from a seed, so a fresh checkout makes the
same one), and writes it as `vision.pt`, so that the recipe continues from the committed model without its runs.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from grid_text_stage import (  # noqa: E402  (and the repo path)
    TOWER_PREFIXES, build, log, optimizer_and_schedule, optimizer_step, projected_cells, resume, save_state)

from deepsynth.data.synthetic import iter_examples, random_lines_split  # noqa: E402
from deepsynth.training.labels import char_cell_labels  # noqa: E402


def page_stream(seed: int):
    """Endless rows: a generator document, then a page of random characters, alternately."""
    docs = iter_examples("train", 10**9, seed=seed, tasks=("transcription",), invented_names=0.5)
    chunk = 0
    while True:
        randoms = random_lines_split("train", 256, seed=seed * 1000 + chunk, lines=(2, 16), chars=(4, 32))
        chunk += 1
        for row in randoms:
            yield next(docs)[0]["text"]
            yield row["text"]


def targets_and_pixels(ip, cells, texts):
    labels = [char_cell_labels(ip, t) for t in texts]  # (P, g, g, slots) each
    pixels = torch.cat([ip.preprocess(t)["pixel_values"] for t in texts])  # (sum P, 3, S, S)
    lab = torch.cat(labels)  # (sum P, g, g, slots)
    with torch.no_grad():
        target = cells(lab).flatten(1, 2)  # (sum P, g*g, D)
    return pixels, lab.flatten(1, 2), target


def cell_accuracy(feats, lab, cells) -> tuple[float, float]:
    """(all cells, cells with a character): how often a projected cell is nearest to the code of its own
    characters among the distinct cells of the same batch."""
    flat = lab.reshape(-1, lab.shape[-1])
    keys, inverse = torch.unique(flat, dim=0, return_inverse=True)
    with torch.no_grad():
        nearest = torch.cdist(feats.reshape(-1, feats.shape[-1]), cells(keys)).argmin(-1)
    right, inked = nearest == inverse, flat.gt(0).any(-1)
    return right.float().mean().item(), right[inked].float().mean().item()


def vision_state(model) -> dict:
    """What stage V trains: SAM + CLIP (`vision_tower.*`) and the projector, under their names in the model."""
    return {k: v for k, v in model.state_dict().items() if k.startswith(TOWER_PREFIXES)}


def export_tower(model, cells, ip, checkpoint: Path, out: Path) -> None:
    """`checkpoint`'s vision tower -> `out/vision.pt`, refused unless it writes this cell code."""
    from safetensors.torch import load_file

    stored = load_file(checkpoint / "model.safetensors")
    tower = {k: v.float() for k, v in stored.items() if k.startswith(TOWER_PREFIXES)}
    missing = sorted(set(vision_state(model)) - set(tower))
    if missing:
        raise ValueError(f"{checkpoint} has no byte-grid vision tower: {missing[:3]} missing")
    model.load_state_dict(tower, strict=False)
    model.eval()
    texts = [row["text"] for row in random_lines_split("validation", 8, seed=11, lines=(2, 16), chars=(4, 32))]
    texts += [r["text"] for r, _ in iter_examples("validation", 8, seed=11, tasks=("transcription",))]
    pixels, lab, target = targets_and_pixels(ip, cells, texts)
    with torch.no_grad():
        feats = projected_cells(model.model, pixels)
    mse, (acc, inked) = F.mse_loss(feats, target).item(), cell_accuracy(feats, lab, cells)
    print(f"{checkpoint}'s tower on {len(texts)} fresh pages: mse {mse:.4f}, cell accuracy {acc:.4f} "
          f"(cells with a character {inked:.4f})", flush=True)
    if inked < 0.9:
        raise ValueError(f"{checkpoint}'s tower does not write this cell code (pass the --cells it was trained on)")
    out.mkdir(parents=True, exist_ok=True)
    torch.save(tower, out / "vision.pt")
    print(f"stage V (exported) -> {out}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processor", required=True)
    parser.add_argument("--config", default=str(HERE / "grid" / "model_config.json"))
    parser.add_argument("--cells", type=Path, required=True, help="the cell code shared with stage T (made if absent)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--hidden", type=int, help="decoder width = the code's size (default: the config's); as stage T")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=8, help="pages per step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--data-seed", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--from-checkpoint", type=Path, help="export this checkpoint's tower instead of training")
    args = parser.parse_args(argv)

    args.layers = None  # the decoder is not used here; its width is the projector's and the code's
    model, processor, cells = build(args)
    ip = processor.image_processor
    base = model.model
    if args.from_checkpoint is not None:
        export_tower(model, cells, ip, args.from_checkpoint, args.out)
        return
    model.requires_grad_(False)
    params = list(base.vision_tower.parameters()) + list(base.multi_modal_projector.parameters())
    for p in params:
        p.requires_grad_(True)
    torch.manual_seed(args.seed)
    optimizer, schedule = optimizer_and_schedule(params, args)
    args.out.mkdir(parents=True, exist_ok=True)
    state_file, log_file = args.out / "state.pt", args.out / "log.jsonl"
    step = resume(state_file, optimizer, schedule, model=model)
    stream = page_stream(args.data_seed)
    for _ in range(step * args.batch):
        next(stream)
    base.vision_tower.train()
    started, losses = time.time(), []
    while step < args.steps:
        texts = [next(stream) for _ in range(args.batch)]
        pixels, lab, target = targets_and_pixels(ip, cells, texts)
        feats = projected_cells(base, pixels)
        loss = F.mse_loss(feats, target)
        optimizer_step(loss, params, optimizer, schedule)
        step += 1
        losses.append(loss.item())
        if step % 25 == 0 or step == args.steps:  # and always the last step: its state is saved
            acc, inked = cell_accuracy(feats.detach(), lab, cells)
            record = {"step": step, "mse": round(sum(losses) / len(losses), 4), "cell_acc": round(acc, 4),
                      "inked_cell_acc": round(inked, 4),
                      "s_per_step": round((time.time() - started) / len(losses), 3)}
            losses, started = [], time.time()
            log(log_file, record)
            if step % 250 == 0 or step == args.steps:
                save_state(state_file, step, optimizer, schedule, model=model)
    torch.save(vision_state(model), args.out / "vision.pt")
    print(f"stage V -> {args.out}", flush=True)


if __name__ == "__main__":
    main()
