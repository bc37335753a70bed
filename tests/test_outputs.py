"""Step outputs as records keep them: arrays and bytes stored and referenced, and back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from orchestrator import keys
from orchestrator.errors import ValidationError
from orchestrator.objects.local import LocalObjectStore
from orchestrator.outputs import check_recordable, restore, to_record


def test_arrays_and_bytes_are_stored_and_come_back_whole(tmp_path):
    objects = LocalObjectStore(tmp_path)
    output = {
        "faces": [{"embedding": np.arange(6, dtype=np.float32).reshape(2, 3)}],
        "thumbnail": b"\x89PNG...",
        "count": np.int64(2),
        "label": "ok",
    }

    recorded = to_record(output, objects)
    json.dumps(recorded)  # plain JSON now

    embedding = recorded["faces"][0]["embedding"]
    assert embedding["dtype"] == "float32" and embedding["shape"] == [2, 3]
    assert embedding["$array"].startswith(keys.data_uri("arrays/"))
    assert recorded["thumbnail"]["size"] == len(output["thumbnail"]) and recorded["count"] == 2
    back = restore(recorded, objects)
    assert np.array_equal(back["faces"][0]["embedding"], output["faces"][0]["embedding"])
    assert back["thumbnail"] == output["thumbnail"] and back["label"] == "ok"


def test_the_same_array_is_stored_once(tmp_path):
    objects = LocalObjectStore(tmp_path)
    to_record({"a": np.zeros(10)}, objects)
    to_record({"b": np.zeros(10)}, objects)
    assert len(objects.list(keys.DATA_BUCKET, "arrays/")) == 1


@pytest.mark.parametrize(
    ("output", "field", "kind"),
    [
        ({"tags": {"a"}}, "tags", "set"),
        ({"faces": [{"box": object()}]}, "faces[0].box", "object"),
        ({"by_id": {1: "x"}}, "by_id", "key of type int"),
    ],
)
def test_what_cannot_be_recorded_is_named_in_one_line(output, field, kind):
    with pytest.raises(ValidationError) as e:
        check_recordable(output, "t output")
    assert str(e.value) == (
        f"t output field {field!r}: a {kind} cannot be recorded; "
        "use JSON types, numpy arrays or bytes"
    )


def test_schemas_count_numpy_arrays_as_arrays_and_numpy_numbers_as_numbers():
    from orchestrator.runner import check, compiled

    schema = {
        "type": "object",
        "properties": {
            "mask": {"type": "array"},
            "count": {"type": "integer"},
            "score": {"type": "number"},
        },
    }
    check(
        compiled(schema), {"mask": np.zeros(3), "count": np.int64(2), "score": np.float32(1)}, "t"
    )
    with pytest.raises(ValidationError, match="'mask'"):
        check(compiled(schema), {"mask": "not an array"}, "t")
