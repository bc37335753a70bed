"""face_extractor on the sample photos: unit vectors, stable, alike for the same face."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from orchestrator.errors import ValidationError
from orchestrator.testing import load_package

HERE = Path(__file__).parent
IMAGES = HERE.parent.parent / "data" / "images"
CAT_FACE = [120, 40, 420, 420]  # the cat's head in chelsea.jpg


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return load_package(HERE, tmp_path_factory.mktemp("face_extractor"))


def vectors(result):
    return {face_id: np.array(v) for face_id, v in result["features"].items()}


@pytest.mark.parametrize(("image", "faces"), [("astronaut.jpg", 1), ("astronaut_grid.jpg", 4)])
def test_one_unit_vector_of_128_per_face(task, image, faces):
    result = task({"image_path": str(IMAGES / image)})
    assert result["dimension"] == 128
    assert result["face_count"] == faces
    assert sorted(result["features"]) == [str(i) for i in range(faces)]
    for vector in vectors(result).values():
        assert vector.shape == (128,)
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_same_input_gives_identical_vectors(task):
    document = {"image_path": str(IMAGES / "astronaut_grid.jpg")}
    assert task(document)["features"] == task(dict(document))["features"]


def test_the_tiled_faces_are_alike_and_unlike_the_cat(task):
    grid = vectors(task({"image_path": str(IMAGES / "astronaut_grid.jpg")}))
    tiles = [grid[str(i)] for i in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert tiles[i] @ tiles[j] > 0.9
    astronaut = vectors(task({"image_path": str(IMAGES / "astronaut.jpg")}))["0"]
    cat_input = {
        "image_path": str(IMAGES / "chelsea.jpg"),
        "faces": [{"face_id": "cat", "bbox": CAT_FACE}],
    }
    cat = vectors(task(cat_input))["cat"]
    assert astronaut @ cat < min(astronaut @ tile for tile in tiles)
    assert astronaut @ cat < 0.5


@pytest.mark.parametrize("image", ["coffee.jpg", "chelsea.jpg", "rocket.jpg"])
def test_no_faces_gives_no_features(task, image):
    result = task({"image_path": str(IMAGES / image)})
    assert (result["features"], result["face_count"], result["dimension"]) == ({}, 0, 128)


def test_faces_from_face_detection_are_keyed_by_their_id(task):
    faces = [{"face_id": 5, "bbox": [220, 48, 118, 118], "confidence": 1.0}]
    result = task({"image_path": str(IMAGES / "astronaut.jpg"), "faces": faces})
    detected = task({"image_path": str(IMAGES / "astronaut.jpg")})
    assert result["features"]["5"] == detected["features"]["0"]
    assert result["faces"] == [{"face_id": 5, "bbox": [220, 48, 118, 118]}]


def test_bbox_outside_the_image_names_the_face(task):
    faces = [{"face_id": "left", "bbox": [-10, 0, 50, 50]}]
    with pytest.raises(ValidationError, match="face 'left'"):
        task({"image_path": str(IMAGES / "astronaut.jpg"), "faces": faces})


def test_model_loads_once(task):
    model = task.task.model
    task({"image_path": str(IMAGES / "astronaut.jpg")})
    task({"image_path": str(IMAGES / "coffee.jpg")})
    assert task.load_count == 1
    assert task.task.model is model


def test_wrong_input_type_is_rejected_before_running(task):
    with pytest.raises(ValidationError, match="image_path"):
        task({"image_path": 42})


def test_build_model_reproduces_the_shipped_file(tmp_path):
    shipped = HERE / "model.npz"
    rebuilt = tmp_path / "model.npz"
    subprocess.run([sys.executable, str(HERE / "build_model.py"), str(rebuilt)], check=True)
    assert rebuilt.read_bytes() == shipped.read_bytes()
    assert shipped.stat().st_size < 600 * 1024
    with np.load(shipped) as model:
        assert model["projection"].shape == (1024, 128)
        assert model["projection"].dtype == np.float32
