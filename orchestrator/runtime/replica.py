"""A replica: one named detached Ray actor that loaded its task once.

The replica never raises into Ray: every call returns an
:class:`~orchestrator.runtime.calls.Outcome`, so the dispatcher sees the
task's own error type and whether it is retryable, without unpickling user
exception classes.

Limits are kept here, where the call runs, so any number of dispatchers can
share a replica: Ray runs at most ``calls_at_once`` calls of it at a time (the
rest wait in Ray's queue), and a step's timeout counts from the moment its
call starts here, not from when a dispatcher sent it. The task body runs in a
thread of its own; a call that outlives its timeout is answered with a
timeout, flagged ``hung``, and the replica is replaced (a thread cannot be
interrupted). The same holds for memory: while a call runs, the replica's
resident memory is sampled; its peak is the step's ``memory_usage``, and
passing the task's ``resources.memory`` fails the call with
:class:`~orchestrator.errors.MemoryLimitExceeded` and has the replica replaced.

Task code runs in this process, so it holds only what a task needs: its
package, the object store, and settings without the records', Redis's or Ray's
credentials (:func:`orchestrator.secrets.for_replicas`). Its heartbeats go to
the controller, which writes its worker record (see SECURITY.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import psutil
import ray

from orchestrator import keys, logs
from orchestrator.errors import (
    MemoryLimitExceeded,
    ReplicaUnavailable,
    TaskTimeoutError,
)
from orchestrator.models import TaskRecord, WorkerRecord, WorkerState
from orchestrator.objects import open_objects
from orchestrator.pipelines.mapping import step_input
from orchestrator.policy import classify
from orchestrator.runner import TaskRunner
from orchestrator.runtime import cache
from orchestrator.runtime.batching import Batcher
from orchestrator.runtime.calls import Outcome, StepCall, failure
from orchestrator.settings import Settings


@dataclass
class _Stats:
    in_flight: int = 0
    processed: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)


class Replica:
    """Holds one task version loaded; serves ``call`` until killed."""

    def __init__(self, settings: Settings, record: TaskRecord, worker_id: str):
        # Before the task loads: what its setup and every call log (self.logger.info
        # included) goes to this replica's file, at the configured level.
        logs.configure_actor(settings, worker_id)
        self.worker_id = worker_id
        self.record = record
        self.node = _node_id()
        self.heartbeat_s = settings.controller.heartbeat_s
        self.started_at = time.time()
        self.memory_limit = record.spec.resources.memory or None  # resident memory; 0: none
        self._over_limit = False  # passed it once: being replaced, takes no more calls
        # No records store here: task code runs in this process, and the controller
        # writes this replica's worker record from the heartbeats it is sent.
        self._reporter = _Reporter(settings.ray.namespace)
        self._stats = _Stats()
        self._lock = threading.Lock()
        # Task bodies run here, so a call can stop waiting for one at its timeout.
        self._bodies = ThreadPoolExecutor(record.spec.calls_at_once + 2, "wtm-task")
        self._flights: dict[str, Future] = {}  # call_key -> the body running for it
        self._objects = open_objects(settings)
        self._package_cache = settings.package_cache
        self.runner: TaskRunner | None = None
        self.load_error: Exception | None = None
        self._batcher: Batcher | None = None
        self._loaded = threading.Event()
        self._loading = threading.Lock()
        threading.Thread(target=self._heartbeat_loop, daemon=True).start()

    def load(self) -> str:
        """Load the task and its model, once; returns the replica's name.

        The controller calls this right after starting the replica, rather than
        the constructor loading it: Ray's placement of the actor ends with its
        constructor, so what placing it took (a CPU, for a task that names no
        ``num_cpus``) is free again while the model loads, and replicas of
        several tasks load side by side. A load that fails is reported on every
        call instead.
        """
        with self._loading:
            if not self._loaded.is_set():
                self._beat(WorkerState.LOADING)
                self._load()
                self._loaded.set()
                self._beat(WorkerState.BROKEN if self.load_error else WorkerState.IDLE)
        return self.worker_id

    def _load(self) -> None:
        try:
            self.runner = TaskRunner.load(self.record, self._objects, self._package_cache)
            self.runner.task.ensure_ready()  # the model loads here, once
            batch = self.record.spec.batch
            if batch and self.runner.task.batches:
                self._batcher = Batcher(self.runner.run_batch, batch.max_size, batch.wait_ms / 1000)
        except Exception as e:  # noqa: BLE001 - reported on every call instead
            self.load_error = e

    def call(self, input_data: Any) -> Outcome:
        """Run the task on one input."""
        started = time.time()
        if not self._loaded.is_set():  # adopted while it loaded: the load finishes first
            self.load()
        if self.runner is None:
            outcome = self._failed(started, self.load_error, retryable=False)
            outcome.broken = True
            return outcome
        with self._lock:
            self._stats.in_flight += 1
        try:
            result = self._batcher.submit(input_data) if self._batcher else self.runner(input_data)
            outcome = Outcome(True, self.worker_id, self.node, started, time.time(), result)
            outcome.memory = _rss()
        except BaseException as e:  # noqa: BLE001 - reported, never raised into Ray
            outcome = self._failed(started, e, retryable=classify(e))
        with self._lock:
            self._stats.in_flight -= 1
            self._stats.processed += 1
            self._stats.failed += 0 if outcome.ok else 1
            self._stats.latencies = [*self._stats.latencies[-999:], outcome.finished_at - started]
        return outcome

    @ray.method(num_returns=2)
    def run_step(self, step: StepCall, pipeline_input: Any, *upstream: Any) -> tuple[Outcome, Any]:
        """One pipeline step. Returns (outcome without result, result) as two objects.

        Ray resolves the upstream outputs here, on this node: no step result
        passes through the dispatcher. The dispatcher awaits only the small
        outcome and hands the result's reference to the next steps.
        """
        started = time.time()
        try:
            document = step_input(
                step.input_mapping, pipeline_input, dict(zip(step.reads, upstream, strict=True))
            )
        except Exception as e:  # noqa: BLE001 - a mapping that reads nothing is fatal
            return self._failed(started, e, retryable=False), None
        key = None
        if step.cache:
            key = cache.key_of(self.record.task_id, self.record.sha256, document)
        looked = filter(None, (None if step.looked_up else key, step.keep_as))
        for written in looked:
            # A cached output, or one a redelivered step's replica finished after
            # its dispatcher died: not run again.
            found = cache.read(self._objects, written)
            if found is not None:
                data, output = found
                if step.keep_as and written == key:  # a hit is a finished step too
                    self._objects.put(keys.DATA_BUCKET, step.keep_as, data)
                return self._hit(started), output
        outcome = self._timed(step, document, started)
        result, outcome.result = outcome.result, None
        if outcome.ok and (key or step.keep_as):
            cache.write(self._objects, result, *filter(None, (key, step.keep_as)))
        return outcome, result

    def _timed(self, step: StepCall, document: Any, started: float) -> Outcome:
        """Run the body in its own thread and wait for it until the step's timeout.

        One execution's step runs once here however often it is sent: a call
        redelivered while the first still runs (its dispatcher died) joins it.
        """
        if self._over_limit:  # not this call's doing: try it on another replica
            return self._over_memory(started, _rss(), this_call=False)
        key = step.call_key
        with self._lock:
            flight = self._flights.get(key) if key else None
            if flight is None or flight.done():  # done: a retry, not a redelivery
                body = logs.bound(self.call, step.execution_id, step.step_id)
                flight = self._bodies.submit(body, document)
                if key:
                    self._flights[key] = flight
                    flight.add_done_callback(lambda _f: self._flights.pop(key, None))
        deadline = None if step.timeout is None else started + step.timeout
        # A limit is watched closely; without one the peak is only reported.
        period = MEMORY_LIMIT_SAMPLE_S if self.memory_limit is not None else MEMORY_SAMPLE_S
        peak = _rss()
        while True:  # wait for the body, watching the clock and the replica's memory
            wait = period if deadline is None else min(period, deadline - time.time())
            try:
                outcome = dataclasses.replace(flight.result(timeout=max(wait, 0)))  # a copy each
                outcome.memory = max(peak, outcome.memory or 0)
                return outcome
            except FutureTimeout:
                peak = max(peak, _rss())
            if self.memory_limit is not None and peak > self.memory_limit:
                with self._lock:  # the first call to see it gets the blame
                    first, self._over_limit = not self._over_limit, True
                return self._over_memory(started, peak, this_call=first)
            if deadline is not None and time.time() >= deadline:
                error = TaskTimeoutError(
                    f"task {self.record.task_id} exceeded its timeout of {step.timeout:g}s"
                )
                outcome = self._failed(started, error, retryable=True)
                outcome.hung, outcome.memory = True, peak
                return outcome

    def _over_memory(self, started: float, peak: int, this_call: bool) -> Outcome:
        """The call that passed the limit fails for good; calls beside it, or sent
        before the replica is gone, fail retryably (another replica runs them)."""
        limit = f"{_mb(self.memory_limit or 0)} (resources.memory)"
        if this_call:
            error: Exception = MemoryLimitExceeded(
                f"task {self.record.task_id} used {_mb(peak)}, over its memory limit of "
                f"{limit}; its replica is replaced"
            )
        else:
            error = ReplicaUnavailable(
                f"replica {self.worker_id} passed its memory limit of {limit} "
                "during another call and is being replaced"
            )
        outcome = self._failed(started, error, retryable=not this_call)
        outcome.over_memory, outcome.memory = True, peak
        return outcome

    def _hit(self, started: float) -> Outcome:
        outcome = Outcome(True, self.worker_id, self.node, started, time.time())
        outcome.cache_hit = True
        return outcome

    def _failed(self, started: float, e: BaseException, retryable: bool) -> Outcome:
        return failure(self.worker_id, started, e, retryable=retryable, node=self.node)

    @ray.method(concurrency_group="control")
    def stats(self) -> dict[str, Any]:
        """Counters for `wtm worker status` and tests: loads, processed, ..."""
        return self._worker_record().model_dump()

    @ray.method(concurrency_group="control")
    def ping(self) -> str:
        return self.worker_id

    def _worker_record(self, state: WorkerState | None = None) -> WorkerRecord:
        with self._lock:
            s = self._stats
            lat = s.latencies
            return WorkerRecord(
                worker_id=self.worker_id,
                task_id=self.record.task_id,
                version=self.record.version,
                node=self.node,
                pid=os.getpid(),
                state=state or self._state(),
                in_flight=s.in_flight,
                processed=s.processed,
                failed=s.failed,
                loads=self.runner.load_count if getattr(self, "runner", None) else 0,
                mean_latency=sum(lat) / len(lat) if lat else None,
                p50_latency=statistics.median(lat) if lat else None,
                memory=_rss(),
                started_at=self.started_at,
                heartbeat_at=time.time(),
            )

    def _state(self) -> WorkerState:
        if not self._loaded.is_set():
            return WorkerState.LOADING
        if self.load_error is not None:
            return WorkerState.BROKEN
        return WorkerState.BUSY if self._stats.in_flight else WorkerState.IDLE

    def _beat(self, state: WorkerState | None = None) -> None:
        # A missed heartbeat must never kill the replica.
        with contextlib.suppress(Exception):
            self._reporter.send(self._worker_record(state))

    def _heartbeat_loop(self) -> None:
        while True:
            time.sleep(self.heartbeat_s)
            self._beat()


class _Reporter:
    """Sends a replica's heartbeats (its worker record) to the controller, which
    writes them: the replica holds no credential of the records store.

    The controller is found by name, again after it was replaced; a beat lost
    on the way is made up by the next.
    """

    def __init__(self, namespace: str):
        self.namespace = namespace
        self._controller: Any = None
        self._last: Any = None  # the previous beat's reference: tells a dead handle

    def send(self, record: WorkerRecord) -> None:
        last, self._last = self._last, None
        if last is not None and ray.wait([last], timeout=0)[0]:
            try:
                ray.get(last)
            except ray.exceptions.RayActorError:  # replaced: look it up again
                self._controller = None
            except Exception:  # noqa: BLE001 - that beat is lost; this one goes
                pass
        if self._controller is None:
            self._controller = ray.get_actor(keys.CONTROLLER, namespace=self.namespace)
        self._last = self._controller.worker_beat.remote(record.model_dump(mode="json"))


MEMORY_LIMIT_SAMPLE_S = 0.05  # a call of a task with a memory limit samples this often
MEMORY_SAMPLE_S = 0.5  # a call without one samples this often (for its memory_usage)


def _rss() -> int:
    """This process's resident memory, in bytes: one read of ``/proc/self/statm``
    (a few microseconds; psutil where there is no /proc)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except OSError:
        return psutil.Process().memory_info().rss


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB"


def _node_id() -> str:
    """The Ray node this replica runs on (short id), as the dashboard shows it."""
    try:
        return ray.get_runtime_context().get_node_id()[:12]
    except Exception:  # noqa: BLE001 - outside Ray (tests of the class itself)
        return "local"
