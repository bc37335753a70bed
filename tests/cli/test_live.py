"""Following executions live from the CLI: `wtm run`, `wtm executions watch`,
`--timeout` and `--no-cache` (real stack)."""

from __future__ import annotations

import io
import json

from rich.console import Console
from typer.testing import CliRunner

from cli import live
from cli.main import app
from tests.conftest import make_task

runner = CliRunner()

SLEEPY = """
import time
time.sleep(input_data.get("sleep", 0))
return {"slept": input_data.get("sleep", 0)}
"""


def wtm(*args: str):
    return runner.invoke(app, list(args))


def _pipeline(client, tmp_path) -> str:
    client.register_task(make_task(tmp_path, "live_sleepy", SLEEPY))
    pipeline = {
        "pipeline_id": "live_two_steps",
        "steps": [
            {"step_id": "first", "task_id": "live_sleepy"},
            {"step_id": "second", "task_id": "live_sleepy", "depends_on": ["first"]},
        ],
        "global_settings": {"enable_caching": True},
    }
    (tmp_path / "live.json").write_text(json.dumps(pipeline))
    client.register_pipelines(tmp_path / "live.json")
    return "live_two_steps"


def test_watch_attaches_to_a_running_execution_and_shows_its_result(cli_env, client, tmp_path):
    pid = _pipeline(client, tmp_path)
    job = client.submit(pid, {"sleep": 1.0})

    result = wtm("executions", "watch", job.id)

    assert result.exit_code == 0, result.output
    assert job.status.value == "succeeded"
    assert f"{job.id} {pid} succeeded" in result.stdout
    assert "first" in result.stdout and "second" in result.stdout  # the steps table


def test_the_live_view_redraws_the_steps_as_they_move(cli_env, client, tmp_path, monkeypatch):
    pid = _pipeline(client, tmp_path)
    screen = io.StringIO()
    monkeypatch.setattr(live, "console", Console(file=screen, force_terminal=True, width=150))

    record = live.follow(client.submit(pid, {"sleep": 0.8}), timeout=60)

    assert record.status.value == "succeeded"
    frames = screen.getvalue()
    assert "live_two_steps" in frames and "second" in frames
    assert "running" in frames  # drawn while a step ran, not only at the end


def test_run_with_a_timeout_says_it_is_still_going_and_how_to_follow(cli_env, client, tmp_path):
    client.register_task(make_task(tmp_path, "live_slow", SLEEPY))

    result = wtm("run", "live_slow", '{"sleep": 3}', "--timeout", "0.5")

    assert result.exit_code == 1
    assert "after 0.5s; follow it with `wtm executions watch" in result.stderr


def test_no_cache_runs_every_step_again(cli_env, client, tmp_path):
    pid = _pipeline(client, tmp_path)
    assert wtm("pipeline", "execute", pid, '{"sleep": 0}').exit_code == 0

    cached = json.loads(wtm("pipeline", "execute", pid, '{"sleep": 0}', "--json").stdout)
    fresh = wtm("pipeline", "execute", pid, '{"sleep": 0}', "--json", "--no-cache")

    assert fresh.exit_code == 0, fresh.output
    assert [s["cache_hit"] for s in cached["steps"]] == [True, True]
    assert [s["cache_hit"] for s in json.loads(fresh.stdout)["steps"]] == [False, False]
