"""Questions about a document (the guide's "Using Pre-trained Models", Q&A).

    python examples/instruction_prompting/qa.py [--model DIR] [--document FILE] [--instruction "..."]
"""

import sys

from common import ask

QUESTIONS = ["What was the revenue?", "What is the operating margin?", "What is the report date?"]

if __name__ == "__main__":
    sys.exit(ask(__doc__, QUESTIONS, max_length=24))
