"""The user guide's training command, delegating to run_instruct.py.

    PYTHONPATH=./src python3 -m deepsynth.training.train --config config.json --hf-dataset username/deepsynth-squad-qa
    PYTHONPATH=./src python3 -m deepsynth.training.train --hf-dataset data.jsonl --output ./models/deepsynth-qa \
        --use-text-encoder --text-encoder-type bert --batch-size 4 --num-epochs 3

`--use-deepseek-ocr` starts from deepseek-ai/DeepSeek-OCR (the hub, or the Hugging Face cache offline) unless a
model is named. Every argument goes to `run_instruct.main` unchanged (it maps the guide's keys and flags, see
SEED_KEYS there), plus `--do_train` when neither the command line nor the config file asks for do_train / do_eval /
do_predict.
"""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]


def _run_instruct():
    try:  # installed as a top-level module (setup.py py_modules)
        import run_instruct
    except ImportError:  # a source checkout: run_instruct.py sits at the repo root
        sys.path.insert(0, str(REPO_ROOT))
        import run_instruct
    return run_instruct


def _keys(argv: list[str]) -> set[str]:
    """Argument names given on the command line and in a --config JSON file, normalised to snake_case."""
    keys = {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}
    for i, arg in enumerate(argv):
        path = None
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        if path:
            keys |= {k.replace("-", "_") for k in _run_instruct().read_config_file(path)}
    return keys


def with_default_action(argv: list[str]) -> list[str]:
    argv = list(argv)
    if len(argv) == 1 and argv[0].endswith(".json"):  # run_instruct's `config.json` form, as a guide-style --config
        argv = ["--config", argv[0]]
    if not any(k.startswith("do_") for k in _keys(argv)):
        argv.append("--do_train")
    return argv


def main(argv=None) -> int:
    """Exit status 0, or 2 after one `error:` line for bad input (files, data, a model that is not available)."""
    run_instruct = _run_instruct()
    try:
        argv = with_default_action(sys.argv[1:] if argv is None else argv)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run_instruct.cli(argv)  # its metrics are logged and written to output_dir


if __name__ == "__main__":
    sys.exit(main())
