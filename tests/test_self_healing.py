"""Faults injected for real into a private stack; the control plane heals with no one asking.

One embedded stack of this module's own (two dispatchers, a supervisor), so
killing its parts never touches the session's stack. Processes are found by
the pids the stack publishes and checked to carry this stack's ``WTM_HOME``
before any signal is sent. Every task body appends a line to a side-effect
file, so a body that ran twice is seen even when one record hides it.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from cli.main import app
from orchestrator import Client, cluster, keys, stack
from orchestrator.models import ExecutionStatus
from orchestrator.settings import Settings
from orchestrator.stack.health import control_plane_alive, controller_beat
from orchestrator.stack.supervisor import watch_cluster
from tests.conftest import IMAGES, ROOT, TASK_PKGS, make_task
from tests.helpers import wait_until

# Each body appends "<task>:<tag>" to the file named by its input, then sleeps.
BODY = """
import time
with open(input_data["log"], "a") as f:
    f.write("{task}:" + input_data["tag"] + "\\n")
time.sleep(input_data.get("sleep", 0))
return {{"tag": input_data["tag"]}}
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("healing")


@pytest.fixture(scope="module")
def settings(home) -> Settings:
    base = Settings(
        home=home,
        dispatcher={"count": 2, "concurrency": 16, "heartbeat_s": 0.5},
        controller={"heartbeat_s": 0.5, "idle_timeout_s": 120, "upscale_delay_s": 2},
        records={"timeout_s": 1},
        client={"poll_s": 0.5},
    )
    stack.up(base)
    try:
        yield stack.resolve(base)
    finally:
        stack.down(base)


@pytest.fixture(scope="module")
def client(settings) -> Client:
    c = Client(settings, start=False)
    yield c
    c.close()


def register(client: Client, tmp_path: Path, task_id: str, **spec) -> None:
    client.register_task(make_task(tmp_path, task_id, BODY.format(task=task_id), **spec))


def runs(log: Path) -> Counter:
    """How many times each task body ran per tag: Counter({"task:tag": n})."""
    return Counter(log.read_text().split()) if log.exists() else Counter()


def own_pid(settings: Settings, pid: int) -> int:
    """``pid``, after checking that it is a process of this stack: its WTM_HOME, or
    (redis-server writes its title over its environment) its working folder."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    ours = f"WTM_HOME={settings.home}".encode() in environ or cwd.is_relative_to(settings.home)
    assert ours, f"pid {pid} is not this stack's"
    return pid


def dispatcher_beats(settings: Settings) -> dict[str, dict]:
    r = redis.Redis.from_url(settings.redis.url)
    beats = {}
    for key in r.scan_iter(match=keys.dispatcher_alive("*")):
        raw = r.get(key)
        if raw:
            beats[key.decode().rsplit(":", 1)[-1]] = json.loads(raw)
    return beats


def terminal(client: Client, ids: list[str]) -> list:
    records = [client.execution(i) for i in ids]
    return records if all(r.status.terminal for r in records) else []


def test_a_dispatcher_killed_with_30_pipelines_in_flight_loses_and_repeats_nothing(
    settings, client, tmp_path
):
    register(client, tmp_path, "heal_a", replicas={"max_concurrency": 10})
    register(client, tmp_path, "heal_b", replicas={"max_concurrency": 10})
    spec = {
        "pipeline_id": "heal_pipe",
        "steps": [{"task_id": "heal_a"}, {"task_id": "heal_b", "depends_on": ["heal_a"]}],
    }
    (tmp_path / "heal_pipe.json").write_text(json.dumps(spec))
    client.register_pipelines(tmp_path / "heal_pipe.json")
    log = tmp_path / "runs.log"
    ids = [
        client.submit("heal_pipe", {"log": str(log), "tag": f"p{i}", "sleep": 1.5}).id
        for i in range(30)
    ]
    wait_until(lambda: len(runs(log)) >= 12, what="the first steps to run")

    # The dispatcher holding the most jobs dies mid-flight.
    name, beat = max(dispatcher_beats(settings).items(), key=lambda kv: kv[1]["in_flight"])
    assert beat["in_flight"] > 0
    os.kill(own_pid(settings, beat["pid"]), signal.SIGKILL)
    killed_at = time.monotonic()

    records = wait_until(lambda: terminal(client, ids), timeout=60, what="all 30 to end")
    assert {r.status for r in records} == {ExecutionStatus.SUCCEEDED}
    assert time.monotonic() - killed_at < 60
    listed = [r.execution_id for r in client.executions(target="heal_pipe", limit=1000)]
    assert sorted(listed) == sorted(ids)  # each exactly once
    counts = runs(log)
    assert set(counts) == {f"{t}:p{i}" for t in ("heal_a", "heal_b") for i in range(30)}
    assert set(counts.values()) == {1}, [k for k, n in counts.items() if n > 1]
    redelivered = [r for r in records if r.deliveries > 1]
    assert redelivered, "the killed dispatcher's jobs were taken up again, and counted"
    assert {r.deliveries for r in records} <= {1, 2}
    # The killed dispatcher is back (Ray restarted it), under its own name.
    wait_until(
        lambda: dispatcher_beats(settings).get(name, {}).get("pid") not in (None, beat["pid"]),
        what="the dispatcher to be restarted",
    )


def test_a_killed_controller_comes_back_keeping_the_replicas(
    settings, client, tmp_path, monkeypatch
):
    register(client, tmp_path, "heal_c")
    log = tmp_path / "runs.log"
    first = client.run("heal_c", {"log": str(log), "tag": "before"}, timeout=120)
    assert first.status == ExecutionStatus.SUCCEEDED
    replica = first.steps[0].worker_id
    pid = own_pid(settings, controller_beat(settings.redis.url)["pid"])

    monkeypatch.setenv("WTM_HOME", str(settings.home))
    for var in ("WTM_REDIS__URL", "WTM_RAY__ADDRESS", "WTM_RECORDS__URI", "WTM_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    os.kill(pid, signal.SIGSTOP)  # hung first: health must say so while it is down
    try:
        wait_until(lambda: controller_beat(settings.redis.url) is None, what="the beat to lapse")
        result = CliRunner().invoke(app, ["health", "--json"])
        assert result.exit_code != 0
        down = {c["name"]: c for c in json.loads(result.stdout)}["controller"]
        assert not down["ok"] and "no heartbeat" in down["detail"]
    finally:
        os.kill(pid, signal.SIGKILL)  # then dead: Ray restarts it

    def back_with_the_replica() -> bool:  # the live replica adopted, not a new one started
        beat = controller_beat(settings.redis.url)
        return (
            bool(beat) and beat["pid"] != pid and any(replica in s["ready"] for s in beat["sets"])
        )

    wait_until(back_with_the_replica, what="the controller to come back with the replica")
    after = client.run("heal_c", {"log": str(log), "tag": "after"}, timeout=120)
    assert after.status == ExecutionStatus.SUCCEEDED
    assert after.steps[0].worker_id == replica  # served by the replica that lived on
    assert CliRunner().invoke(app, ["health"]).exit_code == 0


def test_redis_killed_with_jobs_queued_and_running_loses_and_repeats_nothing(
    settings, client, tmp_path
):
    # Ten jobs at a time: two dispatchers of five (redeployed with these settings).
    narrow = settings.model_copy(deep=True)
    narrow.dispatcher.concurrency = 5
    cluster.deploy(narrow)
    register(client, tmp_path, "heal_r", replicas={"max_concurrency": 10})
    log = tmp_path / "runs.log"
    ids = [
        client.submit("heal_r", {"log": str(log), "tag": f"r{i}", "sleep": 1.0}) for i in range(60)
    ]
    running = wait_until(
        lambda: len(runs(log)) >= 10 and client.executions(status="running", target="heal_r"),
        what="ten jobs to run",
    )
    assert len(running) <= 10
    r = redis.Redis.from_url(settings.redis.url)
    r.bgrewriteaof()  # every accepted entry on disk (appendfsync is once a second)
    wait_until(
        lambda: (
            not r.info("persistence")["aof_rewrite_in_progress"]
            and not r.info("persistence")["aof_rewrite_scheduled"]
        ),
        what="the AOF rewrite",
    )

    # A client waiting through the outage rides it out (polling the records).
    waited: list = []
    waiter = threading.Thread(
        target=lambda: waited.append(Client(settings, start=False).wait(ids[-1], timeout=120))
    )
    waiter.start()

    old = stack.read_state(settings).redis_pid
    os.kill(own_pid(settings, old), signal.SIGKILL)
    back = wait_until(
        lambda: (st := stack.read_state(settings)).redis_pid != old and st,
        what="the supervisor to restart redis",
    )
    assert f":{back.ports['redis']}/" in settings.redis.url  # the same port
    assert os.path.exists(f"/proc/{back.redis_pid}")  # stack.json names the live one

    records = wait_until(lambda: terminal(client, ids), timeout=60, what="all 60 to end")
    assert {r.status for r in records} == {ExecutionStatus.SUCCEEDED}
    waiter.join(120)
    assert [w.status for w in waited] == [ExecutionStatus.SUCCEEDED]
    counts = runs(log)
    assert sorted(counts) == sorted(f"heal_r:r{i}" for i in range(60))
    assert set(counts.values()) == {1}, [k for k, n in counts.items() if n > 1]

    # Connections the restart left stale fail nothing later.
    register(client, tmp_path, "heal_noop", replicas={"max_concurrency": 10})
    burst = [client.submit("heal_noop", {"log": str(log), "tag": f"n{i}"}) for i in range(200)]
    records = wait_until(lambda: terminal(client, burst), timeout=120, what="the burst")
    assert {r.status for r in records} == {ExecutionStatus.SUCCEEDED}
    assert {r.deliveries for r in records} == {1} and {r.attempts for r in records} == {1}
    cluster.deploy(settings)  # back to the module's settings


def test_records_locked_mid_run_every_job_ends_once_and_no_body_runs_twice(
    settings, client, tmp_path
):
    register(client, tmp_path, "heal_l", replicas={"max_concurrency": 10})
    log = tmp_path / "runs.log"
    ids = [
        client.submit("heal_l", {"log": str(log), "tag": f"l{i}", "sleep": 0.5}) for i in range(20)
    ]
    wait_until(lambda: len(runs(log)) >= 5, what="jobs to run")

    locker = sqlite3.connect(settings.records_file, isolation_level=None, check_same_thread=False)
    locker.execute("BEGIN EXCLUSIVE")  # no one writes a record for 20 s (timeout_s is 1)
    released = threading.Event()

    def release_later() -> None:
        released.wait(20)
        locker.execute("ROLLBACK")
        locker.close()

    holder = threading.Thread(target=release_later)
    holder.start()
    try:
        # A submit during the lock: one clear error, and nothing left behind.
        with pytest.raises(Exception, match="unavailable: database is locked"):
            client.submit("heal_l", {"log": str(log), "tag": "refused"})
        wait_until(lambda: len(runs(log)) >= 20, timeout=60, what="every body to run")
    finally:
        holder.join()

    records = wait_until(lambda: terminal(client, ids), timeout=60, what="all 20 to end")
    assert {r.status for r in records} == {ExecutionStatus.SUCCEEDED}
    assert {r.deliveries for r in records} == {1}
    counts = runs(log)
    assert sorted(counts) == sorted(f"heal_l:l{i}" for i in range(20))  # "refused" never ran
    assert set(counts.values()) == {1}
    assert len(client.executions(target="heal_l", limit=100)) == 20


def test_two_dispatchers_share_one_replica_one_call_at_a_time(settings, client, tmp_path):
    # One replica taking one call at a time, a 2 s timeout, calls of 1.2 s: sent
    # together, the last waits far longer than 2 s for the replica, and must not
    # time out (its clock starts there), nor overlap another.
    body = """
import time
start = time.time()
time.sleep(1.2)
with open(input_data["log"], "a") as f:
    f.write(f"{start} {time.time()}\\n")
return {}
"""
    one = {"replicas": {"max": 1}}  # one replica: the cluster would allow two
    client.register_task(make_task(tmp_path, "heal_one", body, timeout=2, max_retries=0, **one))
    narrow = settings.model_copy(deep=True)
    narrow.dispatcher.concurrency = 2  # five jobs: both dispatchers take some
    cluster.deploy(narrow)
    log = tmp_path / "intervals.log"
    ids = [client.submit("heal_one", {"log": str(log), "n": i}) for i in range(5)]
    records = wait_until(lambda: terminal(client, ids), timeout=120, what="all 5 to end")
    assert {r.status for r in records} == {ExecutionStatus.SUCCEEDED}, [r.error for r in records]
    assert {r.attempts for r in records} == {1}
    dispatchers = {r.execution_id: r.deliveries for r in records}
    assert set(dispatchers.values()) == {1}
    intervals = sorted(tuple(map(float, line.split())) for line in log.read_text().splitlines())
    assert len(intervals) == 5
    for (_, end), (start, _) in itertools.pairwise(intervals):
        assert start >= end - 0.01  # never two calls at once on it
    assert intervals[-1][0] - min(r.submitted_at for r in records) > 2  # queued past 2 s
    cluster.deploy(settings)


def test_a_dead_ray_head_is_restarted_and_its_jobs_resume(settings, client, tmp_path):
    register(client, tmp_path, "heal_h", max_retries=2)  # a replica dying is retried
    log = tmp_path / "runs.log"
    ids = [
        client.submit("heal_h", {"log": str(log), "tag": f"h{i}", "sleep": 1.0}) for i in range(3)
    ]
    wait_until(lambda: runs(log), what="a job to run")
    before = stack.read_state(settings)
    os.kill(own_pid(settings, gcs_pid(settings)), signal.SIGKILL)  # the head, replicas with it

    records = wait_until(lambda: terminal(client, ids), timeout=120, what="the jobs to end")
    assert {r.status for r in records} == {ExecutionStatus.SUCCEEDED}, [r.error for r in records]
    after = stack.read_state(settings)
    assert after.ports == before.ports and after.redis_pid == before.redis_pid  # Redis untouched
    assert client.run("heal_h", {"log": str(log), "tag": "next"}, timeout=120).status == (
        ExecutionStatus.SUCCEEDED
    )


def embedded(settings: Settings) -> Settings:
    """The module's settings as a user has them: nothing resolved, the stack embedded."""
    plain = settings.model_copy(deep=True)
    plain.redis.url, plain.ray.address = None, None
    return plain


def gcs_pid(settings: Settings) -> int:
    """The stack's Ray head process (waited for: an earlier test may have just had
    the head restarted, and its new process may not be up yet)."""

    def name(pid: int) -> str | None:
        try:
            return Path(f"/proc/{pid}/comm").read_text().strip()
        except FileNotFoundError:  # it exited since it was listed
            return None

    def found() -> list[int]:
        return [p for p in stack.stack_pids(settings) if name(p) == "gcs_server"]

    (pid,) = wait_until(found, timeout=60, what="the Ray head's gcs_server")
    return pid


def test_any_command_restarts_only_what_died_when_the_supervisor_is_gone_too(
    settings, client, tmp_path
):
    before = stack.read_state(settings)
    head = gcs_pid(settings)
    os.kill(own_pid(settings, before.supervisor_pid), signal.SIGKILL)
    os.kill(own_pid(settings, before.redis_pid), signal.SIGKILL)
    wait_until(lambda: not stack.services.redis_ok(settings.redis.url), what="redis to die")
    shown = {c.name: c for c in stack.health(embedded(settings))}
    assert not shown["redis"].ok and not shown["supervisor"].ok
    assert "unknown while Redis is down" in shown["controller"].detail  # not called dead

    said: list[str] = []
    stack.ensure(embedded(settings), notify=said.append)  # what any wtm command does first
    after = stack.read_state(settings)
    assert said == [f"Restarted redis, the supervisor of the embedded stack in {settings.home}"]
    assert after.ports == before.ports and gcs_pid(settings) == head  # Ray left alone
    assert after.redis_pid != before.redis_pid and after.supervisor_pid != before.supervisor_pid
    assert set(stack.stack_pids(settings)) >= {after.redis_pid, after.supervisor_pid}
    register(client, tmp_path, "heal_e")
    record = client.run("heal_e", {"log": str(tmp_path / "runs.log"), "tag": "e"}, timeout=120)
    assert record.status == ExecutionStatus.SUCCEEDED


def test_a_control_plane_gone_from_a_cluster_is_deployed_again_by_the_watcher(
    settings, client, tmp_path
):
    # As in production: nothing embedded, the stack's own supervisor out of the way.
    supervisor = stack.read_state(settings).supervisor_pid
    os.kill(own_pid(settings, supervisor), signal.SIGKILL)
    cluster.remove_actors(settings)  # controller, dispatchers, replicas: all gone
    url = settings.redis.url
    wait_until(lambda: not control_plane_alive(url), what="the control plane to be gone")

    stop = threading.Event()
    watcher = threading.Thread(target=watch_cluster, args=(settings, stop, 0.2))
    watcher.start()
    try:
        wait_until(lambda: control_plane_alive(url), timeout=120, what="the redeploy")
    finally:
        stop.set()
        watcher.join(60)
    register(client, tmp_path, "heal_w")
    record = client.run("heal_w", {"log": str(tmp_path / "runs.log"), "tag": "w"}, timeout=120)
    assert record.status == ExecutionStatus.SUCCEEDED
    stack.ensure(embedded(settings))  # the stack's own supervisor back
    assert stack.read_state(settings).supervisor_pid != supervisor


def test_idle_replicas_give_way_so_face_pipelines_after_a_burst_all_succeed(
    settings, client, tmp_path
):
    # This stack keeps idle replicas for 120 s: after a burst, a task scaled by
    # default to what the cluster holds keeps every CPU, and the face steps'
    # replicas can be placed only if those idle replicas give way.
    for folder in sorted(TASK_PKGS.iterdir()):
        if (folder / "task.json").is_file():
            client.register_task(folder)
    client.register_pipelines(ROOT / "pipelines" / "face_processing_pipeline.json")
    register(client, tmp_path, "cpu_hog", resources={"num_cpus": 0.5})  # no replicas section
    log = tmp_path / "hog.log"
    burst = [
        client.submit("cpu_hog", {"log": str(log), "tag": f"h{i}", "sleep": 1.5}) for i in range(16)
    ]
    done = [client.wait(i, timeout=120) for i in burst]
    assert {r.status for r in done} == {ExecutionStatus.SUCCEEDED}, {str(r.error) for r in done}

    def hog_set() -> dict:
        beat = controller_beat(settings.redis.url) or {"sets": []}
        return next(s for s in beat["sets"] if s["key"].startswith("cpu_hog@"))

    assert len(hog_set()["ready"]) == 4  # 4 x 0.5 CPU: the whole node, idle now

    grid = str(IMAGES / "astronaut_grid.jpg")
    ids = [client.submit("face_processing_pipeline", {"image_path": grid}) for _ in range(4)]
    # Well inside the 120 s the idle replicas would otherwise keep their CPUs.
    records = [client.wait(i, timeout=90) for i in ids]

    assert [r.status for r in records] == [ExecutionStatus.SUCCEEDED] * 4, [
        r.error for r in records
    ]
    assert all(len(r.result["faces"]) == 4 for r in records)
    assert len(hog_set()["ready"]) < 4  # some gave way


def test_down_stops_everything_the_stack_started_even_what_it_restarted(settings):
    state = stack.read_state(settings)
    old = state.redis_pid
    os.kill(own_pid(settings, old), signal.SIGKILL)
    wait_until(lambda: stack.read_state(settings).redis_pid != old, what="redis to be restarted")
    state = stack.read_state(settings)
    pids = stack.stack_pids(settings)
    assert state.supervisor_pid in pids and state.redis_pid in pids

    stack.down(settings)
    assert stack.read_state(settings) is None and stack.stack_pids(settings) == []
    assert not any(os.path.exists(f"/proc/{p}") and _running(p) for p in pids)
    assert not stack.services.redis_ok(settings.redis.url)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
