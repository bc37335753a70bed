"""Dynamic batching inside a replica: concurrent calls grouped into one batch.

Each call blocks its own actor thread on a future; one batching thread takes
the first waiting input, gathers more until the batch is full or the wait
limit passes, runs ``process_batch`` once, and hands each caller its own
result (or the batch's error).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

BatchFn = Callable[[list[Any]], list[Any]]


class Batcher:
    """Groups calls to ``fn`` into batches of at most ``max_size``."""

    def __init__(self, fn: BatchFn, max_size: int, wait_s: float):
        self.fn = fn
        self.max_size = max_size
        self.wait_s = wait_s
        self.sizes: list[int] = []  # batch sizes seen, for stats and tests
        self._queue: queue.Queue[tuple[Any, Future]] = queue.Queue()
        threading.Thread(target=self._loop, daemon=True, name="wtm-batcher").start()

    def submit(self, item: Any) -> Any:
        """Run one item as part of a batch; returns its own result or raises."""
        future: Future = Future()
        self._queue.put((item, future))
        return future.result()

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(self._queue.get(timeout=remaining))
                except queue.Empty:
                    break
            self._run(batch)

    def _run(self, batch: list[tuple[Any, Future]]) -> None:
        self.sizes = [*self.sizes[-999:], len(batch)]
        try:
            results = self.fn([item for item, _ in batch])
            if len(results) != len(batch):  # a caller without a result would wait forever
                raise ValueError(f"a batch of {len(batch)} returned {len(results)} results")
        except BaseException as e:  # noqa: BLE001 - every caller gets the batch's error
            for _, future in batch:
                future.set_exception(e)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
