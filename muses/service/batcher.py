"""Batch the encoding of concurrent queries: one transformer call for every query that arrived meanwhile."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")


class QueryBatcher(Generic[T]):
    """Collects queries from many threads and encodes them together on one worker thread.

    A caller blocks in :meth:`encode` until its result is ready. The worker takes everything queued (up to
    ``max_batch``), waiting at most ``max_wait_s`` after the first query for others to join.

    Args:
        encode: encodes a list of texts in one call, returning one result per text in order.
    """

    def __init__(self, encode: Callable[[Sequence[str]], list[T]], max_batch: int = 32, max_wait_s: float = 0.005):
        self._encode = encode
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: list[tuple[str, Future[T]]] = []
        self._cond = threading.Condition()
        self._closed = False
        self.batches = 0
        self.queries = 0
        self._worker = threading.Thread(target=self._run, name="muses-query-batcher", daemon=True)
        self._worker.start()

    def encode(self, text: str) -> T:
        """Encode one query (batched with any concurrent ones); the error of encoding this query, if any, is
        raised here (another query's error in the same batch is not)."""
        future: Future[T] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the query batcher is closed")
            self._queue.append((text, future))
            self._cond.notify()
        return future.result()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed and not self._queue:
                    return
                deadline = time.monotonic() + self.max_wait_s
                while len(self._queue) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            self._run_batch(batch)
            self.batches += 1
            self.queries += len(batch)

    def _run_batch(self, batch: list[tuple[str, Future[T]]]) -> None:
        """Encode ``batch`` in one call; if that fails, encode its queries one by one, so that a bad query's
        error reaches only its own caller and every other query still gets its result."""
        try:
            results = self._encode([text for text, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"the query encoder returned {len(results)} results for {len(batch)} queries")
        except BaseException as e:
            if len(batch) == 1 or not isinstance(e, Exception):  # no retry of KeyboardInterrupt and the like
                for _, future in batch:
                    future.set_exception(e)
            else:
                for item in batch:
                    self._run_batch([item])
            return
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)

    def close(self) -> None:
        """Finish queued work and stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._worker.join(timeout=10)

    def stats(self) -> dict[str, float]:
        """Batches run, queries encoded and the mean batch size."""
        return {
            "batches": self.batches,
            "queries": self.queries,
            "mean_batch_size": self.queries / self.batches if self.batches else 0.0,
        }
