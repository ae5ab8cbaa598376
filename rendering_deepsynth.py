"""DeepSynth text renderer: text -> wrapped, paginated lines -> page images (black text on white RGB pages).

Remote code: copied into every checkpoint beside processing_deepsynth.py (which mixes it into the image
processor). It imports only PIL. The TrueType font is the checkpoint's own file (`font_file`), laid out with
FreeType's BASIC engine, so a checkpoint renders the same pixels on every machine with the same Pillow.
"""

import itertools
import os
import re
import unicodedata
from collections.abc import Iterator

from PIL import Image, ImageDraw, ImageFont

_LONG_WORD = 1024  # chars: a longer token whose start is already wider than a line is not measured whole
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")  # draw nothing useful; \t \n \f are handled


def check_unicode(text: str, what: str = "text") -> None:
    """ValueError unless `text` is valid Unicode: a lone surrogate (e.g. from a JSON "\\ud800" escape) cannot be
    encoded, drawn or tokenized (tokenizers raise TypeError on it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"{what} is not valid Unicode text: lone surrogate {text[e.start]!r} at position {e.start}"
        ) from None


class DeepSynthTextRenderer:
    r"""Text on `page_width` x `page_height` white pages, in the TrueType `font_file` at `font_size` px.

    Lines are `round(font_size * line_spacing)` px apart below a `margin`, or, with `line_height` (px), on a fixed
    grid: line i is vertically centred in the band [top + i * line_height, top + (i+1) * line_height), top =
    `margin` rounded down to a multiple of `line_height`, and a page holds (page_height - 2 top) // line_height
    lines. `char_pitch` (px, default None = the font's own advances) sets text like a typewriter: glyph j of a line
    is centred in the slot [margin + j * char_pitch, margin + (j+1) * char_pitch), whatever its width (meant for a
    monospace font whose glyphs fit the slot).

    The image processor inherits these methods and attributes (they are part of its saved config); the renderer
    also works on its own: `DeepSynthTextRenderer(font_size=12).render_text("...")`.
    """

    def __init__(
        self,
        page_width: int = 640,
        page_height: int = 640,
        margin: int = 24,
        font_size: int = 16,
        line_spacing: float = 1.25,
        font_file: str = "DejaVuSans.ttf",
        line_height: int | None = None,
        char_pitch: int | None = None,
    ):
        if font_size < 1 or line_spacing <= 0:
            raise ValueError(f"font_size and line_spacing must be positive, got {font_size}, {line_spacing}")
        if page_width - 2 * margin < 2 * font_size or page_height - 2 * margin < 2 * font_size:
            raise ValueError(
                f"a {page_width}x{page_height} page with margin {margin} leaves no room for {font_size}px text"
            )
        if line_height is not None and not (isinstance(line_height, int) and 0 < line_height <= page_height):
            raise ValueError(f"line_height must be a positive int <= page_height, got {line_height!r}")
        if char_pitch is not None and not (isinstance(char_pitch, int) and 0 < char_pitch <= page_width - 2 * margin):
            raise ValueError(f"char_pitch must be a positive int no wider than the text area, got {char_pitch!r}")
        self.page_width, self.page_height, self.margin = page_width, page_height, margin
        self.font_size, self.line_spacing, self.font_file = font_size, line_spacing, font_file
        self.line_height, self.char_pitch = line_height, char_pitch
        self._font_source = None  # set by the image processor's from_pretrained: the font file inside the checkpoint
        self._fonts = {}

    def __getstate__(self):  # DataLoader workers (spawn) pickle the processor; fonts reload lazily
        return {**self.__dict__, "_fonts": {}}

    # ---- fonts ------------------------------------------------------------------------------------------------
    def font_path(self) -> str:
        if os.path.isabs(self.font_file):
            path = self.font_file
        elif self._font_source is not None:
            path = self._font_source
        else:  # a processor built in code: the font shipped beside this file (repo's fonts/)
            path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fonts", self.font_file)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"font file not found: {path} (pass font_file=<path to a .ttf>)")
        return path

    def _font(self) -> ImageFont.FreeTypeFont:
        key = (self.font_path(), self.font_size)
        if key not in self._fonts:
            # BASIC layout: identical pixels whether or not libraqm is installed
            self._fonts[key] = ImageFont.truetype(key[0], self.font_size, layout_engine=ImageFont.Layout.BASIC)
        return self._fonts[key]

    # ---- text rendering ---------------------------------------------------------------------------------------
    def layout_text(self, text: str, max_pages: int | None = None) -> list[list[str]]:
        """Wrap and paginate: a list of pages, each a list of lines. Blank lines and indentation are kept, tabs
        expand to 4 spaces, a form feed starts a new page, words wider than a line are cut. With `max_pages`, only
        the first pages are laid out: the rest of the text costs (almost) nothing."""
        return list(itertools.islice(self.iter_pages(text), max_pages))

    def iter_pages(self, text: str) -> Iterator[list[str]]:
        """The pages of `layout_text`, laid out one at a time as they are taken."""
        check_unicode(text, "document")
        text = _CONTROL.sub("", unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n"))
        if not text.strip():
            raise ValueError("empty document: the text has no visible characters")
        font = self._font()
        descent, step = font.getmetrics()[1], self._line_step()
        width, limit = self.page_width - 2 * self.margin, self.page_height - self.margin
        advances = {}
        for block in text.split("\f"):
            page, baseline = [], 0
            raw_lines = block.expandtabs(4).split("\n")
            for line in (out for raw in raw_lines for out in self._wrap(raw, font, width, advances)):
                bottom = font.getbbox(line, anchor="ls")[3] if line else 0
                if self.line_height is not None:  # fixed grid: a page holds a fixed number of lines
                    fits = 0 < len(page) < self._grid_lines()
                else:
                    fits = page and baseline + step + max(descent, bottom) <= limit
                if fits:
                    baseline += step
                else:  # the line would cross the bottom margin: new page
                    if any(line.strip() for line in page):  # never a blank page
                        yield page
                    page, baseline = [], self._first_baseline(font, line)
                page.append(line)
            if any(line.strip() for line in page):
                yield page

    def _line_step(self) -> int:
        if self.line_height is not None:
            return self.line_height
        return max(1, round(self.font_size * self.line_spacing))  # baseline to baseline

    def _grid_top(self) -> int:
        return (self.margin // self.line_height) * self.line_height

    def _grid_lines(self) -> int:
        return max(1, (self.page_height - 2 * self._grid_top()) // self.line_height)

    def _first_baseline(self, font, line: str) -> int:
        if self.line_height is not None:  # the ink box (ascent + descent) centred in the first band
            ascent, descent = font.getmetrics()
            return self._grid_top() + (self.line_height - ascent - descent) // 2 + ascent
        # one ascent below the top margin, lower if a glyph of the first line is taller (Ǻ, stacked accents)
        top = font.getbbox(line, anchor="ls")[1] if line else 0
        return self.margin + max(font.getmetrics()[0], -top)

    def _advance(self, font, s: str) -> float:
        """Pen advance of `s` (px): the font's, or one slot per character on a fixed `char_pitch`."""
        return len(s) * self.char_pitch if self.char_pitch else font.getlength(s)

    def _width(self, font, s: str) -> int:
        if self.char_pitch:
            return len(s) * self.char_pitch  # every glyph is centred in its own slot
        x0, _, x1, _ = font.getbbox(s, anchor="ls")
        return x1 - min(0, x0)  # glyphs with a negative left bearing (j) are shifted right when drawn

    def _glyph_centres(self, font, line: str) -> list[float]:
        """x (px) of the centre of every character of `line` as `draw_page` draws it."""
        if self.char_pitch:
            return [self.margin + (j + 0.5) * self.char_pitch for j in range(len(line))]
        x = self.margin - min(0, font.getbbox(line, anchor="ls")[0])
        return [x + font.getlength(line[:j]) + font.getlength(ch) / 2 for j, ch in enumerate(line)]

    def _wrap(self, line: str, font, width: int, advances: dict) -> Iterator[str]:
        """Greedy word wrap by measured pixel width. While the summed token advances leave an em to spare the
        token fits (kerning and overhangs move ink far less); nearer the edge the exact ink box decides. Lines
        come out as they are made, so a caller that stops early does not pay for the rest of a long line."""
        if not line.strip():
            yield ""
            return
        cur, approx = "", 0.0
        for tok in (m.group() for m in re.finditer(r"\s+|\S+", line)):
            if len(tok) > _LONG_WORD and self._width(font, tok[:_LONG_WORD]) > width:
                fits = False  # measuring all of it would cost its length (and Pillow refuses 1M characters)
            else:
                if tok not in advances:
                    advances[tok] = self._advance(font, tok)
                fits = approx + advances[tok] + self.font_size <= width or self._width(font, cur + tok) <= width
            if fits:
                cur, approx = cur + tok, approx + advances[tok]
                continue
            if cur.strip():
                yield cur.rstrip()
            cur = ""  # a space at the break, or indentation too wide for the word, is dropped
            if tok.isspace():
                continue
            start = 0  # cut an over-long word at the longest prefix that fits, until the rest fits
            while (cut := self._fitting_prefix(font, tok, start, width)) < len(tok) - start:
                yield tok[start : start + cut]
                start += cut
            tok = tok[start:]
            cur, approx = tok, self._advance(font, tok)
        if cur.strip():
            yield cur.rstrip()

    def _fitting_prefix(self, font, word: str, start: int, width: int) -> int:
        """Length of the longest prefix of word[start:] at most `width` px wide (at least 1), or all of it when it
        fits. Galloping then bisection: the cost follows the prefix, not the rest of the word, so cutting an
        n-character word is linear in n (a bisection over the whole rest measured ~n^2 / line characters)."""
        rest = len(word) - start

        def fits(n):
            return self._width(font, word[start : start + n]) <= width

        lo, n = 0, 1  # word[start:start+lo] fits
        while n < rest and fits(n):
            lo, n = n, 2 * n
        if n >= rest and fits(rest):
            return rest
        lo, hi = max(lo, 1), min(n, rest) - 1  # the longest fitting prefix is in [lo, hi] (or 1: nothing fits)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        return lo

    def draw_page(self, lines: list[str]) -> Image.Image:
        """Black text on a white RGB page, lines `_line_step()` apart."""
        font = self._font()
        first, step = self._first_baseline(font, lines[0]), self._line_step()
        page = Image.new("L", (self.page_width, self.page_height), 255)
        draw = ImageDraw.Draw(page)
        for i, line in enumerate(lines):
            if line and self.char_pitch:
                for ch, centre in zip(line, self._glyph_centres(font, line)):
                    draw.text((centre - font.getlength(ch) / 2, first + i * step), ch, font=font, fill=0, anchor="ls")
            elif line:
                x = self.margin - min(0, font.getbbox(line, anchor="ls")[0])
                draw.text((x, first + i * step), line, font=font, fill=0, anchor="ls")
        return page.convert("RGB")

    def render_text(self, text: str) -> list[Image.Image]:
        return [self.draw_page(lines) for lines in self.layout_text(text)]


__all__ = ["DeepSynthTextRenderer", "check_unicode"]
