"""Per-vision-cell labels from the renderer, for the training-only losses of run_instruct.py: which characters the
renderer drew in every vision cell (`char_cell_labels`, the reading loss `--ocr_aux_weight`) and where it drew the
answer (`span_cell_mask`, the locating loss `--locate_aux_weight`).

Training machinery, so it stays out of the remote code that every checkpoint carries: each function takes the
`DeepSynthImageProcessor` (`ip`) whose renderer laid the text out, and reads its geometry, font and the
`ocr_charset` / `ocr_cell_slots` saved in its config.
"""

import os
import sys
from pathlib import Path

import torch

try:  # installed as top-level modules (setup.py py_modules) or on sys.path already
    import processing_deepsynth  # noqa: F401  (only to find out whether the remote-code files are importable)
except ImportError:  # a source checkout run with PYTHONPATH=./src: the remote-code files live at the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from configuration_deepsynth import vision_grid_size  # noqa: E402
from processing_deepsynth import SQUASH_MAX  # noqa: E402


def cell_grid(ip, mode=None) -> int | None:
    """Side g of the global view's vision grid when that view is the whole page squashed to a square (no crop
    mode, view <= 640 px), else None: only then do page pixels map onto cells without letterboxing."""
    base_size, image_size, crop_mode = ip.geometry(mode)
    if crop_mode or image_size > SQUASH_MAX:
        return None
    return vision_grid_size(image_size, ip.patch_size, ip.downsample_ratio)


def char_cell_labels(ip, text: str, mode=None, max_pages: int | None = None) -> torch.Tensor:
    """Per-vision-cell character labels of `text` as `ip` renders it: (P, g, g, ocr_cell_slots) long.

    Cell [p, r, c] lists (left to right, up to `ocr_cell_slots`) the classes of the characters whose glyph
    centre falls in vision cell (r, c) of the global view of page p; 0 = empty slot. Class i is
    `ocr_charset[i - 1]`; spaces and characters outside the charset get no label (they are skipped). P is
    the number of pages `preprocess` makes of `text` (first `max_pages` pages). Geometries without a
    squashed global view (crop mode, views > 640 px) have no cell mapping: every entry is -100 there.
    """
    pages = ip.layout_text(text)[: ip.max_pages if max_pages is None else max_pages]
    g, slots = cell_grid(ip, mode), ip.ocr_cell_slots
    if g is None:
        side = label_grid_side(ip, mode)
        return torch.full((len(pages), side, side, slots), -100, dtype=torch.long)
    index = {ch: i + 1 for i, ch in enumerate(ip.ocr_charset)}
    out = torch.zeros((len(pages), g, g, slots), dtype=torch.long)
    for p, _, line, cells in line_cells(ip, pages, g):
        for ch, cell in zip(line, cells):
            if ch in index and cell is not None:
                labels = out[p, cell[0], cell[1]]
                k = int((labels > 0).sum())
                if k < slots:
                    labels[k] = index[ch]
    return out


def span_cell_mask(ip, text: str, span: str, mode=None, max_pages: int | None = None) -> torch.Tensor:
    """Where `span` is written on the rendered pages: (P, g, g) long, 1 on the vision cells holding a
    non-space character of an occurrence of `span` within one line, 0 elsewhere; -100 everywhere when `span`
    is on no line (wrapped across lines, not in the text) or the geometry has no cell mapping. For the
    training-only locating loss (run_instruct `--locate_aux_weight`): the renderer knows where the answer is."""
    pages = ip.layout_text(text)[: ip.max_pages if max_pages is None else max_pages]
    g = cell_grid(ip, mode)
    if g is None:
        side = label_grid_side(ip, mode)
        return torch.full((len(pages), side, side), -100, dtype=torch.long)
    out = torch.zeros((len(pages), g, g), dtype=torch.long)
    span = span.strip()
    for p, _, line, cells in line_cells(ip, pages, g) if span else ():
        start = line.find(span)
        while start >= 0:
            for ch, cell in zip(span, cells[start : start + len(span)]):
                if not ch.isspace() and cell is not None:
                    out[p, cell[0], cell[1]] = 1
            start = line.find(span, start + 1)
    return out if out.any() else out.fill_(-100)


def label_grid_side(ip, mode=None) -> int:
    """Side of the global view's vision grid: the shape of per-cell labels, whether or not pages map onto it."""
    base_size, image_size, crop_mode = ip.geometry(mode)
    return vision_grid_size(base_size if crop_mode else image_size, ip.patch_size, ip.downsample_ratio)


def line_cells(ip, pages: list[list[str]], g: int):
    """(page, line index, line, [(row, col) or None per character]) for every line drawn on a g x g grid:
    a glyph is in the cell of its centre, at the middle of the x-height."""
    font = ip._font()
    cell_w, cell_h = ip.page_width / g, ip.page_height / g
    ascent = font.getmetrics()[0]
    for p, lines in enumerate(pages):
        first, step = ip._first_baseline(font, lines[0]), ip._line_step()
        for i, line in enumerate(lines):
            if not line:
                continue
            row = int((first + i * step - 0.4 * ascent) // cell_h)
            if not 0 <= row < g:
                continue
            cols = [int(centre // cell_w) for centre in ip._glyph_centres(font, line)]
            yield p, i, line, [(row, c) if 0 <= c < g else None for c in cols]


# ---- per document: a text document has labels, anything else none ------------------------------------------------
def char_cells(ip, document, num_pages: int, mode=None) -> torch.Tensor:
    """(num_pages, g, g, slots): `char_cell_labels` of a plain text document (a str that is not a file path);
    images, PDFs, files and lists of pages get -100 everywhere (no loss)."""
    return text_page_labels(ip, document, num_pages, mode,
                            lambda text: char_cell_labels(ip, text, mode=mode), ip.ocr_cell_slots)


def answer_cells(ip, document, answer: str | None, num_pages: int, mode=None) -> torch.Tensor:
    """(num_pages, g, g): where `answer` is drawn on this document's pages (`span_cell_mask`),
    for the training-only locating loss. -100 everywhere (no loss) for images, PDFs, files, lists of pages and
    rows without an answer."""
    return text_page_labels(ip, document, num_pages, mode,
                            lambda text: span_cell_mask(ip, text, answer or "", mode=mode))


def text_page_labels(ip, document, num_pages: int, mode, labels_of, *tail) -> torch.Tensor:
    """`labels_of(text)` for a plain text document (a str that is not a file path) when it has one entry per
    rendered page; else (num_pages, g, g, *tail) of -100 (no loss)."""
    if isinstance(document, str) and not os.path.isfile(document):
        labels = labels_of(document)
        if len(labels) == num_pages:
            return labels
    g = label_grid_side(ip, mode)
    return torch.full((num_pages, g, g, *tail), -100, dtype=torch.long)


__all__ = ["answer_cells", "cell_grid", "char_cell_labels", "char_cells", "label_grid_side", "line_cells",
           "span_cell_mask", "text_page_labels"]
