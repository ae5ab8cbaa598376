"""InstructionEngine on a tiny checkpoint: the guide's Python API, real batching, the document cache, confidence,
streaming and loud errors."""

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from _serving_helpers import DOC_A, DOC_B, REPO_ROOT, make_serving_checkpoint
from deepsynth.inference import DEFAULT_MODEL_PATH, DocumentCache, InstructionEngine, engine as engine_module
from deepsynth.inference.engine import _Entry, document_key, source_key

NOISE = Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 160, 3), dtype=np.uint8))
QUESTIONS = ["What was the revenue?", "Summarize focusing only on costs", "Extract all numbers", "Who wrote it?"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixtures: tests/conftest.py


@pytest.fixture(scope="module")
def engine(checkpoint):
    return InstructionEngine(model_path=checkpoint, use_text_encoder=True)


@pytest.fixture(scope="module")
def plain(checkpoint):
    """No document cache: every request runs the vision encoder and the whole prompt."""
    return InstructionEngine(model_path=checkpoint, cache_size=0)


class Spy:
    """Wraps a bound method, records the keyword arguments of each call and calls through."""

    def __init__(self, obj, name):
        self.obj, self.name, self.original, self.calls = obj, name, getattr(obj, name), []

    def __enter__(self):
        def wrapper(*args, **kwargs):
            self.calls.append(kwargs)
            return self.original(*args, **kwargs)

        setattr(self.obj, self.name, wrapper)
        return self

    def __exit__(self, *exc):
        delattr(self.obj, self.name)  # back to the class method


def test_seed_python_api(engine):
    # The guide's example as printed (default max_length=256).
    answer = engine.generate(
        document="AI has transformed healthcare through improved diagnostics...",
        instruction="What are the main benefits of AI in healthcare?",
    )
    assert isinstance(answer, str) and answer
    summary = engine.generate(
        document="Q3 2024 Financial Report: Revenue $45M (+15% YoY)...",
        instruction="Summarize focusing only on revenue trends",
        max_length=8,
        temperature=0.7,
    )
    assert isinstance(summary, str)
    result = engine.generate_result(DOC_A, QUESTIONS[0], max_length=5)
    assert result.tokens_generated == 5  # the random model never writes eos
    assert 0 < result.confidence <= 1 and result.inference_time_ms >= 0
    assert set(result.to_dict()) == {"answer", "confidence", "tokens_generated", "inference_time_ms", "queue_time_ms",
                                     "pages_used", "pages_total", "truncated"}
    assert (result.pages_used, result.pages_total, result.truncated, result.finish_reason) == (1, 1, False, "length")


def test_default_model_path_is_the_bundled_demo(monkeypatch, tmp_path):
    assert DEFAULT_MODEL_PATH == REPO_ROOT / "checkpoints" / "deepsynth-demo"
    monkeypatch.setattr(engine_module, "DEFAULT_MODEL_PATH", tmp_path / "deepsynth-demo")
    with pytest.raises(FileNotFoundError, match="Pass model_path"):
        InstructionEngine()
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        InstructionEngine(model_path=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no config.json"):
        InstructionEngine(model_path=tmp_path)


def test_text_encoder_off_on_a_fusion_checkpoint_is_refused(checkpoint):
    with pytest.raises(ValueError, match="trained with a fused instruction encoder"):
        InstructionEngine(model_path=checkpoint, use_text_encoder=False)


def test_batch_is_one_generate_call_and_matches_one_by_one(engine, plain):
    documents = [DOC_A, DOC_B, NOISE, DOC_A]
    singles = [plain.generate_result(d, q, max_length=6) for d, q in zip(documents, QUESTIONS)]
    assert len({r.answer for r in singles}) > 1  # the requests differ: mixing them up would show
    for eng in (plain, engine):
        with Spy(eng.model, "generate") as spy:
            batch = eng.generate_batch_results(documents, QUESTIONS, max_length=6)
        assert len(spy.calls) == 1
        assert [r.answer for r in batch] == [r.answer for r in singles]
        assert [r.confidence for r in batch] == pytest.approx([r.confidence for r in singles], abs=1e-5)
    assert plain.generate_batch(documents, QUESTIONS, max_length=6) == [r.answer for r in singles]


def test_cache_on_equals_off_and_skips_the_vision_encoder(engine, plain):
    engine.cache.clear()
    requests = [(DOC_A, QUESTIONS[0]), (DOC_A, QUESTIONS[1]), (DOC_B, QUESTIONS[0]), (DOC_A, QUESTIONS[2]),
                ([NOISE, DOC_B], QUESTIONS[3])]
    for document, question in requests:
        expected = plain.generate_result(document, question, max_length=8)
        with Spy(engine.model.model, "get_image_features") as vision, \
                Spy(engine.processor.image_processor, "preprocess") as rendering:
            got = engine.generate_result(document, question, max_length=8)
        assert got.answer == expected.answer
        assert got.confidence == pytest.approx(expected.confidence, abs=1e-5)
        assert len(vision.calls) == (0 if got.cache_hit else 1)
        # text is keyed by its source: a hit renders nothing; pixels in memory (NOISE) are keyed after rendering
        assert len(rendering.calls) == (0 if got.cache_hit and isinstance(document, str) else 1)
    assert [engine.generate_result(d, q, max_length=2).cache_hit for d, q in requests] == [True] * 5
    # the decoder prefix `bos, <image> x n` of a one-page document is cached too
    entry = engine.cache.get(source_key(DOC_A))
    assert entry.prefix_length == 1 + entry.image_features.shape[0] == 1 + engine.model.config.num_image_tokens(128, 128)
    assert entry.prefix.get_seq_length() == entry.prefix_length


def test_source_keys_follow_the_content(engine, tmp_path):
    """Text by content, files by path + size + mtime (an edited file is a new document), PIL images by pixels."""
    path = tmp_path / "report.txt"
    path.write_text(DOC_A)
    first = source_key(str(path))
    assert first == source_key(path) and first != source_key(DOC_A) and first.startswith("file:")
    assert source_key(DOC_A) == source_key(DOC_A + "") != source_key(DOC_B)
    assert source_key([DOC_A, path.read_bytes()]) is not None and source_key([DOC_A, NOISE]) is None
    assert source_key(NOISE) is None and document_key(engine.processor(document=NOISE, instruction="q"))
    before = engine.generate(str(path), QUESTIONS[0], max_length=4)
    path.write_text(DOC_B)  # same path, new content: a new key and a new answer, as without the cache
    assert source_key(str(path)) != first
    assert engine.generate(str(path), QUESTIONS[0], max_length=4) == engine.generate(DOC_B, QUESTIONS[0], max_length=4)
    assert before == engine.generate(DOC_A, QUESTIONS[0], max_length=4)


def test_cache_is_lru_and_bounded(checkpoint):
    small = InstructionEngine(model_path=checkpoint, cache_size=2)
    for doc in (DOC_A, DOC_B, DOC_A, NOISE):  # A, B, A again (most recent), then NOISE evicts B
        small.generate(doc, QUESTIONS[0], max_length=1)
    stats = small.cache_stats()
    assert (stats["entries"], stats["evictions"], stats["hits"], stats["misses"]) == (2, 1, 1, 3)
    assert small.generate_result(DOC_A, QUESTIONS[1], max_length=1).cache_hit
    assert not small.generate_result(DOC_B, QUESTIONS[1], max_length=1).cache_hit

    cache = DocumentCache(max_entries=10, max_bytes=1000)
    for key in "abc":
        cache.put(key, _Entry(torch.zeros(100)))  # 400 bytes each
    assert ("a" not in cache, "b" in cache, "c" in cache, cache.stats()["bytes"]) == (True, True, True, 800)
    cache.put("huge", _Entry(torch.zeros(1000)))  # larger than the whole budget: not kept
    assert "huge" not in cache and len(cache) == 2
    with pytest.raises(ValueError):
        DocumentCache(max_entries=0)


def _independent_confidence(eng, document, instruction, new_tokens):
    """exp(mean log p) of `new_tokens` under a fresh uncached forward over prompt + tokens, with the suppressed
    placeholder ids masked as generate() does."""
    batch = eng.processor(document=document, instruction=instruction, return_tensors="pt")
    prompt = batch["input_ids"].shape[1]
    ids = torch.cat([batch["input_ids"], new_tokens.unsqueeze(0)], 1)
    with torch.no_grad():
        logits = eng.model(**dict(batch, input_ids=ids, attention_mask=torch.ones_like(ids)), use_cache=False).logits
    logits = logits[0, prompt - 1 : -1].clone()
    logits[:, eng.model.generation_config.suppress_tokens] = float("-inf")
    logprobs = logits.log_softmax(-1).gather(1, new_tokens.unsqueeze(1)).squeeze(1)
    return logprobs.mean().exp().item()


def test_confidence_is_the_geometric_mean_of_token_probabilities(plain):
    batch = plain.processor(document=DOC_B, instruction=QUESTIONS[1], return_tensors="pt")
    sequence = plain.model.generate(**batch, max_new_tokens=6, do_sample=False)[0, batch["input_ids"].shape[1]:]
    result = plain.generate_result(DOC_B, QUESTIONS[1], max_length=6)
    assert result.answer == plain.processor.tokenizer.decode(sequence, skip_special_tokens=True).strip()
    expected = _independent_confidence(plain, DOC_B, QUESTIONS[1], sequence)
    assert 0 < result.confidence <= 1
    assert result.confidence == pytest.approx(expected, abs=1e-5)
    # A row ends at its first eos: call a later token eos -> the answer stops there and is scored up to it.
    stop = next(i for i in range(1, 6) if int(sequence[i]) not in sequence[:i].tolist())
    early = plain.generate_result(DOC_B, QUESTIONS[1], max_length=6, eos_token_id=int(sequence[stop]))
    assert early.tokens_generated == stop + 1
    expected = _independent_confidence(plain, DOC_B, QUESTIONS[1], sequence[: stop + 1])
    assert early.confidence == pytest.approx(expected, abs=1e-5)


def test_beam_search_answers_and_scores_like_model_generate(engine, plain):
    """num_beams through the engine, without and with the document cache (a cached document prefix cannot be
    expanded to beams: the engine then passes the cached vision rows), batched and single."""
    engine.cache.clear()
    documents, questions = [DOC_A, DOC_B, [NOISE, DOC_B]], QUESTIONS[:3]
    expected = []
    for document, question in zip(documents, questions):
        batch = plain.processor(document=document, instruction=question, return_tensors="pt")
        sequence = plain.model.generate(**batch, max_new_tokens=6, num_beams=3, do_sample=False)[0, batch["input_ids"].shape[1]:]
        expected.append((plain.processor.tokenizer.decode(sequence, skip_special_tokens=True).strip(),
                         _independent_confidence(plain, document, question, sequence)))
    assert [a for a, _ in expected] != [plain.generate(d, q, max_length=6) for d, q in zip(documents, questions)]
    for document, question in zip(documents, questions):  # greedy calls cache the documents (and DOC_A's prefix)
        engine.generate(document, question, max_length=1)
    assert engine.cache.get(source_key(DOC_A)).prefix is not None
    for eng in (plain, engine):
        for document, question, (answer, confidence) in zip(documents, questions, expected):
            result = eng.generate_result(document, question, max_length=6, num_beams=3)
            assert (result.answer, result.confidence) == (answer, pytest.approx(confidence, abs=1e-5))
        batch = eng.generate_batch_results(documents, questions, max_length=6, num_beams=3)
        assert [(r.answer, r.confidence) for r in batch] == [(a, pytest.approx(c, abs=1e-5)) for a, c in expected]
    assert engine.cache_stats()["hits"] >= 6


def test_stream_pieces_join_to_the_answer(engine, plain):
    expected = plain.generate(DOC_A, QUESTIONS[2], max_length=16)
    stream = engine.stream(DOC_A, QUESTIONS[2], max_length=16)
    pieces = list(stream)
    assert len(pieces) > 1 and all(pieces)
    assert "".join(pieces) == stream.result.answer == expected
    # A reader that stops early stops the generation.
    stream = engine.stream(DOC_B, QUESTIONS[0], max_length=400)
    for _ in stream:
        break
    stream._thread.join(timeout=30)
    assert not stream._thread.is_alive() and stream.result.tokens_generated < 400


def test_temperature_semantics(engine):
    for temperature, expected in ((None, {"do_sample": False}), (0, {"do_sample": False}),
                                  (0.3, {"do_sample": True, "temperature": 0.3})):
        with Spy(engine.model, "generate") as spy:
            engine.generate(DOC_A, QUESTIONS[0], max_length=2, temperature=temperature)
        kwargs = spy.calls[0]
        assert {k: kwargs.get(k) for k in expected} == expected and kwargs["max_new_tokens"] == 2
        assert ("temperature" in kwargs) == bool(temperature)
    with Spy(engine.model, "generate") as spy:  # other generate() kwargs pass through
        engine.generate(DOC_A, QUESTIONS[0], max_length=2, temperature=0.7, top_k=5)
    assert spy.calls[0]["top_k"] == 5


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda e: e.generate(DOC_A, ""), "instruction must be a non-empty string"),
        (lambda e: e.generate(DOC_A, None), "instruction must be a non-empty string"),
        (lambda e: e.generate(DOC_A, 5), "instruction must be a non-empty string"),
        (lambda e: e.generate("  ", "q"), "document is empty"),
        (lambda e: e.generate(None, "q"), "document is empty"),
        (lambda e: e.generate(123, "q"), "unsupported document type int"),
        (lambda e: e.generate("missing_report.pdf", "q"), "no such file"),
        (lambda e: e.generate(b"%PDF-1.4 garbage", "q"), "cannot read"),
        (lambda e: e.generate(DOC_A, "q\ud800"), "instruction is not valid Unicode text: lone surrogate"),
        (lambda e: e.generate("doc \udfff text", "q"), "document is not valid Unicode text"),
        (lambda e: e.stream(DOC_A, "\ud800 q"), "lone surrogate"),
        (lambda e: e.text_pages("\ud800"), "lone surrogate"),
        (lambda e: e.generate(DOC_A, "q", temperature=1e-38), "too small to sample with"),
        (lambda e: e.generate(DOC_A, "q", temperature=5e-324), "too small to sample with"),
        (lambda e: e.generate(DOC_A, "q", temperature=float("inf")), "finite number"),
        (lambda e: e.generate(DOC_A, "q", temperature=float("nan")), "finite number"),
        (lambda e: e.generate(DOC_A, "q", temperature=0.5, top_p=0), r"top_p must be a number in \(0, 1\]"),
        (lambda e: e.generate(DOC_A, "q", temperature=0.5, top_p=1.5), "top_p"),
        (lambda e: e.generate(DOC_A, "q", temperature=0.5, top_p=float("nan")), "top_p"),
        (lambda e: e.generate(DOC_A, "q", stop_strings="x"), "stop_strings must be a list"),
        (lambda e: e.generate(DOC_A, "q", max_length=0), "max_length must be a positive integer"),
        (lambda e: e.generate(DOC_A, "q", max_length="5"), "max_length must be a positive integer"),
        (lambda e: e.generate(DOC_A, "q", temperature=-0.5), "temperature must be a finite number >= 0"),
        (lambda e: e.generate(DOC_A, "q", num_beams=0), "num_beams must be a positive integer"),
        (lambda e: e.generate(DOC_A, "q", num_return_sequences=2), "num_return_sequences must be 1"),
        (lambda e: e.generate_batch([DOC_A], ["q", "r"]), "equal length"),
        (lambda e: e.generate_batch(DOC_A, "q"), "list of documents"),
        (lambda e: e.stream("", "q"), "document is empty"),
    ],
)
def test_bad_input_raises_value_error_and_the_engine_keeps_working(engine, call, message):
    with pytest.raises(ValueError, match=message):
        call(engine)
    assert isinstance(engine.generate(DOC_A, QUESTIONS[0], max_length=1), str)  # the model lock was released


def test_long_documents_are_truncated_and_say_so(engine, plain):
    """One behaviour everywhere: the first max_pages pages are read and the result says how many of how many."""
    result = plain.generate_result([NOISE] * 6, QUESTIONS[0], max_length=3)
    assert (result.pages_used, result.pages_total, result.truncated) == (4, None, True)  # layout stops at the limit
    assert result.answer == plain.generate([NOISE] * 4, QUESTIONS[0], max_length=3)  # the first 4 pages, exactly
    long_text = "word " * 3000
    pages, total, truncated = engine.document_pages(long_text)
    assert len(pages) == engine.max_pages == 4 and total is None and truncated
    assert len(engine.text_pages(long_text)) == 4
    for eng in (engine, engine):  # the second call is a cache hit: the counts come from the cached layout
        result = eng.generate_result(long_text, QUESTIONS[1], max_length=2)
        assert (result.pages_used, result.pages_total, result.truncated) == (4, None, True)
    assert result.cache_hit
    batch = plain.generate_batch_results([long_text, DOC_A], QUESTIONS[:2], max_length=2)
    assert [(r.pages_used, r.truncated) for r in batch] == [(4, True), (1, False)]


def test_stop_strings_and_finish_reason(plain):
    full = plain.generate_result(DOC_A, QUESTIONS[0], max_length=12)
    assert full.finish_reason == "length" and full.tokens_generated == 12
    words = full.answer.split()
    stop = words[len(words) // 2][:2] if len(words) > 1 else full.answer[1:3]
    cut = plain.generate_result(DOC_A, QUESTIONS[0], max_length=12, stop_strings=[stop])
    assert cut.finish_reason == "stop" and stop not in cut.answer
    assert full.answer.startswith(cut.answer) and cut.tokens_generated < 12


def test_concurrent_preparation_equals_sequential(plain):
    """Rendering runs in many threads at once without a lock: the pixels and ids must not change."""
    from concurrent.futures import ThreadPoolExecutor

    docs = [f"Doc {i}: " + f"alpha beta gamma {i} " * 40 + "é ü ß" for i in range(6)]
    pairs = [(d, QUESTIONS[i % 4]) for i, d in enumerate(docs)] * 4
    expected = [plain.prepare(d, q) for d, q in pairs[:6]]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda pair: plain.prepare(*pair), pairs))
    for i, example in enumerate(got):
        assert torch.equal(example["pixel_values"], expected[i % 6]["pixel_values"])
        assert example["input_ids"] == expected[i % 6]["input_ids"]
        assert example["instruction_input_ids"] == expected[i % 6]["instruction_input_ids"]


def test_timing_excludes_the_wait_for_the_model(plain):
    example = plain.prepare(DOC_B, QUESTIONS[0])
    kwargs = plain.generation_kwargs(max_length=2)
    with plain._lock:  # someone else holds the model for 0.5 s
        holder = threading.Timer(0.5, lambda: None)
        holder.start()
        results = []
        worker = threading.Thread(target=lambda: results.extend(plain.run_prepared([example], kwargs)))
        worker.start()
        holder.join()
    worker.join()
    assert results[0].queue_time_ms >= 500 and results[0].inference_time_ms < results[0].queue_time_ms


def test_text_pages_never_reads_files(engine, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET " * 50)
    images = engine.processor.image_processor
    pages = engine.text_pages(str(secret))
    assert len(pages) == 1
    assert np.array_equal(np.asarray(pages[0]), np.asarray(images.render_text(str(secret))[0]))
    assert not np.array_equal(np.asarray(pages[0]), np.asarray(images.load_pages(str(secret))[0]))


def test_concurrent_callers_queue_on_one_model(engine, plain):
    expected = {q: plain.generate(DOC_B, q, max_length=4) for q in QUESTIONS}
    results, errors = {}, []

    def ask(q):
        try:
            results[q] = engine.generate(DOC_B, q, max_length=4)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(q,)) for q in QUESTIONS]
    [t.start() for t in threads]
    [t.join(timeout=60) for t in threads]
    assert not errors and results == expected


def test_checkpoint_without_instruction_encoder(tmp_path):
    checkpoint = make_serving_checkpoint(tmp_path / "nofusion", fusion="none")
    cached, uncached = InstructionEngine(checkpoint, use_text_encoder=False), InstructionEngine(checkpoint, cache_size=0)
    for q in QUESTIONS[:2]:
        assert cached.generate(DOC_A, q, max_length=6) == uncached.generate(DOC_A, q, max_length=6)
    assert cached.generate_result(DOC_A, QUESTIONS[2], max_length=2).cache_hit
