"""Dead letters as a workflow: listed with why, replayed, purged (session stack, CLI)."""

from __future__ import annotations

import json
import time

from typer.testing import CliRunner

from cli.main import app
from orchestrator.intake import Job
from orchestrator.models import ExecutionRecord, ExecutionStatus, new_execution_id
from tests.conftest import make_task
from tests.helpers import ghost_takes, wait_until

runner = CliRunner()


def wtm(*args: str):
    return runner.invoke(app, list(args))


def dead_letter_one(client, task_id: str, queue: str, n: int) -> str:
    """A queued execution whose job a dispatcher that died took too often: the session's
    dispatcher moves it to the dead letters. Returns its execution id."""
    plan = client.plan(task_id)
    record = ExecutionRecord(
        execution_id=new_execution_id(),
        kind="task",
        task_id=task_id,
        version=plan.version,
        queue=queue,
        input={"n": n},
        submitted_at=time.time(),
        steps=plan.pending_steps(),
    )
    client.records.insert_execution(record)
    deliveries = client.settings.dispatcher.max_deliveries + 1
    ghost_takes(client.settings.redis.url, Job.of(record, plan), deliveries=deliveries)
    wait_until(
        lambda: client.execution(record.execution_id).status == ExecutionStatus.DEAD_LETTERED,
        what="the job to be dead-lettered",
    )
    return record.execution_id


def letters() -> list[dict]:
    result = wtm("dlq", "list", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_dead_letters_are_listed_replayed_and_purged(cli_env, client, tmp_path):
    client.register_task(make_task(tmp_path, "dlq_task", "return {'n': input_data['n']}"))
    first = dead_letter_one(client, "dlq_task", "q_dlq_a", 1)
    second = dead_letter_one(client, "dlq_task", "q_dlq_b", 2)

    listed = {d["execution_id"]: d for d in letters()}
    one = listed[first]
    limit = client.settings.dispatcher.max_deliveries
    assert one["target"] == "dlq_task" and f"delivered over {limit} times" in one["reason"]
    assert one["deliveries"] == limit + 2 and f"over {limit} times" in one["error"]
    table = wtm("dlq", "list")
    assert table.exit_code == 0 and one["dlq_id"] in table.stdout

    replayed = wtm("dlq", "replay", one["dlq_id"], "--json")
    assert replayed.exit_code == 0, replayed.output
    (new_id,) = json.loads(replayed.stdout)["execution_ids"]
    record = client.wait(new_id, timeout=60)
    assert record.status == ExecutionStatus.SUCCEEDED and record.result == {"n": 1}
    assert first not in {d["execution_id"] for d in letters()}  # out of the dead letters
    assert client.execution(first).status == ExecutionStatus.DEAD_LETTERED  # history stays

    assert wtm("dlq", "replay").exit_code == 2  # neither ids nor --all: one line
    assert wtm("dlq", "replay", "0-1").exit_code == 3  # unknown id
    bad = wtm("dlq", "purge", "not-an-id", "--yes")
    assert bad.exit_code == 2 and "'not-an-id' is not a dead letter id" in bad.output
    purged = wtm("dlq", "purge", "--yes")
    assert purged.exit_code == 0 and "purged" in purged.stdout
    assert letters() == []
    assert client.execution(second).status == ExecutionStatus.DEAD_LETTERED


def test_a_job_that_kills_its_process_every_time_is_dead_lettered_and_replayed(
    cli_env, client, tmp_path
):
    runs, fixed = tmp_path / "runs", tmp_path / "fixed"
    body = f"""
    import os, pathlib, signal
    if input_data["poison"]:
        with open({str(runs)!r}, "a") as f:  # one line per run of the body
            f.write(f"{{os.getpid()}}\\n")
        if not pathlib.Path({str(fixed)!r}).exists():
            os.kill(os.getpid(), signal.SIGKILL)
    return {{"n": input_data["n"]}}
    """
    spec = {"max_retries": 0, "replicas": {"max": 2}}
    client.register_task(make_task(tmp_path, "kills_itself", body, **spec))
    limit = client.settings.dispatcher.max_deliveries

    poison = client.submit("kills_itself", {"poison": True, "n": 0}).id
    others = [client.submit("kills_itself", {"poison": False, "n": n}) for n in range(1, 4)]
    record = client.wait(poison, timeout=120)

    assert record.status == ExecutionStatus.DEAD_LETTERED
    assert f"died {limit} times" in record.error.message
    pids = runs.read_text().split()
    assert len(pids) == limit and len(set(pids)) == limit  # each run on a fresh replica
    for other in others:
        done = client.wait(other, timeout=120)
        assert done.status == ExecutionStatus.SUCCEEDED, done.error
    (letter,) = [d for d in letters() if d["execution_id"] == poison]
    assert f"died {limit} times" in letter["reason"]

    fixed.touch()  # the bug is fixed: replaying runs it again, and it succeeds
    replayed = wtm("dlq", "replay", letter["dlq_id"], "--json")
    assert replayed.exit_code == 0, replayed.output
    (new_id,) = json.loads(replayed.stdout)["execution_ids"]
    again = client.wait(new_id, timeout=60)
    assert again.status == ExecutionStatus.SUCCEEDED and again.result == {"n": 0}
    assert len(runs.read_text().split()) == limit + 1
