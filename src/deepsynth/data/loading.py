"""Load instruction datasets from files, local folders or the Hub, and check their rows.

A DeepSynth row has an `instruction`, an `answer`, and a document: either `text` (the
document as plain text, rendered to page images later) or a path in `image`/`document`
(an image or PDF file). See `validate_rows` for the exact rules.
"""

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from .converters import convert_dataset

DOCUMENT_COLUMNS = ("image", "document")  # may stand in for "text": a path to a page image or PDF
DOCUMENT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".pdf")
_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv"}


class RowError(ValueError):
    """A bad row: `index` is its 0-based position in the split, `reason` what is wrong with it."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"row {index}: {reason}")
        self.index, self.reason = index, reason


def _load_files(files: list[Path]) -> Dataset | DatasetDict:
    """One file -> a Dataset; several files -> a DatasetDict with one split per file stem. Unreadable files fail
    with their name and, for JSON syntax errors, the 1-based line (datasets' own error names neither)."""
    builders = {_FILE_BUILDERS[f.suffix.lower()] for f in files}
    if len(builders) > 1:
        raise ValueError(f"mixed file formats {sorted(f.name for f in files)}: use one of .jsonl/.json or .csv")
    builder = builders.pop()
    for f in files:
        _check_has_rows(f)
    try:
        if len(files) == 1:
            return load_dataset(builder, data_files=str(files[0]), split="train")
        return load_dataset(builder, data_files={f.stem: str(f) for f in files})
    except Exception as e:  # DatasetGenerationError wrapping pyarrow's message: find the file and the line
        if builder == "json":
            for f in files:
                _check_json_syntax(f)
        cause = e.__cause__ or e
        names = ", ".join(str(f) for f in files)
        raise ValueError(f"{names}: cannot be loaded as {builder}: {type(cause).__name__}: {cause}") from None


def _data_lines(path: Path) -> list[int]:
    """1-based line numbers where the rows of a JSON-lines or CSV file start (blank lines hold no row)."""
    with open(path, encoding="utf-8", newline="") as f:
        if path.suffix.lower() == ".csv":
            reader, starts, line = csv.reader(f), [], 1
            for record in reader:
                if record:
                    starts.append(line)
                line = reader.line_num + 1
            return starts[1:]  # the first record is the header
        return [n for n, text in enumerate(f, 1) if text.strip()]


def _check_has_rows(path: Path) -> None:
    try:
        lines = _data_lines(path)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not lines:
        why = "only a header line" if path.stat().st_size else "it is empty"
        raise ValueError(f"{path}: the file has no rows ({why})")


def _check_json_syntax(path: Path) -> None:
    """Raise ValueError naming the first line of `path` that is not valid JSON; a JSON array file is parsed whole."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None
        return
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {n}: not valid JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}, line {n}: expected a JSON object per line, got {type(row).__name__}")


def _validate_files(ds: Dataset | DatasetDict, files: dict) -> None:
    """validate_rows, with errors that name the file (split name -> file) and the 1-based line of the bad row."""
    for name, split in ds.items() if isinstance(ds, DatasetDict) else [(None, ds)]:
        file = files[name]
        try:
            validate_rows(split)
        except ValueError as err:
            lines = [] if _is_json_array(file) else _data_lines(file)  # a JSON array's rows have no line of their own
            index = err.index if isinstance(err, RowError) else 0  # else: a column missing from every row
            where = f", line {lines[index]}" if index < len(lines) else f", row {index + 1}"
            raise ValueError(f"{file}{where}: {err.reason if isinstance(err, RowError) else err}") from None


def _is_json_array(path: Path) -> bool:
    if path.suffix.lower() != ".json":
        return False
    with open(path, encoding="utf-8") as f:
        return f.read(4096).lstrip().startswith("[")


def load_instruction_dataset(
    name_or_path: str | Path,
    split: str | None = None,
    source: str | None = None,
    max_samples: int | None = None,
    config: str | None = None,
    validate: bool = True,
    **convert_opts,
) -> Dataset | DatasetDict:
    """Load a dataset and return it in DeepSynth format.

    `name_or_path` may be:
      * a .jsonl/.json/.csv file: one split (`split` is not needed and not checked);
      * a folder written by `save_to_disk` (Dataset or DatasetDict);
      * a folder of .jsonl/.json/.csv files: one split per file, named by its stem
        (train.jsonl -> "train", test_values.jsonl -> "test_values");
      * otherwise a Hub dataset name, e.g. "squad_v2" (`config` selects e.g. "v2.1"
        of "ms_marco"; needs network).
    `split` picks one split of a multi-split source. `max_samples` keeps the first N rows
    of each split BEFORE conversion (conversion may drop unanswerable rows). `source`
    ("squad", "squad_v2", "natural_questions", "ms_marco") converts the rows with
    `convert_dataset(..., **convert_opts)`. With `validate`, `validate_rows` checks the result.
    """
    path = Path(name_or_path)
    files = None  # split name (None: the only one) -> the file its rows come from, for errors naming file and line
    if path.is_file():
        if path.suffix.lower() not in _FILE_BUILDERS:
            raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl, .json or .csv")
        ds, files = _load_files([path]), {None: path}
    elif path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            ds = load_from_disk(str(path))
        else:
            found = sorted(f for f in path.iterdir() if f.suffix.lower() in _FILE_BUILDERS)
            if not found:
                raise ValueError(f"{path}: no save_to_disk dataset and no .jsonl/.json/.csv files in this folder")
            ds = _load_files(found)
            files = {f.stem: f for f in found} if len(found) > 1 else {None: found[0]}
    elif path.suffix.lower() in _FILE_BUILDERS or str(name_or_path).startswith((".", "/", "~")):
        # Clearly meant as a local path: don't let a typo turn into a Hub lookup.
        raise FileNotFoundError(f"{name_or_path}: no such file or folder")
    else:
        try:
            ds = load_dataset(str(name_or_path), config, split=split)
        except ConnectionError as e:  # offline or unreachable: the name is neither local nor fetchable
            raise ValueError(f"dataset {name_or_path}: not a local file or folder, and {e}; pass a local "
                             ".jsonl/.json/.csv file or a dataset folder instead") from None

    if isinstance(ds, DatasetDict) and split is not None:
        if split not in ds:
            raise ValueError(f"{name_or_path}: no split {split!r}; available: {sorted(ds)}")
        ds = ds[split]
        files = {None: files[split]} if files else None
    if max_samples is not None:
        ds = _map_splits(ds, lambda d: d.select(range(min(max_samples, len(d)))))
    if source is not None:
        ds = convert_dataset(ds, source, **convert_opts)
    elif convert_opts:
        raise ValueError(f"conversion options {sorted(convert_opts)} given without a source")
    if validate and files and source is None:  # rows are still the files' rows, in order
        _validate_files(ds, files)
    elif validate:
        validate_rows(ds)
    return ds


def _map_splits(ds, fn):
    return DatasetDict({k: fn(v) for k, v in ds.items()}) if isinstance(ds, DatasetDict) else fn(ds)


def validate_rows(
    ds: Dataset | DatasetDict,
    columns: Sequence[str] = ("text", "instruction", "answer"),
    allow_empty: Sequence[str] = ("answer",),
    batch_size: int = 1000,
) -> Dataset | DatasetDict:
    """Check every row and return `ds` unchanged; raise ValueError naming the first bad row.

    Rules:
      * each of `columns` must exist and hold a string in every row (null is "missing");
        it must be non-blank unless listed in `allow_empty`. The answer may be empty by
        default because "" is SQuAD v2's own encoding of "unanswerable".
      * "text" may be replaced by a document column ("image" or "document"): the dataset
        needs one of them, and each row needs a non-blank text OR a document whose value
        is a path ending in an image/PDF suffix (or, for an `image` column with the
        `datasets.Image` feature, any stored image). Paths are not opened here: they may be
        relative to a folder only the caller knows.
    """
    if isinstance(ds, DatasetDict):
        for name, split in ds.items():
            try:
                validate_rows(split, columns, allow_empty, batch_size)
            except ValueError as err:
                raise ValueError(f"split {name!r}: {err}") from None
        return ds

    doc_columns = [c for c in DOCUMENT_COLUMNS if c in ds.column_names]
    text_optional = "text" in columns and bool(doc_columns)
    required = [c for c in columns if not (c == "text" and text_optional)]
    missing = [c for c in required if c not in ds.column_names]
    if missing:
        raise ValueError(f"dataset has no {missing} column(s); columns are {ds.column_names}")
    checked = required + (["text"] if text_optional and "text" in ds.column_names else []) + doc_columns
    # Images stay undecoded: checking must not open every file.
    subset = ds.select_columns(checked)
    for col in doc_columns:
        if isinstance(subset.features[col], datasets.Image):
            subset = subset.cast_column(col, datasets.Image(decode=False))

    for start in range(0, len(subset), batch_size):
        batch = subset[start : start + batch_size]
        for offset in range(len(batch[checked[0]])):
            index = start + offset
            for col in required:
                _check_string(index, col, batch[col][offset], col in allow_empty)
            if text_optional:
                _check_document(index, {c: batch[c][offset] for c in checked if c not in required}, subset.features)
    return ds


def _check_string(index: int, column: str, value, allow_empty: bool) -> None:
    if value is None:
        raise RowError(index, f"column {column!r} is missing (null)")
    if not isinstance(value, str):
        raise RowError(index, f"column {column!r} must be a string, got {type(value).__name__} {value!r:.60}")
    if not allow_empty and not value.strip():
        raise RowError(index, f"column {column!r} is empty")


def _check_document(index: int, values: dict, features) -> None:
    """A row of a dataset with document columns: non-blank text, or a usable document."""
    text = values.get("text")
    if text is not None and not isinstance(text, str):
        raise RowError(index, f"column 'text' must be a string, got {type(text).__name__}")
    if text and text.strip():
        return
    for col in DOCUMENT_COLUMNS:
        value = values.get(col)
        if value is None or value == "":
            continue
        if isinstance(features[col], datasets.Image):
            return
        if not isinstance(value, str):
            raise RowError(index, f"column {col!r} must be a file path string, got {type(value).__name__}")
        if not value.lower().endswith(DOCUMENT_SUFFIXES):
            raise RowError(
                index, f"column {col!r} = {value!r:.80} is not an image/PDF path ({', '.join(DOCUMENT_SUFFIXES)})"
            )
        return
    raise RowError(index, f"no document: 'text' is empty and {[c for c in DOCUMENT_COLUMNS if c in values]} too")
