"""Training: the `train` entry point, which delegates to run_instruct.py (Seq2SeqTrainer) at the repo root."""
