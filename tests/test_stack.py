"""The embedded stack: started on demand, side by side with another, clean on down;
and nothing starts one unless asked."""

from __future__ import annotations

import json

import psutil
import pytest
from typer.testing import CliRunner

from cli.main import app
from orchestrator import Client, cluster, keys, stack
from orchestrator.errors import StackError
from orchestrator.settings import Settings
from orchestrator.workers import Workers
from tests.conftest import IMAGES, TASK_PKGS


def test_second_stack_starts_on_demand_beside_the_first_and_stops_cleanly(
    stack_settings, ray_connected, tmp_path_factory, monkeypatch
):
    ray = ray_connected  # this process drives the first stack's cluster throughout
    driving = ray.get_runtime_context().gcs_address
    home = tmp_path_factory.mktemp("other")
    other = Settings(home=home)
    first = stack.read_state(stack_settings)
    monkeypatch.setenv("WTM_HOME", str(home))
    runner = CliRunner()
    try:
        assert (
            runner.invoke(app, ["task", "register", str(TASK_PKGS / "face_detection")]).exit_code
            == 0
        )  # registering needs no stack
        assert not stack.is_up(other)
        image = json.dumps({"image_path": str(IMAGES / "astronaut.jpg")})
        result = runner.invoke(app, ["run", "face_detection", image, "--json"])
        assert result.exit_code == 0, result.output
        assert "Started the embedded stack in" in result.stderr  # said in one line
        assert json.loads(result.stdout)["result"]["face_count"] == 1

        state = stack.read_state(other)
        assert not set(state.ports.values()) & set(first.ports.values())
        again = stack.up(other)  # idempotent: same processes, same ports
        assert again.ports == state.ports and again.redis_pid == state.redis_pid
        pids = stack.stack_pids(other)
        names = {psutil.Process(p).name() for p in pids}
        assert {"redis-server", "raylet", "gcs_server"} <= names

        # Starting and using the second stack left this process's connection alone ...
        assert ray.get_runtime_context().gcs_address == driving
        controller = ray.get_actor(keys.CONTROLLER, namespace=stack_settings.ray.namespace)
        assert isinstance(ray.get(controller.status.remote()), list)
        # ... and switching it is refused, not done behind the caller's back.
        with pytest.raises(StackError, match="a process drives one cluster"):
            cluster.connect(stack.resolve(other))
    finally:
        stack.down(other)

    assert stack.stack_pids(other) == []
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)
    assert stack.is_up(stack_settings)  # the first stack was left alone


def test_nothing_starts_a_stack_unless_asked(tmp_path):
    settings = Settings(home=tmp_path)
    client = Client(settings, start=False)
    client.register_task(TASK_PKGS / "face_detection")
    assert [t.task_id for t in client.tasks()] == ["face_detection"]
    with pytest.raises(StackError, match="not running; run `wtm up`"):
        client.submit("face_detection", {"image_path": str(IMAGES / "astronaut.jpg")})
    with pytest.raises(StackError, match="not running; run `wtm up`"):
        Workers(settings)
    assert not stack.is_up(settings) and stack.read_state(settings) is None
    assert client.executions() == []  # the refused submit left no record


def test_down_on_a_home_with_nothing_running_is_a_no_op(tmp_path):
    assert stack.down(Settings(home=tmp_path)) == []
