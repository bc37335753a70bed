"""face_detection on the sample photos, whose face counts are known."""

from pathlib import Path

import pytest

from orchestrator.errors import ValidationError
from orchestrator.testing import load_package

HERE = Path(__file__).parent
IMAGES = HERE.parent.parent / "data" / "images"


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return load_package(HERE, tmp_path_factory.mktemp("face_detection"))


@pytest.mark.parametrize(
    ("image", "faces"),
    [
        ("astronaut.jpg", 1),
        ("astronaut_grid.jpg", 4),
        ("coffee.jpg", 0),
        ("chelsea.jpg", 0),
        ("rocket.jpg", 0),
    ],
)
def test_counts_faces_on_sample_photos(task, image, faces):
    result = task({"image_path": str(IMAGES / image)})
    assert result["face_count"] == faces
    assert len(result["faces"]) == faces
    assert result["image_size"] == [480, 640]
    for face in result["faces"]:
        x, y, w, h = face["bbox"]
        assert w >= 30 and h >= 30 and 0 <= x < 640 and 0 <= y < 480


def test_demo_mode_uses_the_bundled_photo(task):
    assert task({"demo_mode": True})["face_count"] == 1


def test_cascade_loads_once(task):
    task({"demo_mode": True})
    task({"demo_mode": True})
    assert task.load_count == 1


def test_missing_image_is_a_validation_error(task, tmp_path):
    with pytest.raises(ValidationError, match="does not exist"):
        task({"image_path": str(tmp_path / "nope.jpg")})


def test_wrong_input_type_is_rejected_before_running(task):
    with pytest.raises(ValidationError, match="image_path"):
        task({"image_path": 42})
