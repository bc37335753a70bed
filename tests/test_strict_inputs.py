"""Strict inputs (issue 12): a field the input schema does not take is refused, named,
with the nearest valid name, before anything is queued; nothing valid is refused."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli.main import app
from orchestrator.errors import SpecError, ValidationError
from orchestrator.models import TaskRecord
from orchestrator.pipelines.graph import check_step_inputs, compile_plan
from orchestrator.pipelinespec import load_file, parse_document
from orchestrator.runner import validate_input
from orchestrator.settings import Settings
from orchestrator.taskspec import TaskSpec
from orchestrator.testing import load_package
from tests.conftest import IMAGES, ROOT, TASK_PKGS, make_task

SETTINGS = Settings(home="/nonexistent-wtm-home")
ASTRONAUT = str(IMAGES / "astronaut.jpg")


def shipped(task_id: str) -> TaskRecord:
    """A record of a shipped example task, its task.json as it is in the repo."""
    doc = json.loads((TASK_PKGS / task_id / "task.json").read_text())
    return TaskRecord(
        task_id=task_id,
        version=doc["version"],
        sha256=f"sha-{task_id}",
        size=1,
        object_key="k",
        registered_at=1.0,
        spec=TaskSpec(**doc),
    )


TASKS = {folder.name: shipped(folder.name) for folder in TASK_PKGS.iterdir() if folder.is_dir()}


def lookup(task_id, version=None):
    return TASKS.get(task_id)


def pipeline(*steps, **extra):
    spec = parse_document({"pipeline_id": "p", "steps": list(steps), **extra}, "p.json")[0]
    return compile_plan(spec, lookup, SETTINGS)


DETECT_WITH_PARAMETERS = {
    "step_id": "detection",
    "task_id": "face_detection",
    "input_mapping": {"image_path": "$.image_path", "parameters": "$.parameters"},
}
IMAGE_ONLY = {"required_fields": ["image_path"], "optional_fields": []}


# tasks ---------------------------------------------------------------------------
def test_a_misspelled_top_level_field_is_refused_naming_the_nearest_field():
    schema = TASKS["face_detection"].spec.input_schema
    with pytest.raises(ValidationError) as info:
        validate_input(schema, {"image_path": "a.jpg", "paramters": {}}, "face_detection input")
    assert str(info.value) == (
        "face_detection input: unknown field 'paramters' (did you mean `parameters`?)"
    )


def test_a_misspelled_nested_parameter_is_refused_with_its_dotted_path():
    schema = TASKS["face_detection"].spec.input_schema
    document = {"image_path": "a.jpg", "parameters": {"min_neighbours": 3}}
    with pytest.raises(ValidationError) as info:
        validate_input(schema, document, "face_detection input")
    assert str(info.value) == (
        "face_detection input: unknown field 'parameters.min_neighbours' "
        "(did you mean `min_neighbors`?)"
    )


def test_a_misspelled_required_field_is_named_rather_than_the_missing_one():
    schema = TASKS["face_detection"].spec.input_schema
    with pytest.raises(ValidationError, match=r"unknown field 'image_pth' \(did you mean"):
        validate_input(schema, {"image_pth": "a.jpg"}, "face_detection input")


LAX = {
    "type": "object",
    "properties": {
        "text": {"type": "string"},
        "options": {"type": "object", "properties": {"lang": {"type": "string"}}},
    },
}


@pytest.mark.parametrize(
    ("schema", "document", "refused"),
    [
        (LAX, {"text": "a", "txt": "b"}, "txt"),  # silence counts as strict
        (LAX, {"text": "a", "options": {"langs": "en"}}, "options.langs"),
        ({**LAX, "additionalProperties": False}, {"text": "a", "x": 1}, "x"),
        ({**LAX, "additionalProperties": True}, {"text": "a", "anything": 1}, None),
        ({**LAX, "additionalProperties": {"type": "integer"}}, {"text": "a", "n": 1}, None),
        ({**LAX, "patternProperties": {"^x_": {}}}, {"text": "a", "x_1": 1}, None),
        ({**LAX, "patternProperties": {"^x_": {}}}, {"text": "a", "y_1": 1}, "y_1"),
        ({**LAX, "allOf": [{"properties": {"extra": {}}}]}, {"text": "a", "extra": 1}, None),
        ({"type": "object", "required": ["text"]}, {"text": "a", "more": 1}, None),  # no list
    ],
)
def test_extra_fields_are_refused_unless_the_schema_allows_them(schema, document, refused):
    if refused is None:
        validate_input(schema, document, "t input")
    else:
        with pytest.raises(ValidationError, match=rf"unknown field '{refused}'"):
            validate_input(schema, document, "t input")


def test_array_items_carry_data_and_keep_their_extra_fields():
    # face_detection's faces (with confidence) are what face_attribute takes.
    faces = [{"face_id": 0, "bbox": [1, 2, 3, 4], "confidence": 0.9}]
    schema = TASKS["face_attribute"].spec.input_schema
    validate_input(schema, {"image_path": "a.jpg", "faces": faces}, "face_attribute input")


def test_a_replica_enforces_the_schema_as_written(tmp_path):
    # An unmapped pipeline step gets its dependencies' outputs under their step ids:
    # a schema that says nothing of other fields still takes them there.
    schema = {"type": "object", "properties": {"input": {"type": "string"}}}
    make_task(tmp_path, "lenient", "return {'keys': sorted(input_data)}", input_schema=schema)
    runner = load_package(tmp_path / "lenient", tmp_path / "scratch")
    assert runner({"input": "x", "detection": {}}) == {"keys": ["detection", "input"]}


# pipelines -----------------------------------------------------------------------
def test_a_misspelled_parameter_in_a_pipeline_input_is_refused_by_the_steps_schema():
    plan = pipeline(DETECT_WITH_PARAMETERS, input_validation=IMAGE_ONLY)
    document = {"image_path": "a.jpg", "parameters": {"min_neighbours": 3}}
    with pytest.raises(ValidationError) as info:
        check_step_inputs(plan, document, lookup)
    assert str(info.value) == (
        "p step 'detection' (face_detection) input: unknown field "
        "'parameters.min_neighbours' (did you mean `min_neighbors`?)"
    )
    check_step_inputs(plan, {"image_path": "a.jpg", "parameters": {"min_neighbors": 3}}, lookup)


def test_a_top_level_pipeline_field_nothing_takes_is_refused_with_a_suggestion():
    plan = pipeline(DETECT_WITH_PARAMETERS, input_validation=IMAGE_ONLY)
    with pytest.raises(SpecError) as info:
        check_step_inputs(plan, {"image_path": "a.jpg", "paramters": {}}, lookup)
    assert str(info.value) == "p input: unknown field 'paramters' (did you mean `parameters`?)"


def test_a_later_step_s_fields_from_the_pipeline_input_are_checked_too():
    plan = pipeline(
        {
            "step_id": "detection",
            "task_id": "face_detection",
            "input_mapping": {"image_path": "$.image_path"},
        },
        {
            "step_id": "again",
            "task_id": "face_detection",
            "depends_on": ["detection"],
            "input_mapping": {"image_path": "$.input.image_path", "parameters": "$.tuning"},
        },
    )
    with pytest.raises(ValidationError, match=r"step 'again' .* 'parameters\.min_neighbours'"):
        check_step_inputs(plan, {"image_path": "a.jpg", "tuning": {"min_neighbours": 3}}, lookup)


def test_without_input_validation_unread_top_level_fields_are_left_alone():
    plan = pipeline(DETECT_WITH_PARAMETERS)
    check_step_inputs(plan, {"image_path": "a.jpg", "note": "for the log"}, lookup)


@pytest.mark.parametrize(
    ("name", "document"),
    [
        ("face_processing_pipeline", {"image_path": "a.jpg"}),
        ("face_processing_pipeline", {"image_path": "a.jpg", "image_data": "aGk="}),  # optional
        ("simple_face_pipeline", {"image_path": "a.jpg"}),
        ("text_sentiment_pipeline", {"texts": ["good", "bad"]}),
    ],
)
def test_the_shipped_pipelines_take_their_documented_inputs(name, document):
    spec = load_file(ROOT / "pipelines" / f"{name}.json")[0]
    plan = compile_plan(spec, lookup, SETTINGS)
    check_step_inputs(plan, document, lookup)
    with pytest.raises(SpecError, match="unknown field 'paramters'"):
        check_step_inputs(plan, {**document, "paramters": {}}, lookup)


def test_a_mapping_into_a_field_the_task_does_not_take_is_refused_at_registration():
    step = {"task_id": "face_detection", "input_mapping": {"image_pth": "$.image_path"}}
    with pytest.raises(SpecError, match=r"maps 'image_pth'.* \(did you mean `image_path`\?\)"):
        pipeline(step)


def test_an_unmapped_later_step_whose_task_refuses_other_fields_is_refused_at_registration():
    with pytest.raises(SpecError, match=r"step 'again' has no input_mapping.*'detection'"):
        pipeline(
            {"step_id": "detection", "task_id": "face_detection"},
            {"step_id": "again", "task_id": "face_detection", "depends_on": ["detection"]},
        )


# through the queue and the CLI --------------------------------------------------
def test_submit_refuses_a_misspelled_parameter_and_records_nothing(client):
    before = len(client.executions(target="face_detection", limit=-1))
    document = {"image_path": ASTRONAUT, "parameters": {"min_neighbours": 3}}

    with pytest.raises(ValidationError, match=r"'parameters\.min_neighbours' .*`min_neighbors`"):
        client.submit("face_detection", document)

    assert len(client.executions(target="face_detection", limit=-1)) == before


def test_valid_parameters_run_on_the_replica(client):
    document = {"image_path": ASTRONAUT, "parameters": {"min_neighbors": 3, "min_size": 30}}
    record = client.run("face_detection", document)
    assert record.status == "succeeded", record.error
    assert record.result["face_count"] >= 1


def test_wtm_run_prints_one_line_and_exits_non_zero(cli_env, client):
    before = len(client.executions(target="face_detection", limit=-1))
    document = json.dumps({"image_path": ASTRONAUT, "parameters": {"min_neighbours": 3}})

    result = CliRunner().invoke(app, ["run", "face_detection", document])

    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "unknown field 'parameters.min_neighbours'" in lines[0]
    assert "(did you mean `min_neighbors`?)" in lines[0]
    assert len(client.executions(target="face_detection", limit=-1)) == before


def test_a_pipeline_submit_refuses_a_misspelled_parameter_and_records_nothing(client, tmp_path):
    path = tmp_path / "tuned_faces.json"
    spec = {
        "pipeline_id": "tuned_faces",
        "steps": [DETECT_WITH_PARAMETERS],
        "input_validation": IMAGE_ONLY,
    }
    path.write_text(json.dumps(spec))
    client.register_pipelines(path)
    before = len(client.executions(target="tuned_faces", limit=-1))

    with pytest.raises(ValidationError, match=r"'parameters\.min_neighbours' .*`min_neighbors`"):
        client.submit("tuned_faces", {"image_path": ASTRONAUT, "parameters": {"min_neighbours": 3}})
    with pytest.raises(SpecError, match=r"unknown field 'paramters' \(did you mean `parameters`"):
        client.submit("tuned_faces", {"image_path": ASTRONAUT, "paramters": {"min_neighbors": 3}})

    assert len(client.executions(target="tuned_faces", limit=-1)) == before
