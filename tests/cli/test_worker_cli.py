"""`wtm worker ...` through CliRunner against the session's stack."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cli.main import app
from tests.conftest import make_task
from tests.helpers import wait_until

runner = CliRunner()


def wtm(*args: str):
    return runner.invoke(app, list(args))


def live_workers(task_id: str) -> list[dict]:
    rows = json.loads(wtm("worker", "status", "--json").stdout)
    return [w for w in rows if w["task_id"] == task_id and w["state"] != "dead"]


def test_start_scale_status_monitor_and_stop(cli_env, client, tmp_path):
    client.register_task(
        make_task(
            tmp_path, "operated", "return {}", replicas={"min": 0, "max": 4, "max_concurrency": 1}
        )
    )

    started = wtm("worker", "start", "--task", "operated", "--replicas", "1")
    assert started.exit_code == 0, started.output
    assert "wtm:operated@1.0.0#" in started.stdout
    wait_until(lambda: len(live_workers("operated")) == 1, what="1 live replica")

    scaled = wtm("worker", "scale", "operated", "2")
    assert scaled.exit_code == 0, scaled.output
    wait_until(lambda: len(live_workers("operated")) == 2, what="2 live replicas")

    shown = wtm("worker", "monitor", "--count", "1", "--interval", "0.1")
    assert shown.exit_code == 0 and "wtm:operated@1.0.0#" in shown.stdout

    stopped = wtm("worker", "stop", "--task", "operated")
    assert stopped.exit_code == 0 and "stopped 2 replica(s)" in stopped.stdout
    assert live_workers("operated") == []


def test_worker_commands_name_an_unknown_task(cli_env, client):
    result = wtm("worker", "scale", "no_such_task", "2")
    assert result.exit_code == 3 and "unknown task 'no_such_task'" in result.stderr
