"""Dynamic batching for the server: requests that arrive within a short window share one padded generate() call.

    batcher = Batcher(engine, window_ms=5, max_batch_size=16)
    job = batcher.submit(engine.prepare(document, instruction), engine.generation_kwargs(max_length=64))
    result = job.future.result()          # a GenerationResult; job.cancel.set() when the client has gone

One worker thread owns the batching: it takes the oldest waiting request, waits until `window_ms` after that
request arrived (or until `max_batch_size` requests are waiting), and runs every waiting request with the same
generate() kwargs as one batch (`engine.run_prepared`). Requests with other kwargs (another max_length, sampling)
wait for the next round. Greedy answers equal those of the request sent alone (the engine pads the batch on the
left; tested). While a batch runs, new requests gather, so under load batches fill without waiting at all.
"""

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class Job:
    example: dict
    generate_kwargs: dict
    future: Future = field(default_factory=Future)
    cancel: threading.Event = field(default_factory=threading.Event)
    arrived: float = field(default_factory=time.perf_counter)

    @property
    def key(self) -> tuple:
        """Requests batch together when their generate() kwargs are equal."""
        return tuple(sorted((k, repr(v)) for k, v in self.generate_kwargs.items()))


class Batcher:
    """Gathers concurrent requests into batches for one engine (see the module docstring). Thread-safe."""

    def __init__(self, engine, window_ms: float = 5.0, max_batch_size: int = 16):
        if window_ms < 0 or max_batch_size < 1:
            raise ValueError(f"need window_ms >= 0 and max_batch_size >= 1, got {window_ms}, {max_batch_size}")
        self.engine, self.window_s, self.max_batch_size = engine, window_ms / 1000, max_batch_size
        self._waiting: deque[Job] = deque()
        self._ready = threading.Condition()
        self.stats = {"batches": 0, "requests": 0, "largest_batch": 0, "cancelled": 0, "tokens_generated": 0}
        threading.Thread(target=self._loop, name="deepsynth-batcher", daemon=True).start()

    def submit(self, example: dict, generate_kwargs: dict) -> Job:
        job = Job(example, generate_kwargs)
        with self._ready:
            self._waiting.append(job)
            self._ready.notify()
        return job

    def _next_batch(self) -> list[Job]:
        with self._ready:
            while not self._waiting:
                self._ready.wait()
            first = self._waiting[0]
            deadline = first.arrived + self.window_s
            while len(self._waiting) < self.max_batch_size and (left := deadline - time.perf_counter()) > 0:
                self._ready.wait(left)
            batch = [job for job in self._waiting if job.key == first.key][: self.max_batch_size]
            for job in batch:
                self._waiting.remove(job)
        return batch

    def _loop(self):
        while True:
            batch = self._next_batch()
            live = [job for job in batch if not job.cancel.is_set()]
            self.stats["cancelled"] += len(batch) - len(live)
            for job in batch:
                if job.cancel.is_set():
                    job.future.cancel()
            if live:
                self._run(live)

    def _run(self, batch: list[Job]):
        try:
            results = self.engine.run_prepared(
                [job.example for job in batch], batch[0].generate_kwargs, cancel=[job.cancel for job in batch]
            )
        except Exception as e:  # noqa: BLE001 - one bad row must not fail the others: retry them alone
            if len(batch) > 1:
                logger.warning("a batch of %d failed (%s); running its requests one by one", len(batch), e)
                for job in batch:
                    self._run([job])
                return
            batch[0].future.set_exception(e)
            return
        self.stats["batches"] += 1
        self.stats["requests"] += len(batch)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
        for job, result in zip(batch, results):
            self.stats["tokens_generated"] += result.tokens_generated
            if job.cancel.is_set():
                self.stats["cancelled"] += 1
            job.future.set_result(result)
