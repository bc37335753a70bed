"""Pipelines through the queue on the session's stack: the issue's 'done when' list."""

from __future__ import annotations

import itertools
import json

import pytest
from typer.testing import CliRunner

from cli.main import app
from orchestrator import templates
from orchestrator.errors import NotFoundError, SpecError, ValidationError
from orchestrator.models import ExecutionStatus
from tests.conftest import IMAGES, ROOT, TASK_PKGS, make_task

runner = CliRunner()
GRID = str(IMAGES / "astronaut_grid.jpg")


@pytest.fixture(scope="module")
def face_client(client):
    for folder in sorted(TASK_PKGS.iterdir()):
        if (folder / "task.json").is_file():
            client.register_task(folder)
    for path in sorted((ROOT / "pipelines").glob("*.json")):
        client.register_pipelines(path)
    return client


def register(client, tmp_path, pipeline: dict) -> str:
    path = tmp_path / f"{pipeline['pipeline_id']}.json"
    path.write_text(json.dumps(pipeline))
    client.register_pipelines(path)
    return pipeline["pipeline_id"]


def test_face_pipeline_returns_every_face_with_attributes_and_features(face_client):
    record = face_client.run("face_processing_pipeline", {"image_path": GRID})

    assert record.status == ExecutionStatus.SUCCEEDED, record.error
    faces = record.result["faces"]
    assert len(faces) == 4
    for face in faces:
        assert {"face_id", "bbox", "attributes", "features"} <= set(face)
        assert len(face["features"]) == 128
        assert face["attributes"]["eyes"] >= 0
    summary = record.result["summary"]
    assert summary["face_count"] == 4
    assert set(summary["step_times"]) == {"detection", "attributes", "features", "merge"}
    assert summary["total_time"] > 0
    steps = {s.step_id: s for s in record.steps}
    # a step starts only after its dependencies finished
    assert steps["attributes"].started_at >= steps["detection"].finished_at
    assert steps["merge"].started_at >= max(
        steps["attributes"].finished_at, steps["features"].finished_at
    )


def test_face_pipeline_on_a_photo_without_faces(face_client):
    record = face_client.run("face_processing_pipeline", {"image_path": str(IMAGES / "coffee.jpg")})
    assert record.status == ExecutionStatus.SUCCEEDED, record.error
    assert record.result["faces"] == [] and record.result["summary"]["face_count"] == 0


def test_steps_of_a_parallel_group_overlap(client, tmp_path):
    sleepy = 'import time\ntime.sleep(1.0)\nreturn {"slept": True}'
    for name in ("par_b", "par_c"):
        client.register_task(make_task(tmp_path, name, sleepy))
    client.register_task(make_task(tmp_path, "par_a", 'return {"a": 1}'))
    pid = register(
        client,
        tmp_path,
        {
            "pipeline_id": "overlap",
            "steps": [
                {"task_id": "par_a"},
                {"task_id": "par_b", "depends_on": ["par_a"], "parallel_group": "g"},
                {"task_id": "par_c", "depends_on": ["par_a"], "parallel_group": "g"},
            ],
        },
    )
    client.run(pid, {})  # warm: replicas start on demand, at different speeds
    record = client.run(pid, {})
    assert record.status == ExecutionStatus.SUCCEEDED, record.error
    steps = {s.step_id: s for s in record.steps}
    b, c = steps["par_b"], steps["par_c"]
    assert b.started_at < c.finished_at and c.started_at < b.finished_at  # intervals intersect
    assert record.result == {"par_b": {"slept": True}, "par_c": {"slept": True}}  # two sinks


def test_unmapped_step_gets_the_input_merged_with_its_dependencies(client, tmp_path):
    client.register_task(make_task(tmp_path, "emit", 'return {"value": 42}'))
    client.register_task(make_task(tmp_path, "echo", "return {'seen': input_data}"))
    pid = register(
        client,
        tmp_path,
        {
            "pipeline_id": "merge_input",
            "steps": [{"task_id": "emit"}, {"task_id": "echo", "depends_on": ["emit"]}],
        },
    )
    record = client.run(pid, {"user": "ada"})
    assert record.result == {"seen": {"user": "ada", "emit": {"value": 42}}}


def test_a_failing_middle_step_skips_its_dependents(client, tmp_path):
    client.register_task(make_task(tmp_path, "first", 'return {"ok": 1}'))
    client.register_task(make_task(tmp_path, "breaks", 'raise FatalError("model file corrupt")'))
    client.register_task(make_task(tmp_path, "after", 'return {"never": True}'))
    pid = register(
        client,
        tmp_path,
        {
            "pipeline_id": "breaking",
            "steps": [
                {"task_id": "first"},
                {"task_id": "breaks", "depends_on": ["first"]},
                {"task_id": "after", "depends_on": ["breaks"]},
            ],
        },
    )
    record = client.run(pid, {})
    assert record.status == ExecutionStatus.FAILED
    assert record.error.step == "breaks"
    assert "breaks" in record.error.message and "model file corrupt" in record.error.message
    status = {s.step_id: s.status for s in record.steps}
    assert status == {"first": "succeeded", "breaks": "failed", "after": "skipped"}


def test_a_step_that_fails_once_is_retried(client, tmp_path):
    body = """
    type(self).calls += 1
    if type(self).calls == 1:
        raise RetryableError("cold cache")
    return {"calls": type(self).calls}
    """
    client.register_task(make_task(tmp_path, "flaky_step", body))
    pid = register(
        client,
        tmp_path,
        {"pipeline_id": "retrying", "steps": [{"task_id": "flaky_step", "retry_count": 2}]},
    )
    record = client.run(pid, {})
    assert record.status == ExecutionStatus.SUCCEEDED, record.error
    assert record.steps[0].attempts == 2


def test_caching_reuses_step_results_until_the_code_changes(client, tmp_path):
    folder = make_task(tmp_path, "cached_step", 'return {"v": input_data["x"] * 2}')
    client.register_task(folder)
    pid = register(
        client,
        tmp_path,
        {
            "pipeline_id": "cached",
            "steps": [{"task_id": "cached_step"}],
            "global_settings": {"enable_caching": True},
        },
    )

    first = client.run(pid, {"x": 21})
    second = client.run(pid, {"x": 21})
    assert first.result == second.result == {"v": 42}
    assert [s.cache_hit for s in first.steps] == [False]
    assert [s.cache_hit for s in second.steps] == [True]

    (folder / "task.py").write_text((folder / "task.py").read_text().replace("* 2", "* 3"))
    client.register_task(folder, force=True)
    third = client.run(pid, {"x": 21})
    assert third.result == {"v": 63} and not third.steps[0].cache_hit


def test_bad_pipeline_input_is_rejected_before_anything_is_queued(face_client):
    before = len(face_client.executions(limit=10_000))
    with pytest.raises(SpecError, match="missing required field 'image_path'"):
        face_client.run("face_processing_pipeline", {"image_data": "x"})
    with pytest.raises(SpecError, match="format 'gif'"):
        face_client.run("face_processing_pipeline", {"image_path": "photo.gif"})
    with pytest.raises(NotFoundError, match="unknown task or pipeline 'nope_pipeline'"):
        face_client.run("nope_pipeline", {})
    # The first step reads only the pipeline input: its task's schema is checked up front.
    with pytest.raises(ValidationError, match=r"step 'sentiment' \(text_sentiment\) input"):
        face_client.run("text_sentiment_pipeline", "hello")
    assert len(face_client.executions(limit=10_000)) == before


def test_seed_custom_pipeline_after_task_create(face_client, tmp_path, cli_env):
    face_client.register_task(templates.create("my_custom_task", "ml", "A", tmp_path))
    config = {
        "pipelines": {
            "my_custom_pipeline": {
                "pipeline_id": "my_custom_pipeline",
                "name": "My Custom Pipeline",
                "description": "Custom processing workflow",
                "enabled": True,
                "steps": [
                    {"task_id": "face_detection", "timeout": 30, "retry_count": 3},
                    {
                        "task_id": "my_custom_task",
                        "depends_on": ["face_detection"],
                        "timeout": 60,
                        "retry_count": 2,
                    },
                ],
            }
        }
    }
    path = tmp_path / "my_pipeline.json"
    path.write_text(json.dumps(config))

    registered = runner.invoke(app, ["pipeline", "register", "--json-config", str(path)])
    assert registered.exit_code == 0, registered.output
    result = runner.invoke(
        app,
        [
            "pipeline",
            "execute",
            "my_custom_pipeline",
            json.dumps({"image_path": GRID}),
            "--workers",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["status"] == "succeeded"
    assert record["result"]["prediction"] in ("positive", "negative")


def test_pipeline_cli_list_info_validate(face_client, cli_env, tmp_path):
    listed = json.loads(runner.invoke(app, ["pipeline", "list", "--json"]).stdout)
    assert {"face_processing_pipeline", "simple_face_pipeline"} <= {
        p["pipeline_id"] for p in listed
    }
    info = runner.invoke(app, ["pipeline", "info", "face_processing_pipeline"])
    assert info.exit_code == 0
    assert "flowchart TD" in info.stdout and "subgraph face_analysis" in info.stdout
    cyclic = tmp_path / "cyclic.json"
    cyclic.write_text(
        json.dumps(
            {
                "pipeline_id": "cyc",
                "steps": [
                    {"task_id": "face_detection", "step_id": "x", "depends_on": ["y"]},
                    {"task_id": "face_detection", "step_id": "y", "depends_on": ["x"]},
                ],
            }
        )
    )
    bad = runner.invoke(app, ["pipeline", "validate", str(cyclic)])
    assert bad.exit_code == 2 and "dependency cycle x -> y -> x" in bad.stderr
    good = runner.invoke(
        app, ["pipeline", "validate", str(ROOT / "pipelines" / "face_processing_pipeline.json")]
    )
    assert good.exit_code == 0 and "detection → {attributes, features} → merge" in good.stdout
    assert runner.invoke(app, ["pipeline", "info", "cyc"]).exit_code == 3  # nothing stored


def test_max_parallel_tasks_bounds_the_steps_in_flight(client, tmp_path):
    sleepy = 'import time\ntime.sleep(0.5)\nreturn {"done": True}'
    for name in ("lane_a", "lane_b", "lane_c"):
        client.register_task(make_task(tmp_path, name, sleepy))
    pid = register(
        client,
        tmp_path,
        {
            "pipeline_id": "one_at_a_time",
            "steps": [
                {"task_id": n, "parallel_group": "g"} for n in ("lane_a", "lane_b", "lane_c")
            ],
            "global_settings": {"max_parallel_tasks": 1},
        },
    )
    record = client.run(pid, {})
    assert record.status == ExecutionStatus.SUCCEEDED, record.error
    spans = sorted((s.started_at, s.finished_at) for s in record.steps)
    assert all(prev_end <= start for (_, prev_end), (start, _) in itertools.pairwise(spans))


def test_a_task_a_pipeline_uses_is_not_deleted_without_force(face_client, cli_env):
    result = runner.invoke(app, ["task", "delete", "face_merge"])
    assert result.exit_code == 4, result.output
    assert "used by pipeline face_processing_pipeline" in result.stderr
    # Its steps pin no version: they run the latest, so that version is in use too.
    latest = face_client.task("face_merge").version
    result = runner.invoke(app, ["task", "delete", "face_merge", "--version", latest])
    assert result.exit_code == 4 and "face_processing_pipeline" in result.stderr
    assert face_client.task("face_merge")  # still there


def test_global_settings_defaults_apply_at_run_time_and_a_tasks_own_timeout_wins(client, tmp_path):
    hangs = 'import time\ntime.sleep(60)\nreturn {"never": True}'
    slow = 'import time\ntime.sleep(3)\nreturn {"slow": True}'
    # Neither timeout nor retries in task.json: the pipeline's defaults must reach it.
    client.register_task(make_task(tmp_path, "sets_nothing", hangs, timeout=None, max_retries=None))
    client.register_task(make_task(tmp_path, "sets_its_own", slow, timeout=30, max_retries=None))
    pid = register(
        client,
        tmp_path,
        {
            "pipeline_id": "global_defaults",
            "steps": [
                {"task_id": "sets_nothing", "parallel_group": "g"},
                {"task_id": "sets_its_own", "parallel_group": "g"},
            ],
            "global_settings": {"default_timeout": 2, "default_retry_count": 0},
        },
    )
    record = client.run(pid, {}, timeout=120)

    steps = {s.step_id: s for s in record.steps}
    assert steps["sets_nothing"].status == "failed"
    assert steps["sets_nothing"].error.type == "TaskTimeoutError"
    assert "2s" in steps["sets_nothing"].error.message
    assert steps["sets_nothing"].attempts == 1  # default_retry_count 0, not the system's 3
    assert steps["sets_its_own"].status == "succeeded"  # 3 s is within its own 30 s


def test_pipeline_execute_runs_the_pipeline_when_a_task_has_its_name(client, tmp_path, cli_env):
    client.register_task(make_task(tmp_path, "twin_name", 'return {"from": "task"}'))
    client.register_task(make_task(tmp_path, "twin_step", 'return {"from": "pipeline"}'))
    register(client, tmp_path, {"pipeline_id": "twin_name", "steps": [{"task_id": "twin_step"}]})

    as_pipeline = runner.invoke(app, ["pipeline", "execute", "twin_name", "{}", "--json"])
    as_run = runner.invoke(app, ["run", "twin_name", "{}", "--json"])  # a task comes first

    assert as_pipeline.exit_code == 0, as_pipeline.output
    assert json.loads(as_pipeline.stdout)["result"] == {"from": "pipeline"}
    assert json.loads(as_run.stdout)["result"] == {"from": "task"}
    missing = runner.invoke(app, ["pipeline", "execute", "no_such_pipeline", "{}"])
    assert missing.exit_code == 3 and "unknown pipeline 'no_such_pipeline'" in missing.stderr


def test_a_parallel_group_of_one_task_runs_on_two_replicas_by_default(client, tmp_path):
    sleepy = 'import os, time\ntime.sleep(2.0)\nreturn {"pid": os.getpid()}'
    client.register_task(make_task(tmp_path, "same_twice", sleepy))  # no replicas section
    client.register_task(make_task(tmp_path, "same_start", 'return {"a": 1}'))
    pid = register(
        client,
        tmp_path,
        {
            "pipeline_id": "one_task_group",
            "steps": [
                {"task_id": "same_start"},
                {
                    "step_id": "b",
                    "task_id": "same_twice",
                    "depends_on": ["same_start"],
                    "parallel_group": "g",
                },
                {
                    "step_id": "c",
                    "task_id": "same_twice",
                    "depends_on": ["same_start"],
                    "parallel_group": "g",
                },
            ],
        },
    )
    client.run(pid, {})  # warm: the second replica starts on the demand of the first run
    record = client.run(pid, {})

    assert record.status == ExecutionStatus.SUCCEEDED, record.error
    steps = {s.step_id: s for s in record.steps}
    b, c = steps["b"], steps["c"]
    assert b.worker_id != c.worker_id  # two replicas of the one task
    assert b.started_at < c.finished_at and c.started_at < b.finished_at  # in parallel


def test_a_burst_that_lasts_scales_a_task_past_one_replica_without_any_setting(client, tmp_path):
    # 8 s of work for one replica: longer than the session stack's upscale delay (2 s).
    body = 'import os, time\ntime.sleep(1.0)\nreturn {"pid": os.getpid()}'
    client.register_task(make_task(tmp_path, "burst_default", body))  # no replicas section

    ids = [client.submit("burst_default", {"n": n}) for n in range(8)]
    records = [client.wait(i, timeout=120) for i in ids]

    assert all(r.status == ExecutionStatus.SUCCEEDED for r in records)
    assert len({r.worker_id for r in records}) >= 2


def test_a_pipeline_passing_an_8_mb_array_between_steps_succeeds_and_records_it(
    client, tmp_path, cli_env
):
    client.register_task(
        make_task(
            tmp_path, "make_array", "import numpy as np\nreturn {'arr': np.ones((1000, 1000))}"
        )
    )
    client.register_task(
        make_task(
            tmp_path,
            "sum_array",
            "return {'total': float(input_data['arr'].sum()), 'doubled': input_data['arr'] * 2}",
        )
    )
    pid = register(
        client,
        tmp_path,
        {
            "pipeline_id": "arrays",
            "steps": [
                {"task_id": "make_array"},
                {
                    "task_id": "sum_array",
                    "depends_on": ["make_array"],
                    "input_mapping": {"arr": "$.make_array.arr"},
                },
            ],
        },
    )

    record = client.run(pid, {}, timeout=120)

    assert record.status == ExecutionStatus.SUCCEEDED, record.error
    shown = runner.invoke(app, ["executions", "show", record.execution_id, "--json"])
    assert shown.exit_code == 0, shown.output
    result = json.loads(shown.stdout)["result"]
    assert result["total"] == 1_000_000.0
    assert result["doubled"]["shape"] == [1000, 1000] and result["doubled"]["dtype"] == "float64"
    doubled = client.result(record.execution_id)["doubled"]  # the array itself, read back
    assert doubled.shape == (1000, 1000) and float(doubled.sum()) == 2_000_000.0


def test_an_output_that_cannot_be_recorded_fails_its_step_naming_the_field(client, tmp_path):
    client.register_task(make_task(tmp_path, "returns_a_set", "return {'tags': {'a', 'b'}}"))

    record = client.run("returns_a_set", {}, timeout=60)

    assert record.status == ExecutionStatus.FAILED
    assert record.error.type == "ValidationError"
    assert "returns_a_set output field 'tags': a set cannot be recorded" in record.error.message
