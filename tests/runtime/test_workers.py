"""The worker runtime under failure and load: the issue's 'done when' list."""

from __future__ import annotations

import os
import signal

import pytest

from orchestrator.models import ExecutionStatus
from orchestrator.workers import Workers, worker_status
from tests.conftest import make_task
from tests.helpers import wait_until


@pytest.fixture(scope="module")
def workers(client):
    return Workers(client.settings)


def set_of(workers, task_id):
    return next((s for s in workers.sets() if s["key"].startswith(f"{task_id}@")), None)


def test_sigkill_mid_job_succeeds_on_a_replacement(client, workers, tmp_path):
    body = """
    import os, pathlib, time
    marker = pathlib.Path(input_data["marker"])
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        time.sleep(60)
    return {"pid": os.getpid()}
    """
    client.register_task(make_task(tmp_path, "killable", body, max_retries=2, timeout=120))
    marker = tmp_path / "pid"
    execution_id = client.submit("killable", {"marker": str(marker)})
    pid = int(wait_until(lambda: marker.exists() and marker.read_text(), what="the job to start"))

    os.kill(pid, signal.SIGKILL)
    record = client.wait(execution_id, timeout=120)

    assert record.status == ExecutionStatus.SUCCEEDED, record.error
    assert record.attempts == 2
    assert record.result["pid"] != pid

    def shown() -> list:
        live = [
            w
            for w in worker_status(client.records, client.settings)
            if w.task_id == "killable" and w.state != "dead"
        ]
        # `wtm worker status` shows the replacement, and the killed one no longer live
        if record.worker_id in {w.worker_id for w in live} and all(w.pid != pid for w in live):
            return live
        return []

    wait_until(shown, what="status to show the replacement and not the killed replica")


def test_a_hung_call_is_killed_replaced_and_the_next_job_runs(client, workers, tmp_path):
    body = """
    import time
    if not input_data.get("fast"):
        time.sleep(60)
    return {"ok": True}
    """
    client.register_task(make_task(tmp_path, "hangs", body, timeout=2, max_retries=0))
    record = client.run("hangs", {}, timeout=60)

    assert record.status == ExecutionStatus.FAILED
    assert record.error.type == "TaskTimeoutError"
    assert "hangs" in record.error.message and "2s" in record.error.message
    hung = record.worker_id
    wait_until(
        lambda: (s := set_of(workers, "hangs")) and s["ready"] and hung not in s["ready"],
        timeout=20,
        what="a replacement replica",
    )
    after = client.run("hangs", {"fast": True}, timeout=60)
    assert after.status == ExecutionStatus.SUCCEEDED
    assert after.worker_id != hung


def test_retryable_errors_are_retried_until_success(client, tmp_path):
    body = """
    type(self).calls += 1
    if type(self).calls <= 2:
        raise RetryableError(f"not yet ({type(self).calls})")
    return {"calls": type(self).calls}
    """
    client.register_task(make_task(tmp_path, "twice_flaky", body, max_retries=3))
    record = client.run("twice_flaky", {})
    assert record.status == ExecutionStatus.SUCCEEDED
    assert record.attempts == 3
    assert record.steps[0].attempts == 3


def test_n_replicas_serve_m_jobs_with_n_model_loads(client, workers, ray_connected, tmp_path):
    body = 'import time\ntime.sleep(0.02)\nreturn {"i": input_data["i"]}'
    spec = {"replicas": {"min": 0, "max": 3, "max_concurrency": 1}}
    client.register_task(make_task(tmp_path, "loaded_once", body, **spec))
    workers.scale("loaded_once", 3)
    wait_until(lambda: len(set_of(workers, "loaded_once")["ready"]) == 3, what="3 replicas")

    ids = [client.submit("loaded_once", {"i": i}) for i in range(30)]
    records = [client.wait(i, timeout=120) for i in ids]

    assert [r.result["i"] for r in records] == list(range(30))
    names = set_of(workers, "loaded_once")["ready"]
    stats = [
        ray_connected.get(ray_connected.get_actor(n, namespace="wtm").stats.remote()) for n in names
    ]
    assert sum(s["loads"] for s in stats) == 3
    assert sum(s["processed"] for s in stats) == 30
    assert {r.worker_id for r in records} <= set(names)
    workers.scale("loaded_once", 0)


def test_a_burst_of_200_jobs_scales_up_to_max_and_back_down(client, workers, tmp_path):
    # 50 ms a job: one replica alone would need 10 s, ample time for the second to start.
    body = 'import time\ntime.sleep(0.05)\nreturn {"i": input_data["i"]}'
    spec = {"replicas": {"min": 0, "max": 2, "max_concurrency": 1}}
    client.register_task(make_task(tmp_path, "bursty", body, **spec))

    ids = [client.submit("bursty", {"i": i}) for i in range(200)]
    records = [client.wait(i, timeout=300) for i in ids]

    assert all(r.status == ExecutionStatus.SUCCEEDED for r in records)
    assert sorted(r.result["i"] for r in records) == list(range(200))
    assert len({r.worker_id for r in records}) == 2  # scaled up to max, not past it
    wait_until(
        lambda: set_of(workers, "bursty")["ready"] == [],
        timeout=60,
        what="the idle set to scale down",
    )


def test_batching_task_gets_batches_and_each_job_its_own_result(client, tmp_path):
    folder = make_task(
        tmp_path,
        "batched",
        'return {"y": input_data["x"] * 2, "batch_size": 1}',
        batch={"max_size": 8, "wait_ms": 200},
        replicas={"min": 0, "max": 1, "max_concurrency": 8},
    )
    with (folder / "task.py").open("a") as f:
        f.write(
            "\n    def process_batch(self, inputs):\n"
            "        return [{'y': x['x'] * 2, 'batch_size': len(inputs)} for x in inputs]\n"
        )
    client.register_task(folder)
    client.run("batched", {"x": -1})  # start the replica first

    ids = [client.submit("batched", {"x": i}) for i in range(16)]
    records = [client.wait(i, timeout=120) for i in ids]

    assert [r.result["y"] for r in records] == [2 * i for i in range(16)]
    assert max(r.result["batch_size"] for r in records) > 1


MB = 10**6


def test_a_task_over_its_memory_limit_fails_and_its_replica_is_replaced(client, workers, tmp_path):
    body = """
    import os, time
    if input_data.get("hog"):
        held = [b"x" * (100 * 10**6) for _ in range(15)]  # 1.5 GB, touched
        time.sleep(5)
    return {"pid": os.getpid()}
    """
    spec = {"resources": {"memory": "600 MB"}, "max_retries": 2, "timeout": 60}
    client.register_task(make_task(tmp_path, "memory_hog", body, **spec))

    record = client.run("memory_hog", {"hog": True}, timeout=60)

    assert record.status == ExecutionStatus.FAILED
    assert record.error.type == "MemoryLimitExceeded"
    assert "memory_hog" in record.error.message and "600 MB" in record.error.message
    assert record.attempts == 1  # the same input would pass the limit again
    assert record.memory_usage > 600 * MB
    hog = record.worker_id
    wait_until(
        lambda: (s := set_of(workers, "memory_hog")) and s["ready"] and hog not in s["ready"],
        timeout=30,
        what="a replacement replica",
    )
    after = client.run("memory_hog", {}, timeout=60)
    assert after.status == ExecutionStatus.SUCCEEDED, after.error
    assert after.worker_id != hog


def test_memory_usage_is_the_steps_peak_not_what_is_left_after_it(client, tmp_path):
    body = """
    import psutil, time
    held = b"x" * (400 * 10**6)
    time.sleep(0.5)  # a model's working memory, held for a while
    del held
    return {"rss_after": psutil.Process().memory_info().rss}
    """
    client.register_task(make_task(tmp_path, "memory_peak", body))

    record = client.run("memory_peak", {}, timeout=60)

    assert record.status == ExecutionStatus.SUCCEEDED, record.error
    assert record.memory_usage >= record.result["rss_after"] + 300 * MB
