"""What the driver and the dispatcher record while an execution runs.

:class:`RunStore` is the driver's side of it: save a record (then publish its
event), ask whether the execution was cancelled, read a step's kept output.
:class:`RecordsRunStore` is the dispatcher's, on the records, the object store
and Redis; :class:`MemoryRunStore` is its in-memory twin, for tests.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from typing import Any, Protocol

import redis.asyncio as aioredis

from orchestrator import keys
from orchestrator.errors import NotFoundError
from orchestrator.inputs import load_document
from orchestrator.intake import Job
from orchestrator.lifecycle import Event
from orchestrator.models import ExecutionRecord
from orchestrator.objects import ObjectStore
from orchestrator.outputs import restore, to_record
from orchestrator.records import RecordStore
from orchestrator.resilience import TRANSIENT, persist

log = logging.getLogger("wtm.store")


class RunStore(Protocol):
    """What the driver records and asks while it runs one execution."""

    async def save(self, record: ExecutionRecord, event: Event) -> bool:
        """Write the record whole, then publish the event; the record is not kept.
        False, and nothing published, if the execution had already ended (cancelled)."""

    async def cancelled(self, execution_id: str) -> bool:
        """Whether a user asked to stop the execution."""

    async def kept_output(self, execution_id: str, step_id: str) -> Any | None:
        """A step's output kept by an earlier delivery of the execution, or None."""


class RecordsRunStore:
    """The dispatcher's store: records, the object store for outputs, Redis for events.

    The records and the object store are blocking clients: every call runs in a
    thread, so the dispatcher's event loop never waits on them. A transient
    fault (Redis restarting, the records locked) is retried in place until it
    passes: the job that asked keeps its place and its progress. Events are
    the exception: they are advice to waiting clients (who also read the
    records), so one that cannot be published is dropped.
    """

    def __init__(
        self, records: RecordStore, objects: ObjectStore, r: aioredis.Redis, inline_bytes: int
    ):
        self.records = records
        self.objects = objects
        self.redis = r
        self.inline_bytes = inline_bytes
        self.writes = GroupCommit(records)

    async def load(self, execution_id: str) -> ExecutionRecord | None:
        return await persist(
            lambda: asyncio.to_thread(self.records.get_execution, execution_id),
            f"reading execution {execution_id}",
            log,
        )

    async def save(self, record: ExecutionRecord, event: Event) -> bool:
        if not await self.writes.save(record):
            return False
        await self.publish(event)
        return True

    async def publish(self, event: Event) -> None:
        try:
            await self.redis.publish(keys.events(event.execution_id), event.encode())
        except TRANSIENT as e:
            log.info("event of %s not published: %s", event.execution_id, e)

    async def cancelled(self, execution_id: str) -> bool:
        flag = keys.cancel_flag(execution_id)
        return bool(await persist(lambda: self.redis.exists(flag), "reading a cancel flag", log))

    async def input_of(self, job: Job) -> Any:
        """The job's input document, read from the object store if it was offloaded."""
        if job.input_ref is None:
            return job.input
        return await persist(
            lambda: asyncio.to_thread(load_document, job.input, job.input_ref, self.objects),
            f"reading the input of {job.execution_id}",
            log,
        )

    async def kept_output(self, execution_id: str, step_id: str) -> Any | None:
        key = keys.step_output_key(execution_id, step_id)

        def read() -> Any:
            return restore(json.loads(self.objects.get(keys.DATA_BUCKET, key)), self.objects)

        try:
            return await asyncio.to_thread(read)  # arrays and bytes back in place
        except NotFoundError:  # none kept (or an array it names is gone): run it again
            return None

    async def finish(self, record: ExecutionRecord, kept_outputs: bool) -> None:
        """Write the terminal record (a large result goes to the object store first).

        The outcome is held here until the write succeeds, however long the
        records are away: a job whose result is known is never run again for
        want of its record. Once it is written nothing can resume the
        execution, so the outputs its steps kept for that are removed.
        """
        if record.result is not None:
            await asyncio.to_thread(self._offload_result, record)
        await self.writes.save(record)
        if kept_outputs:
            await asyncio.to_thread(self._forget_kept, record)

    def _offload_result(self, record: ExecutionRecord) -> None:
        record.result = to_record(record.result, self.objects)  # arrays, bytes: stored
        data = json.dumps(record.result).encode()
        if len(data) > self.inline_bytes:
            key = keys.result_key(record.execution_id)
            self.objects.put(keys.DATA_BUCKET, key, data)
            record.result, record.result_ref = None, self.objects.uri(keys.DATA_BUCKET, key)

    def _forget_kept(self, record: ExecutionRecord) -> None:
        for step in record.steps:
            self.objects.delete(
                keys.DATA_BUCKET, keys.step_output_key(record.execution_id, step.step_id)
            )


class GroupCommit:
    """Record writes of concurrent jobs, written together (group commit).

    A write waits while the batch before it is being written, then goes with
    every write that arrived meanwhile: one transaction and one thread hand-off
    for all of them, so under load many jobs' writes cost about one. Each
    caller still waits for its own record to be written; a transient fault
    holds the batch (:func:`~orchestrator.resilience.persist`) until it passes,
    and a record that cannot be written fails only its own job.
    """

    def __init__(self, records: RecordStore, most: int = 256):
        self.records = records
        self.most = most  # records in one transaction at most
        self._waiting: list[tuple[ExecutionRecord, asyncio.Future]] = []
        self._writer: asyncio.Task | None = None

    async def save(self, record: ExecutionRecord) -> bool:
        """Write the record whole with the next batch; whether it was written (see
        :meth:`~orchestrator.records.RecordStore.save_execution`)."""
        written = asyncio.get_running_loop().create_future()
        self._waiting.append((record, written))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all())
        return await written

    async def _write_all(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[: self.most], self._waiting[self.most :]
            write = functools.partial(asyncio.to_thread, self._save, [r for r, _ in batch])
            try:
                outcomes = await persist(write, f"writing {len(batch)} execution records", log)
            except Exception as e:  # noqa: BLE001 - not transient: each caller learns it
                outcomes = [e] * len(batch)
            except BaseException:  # the loop is going: no one is left to write for them
                for _, future in batch + self._waiting:
                    future.cancel()
                self._waiting = []
                raise
            _settle(batch, outcomes)

    def _save(self, records: list[ExecutionRecord]) -> list[bool | Exception]:
        try:
            return list(self.records.save_executions(records))
        except TRANSIENT:
            raise
        except Exception:  # a record that cannot be written: find it, write the rest
            if len(records) == 1:
                raise
            return [self._save_one(record) for record in records]

    def _save_one(self, record: ExecutionRecord) -> bool | Exception:
        try:
            return self.records.save_execution(record)
        except TRANSIENT:
            raise
        except Exception as e:  # noqa: BLE001 - handed to the job whose record it is
            return e


def _settle(batch: list[tuple[ExecutionRecord, asyncio.Future]], outcomes: list) -> None:
    for (_, future), outcome in zip(batch, outcomes, strict=True):
        if future.done():  # its job was cancelled meanwhile: the write stands anyway
            continue
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class MemoryRunStore:
    """The in-memory twin: every saved record and published event, in order."""

    def __init__(self) -> None:
        self.saved: list[ExecutionRecord] = []
        self.events: list[Event] = []
        self.cancel_requests: set[str] = set()
        self.kept: dict[tuple[str, str], Any] = {}

    async def save(self, record: ExecutionRecord, event: Event) -> bool:
        self.saved.append(record)
        self.events.append(event)
        return True

    async def cancelled(self, execution_id: str) -> bool:
        return execution_id in self.cancel_requests

    async def kept_output(self, execution_id: str, step_id: str) -> Any | None:
        return self.kept.get((execution_id, step_id))
