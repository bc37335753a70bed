"""The dispatcher on its own: a real redis-server and SQLite records, steps run in process.

Each test runs a ``Dispatcher`` on an event loop in a thread of this process,
with the in-process executor, so what is checked is the dispatcher's own work:
read, start, finish, acknowledge, publish, claim and dead-letter.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import redis

from orchestrator import dispatcher as dispatcher_module
from orchestrator import keys, lifecycle
from orchestrator.dispatcher import Dispatcher
from orchestrator.intake import Job, enqueue
from orchestrator.lifecycle import Event
from orchestrator.models import ExecutionRecord, ExecutionStatus, new_execution_id
from orchestrator.plan import Plan, PlannedStep
from orchestrator.policy import StepPolicy
from orchestrator.records import open_records
from orchestrator.runtime.driver import LocalExecutor
from orchestrator.settings import Settings
from tests.helpers import ghost_takes, private_redis, wait_until

POLICY = StepPolicy(timeout=30, retries=0, backoff_base=0, backoff_max=0)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A redis-server of this module's own: the session's dispatchers must not see its jobs."""
    with private_redis(tmp_path_factory.mktemp("dispatcher-redis")) as url:
        yield url


@pytest.fixture
def settings(tmp_path, redis_url) -> Settings:
    # Each test starts on an empty Redis, as on a home of its own: a job an earlier
    # test left on its stream would otherwise run here (a first delivery needs no record).
    redis.Redis.from_url(redis_url).flushall()
    return Settings(
        home=tmp_path,
        redis={"url": redis_url},
        dispatcher={
            "block_ms": 100,
            "heartbeat_s": 0.3,
            "max_deliveries": 2,
            "concurrency": 1,
        },
    )


class Running:
    """A dispatcher serving on its own event loop in a thread of this process."""

    def __init__(self, settings: Settings, tasks: dict, executor: LocalExecutor | None = None):
        self.executor = executor or LocalExecutor(tasks)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.dispatcher = self._call(self._start(settings))

    count = 0

    async def _start(self, settings: Settings) -> Dispatcher:
        Running.count += 1  # a consumer name of its own: no test takes up another's entries
        dispatcher = Dispatcher(settings, f"unit-{Running.count}", executor=self.executor)
        await dispatcher.start()
        return dispatcher

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self._call(self.dispatcher.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def serve(settings):
    running: list[Running] = []

    def start(tasks: dict) -> Running:
        running.append(Running(settings, tasks))
        return running[-1]

    yield start
    for r in running:
        r.close()


def prepare(settings: Settings, task_id: str, queue: str, priority: int = 5) -> Job:
    """Record a queued one-step execution; returns its job, not yet on the stream."""
    step = PlannedStep(
        step_id=task_id, task_id=task_id, version="1", package_sha256="sha", policy=POLICY
    )
    plan = Plan(kind="task", target=task_id, version="1", steps=(step,))
    execution = ExecutionRecord(
        execution_id=new_execution_id(),
        kind="task",
        task_id=task_id,
        queue=queue,
        priority=priority,
        input={"who": task_id},
        submitted_at=time.time(),
        steps=plan.pending_steps(),
    )
    open_records(settings).insert_execution(execution)
    return Job.of(execution, plan)


def send(settings: Settings, job: Job) -> str:
    """Add the job to its stream; returns the entry id."""
    return enqueue(redis.Redis.from_url(settings.redis.url), job)


def submit(settings: Settings, task_id: str, queue: str, priority: int = 5) -> tuple[str, str]:
    """Record and enqueue a one-step execution; (execution id, entry id)."""
    job = prepare(settings, task_id, queue, priority)
    return job.execution_id, send(settings, job)


def events_until_terminal(pubsub) -> list[Event]:
    events: list[Event] = []

    def terminal_seen() -> bool:
        message = pubsub.get_message(timeout=0.1)
        if message:
            events.append(Event.decode(message["data"]))
        return bool(events) and events[-1].status.terminal

    wait_until(terminal_seen, what="the terminal event")
    return events


def status(settings: Settings, execution_id: str) -> ExecutionStatus:
    return open_records(settings).get_execution(execution_id).status


def pending(settings: Settings, queue: str, lane: str = "normal") -> int:
    r = redis.Redis.from_url(settings.redis.url)
    return r.xpending(keys.stream(queue, lane), keys.CONSUMER_GROUP)["pending"]


def test_a_job_is_run_recorded_acknowledged_and_announced(settings, serve):
    serve({"echo": lambda d: {"echo": d["who"]}})
    job = prepare(settings, "echo", "q_run")
    pubsub = redis.Redis.from_url(settings.redis.url).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.events(job.execution_id))
    send(settings, job)

    events = events_until_terminal(pubsub)
    record = open_records(settings).get_execution(job.execution_id)
    assert record.status == ExecutionStatus.SUCCEEDED and record.result == {"echo": "echo"}
    assert record.queue_wait is not None and record.steps[0].attempts == 1
    assert pending(settings, "q_run") == 0  # acknowledged ...
    r = redis.Redis.from_url(settings.redis.url)
    assert r.xlen(keys.stream("q_run", "normal")) == 0  # ... and trimmed: nothing kept
    assert [e.status for e in events] == [ExecutionStatus.RUNNING, ExecutionStatus.SUCCEEDED]


def test_a_job_cancelled_while_queued_is_acknowledged_without_running(settings, serve):
    execution_id, entry = submit(settings, "never", "q_cancelled")
    records = open_records(settings)
    record = records.get_execution(execution_id)
    lifecycle.cancel(record, time.time())
    records.save_execution(record)
    running = serve({"never": lambda d: {}})

    r = redis.Redis.from_url(settings.redis.url)
    stream = keys.stream("q_cancelled", "normal")

    def delivered_and_acked() -> bool:
        groups = r.xinfo_groups(stream)
        return (
            bool(groups)
            and groups[0]["last-delivered-id"].decode() == entry
            and not (pending(settings, "q_cancelled"))
        )

    wait_until(delivered_and_acked, what="the entry to be read and acknowledged")
    assert running.executor.calls == []
    assert status(settings, execution_id) == ExecutionStatus.CANCELLED


def test_a_higher_lane_is_served_first_across_queues(settings, serve):
    # Streams are read queue by queue (a_..., then b_...): the lane, not the queue's
    # name, must decide which job runs first.
    low, _ = submit(settings, "low", "a_lanes", priority=2)
    submit(settings, "high", "b_lanes", priority=9)
    running = serve({"low": lambda d: {}, "high": lambda d: {}})  # both wait in Redis

    wait_until(lambda: status(settings, low).terminal, what="both jobs to run")
    assert [name for name, _ in running.executor.calls] == ["high", "low"]


def test_a_stream_of_high_priority_jobs_does_not_starve_a_low_one(settings, serve, monkeypatch):
    # One job at a time (concurrency 1), so the backlog waits in Redis: the high
    # lane always has a job, and only aging ever reads the low lane.
    monkeypatch.setattr(dispatcher_module, "AGING_S", 0.3)
    low, _ = submit(settings, "low", "q_aging", priority=1)
    for _ in range(60):
        submit(settings, "high", "q_aging", priority=9)

    def slow(_document):
        time.sleep(0.05)
        return {}

    running = serve({"low": lambda d: {}, "high": slow})
    wait_until(lambda: status(settings, low).terminal, timeout=60, what="the low job to run")

    order = [name for name, _ in running.executor.calls]
    assert order[0] == "high"  # the high lane goes first...
    assert order.index("low") < 30  # ...but the low job is not left behind all 60


def test_an_abandoned_job_is_claimed_and_one_delivered_too_often_dead_lettered(settings, serve):
    orphan = prepare(settings, "orphan", "q_orphan")
    ghost_takes(settings.redis.url, orphan, deliveries=1)
    poison = prepare(settings, "poison", "q_poison")
    ghost_takes(settings.redis.url, poison, deliveries=2)
    running = serve({"orphan": lambda d: {"ran": True}, "poison": lambda d: {"ran": True}})

    orphan, poison = orphan.execution_id, poison.execution_id
    wait_until(lambda: status(settings, orphan).terminal, what="the orphan to be claimed")
    wait_until(lambda: status(settings, poison).terminal, what="the poison to be dead-lettered")
    assert status(settings, orphan) == ExecutionStatus.SUCCEEDED
    record = open_records(settings).get_execution(poison)
    assert record.status == ExecutionStatus.DEAD_LETTERED
    assert "delivered over 2 times" in record.error.message
    assert [name for name, _ in running.executor.calls] == ["orphan"]  # poison never ran
    r = redis.Redis.from_url(settings.redis.url)
    dead = [Job.decode(fields).execution_id for _, fields in r.xrange(keys.DEAD_LETTERS)]
    assert poison in dead
    assert pending(settings, "q_poison") == 0 and pending(settings, "q_orphan") == 0

    def ghost_gone() -> bool:  # nothing pending and no heartbeat: removed from the group
        streams = (keys.stream("q_orphan", "normal"), keys.stream("q_poison", "normal"))
        return not any(
            c["name"] == b"ghost"
            for s in streams
            for c in r.xinfo_consumers(s, keys.CONSUMER_GROUP)
        )

    wait_until(ghost_gone, what="the dead consumer to be removed")


def test_a_job_whose_offloaded_input_is_gone_fails_once_saying_so(settings, serve):
    job = prepare(settings, "needs_input", "q_gone_input")
    gone = keys.data_uri(keys.input_document_key("0" * 64))  # never stored, or pruned
    send(settings, job.model_copy(update={"input": None, "input_ref": gone}))
    running = serve({"needs_input": lambda d: {}})

    wait_until(lambda: status(settings, job.execution_id).terminal, what="the job to end")
    record = open_records(settings).get_execution(job.execution_id)
    # Failed once, for good; no step could run, so no delivery is counted.
    assert record.status == ExecutionStatus.FAILED and record.deliveries == 0
    assert record.error.message == f"its input {gone} is no longer in the object store"
    assert running.executor.calls == []
    assert pending(settings, "q_gone_input") == 0


def test_an_unreadable_entry_goes_to_dead_letters_and_the_next_job_still_runs(settings, serve):
    r = redis.Redis.from_url(settings.redis.url)
    job = prepare(settings, "after", "q_garbage")
    r.xadd(job.stream, {"job": '{"execution_id": "E-from-an-older-version"}'})  # no plan
    send(settings, job)
    serve({"after": lambda d: {"ran": True}})

    wait_until(lambda: status(settings, job.execution_id).terminal, what="the readable job")
    assert status(settings, job.execution_id) == ExecutionStatus.SUCCEEDED
    dead = [fields for _, fields in r.xrange(keys.DEAD_LETTERS)]
    assert any(b"E-from-an-older-version" in f[b"job"] for f in dead)
    assert any(f[b"reason"] == b"the job message cannot be read" for f in dead)
    assert pending(settings, "q_garbage") == 0


class Unreachable(LocalExecutor):
    """Steps whose every attempt fails outside the task: the store it needs is gone."""

    async def attempt(self, step, call, args, cancelled, on_start=None):
        raise ConnectionError("redis went away")


def test_a_job_whose_run_keeps_failing_in_the_dispatcher_is_dead_lettered_not_stuck(settings):
    job = prepare(settings, "doomed", "q_doomed")
    send(settings, job)
    running = Running(settings, {}, executor=Unreachable({}))
    try:
        wait_until(lambda: status(settings, job.execution_id).terminal, what="dead letters")
    finally:
        running.close()
    record = open_records(settings).get_execution(job.execution_id)
    assert record.status == ExecutionStatus.DEAD_LETTERED
    assert record.steps[0].status.terminal  # no step is left looking like it runs
    assert pending(settings, "q_doomed") == 0


def test_a_saturated_dispatcher_never_runs_a_job_twice(settings, tmp_path):
    # Two slots, take-over rounds far more often than a job lasts: an entry read
    # but not tracked (waiting for a slot in memory) would be taken up again by
    # the same dispatcher and run twice at once.
    busy = settings.model_copy(
        update={
            "dispatcher": settings.dispatcher.model_copy(
                update={"concurrency": 2, "heartbeat_s": 0.2}
            )
        }
    )
    runs = tmp_path / "runs.log"

    async def slow(document):
        with runs.open("a") as f:  # one line per run of the task body
            f.write(document["who"] + "\n")
        await asyncio.sleep(1.0)
        return {"done": document["who"]}

    jobs = [prepare(busy, f"slow{i}", "q_saturated") for i in range(6)]
    executor = LocalExecutor({f"slow{i}": slow for i in range(6)})
    for job in jobs:
        send(busy, job)
    running = Running(busy, {}, executor=executor)
    try:
        for job in jobs:
            wait_until(lambda j=job: status(busy, j.execution_id).terminal, what="every job")
    finally:
        running.close()
    lines = runs.read_text().split()
    assert sorted(lines) == sorted(f"slow{i}" for i in range(6))  # each body ran once
    records = [open_records(busy).get_execution(j.execution_id) for j in jobs]
    assert {r.status for r in records} == {ExecutionStatus.SUCCEEDED}
    assert {r.deliveries for r in records} == {1}
    assert pending(busy, "q_saturated") == 0


def test_a_run_taken_over_by_another_dispatcher_is_no_longer_renewed_or_run_here(settings):
    started = threading.Event()

    async def forever(document):
        started.set()
        await asyncio.Event().wait()  # only a cancellation ends it

    job = prepare(settings, "forever", "q_taken")
    entry = send(settings, job)
    running = Running(settings, {}, executor=LocalExecutor({"forever": forever}))
    try:
        wait_until(started.is_set, what="the job to run")
        r = redis.Redis.from_url(settings.redis.url)
        # Another dispatcher thought this one dead and took the entry over.
        r.xclaim(job.stream, keys.CONSUMER_GROUP, "thief", 0, [entry])

        wait_until(
            lambda: running._call(running.dispatcher.ping())["in_flight"] == 0,
            what="the run here to stop",
        )
        owner = r.xpending_range(job.stream, keys.CONSUMER_GROUP, entry, entry, 1)[0]
        assert owner["consumer"] == b"thief"  # not claimed back by a renewal
    finally:
        running.close()
