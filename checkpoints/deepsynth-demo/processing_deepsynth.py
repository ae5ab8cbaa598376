"""DeepSynth processor: a document (text, image, PDF, or a list of them) -> page images -> DeepSeek-OCR views
(global view + optional local tiles) -> the model's inputs, with the instruction for the instruction encoder.

Remote code: copied into every checkpoint. It imports only `.configuration_deepsynth`, `.rendering_deepsynth` (the
text renderer), transformers, PIL, numpy and torch (pypdfium2 lazily, for PDFs). The pixel path reproduces the
original DeepSeek-OCR `infer()` bit for bit (Pillow bicubic resize / `ImageOps.pad`, ToTensor + Normalize(0.5,
0.5)); tests/test_processor.py checks it against the reference fixture.

Decoder prompt of one sample (labels are -100 except on the answer and eos):
    bos, <image> x n(page 1), ..., <image> x n(page P), "\n", <instruction> x k, [instruction text], "\n", answer, eos
"""

import copy
import io
import math
import os
import shutil
import warnings
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers import AutoTokenizer, BatchFeature, PretrainedConfig
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ProcessorMixin
from transformers.utils import cached_file

try:
    from .configuration_deepsynth import FUSION_MODES, num_image_tokens
    from .rendering_deepsynth import DeepSynthTextRenderer, check_unicode
except ImportError:  # imported from the repo root rather than as remote code
    from configuration_deepsynth import FUSION_MODES, num_image_tokens
    from rendering_deepsynth import DeepSynthTextRenderer, check_unicode

# Upstream's resolution modes: name -> (base_size, image_size, crop_mode).
MODES = {
    "tiny": (512, 512, False),
    "small": (640, 640, False),
    "base": (1024, 1024, False),
    "large": (1280, 1280, False),
    "gundam": (1024, 640, True),
}
SQUASH_MAX = 640  # upstream, crop_mode=False: views <= 640 px squash the page to a square, larger ones letterbox
IMAGE_TOKEN, INSTRUCTION_TOKEN = "<image>", "<instruction>"
TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".text", ".rst"}
DOCUMENT_SUFFIXES = TEXT_SUFFIXES | {".pdf", ".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
# Character classes of the per-vision-cell OCR labels (training-only, deepsynth.training.labels): printable ASCII
# without the space. They are saved in the processor config, which sizes the reading head of run_instruct.py.
# Class 0 = empty slot, class i = OCR_CHARSET[i - 1]; characters outside the set get no label.
OCR_CHARSET = "".join(chr(c) for c in range(33, 127))
# Decoded page size cap (pixels): 40 Mpx is a 6,300 px square, an A4 scan at 600 dpi (35 Mpx) or an A0 page at
# 144 dpi (32 Mpx); 120 MB as RGB. Larger images are refused before decoding, PDF pages rasterised to fit.
MAX_IMAGE_PIXELS = 40_000_000


# ---- upstream tiling (DeepSeek-OCR modeling_deepseekocr.py, kept line for line: its tie-breaks define the grid) ----
def find_closest_aspect_ratio(aspect_ratio, target_ratios, width, height, image_size):
    best_ratio_diff = float("inf")
    best_ratio = (1, 1)
    area = width * height
    for ratio in target_ratios:
        target_aspect_ratio = ratio[0] / ratio[1]
        ratio_diff = abs(aspect_ratio - target_aspect_ratio)
        if ratio_diff < best_ratio_diff:
            best_ratio_diff = ratio_diff
            best_ratio = ratio
        elif ratio_diff == best_ratio_diff:
            if area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
                best_ratio = ratio
    return best_ratio


def dynamic_preprocess(image, min_num=2, max_num=9, image_size=640):
    """Resize the page (bicubic, aspect not kept) to a grid of `image_size` tiles and cut it row-major.
    Returns (tiles, (width_tiles, height_tiles))."""
    orig_width, orig_height = image.size
    aspect_ratio = orig_width / orig_height
    # A set sorted by area, exactly as upstream: iteration order among equal areas decides exact ties.
    target_ratios = set(
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if i * j <= max_num and i * j >= min_num
    )
    target_ratios = sorted(target_ratios, key=lambda x: x[0] * x[1])
    target_aspect_ratio = find_closest_aspect_ratio(aspect_ratio, target_ratios, orig_width, orig_height, image_size)
    target_width = image_size * target_aspect_ratio[0]
    target_height = image_size * target_aspect_ratio[1]
    cols = target_width // image_size
    resized_img = image.resize((target_width, target_height), Image.Resampling.BICUBIC)
    tiles = []
    for i in range(target_aspect_ratio[0] * target_aspect_ratio[1]):
        x, y = (i % cols) * image_size, (i // cols) * image_size
        tiles.append(resized_img.crop((x, y, x + image_size, y + image_size)))
    return tiles, tuple(target_aspect_ratio)


class DocumentText(str):
    """A str that is always rendered as text, never read as a file path: dataset `text` columns, where a short line
    such as "notes.md" is content, not a file to open."""


def names_a_file(document) -> bool:
    """True when a document is read as a file: a path object, or a plain str naming an existing file (a
    `DocumentText` never is)."""
    if isinstance(document, os.PathLike):
        return True
    return isinstance(document, str) and not isinstance(document, DocumentText) and os.path.isfile(document)


def row_document(row: dict):
    """The document of a dataset row: its `text` column (always text), else an image / document path or a decoded
    image (`image`, `document`)."""
    if row.get("text"):
        return DocumentText(row["text"])
    return row.get("image") or row.get("document")


def _as_rgb(image: Image.Image) -> Image.Image:
    """Upstream load_image: EXIF orientation applied, then RGB."""
    return ImageOps.exif_transpose(image).convert("RGB")


class DeepSynthImageProcessor(BaseImageProcessor, DeepSynthTextRenderer):
    r"""Documents -> page images -> DeepSeek-OCR views.

    Geometry: `mode` is one of tiny / small / base / large / gundam (upstream's presets), or `mode=None` with a
    custom `base_size` / `image_size` / `crop_mode` (tiny models). Without crop mode the global view is
    `image_size` (squashed to a square up to 640 px, letterboxed above); with crop mode it is `base_size`
    (letterboxed), plus `min_tiles`..`max_tiles` local tiles of `image_size` when the page exceeds `image_size`
    (upstream hard-codes 640 for both; equal in gundam mode).
    Text is rendered by `DeepSynthTextRenderer` (rendering_deepsynth.py: `layout_text`, `draw_page`,
    `render_text`) with the TrueType `font_file` (shipped with the checkpoint) on `page_width` x `page_height`
    white pages. PDFs are rasterised at `pdf_dpi`. A document may have at most `max_pages` pages
    (`truncate_pages=True` keeps the first ones with a warning instead of raising); text beyond the limit is not
    laid out. A decoded page may have at most `max_image_pixels` pixels (default 40 Mpx): a larger image is refused
    with a ValueError before it is decoded, a larger PDF page is rasterised at a lower dpi to fit.
    A model that reads only text rendered on its own small pages (the demo model) sets `pdf_text_layer=True`: a
    PDF's embedded text is laid out on this processor's pages instead of its pixels being shrunk to illegibility
    (a PDF without text is refused), and `only_own_page_images=True`: an image is read only when it is the size of
    this processor's own pages (what `render_text` draws); any other image is refused with the reason.
    `bf16_round` rounds pixels through bfloat16 as upstream infer() did before its bf16 model (off by default).
    `line_height` and `char_pitch` (see the renderer) put text on a fixed grid: with `line_height` = one vision
    cell (patch_size * downsample_ratio px of the global view) every text line sits on one vision-token row; with
    a pitch that divides the vision cell and a margin that is a multiple of it, every vision token holds the same
    character slots at the same pixel offsets (a small model learned to read that several times faster:
    research/reading, section 6). `ocr_charset` / `ocr_cell_slots` configure the per-vision-cell character
    labels of the training-only reading loss (deepsynth.training.labels, run_instruct.py).
    """

    model_input_names = ["pixel_values", "pixel_values_local", "images_spatial_crop"]

    def __init__(
        self,
        mode: str | None = None,
        base_size: int | None = None,
        image_size: int | None = None,
        crop_mode: bool | None = None,
        min_tiles: int = 2,
        max_tiles: int = 9,
        patch_size: int = 16,
        downsample_ratio: int = 4,
        image_mean: tuple[float, ...] = (0.5, 0.5, 0.5),
        image_std: tuple[float, ...] = (0.5, 0.5, 0.5),
        bf16_round: bool = False,
        page_width: int = 640,
        page_height: int = 640,
        margin: int = 24,
        font_size: int = 16,
        line_spacing: float = 1.25,
        font_file: str = "DejaVuSans.ttf",
        pdf_dpi: float = 144,
        max_pages: int = 16,
        truncate_pages: bool = False,
        line_height: int | None = None,
        char_pitch: int | None = None,
        ocr_charset: str = OCR_CHARSET,
        ocr_cell_slots: int = 4,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        pdf_text_layer: bool = False,
        only_own_page_images: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if mode is None and base_size is None:
            mode = "small"
        self.mode = mode
        self.base_size, self.image_size, self.crop_mode = self._resolve(mode, base_size, image_size, crop_mode)
        if not 1 <= min_tiles <= max_tiles:
            raise ValueError(f"need 1 <= min_tiles <= max_tiles, got {min_tiles}, {max_tiles}")
        self.min_tiles, self.max_tiles = min_tiles, max_tiles
        self.patch_size, self.downsample_ratio = patch_size, downsample_ratio
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.bf16_round = bf16_round
        DeepSynthTextRenderer.__init__(
            self, page_width, page_height, margin, font_size, line_spacing, font_file, line_height, char_pitch
        )
        self.pdf_dpi, self.max_pages, self.truncate_pages = pdf_dpi, max_pages, truncate_pages
        if pdf_dpi <= 0 or max_pages < 1:
            raise ValueError(f"pdf_dpi and max_pages must be positive, got {pdf_dpi}, {max_pages}")
        if ocr_cell_slots < 1 or not ocr_charset or len(set(ocr_charset)) != len(ocr_charset):
            raise ValueError("ocr_cell_slots must be >= 1 and ocr_charset non-empty without repeated characters")
        self.ocr_charset, self.ocr_cell_slots = ocr_charset, ocr_cell_slots
        if isinstance(max_image_pixels, bool) or not isinstance(max_image_pixels, int) or max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be a positive int, got {max_image_pixels!r}")
        self.max_image_pixels = max_image_pixels
        if not isinstance(pdf_text_layer, bool) or not isinstance(only_own_page_images, bool):
            raise ValueError("pdf_text_layer and only_own_page_images must be bools, got "
                             f"{pdf_text_layer!r}, {only_own_page_images!r}")
        self.pdf_text_layer, self.only_own_page_images = pdf_text_layer, only_own_page_images

    @staticmethod
    def _resolve(mode, base_size=None, image_size=None, crop_mode=None) -> tuple[int, int, bool]:
        """(base_size, image_size, crop_mode) of a preset name or a custom geometry."""
        if mode is not None:
            if mode not in MODES:
                raise ValueError(f"unknown mode {mode!r}: expected one of {sorted(MODES)} or mode=None")
            for name, given, value in zip(
                ("base_size", "image_size", "crop_mode"), (base_size, image_size, crop_mode), MODES[mode], strict=True
            ):
                if given is not None and given != value:
                    raise ValueError(f"mode={mode!r} means {name}={value}, got {given}; use mode=None for custom sizes")
            return MODES[mode]
        image_size = base_size if image_size is None else image_size
        if not (isinstance(base_size, int) and isinstance(image_size, int) and base_size > 0 and image_size > 0):
            raise ValueError(f"base_size and image_size must be positive ints, got {base_size}, {image_size}")
        return base_size, image_size, bool(crop_mode)

    def geometry(self, mode: str | tuple | None = None) -> tuple[int, int, bool]:
        """(base_size, image_size, crop_mode) for a per-call `mode`: None = this processor's own, a preset name,
        or a (base_size, image_size, crop_mode) tuple."""
        if mode is None:
            return self.base_size, self.image_size, self.crop_mode
        return self._resolve(None, *mode) if isinstance(mode, (tuple, list)) else self._resolve(mode)

    # ---- saving / loading: the font travels with the checkpoint ------------------------------------------------
    def to_dict(self):
        out = {k: copy.deepcopy(v) for k, v in self.__dict__.items() if not k.startswith("_")}
        out["font_file"] = os.path.basename(self.font_file)  # saved next to the config
        out["image_processor_type"] = type(self).__name__
        return out

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        hub = {
            k: kwargs[k]
            for k in ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")
            if k in kwargs
        }
        out = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        processor = out[0] if isinstance(out, tuple) else out
        if not os.path.isabs(processor.font_file):  # never fall back to the machine's fonts
            processor._font_source = cached_file(pretrained_model_name_or_path, processor.font_file, **hub)
        return out

    def save_pretrained(self, save_directory, *args, **kwargs):
        files = super().save_pretrained(save_directory, *args, **kwargs)
        return files + [self.save_font(save_directory)]

    def save_font(self, save_directory) -> str:
        target = os.path.join(save_directory, os.path.basename(self.font_file))
        source = self.font_path()
        if os.path.abspath(source) != os.path.abspath(target):
            shutil.copyfile(source, target)
            # the font's licence travels with it (DejaVu's licence asks for that): fonts/LICENSE or <stem>-LICENSE
            stem = os.path.splitext(os.path.basename(self.font_file))[0]
            for name in (f"{stem}-LICENSE", "LICENSE"):
                licence = os.path.join(os.path.dirname(source), name)
                if os.path.isfile(licence):
                    shutil.copyfile(licence, os.path.join(save_directory, f"{stem}-LICENSE"))
                    break
        return target

    # ---- documents -> pages -----------------------------------------------------------------------------------
    def load_pages(
        self, document, max_pages: int | None = None, truncate_pages: bool | None = None
    ) -> list[Image.Image]:
        """Pages (RGB PIL images) of a document: str text, a path (.txt/.md, image, .pdf), PDF or image bytes, a
        PIL image, a uint8 numpy array (H, W[, C]), or a list of those (pages in order). A str naming an existing
        file is that file; any other str is text (a `DocumentText` is always text). See `load_document`."""
        return self.load_document(document, max_pages, truncate_pages)[0]

    def load_document(
        self, document, max_pages: int | None = None, truncate_pages: bool | None = None
    ) -> tuple[list[Image.Image], bool]:
        """(pages, truncated): the pages of `load_pages`, and whether the document had more than `max_pages` pages
        of which the first were kept (`truncate_pages=True`; otherwise more pages raise a ValueError).

        The work is bounded by the page limit: text is laid out only up to `max_pages` + 1 pages (one more tells
        that there are more), only kept pages are drawn or rasterised, and a list stops at the limit, so a 10 MB
        text costs its first pages. The total page count is therefore not known. Decoded pages are capped at
        `max_image_pixels` before decoding (see the class)."""
        max_pages = self.max_pages if max_pages is None else max_pages
        truncate = self.truncate_pages if truncate_pages is None else truncate_pages
        pages = self._collect(document, max_pages + 1)  # PIL images or deferred renderers: count before rendering
        truncated = len(pages) > max_pages
        if truncated:
            if not truncate:
                raise ValueError(
                    f"document has more than max_pages={max_pages} pages (raise max_pages, or pass "
                    "truncate_pages=True to keep the first pages)"
                )
            warnings.warn(
                f"document has more than {max_pages} pages; keeping the first {max_pages} (truncate_pages=True)",
                stacklevel=3,
            )
            pages = pages[:max_pages]
        return [p() if callable(p) else p for p in pages], truncated

    def _collect(self, doc, limit: int) -> list[Image.Image | Callable[[], Image.Image]]:
        """Up to `limit` pages of `doc`, drawn later if deferred."""
        if isinstance(doc, (list, tuple)):
            if not doc:
                raise ValueError("empty document: an empty list of pages")
            pages = []
            for part in doc:
                if len(pages) >= limit:
                    break
                pages += self._collect(part, limit - len(pages))
            return pages
        if isinstance(doc, Image.Image):
            self._check_image(doc.width, doc.height, "image")
            return [_as_rgb(doc)]
        if isinstance(doc, np.ndarray):
            return [self._from_array(doc)]
        if isinstance(doc, (bytes, bytearray, memoryview)):
            return self._from_bytes(bytes(doc), "document bytes", limit)
        if names_a_file(doc):
            return self._from_file(os.fspath(doc), limit)
        if isinstance(doc, str):
            if (
                not isinstance(doc, DocumentText)
                and "\n" not in doc
                and " " not in doc.strip()
                and os.path.splitext(doc.strip())[1].lower() in DOCUMENT_SUFFIXES
            ):
                raise ValueError(f"no such file: {doc!r} (a string naming an existing file is read as that file)")
            return self._text_pages(doc, limit)
        raise ValueError(
            f"unsupported document type {type(doc).__name__}: expected text, a file path, bytes, a PIL image, "
            "a numpy array or a list of those"
        )

    def _text_pages(self, text: str, limit: int):
        return [lambda lines=lines: self.draw_page(lines) for lines in self.layout_text(text, max_pages=limit)]

    def _check_image(self, width: int, height: int, name: str) -> None:
        """Before an image page is decoded: its size must be this processor's own page size (only_own_page_images)
        and within max_image_pixels."""
        if self.only_own_page_images and (width, height) != (self.page_width, self.page_height):
            raise ValueError(
                f"{name} is {width}x{height} px: this model reads only text laid out on its own "
                f"{self.page_width}x{self.page_height}-px pages (only_own_page_images=True in its processor config); "
                "a scan or photo would be shrunk past legibility. Give the document's text, or a PDF that has a "
                "text layer"
            )
        if width * height > self.max_image_pixels:
            raise ValueError(
                f"{name} is {width}x{height} pixels, more than max_image_pixels={self.max_image_pixels} (a "
                "processor setting: raise it to read larger pages)"
            )

    def _from_array(self, arr: np.ndarray) -> Image.Image:
        if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))):
            raise ValueError(f"numpy pages must be uint8 (H, W) or (H, W, 1|3|4), got {arr.dtype} {arr.shape}")
        if arr.size == 0:
            raise ValueError(f"empty document: numpy page of shape {arr.shape}")
        self._check_image(arr.shape[1], arr.shape[0], "numpy page")
        return Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr).convert("RGB")

    def _from_file(self, path: str, limit: int):
        if not os.path.isfile(path):
            raise ValueError(f"no such file: {path}")
        with open(path, "rb") as f:
            data = f.read()
        suffix = os.path.splitext(path)[1].lower()
        text = None
        if suffix in TEXT_SUFFIXES or (suffix not in DOCUMENT_SUFFIXES and b"%PDF-" not in data[:1024]):
            try:  # .txt / .md, or an unknown suffix (.csv, .log, ...) holding UTF-8 text
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                if suffix in TEXT_SUFFIXES:
                    raise ValueError(f"{path} is not UTF-8 text: {e}") from None
        if text is None or "\x00" in text:
            return self._from_bytes(data, path, limit)
        if not text.strip():
            raise ValueError(f"empty document: {path} has no text")
        return self._text_pages(text, limit)

    def _from_bytes(self, data: bytes, name: str, limit: int):
        if not data:
            raise ValueError(f"empty document: {name} has no bytes")
        if b"%PDF-" in data[:1024]:
            return self._pdf_pages(data, name, limit)
        try:
            image = Image.open(io.BytesIO(data))  # reads the header: the size is known before decoding
        except Image.DecompressionBombError as e:  # Pillow's own limit (Image.MAX_IMAGE_PIXELS), checked first
            raise ValueError(f"{name} is too large to decode: {e} (max_image_pixels={self.max_image_pixels})") from None
        except Exception as e:
            raise ValueError(f"cannot read {name} as an image or PDF: {e}") from None
        self._check_image(image.width, image.height, name)
        try:
            image.load()  # decode now: a truncated or corrupt file must fail here, not later
            return [_as_rgb(image)]
        except Exception as e:
            raise ValueError(f"cannot read {name} as an image or PDF: {e}") from None

    def _pdf_pages(self, data: bytes, name: str, limit: int):
        import pypdfium2 as pdfium  # only needed for PDFs

        try:
            pdf = pdfium.PdfDocument(data)
        except pdfium.PdfiumError as e:
            raise ValueError(f"cannot read {name} as a PDF: {e}") from None
        if len(pdf) == 0:
            raise ValueError(f"empty document: {name} has no pages")
        if self.pdf_text_layer:
            return self._text_pages(self._pdf_text(pdf, name, limit), limit)

        def render(i):  # deferred: only pages within max_pages are rasterised
            try:
                page = pdf[i]
                return page.render(scale=self._pdf_scale(*page.get_size())).to_pil().convert("RGB")
            except pdfium.PdfiumError as e:
                raise ValueError(f"cannot render page {i + 1} of {name}: {e}") from None

        return [lambda i=i: render(i) for i in range(min(len(pdf), limit))]

    def _pdf_text(self, pdf, name: str, limit: int) -> str:
        """The embedded text of a PDF's pages, pages joined by a blank line. Bounded work: pages are read only until
        the text could fill `limit` of this processor's pages (a page holds fewer than one character per 16 px²)."""
        import pypdfium2 as pdfium

        enough, parts, chars = limit * self.page_width * self.page_height // 16, [], 0
        for i in range(len(pdf)):
            try:
                text = pdf[i].get_textpage().get_text_range()
            except pdfium.PdfiumError as e:
                raise ValueError(f"cannot read the text of page {i + 1} of {name}: {e}") from None
            parts.append(text.replace("\r\n", "\n").replace("\r", "\n").strip())
            chars += len(parts[-1])
            if chars >= enough:
                break
        text = "\n\n".join(p for p in parts if p)
        if not text:
            raise ValueError(
                f"{name} has no text layer (a scanned PDF?): this model reads a PDF's embedded text "
                "(pdf_text_layer=True), not its pixels. Give the document's text, or a PDF that has a text layer"
            )
        return text

    def _pdf_scale(self, width: float, height: float) -> float:
        """Pixels per PDF unit for a page of width x height units: `pdf_dpi` (72 units an inch), lowered so that the
        bitmap (pdfium rounds its sides up) stays within `max_image_pixels`."""
        scale = self.pdf_dpi / 72
        if math.ceil(width * scale) * math.ceil(height * scale) > self.max_image_pixels:
            scale = math.sqrt(self.max_image_pixels / (width * height))
            while math.ceil(width * scale) * math.ceil(height * scale) > self.max_image_pixels:
                scale *= 0.999
        return scale

    # ---- pages -> views -> tensors ----------------------------------------------------------------------------
    def page_views(self, page: Image.Image, mode=None) -> tuple[Image.Image, list[Image.Image], tuple[int, int]]:
        """Upstream infer() on one page: (global view, local tiles row-major, (width_tiles, height_tiles))."""
        base_size, image_size, crop_mode = self.geometry(mode)
        fill = tuple(int(x * 255) for x in self.image_mean)  # (127, 127, 127)
        if not crop_mode:
            if image_size <= SQUASH_MAX:
                page = page.resize((image_size, image_size), Image.Resampling.BICUBIC)
            return ImageOps.pad(page, (image_size, image_size), color=fill), [], (1, 1)
        tiles, grid = [], (1, 1)
        if page.width > image_size or page.height > image_size:
            tiles, grid = dynamic_preprocess(page, self.min_tiles, self.max_tiles, image_size)
        return ImageOps.pad(page, (base_size, base_size), color=fill), tiles, grid

    def to_tensor(self, views: list[Image.Image]) -> torch.Tensor:
        """ToTensor + Normalize as torchvision computes them: (N, 3, S, S) float32."""
        x = torch.from_numpy(np.stack([np.asarray(v, dtype=np.uint8) for v in views]))
        x = x.permute(0, 3, 1, 2).contiguous()  # NCHW once, then normalise in place (2.3x, bit-identical)
        mean = torch.tensor(self.image_mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.image_std, dtype=torch.float32).view(1, -1, 1, 1)
        x = x.float().div_(255).sub_(mean).div_(std)
        return x.to(torch.bfloat16).float() if self.bf16_round else x

    def preprocess(self, images, mode=None, return_tensors="pt", **kwargs) -> BatchFeature:
        """One document (anything `load_pages` takes) -> pixel_values (P, 3, S, S), pixel_values_local (T, 3, s, s)
        (only if some page has tiles), images_spatial_crop (P, 2) [width_tiles, height_tiles], and
        num_image_tokens (P,) the `<image>` count of each page, and truncated (bool, see `load_document`)."""
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        if return_tensors not in ("pt", None):
            raise ValueError(f"only return_tensors='pt' is supported, got {return_tensors!r}")
        base_size, image_size, crop_mode = self.geometry(mode)
        globals_, tiles, grids = [], [], []
        pages, truncated = self.load_document(images)
        for page in pages:
            view, page_tiles, grid = self.page_views(page, (base_size, image_size, crop_mode))
            globals_.append(view)
            tiles += page_tiles
            grids.append(grid)
        global_size = base_size if crop_mode else image_size
        counts = [
            num_image_tokens(global_size, image_size, w, h, self.patch_size, self.downsample_ratio) for w, h in grids
        ]
        data = {
            "pixel_values": self.to_tensor(globals_),
            "images_spatial_crop": torch.tensor(grids, dtype=torch.long),
            "num_image_tokens": torch.tensor(counts, dtype=torch.long),
            "truncated": truncated,
        }
        if tiles:
            data["pixel_values_local"] = self.to_tensor(tiles)
        return BatchFeature(data)


class _Attributes:
    """ProcessorMixin asks `get_attributes()` of the class (what may be loaded) and of an instance (what to save):
    an instance without an instruction encoder has no instruction tokenizer to save."""

    def __get__(self, obj, cls):
        names = ["image_processor", "tokenizer", "instruction_tokenizer"]
        if obj is not None and "instruction_tokenizer" in obj.__dict__ and obj.instruction_tokenizer is None:
            names = names[:2]
        return lambda: list(names)


class DeepSynthProcessor(ProcessorMixin):
    r"""Image processor + decoder `tokenizer` + the instruction encoder's `instruction_tokenizer` (None without an
    instruction encoder).

    instruction_fusion: "tokens" (k = the instruction's real encoder tokens), "pooled"
        (k = `num_pooled_instruction_tokens`) or "none" (k = 0); default "tokens" with an instruction tokenizer.
    instruction_in_decoder: also write the instruction text into the decoder prompt (default: only when there is
        no instruction encoder). `answer_separator` ends the prompt ("" reproduces upstream's plain template).
    """

    get_attributes = _Attributes()

    def __init__(
        self,
        image_processor,
        tokenizer,
        instruction_tokenizer=None,
        instruction_fusion: str | None = None,
        num_pooled_instruction_tokens: int = 4,
        max_instruction_length: int = 128,
        instruction_in_decoder: bool | None = None,
        answer_separator: str = "\n",
    ):
        super().__init__(image_processor, tokenizer, instruction_tokenizer)
        if instruction_fusion is None:
            instruction_fusion = "none" if instruction_tokenizer is None else "tokens"
        if instruction_fusion not in FUSION_MODES:
            raise ValueError(f"instruction_fusion must be one of {FUSION_MODES}, got {instruction_fusion!r}")
        if (instruction_fusion == "none") != (instruction_tokenizer is None):
            raise ValueError(
                f"instruction_fusion={instruction_fusion!r} needs "
                + ("no instruction_tokenizer" if instruction_fusion == "none" else "an instruction_tokenizer")
            )
        if instruction_in_decoder is None:
            instruction_in_decoder = instruction_fusion == "none"
        if instruction_fusion == "none" and not instruction_in_decoder:
            raise ValueError("with instruction_fusion='none' the instruction must go into the decoder")
        if num_pooled_instruction_tokens < 1 or max_instruction_length < 2:
            raise ValueError("num_pooled_instruction_tokens must be >= 1 and max_instruction_length >= 2")
        self.instruction_fusion = instruction_fusion
        self.num_pooled_instruction_tokens = num_pooled_instruction_tokens
        self.max_instruction_length = max_instruction_length
        self.instruction_in_decoder = instruction_in_decoder
        self.answer_separator = answer_separator
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(tokenizer, name) is None:
                raise ValueError(f"the decoder tokenizer has no {name[:-3]}")
        if self.image_token_id is None or (instruction_fusion != "none" and self.instruction_token_id is None):
            raise ValueError(f"the decoder tokenizer needs the special tokens {IMAGE_TOKEN} and {INSTRUCTION_TOKEN}")

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "instruction_tokenizer" and argument is None:  # no instruction encoder
            return None
        return super().check_argument_for_proper_class(argument_name, argument)

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        subfolder = kwargs.pop("subfolder", "")
        # The tokenizers are plain ones; only the checkpoint's config.json names remote code. Without this,
        # AutoTokenizer would read that config and stop to ask "run the custom code? [y/N]".
        kwargs["trust_remote_code"] = bool(kwargs.get("trust_remote_code"))
        # A blank config: the tokenizer class is named by tokenizer_config.json, and AutoTokenizer would otherwise
        # read our config.json as a generic config and warn "model of type deepsynth ... of type ''" on every load.
        blank = {"config": kwargs.pop("config", None) or PretrainedConfig()}
        args = [
            DeepSynthImageProcessor.from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs),
            AutoTokenizer.from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **blank, **kwargs),
            None,
        ]
        if (processor_dict or {}).get("instruction_fusion", "none") != "none":  # saved in its own subfolder
            sub = f"{subfolder}/instruction_tokenizer" if subfolder else "instruction_tokenizer"
            args[2] = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, subfolder=sub, **kwargs)
        return args

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        files = super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        return files + [self.image_processor.save_font(save_directory)]

    def _token_id(self, token):
        ids = self.tokenizer.convert_tokens_to_ids(token)
        return None if ids is None or ids == self.tokenizer.unk_token_id else ids

    @property
    def image_token_id(self) -> int:
        return self._token_id(IMAGE_TOKEN)

    @property
    def instruction_token_id(self) -> int | None:
        return self._token_id(INSTRUCTION_TOKEN)

    @property
    def model_input_names(self) -> list[str]:
        names = [
            "input_ids",
            "attention_mask",
            "pixel_values",
            "pixel_values_local",
            "images_spatial_crop",
            "num_pages",
        ]
        return names + (["instruction_input_ids", "instruction_attention_mask"] if self.instruction_tokenizer else [])

    def _text_ids(self, text: str) -> list[int]:
        # split_special_tokens: a literal "<image>" in user text stays text and cannot fake a placeholder
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] if text else []

    def encode_example(
        self,
        document,
        instruction: str,
        answer: str | None = None,
        mode=None,
        vision: dict | None = None,
        prompt: str | None = None,
    ) -> dict:
        """One sample, un-batched (lists and per-sample tensors): what `collate` pads into a batch.

        prompt: an original DeepSeek-OCR prompt with one `<image>` ("<image>\\nFree OCR. ", "Page 1: <image>\\n...")
        instead of our layout: ids = bos, its text before `<image>`, the image tokens, its text after, tokenised as
        upstream infer() does (stripped, special tokens such as `<|grounding|>` kept). `instruction` may then be
        None; given, it goes to the instruction encoder only, laid out as in training: image tokens, "\\n",
        <instruction> x k, the prompt's text after `<image>`, the answer separator.

        vision: this document's page layout from an earlier call (`image_processor.preprocess` output, or only its
        `images_spatial_crop` and `num_image_tokens` when the caller holds the vision features already, e.g. a
        document cache): nothing is rendered, and pixel tensors are included only if `vision` has them.
        The example's `truncated` (when rendered here, or in `vision`) says the document was cut to max_pages."""
        before, after = self._split_prompt(prompt, instruction) if prompt is not None else (None, None)
        needs_instruction = prompt is None or instruction is not None
        if needs_instruction and (not isinstance(instruction, str) or not instruction.strip()):
            raise ValueError(f"empty instruction: expected a non-empty string, got {instruction!r}")
        if answer is not None and not isinstance(answer, str):
            raise ValueError(f"answer must be a string or None, got {type(answer).__name__}")
        check_unicode(instruction or "", "instruction")
        check_unicode(prompt or "", "prompt")
        check_unicode(answer or "", "answer")
        instruction = instruction and instruction.rstrip()  # upstream strips its prompt
        if vision is None:
            vision = self.image_processor.preprocess(document, mode=mode)
        example = {
            "images_spatial_crop": vision["images_spatial_crop"],
            "num_pages": len(vision["num_image_tokens"]),
        }
        for key in ("pixel_values", "pixel_values_local", "truncated"):
            if key in vision:
                example[key] = vision[key]
        k = 0
        if self.instruction_tokenizer is not None and instruction is not None:
            enc = self.instruction_tokenizer(instruction, truncation=True, max_length=self.max_instruction_length)
            example["instruction_input_ids"] = list(enc["input_ids"])
            example["instruction_attention_mask"] = list(enc["attention_mask"])
            k = len(enc["input_ids"]) if self.instruction_fusion == "tokens" else self.num_pooled_instruction_tokens
        if prompt is not None:  # upstream's layout, or with a fused instruction our trained one around the prompt
            text = self._prompt_ids(after)
            if k:
                placeholders = self._text_ids("\n") + [self.instruction_token_id] * k
                text = placeholders + text + self._text_ids(self.answer_separator)
        else:
            tail = (instruction if self.instruction_in_decoder else "") + self.answer_separator
            text = (
                self._text_ids("\n" + tail)
                if k == 0
                else (self._text_ids("\n") + [self.instruction_token_id] * k + self._text_ids(tail))
            )
        ids = [self.tokenizer.bos_token_id] + self._prompt_ids(before or "")
        ids += [self.image_token_id] * int(vision["num_image_tokens"].sum()) + text
        labels = None
        if answer is not None:
            target = self._text_ids(answer.strip()) + [self.tokenizer.eos_token_id]
            labels = [-100] * len(ids) + target
            ids = ids + target
        example.update(input_ids=ids, attention_mask=[1] * len(ids))
        if labels is not None:
            example["labels"] = labels
        return example

    def _split_prompt(self, prompt: str, instruction) -> tuple[str, str]:
        """(text before, text after) the one `<image>` of an original-style prompt, stripped as upstream's
        'plain' template does."""
        if not isinstance(prompt, str) or prompt.strip().count(IMAGE_TOKEN) != 1 or INSTRUCTION_TOKEN in prompt:
            raise ValueError(
                f"prompt must hold exactly one {IMAGE_TOKEN} (and no {INSTRUCTION_TOKEN}), got {prompt!r:.80}"
            )
        if instruction is not None and self.instruction_tokenizer is None:
            raise ValueError("this processor has no instruction encoder: write the instruction into the prompt")
        before, after = prompt.strip().split(IMAGE_TOKEN)
        return before, after

    def _prompt_ids(self, text: str) -> list[int]:
        # upstream's text_encode: the tokenizer's own encoding, special tokens (<|grounding|>, ...) recognised
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def __call__(
        self, document=None, instruction=None, answer=None, return_tensors=None, mode=None, padding_side="left"
    ):
        """Single sample: `document` (may be a list of pages) and an `instruction` string. Batch: lists of equal
        length for `instruction`, `document` (and `answer`). return_tensors=None gives un-batched example(s) for
        `collate`; "pt" gives the padded batch."""
        if isinstance(instruction, (list, tuple)):
            n = len(instruction)
            answers = [None] * n if answer is None else answer
            if n == 0 or not isinstance(document, (list, tuple)) or len(document) != n or len(answers) != n:
                raise ValueError("a batch needs non-empty lists of equal length for document, instruction and answer")
            examples = [
                self.encode_example(d, i, a, mode) for d, i, a in zip(document, instruction, answers, strict=True)
            ]
        else:
            if isinstance(answer, (list, tuple)):
                raise ValueError("answer is a list but instruction is a single string")
            examples = [self.encode_example(document, instruction, answer, mode)]
        if return_tensors is None:
            return examples if isinstance(instruction, (list, tuple)) else examples[0]
        if return_tensors != "pt":
            raise ValueError(f"only return_tensors='pt' or None are supported, got {return_tensors!r}")
        return self.collate(examples, padding_side=padding_side)

    def collate(
        self,
        examples: list[dict],
        padding_side: str = "left",
        pad_to_multiple_of: int | None = None,
        mode=None,
    ) -> BatchFeature:
        """Pad examples (from `encode_example`, or raw records {"document" or "text", "instruction", "answer"}
        which are rendered here, i.e. in DataLoader workers) into one batch. Pixel tensors are concatenated in
        batch order; views of different sizes (mixed modes) come back as lists of (3, S, S) tensors."""
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        examples = [e if "input_ids" in e else self._from_record(e, mode) for e in examples]
        if len({"labels" in e for e in examples}) > 1:
            raise ValueError("some examples have an answer (labels) and some do not")
        length = max(len(e["input_ids"]) for e in examples)
        if pad_to_multiple_of:
            length = math.ceil(length / pad_to_multiple_of) * pad_to_multiple_of

        def pad(seq, value, size, side):
            fill = [value] * (size - len(seq))
            return fill + list(seq) if side == "left" else list(seq) + fill

        def stack(key, value, size, side):
            return torch.tensor([pad(e[key], value, size, side) for e in examples], dtype=torch.long)

        batch = {
            "input_ids": stack("input_ids", self.tokenizer.pad_token_id, length, padding_side),
            "attention_mask": stack("attention_mask", 0, length, padding_side),
        }
        if "labels" in examples[0]:
            batch["labels"] = stack("labels", -100, length, padding_side)
        pixels = [e["pixel_values"] for e in examples if "pixel_values" in e]
        if pixels:  # examples without pixels bring cached vision features (see encode_example's `vision`)
            batch["pixel_values"] = self._cat(pixels)
        local = [e["pixel_values_local"] for e in examples if e.get("pixel_values_local") is not None]
        if local:
            batch["pixel_values_local"] = self._cat(local)
        batch["images_spatial_crop"] = torch.cat(
            [torch.as_tensor(e["images_spatial_crop"]).view(-1, 2) for e in examples]
        ).long()
        batch["num_pages"] = torch.tensor([e["num_pages"] for e in examples], dtype=torch.long)
        if self.instruction_tokenizer is not None:
            size = max(len(e["instruction_input_ids"]) for e in examples)
            batch["instruction_input_ids"] = stack(
                "instruction_input_ids", self.instruction_tokenizer.pad_token_id, size, "right"
            )
            batch["instruction_attention_mask"] = stack("instruction_attention_mask", 0, size, "right")
        return BatchFeature(batch)

    def _from_record(self, record: dict, mode=None) -> dict:
        document = record.get("document", record.get("text"))
        if document is None or "instruction" not in record:
            raise ValueError(f"a raw example needs 'document' (or 'text') and 'instruction', got keys {sorted(record)}")
        return self.encode_example(document, record["instruction"], record.get("answer"), mode)

    @staticmethod
    def _cat(tensors: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        if len({t.shape[1:] for t in tensors}) == 1:
            return torch.cat(tensors)  # (N, 3, S, S)
        return [view for t in tensors for view in t]  # mixed view sizes: N tensors (3, S_i, S_i)


class DeepSynthCollator:
    """DataLoader `collate_fn`: raw records are rendered inside the workers, processed examples are padded."""

    def __init__(
        self,
        processor: DeepSynthProcessor,
        padding_side: str = "left",
        pad_to_multiple_of: int | None = None,
        mode=None,
    ):
        self.processor, self.padding_side, self.pad_to_multiple_of, self.mode = (
            processor,
            padding_side,
            pad_to_multiple_of,
            mode,
        )

    def __call__(self, examples: list[dict]) -> BatchFeature:
        return self.processor.collate(examples, self.padding_side, self.pad_to_multiple_of, self.mode)


DeepSynthImageProcessor.register_for_auto_class("AutoImageProcessor")
DeepSynthProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["DeepSynthImageProcessor", "DeepSynthProcessor", "DeepSynthCollator", "MODES", "dynamic_preprocess"]
