"""InstructionEngine: load a DeepSynth checkpoint once, answer instructions about documents.

    from deepsynth.inference import InstructionEngine
    engine = InstructionEngine(model_path="./models/deepsynth-qa", use_text_encoder=True)
    engine.generate(document="AI has transformed healthcare...", instruction="What are the benefits?")

The engine is thin: the processor renders and tokenizes, the model generates, and `pipeline_deepsynth` (the
checkpoint's pipeline code) scores and decodes (`generate_with_scores`, `decode_answers`). What the engine adds is
serving: one model worker (a lock; concurrent callers queue), a document cache, real batching, streaming.

Document cache: the key is the document's source (`source_key`: text or bytes by content, a file by path + size +
mtime), computed before rendering, so a hit renders nothing; PIL images and arrays fall back to a hash of their
rendered pixels (`document_key`). An entry holds the page layout, the vision features (`image_features=` replaces
the vision encoder) and, for single requests, the decoder's KV cache of the instruction-independent prompt prefix
`bos, <image> x n` (generate() then only runs the instruction and answer tokens on a copy of it). LRU, bounded by
entries and bytes.
"""

import copy
import hashlib
import logging
import math
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

REPO_ROOT = Path(__file__).resolve().parents[3]
try:  # installed as top-level modules (setup.py py_modules) or on sys.path already
    import pipeline_deepsynth
except ImportError:  # a source checkout run with PYTHONPATH=./src: the remote-code files live at the repo root
    sys.path.insert(0, str(REPO_ROOT))
    import pipeline_deepsynth
from generation_deepsynth import repetition_guard, resolve_guard_kwarg  # noqa: E402
from modeling_deepsynth import DeepSynthForConditionalGeneration  # noqa: E402
from processing_deepsynth import DeepSynthProcessor, DocumentText, names_a_file  # noqa: E402
from rendering_deepsynth import check_unicode  # noqa: E402

logger = logging.getLogger(__name__)

# The bundled demo model; DEEPSYNTH_MODEL_PATH points elsewhere (e.g. for a pip-installed package).
DEFAULT_MODEL_PATH = Path(os.environ.get("DEEPSYNTH_MODEL_PATH", REPO_ROOT / "checkpoints" / "deepsynth-demo"))
DEFAULT_CACHE_ENTRIES = 32
DEFAULT_CACHE_BYTES = 512 * 2**20
PIXEL_KEYS = ("pixel_values", "pixel_values_local", "images_spatial_crop")
# Sampling divides the logits by the temperature: below this they overflow to inf and sampling fails (NaN probs).
MIN_TEMPERATURE = 1e-3


@dataclass
class GenerationResult:
    """answer: the decoded answer (stripped). confidence: geometric mean of the generated tokens' probabilities
    (eos included) under the distribution each was picked from, in (0, 1]. tokens_generated: new tokens, eos
    included. inference_time_ms: rendering + model time of this request (a batch's model time is shared by its
    rows). queue_time_ms: time the prepared request waited for the model (not part of inference_time_ms).
    pages_used / pages_total: pages the model read / the document has (None if unknown: a truncated document is
    laid out only up to the page limit); truncated: the document had more pages than the page limit and only the
    first `pages_used` were read. cache_hit: the document's vision
    features came from the cache. finish_reason: "stop" (eos or a stop string) or "length" (max_length reached).
    prompt_tokens: the prompt's length in decoder tokens (image placeholders included)."""

    answer: str
    confidence: float
    tokens_generated: int
    inference_time_ms: int
    queue_time_ms: int = 0
    pages_used: int | None = None
    pages_total: int | None = None
    truncated: bool = False
    cache_hit: bool = False
    finish_reason: str = "length"
    prompt_tokens: int = 0

    def to_dict(self) -> dict:
        """The REST response fields."""
        out = asdict(self)
        for internal in ("cache_hit", "finish_reason", "prompt_tokens"):
            out.pop(internal)
        return out


@dataclass
class JsonGenerationResult(GenerationResult):
    """A schema-constrained answer (`InstructionEngine.generate_json`): `answer` is the raw JSON text; json: the
    parsed object, validated against the schema (None when generation ran out of tokens first); field_confidence:
    per top-level field, the geometric mean probability of the tokens of its value; json_error: why json is None."""

    json: object = None
    field_confidence: dict = field(default_factory=dict)
    json_error: str | None = None


@dataclass
class _Entry:
    image_features: torch.Tensor  # (n_image_tokens, D)
    layout: dict | None = None  # images_spatial_crop + num_image_tokens: a hit by source key renders nothing
    prefix: object = None  # DynamicCache of `bos, <image> x n`, filled on the first single request
    prefix_length: int = 0

    @property
    def nbytes(self) -> int:
        total = self.image_features.nbytes
        for layer in getattr(self.prefix, "layers", []):
            total += sum(t.nbytes for t in (layer.keys, layer.values) if torch.is_tensor(t))
        return total


class DocumentCache:
    """LRU map document key -> `_Entry`, bounded by `max_entries` and `max_bytes` (an entry larger than
    `max_bytes` is simply not kept). Thread-safe."""

    def __init__(self, max_entries: int = DEFAULT_CACHE_ENTRIES, max_bytes: int = DEFAULT_CACHE_BYTES):
        if max_entries < 1 or max_bytes < 1:
            raise ValueError(f"cache bounds must be positive, got max_entries={max_entries}, max_bytes={max_bytes}")
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def get(self, key: str, count: bool = True) -> _Entry | None:
        """The entry (most recently used now) or None; `count=False` looks without touching the hit statistics."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += count
                return None
            self.hits += count
            self._entries.move_to_end(key)
            return entry

    def put(self, key: str, entry: _Entry) -> None:
        with self._lock:
            self._entries.pop(key, None)
            if entry.nbytes > self.max_bytes:
                return
            self._entries[key] = entry
            while len(self._entries) > self.max_entries or self._bytes() > self.max_bytes:
                self._entries.popitem(last=False)
                self.evictions += 1

    def _bytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def stats(self) -> dict:
        with self._lock:
            return {
                "entries": len(self._entries), "bytes": self._bytes(), "max_entries": self.max_entries,
                "max_bytes": self.max_bytes, "hits": self.hits, "misses": self.misses, "evictions": self.evictions,
            }


def document_key(example: dict) -> str:
    """Hash of a processed example's pixel tensors (and tile grid): equal keys mean equal vision features."""
    digest = hashlib.blake2b(digest_size=20)
    for name in PIXEL_KEYS:
        value = example.get(name)
        views = [] if value is None else value if isinstance(value, list) else [value]
        for view in views:
            view = torch.as_tensor(view).contiguous().cpu()
            digest.update(f"{name}{tuple(view.shape)}{view.dtype}".encode())
            digest.update(view.numpy().tobytes())
    return digest.hexdigest()


def source_key(document) -> str | None:
    """A key for a document as the caller gave it, computed before rendering: text (by content), a file (path, size
    and modification time), bytes (by content), or a list of those. None for pixels in memory (PIL images, arrays):
    those are keyed by `document_key` after preprocessing. The engine's processor (mode, font, page size) is fixed,
    so the source alone determines the pages."""
    if isinstance(document, (list, tuple)):
        parts = [source_key(part) for part in document]
        return None if not parts or None in parts else _digest("list", "|".join(parts).encode())
    if names_a_file(document):  # the processor's own rule for "this is a file"
        path = os.path.abspath(os.fspath(document))
        if not os.path.isfile(path):
            return None  # the processor reports the missing file
        stat = os.stat(path)
        return _digest("file", f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    if isinstance(document, str):
        return _digest("text", document.encode("utf-8", "surrogatepass"))
    if isinstance(document, (bytes, bytearray, memoryview)):
        return _digest("bytes", bytes(document))
    return None


def _digest(kind: str, data: bytes) -> str:
    return f"{kind}:" + hashlib.blake2b(data, digest_size=20).hexdigest()


def resolve_model_path(model_path) -> str:
    """A local checkpoint folder or a Hub id; a clear error when the (default) folder is missing."""
    if model_path is None:
        if not DEFAULT_MODEL_PATH.is_dir():
            raise FileNotFoundError(
                f"No model given and the bundled demo model is not installed at {DEFAULT_MODEL_PATH}. Pass "
                "model_path=... (CLI: --model PATH), a DeepSynth checkpoint folder such as one written by "
                "run_instruct.py, or set DEEPSYNTH_MODEL_PATH."
            )
        model_path = DEFAULT_MODEL_PATH
    path = str(model_path)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(f"{path} is not a DeepSynth checkpoint: it has no config.json")
        return path
    if path.startswith((".", "/", "~")) or path.count("/") != 1 or os.path.exists(path):
        raise FileNotFoundError(f"model_path {path!r}: no such checkpoint folder (pass a DeepSynth checkpoint folder)")
    return path  # "user/name": a Hub id


class _Cancelled(StoppingCriteria):
    """Stops generation when a client goes away: one event for the whole batch, or one per row (a row whose
    event is set ends; generate() stops once every row has)."""

    def __init__(self, event: threading.Event | list[threading.Event]):
        self.events = event if isinstance(event, list) else None
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        if self.events is None:
            return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)
        return torch.tensor([e.is_set() for e in self.events], dtype=torch.bool, device=input_ids.device)


def check_document_text(document) -> None:
    """ValueError for document text that is not valid Unicode, before it is hashed for the cache or rendered."""
    for part in document if isinstance(document, (list, tuple)) else [document]:
        if isinstance(part, str):
            check_unicode(part, "document")


class TextStream:
    """Iterator over answer text pieces as the model writes them; `result` holds the `GenerationResult` once the
    iteration ends. The joined pieces equal `result.answer` (leading/trailing whitespace is held back like the
    answer's strip()). Iterate it once; leaving the loop early (or `close()`) stops the generation."""

    def __init__(self, engine: "InstructionEngine", example: dict, generate_kwargs: dict):
        self.result: GenerationResult | None = None
        self._error: BaseException | None = None
        self._cancel = threading.Event()
        self._streamer = TextIteratorStreamer(engine._decoder, skip_prompt=True, skip_special_tokens=True)
        stop = StoppingCriteriaList([_Cancelled(self._cancel)])
        kwargs = dict(generate_kwargs, streamer=self._streamer, stopping_criteria=stop)
        self._thread = threading.Thread(target=self._work, args=(engine, example, kwargs), daemon=True)
        self._thread.start()

    def _work(self, engine, example, kwargs):
        try:
            self.result = engine._run([example], kwargs)[0]
        except BaseException as e:  # handed to the reader, who would otherwise wait forever
            self._error = e
            self._streamer.end()

    def __iter__(self) -> Iterator[str]:
        if self._cancel.is_set():
            raise RuntimeError("a TextStream can be iterated once")
        pending, started = "", False
        try:
            for piece in self._streamer:
                text = pending + piece
                if not started:
                    text = text.lstrip()
                    started = bool(text)
                body = text.rstrip()
                pending = text[len(body):]  # whitespace: emitted only if more text follows
                if body:
                    yield body
            self._thread.join()
            if self._error is not None:
                raise self._error
        finally:
            self.close()

    def close(self) -> None:
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> GenerationResult | None:
        """Block until the generation has ended (finished or stopped by `close`); its result, None if it failed."""
        self._thread.join(timeout)
        return self.result


class InstructionEngine:
    """Answers instructions about documents with one DeepSynth checkpoint.

    model_path: checkpoint folder (or Hub id); default `DEFAULT_MODEL_PATH`, the bundled demo model.
    use_text_encoder: True uses the checkpoint's instruction encoder (fusion) if it has one; a checkpoint without
        one reads the instruction as decoder text (a warning says so). False on a fusion checkpoint raises: that
        model was trained on fused instructions, and prompts without them are inputs it never saw; train or
        convert a checkpoint with instruction_fusion="none" instead.
    device: "cpu", "cuda", "cuda:1", ... dtype: default float32 on CPU, bfloat16 on CUDA.
    cache_size: documents kept in the document cache (0 disables it); cache_bytes bounds its memory.
    max_pages: lower the processor's page limit per document (None keeps the checkpoint's). A longer document is
        read up to its first `max_pages` pages; every result says so (`pages_used`, `pages_total`, `truncated`).
    """

    def __init__(
        self,
        model_path=None,
        use_text_encoder: bool = True,
        device: str = "cpu",
        cache_size: int = DEFAULT_CACHE_ENTRIES,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        dtype: torch.dtype | str | None = None,
        max_pages: int | None = None,
    ):
        self.model_path = resolve_model_path(model_path)
        device = torch.device(device)
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        elif isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        # The installed DeepSynth code runs (no remote code from the checkpoint folder is executed).
        self.model = DeepSynthForConditionalGeneration.from_pretrained(self.model_path, dtype=dtype).to(device).eval()
        self.processor = DeepSynthProcessor.from_pretrained(self.model_path, trust_remote_code=False)
        fusion = self.model.config.instruction_fusion
        if fusion != self.processor.instruction_fusion:
            raise ValueError(
                f"{self.model_path}: model fusion {fusion!r} but processor fusion {self.processor.instruction_fusion!r}"
            )
        if not use_text_encoder and fusion != "none":
            raise ValueError(
                f"{self.model_path} was trained with a fused instruction encoder (instruction_fusion={fusion!r}); "
                "use_text_encoder=False would feed it prompts it never saw. Use use_text_encoder=True, or a "
                "checkpoint trained without a text encoder."
            )
        if use_text_encoder and fusion == "none":
            logger.warning("%s has no instruction encoder: the instruction is read as decoder text", self.model_path)
        self.use_text_encoder = fusion != "none"
        if max_pages is not None:
            if not isinstance(max_pages, int) or max_pages < 1:
                raise ValueError(f"max_pages must be a positive int, got {max_pages!r}")
            self.processor.image_processor.max_pages = min(max_pages, self.processor.image_processor.max_pages)
        self.cache = DocumentCache(cache_size, cache_bytes) if cache_size else None
        self.device = device
        self._lock = threading.Lock()  # one model worker: concurrent callers queue here
        # Tokenizing, one at a time: a fast tokenizer with truncation changes its settings per call and is not safe
        # to share between threads. Rendering takes no lock (see _example). Decoding (under the model lock) has
        # its own copy.
        self._processor_lock = threading.Lock()
        self._decoder = copy.deepcopy(self.processor.tokenizer)

    @property
    def max_pages(self) -> int:
        return self.processor.image_processor.max_pages

    # ---- public API ---------------------------------------------------------------------------------------------
    def generate(
        self, document, instruction: str, max_length: int = 256, temperature: float | None = None, **generate_kwargs
    ) -> str:
        """The answer to `instruction` about `document` (text, a file path, PDF/image bytes, a PIL image, or a list
        of pages). max_length: most new tokens. temperature: 0/None = greedy, > 0 = sampling at that temperature
        (the guide: Q&A 0.3, summaries 0.7). Other generate() kwargs (top_p, repetition_penalty, ...) pass through;
        `repetition_guard=True` (or {"ngram_size": n, "window_size": w}) bans looping n-grams."""
        return self.generate_result(document, instruction, max_length, temperature, **generate_kwargs).answer

    def generate_result(
        self, document, instruction: str, max_length: int = 256, temperature: float | None = None, **generate_kwargs
    ) -> GenerationResult:
        """Like `generate`, with confidence, token count and time."""
        kwargs = self._generate_kwargs(max_length, temperature, generate_kwargs)
        return self._run([self._example(document, instruction)], kwargs)[0]

    def generate_batch(
        self, documents, instructions, max_length: int = 256, temperature: float | None = None, **generate_kwargs
    ) -> list[str]:
        """Answers for several (document, instruction) pairs in ONE padded generate() call."""
        results = self.generate_batch_results(documents, instructions, max_length, temperature, **generate_kwargs)
        return [r.answer for r in results]

    def generate_batch_results(
        self, documents, instructions, max_length: int = 256, temperature: float | None = None, **generate_kwargs
    ) -> list[GenerationResult]:
        if not isinstance(documents, (list, tuple)) or not isinstance(instructions, (list, tuple)):
            raise ValueError("generate_batch takes a list of documents and a list of instructions")
        if not documents or len(documents) != len(instructions):
            raise ValueError(
                f"need non-empty lists of equal length, got {len(documents)} documents and {len(instructions)} instructions"
            )
        kwargs = self._generate_kwargs(max_length, temperature, generate_kwargs)
        return self._run([self._example(d, i) for d, i in zip(documents, instructions)], kwargs)

    def stream(
        self, document, instruction: str, max_length: int = 256, temperature: float | None = None, **generate_kwargs
    ) -> TextStream:
        """Iterate the answer as it is generated: `for piece in engine.stream(doc, q): print(piece, end="")`.
        Bad input raises here, before anything is generated; `.result` is set once the iteration ends."""
        kwargs = self._generate_kwargs(max_length, temperature, generate_kwargs)
        return TextStream(self, self._example(document, instruction), kwargs)

    # ---- serving building blocks: a server prepares requests in its own threads and batches them -------------
    def generation_kwargs(self, max_length: int = 256, temperature: float | None = None, **generate_kwargs) -> dict:
        """The generate() kwargs of a request (ValueError on bad values), for `run_prepared`."""
        return self._generate_kwargs(max_length, temperature, generate_kwargs)

    def prepare(self, document, instruction: str) -> dict:
        """Render + tokenize one request (ValueError on bad input), for `run_prepared`; holds no model lock."""
        return self._example(document, instruction)

    def run_prepared(
        self, examples: list[dict], generate_kwargs: dict, cancel: list[threading.Event] | None = None
    ) -> list[GenerationResult]:
        """One padded generate() call for prepared examples sharing `generate_kwargs`; `cancel`: an event per
        example, set when its client has gone (that row stops early)."""
        return self._run(examples, generate_kwargs, cancel=cancel)

    def text_pages(self, text: str) -> list:
        """Pages of `text` read as text, never as a file name (what a server does with text from a client): the
        first `max_pages`, counted before anything is drawn."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a string, got {type(text).__name__}")
        return self.load_pages(DocumentText(text))

    def load_pages(self, document) -> list:
        """The page images the model sees for `document` (before resizing to views): for previews. Like answers,
        the first `max_pages` pages (`document_pages` also says whether the document had more)."""
        return self.document_pages(document)[0]

    def document_pages(self, document) -> tuple[list, int | None, bool]:
        """(pages the model reads, pages the document has or None if unknown, truncated)."""
        check_document_text(document)
        return self._document_pages(document)

    def cache_stats(self) -> dict | None:
        return None if self.cache is None else self.cache.stats()

    def generate_json(
        self, document, instruction: str, schema=None, max_length: int = 256, temperature: float | None = None,
        fields=None, **generate_kwargs
    ) -> JsonGenerationResult:
        """Schema-constrained extraction: the decoder can only write JSON valid under `schema` (a JSON Schema dict
        or its text) or, with `fields=["revenue", "growth"]`, an object of those required string fields. ValueError
        for an invalid schema (naming the problem), both or neither given, or num_beams > 1."""
        kwargs = self._generate_kwargs(max_length, temperature, generate_kwargs)
        with self._processor_lock:  # the constraint checks the schema's keys with the (shared) tokenizer
            constraint = pipeline_deepsynth.build_json_constraint(self.model, self.processor.tokenizer, schema, fields)
        if constraint is None:
            raise ValueError("generate_json needs a schema (a JSON Schema) or fields (a list of field names)")
        kwargs = pipeline_deepsynth.constrained_kwargs(self.model, constraint, kwargs)
        return self._run([self._example(document, instruction)], kwargs, constraint=constraint)[0]

    # ---- internals ----------------------------------------------------------------------------------------------
    @staticmethod
    def _generate_kwargs(max_length, temperature, extra: dict) -> dict:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive integer (new tokens), got {max_length!r}")
        if temperature is not None and (
            isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0
            or not math.isfinite(temperature)
        ):
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
        if temperature and temperature < MIN_TEMPERATURE:
            raise ValueError(
                f"temperature {temperature!r} is too small to sample with: use 0 for greedy or >= {MIN_TEMPERATURE}"
            )
        beams = extra.get("num_beams", 1)
        if isinstance(beams, bool) or not isinstance(beams, int) or beams < 1:
            raise ValueError(f"num_beams must be a positive integer, got {beams!r}")
        repetition_guard(extra.get("repetition_guard"))  # bad guard settings fail here, before any work
        top_p = extra.get("top_p", 1.0)
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")
        top_k = extra.get("top_k", 0)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0, got {top_k!r}")
        stops = extra.get("stop_strings", [])
        if isinstance(stops, str) or not all(isinstance(x, str) and x for x in stops):
            raise ValueError(f"stop_strings must be a list of non-empty strings, got {stops!r}")
        kwargs = {"max_new_tokens": max_length, "do_sample": bool(temperature)}
        if temperature:
            kwargs["temperature"] = float(temperature)
        return {**kwargs, **extra}

    def _document_pages(self, document) -> tuple[list, int | None, bool]:
        """(the pages the model reads, the pages the document has or None if unknown, truncated): the first
        `max_pages` pages are kept. The processor stops laying out at `max_pages` + 1 pages (a 10 MB text costs its
        first pages), so the total of a truncated document is unknown (None)."""
        pages, truncated = self.processor.image_processor.load_document(
            document, max_pages=self.max_pages, truncate_pages=True)
        return pages, None if truncated else len(pages), truncated

    def _example(self, document, instruction) -> dict:
        """Render + tokenize one request (outside the model lock): ValueError on bad input. Rendering holds no lock
        (the renderer's state is per call, and Pillow's FreeType calls keep the GIL); only tokenizing does: a
        fast tokenizer with truncation changes its settings per call and is not safe to share between threads."""
        started = time.perf_counter()
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError(f"instruction must be a non-empty string, got {instruction!r:.80}")
        check_unicode(instruction, "instruction")
        if document is None or (isinstance(document, str) and not document.strip()):
            raise ValueError("document is empty")
        check_document_text(document)
        key = source_key(document) if self.cache is not None else None
        entry = self.cache.get(key, count=False) if key is not None else None
        if entry is not None and entry.layout is not None:  # seen before: no rendering, no pixels
            vision = entry.layout
        else:
            pages, total, truncated = self._document_pages(document)
            vision = dict(self.processor.image_processor.preprocess(pages), pages_total=total, truncated=truncated)
        with self._processor_lock:
            example = self.processor.encode_example(document, instruction, vision=vision)
        example["pages_total"], example["truncated"] = vision.get("pages_total"), vision.get("truncated", False)
        example["cache_key"], example["cache_entry"] = key, entry  # the entry is held: eviction cannot lose it
        example["prepare_s"], example["prepared_at"] = time.perf_counter() - started, time.perf_counter()
        return example

    def _run(
        self, examples: list[dict], generate_kwargs: dict,
        cancel: list[threading.Event] | None = None, constraint=None,
    ) -> list[GenerationResult]:
        """One generate() call for all examples, under the model lock. Times come from each example (its own
        rendering, its wait for the lock). cancel: one event per example; a set event
        ends that row early (its client went away). constraint: the JSON constraint `generate_kwargs` decode under
        (`generate_json`): the results are `JsonGenerationResult`s with the parsed object."""
        kwargs = dict(generate_kwargs)
        if cancel is not None:
            kwargs["stopping_criteria"] = StoppingCriteriaList([*kwargs.get("stopping_criteria", []), _Cancelled(cancel)])
        if kwargs.get("stop_strings"):
            kwargs["tokenizer"] = self._decoder  # generate() needs it to find the strings in token ids
        with self._lock:
            locked = time.perf_counter()
            # beams cannot grow a pre-filled prefix cache (the checkpoint's generation config may ask for beams too)
            expanded = kwargs.get("num_beams", self.model.generation_config.num_beams or 1) > 1
            inputs, hits = self._inputs(examples, prefix_cache=not expanded)
            kwargs = resolve_guard_kwarg(kwargs, self._decoder)  # repetition_guard=True / {...}
            prompt_tokens = inputs["attention_mask"].sum(1).tolist()
            outputs = pipeline_deepsynth.generate_with_scores(self.model, inputs, **kwargs)
            decoded = pipeline_deepsynth.decode_answers(self._decoder, outputs)
            parsed = [{}] * len(examples) if constraint is None else pipeline_deepsynth.decode_json(constraint, outputs)
            model_s = time.perf_counter() - locked
        eos = kwargs.get("eos_token_id", self.model.generation_config.eos_token_id)
        eos = {eos} if isinstance(eos, int) else set(eos or [])
        results = []
        rows = zip(decoded, hits, examples, outputs["tokens"], prompt_tokens, parsed)
        for d, hit, example, tokens, n_prompt, json_fields in rows:
            length = d["tokens_generated"]
            finish = "stop" if length and int(tokens[length - 1]) in eos else "length"
            answer = d["answer"]
            for stop in kwargs.get("stop_strings") or []:
                if stop in answer:  # OpenAI's rule: the answer ends before the stop string
                    answer, finish = answer[: answer.index(stop)], "stop"
            total, used = example.get("pages_total"), example["num_pages"]
            result_class = GenerationResult if constraint is None else JsonGenerationResult
            results.append(result_class(
                answer, d["score"], length,
                inference_time_ms=round((example.get("prepare_s", 0.0) + model_s) * 1000),
                queue_time_ms=round(max(0.0, locked - example.get("prepared_at", locked)) * 1000),
                pages_used=used, pages_total=total, truncated=example["truncated"],
                cache_hit=hit, finish_reason=finish, prompt_tokens=int(n_prompt), **json_fields,
            ))
        return results

    def _inputs(self, examples: list[dict], prefix_cache: bool = True) -> tuple[dict, list[bool]]:
        """Model inputs for a batch: pixels without the cache; cached vision features (and, for one example, the
        cached document prefix unless `prefix_cache` is off) with it."""
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in self.processor.collate(examples).items()}
        if self.cache is None:
            return batch, [False] * len(examples)
        single = len(examples) == 1 and prefix_cache
        entries, hits = zip(*(self._entry(e, prefix=single) for e in examples))
        for key in (*PIXEL_KEYS, "num_pages"):
            batch.pop(key, None)
        entry = entries[0]
        if single and 0 < entry.prefix_length < batch["input_ids"].shape[1]:
            # The prompt starts with the cached document prefix: generate() runs only the tokens after it.
            batch["cache"] = copy.deepcopy(entry.prefix)
        else:
            batch["image_features"] = torch.cat([e.image_features for e in entries])
        return batch, list(hits)

    @torch.no_grad()
    def _entry(self, example: dict, prefix: bool) -> tuple[_Entry, bool]:
        """The document's cache entry: by source key when the document had one (text, file, bytes), else by a hash
        of its pixels."""
        key = example.get("cache_key") or document_key(example)
        entry = self.cache.get(key)  # counts the hit or miss
        if entry is None and example.get("cache_entry") is not None:
            entry = example["cache_entry"]  # evicted since _example() found it: still valid, no pixels to redo
        hit = entry is not None
        if entry is None:
            pixels = {k: example.get(k) for k in PIXEL_KEYS}
            pixels = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in pixels.items()}
            features = self.model.get_image_features(**pixels)  # P tensors (tokens of page p, D)
            layout = {
                "images_spatial_crop": example["images_spatial_crop"],
                "num_image_tokens": torch.tensor([len(f) for f in features]),
                "pages_total": example.get("pages_total"),
                "truncated": example.get("truncated", False),
            }
            entry = _Entry(torch.cat(features), layout)
        if prefix and entry.prefix is None:
            ids = torch.as_tensor(example["input_ids"], device=self.device).unsqueeze(0)
            # bos, <image> x n: the instruction-independent start of every prompt about this document.
            length = int((ids[0] == self.model.config.image_token_id).nonzero().max()) + 1
            out = self.model(
                input_ids=ids[:, :length],
                attention_mask=torch.ones_like(ids[:, :length]),
                image_features=entry.image_features,
                use_cache=True,
            )
            entry.prefix, entry.prefix_length = out.cache, length
        if not hit or prefix:
            self.cache.put(key, entry)  # (re)insert: the size may have grown by the prefix
        return entry, hit


__all__ = [
    "DEFAULT_MODEL_PATH", "DocumentCache", "DocumentText", "GenerationResult", "InstructionEngine", "JsonGenerationResult",
    "TextStream", "document_key", "source_key",
]
