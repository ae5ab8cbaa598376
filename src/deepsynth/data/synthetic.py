"""Synthetic instruction data: short business documents with questions, extraction and summary tasks.

Each row is one freshly drawn document (financial report, invoice, meeting notes,
product spec, HR offer letter) rendered in one of several layouts, one instruction
and a gold answer computed from the document's facts. Documents are kept short
(4-10 lines, 25-65 words) because a small model must read them from pixels.

Splits, each deterministic from (split, n, seed):
  train / validation  training value pools, training templates, training layouts
  test_values         values never seen in training: disjoint name/company/product pools,
                      and the integer part of every number (and every date's day) ends
                      in 7-9, whereas in training it ends in 0-6. Keying on the integer
                      part (not the last printed digit) also keeps "$12,347" from being a
                      prefix of a training "$12,347.25".
  test_paraphrases    instruction templates never used in training
  test_layouts        layouts never used in training ("table", "inline")

`all_digits` (train and validation only, opt-in) lifts the digit rule for a fraction of training documents: their
numbers end in any digit, as a user's do. A small decoder otherwise learns the rule itself (it writes "3.3%" for
a page's "8.3%", "$1.8M" for "$19.8M"). Held-out names stay unseen; held-out numbers are then unseen in their
own document only (a short one such as "8.3%" may occur in another training document).

Transcription (task "transcription", opt-in via `tasks=`): the instruction asks to read the page, the answer is
the document text. `random_lines_split` draws reading warm-up pages: 1-2 lines of random characters, no
language prior to fall back on, so the only way to lower the loss is to read the pixels (research/reading).

Gold answers: QA -> the value string exactly as printed in the document ("$45.2M",
"March 3, 2024", "Acme Corp"); extraction -> the values in document order joined by
"; " (amounts contain commas); summary -> one templated sentence built from the facts.

JSON extraction (task "json_extraction", opt-in via `tasks=`): 2-4 of the document's facts as named fields
(snake_case of their labels: "revenue", "revenue_growth", "cfo"); the instruction names them, the answer is the
object {field: value as printed} in canonical JSON (`structured_deepsynth.canonical_json`, the text constrained
decoding writes), and the row's `fields` lists the names (`schema_from_fields(row["fields"])` is its schema).
"""

import json
import random
import re
import sys
import textwrap
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from datasets import Dataset, DatasetDict

try:  # a top-level remote-code module (setup.py py_modules)
    from structured_deepsynth import canonical_json
except ImportError:  # a source checkout run with only src/ on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from structured_deepsynth import canonical_json

DOC_KINDS = ("financial_report", "invoice", "meeting_notes", "product_spec", "hr_letter")
TASKS = ("qa", "extraction", "summary")
ALL_TASKS = TASKS + ("transcription",)
JSON_TASKS = ("json_extraction",)  # opt-in too; kept out of ALL_TASKS so that datasets drawn with it stay the same
TRANSCRIPTION_INSTRUCTIONS = (
    "Transcribe the document.", "Free OCR.", "Read out all the text on the page.", "Convert the document to text.",
)
RANDOM_LINE_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789$%.,:-/"
TRAIN_LAYOUTS = ("fields", "prose", "bullets")
HELDOUT_LAYOUTS = ("table", "inline")
# Training-only layout variety (opt-in, `more_layouts`): more ways a user writes fields down. None of them is a
# held-out layout: no whitespace-aligned column and no " - " / " | " pairs, so test_layouts stays unseen.
EXTRA_TRAIN_LAYOUTS = ("equals", "dotted", "numbered", "next_line", "semicolons")
SPLITS = ("train", "validation", "test_values", "test_paraphrases", "test_layouts")
ANSWER_SEP = "; "
# Fact types that count as "values" for the held-out-values split (what must never leak).
VALUE_TYPES = ("money", "percent", "date", "person", "org", "product", "id", "number")

# --- value pools: training and held-out halves never share a string -----------------------

_TRAIN_FIRST = (
    "Alice", "Brian", "Carla", "David", "Elena", "Frank", "Grace", "Henry", "Irene", "Jacob",
    "Karen", "Lucas", "Maria", "Nathan", "Olivia", "Peter", "Rachel", "Samuel", "Teresa", "Victor",
    "Wendy", "Xavier", "Yvonne", "Zachary", "Monica", "Oscar", "Paula", "Roger", "Sofia", "Thomas",
)
_TRAIN_LAST = (
    "Smith", "Johnson", "Garcia", "Miller", "Davis", "Lopez", "Wilson", "Moore", "Taylor", "Thomas",
    "Martin", "Clark", "Lewis", "Walker", "Hall", "Young", "King", "Wright", "Scott", "Green",
    "Baker", "Adams", "Nelson", "Carter", "Mitchell", "Perez", "Roberts", "Turner", "Phillips", "Evans",
)
_HELDOUT_FIRST = ("Ingrid", "Dmitri", "Priya", "Kwame", "Astrid", "Mateo", "Leila", "Tobias", "Noor", "Hiroshi", "Bianca", "Emeka")
_HELDOUT_LAST = ("Okafor", "Lindqvist", "Nakamura", "Oyelaran", "Castellano", "Haddad", "Kowalczyk", "Rasmussen", "Ferreira", "Quispe", "Abernathy", "Vasquez")
_TRAIN_STEMS = (
    "Acme", "Northwind", "Bluepeak", "Stonebridge", "Redwood", "Silverline", "Greenfield", "Ironclad",
    "Brightwave", "Oakmont", "Summit", "Harbor", "Pinecrest", "Clearwater", "Goldleaf", "Westbrook",
    "Eastgate", "Riverstone", "Highland", "Maplewood",
)
_HELDOUT_STEMS = ("Zephyrine", "Quillfeather", "Obsidian", "Veltrana", "Kestrelmoor", "Juniperhall", "Umbervale", "Xylocore")
_COMPANY_SUFFIXES = ("Corp", "Inc", "Labs", "Group", "Systems", "Holdings", "Ltd")
_TRAIN_PRODUCTS = ("Nova", "Pulse", "Vertex", "Orbit", "Falcon", "Echo", "Atlas", "Comet", "Lumen", "Sprint")
_HELDOUT_PRODUCTS = ("Quasar", "Zenith", "Borealis", "Tundra", "Mistral")
_TRAIN_DIGITS = "0123456"
_HELDOUT_DIGITS = "789"
ALL_DIGITS = "0123456789"
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")


@dataclass(frozen=True)
class Pools:
    """Where a document's entity names and number digits come from."""

    first: tuple
    last: tuple
    stems: tuple
    products: tuple
    digits: str  # allowed last digits of every number's integer part (and of every date's day)


TRAIN_POOLS = Pools(_TRAIN_FIRST, _TRAIN_LAST, _TRAIN_STEMS, _TRAIN_PRODUCTS, _TRAIN_DIGITS)
HELDOUT_POOLS = Pools(_HELDOUT_FIRST, _HELDOUT_LAST, _HELDOUT_STEMS, _HELDOUT_PRODUCTS, _HELDOUT_DIGITS)
_HELDOUT_NAMES = _HELDOUT_FIRST + _HELDOUT_LAST + _HELDOUT_STEMS + _HELDOUT_PRODUCTS
VARIETY_SPLITS = ("train", "validation")  # the splits that take the training-only variety (names, digits, order)


# Onsets and codas of the long made-up names: clusters as in "Kowalczyk" or "Quillfeather", which the plain
# consonant-vowel names never show the decoder.
_CLUSTER_ONSETS = ("st", "kr", "br", "ph", "qu", "th", "sch", "gl", "tr", "wl", "pf", "dr", "sk", "zh")
_CLUSTER_CODAS = ("ll", "rn", "ck", "st", "lcz", "th", "rk", "nd", "mb", "ff")


def _invented_word(rng: random.Random, syllables: tuple[int, int], clusters: bool = False) -> str:
    """A pronounceable made-up name ("Davkulo", "Yrex") that contains no held-out name. `clusters`: syllables may
    open and close on consonant clusters ("Thraskellor"), and no held-out name occurs in any letter case."""
    consonants, codas = "bcdfghjklmnpqrstvwxz", ("", "", "n", "r", "l", "s", "x")
    while True:
        parts = []
        for _ in range(rng.randint(*syllables)):
            onset = rng.choice(_CLUSTER_ONSETS) if clusters and rng.random() < 0.3 else rng.choice(consonants)
            coda = rng.choice(_CLUSTER_CODAS) if clusters and rng.random() < 0.2 else rng.choice(codas)
            parts.append(onset + rng.choice("aeiouy") + coda)
        word = "".join(parts).capitalize()
        if clusters and not any(name.lower() in word.lower() for name in _HELDOUT_NAMES):
            return word
        if not clusters and not any(name in word for name in _HELDOUT_NAMES):
            return word


def invented_pools(rng: random.Random, long_names: bool = False) -> Pools:
    """Training pools of made-up names for one document: a small model memorises a fixed pool of 20 company stems
    and writes them back instead of reading the page; names it can only copy teach it to copy. Digits stay
    the training digits, so the held-out-values split remains unseen. `long_names`: longer names with consonant
    clusters (company stems of 3-4 syllables, "Thraskelmoor"), as long as the held-out ones ("Quillfeather",
    "Kowalczyk"), which the short names leave the decoder copying with a dropped or changed letter."""
    def words(k, syllables):
        return tuple(_invented_word(rng, syllables, clusters=long_names) for _ in range(k))

    if long_names:
        return Pools(words(4, (1, 3)), words(4, (2, 4)), words(3, (3, 4)), words(2, (2, 3)), _TRAIN_DIGITS)
    return Pools(words(4, (1, 2)), words(4, (2, 3)), words(3, (2, 3)), words(2, (1, 2)), _TRAIN_DIGITS)

# --- training-only variety: other names for a field, and direct questions -------------------

# Other labels a user writes for the same field (opt-in, `label_synonyms`). Questions keep asking by the fact's
# `ask` phrase, so the decoder has to match "name of the vendor" to "Issued by" as well as to "From".
LABEL_SYNONYMS = {
    "Company": ("Company name", "Firm", "Business"),
    "Revenue": ("Sales", "Total revenue", "Quarterly revenue"),
    "Prior-year revenue": ("Last year's revenue", "Revenue a year ago"),
    "Revenue growth": ("Growth", "YoY growth"),
    "Net income": ("Net profit", "Profit"),
    "Operating margin": ("Margin", "Op. margin"),
    "CFO": ("Chief Financial Officer", "Signed by"),
    "Invoice number": ("Invoice no.", "Invoice #", "Reference"),
    "From": ("Vendor", "Issued by", "Seller"),
    "Bill to": ("Client", "Billed to", "Customer"),
    "Issue date": ("Invoice date", "Date issued", "Dated"),
    "Total due": ("Amount due", "Total", "Balance due"),
    "Due date": ("Payment due", "Pay by", "Due"),
    "Organization": ("Organisation", "Company", "Team"),
    "Date": ("Meeting date", "Held on", "When"),
    "Chair": ("Chaired by", "Chairperson", "Led by"),
    "Topic": ("Main topic", "Subject", "Agenda"),
    "Approved budget": ("Budget approved", "Budget"),
    "Action owner": ("Owner", "Assigned to", "Responsible"),
    "Action item": ("Next step", "Action", "To do"),
    "Deadline": ("Due by", "Target date"),
    "Product": ("Model", "Product name"),
    "Manufacturer": ("Made by", "Maker", "Brand"),
    "Price": ("Retail price", "List price", "Cost"),
    "Care plan": ("Extended care", "Protection plan"),
    "Weight": ("Mass", "Net weight"),
    "Battery": ("Battery capacity", "Cell capacity"),
    "Release date": ("Released", "Launch date", "Available from"),
    "Warranty": ("Guarantee", "Warranty period"),
    "Candidate": ("Addressed to", "Candidate name", "Employee"),
    "Position": ("Role", "Job title", "Title"),
    "Annual salary": ("Salary", "Base salary", "Yearly pay"),
    "Signing bonus": ("Bonus", "Sign-on bonus"),
    "Manager": ("Reports to", "Supervisor", "Line manager"),
    "Start date": ("First day", "Starting on", "Start"),
    "Respond by": ("Reply by", "Response deadline", "Accept by"),
}

# Direct questions by a fact's `ask` phrase (opt-in, `direct_questions`): who / when / which wordings that no
# "{q}" template writes. Training and validation only, so the held-out paraphrase templates stay unseen.
DIRECT_QUESTIONS = {
    "company name": ("Which company reported these results?", "Whose quarterly report is this?"),
    "name of the CFO": ("Who signed the report?", "Who is the CFO?"),
    "name of the vendor": ("Who sent this invoice?", "Which company issued the invoice?"),
    "name of the client": ("Who is the invoice billed to?", "Which company has to pay?"),
    "issue date": ("When was the invoice issued?", "On what date was the invoice written?"),
    "total amount due": ("How much is owed in total?", "How much has to be paid?"),
    "due date": ("By when must the invoice be paid?", "When does payment fall due?"),
    "name of the organization": ("Which organization held the meeting?", "Whose meeting was this?"),
    "meeting date": ("When did the meeting take place?", "On what date was the meeting held?"),
    "name of the meeting chair": ("Who led the meeting?", "Who was the chair?"),
    "owner of the action item": ("Who owns the action item?", "Who is responsible for the next step?"),
    "deadline for the action item": ("When is the action item due?", "By when must the next step be done?"),
    "approved budget": ("How much budget was approved?", "What budget did the team approve?"),
    "manufacturer": ("Who makes the product?", "Which company builds it?"),
    "price": ("How much does it cost?", "How much does the product sell for?"),
    "release date": ("When was it released?", "When did the product come out?"),
    "weight": ("How heavy is it?", "How much does it weigh?"),
    "name of the employer": ("Which company is making the offer?", "Who is the employer?"),
    "candidate's name": ("Who is the letter addressed to?", "Who receives the offer?"),
    "name of the manager": ("Who will the new hire report to?", "Who is the manager?"),
    "start date": ("When does the job start?", "When is the first day of work?"),
    "response deadline": ("By when must the candidate reply?", "When is the answer due?"),
    "annual salary": ("How much is the yearly salary?", "What does the job pay a year?"),
}


# --- instruction templates: (id, text); "t" = training, "h" = held-out paraphrases ----------

QA_TEMPLATES = {
    "train": (
        "What is the {q}?", "What was the {q}?", "According to the document, what is the {q}?",
        "What does the document say the {q} is?", "Tell me the {q}.", "Can you tell me the {q}?",
        "Please state the {q}.", "Find the {q}.", "Look up the {q} in this document.",
        "What is the {q} given in the text?",
    ),
    "heldout": (
        "I need the {q}. What is it?", "Could you give me the {q} from this document?",
        "Based on the text, identify the {q}.", "Report only the {q}.",
    ),
}
EXTRACTION_TEMPLATES = {
    "train": (
        "Extract all {what}.", "Extract all {what} from this document.", "List all {what} in the document.",
        "List every one of the {what} mentioned.", "Pull out the {what}.", "Find all {what} in the text.",
        "Which {what} appear in the document?", "Give me all {what}, in order.",
        "Collect the {what} from this document.", "Identify all {what} in the text.",
    ),
    "heldout": (
        "Return a list of the {what} that appear here.", "Scan the document and output every one of the {what}.",
        "What are all the {what} stated here?", "Enumerate the {what} found in this text.",
    ),
}
SUMMARY_TEMPLATES = {
    "train": (
        "Summarize focusing only on {f}.", "Summarize the document, focusing on {f}.",
        "Write a one-sentence summary about {f}.", "Give a short summary of {f}.",
        "Summarize with emphasis on {f}.", "In one sentence, what does the document say about {f}?",
        "Provide a brief summary limited to {f}.", "Summarize what is said about {f}.",
        "Write a brief summary covering {f}.",
    ),
    "heldout": (
        "Briefly recap {f}.", "Sum up what the text reports on {f}.",
        "Focus on {f} and summarize.", "Give me the gist regarding {f}.",
    ),
}
JSON_EXTRACTION_TEMPLATES = {
    "train": (
        "Extract {fields} as JSON.", "Return a JSON object with the fields {fields}.",
        "Fill in these fields as JSON: {fields}.", "Give {fields} from the document as a JSON object.",
        "Extract the following fields as JSON: {fields}.", "Answer in JSON with the keys {fields}.",
        "Pull {fields} out of the document into JSON.", "Write a JSON object containing {fields}.",
    ),
    "heldout": (
        "Output JSON holding {fields}.", "As a JSON object, what are {fields}?",
        "Produce JSON with these keys: {fields}.", "Structure {fields} as a JSON record.",
    ),
}
TEMPLATES = {"qa": QA_TEMPLATES, "extraction": EXTRACTION_TEMPLATES, "summary": SUMMARY_TEMPLATES,
             "json_extraction": JSON_EXTRACTION_TEMPLATES}
# Extraction targets: (plural noun used in the instruction, fact types collected).
EXTRACTION_TARGETS = (
    ("dollar amounts", ("money",)),
    ("dates", ("date",)),
    ("percentages", ("percent",)),
    ("names of people", ("person",)),
    ("company names", ("org",)),
    ("amounts and percentages", ("money", "percent")),
)

_SPLIT_CONFIG = {  # split -> (value pools, template set, layouts)
    "train": (TRAIN_POOLS, "train", TRAIN_LAYOUTS),
    "validation": (TRAIN_POOLS, "train", TRAIN_LAYOUTS),
    "test_values": (HELDOUT_POOLS, "train", TRAIN_LAYOUTS),
    "test_paraphrases": (TRAIN_POOLS, "heldout", TRAIN_LAYOUTS),
    "test_layouts": (TRAIN_POOLS, "train", HELDOUT_LAYOUTS),
}


@dataclass
class Fact:
    label: str  # shown in key/value layouts: "Revenue"
    value: str  # exactly as printed: "$45.2M"
    type: str  # money | percent | date | person | org | product | id | number | text
    sentence: str  # the fact as a sentence, for prose and bullets; must contain `value`
    ask: str | None = None  # noun phrase for questions ("Q3 2024 revenue"); None = never asked


@dataclass
class Document:
    kind: str
    title: str
    facts: list[Fact]
    summaries: dict = field(default_factory=dict)  # focus phrase -> gold one-sentence summary

    def values(self) -> list[str]:
        """Entity and number strings of this document (what test_values holds out)."""
        return [f.value for f in self.facts if f.type in VALUE_TYPES]


# --- value drawing -------------------------------------------------------------------------


def _digit_ok(number: str, digits: str) -> bool:
    """Whether the integer part of the first number in `number` ends in an allowed digit."""
    integer = re.search(r"\d[\d,]*", number).group().replace(",", "")
    return integer[-1] in digits


def _int(rng: random.Random, lo: int, hi: int, digits: str) -> int:
    """An integer of about lo..hi whose last digit is in `digits`."""
    return rng.randint(lo // 10, hi // 10) * 10 + int(rng.choice(digits))


def _millions(rng, lo: int, hi: int, digits: str) -> str:
    """"$45.2M": about lo..hi millions, one decimal."""
    return f"${_int(rng, lo, hi, digits)}.{rng.randint(0, 9)}M"


def _dollars(rng, lo: int, hi: int, digits: str, cents: bool = True) -> str:
    """"$1,234.56" (or "$84,375" without cents)."""
    return f"${_int(rng, lo, hi, digits):,}" + (f".{rng.randint(0, 99):02d}" if cents else "")


def _percent(rng, lo: int, hi: int, digits: str) -> str:
    return f"{_int(rng, lo, hi, digits)}.{rng.randint(0, 9)}%"


def _date(rng, digits: str, year: int | None = None, month: int | None = None) -> str:
    """"March 3, 2024"; the day's last digit comes from the pool, so days never cross splits."""
    days = [d for d in range(1, 29) if str(d)[-1] in digits]
    month = month or rng.randint(1, 12)
    return f"{MONTHS[month - 1]} {rng.choice(days)}, {year or rng.randint(2021, 2025)}"


def _person(rng, pools: Pools) -> str:
    return f"{rng.choice(pools.first)} {rng.choice(pools.last)}"


def _company(rng, pools: Pools) -> str:
    return f"{rng.choice(pools.stems)} {rng.choice(_COMPANY_SUFFIXES)}"


def _two_people(rng, pools: Pools) -> tuple[str, str]:
    a = _person(rng, pools)
    while (b := _person(rng, pools)) == a:
        pass
    return a, b


# --- the five document kinds ---------------------------------------------------------------


def _financial_report(rng: random.Random, p: Pools) -> Document:
    company, cfo = _company(rng, p), _person(rng, p)
    quarter, year = rng.randint(1, 4), rng.randint(2021, 2025)
    period = f"Q{quarter} {year}"
    # Growth is computed from the two printed revenues, so redraw until it obeys the digit pool.
    while True:
        prev = _millions(rng, 20, 150, p.digits)
        revenue_m = round(float(prev[1:-1]) * (1 + rng.uniform(0.02, 0.35)), 1)
        revenue, growth = f"${revenue_m:.1f}M", f"{(revenue_m / float(prev[1:-1]) - 1) * 100:.1f}%"
        if _digit_ok(revenue, p.digits) and _digit_ok(growth, p.digits):
            break
    net_income = _millions(rng, 1, int(revenue_m * 0.3), p.digits)
    margin = _percent(rng, 5, 30, p.digits)
    facts = [
        Fact("Company", company, "org", f"{company} reported its results for {period}.", "company name"),
        Fact("Revenue", revenue, "money", f"Revenue for the quarter was {revenue}.", f"Q{quarter} revenue"),
        Fact("Prior-year revenue", prev, "money", f"A year earlier, revenue was {prev}.", "prior-year revenue"),
        Fact("Revenue growth", growth, "percent", f"Revenue grew {growth} year over year.", "revenue growth rate"),
        Fact("Net income", net_income, "money", f"Net income came in at {net_income}.", "net income"),
        Fact("Operating margin", margin, "percent", f"The operating margin was {margin}.", "operating margin"),
        Fact("CFO", cfo, "person", f"The report was signed by CFO {cfo}.", "name of the CFO"),
    ]
    return Document("financial_report", f"Quarterly Report - {period}", facts, {
        "revenue trends": f"{company}'s revenue grew {growth} to {revenue} in {period}, up from {prev} a year earlier.",
        "profitability": f"{company} reported net income of {net_income} and an operating margin of {margin} in {period}.",
    })


_INVOICE_ITEMS = ("consulting services", "software licenses", "cloud hosting", "hardware maintenance",
                  "training sessions", "data migration", "support plan", "design work")


def _invoice(rng: random.Random, p: Pools) -> Document:
    vendor = _company(rng, p)
    while (client := _company(rng, p)) == vendor:
        pass
    number = f"INV-{_int(rng, 10000, 99999, p.digits)}"
    year, month = rng.randint(2021, 2025), rng.randint(1, 11)
    issued, due = _date(rng, p.digits, year, month), _date(rng, p.digits, year, month + 1)
    item1, item2 = rng.sample(_INVOICE_ITEMS, 2)
    # The total is the printed sum of the two items: redraw until it obeys the digit pool too.
    while True:
        cents1 = _int(rng, 50, 9999, p.digits) * 100 + rng.randint(0, 99)
        cents2 = _int(rng, 50, 9999, p.digits) * 100 + rng.randint(0, 99)
        if str((cents1 + cents2) // 100)[-1] in p.digits:
            break
    amount1, amount2, total = (f"${c // 100:,}.{c % 100:02d}" for c in (cents1, cents2, cents1 + cents2))
    facts = [
        Fact("Invoice number", number, "id", f"This is invoice {number}.", "invoice number"),
        Fact("From", vendor, "org", f"It was issued by {vendor}.", "name of the vendor"),
        Fact("Bill to", client, "org", f"It is billed to {client}.", "name of the client"),
        Fact("Issue date", issued, "date", f"The invoice is dated {issued}.", "issue date"),
        Fact(item1.capitalize(), amount1, "money", f"{item1.capitalize()} cost {amount1}.", f"charge for {item1}"),
        Fact(item2.capitalize(), amount2, "money", f"{item2.capitalize()} cost {amount2}.", f"charge for {item2}"),
        Fact("Total due", total, "money", f"The total due is {total}.", "total amount due"),
        Fact("Due date", due, "date", f"Payment is due by {due}.", "due date"),
    ]
    return Document("invoice", f"Invoice {number}", facts, {
        "the amount due and due date": f"{vendor} billed {client} {total} on invoice {number}, due {due}.",
        "the billed items": f"The invoice charges {amount1} for {item1} and {amount2} for {item2}, totaling {total}.",
    })


_MEETING_TOPICS = ("vendor selection", "the product roadmap", "office relocation", "the hiring plan",
                   "the marketing budget", "the security audit", "customer onboarding", "the pricing review")
_ACTIONS = ("draft the rollout plan", "send the revised budget", "book the venue", "review the contracts",
            "prepare the board deck", "update the project timeline", "contact the suppliers", "publish the minutes")


def _meeting_notes(rng: random.Random, p: Pools) -> Document:
    org, (chair, owner) = _company(rng, p), _two_people(rng, p)
    year, month = rng.randint(2021, 2025), rng.randint(1, 11)
    date, deadline = _date(rng, p.digits, year, month), _date(rng, p.digits, year, month + 1)
    topic, action = rng.choice(_MEETING_TOPICS), rng.choice(_ACTIONS)
    budget = _millions(rng, 1, 19, p.digits)
    facts = [
        Fact("Organization", org, "org", f"Meeting notes from {org}.", "name of the organization"),
        Fact("Date", date, "date", f"The meeting took place on {date}.", "meeting date"),
        Fact("Chair", chair, "person", f"{chair} chaired the meeting.", "name of the meeting chair"),
        Fact("Topic", topic, "text", f"The main topic was {topic}.", "main topic of the meeting"),
        Fact("Approved budget", budget, "money", f"The team approved a budget of {budget}.", "approved budget"),
        Fact("Action owner", owner, "person", f"{owner} owns the next action item.", "owner of the action item"),
        Fact("Action item", action, "text", f"The action item is to {action}.", "action item"),
        Fact("Deadline", deadline, "date", f"It is due by {deadline}.", "deadline for the action item"),
    ]
    return Document("meeting_notes", "Meeting Notes", facts, {
        "decisions": f"On {date}, the {org} team approved a budget of {budget} for {topic}.",
        "action items": f"{owner} will {action} by {deadline}.",
    })


def _product_spec(rng: random.Random, p: Pools) -> Document:
    maker = _company(rng, p)
    product = f"{rng.choice(p.products)} {rng.choice('XSMP')}{_int(rng, 100, 999, p.digits)}"
    price = _dollars(rng, 49, 2999, p.digits)
    care_plan = _dollars(rng, 19, 299, p.digits)
    weight = f"{_int(rng, 0, 19, p.digits)}.{rng.randint(0, 9)} kg"
    battery = f"{_int(rng, 1500, 9999, p.digits)} mAh"
    released = _date(rng, p.digits)
    warranty = f"{rng.randint(1, 3)}-year"
    facts = [
        Fact("Product", product, "product", f"The {product} is the newest model.", "product name"),
        Fact("Manufacturer", maker, "org", f"It is made by {maker}.", "manufacturer"),
        Fact("Price", price, "money", f"It sells for {price}.", "price"),
        Fact("Care plan", care_plan, "money", f"An extended care plan costs {care_plan}.", "price of the care plan"),
        Fact("Weight", weight, "number", f"It weighs {weight}.", "weight"),
        Fact("Battery", battery, "number", f"The battery holds {battery}.", "battery capacity"),
        Fact("Release date", released, "date", f"It was released on {released}.", "release date"),
        Fact("Warranty", warranty, "text", f"It comes with a {warranty} warranty.", "warranty period"),
    ]
    return Document("product_spec", f"Product Specification: {product}", facts, {
        "technical specifications": f"The {product} weighs {weight} and has a {battery} battery.",
        "price and availability": f"The {product} from {maker} costs {price} and was released on {released}.",
    })


_POSITIONS = ("Data Analyst", "Software Engineer", "Product Manager", "Sales Director", "UX Designer",
              "Financial Controller", "Operations Lead", "Research Scientist")


def _hr_letter(rng: random.Random, p: Pools) -> Document:
    company, (candidate, manager) = _company(rng, p), _two_people(rng, p)
    position = rng.choice(_POSITIONS)
    salary = _dollars(rng, 45000, 180000, p.digits, cents=False)
    bonus = _dollars(rng, 1000, 20000, p.digits, cents=False)
    year, month = rng.randint(2021, 2025), rng.randint(1, 11)
    respond_by, start = _date(rng, p.digits, year, month), _date(rng, p.digits, year, month + 1)
    facts = [
        Fact("Company", company, "org", f"{company} is pleased to make you an offer.", "name of the employer"),
        Fact("Candidate", candidate, "person", f"This letter is addressed to {candidate}.", "candidate's name"),
        Fact("Position", position, "text", f"The offered position is {position}.", "position offered"),
        Fact("Annual salary", salary, "money", f"The annual salary is {salary}.", "annual salary"),
        Fact("Signing bonus", bonus, "money", f"A signing bonus of {bonus} is included.", "signing bonus"),
        Fact("Manager", manager, "person", f"You will report to {manager}.", "name of the manager"),
        Fact("Start date", start, "date", f"Your start date is {start}.", "start date"),
        Fact("Respond by", respond_by, "date", f"Please respond by {respond_by}.", "response deadline"),
    ]
    return Document("hr_letter", "Offer Letter", facts, {
        "the offer terms": f"{company} offers {candidate} the {position} role at {salary} a year plus a {bonus} signing bonus.",
        "key dates": f"{candidate} must respond by {respond_by} and starts on {start}.",
    })


_BUILDERS = {
    "financial_report": _financial_report,
    "invoice": _invoice,
    "meeting_notes": _meeting_notes,
    "product_spec": _product_spec,
    "hr_letter": _hr_letter,
}


def make_document(kind: str, rng: random.Random, pools: Pools = TRAIN_POOLS) -> Document:
    """Draw one document of `kind` with values from `pools`."""
    return _BUILDERS[kind](rng, pools)


# --- layouts -------------------------------------------------------------------------------


def _wrap(text: str, protect: list[str], width: int = 72) -> list[str]:
    """Wrap text at `width` without ever breaking inside a value (answers must stay verbatim)."""
    glue = "\x00"
    for value in sorted(protect, key=len, reverse=True):
        text = text.replace(value, value.replace(" ", glue))
    return [line.replace(glue, " ") for line in textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)]


def render(doc: Document, layout: str) -> str:
    """The document as plain text in one layout; every layout keeps the facts in `doc.facts` order."""
    if layout == "fields":  # "Label: value" lines
        body = [f"{f.label}: {f.value}" for f in doc.facts]
    elif layout == "prose":  # one wrapped paragraph
        body = _wrap(" ".join(f.sentence for f in doc.facts), [f.value for f in doc.facts])
    elif layout == "bullets":
        body = [f"- {f.sentence}" for f in doc.facts]
    elif layout == "table":  # aligned two-column table
        width = max(len(f.label) for f in doc.facts) + 3
        body = [f"{'Item'.ljust(width)}Value"] + [f"{f.label.ljust(width)}{f.value}" for f in doc.facts]
    elif layout == "inline":  # "Label - value" pairs run together, separated by " | "
        body = _wrap(" | ".join(f"{f.label} - {f.value}" for f in doc.facts), [f.value for f in doc.facts])
    elif layout == "equals":  # "Label = value" lines
        body = [f"{f.label} = {f.value}" for f in doc.facts]
    elif layout == "dotted":  # dot leaders: "Label ..... value"
        width = max(len(f.label) for f in doc.facts) + 4
        body = [f"{f.label} {'.' * (width - len(f.label))} {f.value}" for f in doc.facts]
    elif layout == "numbered":  # "1. sentence"
        body = [f"{i}. {f.sentence}" for i, f in enumerate(doc.facts, 1)]
    elif layout == "next_line":  # the label on its own line, the value indented below it
        body = [line for f in doc.facts for line in (f"{f.label}:", f"  {f.value}")]
    elif layout == "semicolons":  # "Label: value; Label: value" run together
        body = _wrap("; ".join(f"{f.label}: {f.value}" for f in doc.facts), [f.value for f in doc.facts])
    else:
        raise ValueError(f"unknown layout {layout!r}; choose from {TRAIN_LAYOUTS + EXTRA_TRAIN_LAYOUTS + HELDOUT_LAYOUTS}")
    return "\n".join([doc.title, *body])


# --- instructions and answers --------------------------------------------------------------


def _in_text_order(values: list[str], text: str) -> list[str]:
    """Distinct values sorted by where they first appear in the rendered text."""
    return sorted(dict.fromkeys(values), key=text.find)


def field_name(label: str) -> str:
    """A fact's label as a JSON field name: "Prior-year revenue" -> "prior_year_revenue"."""
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def _make_task(task: str, doc: Document, text: str, template_set: str, rng: random.Random,
               direct_questions: float = 0.0) -> tuple[str, str, str]:
    """(instruction, answer, template_id) for one task on one rendered document. `direct_questions`: the share of
    Q&A rows asked with one of the fact's DIRECT_QUESTIONS instead of a template (facts that have them)."""
    if task == "transcription":
        index = rng.randrange(len(TRANSCRIPTION_INSTRUCTIONS))
        return TRANSCRIPTION_INSTRUCTIONS[index], text, f"transcription/t{index:02d}"
    templates = TEMPLATES[task][template_set]
    index = rng.randrange(len(templates))
    template_id = f"{task}/{template_set[0]}{index:02d}"  # e.g. "qa/t03", "summary/h01"
    if task == "qa":
        fact = rng.choice([f for f in doc.facts if f.ask])
        if direct_questions > 0 and fact.ask in DIRECT_QUESTIONS and rng.random() < direct_questions:
            wording = rng.randrange(len(DIRECT_QUESTIONS[fact.ask]))
            return DIRECT_QUESTIONS[fact.ask][wording], fact.value, f"qa/d{wording:02d}"
        return templates[index].format(q=fact.ask), fact.value, template_id
    if task == "extraction":
        # Only targets with at least two values: a one-item "list" would just be QA.
        targets = [(noun, [f.value for f in doc.facts if f.type in types]) for noun, types in EXTRACTION_TARGETS]
        noun, values = rng.choice([(noun, vals) for noun, vals in targets if len(vals) >= 2])
        return templates[index].format(what=noun), ANSWER_SEP.join(_in_text_order(values, text)), template_id
    if task == "json_extraction":
        facts = list({field_name(f.label): f for f in doc.facts}.items())  # one fact per field name
        chosen = sorted(rng.sample(range(len(facts)), rng.randint(2, min(4, len(facts)))))  # document order
        answer = {facts[i][0]: facts[i][1].value for i in chosen}
        return templates[index].format(fields=", ".join(answer)), canonical_json(answer), template_id
    focus = rng.choice(sorted(doc.summaries))
    return templates[index].format(f=focus), doc.summaries[focus], template_id


def iter_examples(split: str, n: int, seed: int = 0, tasks: tuple = TASKS, invented_names: float = 0.0,
                  all_digits: float = 0.0, shuffled_fields: float = 0.0, long_names: float = 0.0,
                  more_layouts: float = 0.0, label_synonyms: float = 0.0, direct_questions: float = 0.0):
    """Yield (row, document) pairs; `generate_split` keeps the rows. Tests use the documents. `tasks` are cycled
    (default: qa, extraction, summary; add "transcription" for reading rows, see ALL_TASKS). `invented_names`
    (train and validation only): this fraction of documents takes its names from `invented_pools`; `all_digits`
    (train and validation only): this fraction of documents ends its numbers in any digit (module docstring);
    `shuffled_fields`: this fraction of documents lists its facts in a random order (a user's fields come in any
    order; in a fixed order a small decoder locates a field by its line instead of its label). The generator's
    wider variety, train and validation only as well: `long_names` (this fraction of the invented-name documents
    takes long names with consonant clusters, `invented_pools(long_names=True)`), `more_layouts` (this fraction
    of documents is rendered in one of EXTRA_TRAIN_LAYOUTS), `label_synonyms` (each field of a document takes one
    of its LABEL_SYNONYMS with this probability), `direct_questions` (see `_make_task`)."""
    if split not in _SPLIT_CONFIG:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    for name, value in (("invented_names", invented_names), ("all_digits", all_digits),
                        ("shuffled_fields", shuffled_fields), ("long_names", long_names),
                        ("more_layouts", more_layouts), ("label_synonyms", label_synonyms),
                        ("direct_questions", direct_questions)):
        if value and split not in VARIETY_SPLITS:
            raise ValueError(f"{name} applies to the {' and '.join(VARIETY_SPLITS)} splits, not {split!r}")
    if not tasks or any(t not in ALL_TASKS + JSON_TASKS for t in tasks):
        raise ValueError(f"tasks must be a non-empty subset of {ALL_TASKS + JSON_TASKS}, got {tasks!r}")
    pools, template_set, layouts = _SPLIT_CONFIG[split]
    # A string seed is hashed with SHA-512 by `random`, so it is stable across runs and machines.
    rng = random.Random(f"deepsynth-synthetic:{seed}:{split}")
    for i in range(n):
        # Cycle kinds and tasks so that every 15 rows cover every (kind, task) pair.
        kind, task = DOC_KINDS[i % len(DOC_KINDS)], tasks[(i // len(DOC_KINDS)) % len(tasks)]
        layout = rng.choice(layouts)
        # Draw nothing extra unless asked, so existing datasets stay byte for byte what they were.
        if more_layouts > 0 and rng.random() < more_layouts:
            layout = rng.choice(EXTRA_TRAIN_LAYOUTS)
        invent = invented_names > 0 and rng.random() < invented_names
        doc_pools = invented_pools(rng, long_names=long_names > 0 and rng.random() < long_names) if invent else pools
        if all_digits > 0 and rng.random() < all_digits:
            doc_pools = replace(doc_pools, digits=ALL_DIGITS)
        doc = make_document(kind, rng, doc_pools)
        if label_synonyms > 0:
            doc.facts = [replace(f, label=rng.choice(LABEL_SYNONYMS[f.label]))
                         if f.label in LABEL_SYNONYMS and rng.random() < label_synonyms else f for f in doc.facts]
        if shuffled_fields > 0 and rng.random() < shuffled_fields:
            rng.shuffle(doc.facts)
        text = render(doc, layout)
        instruction, answer, template_id = _make_task(task, doc, text, template_set, rng, direct_questions)
        row = {
            "id": f"{split}-{seed}-{i:06d}",
            "text": text,
            "instruction": instruction,
            "answer": answer,
            "task": task,
            "doc_kind": kind,
            "layout": layout,
            "template_id": template_id,
        }
        if task == "json_extraction":
            row["fields"] = list(json.loads(answer))
        yield row, doc


def generate_split(split: str, n: int, seed: int = 0, tasks: tuple = TASKS, **variety) -> list[dict]:
    """`n` rows of `split` with keys id, text, instruction, answer, task, doc_kind, layout, template_id.
    `variety`: the training-only fractions of `iter_examples` (invented_names, all_digits, shuffled_fields,
    long_names, more_layouts, label_synonyms, direct_questions)."""
    return [row for row, _ in iter_examples(split, n, seed, tasks, **variety)]


def random_lines_split(
    split: str, n: int, seed: int = 0, lines: tuple[int, int] = (1, 2), chars: tuple[int, int] = (4, 30),
    fits=None, instruction: str = TRANSCRIPTION_INSTRUCTIONS[0],
) -> list[dict]:
    """Reading warm-up rows: `lines` (min, max) lines of `chars` (min, max) random characters (RANDOM_LINE_CHARS);
    the answer is the text. `fits(line) -> bool` (e.g. the processor's pixel width check) trims a line until it
    fits on one rendered line, so the page shows exactly the answer's lines. Deterministic from (split, n, seed)."""
    rng = random.Random(f"deepsynth-random-lines:{seed}:{split}")
    rows = []
    for i in range(n):
        body = []
        for _ in range(rng.randint(*lines)):
            s = "".join(rng.choice(RANDOM_LINE_CHARS) for _ in range(rng.randint(*chars)))
            while fits is not None and len(s) > 1 and not fits(s):
                s = s[:-1]
            body.append(s)
        text = "\n".join(body)
        rows.append({"id": f"random_lines-{split}-{seed}-{i:06d}", "text": text, "instruction": instruction,
                     "answer": text, "task": "transcription", "doc_kind": "random_lines", "layout": "lines",
                     "template_id": "transcription/t00"})
    return rows


def document_packets(split: str, n: int, seed: int = 0, documents: tuple[int, int] = (3, 4), fits=None) -> list[dict]:
    """Long multi-page rows: `documents` (min, max) generator documents joined by a blank line, and one Q&A row
    about one of them whose kind of document occurs once in the packet. Q&A wordings name their kind of document
    (no wording is shared between kinds), so the answer is unambiguous and the model must find the right
    document, on any page. `fits(text) -> bool` (e.g. "lays out on at most max_pages pages") drops documents from
    the end until the packet fits; the asked document is drawn after that. `asked_document` is its index,
    `documents` how many there are."""
    if not 1 <= documents[0] <= documents[1]:
        raise ValueError(f"documents must be (min, max) with 1 <= min <= max, got {documents}")
    stream = iter_examples(split, 10**9, seed=seed, tasks=("qa",))
    rng = random.Random(f"deepsynth-packets:{seed}:{split}")
    rows = []
    while len(rows) < n:
        parts = [next(stream)[0] for _ in range(rng.randint(*documents))]  # kinds cycle: 5 in a row differ
        rng.shuffle(parts)
        while fits is not None and len(parts) > 1 and not fits("\n\n".join(p["text"] for p in parts)):
            parts.pop()
        kinds = Counter(p["doc_kind"] for p in parts)
        askable = [i for i, p in enumerate(parts) if kinds[p["doc_kind"]] == 1]
        if not askable:  # every kind twice: no question has one answer
            continue
        asked = rng.choice(askable)
        rows.append({"id": f"packet-{split}-{seed}-{len(rows):06d}", "text": "\n\n".join(p["text"] for p in parts),
                     "instruction": parts[asked]["instruction"], "answer": parts[asked]["answer"], "task": "qa",
                     "doc_kind": "packet", "layout": "packet", "template_id": parts[asked]["template_id"],
                     "asked_document": asked, "documents": len(parts)})
    return rows


def build_dataset_dict(sizes: dict[str, int], seed: int = 0) -> DatasetDict:
    """A DatasetDict with one split per entry of `sizes` (split name -> number of rows)."""
    return DatasetDict({split: Dataset.from_list(generate_split(split, n, seed)) for split, n in sizes.items()})
