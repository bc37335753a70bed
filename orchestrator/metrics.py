"""The system's own metrics, served by Ray's Prometheus endpoint on every node.

Every series is defined here (:data:`ALL`). Ray's exporter puts ``ray_`` before
each name, and ``_total`` after a counter's: :attr:`Series.exported` is the
name Prometheus sees.

Who records what: the dispatcher counts an execution as submitted when it
first takes the job from its stream (the client is not a Ray process; a
redelivery is not counted again), its queue wait at its first start, and its
end, with each step that ran in that delivery; its jobs held with each
heartbeat. The controller samples the queues, the dead letters and its
replica sets with each heartbeat (one Redis pipeline, never per job).

Metrics are created on first use, and only in a Ray process (worker or
driver): elsewhere (the CLI, the client, a dispatcher run in process by a
test) every function here does nothing. Recording is a local call into Ray's
core worker, no I/O. A failure to record is logged once and never reaches a job.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec

from orchestrator import keys
from orchestrator.models import (
    ExecutionRecord,
    ExecutionStatus,
    StepPhase,
    StepRecord,
    StepStatus,
)

if TYPE_CHECKING:
    from orchestrator.intake import Job

log = logging.getLogger("wtm.metrics")

P = ParamSpec("P")


@dataclass(frozen=True)
class Series:
    """One metric: its name as recorded, its type, what it counts, its labels."""

    name: str
    type: Literal["counter", "histogram", "gauge"]
    help: str
    labels: tuple[str, ...] = ()

    @property
    def exported(self) -> str:
        """The name Prometheus sees (histograms add ``_bucket``, ``_count``, ``_sum``)."""
        return f"ray_{self.name}" + ("_total" if self.type == "counter" else "")


SUBMITTED = Series(
    "wtm_executions_submitted",
    "counter",
    "Executions a dispatcher took from their stream for the first time.",
    ("kind", "target"),
)
FINISHED = Series(
    "wtm_executions_finished",
    "counter",
    "Executions that ended, by status: succeeded, failed, cancelled, dead_lettered "
    "(one cancelled while queued counts when a dispatcher finds it ended).",
    ("kind", "target", "status"),
)
QUEUE_WAIT = Series(
    "wtm_queue_wait_seconds",
    "histogram",
    "Time from submission to an execution's first start.",
    ("kind", "target"),
)
STEP = Series(
    "wtm_step_seconds",
    "histogram",
    "Time a step took, from its first call's start to its end, retries included "
    "(steps that ran: not those skipped, nor those a resumed execution reused).",
    ("task", "status"),
)
CACHE_HITS = Series("wtm_cache_hits", "counter", "Steps answered from the step cache.", ("task",))
STEP_WAIT = Series(
    "wtm_step_wait_seconds",
    "histogram",
    "Time steps spent before running, by phase: queued (in the stream or behind their "
    "dependencies' dispatcher), placing, starting, loading (their replica), busy (every "
    "slot taken).",
    ("task", "phase"),
)
REPLICA_EVENTS = Series(
    "wtm_replica_events",
    "counter",
    "Replicas started and stopped, by why: demand, plan, warm, min, pinned, replace; "
    "idle, room, died, hung, cancelled, memory, code, stopped, failed.",
    ("task", "event", "reason"),
)
IN_FLIGHT = Series("wtm_dispatcher_in_flight", "gauge", "Jobs a dispatcher holds.", ("dispatcher",))
DEPTH = Series("wtm_queue_depth", "gauge", "Jobs no dispatcher has read yet.", ("queue", "lane"))
PENDING = Series(
    "wtm_queue_pending",
    "gauge",
    "Jobs read by a dispatcher and not yet acknowledged (running).",
    ("queue", "lane"),
)
DEAD_LETTERS = Series("wtm_dead_letters", "gauge", "Entries in the dead-letter stream.")
REPLICAS = Series(
    "wtm_replicas",
    "gauge",
    "Replicas of a task version, by state: ready, starting, draining.",
    ("task", "version", "state"),
)
ALL = (
    SUBMITTED,
    FINISHED,
    QUEUE_WAIT,
    STEP,
    CACHE_HITS,
    STEP_WAIT,
    REPLICA_EVENTS,
    IN_FLIGHT,
    DEPTH,
    PENDING,
    DEAD_LETTERS,
    REPLICAS,
)

#: Histogram buckets (seconds), from a cache hit to a long model run.
SECONDS_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900]
REPLICA_STATES = ("ready", "starting", "draining")
ENDPOINTS_READ_S = 30.0  # how often the controller reads the nodes' metrics ports again

_Metrics = dict[str, Any]  # Series.name -> its ray.util.metrics object


def _create() -> _Metrics:
    from ray.util.metrics import Counter, Gauge, Histogram

    made: _Metrics = {}
    for s in ALL:
        if s.type == "histogram":
            made[s.name] = Histogram(s.name, s.help, SECONDS_BUCKETS, s.labels)
        else:
            made[s.name] = (Counter if s.type == "counter" else Gauge)(s.name, s.help, s.labels)
    return made


_metrics: _Metrics | None = None
_creating = threading.Lock()
_warned = False


def _get() -> _Metrics | None:
    """The metrics, created on first use; None outside a Ray process (or once it
    disconnected: a driver that called ``ray.shutdown``)."""
    global _metrics
    import ray

    if not ray.is_initialized():
        return None
    if _metrics is None:
        with _creating:
            if _metrics is None:
                _metrics = _create()
    return _metrics


def _recording(fn: Callable[Concatenate[_Metrics, P], None]) -> Callable[P, None]:
    """Run ``fn`` with the metrics in a Ray process, nothing elsewhere; never raise."""

    @functools.wraps(fn)
    def record(*args: P.args, **kwargs: P.kwargs) -> None:
        global _warned
        try:
            m = _get()
            if m is not None:
                fn(m, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - a metric must never fail a job
            if not _warned:
                _warned = True
                log.warning("recording metrics failed: %s: %s", type(e).__name__, e)

    return record


# the dispatcher ------------------------------------------------------------------
@_recording
def job_taken(m: _Metrics, job: Job) -> None:
    """A dispatcher took a job from its stream for the first time."""
    m[SUBMITTED.name].inc(tags={"kind": job.kind, "target": job.target})


@_recording
def execution_started(m: _Metrics, record: ExecutionRecord) -> None:
    """An execution started for the first time: how long it waited in its queue."""
    if record.queue_wait is not None:
        tags = {"kind": record.kind, "target": record.target}
        m[QUEUE_WAIT.name].observe(max(record.queue_wait, 0.0), tags=tags)


@_recording
def execution_ended(m: _Metrics, kind: str, target: str, status: ExecutionStatus) -> None:
    """An execution reached a terminal status."""
    m[FINISHED.name].inc(tags={"kind": kind, "target": target, "status": status.value})


def execution_finished(record: ExecutionRecord, since: float) -> None:
    """A dispatcher finished running an execution it started at ``since``: its status,
    and each step that ended in this run."""
    execution_ended(record.kind, record.target, record.status)
    steps_ended(record, since)


@_recording
def steps_ended(m: _Metrics, record: ExecutionRecord, since: float) -> None:
    """Each step of the execution that ended since ``since``: its time, and whether
    the cache answered it."""
    for step in record.steps:
        ran = step.status in (StepStatus.SUCCEEDED, StepStatus.FAILED)
        if not ran or step.duration is None or (step.finished_at or 0.0) < since:
            continue  # skipped, or finished by an earlier delivery
        tags = {"task": step.task_id, "status": step.status.value}
        m[STEP.name].observe(max(step.duration, 0.0), tags=tags)
        if step.cache_hit:
            m[CACHE_HITS.name].inc(tags={"task": step.task_id})
        _waits(m, step, since)


def _waits(m: _Metrics, step: StepRecord, since: float) -> None:
    """Each phase the step spent before running (in this delivery), by its name."""
    marks = step.phases
    for mark, after in itertools.pairwise(marks):
        waited = mark.phase == StepPhase.QUEUED or mark.phase.waiting
        if waited and after.at >= since:
            tags = {"task": step.task_id, "phase": mark.phase.value}
            m[STEP_WAIT.name].observe(max(after.at - mark.at, 0.0), tags=tags)


@_recording
def dispatcher_in_flight(m: _Metrics, dispatcher: str, jobs: int) -> None:
    """The jobs a dispatcher holds now."""
    m[IN_FLIGHT.name].set(jobs, tags={"dispatcher": dispatcher})


# the controller ------------------------------------------------------------------
@_recording
def replica_event(m: _Metrics, task_id: str, event: str, reason: str) -> None:
    """A replica of the task started or stopped, and why (one of the kinds in its help)."""
    m[REPLICA_EVENTS.name].inc(tags={"task": task_id, "event": event, "reason": reason})


ReplicaCounts = tuple[str, str, dict[str, int]]  # task, version, {state: replicas}


class ControlSampler:
    """What the controller samples on each heartbeat: queues, dead letters and
    replica sets; and where the cluster's nodes serve their metrics."""

    def __init__(self, redis: Any):
        self.redis = redis
        self._shown: set[tuple[str, str]] = set()  # replica sets with a series
        self._endpoints: list[str] = []
        self._endpoints_at = -ENDPOINTS_READ_S
        self._failing = False  # said once until it works again

    async def sample(self, sets: Iterable[ReplicaCounts]) -> None:
        """Set the controller's gauges (nothing outside a Ray process); never raises."""
        m = _get()
        if m is None:
            return
        try:
            self._replicas(m, list(sets))
            await self._queues(m)
        except Exception as e:  # noqa: BLE001 - Redis restarting, say: next beat
            if not self._failing:
                log.warning("sampling the queues failed: %s: %s", type(e).__name__, e)
            self._failing = True
        else:
            self._failing = False

    def _replicas(self, m: _Metrics, sets: list[ReplicaCounts]) -> None:
        now = {(task, version) for task, version, _ in sets}
        gone = [(task, version, {}) for task, version in self._shown - now]
        for task, version, counts in [*sets, *gone]:  # a set gone reads 0, not its last value
            for state in REPLICA_STATES:
                tags = {"task": task, "version": version, "state": state}
                m[REPLICAS.name].set(counts.get(state, 0), tags=tags)
        self._shown = now

    async def _queues(self, m: _Metrics) -> None:
        """Each lane's depth and pending count, and the dead letters, in one round trip."""
        queues = sorted(_text(q) for q in await self.redis.smembers(keys.QUEUES_SET))
        lanes = [(q, lane) for q in queues for lane in keys.LANES]
        pipe = self.redis.pipeline(transaction=False)
        for q, lane in lanes:
            pipe.xlen(keys.stream(q, lane))
            pipe.xpending(keys.stream(q, lane), keys.CONSUMER_GROUP)
        pipe.xlen(keys.DEAD_LETTERS)
        replies = await pipe.execute(raise_on_error=False)
        for i, (q, lane) in enumerate(lanes):
            length, pending = replies[2 * i], replies[2 * i + 1]
            held = pending.get("pending", 0) if isinstance(pending, dict) else 0  # no group yet
            length = length if isinstance(length, int) else 0
            tags = {"queue": q, "lane": lane}
            m[DEPTH.name].set(max(length - held, 0), tags=tags)
            m[PENDING.name].set(held, tags=tags)
        if isinstance(replies[-1], int):
            m[DEAD_LETTERS.name].set(replies[-1])

    async def endpoints(self) -> list[str]:
        """The metrics URL of every live node (read again every ``ENDPOINTS_READ_S``)."""
        if time.monotonic() - self._endpoints_at > ENDPOINTS_READ_S:
            self._endpoints_at = time.monotonic()
            try:
                self._endpoints = await asyncio.to_thread(node_endpoints)
            except Exception as e:  # noqa: BLE001 - the GCS restarting: the last ones stand
                log.warning("reading the nodes' metrics ports failed: %s", e)
        return self._endpoints


def node_endpoints() -> list[str]:
    """Where each live node of the connected cluster serves its metrics (Ray's node table)."""
    import ray

    return sorted(
        endpoint(n["NodeManagerAddress"], n["MetricsExportPort"])
        for n in ray.nodes()
        if n.get("Alive") and n.get("MetricsExportPort")
    )


def endpoint(host: str, port: int) -> str:
    """The URL Prometheus scrapes on one node."""
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
