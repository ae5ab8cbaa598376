"""Bounded work per document (issue 15): text is laid out only up to the page limit, an unbreakable word costs
linear time, decoded image and PDF pages are capped in pixels before they are decoded, and text that is not valid
Unicode is refused with a ValueError that says why."""

import hashlib
import io
import json
import struct
import time
import zlib

import pytest

from processing_deepsynth import DeepSynthImageProcessor, DeepSynthProcessor, DocumentText


def small_ip(**kw):
    defaults = dict(mode=None, base_size=128, page_width=200, page_height=160, margin=12, font_size=12)
    return DeepSynthImageProcessor(**{**defaults, **kw})


def processor(**kw):
    from _processor_helpers import byte_tokenizer, minilm_tokenizer

    return DeepSynthProcessor(small_ip(**kw), byte_tokenizer(instruction_token_id=128816), minilm_tokenizer())


class CountingIP(DeepSynthImageProcessor):
    """The real renderer, counting the characters it measures and the source lines it wraps."""

    measured = wrapped = 0

    def _width(self, font, s):
        type(self).measured += len(s)
        return super()._width(font, s)

    def _advance(self, font, s):
        type(self).measured += len(s)
        return super()._advance(font, s)

    def _wrap(self, line, font, width, advances):
        type(self).wrapped += 1
        return super()._wrap(line, font, width, advances)


def counting_ip(**kw):
    CountingIP.measured = CountingIP.wrapped = 0
    return CountingIP(**{**dict(mode=None, base_size=128, page_width=200, page_height=160, margin=12,
                                font_size=12), **kw})


# ---- the page limit bounds the layout --------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:document has more than")
def test_layout_stops_after_the_page_limit():
    line = "lorem ipsum dolor sit amet\n"  # one line a row, 9 rows a page
    big = line * 400_000  # 10.8 MB, 44,445 pages
    ip = counting_ip(max_pages=4)
    with pytest.raises(ValueError, match="more than max_pages=4"):
        ip.load_pages(DocumentText(big))
    assert CountingIP.wrapped <= 5 * 9 + 1  # max_pages + 1 pages laid out, to know that there are more
    pages, truncated = counting_ip(max_pages=4, truncate_pages=True).load_document(DocumentText(big))
    assert truncated and len(pages) == 4
    assert [p.tobytes() for p in pages] == [p.tobytes() for p in small_ip().render_text(line * 36)]
    short, cut = small_ip(max_pages=4).load_document(DocumentText(line * 36))  # exactly 4 pages: nothing cut
    assert not cut and len(short) == 4
    assert small_ip().layout_text(line * 100, max_pages=3) == small_ip().layout_text(line * 100)[:3]
    # the processor reports it beside the example (what a server puts in its answer)
    p = processor(max_pages=4, truncate_pages=True)
    with pytest.warns(UserWarning, match="keeping the first 4"):
        assert p(document=DocumentText(big), instruction="q")["truncated"] is True
    assert p(document=DocumentText(line * 36), instruction="q")["truncated"] is False
    # one 10 MB word: only its first pages are cut and measured (Pillow cannot measure 1M characters at once)
    pages, truncated = counting_ip(max_pages=4, truncate_pages=True).load_document(DocumentText("x" * 10_000_000))
    assert truncated and len(pages) == 4 and CountingIP.measured < 50_000
    # a list of documents stops collecting at the limit too
    pages, truncated = small_ip(max_pages=4, truncate_pages=True).load_document([DocumentText(big)] * 1000)
    assert truncated and len(pages) == 4


@pytest.mark.filterwarnings("ignore:document has more than")
def test_a_10_mb_text_costs_about_its_first_pages():
    line = "lorem ipsum dolor sit amet\n"
    ip = small_ip(max_pages=4, truncate_pages=True)
    ip.load_document(DocumentText(line * 45))  # warm-up: the font
    started = time.perf_counter()
    ip.load_document(DocumentText(line * 45))  # 5 pages: 4 kept, one more laid out
    small = time.perf_counter() - started
    started = time.perf_counter()
    ip.load_document(DocumentText(line * 400_000))
    big = time.perf_counter() - started
    assert big < 20 * small + 0.5, (big, small)  # laying out all 44,445 pages is ~10,000x


# ---- an unbreakable word costs linear time ---------------------------------------------------------------------
def test_long_word_wraps_in_linear_time():
    counts, times = {}, {}
    for n in (1_000, 16_000, 32_000):
        ip = counting_ip()
        started = time.perf_counter()
        lines = [line for page in ip.layout_text("x" * n) for line in page]
        times[n] = time.perf_counter() - started
        counts[n] = CountingIP.measured
        assert "".join(lines) == "x" * n and all(ip._width(ip._font(), s) <= 200 - 24 for s in lines)
    # characters measured: linear (the old bisection over the whole rest of the word measured ~n^2 / 60)
    assert counts[32_000] < 2.5 * counts[16_000] and counts[16_000] < 16 * 2.5 * counts[1_000], counts
    assert times[32_000] < 32 * 4 * times[1_000] + 0.5, times


LONG_WORDS = "65057aedacdb7143"  # layouts below as computed before the linear wrap (same lines)


def test_long_words_wrap_as_before():
    ip = small_ip()
    mono = DeepSynthImageProcessor(mode=None, base_size=128, image_size=128, page_width=128, page_height=128,
                                   margin=0, font_file="DejaVuSansMono.ttf", font_size=13, char_pitch=8,
                                   line_height=16, patch_size=4)
    word = "Ǻjïff" + "Supercalifragilisticexpialidocious" * 40 + " tail"
    out = [ip.layout_text(word), ip.layout_text("a " + "W" * 700 + " b\n" + "i" * 900), mono.layout_text(word)]
    assert [sum(map(len, o)) for o in out] == [46, 68, 86]
    assert hashlib.sha256(json.dumps(out).encode()).hexdigest()[:16] == LONG_WORDS


# ---- decoded pixels are capped before decoding -----------------------------------------------------------------
def huge_page_pdf(points: float = 14_400) -> bytes:
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument.new()
    pdf.new_page(points, points)
    buf = io.BytesIO()
    pdf.save(buf)
    return buf.getvalue()


def test_pdf_page_is_rasterised_within_the_pixel_cap():
    data = huge_page_pdf()
    assert len(data) < 2000  # 14,400 pt = 200 in: 28,800 px a side at 144 dpi (829 Mpx)
    page = small_ip(max_image_pixels=1_000_000).load_pages(data)[0]
    assert page.width == page.height and 990 <= page.width <= 1000  # scaled down to the cap, square kept
    page = small_ip().load_pages(data)[0]  # the default cap
    assert page.width * page.height <= DeepSynthImageProcessor().max_image_pixels and page.width > 4000
    normal = small_ip(max_image_pixels=1_000_000).load_pages(huge_page_pdf(200))[0]  # within the cap: pdf_dpi
    assert normal.size == (400, 400)
    with pytest.raises(ValueError, match="max_image_pixels"):
        small_ip(max_image_pixels=0)


def png_header_only_bomb(side: int) -> bytes:
    """A valid side x side 1-bit black PNG, written row by row (a few MB of zlib work, ~17 KB for 12,000)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    z, row = zlib.compressobj(9), b"\0" * (1 + (side + 7) // 8)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's own notice; ours raises
def test_image_larger_than_the_cap_is_refused_before_decoding(tmp_path):
    bomb = png_header_only_bomb(12_000)
    assert len(bomb) < 40_000
    with pytest.raises(ValueError, match=r"12000x12000 .*max_image_pixels=40000000"):
        small_ip().load_pages(bomb)
    (tmp_path / "bomb.png").write_bytes(bomb)
    with pytest.raises(ValueError, match="max_image_pixels"):
        small_ip().load_pages(str(tmp_path / "bomb.png"))
    with pytest.raises(ValueError, match="max_image_pixels"):  # beyond Pillow's own bomb limit too
        small_ip(max_image_pixels=10**9).load_pages(png_header_only_bomb(20_000))
    two_mpx = png_header_only_bomb(1_500)
    with pytest.raises(ValueError, match="1500x1500 .*max_image_pixels=2000000"):
        small_ip(max_image_pixels=2_000_000).load_pages(two_mpx)
    assert small_ip(max_image_pixels=2_250_000).load_pages(two_mpx)[0].size == (1_500, 1_500)  # at the cap: decoded


# ---- text that is not valid Unicode --------------------------------------------------------------------------
def test_lone_surrogates_and_invalid_utf8_are_value_errors(tmp_path):
    p = processor()
    with pytest.raises(ValueError, match=r"document .*surrogate .*position 1"):
        p(document="a\ud800b", instruction="What?")
    with pytest.raises(ValueError, match=r"instruction .*surrogate"):
        p(document="fine", instruction="What\udfff?")
    with pytest.raises(ValueError, match=r"answer .*surrogate"):
        p(document="fine", instruction="What?", answer="\ud83d")
    with pytest.raises(ValueError, match="surrogate"):
        small_ip().render_text("x\udc80")
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 \xed\xa0\x80")  # Latin-1 and an encoded surrogate
    with pytest.raises(ValueError, match="bad.txt is not UTF-8 text"):
        p(document=str(tmp_path / "bad.txt"), instruction="What?")
    assert p(document="caf\u00e9 \U0001f600", instruction="What?")["num_pages"] == 1  # a real pair is fine
