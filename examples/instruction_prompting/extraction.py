"""Pull every value of one kind out of a document (the guide's "Extract all revenue numbers and growth rates").

    python examples/instruction_prompting/extraction.py [--model DIR] [--document FILE] [--instruction "..."]
"""

import sys

from common import ask

INSTRUCTIONS = ["Extract all dollar amounts.", "Extract all percentages.", "Extract all dates."]

if __name__ == "__main__":
    sys.exit(ask(__doc__, INSTRUCTIONS, max_length=48))
