"""One task end to end: client → Redis stream → dispatcher → replica → records."""

from __future__ import annotations

import pytest

from orchestrator import Client
from orchestrator.errors import InputError, NotFoundError, ValidationError
from orchestrator.models import ExecutionStatus
from orchestrator.settings import ClientSettings
from tests.conftest import IMAGES, make_task


def test_face_detection_runs_through_the_queue(client):
    record = client.run("face_detection", {"image_path": str(IMAGES / "astronaut.jpg")})

    assert record.status == ExecutionStatus.SUCCEEDED
    assert record.result["face_count"] == 1
    assert record.worker_id.startswith("wtm:face_detection@1.0.0#")
    assert record.duration is not None and record.duration > 0
    assert record.queue_wait is not None and record.queue_wait >= 0
    assert record.attempts == 1
    assert record.steps[0].status == "succeeded"
    listed = [r.execution_id for r in client.executions(limit=100)]
    assert record.execution_id in listed


def test_replica_loads_the_model_once_across_jobs(client, ray_connected):
    first = client.run("face_detection", {"image_path": str(IMAGES / "astronaut_grid.jpg")})
    second = client.run("face_detection", {"image_path": str(IMAGES / "coffee.jpg")})

    assert (first.result["face_count"], second.result["face_count"]) == (4, 0)
    assert first.worker_id == second.worker_id
    replica = ray_connected.get_actor(first.worker_id, namespace="wtm")
    stats = ray_connected.get(replica.stats.remote())
    assert stats["loads"] == 1
    assert stats["processed"] >= 2


def test_relative_image_path_means_the_callers_directory(client):
    record = client.run("face_detection", {"image_path": "astronaut.jpg"}, cwd=IMAGES)
    assert record.status == ExecutionStatus.SUCCEEDED
    # The file travelled through the object store, as it would to another node.
    assert record.input["image_path"].startswith("s3://ai-data/inputs/")
    assert record.input["image_path"].endswith("/astronaut.jpg")


def test_no_wait_returns_an_id_that_can_be_waited_on(client):
    execution_id = client.submit("face_detection", {"image_path": str(IMAGES / "rocket.jpg")})
    record = client.wait(execution_id, timeout=120)
    assert record.status == ExecutionStatus.SUCCEEDED
    assert record.result["face_count"] == 0


@pytest.mark.parametrize(
    ("target", "document", "error", "culprit"),
    [
        ("no_such_task", {"image_path": "x.jpg"}, NotFoundError, "no_such_task"),
        ("face_detection", {"image_path": "missing.jpg"}, InputError, "image_path"),
        ("face_detection", {"image_path": 7}, ValidationError, "image_path"),
    ],
)
def test_bad_input_is_rejected_before_anything_is_written(client, target, document, error, culprit):
    before = len(client.executions(limit=10_000))
    with pytest.raises(error, match=culprit):
        client.run(target, document, cwd=IMAGES)
    assert len(client.executions(limit=10_000)) == before


def test_fatal_error_fails_without_retry(client, tmp_path):
    folder = make_task(tmp_path, "always_fatal", 'raise FatalError("bad weights")', max_retries=3)
    client.register_task(folder)
    record = client.run("always_fatal", {})
    assert record.status == ExecutionStatus.FAILED
    assert record.error.type == "FatalError"
    assert "bad weights" in record.error.message
    assert record.attempts == 1


def test_retryable_error_is_retried_on_the_same_replica(client, tmp_path):
    body = """
    type(self).calls += 1
    if type(self).calls == 1:
        raise RetryableError("warming up")
    return {"calls": type(self).calls}
    """
    client.register_task(make_task(tmp_path, "flaky_once", body, max_retries=2))
    record = client.run("flaky_once", {})
    assert record.status == ExecutionStatus.SUCCEEDED
    assert record.attempts == 2
    assert record.result == {"calls": 2}


def test_output_schema_violation_fails_the_execution(client, tmp_path):
    schema = {"type": "object", "required": ["label"]}
    folder = make_task(tmp_path, "bad_output", 'return {"score": 1}', output_schema=schema)
    client.register_task(folder)
    record = client.run("bad_output", {})
    assert record.status == ExecutionStatus.FAILED
    assert record.error.type == "ValidationError"
    assert "label" in record.error.message


def test_a_large_input_reaches_the_task_whole_through_the_object_store(client, tmp_path):
    make_task(tmp_path, "input_size", "return {'size': len(input_data['blob'])}")
    client.register_task(tmp_path / "input_size", force=True)
    blob = "z" * (client.settings.client.inline_input_bytes * 3)

    record = client.run("input_size", {"blob": blob})

    assert record.status == ExecutionStatus.SUCCEEDED, record.error
    assert record.result == {"size": len(blob)}
    assert record.input is None and record.input_ref  # not kept in the record nor the stream


def test_an_input_over_the_cap_is_refused_and_nothing_is_recorded(client, tmp_path):
    make_task(tmp_path, "input_cap", "return {}")
    client.register_task(tmp_path / "input_cap", force=True)
    capped = Client(
        client.settings.model_copy(update={"client": ClientSettings(max_input_bytes=1000)})
    )
    before = len(client.executions(target="input_cap", limit=-1))

    with pytest.raises(InputError, match=r"over the .* limit"):
        capped.submit("input_cap", {"blob": "z" * 2000})

    assert len(client.executions(target="input_cap", limit=-1)) == before
    capped.close()
