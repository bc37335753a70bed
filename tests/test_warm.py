"""Warm when it matters, on the session's real stack: a plan's replicas start together,
cache hits need no replica, and every wait is on the record while it lasts."""

from __future__ import annotations

import json

from orchestrator import Client
from orchestrator.models import ExecutionStatus, StepPhase
from tests.conftest import make_task
from tests.helpers import wait_until

LOAD_S = 2.0  # each task's model load (its setup), in the cold-start tests


def slow_loading(client: Client, tmp_path, task_id: str, work: float = 0.05, **spec) -> None:
    body = f"import time\ntime.sleep(input_data.get('work', {work}))\nreturn {{'ok': True}}"
    setup = f"import time\ntime.sleep({LOAD_S})"
    client.register_task(make_task(tmp_path, task_id, body, setup=setup, **spec))


def register_pipeline(client: Client, tmp_path, spec: dict, name: str = "p") -> None:
    path = tmp_path / f"{spec.get('pipeline_id', name)}.json"
    path.write_text(json.dumps(spec))
    client.register_pipelines(path)


def starts(client: Client, task_id: str) -> list:
    return [e for e in client.replica_events(200, task_id) if e.event == "started"]


def test_a_cold_chain_starts_every_replica_before_its_first_step_ends(client, tmp_path):
    tasks = ["chain_a", "chain_b", "chain_c"]
    for task_id in tasks:
        slow_loading(client, tmp_path, task_id)
    register_pipeline(
        client,
        tmp_path,
        {
            "pipeline_id": "cold_chain",
            "steps": [
                {"step_id": "a", "task_id": "chain_a"},
                {"step_id": "b", "task_id": "chain_b", "depends_on": ["a"]},
                {"step_id": "c", "task_id": "chain_c", "depends_on": ["b"]},
            ],
        },
    )

    record = client.run("cold_chain", {}, timeout=120)

    assert record.status == ExecutionStatus.SUCCEEDED
    first_ended = record.steps[0].finished_at
    # Stage by stage, b's replica would start only once a ended, and c's once b ended.
    for task_id in tasks:
        [started] = starts(client, task_id)
        assert started.at < first_ended, f"{task_id}'s replica started after step a ended"
    # One model load on the critical path, not three: well under 3 x LOAD_S end to end.
    assert record.finished_at - record.submitted_at < 3 * LOAD_S
    # Each step waited for its replica, and said so on the record.
    assert any(phase.waiting for phase, _ in record.steps[0].waits())


def test_a_cold_parallel_group_of_one_task_runs_its_steps_side_by_side(client, tmp_path):
    slow_loading(client, tmp_path, "group_a", work=0.5)
    slow_loading(client, tmp_path, "group_pair", work=1.5)
    slow_loading(client, tmp_path, "group_d")
    register_pipeline(
        client,
        tmp_path,
        {
            "pipeline_id": "cold_group",
            "steps": [
                {"step_id": "a", "task_id": "group_a"},
                {"step_id": "b", "task_id": "group_pair", "depends_on": ["a"]},
                {"step_id": "c", "task_id": "group_pair", "depends_on": ["a"]},
                {"step_id": "d", "task_id": "group_d", "depends_on": ["b", "c"]},
            ],
        },
    )

    record = client.run("cold_group", {}, timeout=120)

    assert record.status == ExecutionStatus.SUCCEEDED
    b, c = record.steps[1], record.steps[2]
    assert b.worker_id != c.worker_id  # two replicas of the task, one per step
    overlap = min(b.finished_at, c.finished_at) - max(b.started_at, c.started_at)
    assert overlap > 0, f"b and c ran one after the other ({overlap:.2f}s of overlap)"


def test_a_cached_pipeline_runs_with_every_replica_stopped(client, tmp_path, ray_connected):
    from orchestrator.workers import Workers

    for task_id in ("cached_a", "cached_b"):
        client.register_task(make_task(tmp_path, task_id, "return {'n': input_data['n'] + 1}"))
    register_pipeline(
        client,
        tmp_path,
        {
            "pipelines": {
                "cached_pipe": {
                    "pipeline_id": "cached_pipe",
                    "steps": [
                        {"step_id": "a", "task_id": "cached_a", "input_mapping": {"n": "$.n"}},
                        {
                            "step_id": "b",
                            "task_id": "cached_b",
                            "depends_on": ["a"],
                            "input_mapping": {"n": "$.a.n"},
                        },
                    ],
                }
            },
            "global_settings": {"enable_caching": True},
        },
        name="cached_pipe",
    )
    first = client.run("cached_pipe", {"n": 1}, timeout=120)
    assert first.status == ExecutionStatus.SUCCEEDED and not first.steps[0].cache_hit
    workers = Workers(client.settings)
    for task_id in ("cached_a", "cached_b"):
        workers.stop(task_id)
    before = {t: len(starts(client, t)) for t in ("cached_a", "cached_b")}

    again = client.run("cached_pipe", {"n": 1}, timeout=60)

    assert again.status == ExecutionStatus.SUCCEEDED
    assert client.result_of(again) == {"n": 3}
    assert [s.cache_hit for s in again.steps] == [True, True]
    assert [s.phases[-2].phase for s in again.steps] == [StepPhase.CACHED] * 2
    assert {t: len(starts(client, t)) for t in before} == before  # no replica started
    assert not [w for w in client.workers() if w.task_id in before and w.state != "dead"]


def test_a_running_step_and_a_waiting_one_say_so_on_their_records(client, tmp_path):
    gate = tmp_path / "open"
    body = f"""
import pathlib, time
while not pathlib.Path({str(gate)!r}).exists():
    time.sleep(0.05)
return {{'ok': True}}
"""
    one = {"replicas": {"min": 0, "max": 1, "max_concurrency": 1}}
    client.register_task(make_task(tmp_path, "warm_one_slot", body, **one))
    running = client.submit("warm_one_slot", {})
    behind = client.submit("warm_one_slot", {})
    try:
        record = wait_until(
            lambda: (r := running.record).status == ExecutionStatus.RUNNING and r,
            timeout=60,
            what="the first job to start",
        )
        step = record.steps[0]
        assert step.started_at is not None and step.phase == StepPhase.RUNNING
        assert step.status == "running" and step.finished_at is None
        waiting = wait_until(
            lambda: (r := behind.record).steps[0].phase == StepPhase.BUSY and r,
            timeout=30,
            what="the second job to wait for the slot",
        )
        assert waiting.status == ExecutionStatus.QUEUED  # no step of it can run yet
        assert waiting.steps[0].started_at is None
    finally:
        gate.touch()
    assert behind.wait(timeout=60).status == ExecutionStatus.SUCCEEDED
    phase, waited = behind.record.steps[0].waits()[-1]
    assert phase == StepPhase.BUSY and waited > 0


def test_the_timeline_of_a_cold_run_names_the_replica_start_and_the_queue_wait(client, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    for task_id in ("tl_cold_a", "tl_cold_b"):
        slow_loading(client, tmp_path, task_id)
    register_pipeline(
        client,
        tmp_path,
        {
            "pipeline_id": "timeline_cold_with_a_rather_long_name_that_must_still_fit",
            "steps": [
                {"step_id": "a", "task_id": "tl_cold_a"},
                {"step_id": "b", "task_id": "tl_cold_b", "depends_on": ["a"]},
            ],
        },
    )
    job = client.submit("timeline_cold_with_a_rather_long_name_that_must_still_fit", {})
    job.wait(timeout=120)

    figure = job.timeline()
    (ax,) = figure.axes
    parts = {p.get_gid() for p in ax.patches if p.get_gid()}
    assert {"a:queue wait", "a:replica start and model load", "a:run", "b:run"} <= parts
    legend = {t.get_text() for t in ax.get_legend().get_texts()}
    assert {"queue wait", "replica start and model load", "run", "critical path"} <= legend
    assert ax.get_xlim()[0] == 0  # from submission, not from the first step
    path = tmp_path / "timeline.png"
    figure.savefig(path)
    renderer = figure.canvas.get_renderer()
    title = ax.title.get_window_extent(renderer)
    assert figure.bbox.x0 <= title.x0 and title.x1 <= figure.bbox.x1  # the title fits
    assert path.stat().st_size > 0
