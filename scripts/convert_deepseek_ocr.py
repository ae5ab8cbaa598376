"""Convert an original DeepSeek-OCR checkpoint folder into a DeepSynth checkpoint.

    python scripts/convert_deepseek_ocr.py ORIGINAL_DIR OUT_DIR \
        [--instruction-encoder PATH_OR_ID] [--fusion tokens|pooled|none] [--config deepsynth_config.json]

ORIGINAL_DIR holds the released files (model*.safetensors with keys `model.sam_model.*`, `model.vision_model.*`,
`model.projector.layers.*`, `model.layers.*`, ... and its config.json). Without --config the decoder dimensions
come from that config.json. The instruction encoder (e.g. a BERT or Qwen folder) is loaded with AutoModel and
its tokenizer is saved beside the model when it has one.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configuration_deepsynth import DeepSynthConfig  # noqa: E402
from modeling_deepsynth import DeepSynthForConditionalGeneration  # noqa: E402


def convert(original_dir, out_dir, instruction_encoder=None, fusion="tokens", config_path=None):
    config = None
    if config_path is not None:
        config = DeepSynthConfig.from_json_file(config_path)
        if instruction_encoder is not None and config.instruction_encoder_config is None:
            raise ValueError("--config has no instruction_encoder_config but --instruction-encoder was given")
    model = DeepSynthForConditionalGeneration.from_deepseek_ocr(
        original_dir, config=config, instruction_encoder=instruction_encoder, instruction_fusion=fusion
    )
    model.save_pretrained(out_dir)
    if instruction_encoder is not None:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(instruction_encoder)
        except (OSError, ValueError) as err:
            print(f"note: no tokenizer saved for the instruction encoder ({err})", file=sys.stderr)
        else:
            tokenizer.save_pretrained(Path(out_dir) / "instruction_tokenizer")
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("original_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--instruction-encoder", default=None, help="AutoModel folder or hub id of the encoder")
    parser.add_argument("--fusion", default="tokens", choices=["tokens", "pooled", "none"])
    parser.add_argument("--config", default=None, help="a DeepSynthConfig JSON (overrides the original config.json)")
    args = parser.parse_args(argv)
    model = convert(args.original_dir, args.out_dir, args.instruction_encoder, args.fusion, args.config)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out_dir}: {n / 1e6:.2f}M parameters, fusion={model.config.instruction_fusion}")


if __name__ == "__main__":
    main()
