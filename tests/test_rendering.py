"""The text renderer: pixel identity with the stored rendering of fixed documents (the hashes were computed by the
renderer before it moved into its own module; Pillow ships its own FreeType, so they hold for a given Pillow)."""

import hashlib
import json
import sys
from pathlib import Path

import pytest

from deepsynth.data.synthetic import generate_split
from deepsynth.training.labels import char_cell_labels, span_cell_mask
from processing_deepsynth import DeepSynthImageProcessor, DeepSynthProcessor, DocumentText

DEMO = Path(__file__).resolve().parents[1] / "checkpoints" / "deepsynth-demo"

DOCUMENT = (
    "Quarterly report\n\n"
    "Revenue rose to $45.2M (up 12%), costs fell to $12M; the net margin is 0.73 of the plan.\n"
    "\tIndented by a tab, then    four spaces inside.\n"
    "    jumpy jaguars judge the j-shaped glyph at the start of a line\n"
    "Ǻccents: café, naïve, Ångström, ﬁ ligature, Ḱ stacked.\n"
    + "Supercalifragilisticexpialidocious" * 9 + " after the long word\n"
    + "\f"
    + "Second page after a form feed.\n\n\n"
    + "\n".join(f"line {i}: " + "lorem ipsum dolor sit amet " * (i % 4 + 1) for i in range(40))
)


def processors() -> dict:
    """The geometries we ship: the demo checkpoint's own (loaded from its committed processor_config.json), the
    default preset, a fixed line grid, a fixed character pitch with the monospace font."""
    return {
        "demo": DeepSynthProcessor.from_pretrained(str(DEMO)).image_processor,
        "small": DeepSynthImageProcessor(mode="small", max_pages=16),
        "grid": DeepSynthImageProcessor(mode=None, base_size=128, image_size=128, page_width=128, page_height=128,
                                        margin=2, font_size=11, line_height=16, patch_size=4, max_pages=16),
        "pitch": DeepSynthImageProcessor(mode=None, base_size=128, image_size=128, page_width=128, page_height=128,
                                         margin=0, font_file="DejaVuSansMono.ttf", font_size=13, char_pitch=8,
                                         line_height=16, patch_size=4, max_pages=64),
    }


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def fingerprints() -> dict:
    """name -> [layout digest, pages digest, pixel_values digest] for DOCUMENT and a few synthetic documents."""
    docs = [DOCUMENT] + [r["text"] for r in generate_split("train", 4, seed=0)]
    out, ips = {}, processors()
    for name, ip in ips.items():
        ip.truncate_pages = True
        layouts = [ip.layout_text(d) for d in docs]
        pages = [page.tobytes() for d in docs for page in ip.load_pages(DocumentText(d))]
        pixels = ip(DocumentText(DOCUMENT))["pixel_values"]
        out[name] = [digest(json.dumps(layouts).encode()), digest(b"".join(pages)),
                     digest(pixels.numpy().tobytes()), [len(p) for p in layouts]]
    grid = ips["grid"]
    labels = [char_cell_labels(grid, DOCUMENT, max_pages=16),
              span_cell_mask(grid, DOCUMENT, "lorem ipsum", max_pages=16)]
    out["labels"] = [digest(t.numpy().tobytes()) for t in labels] + [list(t.shape) for t in labels]
    return out


EXPECTED = {  # name: [layouts, page bytes, pixel_values of DOCUMENT, pages per document]
    "demo": ["66cf69a1475a99d2", "91c06994ef834622", "eb53aa8caef9dad4", [10, 1, 1, 1, 1]],  # the byte grid (issue 16)
    "small": ["be132942b4fd0b6b", "f00e815da7ec69f1", "1ddeba85b82cbc68", [4, 1, 1, 1, 1]],
    "grid": ["3dcbfab1ee4a34e7", "c0910cccf28dcfab", "b2982e4f64ea45d6", [25, 2, 2, 3, 2]],
    "pitch": ["99fb6d1ef5010800", "cf398f6fb6324e10", "e92bcf5c86c8260a", [33, 2, 3, 3, 2]],
    "labels": ["33fd92aa77e547e5", "b4600305803afea5", [16, 8, 8, 4], [16, 8, 8]],  # char cells, answer cells
}


@pytest.mark.filterwarnings("ignore:document has")
def test_rendering_is_pixel_identical_to_the_stored_hashes():
    assert fingerprints() == EXPECTED


if __name__ == "__main__":  # print the fingerprints of this checkout's renderer
    json.dump(fingerprints(), sys.stdout, indent=1)
