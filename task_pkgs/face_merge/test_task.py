"""face_merge joins by face_id and leaves out what a step did not produce."""

from pathlib import Path

import pytest

from orchestrator.errors import ValidationError
from orchestrator.testing import load_package

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return load_package(HERE, tmp_path_factory.mktemp("face_merge"))


def test_joins_attributes_and_features_by_face_id(task):
    result = task(
        {
            "faces": [{"face_id": 0, "bbox": [1, 2, 3, 4]}, {"face_id": 1, "bbox": [5, 6, 7, 8]}],
            "attributes": {"0": {"eyes": 2}, "1": {"eyes": 1}},
            "features": {"1": [0.5, 0.5]},
        }
    )
    assert result["faces"][0] == {"face_id": 0, "bbox": [1, 2, 3, 4], "attributes": {"eyes": 2}}
    assert result["faces"][1]["features"] == [0.5, 0.5]
    assert result["summary"] == {"face_count": 2, "with_attributes": 2, "with_features": 1}


def test_no_faces_is_an_empty_result(task):
    assert task({"faces": []}) == {
        "faces": [],
        "summary": {"face_count": 0, "with_attributes": 0, "with_features": 0},
    }


def test_faces_are_required(task):
    with pytest.raises(ValidationError, match="faces"):
        task({"attributes": {}})
