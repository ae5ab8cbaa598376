"""DeepSynth: instruction-following over documents through DeepSeek-OCR optical compression.

This is the application package (data, training, evaluation, inference); the Hub
remote-code files at the repository root never import it.
"""

__version__ = "0.1.0"
