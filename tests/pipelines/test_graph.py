"""Pipeline validation and mappings, without a cluster."""

from __future__ import annotations

import json

import pytest

from orchestrator.errors import FatalError, NotFoundError, PathNotFound, SpecError
from orchestrator.models import TaskRecord
from orchestrator.pipelines import jsonpath
from orchestrator.pipelines.graph import check_input, compile_plan
from orchestrator.pipelines.mapping import step_input
from orchestrator.pipelinespec import load_file, parse_document
from orchestrator.settings import Settings
from orchestrator.taskspec import TaskSpec
from tests.conftest import ROOT

SETTINGS = Settings(home="/nonexistent-wtm-home")


def task_record(name: str, **spec) -> TaskRecord:
    return TaskRecord(
        task_id=name,
        version="1.0.0",
        sha256=f"sha-{name}",
        size=1,
        object_key="k",
        registered_at=1.0,
        spec=TaskSpec(task_id=name, name=name, version="1.0.0", entry_point="task.Task", **spec),
    )


TASKS = {name: task_record(name, timeout=40, max_retries=1) for name in ("a", "b", "c", "d")}
TASKS["bare"] = task_record("bare")  # sets no timeout and no retries of its own
TASKS["detector"] = task_record(
    "detector",
    output_schema={
        "type": "object",
        "properties": {
            "faces": {
                "type": "array",
                "items": {"type": "object", "properties": {"bbox": {"type": "array"}}},
            },
            "extra": {"type": "object"},
        },
    },
)


def lookup(task_id, version=None):
    record = TASKS.get(task_id)
    return record if record and version in (None, record.version) else None


def pipeline(*steps, **extra):
    return parse_document({"pipeline_id": "p", "steps": list(steps), **extra}, "p.json")[0]


def compile_(spec, settings=SETTINGS):
    return compile_plan(spec, lookup, settings)


def test_builtin_pipeline_files_parse_in_both_formats():
    config = load_file(ROOT / "pipelines" / "face_processing_pipeline.json")
    single = load_file(ROOT / "pipelines" / "simple_face_pipeline.json")
    assert [p.pipeline_id for p in config] == ["face_processing_pipeline"]
    assert config[0].global_settings.enable_caching is True
    assert single[0].steps[0].id == "detection"


def test_global_settings_apply_to_a_task_that_sets_none_and_a_tasks_own_values_win():
    spec = parse_document(
        {
            "pipelines": {
                "p": {
                    "steps": [
                        {"task_id": "bare"},
                        {"task_id": "a", "depends_on": ["bare"]},
                    ]
                }
            },
            "global_settings": {"default_timeout": 7, "default_retry_count": 0},
        },
        "c.json",
    )[0]
    bare, own = compile_(spec).steps
    assert (bare.policy.timeout, bare.policy.retries) == (7, 0)  # the pipeline's defaults
    assert (own.policy.timeout, own.policy.retries) == (40, 1)  # the task's own values


def test_a_step_value_wins_over_everything_and_system_defaults_come_last():
    settings = Settings(
        home="/nonexistent-wtm-home",
        steps={"timeout_s": 11, "max_retries": 5},
        worker={"task_configs": {"a": {"timeout": 90}}},
    )
    spec = pipeline(
        {"task_id": "a", "timeout": 5, "retry_count": 2},
        {"task_id": "b", "step_id": "b1"},
        {"task_id": "a", "step_id": "a2"},
        {"task_id": "bare", "step_id": "nothing_set"},
    )
    step, task_level, override, system = compile_(spec, settings).steps
    assert (step.policy.timeout, step.policy.retries) == (5, 2)
    assert (task_level.policy.timeout, task_level.policy.retries) == (40, 1)
    assert (override.policy.timeout, override.policy.retries) == (90, 1)  # task_configs
    assert (system.policy.timeout, system.policy.retries) == (11, 5)
    assert system.policy.backoff_base == settings.steps.backoff_base_s


def test_a_cycle_is_rejected_with_its_path():
    spec = pipeline(
        {"task_id": "a", "depends_on": ["c"]},
        {"task_id": "b", "depends_on": ["a"]},
        {"task_id": "c", "depends_on": ["b"]},
    )
    with pytest.raises(SpecError, match=r"cycle a -> c -> b -> a"):
        compile_(spec)


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
        ([{"task_id": "a", "input_mapping": {"x": "$.a[?("}}], SpecError, "cannot read"),
        ([{"task_id": "a", "step_id": "input"}], SpecError, "'input' is reserved"),
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
        compile_(pipeline(*steps))


def test_disabled_pipelines_and_unknown_fields_are_refused():
    with pytest.raises(SpecError, match="disabled"):
        compile_(pipeline({"task_id": "a"}, enabled=False))
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
    assert compile_(spec).steps[-1].reads == ("a", "b")


def test_jsonpath_indexes_wildcards_slices_filters_and_recursive_descent():
    doc = {"faces": [{"bbox": [1, 2], "s": 0.2}, {"bbox": [3, 4], "s": 0.9}], "n": {"k": 1}}

    def read(text):
        return jsonpath.read(jsonpath.parse(text), doc)

    assert read("$.faces[1].bbox[0]") == 3
    assert read("$.faces[*].bbox") == [[1, 2], [3, 4]]
    assert read("$['n'].k") == 1
    assert read("$.faces[0:1].bbox") == [[1, 2]]
    assert read("$.faces[?(@.s > 0.5)].bbox") == [[3, 4]]
    assert read("$..k") == [1]
    with pytest.raises(PathNotFound):
        read("$.faces[5]")


def test_mappings_are_checked_against_the_upstream_tasks_output_schema():
    ok = pipeline(
        {"task_id": "detector"},
        {
            "task_id": "a",
            "depends_on": ["detector"],
            "input_mapping": {
                "boxes": "$.detector.faces[*].bbox",
                "x": "$.detector.extra.anything",
            },
        },
    )
    assert compile_(ok).steps[-1].reads == ("detector",)
    typo = pipeline(
        {"task_id": "detector"},
        {
            "task_id": "a",
            "depends_on": ["detector"],
            "input_mapping": {"boxes": "$.detector.faces[*].bboxes"},
        },
    )
    with pytest.raises(SpecError, match=r"output_schema of task 'detector' has no field 'bboxes'"):
        compile_(typo)
    missing = pipeline(
        {"task_id": "detector"},
        {"task_id": "a", "depends_on": ["detector"], "input_mapping": {"x": "$.detector.nope"}},
    )
    with pytest.raises(SpecError, match=r"no field 'nope' \(it has: extra, faces\)"):
        compile_(missing)


def test_recursive_descent_reads_every_upstream_step():
    spec = pipeline(
        {"task_id": "a"},
        {"task_id": "b", "depends_on": ["a"]},
        {"task_id": "c", "depends_on": ["b"], "input_mapping": {"all": "$..bbox"}},
    )
    assert compile_(spec).steps[-1].reads == ("a", "b")


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
    plan = compile_(parse_document(data, "my_pipeline.json")[0])
    assert [s.step_id for s in plan.steps] == ["a", "b"]
    assert plan.steps[1].reads == ("a",)


def test_a_missing_pipeline_file_is_not_found_like_a_missing_task_folder(tmp_path):
    with pytest.raises(NotFoundError, match="no such pipeline file"):
        load_file(tmp_path / "absent.json")


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ({"properties": {"a": {}}}, "no field 'b' (it has: a)"),  # listed properties only
        ({"properties": {"a": {}}, "additionalProperties": False}, "no field 'b'"),
        ({"properties": {"a": {}}, "additionalProperties": True}, None),
        ({"properties": {"a": {}}, "additionalProperties": {}}, None),  # any schema: welcome
        ({"properties": {"a": {}}, "patternProperties": {"^b": {}}}, None),
        ({"type": "object"}, None),  # nothing listed: nothing to check against
    ],
)
def test_a_mapping_reads_only_what_the_output_schema_can_hold(schema, problem):
    found = jsonpath.schema_problem(jsonpath.parse("$.step.b"), schema)
    assert found == problem or (problem and found and found.startswith(problem))


def test_a_config_entrys_key_is_its_id_and_a_differing_pipeline_id_is_refused():
    same = {"pipelines": {"k": {"pipeline_id": "k", "steps": [{"task_id": "a"}]}}}
    assert parse_document(same, "c.json")[0].pipeline_id == "k"
    differs = {"pipelines": {"k1": {"pipeline_id": "k2", "steps": [{"task_id": "a"}]}}}
    with pytest.raises(SpecError, match=r"\[k1\]: pipeline_id 'k2' differs from its key 'k1'"):
        parse_document(differs, "c.json")


def test_stages_group_the_steps_that_may_run_together():
    spec = pipeline(
        {"task_id": "a"},
        {"task_id": "b", "depends_on": ["a"]},
        {"task_id": "c", "depends_on": ["a"]},
        {"task_id": "d", "depends_on": ["b", "c"]},
    )
    assert compile_(spec).stages() == [["a"], ["b", "c"], ["d"]]
