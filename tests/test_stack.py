"""The embedded stack: side by side with another, idempotent, and clean on down."""

from __future__ import annotations

import psutil

from orchestrator import stack
from orchestrator.settings import Settings


def test_second_stack_runs_beside_the_first_and_stops_cleanly(stack_settings, tmp_path_factory):
    other = Settings(home=tmp_path_factory.mktemp("other"))
    first = stack.read_state(stack_settings)
    try:
        state = stack.up(other)
        assert stack.is_up(other)
        assert not set(state.ports.values()) & set(first.ports.values())
        again = stack.up(other)  # idempotent: same processes, same ports
        assert again.ports == state.ports and again.redis_pid == state.redis_pid
        pids = stack.stack_pids(other)
        names = {psutil.Process(p).name() for p in pids}
        assert {"redis-server", "raylet", "gcs_server"} <= names
    finally:
        stack.down(other)

    assert stack.stack_pids(other) == []
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)
    assert stack.is_up(stack_settings)  # the first stack was left alone


def test_down_on_a_home_with_nothing_running_is_a_no_op(tmp_path):
    assert stack.down(Settings(home=tmp_path)) == []
