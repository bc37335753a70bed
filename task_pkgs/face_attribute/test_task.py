"""face_attribute on the sample photos, whose face counts are known."""

from pathlib import Path

import pytest

from orchestrator.errors import ValidationError
from orchestrator.testing import load_package

HERE = Path(__file__).parent
IMAGES = HERE.parent.parent / "data" / "images"


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return load_package(HERE, tmp_path_factory.mktemp("face_attribute"))


@pytest.mark.parametrize(("image", "faces"), [("astronaut.jpg", 1), ("astronaut_grid.jpg", 4)])
def test_describes_every_detected_face(task, image, faces):
    result = task({"image_path": str(IMAGES / image)})
    assert result["face_count"] == faces
    assert sorted(result["attributes"]) == [str(i) for i in range(faces)]
    assert [f["face_id"] for f in result["faces"]] == list(range(faces))
    for attributes in result["attributes"].values():
        assert 0 <= attributes["brightness"] <= 255
        assert attributes["sharpness"] > 0
        assert attributes["eyes"] >= 0
        assert isinstance(attributes["smile"], bool)


def test_the_astronaut_shows_two_eyes_and_a_smile(task):
    result = task({"image_path": str(IMAGES / "astronaut.jpg")})
    assert result["attributes"]["0"]["eyes"] == 2
    assert result["attributes"]["0"]["smile"] is True


@pytest.mark.parametrize("image", ["coffee.jpg", "chelsea.jpg", "rocket.jpg"])
def test_no_faces_gives_empty_attributes(task, image):
    result = task({"image_path": str(IMAGES / image)})
    assert result["attributes"] == {}
    assert result["faces"] == []
    assert result["face_count"] == 0


def test_faces_from_face_detection_are_used_as_given(task):
    faces = [
        {"face_id": 7, "bbox": [220, 48, 118, 118], "confidence": 1.0},
        {"face_id": "cat", "bbox": [0, 0, 100, 100], "confidence": 0.5},
    ]
    result = task({"image_path": str(IMAGES / "astronaut.jpg"), "faces": faces})
    assert result["face_count"] == 2
    assert sorted(result["attributes"]) == ["7", "cat"]
    assert [f["bbox"] for f in result["faces"]] == [face["bbox"] for face in faces]
    detected = task({"image_path": str(IMAGES / "astronaut.jpg")})
    assert result["attributes"]["7"] == detected["attributes"]["0"]


def test_an_empty_face_list_is_not_detected_again(task):
    result = task({"image_path": str(IMAGES / "astronaut.jpg"), "faces": []})
    assert result["face_count"] == 0


def test_bbox_outside_the_image_names_the_face(task):
    faces = [{"face_id": 3, "bbox": [600, 400, 100, 100]}]
    with pytest.raises(ValidationError, match="face 3"):
        task({"image_path": str(IMAGES / "astronaut.jpg"), "faces": faces})


def test_duplicate_face_ids_are_refused(task):
    faces = [{"face_id": 1, "bbox": [0, 0, 50, 50]}, {"face_id": "1", "bbox": [50, 50, 50, 50]}]
    with pytest.raises(ValidationError, match="more than once"):
        task({"image_path": str(IMAGES / "astronaut.jpg"), "faces": faces})


def test_cascades_load_once(task):
    task({"image_path": str(IMAGES / "astronaut.jpg")})
    task({"image_path": str(IMAGES / "coffee.jpg")})
    assert task.load_count == 1


def test_missing_image_is_a_validation_error(task, tmp_path):
    with pytest.raises(ValidationError, match="does not exist"):
        task({"image_path": str(tmp_path / "nope.jpg")})


def test_malformed_bbox_is_rejected_before_running(task):
    faces = [{"face_id": 0, "bbox": [1, 2]}]
    with pytest.raises(ValidationError, match="bbox"):
        task({"image_path": str(IMAGES / "astronaut.jpg"), "faces": faces})
