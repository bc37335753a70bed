"""Job handles as a notebook uses them: results, failures, timeouts, map, as_completed,
reattaching, per-run cache bypass, events, reprs and timelines (real stack)."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime

import pytest

from orchestrator import (
    Client,
    ExecutionFailed,
    ExecutionStatus,
    Job,
    ValidationError,
    WaitTimeout,
)
from tests.conftest import make_task

SQUARE = """
import pathlib
if input_data.get("log"):
    with open(input_data["log"], "a") as f:  # one line per run of the body
        f.write(f"{input_data['n']}\\n")
if input_data.get("fail"):
    raise FatalError(f"refused {input_data['n']}")
import time
time.sleep(input_data.get("sleep", 0))
return {"n": input_data["n"], "square": input_data["n"] ** 2}
"""
SCHEMA = {
    "type": "object",
    "properties": {
        "n": {"type": "integer"},
        "sleep": {"type": "number"},
        "fail": {"type": "boolean"},
        "log": {"type": "string"},
    },
    "required": ["n"],
}


@pytest.fixture(scope="module")
def square(client, tmp_path_factory):
    folder = make_task(
        tmp_path_factory.mktemp("jobs"),
        "square",
        SQUARE,
        replicas={"max_concurrency": 4},
        input_schema=SCHEMA,
    )
    client.register_task(folder)
    return "square"


def test_result_returns_the_output_and_raises_execution_failed_with_the_record(client, square):
    job = client.submit(square, {"n": 7})
    assert isinstance(job, Job) and job.target == square
    assert job.result(timeout=60) == {"n": 7, "square": 49}
    assert job.status == ExecutionStatus.SUCCEEDED and f"{job.status}" == "succeeded"

    failing = client.submit(square, {"n": 3, "fail": True})
    with pytest.raises(ExecutionFailed, match="refused 3") as raised:
        failing.result(timeout=60)
    assert raised.value.record.execution_id == failing.id
    assert raised.value.record.status == ExecutionStatus.FAILED


def test_result_raises_timeout_error_while_the_execution_goes_on(client, square):
    job = client.submit(square, {"n": 1, "sleep": 3})
    with pytest.raises(TimeoutError) as raised:
        job.result(timeout=0.3)
    assert isinstance(raised.value, WaitTimeout)
    assert raised.value.record.status in (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)
    with pytest.raises(TimeoutError):
        client.wait(job.id, timeout=0.1)  # the client's wait says so too
    assert job.result(timeout=60)["square"] == 1  # it was not disturbed


def test_map_returns_jobs_in_input_order_and_as_completed_yields_each_once(client, square):
    inputs = [{"n": n, "sleep": 0.05 * (n % 3)} for n in range(20)]
    jobs = client.map(square, inputs)

    assert [job.target for job in jobs] == [square] * 20
    seen = [job.id for job in client.as_completed(jobs, timeout=120)]
    assert sorted(seen) == sorted(job.id for job in jobs) and len(set(seen)) == 20
    results = client.gather(jobs, timeout=60)
    assert [r["n"] for r in results] == list(range(20))
    assert [r["square"] for r in results] == [n * n for n in range(20)]


def test_map_validates_every_input_before_submitting_any(client, square):
    before = len(client.executions(target=square, limit=10_000))
    with pytest.raises(ValidationError, match="square input"):
        client.map(square, [{"n": 1}, {"n": 2}, {"n": "three"}])
    assert len(client.executions(target=square, limit=10_000)) == before


def test_map_uploads_no_file_when_a_later_input_is_refused(client, tmp_path):
    import hashlib
    import uuid

    from orchestrator import keys

    schema = {
        "type": "object",
        "properties": {"a_path": {"type": "string"}, "n": {"type": "integer"}},
        "required": ["a_path", "n"],
    }
    client.register_task(make_task(tmp_path, "mapped_files", "return {}", input_schema=schema))
    first = tmp_path / "first.bin"
    first.write_bytes(uuid.uuid4().bytes)
    key = keys.input_key(hashlib.sha256(first.read_bytes()).hexdigest(), first.name)

    with pytest.raises(ValidationError, match="mapped_files input"):
        client.map(
            "mapped_files", [{"a_path": str(first), "n": 1}, {"a_path": str(first), "n": "x"}]
        )
    assert not client.objects.exists(keys.DATA_BUCKET, key)


def test_gather_raises_the_first_failure_unless_asked_to_return_it(client, square):
    jobs = client.map(square, [{"n": 1}, {"n": 2, "fail": True}, {"n": 3}])
    with pytest.raises(ExecutionFailed, match="refused 2"):
        client.gather(jobs, timeout=60)
    out = client.gather(jobs, timeout=60, return_exceptions=True)
    assert out[0]["square"] == 1 and out[2]["square"] == 9
    assert isinstance(out[1], ExecutionFailed) and out[1].record.execution_id == jobs[1].id


def test_a_new_client_reattaches_to_a_job_by_id(client, square, stack_settings):
    job = client.submit(square, {"n": 12, "sleep": 0.5})
    later = Client(stack_settings)  # as after a notebook kernel restart
    try:
        again = later.job(job.id)
        assert again == job and again.target == square
        assert again.result(timeout=60) == {"n": 12, "square": 144}
        with pytest.raises(Exception, match="unknown execution"):
            later.job("01NOSUCHEXECUTION000000000")
    finally:
        later.close()


def test_cache_false_runs_a_cached_step_again(client, tmp_path):
    log = tmp_path / "runs.log"
    client.register_task(make_task(tmp_path, "cached_square", SQUARE))
    path = tmp_path / "cached.json"
    pipeline = {
        "pipeline_id": "cached_squares",
        "steps": [{"task_id": "cached_square"}],
        "global_settings": {"enable_caching": True},
    }
    path.write_text(json.dumps(pipeline))
    client.register_pipelines(path)
    document = {"n": 5, "log": str(log)}

    first = client.submit("cached_squares", document)
    assert first.result(timeout=60)["square"] == 25
    cached = client.submit("cached_squares", document)
    assert cached.result(timeout=60)["square"] == 25 and cached.steps[0].cache_hit
    fresh = client.submit("cached_squares", document, cache=False)
    assert fresh.result(timeout=60)["square"] == 25 and not fresh.steps[0].cache_hit
    assert log.read_text().split() == ["5", "5"]  # the body ran for the first and the fresh


def test_events_follow_the_execution_to_its_end(client, square):
    job = client.submit(square, {"n": 2, "sleep": 0.5})
    statuses = [event.status for event in job.events(timeout=60)]
    assert statuses[-1] == ExecutionStatus.SUCCEEDED
    assert all(not s.terminal for s in statuses[:-1])
    assert [e.status for e in job.events(timeout=10)] == [ExecutionStatus.SUCCEEDED]


def test_await_job_gives_the_result(client, square):
    async def main():
        return await asyncio.gather(*(client.submit(square, {"n": n}) for n in (4, 5)))

    assert [r["square"] for r in asyncio.run(main())] == [16, 25]


def test_records_read_well_in_a_notebook(client, square):
    job = client.submit(square, {"n": 9})
    record = job.wait(timeout=60)

    assert repr(job).startswith(f"<Job {job.id} {square}: succeeded in ")
    assert repr(record) == (
        f"<Execution {job.id} task {square}: succeeded in {record.duration:.3f}s>"
    )
    assert "succeeded" in job._repr_html_() and job.id in record._repr_html_()
    assert isinstance(record.submitted, datetime) and record.submitted.tzinfo is not None
    assert record.finished.timestamp() == pytest.approx(record.finished_at)

    listed = client.executions(target=square, limit=5)
    rows = listed.to_dict()
    assert rows[0]["execution_id"] == listed[0].execution_id
    assert rows[0]["status"] == listed[0].status.value
    assert isinstance(rows[0]["submitted"], datetime)
    assert "<table>" in listed._repr_html_()


def test_timeline_draws_each_step_and_outlines_the_critical_path(client, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    for task_id, sleep in (("tl_a", 0.1), ("tl_slow", 0.6), ("tl_fast", 0.1), ("tl_d", 0.1)):
        body = f"import time\ntime.sleep({sleep})\nreturn {{'ok': True}}"
        client.register_task(make_task(tmp_path, task_id, body))
    pipeline = {
        "pipeline_id": "timeline_demo",
        "steps": [
            {"step_id": "a", "task_id": "tl_a"},
            {"step_id": "slow", "task_id": "tl_slow", "depends_on": ["a"]},
            {"step_id": "fast", "task_id": "tl_fast", "depends_on": ["a"]},
            {"step_id": "d", "task_id": "tl_d", "depends_on": ["slow", "fast"]},
        ],
    }
    (tmp_path / "tl.json").write_text(json.dumps(pipeline))
    client.register_pipelines(tmp_path / "tl.json")

    job = client.submit("timeline_demo", {})
    job.wait(timeout=120)
    figure = job.timeline()
    (ax,) = figure.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "slow", "fast", "d"]
    runs = {p.get_gid().split(":")[0]: p for p in ax.patches if str(p.get_gid()).endswith(":run")}
    outlined = {step for step, bar in runs.items() if bar.get_edgecolor()[:3] == (0, 0, 0)}
    assert outlined == {"a", "slow", "d"}  # a -> slow -> d decided the end


def test_map_with_redis_unreachable_takes_back_every_record(tmp_path, free_port):
    from orchestrator import EnqueueError, Settings

    settings = Settings(
        home=tmp_path,
        redis={"url": f"redis://127.0.0.1:{free_port}/0"},  # nothing listens there
        ray={"address": "127.0.0.1:1"},  # not embedded: nothing is started
    )
    offline = Client(settings)
    try:
        offline.register_task(make_task(tmp_path / "pkgs", "unreached", "return {}"))
        with pytest.raises(EnqueueError, match="nothing was submitted"):
            offline.map("unreached", [{} for _ in range(5)])
        assert offline.executions() == []  # nothing queued, nothing left behind
    finally:
        offline.close()
