"""Job handles: what ``Client.submit`` and ``Client.map`` return.

A :class:`Job` names one execution and reads its record on demand; it waits
on the execution's event channel (the terminal event carries the record), so
``job.result()`` costs one subscription, not a polling loop. :func:`finished`
waits on many at once over one connection, for ``as_completed`` and ``gather``.

    job = client.submit("face_detection", {"image_path": "astronaut.jpg"})
    job.result()["face_count"]
    for job in client.as_completed(client.map("face_detection", photos)):
        print(job.id, job.status)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import redis

from orchestrator import display, keys
from orchestrator.errors import ExecutionFailed, WaitTimeout
from orchestrator.lifecycle import Event
from orchestrator.models import ExecutionRecord, ExecutionStatus

if TYPE_CHECKING:
    from orchestrator.client import Client


class Job:
    """A handle on one execution: its status, result, steps and events."""

    def __init__(self, client: Client, execution_id: str, target: str | None = None):
        self.client = client
        self.id = execution_id
        self.target = target
        self._ended: ExecutionRecord | None = None  # an ended record does not change

    # state -------------------------------------------------------------------
    @property
    def record(self) -> ExecutionRecord:
        """The execution record as it is now."""
        if self._ended is not None:
            return self._ended
        return self._keep(self.client.execution(self.id))

    @property
    def status(self) -> ExecutionStatus:
        return self.record.status

    @property
    def steps(self) -> Steps:
        return Steps(self.record.steps)

    def done(self) -> bool:
        return self.status.terminal

    def _keep(self, record: ExecutionRecord) -> ExecutionRecord:
        if record.status.terminal:
            self._ended = record
            self.target = record.target
        return record

    # waiting -----------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> ExecutionRecord:
        """The ended record; :class:`~orchestrator.errors.WaitTimeout` (a
        ``TimeoutError``) if it has not ended within ``timeout`` seconds."""
        if self._ended is None:
            self._keep(self.client.wait(self.id, timeout))
        assert self._ended is not None
        return self._ended

    def result(self, timeout: float | None = None) -> Any:
        """The output document, once the execution succeeds.

        Raises :class:`~orchestrator.errors.ExecutionFailed` (carrying the
        record) if it failed, was cancelled or dead-lettered, and ``TimeoutError``
        if it has not ended within ``timeout``. Arrays, bytes and results kept
        in the object store come back in place.
        """
        record = self.wait(timeout)
        if record.status != ExecutionStatus.SUCCEEDED:
            raise ExecutionFailed(record)
        return self.client.result_of(record)

    def cancel(self) -> ExecutionRecord:
        return self.client.cancel(self.id)

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Live events of the execution and its steps, ending with the terminal one.

        The first event is the execution's state when the iterator starts;
        ``timeout`` bounds the whole iteration (then ``TimeoutError``).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with _Channels(self.client, [self.id]) as channels:
            record = self.client.execution(self.id)  # after subscribing: nothing slips by
            last = record.status
            yield _event_of(record)
            while not last.terminal:
                wait = _left(deadline, self.client.settings.client.poll_s, record)
                event = channels.next_event(wait)
                if event is None:  # quiet: read the record, in case an event was lost
                    record = self.client.execution(self.id)
                    if record.status != last:
                        event = _event_of(record)
                if event is not None and event.step_id is None:
                    last = event.status
                if event is not None:
                    yield event
            self._keep(self.client.execution(self.id))

    def __await__(self):
        """``await job``: the result, without blocking the event loop."""
        return asyncio.get_running_loop().run_in_executor(None, self.result).__await__()

    # pictures ----------------------------------------------------------------
    def timeline(self, ax: Any = None) -> Any:
        """A matplotlib Gantt chart of the steps, the critical path outlined."""
        record = self.record
        return display.timeline(record, self.client.step_dependencies(record), ax)

    def __repr__(self) -> str:
        record = self._ended
        state = ""
        if record is not None:
            took = f" in {record.duration:.3f}s" if record.duration is not None else ""
            state = f"{record.status}{took}"
        return f"<Job {self.id} {self.target or ''}{': ' + state if state else ''}>"

    def __str__(self) -> str:
        return self.id

    def _repr_html_(self) -> str:
        return display.record_html(self.record)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)


class Steps(list):
    """An execution's steps, shown as a table in a notebook."""

    def _repr_html_(self) -> str:
        return display.steps_html(self)


class Executions(list):
    """A list of execution records: a table in a notebook, rows for analysis."""

    def _repr_html_(self) -> str:
        return display.executions_html(self)

    def to_dict(self) -> list[dict[str, Any]]:
        """One flat row per execution (datetimes, not floats; no input or result)."""
        return [
            {
                "execution_id": r.execution_id,
                "kind": r.kind,
                "target": r.target,
                "version": r.version,
                "status": r.status.value,
                "submitted": r.submitted,
                "started": r.started,
                "finished": r.finished,
                "queue_wait": r.queue_wait,
                "duration": r.duration,
                "attempts": r.attempts,
                "steps": len(r.steps),
                "error": f"{r.error.type}: {r.error.message}" if r.error else None,
            }
            for r in self
        ]

    def to_pandas(self) -> Any:
        """A pandas DataFrame of :meth:`to_dict` (pandas is optional)."""
        try:
            import pandas as pd
        except ImportError as e:
            raise ImportError("to_pandas needs pandas: pip install pandas") from e
        return pd.DataFrame(self.to_dict())


def finished(client: Client, jobs: Iterable[Job], timeout: float | None = None) -> Iterator[Job]:
    """Each job once, as it ends (those already ended first).

    One pub/sub connection listens to every job's channel; the records of
    those not yet ended are read again every ``client.poll_s`` when no event
    comes, so a lost event (Redis restarted) only delays a job, never loses it.
    """
    waiting = {job.id: job for job in jobs}
    deadline = None if timeout is None else time.monotonic() + timeout
    poll = client.settings.client.poll_s
    with _Channels(client, list(waiting)) as channels:
        checked = -poll
        while waiting:
            if time.monotonic() - checked >= poll:  # first, and when events go quiet
                for job_id in list(waiting):
                    record = client.execution(job_id)
                    if record.status.terminal:
                        job = waiting.pop(job_id)
                        job._keep(record)
                        yield job
                checked = time.monotonic()
                continue
            wait = _left(deadline, poll - (time.monotonic() - checked), None, len(waiting))
            event = channels.next_event(wait, terminal_only=True)
            if event is None or event.execution_id not in waiting:
                continue  # quiet (the records are read next), or a job already yielded
            checked = time.monotonic()  # events flow: no need to read the records
            job = waiting.pop(event.execution_id)
            job._keep(event.record or client.execution(job.id))
            yield job


def _left(deadline: float | None, wait: float, record: Any, pending: int = 1) -> float:
    """How long the next wait may be; WaitTimeout once the deadline has passed."""
    if deadline is None:
        return wait
    left = deadline - time.monotonic()
    if left <= 0:
        raise WaitTimeout(f"{pending} execution(s) still going when the timeout ran out", record)
    return min(wait, left)


def _event_of(record: ExecutionRecord) -> Event:
    at = record.finished_at or record.started_at or record.submitted_at
    return Event(execution_id=record.execution_id, status=record.status, at=at)


class _Channels:
    """One pub/sub connection subscribed to several executions' channels."""

    def __init__(self, client: Client, execution_ids: list[str]):
        self._redis = client._queue()
        self._names = {keys.events(i): i for i in execution_ids}
        self._pubsub: Any = None

    def __enter__(self) -> _Channels:
        self._subscribe()
        return self

    def _subscribe(self) -> None:
        try:
            self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            for start in range(0, len(self._names), 500):  # a bounded command each
                self._pubsub.subscribe(*list(self._names)[start : start + 500])
        except redis.RedisError:
            self._drop()  # the caller reads records until Redis answers again

    def next_event(self, seconds: float, terminal_only: bool = False) -> Event | None:
        """The next event within ``seconds`` (of an ended execution, if asked), or None."""
        if self._pubsub is None:
            time.sleep(max(seconds, 0))
            self._subscribe()
            return None
        deadline = time.monotonic() + seconds
        try:
            while (left := deadline - time.monotonic()) > 0:
                message = self._pubsub.get_message(timeout=left)
                if message is None:
                    continue
                event = Event.decode(message["data"])
                if event is None or (terminal_only and not event.status.terminal):
                    continue
                return event
        except redis.RedisError:
            self._drop()
        return None

    def _drop(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                self._pubsub.close()
        self._pubsub = None

    def __exit__(self, *exc: Any) -> None:
        self._drop()
