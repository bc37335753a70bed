"""task.json: the shipped packages load; every broken file names its field and path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.errors import SpecError
from orchestrator.taskspec import TaskSpec, load_spec

TASK_PKGS = Path(__file__).resolve().parent.parent / "task_pkgs"

VALID = {
    "task_id": "echo",
    "name": "Echo",
    "version": "1.0.0",
    "entry_point": "task.Task",
}


def write_spec(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "task.json"
    path.write_text(text)
    return path


def spec_error(folder: Path) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(folder)
    return str(info.value)


def test_face_detection_package_loads():
    spec = load_spec(TASK_PKGS / "face_detection")

    assert isinstance(spec, TaskSpec)
    assert spec.task_id == "face_detection"
    assert spec.version == "1.0.0"
    assert spec.entry_point == "task.Task"
    assert spec.queue == "vision"
    assert spec.priority == 8
    assert spec.timeout == 120
    assert "opencv-python>=4.8.0" in spec.requirements
    assert spec.input_schema["type"] == "object"


def test_a_minimal_spec_gets_the_defaults_and_leaves_timeout_and_retries_unset(tmp_path):
    write_spec(tmp_path, json.dumps(VALID))

    spec = load_spec(tmp_path)

    assert (spec.queue, spec.priority) == ("default", 5)
    # unset, not defaulted: a pipeline's global_settings may still fill them in
    assert (spec.max_retries, spec.timeout) == (None, None)
    assert spec.replicas.max is None  # as many as the cluster holds, decided at run time


def test_unknown_field_is_named_with_the_file(tmp_path):
    path = write_spec(tmp_path, json.dumps({**VALID, "prioritty": 3}))

    message = spec_error(tmp_path)

    assert str(path) in message
    assert "unknown field 'prioritty'" in message


def test_unknown_nested_field_is_named_with_its_parent(tmp_path):
    path = write_spec(tmp_path, json.dumps({**VALID, "resources": {"gpus": 1}}))

    message = spec_error(tmp_path)

    assert str(path) in message
    assert "resources.gpus" in message


def test_missing_task_id_is_named_with_the_file(tmp_path):
    doc = {k: v for k, v in VALID.items() if k != "task_id"}
    path = write_spec(tmp_path, json.dumps(doc))

    message = spec_error(tmp_path)

    assert str(path) in message
    assert "missing required field 'task_id'" in message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("priority", "high"),
        ("timeout", "two minutes"),
        ("requirements", "numpy"),
        ("tags", {"a": 1}),
        ("priority", 11),
        ("task_id", "has spaces"),
    ],
)
def test_wrong_type_or_value_is_named_with_the_file(tmp_path, field, value):
    path = write_spec(tmp_path, json.dumps({**VALID, field: value}))

    message = spec_error(tmp_path)

    assert str(path) in message
    assert f"'{field}'" in message


def test_wrong_type_in_a_nested_group_names_the_full_field(tmp_path):
    path = write_spec(tmp_path, json.dumps({**VALID, "replicas": {"max": "many"}}))

    message = spec_error(tmp_path)

    assert str(path) in message
    assert "replicas.max" in message


def test_malformed_json_names_the_line_and_the_file(tmp_path):
    text = '{\n  "task_id": "echo",\n  "name": "Echo"\n  "version": "1.0.0"\n}\n'
    path = write_spec(tmp_path, text)

    message = spec_error(tmp_path)

    assert str(path) in message
    assert "line 4" in message


def test_a_document_that_is_not_an_object_names_the_file(tmp_path):
    path = write_spec(tmp_path, json.dumps([VALID]))

    message = spec_error(tmp_path)

    assert str(path) in message
    assert "object" in message


def test_a_folder_without_task_json_names_the_folder(tmp_path):
    message = spec_error(tmp_path)

    assert str(tmp_path) in message
    assert "task.json" in message
