"""Can a small DeepSynthForConditionalGeneration learn to READ page pixels on a CPU?  (issue 7)

Transcription ("OCR:" -> all lines of the page) of synthetic black-on-white pages, trained from scratch with a
plain AdamW loop, measured on FRESH pages: greedy `model.generate` character error rate, and a linear probe of
what the frozen vision features encode (first character of each vision cell of text line 1).

Run (from the repo root, venv active):
    # stage A: random strings, 1-2 lines (~1800 steps -> CER ~0.35 on fresh pages)
    python research/reading/probe_reading.py --tag A --text random --lines 1,2 --minutes 20
    python research/reading/probe_reading.py --tag A --resume --minutes 10          # continue, same stage
    # stage B: field pages, 3-8 lines, from A's weights (~540 steps -> CER ~0.06)
    python research/reading/probe_reading.py --tag B --init-from research/reading/ckpt_A.pt \
        --text fields --lines 3,8 --warmup 50 --minutes 15

Key levers (see research/reading/NOTES.md): `--sam-init 0.02` (the SAM default initializer_range of 1e-10
leaves the vision tower dead: its output differs between images by ~1e-39 at init), SAM patch 4 so one
vision token covers 16x16 px (~2-3 glyphs of a 11 px font), text lines on the vision-token rows,
`--aux` a training-only per-vision-token character loss (no architecture change), random-character text first.
"""

import argparse
import json
import math
import os
import random
import string
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path[:0] = [REPO, os.path.join(REPO, "src")]
from configuration_deepsynth import DeepSynthConfig  # noqa: E402
from deepsynth.evaluation.metrics import levenshtein  # noqa: E402
from modeling_deepsynth import DeepSynthForConditionalGeneration  # noqa: E402

BOS, EOS, PAD, OFF = 0, 1, 2, 3  # byte b -> id b + OFF
IMAGE_ID, INSTR_ID, VOCAB = 259, 260, 264
FONTS = {
    "sans": "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "mono": "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
}
RAND_CHARS = string.ascii_letters + string.digits + "$%.,:-/"
AUX_CHARS = string.ascii_letters + string.digits + "$%.,:-/&'()"  # aux classes: 0 = empty cell slot
AUX_INDEX = {c: i + 1 for i, c in enumerate(AUX_CHARS)}


def encode(text: str) -> list[int]:
    return [b + OFF for b in text.encode("utf-8")]


def decode(ids) -> str:
    return bytes(i - OFF for i in ids if OFF <= i < OFF + 256).decode("utf-8", "replace")


# ---------------------------------------------------------------- documents -----------------------------------
FIELDS = ["Company", "Date", "Revenue", "Profit", "Growth", "Margin", "CEO", "City", "Staff", "Quarter",
          "Region", "Ticker", "Debt", "Assets", "Rating", "Price", "Units", "Share", "Cost", "Budget"]
SYLL = ["ac", "me", "nor", "th", "wi", "nd", "blu", "pe", "ak", "sto", "ne", "bri", "dge", "red", "wo", "od",
        "sil", "ver", "li", "gre", "en", "fi", "eld", "ir", "on", "cl", "ad", "oak", "mo", "nt", "sum", "mit",
        "har", "bor", "pi", "ne", "cr", "est", "za", "ky", "lo", "vi", "qu", "ex", "ur", "ta"]
CITIES = ["Boston", "Denver", "Austin", "Paris", "Lagos", "Oslo", "Lima", "Tokyo", "Cairo", "Dublin", "Seoul",
          "Quito", "Perth", "Milan", "Delhi", "Miami"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def word(rng, n=None):
    n = n or rng.randint(2, 3)
    return "".join(rng.choice(SYLL) for _ in range(n)).capitalize()


def value_for(field: str, rng: random.Random) -> str:
    if field == "Company":
        return f"{word(rng)} {rng.choice(['Corp', 'Inc', 'Labs', 'Group', 'Ltd'])}"
    if field == "Date":
        return rng.choice([f"{rng.randint(2001, 2029)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                           f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {rng.randint(2001, 2029)}"])
    if field in ("Revenue", "Profit", "Debt", "Assets", "Budget", "Cost"):
        return rng.choice([f"${rng.randint(1, 999)}.{rng.randint(0, 9)}M", f"${rng.randint(1, 99)}.{rng.randint(0, 99):02d}B",
                           f"${rng.randint(1, 999)},{rng.randint(0, 999):03d}"])
    if field in ("Growth", "Margin", "Share"):
        return f"{rng.choice(['', '-'])}{rng.randint(0, 99)}.{rng.randint(0, 9)}%"
    if field == "CEO":
        return f"{word(rng, 2)} {word(rng, 2)}"
    if field == "City":
        return rng.choice(CITIES)
    if field == "Quarter":
        return f"Q{rng.randint(1, 4)} {rng.randint(2001, 2029)}"
    if field == "Ticker":
        return "".join(rng.choice(string.ascii_uppercase) for _ in range(rng.randint(3, 4)))
    if field == "Rating":
        return rng.choice(["AAA", "AA+", "A-", "BBB", "B+", "CCC"]) + f" {rng.randint(1, 9)}/10"
    return str(rng.randint(1, 99999))  # Staff, Units, Price, Region codes


CHAR_PITCH = 0  # --char-pitch: every glyph centred in its own fixed-width slot (typewriter layout)


def line_width(s, font):
    return len(s) * CHAR_PITCH if CHAR_PITCH else font.getlength(s)


def char_x(s, j, x0, font):
    """Left edge and centre (px) of glyph j of line s as `render` draws it."""
    if CHAR_PITCH:
        left = x0 + j * CHAR_PITCH + (CHAR_PITCH - font.getlength(s[j])) / 2
        return left, x0 + (j + 0.5) * CHAR_PITCH
    left = x0 + font.getlength(s[:j])
    return left, left + font.getlength(s[j]) / 2


def make_lines(rng, kind, n_lines, max_w, font):
    lines = []
    while len(lines) < n_lines:
        if kind == "random":
            s = "".join(rng.choice(RAND_CHARS) for _ in range(rng.randint(4, 30)))
        else:
            f = rng.choice(FIELDS)
            s = f"{f}: {value_for(f, rng)}"
        while line_width(s, font) > max_w:
            s = s[:-1]
        s = s.strip()
        if s:
            lines.append(s)
    return lines


def render(lines, args, font, rng):
    """Black on white square page; line i sits on vision-token row i (pitch = 4*patch px) unless --pitch."""
    S, cell = args.page, 4 * args.patch
    pitch = args.pitch or cell
    img = Image.new("L", (S, S), 255)
    draw = ImageDraw.Draw(img)
    x0 = args.margin + (rng.randint(0, args.jitter) if args.jitter else 0)
    y0 = (rng.randint(0, args.jitter) if args.jitter else 0)
    g = S // cell
    aux = np.zeros((g, g, args.aux_slots), dtype=np.int64)
    asc, desc = font.getmetrics()
    for i, s in enumerate(lines):
        y = y0 + i * pitch + (pitch - (asc + desc)) // 2
        if CHAR_PITCH:
            for j, ch in enumerate(s):
                draw.text((char_x(s, j, x0, font)[0], y), ch, font=font, fill=0)
        else:
            draw.text((x0, y), s, font=font, fill=0)
        cy = y + asc * 0.6
        r = min(int(cy // cell), g - 1)
        for j, ch in enumerate(s):
            if ch == " " or ch not in AUX_INDEX:
                continue
            cx = char_x(s, j, x0, font)[1]
            c = min(int(cx // cell), g - 1)
            k = int((aux[r, c] > 0).sum())
            if k < args.aux_slots:
                aux[r, c, k] = AUX_INDEX[ch]
    return img, aux


def make_batch(n, args, font, rng, lo, hi):
    imgs, targets, auxs = [], [], []
    for _ in range(n):
        kind = args.text if args.text != "mix" else rng.choice(["random", "fields"])
        lines = make_lines(rng, kind, rng.randint(lo, hi), args.page - args.margin - args.jitter - 1, font)
        img, aux = render(lines, args, font, rng)
        imgs.append(np.asarray(img, dtype=np.float32))
        targets.append("\n".join(lines))
        auxs.append(aux)
    px = torch.from_numpy(np.stack(imgs))[:, None].expand(-1, 3, -1, -1)
    px = (px / 255.0 - 0.5) / 0.5
    return px.contiguous(), targets, torch.from_numpy(np.stack(auxs))


# ---------------------------------------------------------------- model ----------------------------------------
def build_config(args) -> DeepSynthConfig:
    g = args.page // (4 * args.patch)
    L = args.dec_layers
    return DeepSynthConfig(
        vision_config={
            "sam_config": {
                "hidden_size": args.sam_dim, "num_hidden_layers": args.sam_layers, "num_attention_heads": args.sam_heads,
                "mlp_dim": 2 * args.sam_dim, "image_size": args.page, "patch_size": args.patch,
                "window_size": args.window, "global_attn_indexes": [args.sam_layers - 1] if args.sam_global else [],
                "output_channels": args.sam_dim, "downsample_channels": [args.clip_dim // 2 * 1, args.clip_dim],
                "initializer_range": args.sam_init,
            },
            "encoder_config": {
                "hidden_size": args.clip_dim, "num_hidden_layers": args.clip_layers, "num_attention_heads": 4,
                "intermediate_size": 2 * args.clip_dim, "image_size": g * 14, "patch_size": 14,
            },
        },
        text_config={
            "vocab_size": VOCAB, "hidden_size": args.dec_dim, "intermediate_size": 3 * args.dec_dim,
            "moe_intermediate_size": args.dec_dim, "num_hidden_layers": L, "num_attention_heads": args.dec_heads,
            "num_key_value_heads": args.dec_heads, "n_routed_experts": 4, "n_shared_experts": 1,
            "num_experts_per_tok": 2, "mlp_layer_types": ["dense"] * L, "max_position_embeddings": 1024,
        },
        instruction_fusion="none",
        image_token_id=IMAGE_ID,
        instruction_token_id=INSTR_ID,
    )


PROMPT = encode("OCR:")


def build_inputs(targets, n_img):
    prefix = [BOS] + [IMAGE_ID] * n_img + PROMPT
    seqs = [prefix + encode(t) + [EOS] for t in targets]
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), PAD)
    labels = torch.full((len(seqs), T), -100)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        labels[i, len(prefix): len(s)] = torch.tensor(s[len(prefix):])
    return ids, mask, labels, prefix


def grid_feats(image_features, B, g):
    """(B*(g*(g+1)+1), D) spliced rows -> (B, g, g, D) vision cells (newlines / separator dropped)."""
    D = image_features.shape[-1]
    x = image_features.reshape(B, g * (g + 1) + 1, D)[:, : g * (g + 1)]
    return x.reshape(B, g, g + 1, D)[:, :, :g]


@torch.no_grad()
def evaluate(model, args, font, n_pages, lo, hi, seed):
    model.eval()
    rng = random.Random(seed)
    n_img = model.config.num_image_tokens(args.page, args.page)
    errs = chars = exact_lines = n_lines = 0
    samples = []
    for start in range(0, n_pages, 16):
        px, targets, _ = make_batch(min(16, n_pages - start), args, font, rng, lo, hi)
        _, _, _, prefix = build_inputs(targets, n_img)
        ids = torch.tensor([prefix] * len(targets))
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=px,
                             max_new_tokens=max(len(t) for t in targets) + 8, do_sample=False,
                             eos_token_id=EOS, pad_token_id=PAD)
        for t, o in zip(targets, out[:, ids.shape[1]:].tolist()):
            o = o[: o.index(EOS)] if EOS in o else o
            pred = decode(o)
            errs += levenshtein(pred, t)
            chars += len(t)
            tl, pl = t.split("\n"), pred.split("\n")
            n_lines += len(tl)
            exact_lines += sum(1 for i, l in enumerate(tl) if i < len(pl) and pl[i] == l)
            if len(samples) < 2:
                samples.append((t, pred))
    model.train()
    return errs / max(chars, 1), exact_lines / max(n_lines, 1), samples


@torch.no_grad()
def probe(model, args, font, seed, n_train=384, n_test=192):
    """Linear probe on FROZEN vision features: for every cell of vision-token row 0 (text line 1), predict the
    first character whose centre lies in that cell (or 'empty'). Returns (probe accuracy, majority baseline)."""
    model.eval()
    rng = random.Random(seed)
    g = args.page // (4 * args.patch)
    X, Y = [], []
    for start in range(0, n_train + n_test, 32):
        px, _, aux = make_batch(32, args, font, rng, 1, 3)
        f = grid_feats(torch.cat(model.get_image_features(px)), px.shape[0], g)  # (B,g,g,D)
        X.append(f[:, 0].reshape(-1, f.shape[-1]))
        Y.append(aux[:, 0, :, 0].reshape(-1))
    X, Y = torch.cat(X), torch.cat(Y)
    ntr = n_train * g
    X = (X - X[:ntr].mean(0)) / (X[:ntr].std(0) + 1e-5)
    head = torch.nn.Linear(X.shape[1], len(AUX_CHARS) + 1)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-4)
    with torch.enable_grad():
        for _ in range(300):
            opt.zero_grad()
            F.cross_entropy(head(X[:ntr]), Y[:ntr]).backward()
            opt.step()
    acc = (head(X[ntr:]).argmax(-1) == Y[ntr:]).float().mean().item()
    nonempty = Y[ntr:] > 0
    acc_ne = (head(X[ntr:]).argmax(-1) == Y[ntr:])[nonempty].float().mean().item()
    base = (Y[ntr:] == torch.mode(Y[:ntr]).values).float().mean().item()
    model.train()
    return acc, acc_ne, base


# ---------------------------------------------------------------- main -----------------------------------------
def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tag", default="run")
    p.add_argument("--page", type=int, default=128)
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--font", default="sans", choices=list(FONTS))
    p.add_argument("--font-size", type=int, default=11)
    p.add_argument("--pitch", type=int, default=0, help="line pitch px (0 = one vision-token row, 4*patch)")
    p.add_argument("--margin", type=int, default=2)
    p.add_argument("--char-pitch", type=int, default=0,
                   help="px per character: each glyph centred in a fixed slot (with --margin 0 and a pitch that "
                        "divides the 4*patch cell, every vision token holds the same character slots)")
    p.add_argument("--jitter", type=int, default=0, help="random page offset (px) of the text block")
    p.add_argument("--text", default="random", choices=["random", "fields", "mix"])
    p.add_argument("--lines", default="1,2", help="min,max lines per page (curriculum start)")
    p.add_argument("--max-lines", type=int, default=0, help="curriculum: grow max lines up to this as CER drops")
    p.add_argument("--grow-cer", type=float, default=0.15, help="grow the line count once eval CER is below this")
    p.add_argument("--steps", type=int, default=100000)
    p.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget of this invocation")
    p.add_argument("--bs", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--vision-lr-mult", type=float, default=2.0)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--aux", type=float, default=1.0, help="weight of the per-vision-cell character loss")
    p.add_argument("--aux-slots", type=int, default=4)
    p.add_argument("--sam-init", type=float, default=0.02, help="SAM initializer_range (library default 1e-10)")
    p.add_argument("--sam-dim", type=int, default=64)
    p.add_argument("--sam-layers", type=int, default=2)
    p.add_argument("--sam-heads", type=int, default=2)
    p.add_argument("--sam-global", type=int, default=0, help="1 = last SAM layer global (2.5x slower step)")
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--clip-dim", type=int, default=128)
    p.add_argument("--clip-layers", type=int, default=2)
    p.add_argument("--dec-dim", type=int, default=128)
    p.add_argument("--dec-layers", type=int, default=3)
    p.add_argument("--dec-heads", type=int, default=4)
    p.add_argument("--eval-every", type=int, default=150)
    p.add_argument("--eval-pages", type=int, default=48)
    p.add_argument("--probe-every", type=int, default=0, help="0 = probe only at start and end")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--init-from", default="", help="load weights (not optimizer) from this checkpoint")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    global CHAR_PITCH
    CHAR_PITCH = args.char_pitch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    here = os.path.dirname(os.path.abspath(__file__))
    ckpt_path = os.path.join(here, f"ckpt_{args.tag}.pt")
    font = ImageFont.truetype(FONTS[args.font], args.font_size)
    lo, hi = map(int, args.lines.split(","))

    config = build_config(args)
    model = DeepSynthForConditionalGeneration(config)
    model.config.use_cache = True
    g = args.page // (4 * args.patch)
    n_img = config.num_image_tokens(args.page, args.page)
    aux_head = torch.nn.Linear(args.dec_dim, args.aux_slots * (len(AUX_CHARS) + 1))
    vision = [p_ for n, p_ in model.named_parameters() if "vision_tower" in n or "multi_modal_projector" in n]
    vid = {id(p_) for p_ in vision}
    rest = [p_ for p_ in model.parameters() if id(p_) not in vid]
    opt = torch.optim.AdamW([
        {"params": vision + list(aux_head.parameters()), "lr": args.lr * args.vision_lr_mult, "base": args.lr * args.vision_lr_mult},
        {"params": rest, "lr": args.lr, "base": args.lr},
    ], betas=(0.9, 0.98), weight_decay=0.01)
    step, elapsed, pages_seen, history = 0, 0.0, 0, []
    if args.resume and os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ck["model"]); aux_head.load_state_dict(ck["aux"]); opt.load_state_dict(ck["opt"])
        step, elapsed, pages_seen, history = ck["step"], ck["elapsed"], ck["pages"], ck["history"]
        lo, hi = ck["lines"]
        print(f"resumed {ckpt_path} at step {step}, lines {lo},{hi}", flush=True)
    elif args.init_from:
        ck = torch.load(args.init_from, weights_only=False)
        model.load_state_dict(ck["model"]); aux_head.load_state_dict(ck["aux"])
        print(f"init from {args.init_from} (step {ck['step']})", flush=True)
    n_params = sum(p_.numel() for p_ in model.parameters())
    n_vis = sum(p_.numel() for p_ in vision)
    print(f"params {n_params/1e6:.2f}M (vision {n_vis/1e6:.2f}M) grid {g}x{g} image tokens {n_img} "
          f"args {json.dumps(vars(args))}", flush=True)

    def save():
        torch.save({"model": model.state_dict(), "aux": aux_head.state_dict(), "opt": opt.state_dict(), "step": step,
                    "elapsed": elapsed, "pages": pages_seen, "history": history, "lines": (lo, hi),
                    "args": vars(args), "config": config.to_dict()}, ckpt_path)

    if step == 0:
        acc, acc_ne, base = probe(model, args, font, seed=10_000)
        print(f"probe@0 cell-first-char acc {acc:.3f} (non-empty {acc_ne:.3f}; majority {base:.3f})", flush=True)

    rng = random.Random(args.seed * 1000 + step)
    t_start = time.time()
    t_last, loss_acc, aux_acc, n_acc = time.time(), 0.0, 0.0, 0
    model.train()
    while step < args.steps and (time.time() - t_start) < args.minutes * 60:
        px, targets, aux = make_batch(args.bs, args, font, rng, lo, hi)
        ids, mask, labels, _ = build_inputs(targets, n_img)
        out = model(input_ids=ids, attention_mask=mask, pixel_values=px, labels=labels, use_cache=False)
        loss = out.loss
        if args.aux > 0:
            f = grid_feats(out.image_features, px.shape[0], g)
            logits = aux_head(f).reshape(-1, len(AUX_CHARS) + 1)
            aux_loss = F.cross_entropy(logits, aux.reshape(-1))
            (loss + args.aux * aux_loss).backward()
            aux_acc += aux_loss.item()
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(aux_head.parameters()), 1.0)
        warm = min(1.0, (step + 1) / args.warmup)
        for gr in opt.param_groups:
            gr["lr"] = gr["base"] * warm
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        pages_seen += args.bs
        loss_acc += loss.item(); n_acc += 1
        if step % 25 == 0:
            dt = time.time() - t_last
            print(f"step {step} loss {loss_acc/n_acc:.3f} aux {aux_acc/n_acc:.3f} lines {lo},{hi} "
                  f"{25/dt:.2f} steps/s {25*args.bs/dt:.1f} pages/s", flush=True)
            t_last, loss_acc, aux_acc, n_acc = time.time(), 0.0, 0.0, 0
        if step % args.eval_every == 0:
            te = time.time()
            cer, line_em, samples = evaluate(model, args, font, args.eval_pages, lo, hi, seed=123_456 + step)
            rec = {"step": step, "min": round((elapsed + time.time() - t_start) / 60, 2), "pages": pages_seen,
                   "lines": [lo, hi], "cer": round(cer, 4), "line_em": round(line_em, 3)}
            if args.probe_every and step % args.probe_every == 0:
                rec["probe"] = [round(v, 3) for v in probe(model, args, font, seed=10_000)]
            history.append(rec)
            print(f"EVAL {json.dumps(rec)} ({time.time()-te:.0f}s)", flush=True)
            for t, pr in samples[:1]:
                print(f"   gold {t!r}\n   pred {pr!r}", flush=True)
            if args.max_lines and cer < args.grow_cer and hi < args.max_lines:
                hi = min(args.max_lines, hi + 2)
                lo = min(hi, max(lo, hi - 4))
                print(f"CURRICULUM -> lines {lo},{hi}", flush=True)
            t_start_extra = time.time() - te
            t_start += t_start_extra  # eval time does not count against the training budget
            t_last += t_start_extra
            save()
    elapsed += time.time() - t_start
    save()
    acc, acc_ne, base = probe(model, args, font, seed=10_000)
    cer, line_em, samples = evaluate(model, args, font, 96, lo, hi, seed=999_999)
    print(f"FINAL step {step} train-min {elapsed/60:.1f} pages {pages_seen} lines {lo},{hi} CER {cer:.4f} "
          f"line-EM {line_em:.3f} probe {acc:.3f} (non-empty {acc_ne:.3f}, majority {base:.3f})", flush=True)
    for t, pr in samples:
        print(f"   gold {t!r}\n   pred {pr!r}", flush=True)


if __name__ == "__main__":
    main()
