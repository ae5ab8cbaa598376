"""Stage T of the byte-grid recipe (issue 16): the decoder learns to locate and copy on the page grid, from text.

No pixels: each vision cell of a rendered page is replaced by the sum of learned embeddings of the characters the
renderer put in its slots (`char_cell_labels`; fixed pitch: 2 characters a cell), laid out exactly as the vision
rows are (rows + `image_newline`, `view_separator`, `<image>` placeholders of the real prompt), and the instruction
goes through the real frozen MiniLM and the instruction projector. The decoder (byte vocabulary) answers as it
will from pages. Vision compute is zero, so locate-and-copy is learned where it is cheap; stage V then trains
the vision tower to produce these same cell embeddings (`grid_align_stage.py`).

    python recipes/demo/grid_text_stage.py --processor runs/grid/processor --cells runs/grid/cells.pt --out runs/grid/T --steps 6000

Training-only machinery: the saved `model.safetensors` is a plain DeepSynth checkpoint (random vision tower);
`--cells` is the fixed cell code, shared with stage V. Resumes from `OUT/state.pt` when rerun.
"""

import argparse
import bisect
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

ROOT = Path(__file__).resolve().parents[2]
for path in (ROOT, ROOT / "src"):
    sys.path.insert(0, str(path))

from configuration_deepsynth import DeepSynthConfig  # noqa: E402
from modeling_deepsynth import DeepSynthForConditionalGeneration, DeepSynthModel  # noqa: E402
from processing_deepsynth import DeepSynthProcessor  # noqa: E402
from run_instruct import resolve_encoder_name, set_instruction_encoder  # noqa: E402

from deepsynth.data.synthetic import document_packets, iter_examples, random_lines_split  # noqa: E402
from deepsynth.evaluation.metrics import character_error_rate, exact_match, f1_score  # noqa: E402
from deepsynth.training.labels import char_cell_labels  # noqa: E402

HERE = Path(__file__).resolve().parent
# Transcription is left to stage V (reading): with bytes its targets are ~300 tokens, half the compute for no copying.
ANSWERING = ("qa", "extraction", "qa", "extraction", "summary")
EVAL_SPLITS = ("test_values", "test_paraphrases", "test_layouts")


class CellEmbedder(nn.Module):
    """(..., slots) character classes of a cell (0 = empty slot) -> (..., D): one embedding table per slot, summed.

    A fixed random code (frozen, from a seed, saved as `cells.pt`): random vectors in D >= 128 dimensions are
    nearly orthogonal, so the code is as readable as a learned one, and stage V (the vision tower learning to
    write it) can run beside stage T instead of after it."""

    def __init__(self, num_classes: int, slots: int, dim: int, seed: int = 0):
        super().__init__()
        self.slots = nn.ModuleList(nn.Embedding(num_classes, dim) for _ in range(slots))
        gen = torch.Generator().manual_seed(seed)
        for table in self.slots:
            table.weight.data = 0.5 * torch.randn(table.weight.shape, generator=gen)  # ~ projected vision scale
        self.requires_grad_(False)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return sum(table(labels[..., s]) for s, table in enumerate(self.slots))

    def init_from_token_embeddings(self, embeddings: torch.Tensor, tokenizer, charset: str) -> None:
        """A learnable code that starts as the decoder's own byte embeddings (tied to lm_head): slot 0 of a cell
        holding c is E[c], so attending to that cell already points the output at c; slot 1 is E[c] under a fixed
        random rotation (the slots must differ). Empty slots start at zero."""
        ids = torch.tensor([tokenizer.convert_tokens_to_ids(ch) for ch in charset])
        rotation = torch.linalg.qr(torch.randn(embeddings.shape[1], embeddings.shape[1],
                                               generator=torch.Generator().manual_seed(1)))[0]
        for s, table in enumerate(self.slots):
            rows = embeddings[ids].detach() @ (rotation if s else torch.eye(embeddings.shape[1]))
            table.weight.data = torch.cat([torch.zeros(1, rows.shape[1]), rows])
        self.requires_grad_(True)

    @classmethod
    def for_processor(cls, processor, dim: int, path: Path | None = None) -> "CellEmbedder":
        """The code of `path` when it exists, else a new one (seed 0), written to `path`."""
        ip = processor.image_processor
        cells = cls(len(ip.ocr_charset) + 1, ip.ocr_cell_slots, dim)
        if path is not None and path.exists():
            state = torch.load(path)
            if state["slots.0.weight"].shape != cells.slots[0].weight.shape:
                raise ValueError(f"{path} is a code of shape {tuple(state['slots.0.weight'].shape)}; this decoder "
                                 f"and processor need {tuple(cells.slots[0].weight.shape)} (pass another --cells)")
            cells.load_state_dict(state)
        elif path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(cells.state_dict(), path)
        return cells


def decoder_overrides(config: dict, hidden: int | None, layers: int | None, intermediate: int | None = None) -> dict:
    """Decoder size from the command line: head size stays 32 (the smallest vLLM's CPU attention takes)."""
    tc = config["text_config"]
    if hidden:
        tc.update(hidden_size=hidden, intermediate_size=3 * hidden, moe_intermediate_size=hidden,
                  num_attention_heads=hidden // 32, num_key_value_heads=hidden // 32)
    if layers:
        tc.update(num_hidden_layers=layers, mlp_layer_types=["dense"] * layers)
    if intermediate:
        tc.update(intermediate_size=intermediate)
    return config


def grown_decoder_state(state: dict, old_layers: int, new_layers: int) -> dict:
    """A stage-T state with `old_layers` decoder layers -> the same function with `new_layers` (>= old): old layer
    i moves to i * new // old, and each layer in between starts as a copy of the one before it with its two output
    projections (attention `o_proj`, MLP `down_proj`) zeroed, so it adds nothing to the residual stream until it
    learns to (the decoder grows without forgetting what it has learned; its width, and so stage V's cell code,
    stays)."""
    if new_layers < old_layers:
        raise ValueError(f"cannot grow a {old_layers}-layer decoder to {new_layers} layers")
    prefix = "model.language_model.layers."
    keep = {k: v for k, v in state.items() if not k.startswith(prefix)}
    place = [i * new_layers // old_layers for i in range(old_layers)]  # ascending, place[0] == 0
    for j in range(new_layers):
        source = bisect.bisect_right(place, j) - 1  # the last old layer placed at or before j
        fresh = place[source] != j
        for k, v in state.items():
            if k.startswith(f"{prefix}{source}."):
                name = k[len(f"{prefix}{source}."):]
                zero = fresh and name in ("self_attn.o_proj.weight", "mlp.down_proj.weight")
                keep[f"{prefix}{j}.{name}"] = torch.zeros_like(v) if zero else v.clone()
    return keep


def widened_mlp_state(state: dict, intermediate: int, noise: float = 0.01) -> dict:
    """The same function with `intermediate` MLP units a layer (>= the state's, at most twice): new unit j is a copy
    of unit j's input rows (`gate_proj`, `up_proj`) and the two share unit j's `down_proj` column half and half, so
    the sum is unchanged (Net2WiderNet). The copies' input rows get `noise` x their std of Gaussian noise (a fixed
    seed, so a start widened again for weight averaging is the run's own starting point): exact copies would get
    identical updates and stay one unit. (Measured first: new units with zero `down_proj` columns and fresh input
    rows train as if absent, the loss equal to the narrow run's to 3 decimals through 1,075 steps.)"""
    out, generator = dict(state), torch.Generator().manual_seed(0)
    decoder = "model.language_model.layers."
    for key in sorted(k for k in state if k.startswith(decoder) and k.endswith("mlp.down_proj.weight")):
        mlp, down = key[: -len("down_proj.weight")], state[key].float()  # down: (H, I)
        extra = intermediate - down.shape[1]
        if not 0 <= extra <= down.shape[1]:
            raise ValueError(f"cannot widen an MLP of {down.shape[1]} units to {intermediate} (at most twice)")
        for name in ("gate_proj", "up_proj"):
            stored = state[f"{mlp}{name}.weight"]
            rows = stored.float()  # (I, H)
            copies = rows[:extra] + noise * rows[:extra].std() * torch.randn(extra, rows.shape[1], generator=generator)
            out[f"{mlp}{name}.weight"] = torch.cat([rows, copies]).to(stored.dtype)
        shared = down.clone()
        shared[:, :extra] /= 2
        out[key] = torch.cat([shared, shared[:, :extra]], dim=1).to(state[key].dtype)
    return out


def stage_state(folder: Path, layers: int, intermediate: int | None = None) -> dict:
    """`folder`'s stage-T weights with a `layers`-layer decoder of `intermediate` MLP units; one with fewer layers is
    grown (`grown_decoder_state`), one with fewer MLP units widened (`widened_mlp_state`)."""
    from safetensors.torch import load_file

    state = load_file(folder / "model.safetensors")
    old = json.loads((folder / "config.json").read_text())["text_config"]
    state = grown_decoder_state(state, old["num_hidden_layers"], layers) if old["num_hidden_layers"] != layers else state
    if intermediate and intermediate != old.get("intermediate_size", intermediate):
        state = widened_mlp_state(state, intermediate)
    return state


def load_stage(model, folder: Path) -> None:
    """`folder`'s stage-T weights into `model` (`stage_state`: grown to the model's decoder if it is smaller)."""
    tc = model.config.text_config
    state = stage_state(folder, tc.num_hidden_layers, tc.intermediate_size)
    result = model.load_state_dict(state, strict=False)
    if set(result.missing_keys) - {"lm_head.weight"} or result.unexpected_keys:  # lm_head is tied, not saved
        raise ValueError(f"{folder} does not fit this decoder: {result}")


def build(args):
    processor = DeepSynthProcessor.from_pretrained(args.processor)
    if getattr(args, "max_pages", None):  # saved with the output: the checkpoint reads documents this long
        processor.image_processor.max_pages = args.max_pages
    config = decoder_overrides(json.loads(Path(args.config).read_text()), args.hidden, args.layers,
                                getattr(args, "intermediate", None))
    torch.manual_seed(args.seed)
    model = DeepSynthForConditionalGeneration(DeepSynthConfig.from_dict(config))
    model, processor = set_instruction_encoder(model, processor, resolve_encoder_name("minilm"))
    learn = getattr(args, "learn_code", False)
    cells = CellEmbedder.for_processor(processor, model.config.text_config.hidden_size, None if learn else args.cells)
    if learn:
        if args.cells.exists() and not (args.out / "state.pt").exists():
            raise ValueError(f"--learn-code writes the learned code to {args.cells}, which exists: pass a new path")
        ip = processor.image_processor
        cells.init_from_token_embeddings(model.get_input_embeddings().weight, processor.tokenizer, ip.ocr_charset)
    return model, processor, cells


TOWER_PREFIXES = ("model.vision_tower.", "model.multi_modal_projector.")


def projected_cells(base, pixels: torch.Tensor) -> torch.Tensor:
    """Rendered pages (n, 3, S, S) -> what the vision tower writes for each cell, projected (n, g*g, D)."""
    return base.multi_modal_projector(base.vision_tower(pixels).last_hidden_state)


class GridBatcher:
    """Rows -> decoder inputs with the page grid as cell embeddings; frozen encoder states cached per instruction.

    `from_pixels`: the page rows are what the (frozen) vision tower writes for the rendered pages instead of the
    exact cell code (stage T on the tower's own features: the decoder learns the tower's residual, which costs it
    exact answers from pixels though it is small, mse 0.004, next to Gaussian training noise of variance 0.09)."""

    def __init__(self, model, processor, cells, from_pixels: bool = False):
        self.model, self.processor, self.cells, self.from_pixels = model, processor, cells, from_pixels
        self.ip = processor.image_processor
        self.encoder_cache: dict[tuple, torch.Tensor] = {}

    def example(self, row: dict, with_answer: bool = True) -> dict:
        labels = char_cell_labels(self.ip, row["text"])  # (P, g, g, slots)
        g = labels.shape[1]
        vision = {"images_spatial_crop": torch.ones(len(labels), 2, dtype=torch.long),
                  "num_image_tokens": torch.full((len(labels),), g * (g + 1) + 1)}
        ex = self.processor.encode_example(row["text"], row["instruction"],
                                           row["answer"] if with_answer else None, vision=vision)
        ex["cell_labels"], ex["text"] = labels, row["text"]
        return ex

    def instruction_rows(self, examples) -> torch.Tensor:
        enc = self.model.model.instruction_encoder
        states = []
        for ex in examples:
            key = tuple(ex["instruction_input_ids"])
            if key not in self.encoder_cache:
                with torch.no_grad():
                    ids = torch.tensor([key])
                    self.encoder_cache[key] = enc(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
            states.append(self.encoder_cache[key])
        return self.model.model.instruction_projector(torch.cat(states))  # (N_instruction_tokens, D)

    def grids(self, examples) -> list[torch.Tensor]:
        """Per example (P, g, g, D): the cell code of its characters, or the tower's features of its pages."""
        if not self.from_pixels:
            return [self.cells(ex["cell_labels"]) for ex in examples]
        base = self.model.model
        pixels = torch.cat([self.ip.preprocess(ex["text"])["pixel_values"] for ex in examples])  # (sum P, 3, S, S)
        was_training = base.vision_tower.training
        base.vision_tower.eval()  # frozen: the features the product computes
        with torch.no_grad():
            feats = projected_cells(base, pixels)  # (sum P, g*g, D)
        base.vision_tower.train(was_training)
        sizes = [len(ex["cell_labels"]) for ex in examples]
        return [f.reshape(ex["cell_labels"].shape[:3] + (-1,)) for f, ex in zip(feats.split(sizes), examples)]

    def page_rows(self, examples, noise: float = 0.0) -> torch.Tensor:
        base = self.model.model
        rows = []
        for grid in self.grids(examples):
            if noise:
                grid = grid + noise * torch.randn_like(grid)
            for page in grid:
                rows += [base._with_newlines(page), base.view_separator.unsqueeze(0)]
        return torch.cat(rows)  # (N_image_tokens, D)

    def input_embeds(self, examples, input_ids, noise: float = 0.0, pages=None) -> torch.Tensor:
        """Token embeddings with the page rows and the instruction states spliced in (B, L, D). `pages`:
        `page_rows(examples)` when already computed."""
        base, config = self.model.model, self.model.config
        embeds = base.get_input_embeddings()(input_ids)  # (B, L, D)
        pages = self.page_rows(examples, noise) if pages is None else pages
        embeds = DeepSynthModel._splice(embeds, input_ids, config.image_token_id, pages, "image")
        return DeepSynthModel._splice(embeds, input_ids, config.instruction_token_id,
                                      self.instruction_rows(examples), "instruction")

    def logits(self, examples, input_ids, attention_mask, noise: float = 0.0) -> torch.Tensor:
        embeds = self.input_embeds(examples, input_ids, noise)
        hidden = self.model.model.language_model(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
        return self.model.lm_head(hidden)  # (B, L, V)

    def loss(self, rows, noise: float) -> torch.Tensor:
        examples = [self.example(r) for r in rows]
        batch = self.processor.collate(examples, padding_side="right")
        logits = self.logits(examples, batch["input_ids"], batch["attention_mask"], noise)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten())

    @torch.no_grad()
    def answer(self, row: dict, max_new_tokens: int, use_cache: bool = True) -> str:
        """Greedy, one row: what the decoder answers from the grid. With the KV cache each new token costs one
        position instead of the whole prompt (a page is 273 positions); `use_cache=False` recomputes the prompt
        every step (the reference the cache is tested against)."""
        ex = self.example(row, with_answer=False)
        ids = torch.tensor([ex["input_ids"]])
        pages = self.page_rows([ex])
        eos = self.processor.tokenizer.eos_token_id
        decoder, out = self.model.model.language_model, []
        cache = DynamicCache(config=decoder.config) if use_cache else None
        embeds = self.input_embeds([ex], ids, pages=pages)  # (1, L, D)
        for _ in range(max_new_tokens):
            if use_cache:
                hidden = decoder(inputs_embeds=embeds, cache=cache, use_cache=True).last_hidden_state
            else:
                hidden = decoder(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2])).last_hidden_state
            nxt = int(self.model.lm_head(hidden[:, -1])[0].argmax())
            if nxt == eos:
                break
            out.append(nxt)
            step = self.model.model.get_input_embeddings()(torch.tensor([[nxt]]))  # (1, 1, D)
            embeds = step if use_cache else torch.cat([embeds, step], dim=1)
        return self.processor.tokenizer.decode(out, skip_special_tokens=True).strip()


def training_rows(args):
    """Endless training rows: generator documents with `args.tasks`, and with probability
    `args.random_lines_fraction` a short transcription of 1-3 lines of random characters instead (the copy
    primitive, cell code -> bytes in reading order, with no language prior and short targets)."""
    docs = iter_examples("train", 10**9, seed=args.data_seed, tasks=tuple(args.tasks), invented_names=args.invented_names,
                         all_digits=args.all_digits, shuffled_fields=args.shuffled_fields, long_names=args.long_names,
                         more_layouts=args.more_layouts, label_synonyms=args.label_synonyms,
                         direct_questions=args.direct_questions)
    rng, chunk = random.Random(f"grid-t:{args.data_seed}"), 0
    while True:
        randoms = random_lines_split("train", 512, seed=args.data_seed * 1000 + chunk, lines=(1, 3), chars=(4, 32))
        chunk += 1
        for row in randoms:
            while rng.random() >= args.random_lines_fraction:
                yield next(docs)[0]
            yield row


def fits_pages(image_processor):
    """text -> whether it lays out on at most max_pages pages (nothing is cut)."""
    return lambda text: len(image_processor.layout_text(text, image_processor.max_pages + 1)) <= image_processor.max_pages


def training_batches(args, image_processor):
    """Endless batches: `args.batch` rows of `training_rows`, and with probability `args.packet_batches` instead
    `args.packet_batch` long multi-document packets (Q&A about one document of 4-7 on up to max_pages pages).
    Packets come as whole batches: one in a batch of short rows would pad all of them to its length."""
    rows, rng, chunk = training_rows(args), random.Random(f"grid-t-packets:{args.data_seed}"), 0
    fits = fits_pages(image_processor)
    while True:
        packets = document_packets("train", 256, seed=args.data_seed * 1000 + chunk,
                                   documents=tuple(args.packet_documents), fits=fits)
        chunk += 1
        for start in range(0, len(packets), args.packet_batch):
            while rng.random() >= args.packet_batches:
                yield [next(rows) for _ in range(args.batch)]
            yield packets[start:start + args.packet_batch]


def eval_rows(n: int) -> dict[str, list[dict]]:
    """The card's held-out rows (seed 1): per split, the first `n` Q&A and `n` extraction rows."""
    out = {}
    for split in EVAL_SPLITS:
        rows = [r for r, _ in iter_examples(split, 12 * n, seed=1)]
        out[split] = [r for r in rows if r["task"] == "qa"][:n] + [r for r in rows if r["task"] == "extraction"][:n]
    return out


def eval_packets(image_processor, n: int) -> list[dict]:
    """Held-out long rows: packets of 4-7 `test_values` documents (seed 1) on at most max_pages pages."""
    return document_packets("test_values", n, seed=1, documents=(4, 7), fits=fits_pages(image_processor))


def eval_documents(n: int) -> list[dict]:
    """Fresh whole documents to transcribe (validation, seed 3)."""
    return [r for r, _ in iter_examples("validation", n, seed=3, tasks=("transcription",))]


def evaluate(batcher, rows_by_split: dict, packets: list[dict], documents: list[dict], lines: int = 12) -> dict:
    """Held-out Q&A / extraction EM and F1 per split; the copy primitive: CER of `lines` fresh random-line
    transcriptions (1-3 lines of random characters; ~0.97 before copying appears); whole-document transcription
    CER of `documents`; Q&A EM on the multi-document `packets` (all, and where the asked one is not the first)."""
    batcher.model.eval()

    def cer(rows, extra):
        return round(character_error_rate([batcher.answer(r, extra(r)) for r in rows], [r["answer"] for r in rows]), 3)

    random_lines = random_lines_split("validation", lines, seed=3, lines=(1, 3), chars=(4, 32))
    report = {"random_lines_cer": cer(random_lines, lambda r: 100),
              "transcription_cer": cer(documents, lambda r: len(r["answer"]) + 16)}
    hits = [exact_match(batcher.answer(r, 32), r["answer"]) for r in packets]
    later = [h for h, r in zip(hits, packets) if r["asked_document"]]
    report["packets/qa"] = {"em": round(100 * sum(hits) / len(hits), 1),
                            "em_later_documents": round(100 * sum(later) / max(1, len(later)), 1),
                            "chars": round(sum(len(r["text"]) for r in packets) / len(packets))}
    for split, rows in rows_by_split.items():
        for task in ("qa", "extraction"):
            task_rows = [r for r in rows if r["task"] == task]
            preds = [batcher.answer(r, 32 if task == "qa" else 96) for r in task_rows]
            report[f"{split}/{task}"] = {
                "em": round(100 * sum(exact_match(p, r["answer"]) for p, r in zip(preds, task_rows)) / len(task_rows), 1),
                "f1": round(100 * sum(f1_score(p, r["answer"]) for p, r in zip(preds, task_rows)) / len(task_rows), 1),
                "example": [task_rows[0]["answer"], preds[0]],
            }
    batcher.model.train()
    return report


def optimizer_and_schedule(params, args):
    """AdamW and a linear warmup over the start of a cosine that spans `args.steps` (stages T and V)."""
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / args.warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / args.steps))))
    return optimizer, schedule


def optimizer_step(loss, params, optimizer, schedule) -> None:
    """One update of stages T and V: backward, gradient norm clipped to 1, AdamW step, schedule step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    schedule.step()


def save_state(state_file: Path, step: int, optimizer, schedule, **modules) -> None:
    torch.save({**{name: m.state_dict() for name, m in modules.items()}, "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "step": step}, state_file)


def resume(state_file: Path, optimizer, schedule, **modules) -> int:
    """Restore what `save_state` wrote (when it exists); returns the step to continue from (0: a fresh run)."""
    if not state_file.exists():
        return 0
    state = torch.load(state_file, weights_only=False)
    for name, module in modules.items():
        module.load_state_dict(state[name])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    print(f"resumed at step {state['step']}", flush=True)
    return state["step"]


def log(log_file: Path, record: dict) -> None:
    print(json.dumps(record), flush=True)
    with open(log_file, "a") as f:
        f.write(json.dumps(record) + "\n")


def trainable(model):
    """The decoder, the instruction projector and the layout vectors; MiniLM, the vision tower (unused here) and
    the cell code are frozen."""
    base = model.model
    for p in model.parameters():
        p.requires_grad_(False)
    parts = [base.language_model, base.instruction_projector, model.lm_head]
    params = [p for part in parts for p in part.parameters()] + [base.image_newline, base.view_separator]
    for p in params:
        p.requires_grad_(True)
    return list({id(p): p for p in params}.values())


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processor", required=True)
    parser.add_argument("--config", default=str(HERE / "grid" / "model_config.json"))
    parser.add_argument("--out", type=Path, help="the stage's folder (required unless --evaluate-only)")
    parser.add_argument("--evaluate-only", type=Path, metavar="JSON",
                        help="score --init on the held-out rows from the exact cell code (the text-only bound of "
                        "its decoder: the page's characters without reading) into this file, and stop")
    parser.add_argument("--cells", type=Path, required=True, help="the cell code shared with stage V (made if absent)")
    parser.add_argument("--learn-code", action="store_true",
                        help="learn the cell code, starting from the byte embeddings; written to --cells at the end")
    parser.add_argument("--init", type=Path, help="start from this stage-T folder's weights (a new schedule)")
    parser.add_argument("--hidden", type=int, help="decoder width (default: the config's)")
    parser.add_argument("--intermediate", type=int, help="MLP units a decoder layer (default: the config's, 3 x "
                        "--hidden); more than --init's widens its MLPs (existing units split in two)")
    parser.add_argument("--layers", type=int, help="decoder layers (default: the config's); more than --init's grows "
                        "its decoder (new layers start as identities)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--stop-after", type=int, help="stop (and write the folder) at this step; the schedule "
                        "still spans --steps")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--pages-from-tower", type=Path, metavar="STAGE_V",
                        help="answer from the pixels: the page rows are what this stage-V folder's vision tower "
                             "(vision.pt, frozen) writes for the rendered pages, not the exact cell code")
    parser.add_argument("--noise", type=float, default=0.3, help="Gaussian noise on cell embeddings (vision is noisy)")
    parser.add_argument("--data-seed", type=int, default=5)
    parser.add_argument("--invented-names", type=float, default=0.3)
    parser.add_argument("--all-digits", type=float, default=0.0,
                        help="share of documents whose numbers end in any digit (else 0-6: the held-out rule)")
    parser.add_argument("--shuffled-fields", type=float, default=0.0, help="share of documents with facts in a random order")
    parser.add_argument("--long-names", type=float, default=0.0,
                        help="share of invented-name documents with long names and consonant clusters")
    parser.add_argument("--more-layouts", type=float, default=0.0,
                        help="share of documents in one of the extra training layouts (EXTRA_TRAIN_LAYOUTS)")
    parser.add_argument("--label-synonyms", type=float, default=0.0,
                        help="probability that a field is labelled with one of its synonyms (LABEL_SYNONYMS)")
    parser.add_argument("--direct-questions", type=float, default=0.0,
                        help="share of Q&A rows asked with a direct who / when question (DIRECT_QUESTIONS)")
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--eval-rows", type=int, default=40)
    parser.add_argument("--eval-documents", type=int, default=6, help="fresh documents to transcribe whole")
    parser.add_argument("--eval-lines", type=int, default=12, help="fresh random-line pages to transcribe")
    parser.add_argument("--eval-packets", type=int, default=24, help="held-out multi-document packets to answer")
    parser.add_argument("--random-lines-fraction", type=float, default=0.0,
                        help="share of short random-character transcription rows")
    parser.add_argument("--packet-batches", type=float, default=0.0,
                        help="share of batches made of long multi-document packets (Q&A about one of them)")
    parser.add_argument("--packet-batch", type=int, default=4, help="rows in a packet batch")
    parser.add_argument("--packet-documents", type=int, nargs=2, default=[4, 7], metavar=("MIN", "MAX"),
                        help="documents in a training packet")
    parser.add_argument("--max-pages", type=int, help="pages a document may fill (default: the processor's)")
    parser.add_argument("--tasks", nargs="+", default=list(ANSWERING), help="generator tasks, cycled")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.out is None and args.evaluate_only is None:
        parser.error("--out is required (unless --evaluate-only)")
    if args.evaluate_only is not None and args.init is None:
        parser.error("--evaluate-only scores the weights of --init: pass it")
    return args


def main(argv=None):
    args = parse_args(argv)
    model, processor, cells = build(args)
    if args.init is not None:
        load_stage(model, args.init)
    if args.pages_from_tower is not None:
        model.load_state_dict(torch.load(args.pages_from_tower / "vision.pt"), strict=False)
    from_pixels = args.pages_from_tower is not None
    if args.evaluate_only is not None:
        report = evaluate(GridBatcher(model, processor, cells, from_pixels), eval_rows(args.eval_rows),
                          eval_packets(processor.image_processor, args.eval_packets), eval_documents(args.eval_documents),
                          args.eval_lines)
        args.evaluate_only.write_text(json.dumps({"model": str(args.init), "rows": args.eval_rows, **report}, indent=1))
        print(json.dumps(report), flush=True)
        return
    params = trainable(model) + (list(cells.parameters()) if args.learn_code else [])
    optimizer, schedule = optimizer_and_schedule(params, args)
    args.out.mkdir(parents=True, exist_ok=True)
    state_file, log_file = args.out / "state.pt", args.out / "log.jsonl"
    step = resume(state_file, optimizer, schedule, model=model, cells=cells)
    batcher = GridBatcher(model, processor, cells, from_pixels)
    held_out = eval_rows(args.eval_rows)
    held_out_packets = eval_packets(processor.image_processor, args.eval_packets)
    held_out_documents = eval_documents(args.eval_documents)
    stream = training_batches(args, processor.image_processor)
    for _ in range(step):  # replay the data order on resume
        next(stream)
    random.seed(args.seed + step)
    torch.manual_seed(args.seed + step)
    model.train()
    started, window = time.time(), []
    end = min(args.steps, args.stop_after or args.steps)
    while step < end:
        rows = next(stream)
        loss = batcher.loss(rows, args.noise)
        optimizer_step(loss, params, optimizer, schedule)
        step += 1
        window.append(loss.item())
        if step % 25 == 0 or step == end:  # and always the last step: its state is saved
            record = {"step": step, "loss": round(sum(window) / len(window), 4), "lr": schedule.get_last_lr()[0],
                      "s_per_step": round((time.time() - started) / len(window), 3)}
            window, started = [], time.time()
            if step % args.eval_every == 0 or step == end:
                record["eval"] = evaluate(batcher, held_out, held_out_packets, held_out_documents, args.eval_lines)
                save_state(state_file, step, optimizer, schedule, model=model, cells=cells)
                started = time.time()
            log(log_file, record)
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    if args.learn_code:
        torch.save(cells.state_dict(), args.cells)
    print(f"stage T -> {args.out}", flush=True)


if __name__ == "__main__":
    main()
