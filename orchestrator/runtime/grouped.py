"""Work of concurrent jobs carried out together (group commit).

A dispatcher runs hundreds of jobs at once, and each one writes its record,
publishes its events and acknowledges its stream entry. One job at a time,
that is a thread hand-off, a commit or a network round trip each.
:class:`Grouped` sends whatever arrives while one batch is under way together
in the next one, so under load many jobs' writes cost about one, and a job
alone waits for no one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Carries out a batch: one outcome per item, an exception for an item that failed.
Flush = Callable[[list[T]], Awaitable[list["R | Exception"]]]


class Grouped(Generic[T, R]):
    """``await grouped(item)``: the item goes with the next batch; returns its outcome.

    ``flush`` gets up to ``most`` items at a time, in arrival order. An
    exception it raises is every item's outcome; one it returns in an item's
    place is that item's alone. A caller cancelled while its batch is under
    way does not stop the batch.
    """

    def __init__(self, flush: Flush, most: int = 256):
        self.flush = flush
        self.most = most
        self._waiting: list[tuple[T, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None

    async def __call__(self, item: T) -> R:
        outcome = asyncio.get_running_loop().create_future()
        self._waiting.append((item, outcome))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_all())
        return await outcome

    async def _flush_all(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[: self.most], self._waiting[self.most :]
            try:
                outcomes = await self.flush([item for item, _ in batch])
            except Exception as e:  # noqa: BLE001 - every caller in the batch learns it
                outcomes = [e] * len(batch)
            except BaseException:  # the loop is going: no one is left to flush for them
                for _, future in batch + self._waiting:
                    future.cancel()
                self._waiting = []
                raise
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():  # its caller was cancelled: the work stands anyway
                    continue
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
