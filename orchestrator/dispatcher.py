"""The dispatcher: a detached async Ray actor that drains the Redis streams.

Each job goes through named steps::

    read → drive → finish → ack → publish

``drive`` is the :class:`~orchestrator.runtime.driver.Driver` running the
job's plan (it starts the execution once a step of it can run); ``finish`` is
the :mod:`~orchestrator.lifecycle` move written through the
:class:`~orchestrator.runtime.store.RecordsRunStore`.

Leases. A job leaves the stream's pending list only after its terminal record
is written. Every entry a dispatcher reads is *held* from that moment: it
starts at once, and is renewed with every heartbeat by a loop of its own, on a
Redis connection of its own, that never waits behind work. Renewal checks
ownership: an entry another dispatcher has taken over (this one was thought
dead) is no longer renewed, and the run here is stopped. A dispatcher reads
only as many entries as it has room for, and room that frees up goes to
pending entries it owes before new ones.

Priority. Lanes are read high first, so the backlog waits in Redis in
priority order; a lane that has not been read for ``AGING_S`` (because higher
lanes kept taking all the room) is read first, so low lanes are never starved.

Recovery. A dispatcher's consumer name is its actor name, so a restarted one
(Ray restarts it) takes its own pending entries up again at once. A dispatcher
is dead when its heartbeat key has expired and stays missing for two more
beats of this one's, counted afresh after a Redis outage (so a Redis restart,
which expires every key, kills no one); a live dispatcher then takes its
entries over and removes the dead consumer. Each take-over counts a delivery;
an entry delivered too often goes to the dead letters. A job that failed in
this dispatcher is taken up again after a backoff, not at once.

Faults in place. A transient Redis or records error inside a job is retried
where it happened, with backoff, by the same dispatcher: the job keeps its
progress and its result.

Metrics (:mod:`~orchestrator.metrics`): executions taken, started and ended,
each step's time, recorded as the job goes (local calls, no round trip), and
the jobs held, with each heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from orchestrator import keys, lifecycle, logs, metrics
from orchestrator.errors import EndedElsewhere, NotFoundError
from orchestrator.intake import Job
from orchestrator.lifecycle import Event, Verdict
from orchestrator.models import ErrorInfo, ExecutionRecord, ExecutionStatus
from orchestrator.objects import open_objects
from orchestrator.records import open_records
from orchestrator.resilience import async_redis, persist
from orchestrator.runtime import actors
from orchestrator.runtime.caller import Caller
from orchestrator.runtime.driver import Driver, Executor
from orchestrator.runtime.grouped import Grouped
from orchestrator.runtime.router import AGING_S, ControllerReplicas, Router
from orchestrator.runtime.store import RecordsRunStore
from orchestrator.settings import Settings

log = logging.getLogger("wtm.dispatcher")


@dataclass(frozen=True)
class Entry:
    """One stream entry this dispatcher holds."""

    stream: str
    entry_id: str
    fields: dict
    claimed: bool = False  # taken over from a pending list: delivered before

    @property
    def key(self) -> tuple[str, str]:
        return self.stream, self.entry_id


class Dispatcher:
    """Reads jobs from every queue's lanes and runs them, many at once.

    ``name`` is its consumer name in the group (its actor name on Ray).
    ``executor`` is where steps run: replicas on Ray unless given (tests pass
    the in-process twin).
    """

    def __init__(self, settings: Settings, name: str, executor: Executor | None = None):
        self.settings = settings
        self.cfg = settings.dispatcher
        self.consumer = name
        # Jobs share a bounded pool and wait for a free connection rather than
        # fail; the blocking stream read has a connection of its own.
        self.redis = async_redis(settings.redis.url, self.cfg.redis_connections)
        self.reader = async_redis(settings.redis.url)
        # Heartbeat, renewal and take-over never queue behind jobs for a connection.
        self.control = async_redis(settings.redis.url, timeout_s=CONTROL_TIMEOUT_S)
        self._renew_mine = self.control.register_script(_RENEW_MINE)
        self._acks: Grouped[tuple[Entry, Event | None], None] = Grouped(self._ack_all)
        self.store = RecordsRunStore(
            open_records(settings), open_objects(settings), self.redis, self.cfg.inline_result_bytes
        )
        executor = executor or self._ray_executor()
        self.driver = Driver(executor, self.store, max_crashes=self.cfg.max_deliveries)
        self._lanes: dict[str, str] = {}  # stream -> lane, in the order lanes are served
        self._lane_read_at: dict[str, float] = {}  # when each stream was last read
        self._streams_read_at = 0.0
        self._held: dict[tuple[str, str], asyncio.Task] = {}  # every entry read, not yet acked
        self._freed = asyncio.Event()
        self._owed = False  # pending entries wait for room: freed room goes to them first
        self._taking = asyncio.Lock()
        self._missing_since: dict[str, float] = {}  # consumer -> first seen without a heartbeat
        self._last_round = 0.0  # when a take-over round last completed
        self._failures: dict[tuple[str, str], tuple[int, float]] = {}  # entry -> (n, retry at)
        self._main: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    def _ray_executor(self) -> Caller:
        router = Router(
            ControllerReplicas(self.settings.ray.namespace),
            self.consumer,
            report_s=self.settings.controller.period_s,
            wait_s=self.cfg.replica_wait_s,
        )
        return Caller(router)

    # lifecycle ---------------------------------------------------------------
    async def start(self) -> str:
        """Start the loops (idempotent); returns the consumer name."""
        if self._main is None:
            log.info(
                "dispatcher %s serving %s, %d jobs at once",
                self.consumer,
                ", ".join(self.cfg.queues) or "every queue",
                self.cfg.concurrency,
            )
            self._main = self._background(self._serve())
            self._background(self._every(self.cfg.heartbeat_s, self._beat, "heartbeat"))
            self._background(self._every(self.cfg.heartbeat_s, self._take_over, "taking over"))
        return self.consumer

    async def stop(self) -> None:
        """Cancel every loop and job (a job stops where it is and stays pending)."""
        while self._tasks:  # again for any a cancelled one started on its way out
            for task in list(self._tasks):
                task.cancel()
            await asyncio.wait(list(self._tasks), timeout=1)
        self._main = None

    async def ping(self) -> dict[str, Any]:
        return {
            "consumer": self.consumer,
            "pid": os.getpid(),
            "settings": actors.settings_digest(self.settings),
            "streams": list(self._lanes),
            "in_flight": len(self._held),
        }

    @property
    def _room(self) -> int:
        return self.cfg.concurrency - len(self._held)

    async def _every(self, period: float, step, what: str) -> None:
        """Run ``step`` now and then every ``period``; a failure waits for the next round."""
        while True:
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - Redis restarting, say: next round
                log.warning("%s failed: %s: %s", what, type(e).__name__, e)
            await asyncio.sleep(period)

    async def _beat(self) -> None:
        """Say we are alive (for three beats), then renew every entry we hold."""
        ttl = max(1, math.ceil(self.cfg.heartbeat_s * 3))
        beat = {"pid": os.getpid(), "at": time.time(), "in_flight": len(self._held)}
        await self.control.set(keys.dispatcher_alive(self.consumer), json.dumps(beat), ex=ttl)
        metrics.dispatcher_in_flight(self.consumer, len(self._held))
        await self._renew()

    # read ------------------------------------------------------------------
    async def _serve(self) -> None:
        while True:
            try:
                await self._read_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - Redis restarting: back off, keep serving
                log.warning("read failed: %s: %s", type(e).__name__, e)
                await asyncio.sleep(self.cfg.block_ms / 1000)

    async def _read_once(self) -> None:
        """Read what there is room for, high lane first; block briefly when all is quiet."""
        await self._refresh_streams()
        if not self._lanes:
            await asyncio.sleep(self.cfg.block_ms / 1000)
            return
        if self._owed and self._room > 0:  # room goes to entries already pending first
            await self._take_over()
            return
        if self._room <= 0:
            self._freed.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
            # cancellation that races the event, and stop() would never end.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cfg.block_ms / 1000):
                    await self._freed.wait()
            return
        got = 0
        for stream in self._lane_order():  # one lane's backlog goes before the next
            if self._room <= 0:
                break
            reply = await self.reader.xreadgroup(
                keys.CONSUMER_GROUP, self.consumer, {stream: ">"}, count=self._room
            )
            self._lane_read_at[stream] = time.monotonic()  # read: its backlog, if any, is here
            got += self._hold_all(reply)
        if got == 0:  # nothing waiting: block until something arrives on any lane
            reply = await self.reader.xreadgroup(
                keys.CONSUMER_GROUP,
                self.consumer,
                {s: ">" for s in self._lanes},
                count=1,
                block=self.cfg.block_ms,
            )
            self._hold_all(reply)

    def _lane_order(self) -> list[str]:
        """High lanes first, except that lanes unread for ``AGING_S`` go before them all."""
        now = time.monotonic()
        starved = [s for s in self._lanes if now - self._lane_read_at.setdefault(s, now) > AGING_S]
        return starved + [s for s in self._lanes if s not in starved]

    def _hold_all(self, reply: Any) -> int:
        entries = [
            Entry(_text(stream), _text(entry_id), fields)
            for stream, items in reply or []
            for entry_id, fields in items
        ]
        rank = {lane: i for i, lane in enumerate(keys.LANES)}
        for entry in sorted(entries, key=lambda e: rank[self._lanes[e.stream]]):
            self._hold(entry)
        return len(entries)

    async def _refresh_streams(self) -> None:
        now = time.monotonic()
        if now - self._streams_read_at < self.cfg.block_ms / 1000 and self._lanes:
            return
        self._streams_read_at = now
        queues = self.cfg.queues or sorted(
            q.decode() for q in await self.redis.smembers(keys.QUEUES_SET)
        )
        rank = {lane: i for i, lane in enumerate(keys.LANES)}
        pairs = sorted(((q, lane) for q in queues for lane in keys.LANES), key=lambda p: rank[p[1]])
        lanes = {keys.stream(q, lane): lane for q, lane in pairs}
        for s in set(lanes) - set(self._lanes):
            try:
                await self.redis.xgroup_create(s, keys.CONSUMER_GROUP, id="0", mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise
        self._lanes = lanes

    def _hold(self, entry: Entry) -> None:
        """Hold an entry from the moment it is ours: track it (so it is renewed) and run it."""
        if entry.key in self._held:  # already running here: a claim must not start it twice
            return
        self._held[entry.key] = self._background(self._handle(entry))

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
            event, record = await self._run(job, entry.claimed)
            if record is not None and record.status == ExecutionStatus.DEAD_LETTERED:
                reason = record.error.message if record.error else "dead-lettered"
                await self._park(entry, reason, record.deliveries)
                if event is not None:
                    await self.store.publish(event)
            else:
                await self._ack(entry, event)  # and announced, in the same round trip
            self._release(entry)  # acknowledged: no longer ours to renew
            self._failures.pop(entry.key, None)
        except asyncio.CancelledError:
            raise
        except Exception:  # stays pending: taken up again after a backoff, one more delivery
            n = self._failures.get(entry.key, (0, 0.0))[0] + 1
            backoff = min(60.0, self.cfg.heartbeat_s * 2**n)
            self._failures[entry.key] = (n, time.monotonic() + backoff)
            log.exception("job %s failed in the dispatcher (try %d)", entry.entry_id, n)
        finally:
            self._release(entry)

    def _release(self, entry: Entry) -> None:
        if self._held.pop(entry.key, None) is not None:
            self._freed.set()

    async def _run(self, job: Job, claimed: bool) -> tuple[Event | None, ExecutionRecord | None]:
        """drive → finish: how it ended, and the record as finished; no event when there
        is nothing to run (it has ended: cancelled while queued).

        A first delivery starts from the record its job describes, with no read;
        the driver marks it running once a step can run, a write refused if a
        cancel ended it first. A delivery taken over reads the record back, for
        the steps it finished.
        """
        logs.set_execution(job.execution_id)  # this job's asyncio task only: its lines name it
        log.debug("execution %s taken up (claimed: %s)", job.execution_id, claimed)
        if not claimed:
            metrics.job_taken(job)
        record = await self.store.load(job.execution_id) if claimed else job.queued()
        if record is None or record.status.terminal:
            return None, None
        began, first = time.time(), record.started_at is None
        try:
            document = await self.store.input_of(job)
        except NotFoundError:  # pruned, or deleted by hand: it will not come back
            gone = f"its input {job.input_ref} is no longer in the object store"
            verdict = Verdict(ExecutionStatus.FAILED, ErrorInfo(type="InputError", message=gone))
        else:
            try:
                verdict = await self.driver.run(job.plan, document, record)
            except EndedElsewhere:  # cancelled while it waited for a replica
                metrics.execution_ended(job.kind, job.target, ExecutionStatus.CANCELLED)
                return None, None
        if first and record.started_at is not None:
            metrics.execution_started(record)
        event = lifecycle.finish(record, verdict, time.time())
        await self.store.finish(record, kept_outputs=job.plan.keep_outputs)
        metrics.execution_finished(record, since=began)
        _log_end(record)
        return event.carrying(record), record  # the waiting client need not read it back

    async def _ack(self, entry: Entry, event: Event | None = None) -> None:
        """Acknowledge an entry and delete it: its record holds all it carried, so
        the stream keeps only the jobs not yet done (Redis does not grow with history).
        The event saying how the job ended goes out in the same round trip, with
        those of every job acknowledged at the same moment."""
        await self._acks((entry, event))

    async def _ack_all(self, batch: list[tuple[Entry, Event | None]]) -> list[None]:
        async def ack_and_delete() -> None:
            pipe = self.redis.pipeline(transaction=True)
            for entry, event in batch:
                pipe.xack(entry.stream, keys.CONSUMER_GROUP, entry.entry_id)
                pipe.xdel(entry.stream, entry.entry_id)
                if event is not None:
                    pipe.publish(keys.events(event.execution_id), event.encode())
            await pipe.execute()

        await persist(ack_and_delete, f"acknowledging {len(batch)} entries", log)
        return [None] * len(batch)

    # leases and recovery -------------------------------------------------------
    async def _renew(self) -> None:
        """Reset the idle time of every entry held here (it does not count a delivery).

        Only entries this dispatcher still owns are renewed (one script per
        stream: check the owner, then claim). One taken over by another (this
        one was thought dead) is theirs now: its run here stops.
        """
        for stream, ids in _by_stream(self._held):
            lost = await self._renew_mine(
                keys=[stream], args=[keys.CONSUMER_GROUP, self.consumer, *ids]
            )
            for entry_id in map(_text, lost):
                task = self._held.pop((stream, entry_id), None)
                if task is not None:
                    log.warning("entry %s was taken over by another dispatcher", entry_id)
                    task.cancel()

    async def _take_over(self) -> None:
        """Take up pending entries nobody runs: our own from before a restart (or that
        failed here), and those of dispatchers found dead (then forget those consumers)."""
        async with self._taking:
            if time.monotonic() - self._last_round > 3 * self.cfg.heartbeat_s:
                self._missing_since.clear()  # an outage: who is dead must be seen afresh
            self._owed = False
            for stream in list(self._lanes):
                consumers = await self.control.xinfo_consumers(stream, keys.CONSUMER_GROUP)
                for consumer in consumers:
                    name = _text(consumer["name"])
                    try:
                        await self._take_from(stream, name, consumer["pending"])
                    except Exception as e:  # noqa: BLE001 - one consumer must not stop the round
                        log.warning("taking over from %s failed: %s: %s", name, type(e).__name__, e)
            self._last_round = time.monotonic()

    async def _take_from(self, stream: str, name: str, pending: int) -> None:
        if name != self.consumer and not await self._dead(name):
            return
        if pending:
            await self._claim_pending(stream, name)
        elif name != self.consumer:
            # XGROUP DELCONSUMER drops a consumer's pending entries: only an empty one goes.
            await self.control.xgroup_delconsumer(stream, keys.CONSUMER_GROUP, name)
            self._missing_since.pop(name, None)
            log.info("removed dead consumer %s of %s", name, stream)

    async def _dead(self, consumer: str) -> bool:
        """No heartbeat, and none for two more of our beats."""
        if await self.control.exists(keys.dispatcher_alive(consumer)):
            self._missing_since.pop(consumer, None)
            return False
        first = self._missing_since.setdefault(consumer, time.monotonic())
        return time.monotonic() - first >= 2 * self.cfg.heartbeat_s

    async def _claim_pending(self, stream: str, owner: str) -> None:
        if self._room <= 0:
            self._owed = True
            return
        pending = await self.control.xpending_range(
            stream, keys.CONSUMER_GROUP, min="-", max="+", count=self._room, consumername=owner
        )
        now = time.monotonic()
        ids = [
            p["message_id"]
            for p in pending
            if (key := (stream, _text(p["message_id"]))) not in self._held
            and self._failures.get(key, (0, 0.0))[1] <= now  # backing off after a failure here
        ]
        if not ids:
            return
        # A minimum idle time (a live owner renews every beat): of two dispatchers
        # taking over at once, one wins each entry.
        min_idle = 0 if owner == self.consumer else int(self.cfg.heartbeat_s * 1000)
        claimed = await self.control.xclaim(
            stream, keys.CONSUMER_GROUP, self.consumer, min_idle, ids
        )
        if claimed:
            log.warning("took up %d pending entries of %s on %s", len(claimed), owner, stream)
        delivered = {_text(p["message_id"]): p["times_delivered"] + 1 for p in pending}
        await self._take(stream, claimed, delivered)

    async def _take(self, stream: str, claimed: list, delivered: dict[str, int]) -> None:
        for entry_id, fields in claimed:
            if fields is None:  # deleted from the stream meanwhile
                continue
            entry = Entry(stream, _text(entry_id), fields, claimed=True)
            if delivered.get(entry.entry_id, 0) > self.cfg.max_deliveries:
                reason = f"delivered over {self.cfg.max_deliveries} times without finishing"
                try:
                    await self._dead_letter(entry, reason, delivered.get(entry.entry_id))
                except Exception:  # the next entry still gets its turn
                    log.exception("dead-lettering %s failed", entry.entry_id)
                continue
            self._hold(entry)

    async def _dead_letter(self, entry: Entry, reason: str, deliveries: int | None = None) -> None:
        """Move an entry to the dead-letter stream, its execution (if readable) recorded so."""
        job = _decode(entry)
        try:
            record = await self.store.load(job.execution_id) if job else None
        except ValueError:  # a record this version cannot read: the entry goes anyway
            record = None
        event = None
        if job is not None and record is not None and not record.status.terminal:
            event = lifecycle.dead_letter(record, reason, time.time())
            await self.store.finish(record, kept_outputs=job.plan.keep_outputs)
            metrics.execution_ended(record.kind, record.target, record.status)
        self._failures.pop(entry.key, None)
        await self._park(entry, reason, deliveries)
        if event is not None:
            await self.store.publish(event)

    async def _park(self, entry: Entry, reason: str, deliveries: int | None) -> None:
        """Copy an entry to the dead-letter stream with why, then acknowledge it."""
        fields = {**entry.fields, "stream": entry.stream, "reason": reason}
        if deliveries is not None:
            fields["deliveries"] = deliveries
        await persist(lambda: self.redis.xadd(keys.DEAD_LETTERS, fields), "dead-lettering", log)
        await self._ack(entry)


CONTROL_TIMEOUT_S = 5.0  # a heartbeat or renewal that gets no answer fails (and is retried)

# Renew the entries this consumer still owns; return those it no longer does.
# KEYS[1] stream; ARGV: group, consumer, ids...
_RENEW_MINE = """
local lost = {}
for i = 3, #ARGV do
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
    if p[1] and p[1][2] == ARGV[2] then
        redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    else
        table.insert(lost, ARGV[i])
    end
end
return lost
"""


def _by_stream(held: dict[tuple[str, str], Any]) -> Iterator[tuple[str, list[str]]]:
    streams: dict[str, list[str]] = {}
    for stream, entry_id in list(held):
        streams.setdefault(stream, []).append(entry_id)
    yield from streams.items()


def _log_end(record: ExecutionRecord) -> None:
    """One line per execution that did not succeed; a success only at DEBUG (the hot path)."""
    if record.status == ExecutionStatus.SUCCEEDED:
        log.debug("execution %s succeeded in %.3fs", record.execution_id, record.duration or 0)
        return
    error = f": {record.error.type}: {record.error.message}" if record.error else ""
    log.info("execution %s %s%s", record.execution_id, record.status.value, error)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode(entry: Entry) -> Job | None:
    """The entry's job, or None if it cannot be read (corrupt, or written by another version)."""
    try:
        return Job.decode(entry.fields)
    except (ValueError, TypeError):  # pydantic's ValidationError is a ValueError
        log.error("entry %s of %s cannot be read as a job", entry.entry_id, entry.stream)
        return None


class DispatcherActor(Dispatcher):
    """The dispatcher as a Ray actor: it starts its own loops, so one that Ray
    restarts after its process died serves again with no one asking."""

    def __init__(self, settings: Settings, name: str):
        logs.configure_actor(settings, name)
        super().__init__(settings, name)
        actors.start_itself()


def deploy(settings: Settings, replace: bool = True) -> list[str]:
    """Start the configured number of dispatchers; returns their names.

    Idempotent: a running dispatcher is kept, unless ``replace`` and it runs
    with other settings (then it is replaced; its entries are taken up by the
    new one, which has its name).
    """
    return [
        deploy_one(settings, keys.dispatcher_name(n), replace)
        for n in range(settings.dispatcher.count)
    ]


def deploy_one(settings: Settings, name: str, replace: bool = True) -> str:
    """Start one named dispatcher with these settings (see :func:`deploy`)."""
    actors.deploy(DispatcherActor, name, settings, (settings, name), replace)
    return name
