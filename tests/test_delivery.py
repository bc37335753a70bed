"""At-least-once delivery: jobs a dead dispatcher held are claimed; repeat offenders
go to the dead-letter stream. A "ghost" consumer stands in for a dispatcher that
read a job and died without acknowledging it."""

from __future__ import annotations

import time

import redis

from orchestrator import keys
from orchestrator.intake import Job
from orchestrator.models import ExecutionRecord, ExecutionStatus, StepStatus, new_execution_id
from tests.conftest import make_task
from tests.helpers import ghost_takes


def abandon(client, task_id: str, queue: str, deliveries: int) -> str:
    """Record and enqueue a job, then have a ghost consumer take it `deliveries` times."""
    plan = client.plan(task_id)
    execution = ExecutionRecord(
        execution_id=new_execution_id(),
        kind="task",
        task_id=task_id,
        version=plan.version,
        queue=queue,
        input={},
        submitted_at=time.time(),
        steps=plan.pending_steps(),
    )
    client.records.insert_execution(execution)
    ghost_takes(client.settings.redis.url, Job.of(execution, plan), deliveries)
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


def test_a_claimed_pipeline_resumes_after_its_finished_steps(client, tmp_path):
    import json

    client.register_task(
        make_task(tmp_path, "ran_before", 'raise FatalError("ran twice")', queue="resume")
    )
    client.register_task(
        make_task(tmp_path, "runs_after", "return {'seen': input_data}", queue="resume")
    )
    path = tmp_path / "resumable.json"
    path.write_text(
        json.dumps(
            {
                "pipeline_id": "resumable",
                "metadata": {"queue": "resume"},
                "steps": [
                    {"task_id": "ran_before"},
                    {"task_id": "runs_after", "depends_on": ["ran_before"]},
                ],
            }
        )
    )
    client.register_pipelines(path)
    plan = client.plan("resumable")
    # The dispatcher that died had finished the first step and kept its output.
    steps = plan.pending_steps()
    steps[0].status, steps[0].attempts = StepStatus.SUCCEEDED, 1
    execution = ExecutionRecord(
        execution_id=new_execution_id(),
        kind="pipeline",
        pipeline_id="resumable",
        version=plan.version,
        queue="resume",
        input={"x": 1},
        submitted_at=time.time(),
        steps=steps,
        status=ExecutionStatus.RUNNING,
    )
    client.records.insert_execution(execution)
    client.objects.put(
        keys.DATA_BUCKET,
        keys.step_output_key(execution.execution_id, "ran_before"),
        json.dumps({"kept": True}).encode(),
    )
    ghost_takes(client.settings.redis.url, Job.of(execution, plan))

    record = client.wait(execution.execution_id, timeout=60)

    assert record.status == ExecutionStatus.SUCCEEDED, record.error
    assert record.result == {"seen": {"x": 1, "ran_before": {"kept": True}}}
    assert [s.attempts for s in record.steps] == [1, 1]
    # Once recorded, the kept outputs are gone: nothing left to resume.
    assert not client.objects.exists(
        keys.DATA_BUCKET, keys.step_output_key(execution.execution_id, "ran_before")
    )
