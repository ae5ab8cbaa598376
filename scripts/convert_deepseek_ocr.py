"""Convert an original DeepSeek-OCR checkpoint folder into a DeepSynth checkpoint.

    python scripts/convert_deepseek_ocr.py ORIGINAL_DIR OUT_DIR \
        [--instruction-encoder PATH_OR_ID] [--fusion tokens|pooled|none] [--config deepsynth_config.json]

ORIGINAL_DIR holds the released files (model*.safetensors with keys `model.sam_model.*`, `model.vision_model.*`,
`model.projector.layers.*`, `model.layers.*`, ..., its config.json and tokenizer). Without --config the decoder
dimensions come from that config.json. The instruction encoder (e.g. a BERT or Qwen folder) is loaded with
AutoModel. The processor (folder tokenizer + `<instruction>`, encoder tokenizer, image processor) is saved too.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "src"):
    sys.path.insert(0, str(path))

from configuration_deepsynth import DeepSynthConfig  # noqa: E402
from deepsynth.conversion import DEFAULT_MODE, convert_original  # noqa: E402


def convert(original_dir, out_dir, instruction_encoder=None, fusion="tokens", config_path=None, mode=DEFAULT_MODE):
    config = None
    if config_path is not None:
        config = DeepSynthConfig.from_json_file(config_path)
        if instruction_encoder is not None and config.instruction_encoder_config is None:
            raise ValueError("--config has no instruction_encoder_config but --instruction-encoder was given")
    model, processor = convert_original(original_dir, instruction_encoder, fusion, mode, config=config)
    model.save_pretrained(out_dir)
    if processor is not None:
        processor.save_pretrained(out_dir)
    else:
        print("note: no tokenizer in the original folder, so no processor was written", file=sys.stderr)
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("original_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--instruction-encoder", default=None, help="AutoModel folder or hub id of the encoder")
    parser.add_argument("--fusion", default="tokens", choices=["tokens", "pooled", "none"])
    parser.add_argument("--config", default=None, help="a DeepSynthConfig JSON (overrides the original config.json)")
    parser.add_argument("--mode", default=DEFAULT_MODE, help="processor resolution mode: tiny/small/base/large/gundam")
    args = parser.parse_args(argv)
    model = convert(args.original_dir, args.out_dir, args.instruction_encoder, args.fusion, args.config, args.mode)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out_dir}: {n / 1e6:.2f}M parameters, fusion={model.config.instruction_fusion}")


if __name__ == "__main__":
    main()
