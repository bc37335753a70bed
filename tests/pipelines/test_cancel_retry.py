"""`wtm executions cancel` and `retry`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli.main import app
from orchestrator.errors import ConflictError
from orchestrator.models import ExecutionStatus, StepPhase
from tests.conftest import make_task
from tests.helpers import wait_until

runner = CliRunner()


def test_cancelling_a_running_pipeline_stops_its_step_and_starts_no_other(client, tmp_path):
    body = "import pathlib, time\npathlib.Path(input_data['marker']).touch()\n"
    body += "time.sleep(20)\nreturn {}"
    client.register_task(make_task(tmp_path, "slow_first", body))
    client.register_task(make_task(tmp_path, "never_second", "return {'ran': True}"))
    path = tmp_path / "cancel_me.json"
    path.write_text(
        json.dumps(
            {
                "pipeline_id": "cancel_me",
                "steps": [
                    {"task_id": "slow_first"},
                    {"task_id": "never_second", "depends_on": ["slow_first"]},
                ],
            }
        )
    )
    client.register_pipelines(path)
    marker = tmp_path / "started"
    execution_id = client.submit("cancel_me", {"marker": str(marker)})
    wait_until(marker.exists, what="the first step's task to start")

    client.cancel(execution_id)
    record = client.wait(execution_id, timeout=60)

    assert record.status == ExecutionStatus.CANCELLED
    assert [s.status for s in record.steps] == ["cancelled", "cancelled"]
    with pytest.raises(ConflictError, match=r"has already ended \(cancelled\)"):
        client.cancel(execution_id)


def test_cancelling_a_running_step_stops_it_and_the_next_job_runs_on_a_fresh_replica(
    client, tmp_path
):
    body = (
        "import pathlib, time\n"
        "pathlib.Path(input_data['marker']).touch()\n"
        "time.sleep(input_data['sleep'])\n"
        "pathlib.Path(input_data['marker'] + '.finished').touch()\n"
        "return {}"
    )
    client.register_task(make_task(tmp_path, "long_step", body, timeout=120))
    marker = tmp_path / "long"
    execution_id = client.submit("long_step", {"marker": str(marker), "sleep": 30})
    wait_until(marker.exists, what="the step to start")
    busy = wait_until(
        lambda: [w.worker_id for w in client.workers() if w.task_id == "long_step" and w.in_flight],
        what="its replica to report the call",
    )

    client.cancel(execution_id)
    record = client.wait(execution_id, timeout=15)  # not the 30 s the step would take

    assert record.status == ExecutionStatus.CANCELLED
    assert record.steps[0].status.value == "cancelled"
    after = client.run("long_step", {"marker": str(tmp_path / "next"), "sleep": 0}, timeout=60)
    assert after.status == ExecutionStatus.SUCCEEDED
    assert after.steps[0].worker_id not in busy  # a fresh replica: the busy one was killed
    assert not (tmp_path / "long.finished").exists()  # its body was stopped with its replica


def test_cancelling_a_job_that_waits_for_a_busy_replica_stops_it_where_it_waits(client, tmp_path):
    runs = tmp_path / "runs"
    body = f"""
    import pathlib, time
    with open({str(runs)!r}, "a") as f:
        f.write(str(input_data["s"]) + "\\n")
    time.sleep(float(input_data["s"]))
    return {{"s": input_data["s"]}}
    """
    client.register_task(
        make_task(tmp_path, "one_lane", body, replicas={"min": 0, "max": 1, "max_concurrency": 1})
    )
    busy = client.submit("one_lane", {"s": 30})
    wait_until(runs.exists, what="the only replica to be busy")
    waiting = client.submit("one_lane", {"s": 0})
    record = wait_until(
        lambda: (r := client.execution(waiting)).steps[0].phase == StepPhase.BUSY and r,
        what="the second job to be picked up and wait for the slot",
    )
    assert record.status == ExecutionStatus.QUEUED  # waiting for a slot is not running

    client.cancel(waiting)
    record = client.wait(waiting, timeout=20)

    assert record.status == ExecutionStatus.CANCELLED
    assert record.steps[0].status == "cancelled" and record.result is None
    assert client.execution(busy).status == "running"  # cancelled where it waited, not after
    client.cancel(busy)
    assert client.wait(busy, timeout=20).status == ExecutionStatus.CANCELLED
    assert runs.read_text().split() == ["30"]  # the cancelled job never ran


def test_cancelling_a_job_whose_replica_is_still_loading_stops_it_before_it_runs(client, tmp_path):
    ran = tmp_path / "ran"
    folder = make_task(tmp_path, "slow_load", f"open({str(ran)!r}, 'w').close()\nreturn {{}}")
    code = (folder / "task.py").read_text()
    (folder / "task.py").write_text("import time\ntime.sleep(30)  # a large model\n" + code)
    client.register_task(folder)
    execution_id = client.submit("slow_load", {})

    def waits_for_its_replica() -> StepPhase | None:
        phase = client.execution(execution_id).steps[0].phase
        return phase if phase in (StepPhase.STARTING, StepPhase.LOADING) else None

    wait_until(waits_for_its_replica, timeout=60, what="the job to wait for its replica")

    client.cancel(execution_id)
    record = client.wait(execution_id, timeout=20)  # not the 30 s the load takes

    assert record.status == ExecutionStatus.CANCELLED
    assert not ran.exists()


def test_retry_resubmits_with_the_same_input(client, tmp_path, cli_env):
    body = """
    type(self).calls += 1
    if type(self).calls == 1:
        raise FatalError("first call fails")
    return {"echo": input_data["x"]}
    """
    client.register_task(make_task(tmp_path, "retry_me", body))
    failed = client.run("retry_me", {"x": 7})
    assert failed.status == ExecutionStatus.FAILED

    result = runner.invoke(app, ["executions", "retry", failed.execution_id, "--wait", "--json"])
    assert result.exit_code == 0, result.output
    again = json.loads(result.stdout)
    assert again["execution_id"] != failed.execution_id
    assert again["status"] == "succeeded" and again["result"] == {"echo": 7}


def test_retry_and_wait_exits_1_when_the_new_execution_fails_too(client, tmp_path, cli_env):
    client.register_task(make_task(tmp_path, "always_broken", 'raise FatalError("still")'))
    failed = client.run("always_broken", {})

    result = runner.invoke(app, ["executions", "retry", failed.execution_id, "--wait"])

    assert result.exit_code == 1, result.output
    assert "failed" in result.stdout and "still" in result.stdout
