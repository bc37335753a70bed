"""Pipeline validation and mappings, without a cluster."""

from __future__ import annotations

import json

import pytest

from orchestrator.errors import FatalError, NotFoundError, SpecError
from orchestrator.models import TaskRecord
from orchestrator.pipelines import jsonpath
from orchestrator.pipelines.graph import check_input, compile_plan
from orchestrator.pipelines.mapping import step_input
from orchestrator.pipelines.spec import load_file, parse_document
from tests.conftest import ROOT

TASKS = {
    name: TaskRecord(
        task_id=name,
        version="1.0.0",
        sha256=f"sha-{name}",
        size=1,
        object_key="k",
        registered_at=1.0,
        spec={"timeout": 40, "max_retries": 1},
    )
    for name in ("a", "b", "c", "d")
}


def lookup(task_id, version=None):
    record = TASKS.get(task_id)
    return record if record and version in (None, record.version) else None


def pipeline(*steps, **extra):
    return parse_document({"pipeline_id": "p", "steps": list(steps), **extra}, "p.json")[0]


def test_builtin_pipeline_files_parse_in_both_formats():
    config = load_file(ROOT / "pipelines" / "face_processing_pipeline.json")
    single = load_file(ROOT / "pipelines" / "simple_face_pipeline.json")
    assert [p.pipeline_id for p in config] == ["face_processing_pipeline"]
    assert config[0].global_settings.enable_caching is True
    assert single[0].steps[0].id == "detection"


def test_defaults_come_from_step_then_task_then_global_settings():
    spec = parse_document(
        {
            "pipelines": {
                "p": {
                    "steps": [
                        {"task_id": "a", "timeout": 5},
                        {"task_id": "b", "depends_on": ["a"], "retry_count": 0},
                    ]
                }
            },
            "global_settings": {"default_timeout": 99, "default_retry_count": 7},
        },
        "c.json",
    )[0]
    plan = compile_plan(spec, lookup)
    a, b = plan.steps
    assert (a.step_id, a.timeout, a.retries) == ("a", 5, 1)  # step, then task
    assert (b.timeout, b.retries) == (40, 0)


def test_a_cycle_is_rejected_with_its_path():
    spec = pipeline(
        {"task_id": "a", "depends_on": ["c"]},
        {"task_id": "b", "depends_on": ["a"]},
        {"task_id": "c", "depends_on": ["b"]},
    )
    with pytest.raises(SpecError, match=r"cycle a -> c -> b -> a"):
        compile_plan(spec, lookup)


@pytest.mark.parametrize(
    ("steps", "error", "message"),
    [
        ([{"task_id": "a"}, {"task_id": "a"}], SpecError, "duplicate step id 'a'"),
        ([{"task_id": "a", "depends_on": ["zz"]}], SpecError, "unknown step 'zz'"),
        ([{"task_id": "nope"}], NotFoundError, "unknown task 'nope'"),
        ([{"task_id": "a", "version": "9"}], NotFoundError, "unknown task 'a' version 9"),
        (
            [{"task_id": "a"}, {"task_id": "b", "input_mapping": {"x": "$.a.faces"}}],
            SpecError,
            "reads step 'a', which is not upstream",
        ),
        ([{"task_id": "a", "input_mapping": {"x": "a.b"}}], SpecError, "must start with"),
        ([{"task_id": "a", "input_mapping": {"x": "$.a..b"}}], SpecError, "cannot read"),
        (
            [
                {"task_id": "a", "parallel_group": "g"},
                {"task_id": "b", "depends_on": ["a"], "parallel_group": "g"},
            ],
            SpecError,
            "group 'g' has 'b' depending on 'a'",
        ),
    ],
)
def test_invalid_pipelines_are_rejected_by_name(steps, error, message):
    with pytest.raises(error, match=message):
        compile_plan(pipeline(*steps), lookup)


def test_disabled_pipelines_and_unknown_fields_are_refused():
    with pytest.raises(SpecError, match="disabled"):
        compile_plan(pipeline({"task_id": "a"}, enabled=False), lookup)
    with pytest.raises(SpecError, match=r"p.json: unknown field 'steps.0.retries'"):
        pipeline({"task_id": "a", "retries": 2})


def test_malformed_pipeline_file_names_the_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"pipeline_id": "x",\n "steps": [}')
    with pytest.raises(SpecError, match=r"bad.json: malformed JSON at line 2"):
        load_file(path)


def test_mappings_may_read_any_upstream_step_not_only_direct_dependencies():
    spec = pipeline(
        {"task_id": "a"},
        {"task_id": "b", "depends_on": ["a"]},
        {
            "task_id": "c",
            "depends_on": ["b"],
            "input_mapping": {"x": "$.a.out", "y": "$.b.out", "z": "$.image"},
        },
    )
    assert compile_plan(spec, lookup).steps[-1].reads == ("a", "b")


def test_jsonpath_indexes_and_wildcards():
    doc = {"faces": [{"bbox": [1, 2]}, {"bbox": [3, 4]}], "n": {"k": 1}}
    assert jsonpath.read(doc, jsonpath.parse("$.faces[1].bbox[0]")) == 3
    assert jsonpath.read(doc, jsonpath.parse("$.faces[*].bbox")) == [[1, 2], [3, 4]]
    assert jsonpath.read(doc, jsonpath.parse("$['n'].k")) == 1
    with pytest.raises(jsonpath.Missing, match="no index"):
        jsonpath.read(doc, jsonpath.parse("$.faces[5]"))


def test_step_input_with_and_without_a_mapping():
    upstream = {"detection": {"faces": [{"face_id": 0}]}}
    pipeline_input = {"image_path": "s3://x/a.jpg"}
    assert step_input(None, pipeline_input, upstream) == {**pipeline_input, **upstream}
    mapped = step_input(
        {
            "faces": "$.detection.faces",
            "image_path": "$.image_path",
            "again": "$.input.image_path",
            "data": "$.image_data",
        },
        pipeline_input,
        upstream,
    )
    assert mapped == {
        "faces": [{"face_id": 0}],
        "image_path": "s3://x/a.jpg",
        "again": "s3://x/a.jpg",
    }  # a missing optional input field is left out
    with pytest.raises(FatalError, match=r"mapping 'x' = '\$\.detection\.nope'"):
        step_input({"x": "$.detection.nope"}, pipeline_input, upstream)


def test_input_validation_checks_required_fields_and_formats():
    checks = load_file(ROOT / "pipelines" / "face_processing_pipeline.json")[0].input_validation
    check_input(checks, {"image_path": "a.JPEG", "processing_options": {}}, "fp")
    with pytest.raises(SpecError, match="missing required field 'image_path'"):
        check_input(checks, {"image_data": "..."}, "fp")
    with pytest.raises(SpecError, match="format 'gif' is not supported"):
        check_input(checks, {"image_path": "a.gif"}, "fp")


def test_seed_config_pipeline_with_a_custom_unmapped_step_compiles():
    data = json.loads(
        json.dumps(
            {
                "pipelines": {
                    "my_custom_pipeline": {
                        "pipeline_id": "my_custom_pipeline",
                        "name": "My Custom Pipeline",
                        "description": "Custom processing workflow",
                        "enabled": True,
                        "steps": [
                            {"task_id": "a", "timeout": 30, "retry_count": 3},
                            {"task_id": "b", "depends_on": ["a"], "timeout": 60, "retry_count": 2},
                        ],
                    }
                }
            }
        )
    )
    plan = compile_plan(parse_document(data, "my_pipeline.json")[0], lookup)
    assert [s.step_id for s in plan.steps] == ["a", "b"]
    assert plan.steps[1].reads == ("a",)


def test_a_missing_pipeline_file_is_not_found_like_a_missing_task_folder(tmp_path):
    with pytest.raises(NotFoundError, match="no such pipeline file"):
        load_file(tmp_path / "absent.json")
