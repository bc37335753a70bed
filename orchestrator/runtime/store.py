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
from orchestrator.runtime import cache
from orchestrator.runtime.grouped import Grouped

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

    async def cached(self, task_id: str, package_sha256: str, document: Any) -> Any | None:
        """The step cache's output for this task's code on this input, or None."""


class RecordsRunStore:
    """The dispatcher's store: records, the object store for outputs, Redis for events.

    Record writes of concurrent jobs are grouped
    (:class:`~orchestrator.runtime.grouped.Grouped`): one transaction for all
    that arrive while the last batch was being written.

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
        self.writes: Grouped[tuple[ExecutionRecord, Event | None], bool] = Grouped(
            self._write_records
        )
        self.cancel_checks: Grouped[str, bool] = Grouped(self._read_cancel_flags)

    async def load(self, execution_id: str) -> ExecutionRecord | None:
        return await persist(
            lambda: asyncio.to_thread(self.records.get_execution, execution_id),
            f"reading execution {execution_id}",
            log,
        )

    async def save(self, record: ExecutionRecord, event: Event) -> bool:
        return await self.writes((record, event))

    async def publish(self, event: Event) -> None:
        try:
            await self.redis.publish(keys.events(event.execution_id), event.encode())
        except TRANSIENT as e:
            log.info("event of %s not published: %s", event.execution_id, e)

    async def cancelled(self, execution_id: str) -> bool:
        return await self.cancel_checks(execution_id)

    async def _read_cancel_flags(self, execution_ids: list[str]) -> list[bool]:
        """Whether each execution was cancelled: one round trip for every job asking now
        (each call waiting for a slot or running asks once a second)."""

        async def read() -> list[bool]:
            pipe = self.redis.pipeline(transaction=False)
            for execution_id in execution_ids:
                pipe.exists(keys.cancel_flag(execution_id))
            return [bool(n) for n in await pipe.execute()]

        return await persist(read, f"reading {len(execution_ids)} cancel flags", log)

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

    async def cached(self, task_id: str, package_sha256: str, document: Any) -> Any | None:
        def look() -> Any | None:
            found = cache.read(self.objects, cache.key_of(task_id, package_sha256, document))
            return None if found is None else found[1]

        return await asyncio.to_thread(look)

    async def finish(self, record: ExecutionRecord, kept_outputs: bool) -> None:
        """Write the terminal record (a large result goes to the object store first).

        The outcome is held here until the write succeeds, however long the
        records are away: a job whose result is known is never run again for
        want of its record. Once it is written nothing can resume the
        execution, so the outputs its steps kept for that are removed.
        """
        if record.result is not None:
            await asyncio.to_thread(self._offload_result, record)
        await self.writes((record, None))
        if kept_outputs:
            await asyncio.to_thread(self._forget_kept, record)

    # grouped work ------------------------------------------------------------------
    async def _write_records(
        self, batch: list[tuple[ExecutionRecord, Event | None]]
    ) -> list[bool | Exception]:
        """Write a batch of records in one transaction (see :class:`Grouped`), then
        publish the events of those written in one round trip. A transient fault
        holds the batch until it passes; a record that cannot be written fails
        only its own job."""
        records = [record for record, _ in batch]
        write = functools.partial(asyncio.to_thread, self._save, records)
        outcomes = await persist(write, f"writing {len(records)} execution records", log)
        events = [e for (_, e), ok in zip(batch, outcomes, strict=True) if e and ok is True]
        if events:
            await self._publish_all(events)
        return outcomes

    async def _publish_all(self, events: list[Event]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for event in events:
            pipe.publish(keys.events(event.execution_id), event.encode())
        try:
            await pipe.execute()
        except TRANSIENT as e:
            log.info("%d events not published: %s", len(events), e)

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


class MemoryRunStore:
    """The in-memory twin: every saved record and published event, in order."""

    def __init__(self) -> None:
        self.saved: list[ExecutionRecord] = []
        self.events: list[Event] = []
        self.cancel_requests: set[str] = set()
        self.kept: dict[tuple[str, str], Any] = {}
        self.cache: dict[str, Any] = {}  # cache key -> output
        self.ended: set[str] = set()  # executions a save must be refused for (cancelled)

    async def save(self, record: ExecutionRecord, event: Event) -> bool:
        if record.execution_id in self.ended:
            return False
        self.saved.append(record)
        self.events.append(event)
        return True

    async def cancelled(self, execution_id: str) -> bool:
        return execution_id in self.cancel_requests

    async def kept_output(self, execution_id: str, step_id: str) -> Any | None:
        return self.kept.get((execution_id, step_id))

    async def cached(self, task_id: str, package_sha256: str, document: Any) -> Any | None:
        return self.cache.get(cache.key_of(task_id, package_sha256, document))
