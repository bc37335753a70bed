"""At-least-once delivery: jobs a dead dispatcher held are claimed; repeat offenders
go to the dead-letter stream. A "ghost" consumer stands in for a dispatcher that
read a job and died without acknowledging it."""

from __future__ import annotations

import contextlib
import time

import redis

from orchestrator import keys
from orchestrator.models import ExecutionRecord, ExecutionStatus, Job, new_execution_id
from tests.conftest import make_task


def abandon(client, task_id: str, queue: str, deliveries: int) -> str:
    """Record and enqueue a job, then have a ghost consumer take it `deliveries` times."""
    record = client.task(task_id)
    execution = ExecutionRecord(
        execution_id=new_execution_id(),
        kind="task",
        task_id=task_id,
        version=record.version,
        queue=queue,
        input={},
        submitted_at=time.time(),
    )
    client.records.insert_execution(execution)
    r = redis.Redis.from_url(client.settings.redis.url)
    stream = keys.stream(queue, "normal")
    with contextlib.suppress(redis.ResponseError):  # the dispatcher made it first
        r.xgroup_create(stream, keys.CONSUMER_GROUP, id="0", mkstream=True)
    job = Job(
        execution_id=execution.execution_id,
        kind="task",
        target=task_id,
        version=record.version,
        queue=queue,
        submitted_at=execution.submitted_at,
        input={},
    )
    entry = r.xadd(stream, job.encode())
    r.xreadgroup(keys.CONSUMER_GROUP, "ghost", {stream: ">"}, count=1)  # delivery 1
    for _ in range(deliveries - 1):
        r.xclaim(stream, keys.CONSUMER_GROUP, "ghost", 0, [entry])  # each counts one more
    r.sadd(keys.QUEUES_SET, queue)  # only now may a dispatcher read this queue
    return execution.execution_id


def test_a_job_a_dead_dispatcher_held_is_claimed_and_run(client, tmp_path):
    client.register_task(make_task(tmp_path, "orphaned", 'return {"ran": True}', queue="orphans"))
    execution_id = abandon(client, "orphaned", "orphans", deliveries=1)

    record = client.wait(execution_id, timeout=60)

    assert record.status == ExecutionStatus.SUCCEEDED
    assert record.result == {"ran": True}


def test_a_job_delivered_too_often_is_dead_lettered(client, tmp_path):
    client.register_task(make_task(tmp_path, "poison", 'return {"ran": True}', queue="poisoned"))
    execution_id = abandon(client, "poison", "poisoned", deliveries=4)

    record = client.wait(execution_id, timeout=60)

    assert record.status == ExecutionStatus.DEAD_LETTERED
    assert "delivered over 3 times" in record.error.message
    r = redis.Redis.from_url(client.settings.redis.url)
    dead = [Job.decode(fields).execution_id for _, fields in r.xrange(keys.DEAD_LETTERS)]
    assert execution_id in dead
