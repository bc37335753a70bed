"""Every example package, registered and run through the queue on a replica."""

from __future__ import annotations

import pytest

from orchestrator.models import ExecutionStatus
from tests.conftest import IMAGES, TASK_PKGS

GRID = str(IMAGES / "astronaut_grid.jpg")


@pytest.fixture(scope="module")
def examples(client):
    for folder in sorted(TASK_PKGS.iterdir()):
        if (folder / "task.json").is_file():
            client.register_task(folder)
    return client


@pytest.mark.parametrize(
    ("task_id", "document", "check"),
    [
        ("face_detection", {"image_path": GRID}, lambda r: r["face_count"] == 4),
        ("face_attribute", {"image_path": GRID}, lambda r: len(r["attributes"]) == 4),
        (
            "face_extractor",
            {"image_path": GRID},
            lambda r: r["dimension"] == 128 and len(r["features"]) == 4,
        ),
        (
            "text_sentiment",
            {"texts": ["I love this, it is wonderful", "This is terrible and awful"]},
            lambda r: [x["label"] for x in r["results"]] == ["positive", "negative"],
        ),
        (
            "face_attribute",
            {"image_path": str(IMAGES / "coffee.jpg")},
            lambda r: r["attributes"] == {},
        ),
    ],
)
def test_example_task_on_a_replica(examples, task_id, document, check):
    record = examples.run(task_id, document)
    assert record.status == ExecutionStatus.SUCCEEDED, record.error
    assert check(record.result), record.result


def test_seed_face_detection_task_json_loads_unchanged(examples):
    record = examples.task("face_detection")
    assert record.spec.entry_point == "task.Task"
    assert record.spec.queue == "vision"
