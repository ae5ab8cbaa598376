"""A summary that focuses on what the instruction names (the guide's "Custom summarization").

    python examples/instruction_prompting/focused_summary.py [--model DIR] [--document FILE] [--instruction "..."]
"""

import sys

from common import ask

INSTRUCTIONS = ["Summarize focusing only on revenue.", "Summarize the document, focusing on the margin."]

if __name__ == "__main__":
    sys.exit(ask(__doc__, INSTRUCTIONS, max_length=48))
