"""The `wtm` CLI through Typer's CliRunner, against the session's real stack."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.conftest import IMAGES, TASK_PKGS, make_task

runner = CliRunner()


def wtm(*args: str):
    return runner.invoke(app, list(args))


def test_run_prints_the_execution_record_as_json(cli_env, client):
    result = wtm(
        "run", "face_detection", json.dumps({"image_path": str(IMAGES / "astronaut.jpg")}), "--json"
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["status"] == "succeeded"
    assert record["result"]["face_count"] == 1
    assert record["worker_id"].startswith("wtm:face_detection@")
    assert record["duration"] > 0 and record["queue_wait"] >= 0

    listed = json.loads(wtm("executions", "list", "--json", "--limit", "500").stdout)
    assert record["execution_id"] in [r["execution_id"] for r in listed]
    shown = json.loads(wtm("executions", "show", record["execution_id"], "--json").stdout)
    assert shown["result"]["faces"] == record["result"]["faces"]


def test_run_renders_faces_as_a_table(cli_env, client):
    result = wtm(
        "run", "face_detection", json.dumps({"image_path": str(IMAGES / "astronaut_grid.jpg")})
    )
    assert result.exit_code == 0, result.output
    assert "succeeded" in result.stdout
    assert "face_count" in result.stdout and "bbox" in result.stdout


def test_no_wait_prints_only_the_execution_id(cli_env, client):
    result = wtm(
        "run", "face_detection", json.dumps({"image_path": str(IMAGES / "coffee.jpg")}), "--no-wait"
    )
    assert result.exit_code == 0, result.output
    execution_id = result.stdout.strip()
    assert client.wait(execution_id, timeout=120).result["face_count"] == 0


def test_executions_list_filters_by_status(cli_env, client):
    result = wtm("executions", "list", "--status", "succeeded", "--json")
    assert result.exit_code == 0
    assert {r["status"] for r in json.loads(result.stdout)} <= {"succeeded"}
    bad = wtm("executions", "list", "--status", "finished")
    assert bad.exit_code != 0 and "unknown status 'finished'" in bad.stderr


def test_task_test_runs_in_process_with_a_bare_string(cli_env, client, monkeypatch):
    monkeypatch.chdir(IMAGES)
    result = wtm("task", "test", "face_detection", '"astronaut_grid.jpg"', "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["face_count"] == 4


def test_task_list_and_info(cli_env, client):
    listed = json.loads(wtm("task", "list", "--json").stdout)
    assert "face_detection" in {t["task_id"] for t in listed}
    info = wtm("task", "info", "face_detection", "--json")
    assert json.loads(info.stdout)["spec"]["queue"] == "vision"
    assert "face_detection" in wtm("task", "info", "face_detection").stdout


def _one_line_error(result, code: int, *needles: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0]


def test_malformed_input_json(cli_env, client):
    _one_line_error(wtm("run", "face_detection", '{"image_path": '), 2, "malformed JSON")


def test_unknown_task(cli_env, client):
    _one_line_error(wtm("run", "nope", "{}"), 3, "unknown task or pipeline 'nope'")


def test_missing_image(cli_env, client):
    _one_line_error(
        wtm("run", "face_detection", '{"image_path": "/no/such.jpg"}'),
        2,
        "image_path",
        "/no/such.jpg",
    )


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda d: d.pop("task_id"), "missing required field 'task_id'"),
        (lambda d: d.update(gpu_count=1), "unknown field 'gpu_count'"),
        (lambda d: d.update(timeout="soon"), "field 'timeout'"),
    ],
)
def test_register_rejects_a_bad_task_json(cli_env, client, tmp_path, change, needle):
    doc = json.loads((TASK_PKGS / "face_detection" / "task.json").read_text())
    change(doc)
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "task.json").write_text(json.dumps(doc))
    before = wtm("task", "list", "--json").stdout
    _one_line_error(wtm("task", "register", str(folder)), 2, needle, "task.json")
    assert wtm("task", "list", "--json").stdout == before


def test_health_reports_every_component(cli_env, client):
    result = wtm("health", "--json")
    assert result.exit_code == 0, result.output
    components = {c["name"]: c for c in json.loads(result.stdout)}
    names = ("redis", "records", "objects", "ray", "dashboard", "dispatchers", "controller")
    for name in (*names, "replicas", "supervisor"):
        assert components[name]["ok"], components[name]


def test_run_with_redis_unreachable_is_one_line_and_leaves_no_record(
    monkeypatch, tmp_path, free_port
):
    monkeypatch.setenv("WTM_HOME", str(tmp_path))
    monkeypatch.setenv("WTM_REDIS__URL", f"redis://127.0.0.1:{free_port}/0")  # nothing there
    monkeypatch.setenv("WTM_RAY__ADDRESS", "127.0.0.1:1")  # nothing embedded: nothing starts
    for var in ("WTM_RECORDS__URI", "WTM_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    task = make_task(tmp_path / "pkgs", "unreached", "return {}")
    assert wtm("task", "register", str(task)).exit_code == 0

    result = wtm("run", "unreached", "{}")
    assert result.exit_code != 0
    assert result.stderr.count("\n") == 1 and "could not enqueue on Redis" in result.stderr
    assert "nothing was submitted" in result.stderr
    assert json.loads(wtm("executions", "list", "--json").stdout) == []  # no queued, no failed


def test_registering_several_stores_all_or_none(cli_env, client, tmp_path):
    good = make_task(tmp_path / "pkgs", "all_or_none_good", "return {}")
    bad = make_task(tmp_path / "pkgs", "all_or_none_bad", "return {}")
    (bad / "task.json").write_text("{not json")
    before = wtm("task", "list", "--json").stdout
    _one_line_error(wtm("task", "register", str(good), str(bad)), 2, "malformed JSON", "task.json")
    assert wtm("task", "list", "--json").stdout == before  # the good one was not stored

    config = tmp_path / "two.json"
    step = {"task_id": "face_detection"}
    config.write_text(
        json.dumps(
            {
                "pipelines": {
                    "first_of_two": {"steps": [step]},
                    "second_of_two": {"steps": [{"task_id": "no_such_task"}]},
                }
            }
        )
    )
    pipelines_before = wtm("pipeline", "list", "--json").stdout
    _one_line_error(wtm("pipeline", "register", str(config)), 3, "no_such_task", "second_of_two")
    assert wtm("pipeline", "list", "--json").stdout == pipelines_before


def test_supervise_is_for_a_cluster_you_run_not_the_embedded_stack(cli_env):
    result = wtm("supervise")
    assert result.exit_code == 2
    assert "the embedded stack is supervised by `wtm up`" in result.stderr
