"""Processor: DeepSeek-OCR preprocessing parity, rendering, document types, collation, bad input, save/load."""

import hashlib
import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from _processor_helpers import byte_ids, byte_tokenizer, minilm_tokenizer, text_pdf, upstream_processor
from PIL import Image
from safetensors.torch import load_file

from configuration_deepsynth import DeepSynthConfig, num_image_tokens
from deepsynth.tokenization import build_decoder_tokenizer
import rendering_deepsynth
from processing_deepsynth import DeepSynthCollator, DeepSynthImageProcessor, DeepSynthProcessor

IMG = 128815  # upstream image token id (the fixture's ids before the 511 substitution)
REALSIZE_SHA256 = {  # README: SHA-256 of infer()'s bf16 images_ori bytes
    "base_1024": "8ff2f18f264e6972cd80d64e57cd211d738fbd488767523f7acc28f7ee222c9a",
    "small_640": "4ed0f2898c48020d157778bf59da2f4d268dc6ecfe2f4233b90967121dcdb9b6",
}


@pytest.fixture(scope="module")
def fx(fixture_dir):
    return {
        "dir": fixture_dir,
        "pre": load_file(fixture_dir / "preprocess.safetensors"),
        "inputs": load_file(fixture_dir / "inputs.safetensors"),
    }


def u8(image):
    return np.asarray(image, dtype=np.uint8)


def small_ip(**kw):
    """Fast geometry for tests: 128 px views (7 image tokens per page), 200x160 pages."""
    defaults = dict(mode=None, base_size=128, page_width=200, page_height=160, margin=12, font_size=12)
    return DeepSynthImageProcessor(**{**defaults, **kw})


# ---- parity with upstream infer() --------------------------------------------------------------------------------
@pytest.mark.parametrize("item,page,size", [(0, "page_a.png", 256), (1, "page_b.png", 160)])
def test_fixture_views_and_pixels_exact(fx, item, page, size):
    ip = DeepSynthImageProcessor(mode=None, base_size=size, bf16_round=True)
    global_view, tiles, grid = ip.page_views(ip.load_pages(str(fx["dir"] / page))[0])
    expected_u8 = fx["pre"][f"item{item}.global_view_u8"].numpy()
    assert np.array_equal(u8(global_view), expected_u8) and tiles == [] and grid == (1, 1)
    formula = ((torch.from_numpy(expected_u8).permute(2, 0, 1).float() / 255 - 0.5) / 0.5).to(torch.bfloat16).float()
    expected = fx["inputs"][f"item{item}.images_ori"]
    assert torch.equal(formula[None], expected)
    out = ip(str(fx["dir"] / page))
    assert out["pixel_values"].dtype == torch.float32 and torch.equal(out["pixel_values"], expected)
    assert out["images_spatial_crop"].tolist() == fx["pre"][f"item{item}.images_spatial_crop"].tolist() == [[1, 1]]


def test_pixels_are_float32_unrounded_by_default(fx):
    out = DeepSynthImageProcessor(mode=None, base_size=256)(str(fx["dir"] / "page_a.png"))
    view = torch.from_numpy(fx["pre"]["item0.global_view_u8"].numpy()).permute(2, 0, 1).float()
    assert torch.equal(out["pixel_values"][0], (view / 255 - 0.5) / 0.5)
    assert not torch.equal(out["pixel_values"], fx["inputs"]["item0.images_ori"])  # bf16 rounding is opt-in


@pytest.mark.parametrize(
    "key,page,mode,prompt",
    [
        ("item0", "page_a.png", (256, 256, False), "Free OCR. "),
        ("item1", "page_b.png", (160, 160, False), "<|grounding|>Convert the document to markdown. "),
        ("realsize_base_1024", "page_a.png", "base", "Free OCR. "),
        ("realsize_small_640", "page_b.png", "small", "<|grounding|>Convert the document to markdown. "),
    ],
)
def test_fixture_token_layout_exact(fx, key, page, mode, prompt):
    proc = upstream_processor()
    ex = proc(document=str(fx["dir"] / page), instruction=prompt, mode=mode)
    expected = fx["pre"][f"{key}.input_ids_upstream"].tolist()
    assert ex["input_ids"] == expected
    assert [i == IMG for i in ex["input_ids"]] == fx["pre"][f"{key}.images_seq_mask"].tolist()
    n = {"item0": 21, "item1": 13, "realsize_base_1024": 273, "realsize_small_640": 111}[key]
    tail = "\nFree OCR." if "Free" in prompt else "\n<|grounding|>Convert the document to markdown."
    assert expected == [0] + [IMG] * n + byte_ids(tail)


@pytest.mark.parametrize("name,page,mode", [("base_1024", "page_a.png", "base"), ("small_640", "page_b.png", "small")])
def test_realsize_views_and_sha256(fx, name, page, mode):
    ip = DeepSynthImageProcessor(mode=mode, bf16_round=True)
    view, _, _ = ip.page_views(ip.load_pages(str(fx["dir"] / page))[0])
    assert np.array_equal(u8(view), u8(Image.open(fx["dir"] / f"realsize_{name}_global.png").convert("RGB")))
    pixels = ip(str(fx["dir"] / page))["pixel_values"]
    size = {"base": 1024, "small": 640}[mode]
    assert pixels.shape == (1, 3, size, size)
    raw = pixels.to(torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes()
    assert hashlib.sha256(raw).hexdigest() == REALSIZE_SHA256[name]


def test_fixture_batch_left_padding(fx):
    """Collating the two fixture items (each with its own view size) gives the fixture's padded batch."""
    proc = DeepSynthProcessor(
        DeepSynthImageProcessor(mode=None, base_size=256, bf16_round=True),
        byte_tokenizer(image_token_id=511),
        instruction_in_decoder=True,
        answer_separator="",
    )
    item0 = proc(document=str(fx["dir"] / "page_a.png"), instruction="Free OCR. ")
    item1 = proc(
        document=str(fx["dir"] / "page_b.png"),
        instruction="<|grounding|>Convert the document to markdown. ",
        mode=(160, 160, False),  # per-call geometry
    )
    batch = proc.collate([item0, item1])
    assert torch.equal(batch["input_ids"], fx["inputs"]["input_ids"])
    assert torch.equal(batch["attention_mask"], fx["inputs"]["attention_mask"])
    assert torch.equal(batch["images_spatial_crop"], fx["inputs"]["images_spatial_crop"])
    # views of different sizes cannot stack: a list of (3, S, S) tensors in batch order
    assert isinstance(batch["pixel_values"], list) and len(batch["pixel_values"]) == 2
    assert torch.equal(batch["pixel_values"][0], fx["inputs"]["item0.images_ori"][0])
    assert torch.equal(batch["pixel_values"][1], fx["inputs"]["item1.images_ori"][0])


@pytest.mark.parametrize("mode,tokens", [("tiny", 73), ("small", 111), ("base", 273), ("large", 421), ("gundam", 273)])
def test_mode_presets_token_counts(mode, tokens):
    ip = DeepSynthImageProcessor(mode=mode)
    out = ip(np.full((300, 400, 3), 255, np.uint8))  # <= 640 px: no tiles even in gundam
    assert out["num_image_tokens"].tolist() == [tokens]
    size = {"tiny": 512, "small": 640, "base": 1024, "large": 1280, "gundam": 1024}[mode]
    assert out["pixel_values"].shape == (1, 3, size, size) and "pixel_values_local" not in out


# ---- gundam tiling (upstream dynamic_preprocess; expectations computed by hand) -----------------------------------
@pytest.mark.parametrize(
    "size,grid",
    [
        ((600, 400), (1, 1)),  # <= 640 in both dimensions: global view only
        ((1280, 640), (2, 1)),  # aspect 2: (2,1) exact; (4,2) ties but 1280*640 < 0.5*640^2*8
        ((641, 200), (3, 1)),  # aspect 3.2: closest is 3
        ((1000, 1400), (2, 3)),  # aspect 0.714: 2/3 (diff 0.048) beats 1 and 1/2
        ((700, 700), (2, 2)),  # aspect 1: (2,2) first; (3,3) ties but 490000 < 0.5*640^2*9
        ((2000, 2000), (3, 3)),  # same tie, 4e6 > 1843200: the larger grid wins
        ((640, 641), (2, 2)),  # 641 > 640 triggers tiling
    ],
)
def test_gundam_tile_grid(size, grid):
    ip = DeepSynthImageProcessor(mode="gundam")
    view, tiles, got = ip.page_views(Image.new("RGB", size, (200, 200, 200)))
    assert got == grid and view.size == (1024, 1024)
    assert len(tiles) == (0 if grid == (1, 1) else grid[0] * grid[1])
    assert all(t.size == (640, 640) for t in tiles)
    w, h = grid
    expected = 16 * 17 + 1 + (0 if grid == (1, 1) else (h * 10) * (w * 10 + 1))
    assert num_image_tokens(1024, 640, w, h) == expected


def test_gundam_tiles_row_major_and_tensor_order():
    # 1280x1920 page, 2x3 grid of solid colours: each tile must be exactly one colour, in row-major order
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]
    page = Image.new("RGB", (1280, 1920))
    for i, c in enumerate(colours):
        page.paste(c, ((i % 2) * 640, (i // 2) * 640, (i % 2 + 1) * 640, (i // 2 + 1) * 640))
    ip = DeepSynthImageProcessor(mode="gundam")
    out = ip([page, Image.new("RGB", (500, 500))])
    assert out["images_spatial_crop"].tolist() == [[2, 3], [1, 1]]
    assert out["num_image_tokens"].tolist() == [273 + 30 * 21, 273]
    local = out["pixel_values_local"]
    assert local.shape == (6, 3, 640, 640) and out["pixel_values"].shape == (2, 3, 1024, 1024)
    centres = ((local[:, :, 320, 320] * 0.5 + 0.5) * 255).round().tolist()
    assert centres == [list(map(float, c)) for c in colours]


def test_custom_crop_mode_tiles_at_image_size():
    ip = DeepSynthImageProcessor(mode=None, base_size=256, image_size=128, crop_mode=True)
    out = ip(Image.new("RGB", (300, 150), "white"))
    assert out["images_spatial_crop"].tolist() == [[2, 1]]
    assert out["pixel_values_local"].shape == (2, 3, 128, 128) and out["pixel_values"].shape == (1, 3, 256, 256)
    assert out["num_image_tokens"].tolist() == [4 * 5 + (1 * 2) * (2 * 2 + 1) + 1]


# ---- text rendering ----------------------------------------------------------------------------------------------
def test_pagination_count_and_page_size():
    ip = DeepSynthImageProcessor()  # 640x640, margin 24, DejaVu 16 px (ascent 15, descent 4), 20 px line step
    per_page = 1 + (640 - 48 - 19) // 20
    assert per_page == 29
    pages = ip.render_text("\n".join(f"line {i}" for i in range(100)))
    assert len(pages) == 4 and all(p.size == (640, 640) and p.mode == "RGB" for p in pages)
    assert [len(p) for p in ip.layout_text("\n".join(f"line {i}" for i in range(100)))] == [29, 29, 29, 13]


def test_wrapped_ink_stays_inside_margins():
    ip = DeepSynthImageProcessor(page_width=320, page_height=240, margin=20, font_size=14)
    text = (
        "jump! Ǻngström ÉÀÇ façade naïve Łódź Ελληνικά Русский — " * 12
        + "\n\n      indented jigsaw\t"
        + "W" * 120
        + "\njjjj "
        + "x" * 300
    )
    pages = ip.render_text(text)
    assert len(pages) >= 2
    for page in pages:
        ys, xs = np.nonzero(u8(page.convert("L")) < 255)
        assert xs.min() >= 20 and xs.max() <= 320 - 20 - 1, (xs.min(), xs.max())
        assert ys.min() >= 20 and ys.max() <= 240 - 20 - 1, (ys.min(), ys.max())
    width = 320 - 40
    font = ip._font()
    lines = [line for page in ip.layout_text(text) for line in page]
    assert all(ip._width(font, line) <= width for line in lines)
    # no character is lost by wrapping or word cutting
    assert "".join("".join(lines).split()) == "".join(text.replace("\t", "").split())


def test_blank_lines_and_indentation_kept():
    ip = small_ip()
    assert ip.layout_text("a\n\n    b\n\tc") == [["a", "", "    b", "    c"]]
    page = u8(ip.render_text("a\n\n        b")[0].convert("L"))
    rows = np.nonzero((page < 128).any(1))[0]
    first_b_col = np.nonzero((page[rows.max() - 6 : rows.max() + 1] < 128).any(0))[0].min()
    first_a_col = np.nonzero((page[rows.min() : rows.min() + 6] < 128).any(0))[0].min()
    assert first_b_col > first_a_col + 20  # 8 spaces of indentation
    assert rows.max() - rows.min() > 2 * 15  # a blank line between them


def test_long_word_is_cut_and_simple_text_wraps_at_spaces():
    ip = small_ip()
    lines = ip.layout_text("x" * 200)[0]
    assert len(lines) > 1 and "".join(lines) == "x" * 200
    words = " ".join(["alpha beta gamma delta"] * 10)
    wrapped = [line for page in ip.layout_text(words) for line in page]
    assert len(wrapped) > 1 and " ".join(wrapped) == words


def test_rendering_is_deterministic():
    ip = small_ip()
    text = "Déterminisme: same text, same bytes. " * 30
    a, b = ip.render_text(text), DeepSynthImageProcessor(**ip.to_dict()).render_text(text)
    assert [p.tobytes() for p in a] == [p.tobytes() for p in b]


def test_accented_glyphs_are_not_tofu():
    ip = small_ip()

    def glyph(ch):
        page = u8(ip.draw_page([ch]).convert("L"))
        return page[:40, :40].tobytes()

    notdef = glyph("漢")  # DejaVu Sans has no CJK: both render the .notdef box
    assert glyph("字") == notdef and glyph("e") != notdef
    for ch in "éüßçŁ":
        assert glyph(ch) != notdef
    assert glyph("é") != glyph("e")


# ---- document types ----------------------------------------------------------------------------------------------
def test_text_and_text_files(tmp_path):
    ip = small_ip()
    text = "Café report\n\nRevenue grew 15%.\n" * 8
    (tmp_path / "doc.txt").write_text(text, encoding="utf-8")
    (tmp_path / "doc.md").write_text(text, encoding="utf-8")
    (tmp_path / "doc.csv").write_text(text, encoding="utf-8")  # unknown suffix holding UTF-8: text
    expected = ip(text)["pixel_values"]
    assert expected.shape[0] >= 2
    for doc in (str(tmp_path / "doc.txt"), tmp_path / "doc.md", str(tmp_path / "doc.csv")):
        assert torch.equal(ip(doc)["pixel_values"], expected)


def test_png_pil_numpy_and_bytes_agree(tmp_path):
    ip = small_ip()
    arr = np.random.default_rng(0).integers(0, 256, (90, 140, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "p.png")
    expected = ip(Image.fromarray(arr))["pixel_values"]
    for doc in (str(tmp_path / "p.png"), tmp_path / "p.png", arr, (tmp_path / "p.png").read_bytes()):
        assert torch.equal(ip(doc)["pixel_values"], expected)
    gray = arr[..., 0]
    assert torch.equal(ip(gray)["pixel_values"], ip(Image.fromarray(gray).convert("RGB"))["pixel_values"])
    assert torch.equal(ip(Image.fromarray(arr).convert("RGBA"))["pixel_values"], expected)


def test_jpeg_exif_rotation(tmp_path):
    img = Image.new("RGB", (40, 20), "white")
    img.paste((0, 0, 0), (0, 0, 20, 20))  # left half black
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    img.save(tmp_path / "r.jpg", quality=95, exif=exif.tobytes())
    page = small_ip().load_pages(str(tmp_path / "r.jpg"))[0]
    assert page.size == (20, 40) and page.mode == "RGB"
    gray = u8(page.convert("L")).astype(float)
    assert gray[:18].mean() < 30 and gray[22:].mean() > 225  # the black half is now on top


def test_pdf_path_and_bytes(tmp_path):
    red, blue = Image.new("RGB", (200, 100), (255, 0, 0)), Image.new("RGB", (120, 160), (0, 0, 255))
    red.save(tmp_path / "d.pdf", resolution=72, save_all=True, append_images=[blue])
    ip = small_ip(pdf_dpi=72)
    for doc in (str(tmp_path / "d.pdf"), (tmp_path / "d.pdf").read_bytes()):
        pages = ip.load_pages(doc)
        assert [p.size for p in pages] == [(200, 100), (120, 160)]
        assert np.abs(u8(pages[0])[50, 100].astype(int) - [255, 0, 0]).max() <= 8
        assert np.abs(u8(pages[1])[80, 60].astype(int) - [0, 0, 255]).max() <= 8
    assert [p.size for p in small_ip(pdf_dpi=144).load_pages(str(tmp_path / "d.pdf"))] == [(400, 200), (240, 320)]


def test_pdf_text_layer_is_laid_out_on_the_processors_own_pages(tmp_path):
    """pdf_text_layer=True (the demo model): a PDF's embedded text, not its pixels, drawn exactly as the same text
    would be; a PDF without a text layer (a scan) is refused with the reason. Off by default: pixels."""
    pages = [["Quarterly Report - Q3 2024", "Revenue: $45.2M"], ["Report date: October 14, 2024"]]
    data = text_pdf(pages)
    ip = small_ip(pdf_text_layer=True)
    as_text = ip.load_pages("Quarterly Report - Q3 2024\nRevenue: $45.2M\n\nReport date: October 14, 2024")
    (tmp_path / "t.pdf").write_bytes(data)
    for doc in (data, str(tmp_path / "t.pdf")):
        read = ip.load_pages(doc)
        assert len(read) == len(as_text) and all(np.array_equal(u8(a), u8(b)) for a, b in zip(read, as_text))
    assert [p.size for p in small_ip(pdf_dpi=72).load_pages(data)] == [(612, 792), (612, 792)]  # default: pixels
    Image.new("RGB", (50, 50), (0, 0, 0)).save(tmp_path / "scan.pdf", resolution=72)
    with pytest.raises(ValueError, match="no text layer"):
        ip.load_pages(str(tmp_path / "scan.pdf"))


def test_only_own_page_images_refuses_other_images_with_the_reason(tmp_path):
    ip = small_ip(only_own_page_images=True)
    image = Image.new("RGB", (40, 30), (255, 255, 255))
    image.save(tmp_path / "p.png")
    for doc in (image, u8(image), str(tmp_path / "p.png"), (tmp_path / "p.png").read_bytes(), ["text", image]):
        with pytest.raises(ValueError, match="40x30 px.*only_own_page_images=True.*text layer"):
            ip.load_pages(doc)
    own = ip.render_text("a page it drew itself")[0]  # its own page size: read as any image
    own.save(tmp_path / "own.png")
    assert [u8(p).tolist() for p in ip.load_pages(str(tmp_path / "own.png"))] == [u8(own).tolist()]
    assert len(ip.load_pages("still reads text")) == 1
    with pytest.raises(ValueError, match="must be bools"):
        small_ip(only_own_page_images="yes")


def test_list_of_pages_flattens_in_order(tmp_path):
    Image.new("RGB", (50, 50), (0, 255, 0)).save(tmp_path / "d.pdf", resolution=72)
    ip = small_ip(pdf_dpi=72)
    img = Image.new("RGB", (30, 60), (9, 9, 9))
    pages = ip.load_pages(["page one\n" * 17, img, str(tmp_path / "d.pdf")])
    n_text = len(ip.layout_text("page one\n" * 17))  # 18 lines (the last blank), 9 per page
    assert n_text == 2 and len(pages) == 4
    assert pages[2].size == (30, 60) and pages[3].size == (50, 50)
    assert pages[0].size == (200, 160)


# ---- prompt layout, collation -----------------------------------------------------------------------------------
def instruct_processor(**kw):
    """Byte decoder tokenizer (<image> 300, <instruction> 301), MiniLM instruction tokenizer, 7 tokens per page."""
    return DeepSynthProcessor(small_ip(), byte_tokenizer(300, 301), minilm_tokenizer(), **kw)


def test_prompt_layout_and_labels_exact():
    proc = instruct_processor()
    ex = proc(document="Hello", instruction="Who?", answer="Bob")
    who = [101, 2040, 1029, 102]  # MiniLM: [CLS] who ? [SEP]
    prompt = [0] + [300] * 7 + byte_ids("\n") + [301] * 4 + byte_ids("\n")
    assert ex["input_ids"] == prompt + byte_ids("Bob") + [1]
    assert ex["labels"] == [-100] * len(prompt) + byte_ids("Bob") + [1]
    assert ex["instruction_input_ids"] == who and ex["instruction_attention_mask"] == [1] * 4
    assert ex["num_pages"] == 1 and ex["images_spatial_crop"].tolist() == [[1, 1]]
    pooled = instruct_processor(
        instruction_fusion="pooled", num_pooled_instruction_tokens=3, instruction_in_decoder=True
    )
    assert pooled(document="Hello", instruction="Who?")["input_ids"] == (
        [0] + [300] * 7 + byte_ids("\n") + [301] * 3 + byte_ids("Who?\n")
    )
    assert proc.image_token_id == 300 and proc.instruction_token_id == 301


def test_instruction_truncated_to_max_length():
    proc = instruct_processor(max_instruction_length=6)
    ex = proc(document="doc", instruction="What is the revenue growth of the company in 2024?")
    assert ex["instruction_input_ids"] == [101, 2054, 2003, 1996, 6599, 102]
    assert ex["input_ids"].count(301) == 6


def test_user_text_cannot_inject_placeholders():
    proc = instruct_processor(instruction_in_decoder=True)
    ex = proc(document="doc", instruction="<image><instruction>", answer="<image>")
    assert ex["input_ids"].count(300) == 7 and ex["input_ids"].count(301) == len(ex["instruction_input_ids"])


def test_collate_padding_pages_and_tiles():
    proc = DeepSynthProcessor(
        small_ip(mode=None, base_size=128, image_size=64, crop_mode=True), byte_tokenizer(300, 301), minilm_tokenizer()
    )
    two_small_pages = [Image.new("RGB", (60, 60), "white"), Image.new("RGB", (50, 40), "black")]  # <= 64: no tiles
    tiled = Image.new("RGB", (120, 60), (10, 20, 30))  # > 64 px: 2x1 tiles ((4,2) ties, 7200 < 0.5*64*64*8)
    a = proc(document=two_small_pages, instruction="Summarize the text", answer="ok")
    b = proc(document=tiled, instruction="Who?", answer="A longer answer")
    assert a["num_pages"] == 2 and "pixel_values_local" not in a and b["pixel_values_local"].shape == (2, 3, 64, 64)
    batch = DeepSynthCollator(proc)([a, b])
    L = max(len(a["input_ids"]), len(b["input_ids"]))
    assert batch["input_ids"].shape == (2, L) and batch["input_ids"].dtype == torch.long
    for row, ex in enumerate((a, b)):
        pad = L - len(ex["input_ids"])
        assert batch["input_ids"][row].tolist() == [2] * pad + ex["input_ids"]  # left padding with pad id 2
        assert batch["attention_mask"][row].tolist() == [0] * pad + [1] * len(ex["input_ids"])
        assert batch["labels"][row].tolist() == [-100] * pad + ex["labels"]
    labelled = batch["labels"][1][batch["labels"][1] != -100].tolist()
    assert labelled == byte_ids("A longer answer") + [1]
    assert batch["pixel_values"].shape == (3, 3, 128, 128)
    assert torch.equal(batch["pixel_values"][:2], a["pixel_values"]) and torch.equal(
        batch["pixel_values"][2], b["pixel_values"][0]
    )
    assert torch.equal(batch["pixel_values_local"], b["pixel_values_local"])
    assert batch["images_spatial_crop"].tolist() == [[1, 1], [1, 1], [2, 1]]
    assert batch["num_pages"].tolist() == [2, 1]
    n_img = (batch["input_ids"] == 300).sum(1).tolist()
    assert n_img == [2 * num_image_tokens(128, 64), num_image_tokens(128, 64, 2, 1)]
    ti = batch["instruction_input_ids"]
    assert ti[0].tolist() == [101, 7680, 7849, 4697, 1996, 3793, 102]  # [CLS] sum ##mar ##ize the text [SEP]
    assert ti[1].tolist() == [101, 2040, 1029, 102, 0, 0, 0]  # right padded with BERT's pad 0
    assert batch["instruction_attention_mask"].tolist() == [[1] * 7, [1, 1, 1, 1, 0, 0, 0]]
    assert set(batch) == set(proc.model_input_names) | {"labels"}
    right = proc.collate([a, b], padding_side="right")
    assert right["input_ids"][0].tolist()[: len(a["input_ids"])] == a["input_ids"]


def test_batch_call_and_lazy_records_match_single_examples():
    proc = instruct_processor()
    docs, instructions, answers = ["first doc", "second document " * 30], ["Who?", "What is it?"], ["A", "B"]
    batch = proc(document=docs, instruction=instructions, answer=answers, return_tensors="pt")
    singles = proc.collate(
        [proc(document=d, instruction=i, answer=a) for d, i, a in zip(docs, instructions, answers, strict=True)]
    )
    records = [{"text": d, "instruction": i, "answer": a} for d, i, a in zip(docs, instructions, answers, strict=True)]
    lazy = DeepSynthCollator(proc)(records)
    for key in batch:
        assert torch.equal(batch[key], singles[key]) and torch.equal(batch[key], lazy[key]), key
    assert "labels" not in proc(document=docs, instruction=instructions, return_tensors="pt")


def test_dataloader_workers_render_lazily():
    proc = instruct_processor()
    records = [{"document": f"document number {i}", "instruction": "Which number?", "answer": str(i)} for i in range(4)]
    assert pickle.loads(pickle.dumps(proc))(**records[0])["input_ids"] == proc(**records[0])["input_ids"]
    loader = torch.utils.data.DataLoader(records, batch_size=2, num_workers=1, collate_fn=DeepSynthCollator(proc))
    batches = list(loader)
    expected = proc.collate(records[2:])
    assert len(batches) == 2 and all(torch.equal(batches[1][k], expected[k]) for k in expected)


def test_decoder_only_prompt_without_instruction_encoder():
    proc = DeepSynthProcessor(small_ip(), byte_tokenizer(300))
    assert proc.instruction_fusion == "none" and proc.instruction_in_decoder is True
    batch = proc(document="doc", instruction="Who?", return_tensors="pt")
    assert batch["input_ids"][0].tolist() == [0] + [300] * 7 + byte_ids("\nWho?\n")
    assert "instruction_input_ids" not in batch and proc.decode(byte_ids("Bob")) == "Bob"


# ---- bad input ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "document,match",
    [
        ("", "empty document"),
        ("  \n\t\n ", "empty document"),
        ([], "empty document"),
        (12, "unsupported document type int"),
        ({"text": "x"}, "unsupported document type dict"),
        (np.zeros((4, 4, 3), np.float32), "numpy pages must be uint8"),
        (b"", "empty document"),
        (b"\x89PNG\r\n\x1a\nnot really a png", "cannot read document bytes"),
        ("missing_report.pdf", "no such file"),
    ],
)
def test_bad_documents(document, match):
    with pytest.raises(ValueError, match=match):
        small_ip().load_pages(document)


def test_corrupt_and_empty_files(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    (tmp_path / "bad.pdf").write_bytes(b"%PDF-1.4\n garbage that is no pdf")
    (tmp_path / "empty.txt").write_text("   \n")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    png = Image.new("RGB", (64, 64), "red")
    png.save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:60])  # truncated
    for name, match in [
        ("bad.png", "cannot read"),
        ("bad.pdf", "as a PDF"),
        ("empty.txt", "empty document"),
        ("latin1.txt", "not UTF-8 text"),
        ("cut.png", "cannot read"),
    ]:
        with pytest.raises(ValueError, match=match):
            small_ip().load_pages(str(tmp_path / name))
    with pytest.raises(ValueError, match="no such file"):
        small_ip().load_pages(tmp_path / "nope.png")


def test_page_limit_and_truncation():
    ip = small_ip(max_pages=2)
    # 12 px DejaVu: ascent 12, descent 3, 15 px steps; baselines 24, 39, ..., 144 fit above 160 - 12: 9 lines
    text = "line\n" * 200  # 201 lines (the last blank) = 23 pages
    with pytest.raises(ValueError, match="document has more than max_pages=2 pages"):  # 3 pages laid out, not 23
        ip.load_pages(text)
    with pytest.warns(UserWarning, match="keeping the first 2"):
        pages = small_ip(max_pages=2, truncate_pages=True).load_pages(text)
    assert len(pages) == 2 and pages[0].tobytes() == ip.render_text("line\n" * 9)[0].tobytes()


@pytest.mark.parametrize("instruction", ["", "   ", None, 5])
def test_bad_instruction(instruction):
    with pytest.raises(ValueError, match="empty instruction"):
        instruct_processor()(document="doc", instruction=instruction)


def test_bad_batches_and_settings():
    proc = instruct_processor()
    with pytest.raises(ValueError, match="equal length"):
        proc(document=["a"], instruction=["x", "y"])
    with pytest.raises(ValueError, match="equal length"):
        proc(document=["a", "b"], instruction=["x", "y"], answer=["only one"])
    with pytest.raises(ValueError, match="padding_side"):
        proc.collate([proc(document="a", instruction="x")], padding_side="middle")
    with pytest.raises(ValueError, match="some examples have an answer"):
        proc.collate([proc(document="a", instruction="x"), proc(document="a", instruction="x", answer="y")])
    with pytest.raises(ValueError, match="unknown mode 'huge'"):
        DeepSynthImageProcessor(mode="huge")
    with pytest.raises(ValueError, match="mode='base' means base_size=1024"):
        DeepSynthImageProcessor(mode="base", base_size=512)
    with pytest.raises(ValueError, match="needs an instruction_tokenizer"):
        DeepSynthProcessor(small_ip(), byte_tokenizer(300, 301), instruction_fusion="tokens")
    with pytest.raises(ValueError, match="special tokens <image>"):
        DeepSynthProcessor(small_ip(), byte_tokenizer(300), minilm_tokenizer())  # no <instruction> token
    with pytest.raises(ValueError, match="leaves no room"):
        DeepSynthImageProcessor(page_width=60, margin=20)


# ---- tokenizer ---------------------------------------------------------------------------------------------------
def test_build_decoder_tokenizer():
    tok = build_decoder_tokenizer()
    assert [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id] == [0, 1, 2]
    assert tok.convert_ids_to_tokens([0, 1, 2, 3, 4]) == [
        "<｜begin▁of▁sentence｜>",
        "<｜end▁of▁sentence｜>",
        "<｜▁pad▁｜>",
        "<image>",
        "<instruction>",
    ]
    assert len(tok) == 512
    assert tok.backend_tokenizer.to_str() == build_decoder_tokenizer().backend_tokenizer.to_str()
    text = "Héllo wörld 漢字\n  indented"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text and len(ids) < len(text.encode())  # merges learned, bytes round-trip
    assert len(build_decoder_tokenizer(["ab ab ab"], vocab_size=300)) < 300  # small corpus, fewer merges
    with pytest.raises(ValueError, match="vocab_size must be >= 261"):
        build_decoder_tokenizer(vocab_size=100)
    proc = DeepSynthProcessor(small_ip(), tok, minilm_tokenizer())
    assert (proc.image_token_id, proc.instruction_token_id) == (3, 4)


# ---- save / load -------------------------------------------------------------------------------------------------
LOADER = textwrap.dedent(
    """
    import importlib.abc, json, sys
    class BlockRepo(importlib.abc.MetaPathFinder):  # prove nothing comes from the DeepSynth checkout
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"processing_deepsynth", "rendering_deepsynth", "configuration_deepsynth",
                                      "deepsynth"}:
                raise ImportError("blocked " + name)
    sys.meta_path.insert(0, BlockRepo())
    import torch
    from transformers import AutoImageProcessor, AutoProcessor
    args = json.loads(sys.argv[1])
    results = {}
    for name, ckpt in args["ckpts"].items():
        proc = AutoProcessor.from_pretrained(ckpt, trust_remote_code=True)
        batch = proc(**args["call"], return_tensors="pt")
        results[name] = dict(batch)
        renderer = type(proc.image_processor).__mro__[-2]  # DeepSynthTextRenderer, the checkpoint's own copy
        results[name + ".info"] = [type(proc).__module__, proc.image_processor.font_path(),
                                   proc.instruction_tokenizer is None, proc.instruction_fusion,
                                   f"{renderer.__module__}.{renderer.__name__}"]
    results["auto_image_processor"] = type(AutoImageProcessor.from_pretrained(ckpt, trust_remote_code=True)).__name__
    torch.save(results, args["out"])
    """
)


def test_autoprocessor_roundtrip_fresh_process(tmp_path):
    Image.new("RGB", (300, 200), (30, 60, 90)).save(tmp_path / "page.png")
    call = {
        "document": ["Café menu:\n\n  soup 4€\n" * 10, str(tmp_path / "page.png")],
        "instruction": ["What does soup cost?", "Describe the page."],
        "answer": ["4€", "A blue page."],
    }
    geometry = dict(mode=None, base_size=128, image_size=64, crop_mode=True, page_width=240, page_height=200)
    fused = DeepSynthProcessor(DeepSynthImageProcessor(**geometry), build_decoder_tokenizer(), minilm_tokenizer())
    plain = DeepSynthProcessor(DeepSynthImageProcessor(**geometry), build_decoder_tokenizer())
    ckpts = {"fused": tmp_path / "fused", "plain": tmp_path / "plain"}
    fused.save_pretrained(ckpts["fused"])
    plain.save_pretrained(ckpts["plain"])
    DeepSynthConfig().save_pretrained(ckpts["fused"])  # a real checkpoint also holds the model config
    assert (ckpts["fused"] / "DejaVuSans.ttf").read_bytes() == (ckpts["plain"] / "DejaVuSans.ttf").read_bytes()
    assert (ckpts["fused"] / "instruction_tokenizer" / "tokenizer_config.json").is_file()
    for ckpt in ckpts.values():  # the renderer travels beside the processor (a relative import of it)
        assert (ckpt / "rendering_deepsynth.py").read_bytes() == open(rendering_deepsynth.__file__, "rb").read()
    assert not (ckpts["plain"] / "instruction_tokenizer").exists()
    saved = json.loads((ckpts["fused"] / "processor_config.json").read_text())
    assert saved["instruction_fusion"] == "tokens" and saved["image_processor"]["font_file"] == "DejaVuSans.ttf"

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TOKENIZERS_PARALLELISM="false")
    out = tmp_path / "out.pt"
    arg = json.dumps({"ckpts": {k: str(v) for k, v in ckpts.items()}, "call": call, "out": str(out)})
    run = subprocess.run(
        [sys.executable, "-c", LOADER, arg], cwd=work, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = torch.load(out)
    for name, proc in (("fused", fused), ("plain", plain)):
        expected = proc(**call, return_tensors="pt")
        assert set(results[name]) == set(expected), name
        for key in expected:
            assert torch.equal(results[name][key], expected[key]), (name, key)
        module, font, no_instruction_tokenizer, fusion, renderer = results[name + ".info"]
        assert module.startswith("transformers_modules.") and module.endswith("processing_deepsynth")
        assert renderer.startswith("transformers_modules.") and renderer.endswith("rendering_deepsynth.DeepSynthTextRenderer")
        assert font == str(ckpts[name] / "DejaVuSans.ttf")  # the checkpoint's own font
        assert no_instruction_tokenizer == (name == "plain") and fusion == {"fused": "tokens", "plain": "none"}[name]
    assert "pixel_values_local" in results["fused"] and results["auto_image_processor"] == "DeepSynthImageProcessor"


def test_checkpoint_without_its_font_fails_loudly(tmp_path):
    proc = DeepSynthProcessor(small_ip(), byte_tokenizer(300))
    proc.save_pretrained(tmp_path)
    reloaded = DeepSynthProcessor.from_pretrained(tmp_path)
    assert reloaded.image_processor.font_path() == str(tmp_path / "DejaVuSans.ttf")
    assert "Bitstream Vera" in (tmp_path / "DejaVuSans-LICENSE").read_text()  # the font's licence travels with it
    reloaded.save_pretrained(tmp_path / "again")  # and from a checkpoint onwards
    assert (tmp_path / "again" / "DejaVuSans-LICENSE").read_bytes() == (tmp_path / "DejaVuSans-LICENSE").read_bytes()
    assert (
        reloaded(document="same", instruction="x")["input_ids"] == proc(document="same", instruction="x")["input_ids"]
    )
    (tmp_path / "DejaVuSans.ttf").unlink()
    with pytest.raises(OSError, match="DejaVuSans.ttf"):
        DeepSynthProcessor.from_pretrained(tmp_path)
