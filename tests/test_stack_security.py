"""The embedded stack's own Ray token: `wtm up`, health, runs and Ray drivers work
whatever ``~/.ray/auth_token`` holds; the dashboard's API wants the stack's token;
and a start that fails halfway leaves nothing running."""

from __future__ import annotations

import json
import secrets
import stat
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from orchestrator import cluster, stack
from orchestrator.errors import StackError
from orchestrator.settings import Settings
from orchestrator.testing import write_task
from tests.private_stack import processes_of, running, shell_env, wtm

ECHO = 'return {"echo": input_data["text"], "pid": __import__("os").getpid()}'


def dashboard_status(url: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.parametrize("home_token", ["unrelated", None], ids=["home-token", "no-home-token"])
def test_up_health_a_run_and_a_driver_work_whatever_home_ray_token_holds(tmp_path, home_token):
    home, wtm_home = tmp_path / "home", tmp_path / "wtm"
    home.mkdir()
    home_file = home / ".ray" / "auth_token"
    if home_token:  # what any plain ray.init() on Ray 2.60 leaves behind
        home_file.parent.mkdir()
        home_file.write_text(secrets.token_hex(32))
        before = home_file.read_text()
    env = shell_env(home, wtm_home)
    package = write_task(tmp_path, "auth_echo", ECHO)

    with running(env) as up:
        assert up.returncode == 0, up.stderr
        assert "Ray auth token: in" in up.stdout
        health = {c["name"]: c for c in json.loads(wtm(env, "health", "--json").stdout)}
        for part in ("redis", "records", "ray", "dashboard", "dispatchers", "controller"):
            assert health[part]["ok"], health[part]
        assert "token authentication" in health["ray"]["detail"]

        assert wtm(env, "task", "register", str(package)).returncode == 0
        run = wtm(env, "run", "auth_echo", '{"text": "hi"}', "--json")
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["result"]["echo"] == "hi"
        # A Ray driver of the stack (`worker start` connects to the cluster).
        started = wtm(env, "worker", "start", "--task", "auth_echo")
        assert started.returncode == 0, started.stderr

        # The dashboard's API wants this stack's token, and only it.
        st = stack.read_state(Settings(home=wtm_home))
        token_file = Path(st.ray_token_file)
        assert token_file.is_relative_to(wtm_home)
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        api = f"{st.dashboard_url}/api/version"
        assert dashboard_status(api, None) == 401
        assert dashboard_status(api, token_file.read_text().strip()) == 200
        if home_token:
            assert dashboard_status(api, before) == 403

    assert processes_of(wtm_home) == []
    if home_token:
        assert home_file.read_text() == before  # left as it was
    else:
        assert not home_file.exists()  # and none written


def test_a_start_that_fails_halfway_stops_what_it_started(tmp_path, monkeypatch):
    settings = Settings(home=tmp_path / "wtm")

    def deploy_fails(*args, **kwargs):
        assert processes_of(settings.home), "Redis and the Ray head run by now"
        raise StackError("deploy on the Ray cluster failed: as this test wants")

    monkeypatch.setattr(cluster, "deploy", deploy_fails)
    with pytest.raises(StackError, match="as this test wants"):
        stack.up(settings)

    assert stack.read_state(settings) is None  # the next `up` starts clean
    assert processes_of(settings.home) == []
