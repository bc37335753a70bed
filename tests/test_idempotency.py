"""Idempotency keys and an interrupted wait, on the session's stack, as a user meets them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from orchestrator.errors import InputError
from orchestrator.models import ExecutionStatus
from tests.conftest import ROOT, make_task
from tests.helpers import wait_until


@pytest.fixture(scope="module")
def keyed(client, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("keyed")
    client.register_task(make_task(folder, "keyed", "return {'n': input_data.get('n')}"))
    return "keyed"


def stack_env(wtm_home) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WTM_")}
    return {**env, "WTM_HOME": str(wtm_home), "PYTHONPATH": str(ROOT)}


def test_a_key_seen_before_returns_that_execution_and_submits_nothing(client, keyed):
    first = client.submit(keyed, {"n": 1}, idempotency_key="order-1001").id
    again = client.submit(keyed, {"n": 2}, idempotency_key="order-1001").id
    other = client.submit(keyed, {"n": 3}, idempotency_key="order-1002").id

    assert again == first and other != first
    ran = client.run(keyed, {"n": 4}, idempotency_key="order-1001", timeout=60)
    assert ran.execution_id == first and ran.result == {"n": 1}  # the first one's input
    listed = [r.execution_id for r in client.executions(target=keyed, limit=100)]
    assert listed.count(first) == 1 and len(listed) == 2


def test_the_same_key_from_two_processes_at_once_makes_one_execution(
    client, keyed, wtm_home, tmp_path
):
    go = tmp_path / "go"
    script = (
        "import pathlib, sys, time\n"
        "from orchestrator import Client\n"
        "c = Client(start=False)\n"
        "c.connect()\n"
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.005)\n"
        f"print(c.submit({keyed!r}, {{'n': 7}}, idempotency_key='same-from-two'))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            env=stack_env(wtm_home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    go.touch()  # both are connected and waiting: now they submit together
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    ids = {out.strip() for out, _ in outputs}
    assert len(ids) == 1
    sevens = [r for r in client.executions(target=keyed, limit=100) if r.input == {"n": 7}]
    assert [r.execution_id for r in sevens] == list(ids)


def test_a_malformed_key_is_refused_in_one_line(client, keyed):
    with pytest.raises(InputError, match="idempotency key"):
        client.submit(keyed, {"n": 1}, idempotency_key="has spaces in it")


def test_ctrl_c_while_waiting_says_which_execution_goes_on_and_how_to_follow_it(
    client, wtm_home, tmp_path
):
    body = "import time\ntime.sleep(3)\nreturn {'slept': True}"
    client.register_task(make_task(tmp_path, "interrupted", body, timeout=60))
    before = {r.execution_id for r in client.executions(target="interrupted")}
    wtm = os.path.join(os.path.dirname(sys.executable), "wtm")
    proc = subprocess.Popen(
        [wtm, "run", "interrupted", "{}"],
        env=stack_env(wtm_home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def running() -> str | None:
        new = [r for r in client.executions(target="interrupted") if r.execution_id not in before]
        return new[0].execution_id if new and new[0].status == ExecutionStatus.RUNNING else None

    execution_id = wait_until(running, timeout=60, what="the execution to run")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)

    assert proc.returncode == 130
    assert f"execution {execution_id} is still running" in err
    assert f"wtm executions watch {execution_id}" in err and "cancel" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    record = client.wait(execution_id, timeout=60)
    assert record.status == ExecutionStatus.SUCCEEDED  # it went on without the waiter
    json.dumps(record.result)
