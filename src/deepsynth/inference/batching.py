"""Dynamic batching for the server: requests that arrive within a short window share one padded generate() call.

    batcher = Batcher(engine, window_ms=5, max_batch_size=16)
    job = batcher.submit(engine.prepare(document, instruction), engine.generation_kwargs(max_length=64))
    result = job.future.result()          # a GenerationResult; job.cancel.set() when the client has gone

One worker thread owns the batching: it takes the oldest waiting request, waits until `window_ms` after that
request arrived (or until `max_batch_size` requests are waiting), and runs every waiting request with the same
generate() kwargs as one batch (`engine.run_prepared`). Requests announced with `expect()` (admitted, still being
rendered) are waited for too, up to `max_wait_ms` after the oldest arrived: concurrent clients are rendered side by
side and finish at different times, and a batch launched with the first one alone would leave the others to the
next round. Requests with other kwargs (another max_length, sampling)
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

    def __init__(self, engine, window_ms: float = 5.0, max_batch_size: int = 16, max_wait_ms: float = 200.0):
        if window_ms < 0 or max_batch_size < 1 or max_wait_ms < window_ms:
            raise ValueError(f"need 0 <= window_ms <= max_wait_ms and max_batch_size >= 1, got {window_ms}, "
                             f"{max_wait_ms}, {max_batch_size}")
        self.engine, self.window_s, self.max_batch_size = engine, window_ms / 1000, max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self._waiting: deque[Job] = deque()
        self._preparing = 0  # admitted requests still being rendered (`expect`)
        self._ready = threading.Condition()
        self.stats = {"batches": 0, "requests": 0, "largest_batch": 0, "cancelled": 0, "tokens_generated": 0}
        threading.Thread(target=self._loop, name="deepsynth-batcher", daemon=True).start()

    def expect(self) -> None:
        """A request was admitted and is being prepared: follow with `submit` or `forget`."""
        with self._ready:
            self._preparing += 1

    def forget(self) -> None:
        """An expected request will not come (its input was bad)."""
        with self._ready:
            self._preparing -= 1
            self._ready.notify()

    def submit(self, example: dict, generate_kwargs: dict, expected: bool = False) -> Job:
        job = Job(example, generate_kwargs)
        with self._ready:
            self._preparing -= expected
            self._waiting.append(job)
            self._ready.notify()
        return job

    def _more_to_wait_for(self, first: Job) -> float:
        """Seconds to keep gathering: the window, longer while admitted requests are still being prepared."""
        now = time.perf_counter()
        if len(self._waiting) >= self.max_batch_size:
            return 0.0
        left = first.arrived + self.window_s - now
        if self._preparing > 0:
            left = max(left, min(first.arrived + self.max_wait_s - now, 0.01))
        return left

    def _next_batch(self) -> list[Job]:
        with self._ready:
            while not self._waiting:
                self._ready.wait()
            first = self._waiting[0]
            while (left := self._more_to_wait_for(first)) > 0:
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
