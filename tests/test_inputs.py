"""What a user types as INPUT becomes the document the task receives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator import keys
from orchestrator.errors import InputError
from orchestrator.inputs import (
    load_document,
    offload_document,
    parse_input,
    resolve_paths,
    shape_input,
)
from orchestrator.objects.local import LocalObjectStore

FACE_DETECTION = Path(__file__).resolve().parent.parent / "task_pkgs" / "face_detection"

ONE_REQUIRED = {
    "type": "object",
    "properties": {"image_path": {"type": "string"}, "parameters": {"type": "object"}},
    "required": ["image_path"],
}


# parse_input ---------------------------------------------------------------------
def test_json_object():
    assert parse_input('{"image_path": "test.jpg", "parameters": {"min_size": 30}}') == {
        "image_path": "test.jpg",
        "parameters": {"min_size": 30},
    }


def test_json_object_with_surrounding_whitespace():
    assert parse_input('  {"demo_mode": true}\n') == {"demo_mode": True}


def test_at_file_reads_json_from_the_file(tmp_path):
    path = tmp_path / "input.json"
    path.write_text(json.dumps({"image_path": "a.jpg", "demo_mode": False}))

    assert parse_input(f"@{path}") == {"image_path": "a.jpg", "demo_mode": False}


def test_at_file_that_does_not_exist_names_it(tmp_path):
    path = tmp_path / "missing.json"

    with pytest.raises(InputError, match=r"missing\.json"):
        parse_input(f"@{path}")


def test_at_file_with_malformed_json_names_the_file_and_position(tmp_path):
    path = tmp_path / "input.json"
    path.write_text('{\n  "image_path": "a.jpg",\n}\n')

    with pytest.raises(InputError) as info:
        parse_input(f"@{path}")

    assert str(path) in str(info.value)
    assert "line 3 column 1" in str(info.value)


def test_quoted_string_is_the_string():
    # The seed's form: wtm task test face_detection '"test.jpg"'
    assert parse_input('"test.jpg"') == "test.jpg"


def test_bare_word_is_the_string():
    assert parse_input("test.jpg") == "test.jpg"
    assert parse_input("photos/cat 1.jpg") == "photos/cat 1.jpg"


def test_json_scalars():
    assert parse_input("42") == 42
    assert parse_input("true") is True
    assert parse_input("null") is None
    assert parse_input("[1, 2]") == [1, 2]


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ('{"image_path": }', "line 1 column 16"),
        ('{"image_path": "a.jpg"', "line 1 column 23"),
        ("[1, 2,", "line 1 column 7"),
        ('"unterminated', "line 1 column 1"),
    ],
)
def test_malformed_json_names_the_position(text, position):
    with pytest.raises(InputError) as info:
        parse_input(text)

    assert position in str(info.value)
    assert "malformed JSON" in str(info.value)


# shape_input ---------------------------------------------------------------------
def test_bare_string_becomes_the_single_required_field():
    assert shape_input("test.jpg", ONE_REQUIRED) == {"image_path": "test.jpg"}


def test_object_is_left_as_it_is():
    document = {"image_path": "a.jpg", "parameters": {}}

    assert shape_input(document, ONE_REQUIRED) == document


def test_without_a_schema_the_value_is_left_as_it_is():
    assert shape_input("test.jpg", {}) == "test.jpg"
    assert shape_input("test.jpg", None) == "test.jpg"


def test_bare_string_with_several_required_fields_is_refused():
    schema = {**ONE_REQUIRED, "required": ["image_path", "parameters"]}

    with pytest.raises(InputError, match="JSON object"):
        shape_input("test.jpg", schema)


def test_bare_string_for_the_shipped_face_detection_task_becomes_its_image_path():
    # The seed's form: wtm task test face_detection '"test.jpg"'; the schema asks
    # for image_path through its first anyOf alternative.
    schema = json.loads((FACE_DETECTION / "task.json").read_text())["input_schema"]

    assert shape_input("test.jpg", schema) == {"image_path": "test.jpg"}


# resolve_paths ---------------------------------------------------------------------
def test_relative_path_field_becomes_absolute_against_cwd(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "test.jpg").write_bytes(b"jpeg")

    out = resolve_paths({"image_path": "photos/test.jpg", "parameters": {"x": 1}}, tmp_path)

    assert out == {
        "image_path": str((tmp_path / "photos" / "test.jpg").resolve()),
        "parameters": {"x": 1},
    }
    assert Path(out["image_path"]).is_absolute()


def test_absolute_path_and_urls_are_kept(tmp_path):
    image = tmp_path / "test.jpg"
    image.write_bytes(b"jpeg")
    document = {"image_path": str(image), "model_path": "s3://models/m.onnx"}

    assert resolve_paths(document, Path("/")) == document


def test_fields_that_are_not_paths_are_untouched(tmp_path):
    document = {"image": "nope.jpg", "pathology": "x", "image_data": "aGVsbG8="}

    assert resolve_paths(document, tmp_path) == document


def test_missing_file_is_named_by_its_field(tmp_path):
    with pytest.raises(InputError) as info:
        resolve_paths({"image_path": "missing.jpg"}, tmp_path)

    assert "'image_path'" in str(info.value)
    assert "missing.jpg" in str(info.value)


def test_a_directory_is_not_a_file(tmp_path):
    (tmp_path / "photos").mkdir()

    with pytest.raises(InputError, match="image_path"):
        resolve_paths({"image_path": "photos"}, tmp_path)


# Inputs too large to travel inline ------------------------------------------


def test_a_small_input_stays_inline(tmp_path):
    objects = LocalObjectStore(tmp_path)
    document = {"text": "short"}

    assert offload_document(document, objects, inline_bytes=100, max_bytes=1000) == (
        document,
        None,
    )
    assert objects.list(keys.DATA_BUCKET) == []


def test_a_large_input_goes_to_the_object_store_and_reads_back_whole(tmp_path):
    objects = LocalObjectStore(tmp_path)
    document = {"text": "x" * 500, "n": [1, 2, 3]}

    inline, ref = offload_document(document, objects, inline_bytes=100, max_bytes=1000)

    assert inline is None and ref.startswith(f"s3://{keys.DATA_BUCKET}/inputs/")
    assert load_document(inline, ref, objects) == document


def test_an_input_over_the_cap_is_refused_naming_its_size_and_the_setting(tmp_path):
    objects = LocalObjectStore(tmp_path)

    with pytest.raises(InputError, match=r"input is 1\.0 MB, over the 0\.5 MB limit") as e:
        offload_document({"x": "y" * 2**20}, objects, inline_bytes=100, max_bytes=2**19)

    assert "client.max_input_bytes" in str(e.value) and "\n" not in str(e.value)
    assert objects.list(keys.DATA_BUCKET) == []
