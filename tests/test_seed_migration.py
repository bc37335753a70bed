"""Task packages written for the seed (Celery) system run here unchanged.

The face detection package below is the seed report's example as written:
``from tasks.base.task_base import TaskBase``, ``self._load_image(input_data)``
and the seed's task.json fields (only its id, and requirements this
environment has, differ).
"""

from __future__ import annotations

import json
import logging
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from orchestrator import sdk, seedcompat
from orchestrator.errors import PackageError
from orchestrator.models import ExecutionStatus
from orchestrator.testing import load_package
from tests.conftest import IMAGES

SEED_FACE_DETECTION = '''\
from tasks.base.task_base import TaskBase
import cv2
import numpy as np

class Task(TaskBase):
    def __init__(self):
        super().__init__()
        self.face_cascade = None

    def setup(self):
        """Load OpenCV Haar Cascade model"""
        self.face_cascade = cv2.CascadeClassifier(
            cv2.data.haarcascades + 'haarcascade_frontalface_default.xml'
        )

    def process(self, input_data):
        """Detect faces in image"""
        # Preprocess input
        image = self._load_image(input_data)

        # Convert to grayscale
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)

        # Detect faces
        faces = self.face_cascade.detectMultiScale(
            gray, scaleFactor=1.1, minNeighbors=5, minSize=(30, 30)
        )

        # Format results
        return {
            "faces": [{"bbox": [int(x), int(y), int(w), int(h)],
                      "confidence": 1.0} for x, y, w, h in faces],
            "face_count": len(faces),
            "image_size": list(image.shape[:2])
        }
'''


def seed_task_json(task_id: str, requirements: list[str], **extra) -> dict:
    """The seed report's "Complete Task Configuration", field for field."""
    return {
        "task_id": task_id,
        "name": "Human Readable Task Name",
        "description": "Detailed description of task functionality",
        "version": "1.0.0",
        "author": "Task Author Name",
        "category": "computer_vision | nlp | ml | general",
        "entry_point": "task.Task",
        "requirements": requirements,
        "tags": ["vision", "face_detection", "opencv"],
        "queue": "specialized_queue_name",
        "priority": 8,
        "timeout": 300,
        "max_retries": 3,
        "input_schema": {
            "type": "object",
            "properties": {
                "image_path": {"type": "string", "description": "Path to input image file"},
                "parameters": {
                    "type": "object",
                    "properties": {
                        "confidence_threshold": {"type": "number", "default": 0.8},
                        "max_results": {"type": "integer", "default": 10},
                    },
                },
            },
            "required": ["image_path"],
        },
        "output_schema": {
            "type": "object",
            "properties": {
                "results": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "id": {"type": "integer"},
                            "bbox": {"type": "array", "items": {"type": "number"}},
                            "confidence": {"type": "number"},
                            "metadata": {"type": "object"},
                        },
                    },
                },
                "summary": {
                    "type": "object",
                    "properties": {
                        "total_detections": {"type": "integer"},
                        "processing_time": {"type": "number"},
                        "status": {"type": "string"},
                    },
                },
            },
        },
        **extra,
    }


def write_seed_package(parent: Path, task_id: str, code: str, **task_json) -> Path:
    folder = parent / task_id
    folder.mkdir(parents=True)
    (folder / "task.json").write_text(json.dumps(seed_task_json(task_id, **task_json), indent=2))
    (folder / "task.py").write_text(code)
    return folder


@pytest.fixture(scope="module")
def seed_face_detection(client, tmp_path_factory) -> str:
    """The seed's face detection package, registered on the session's stack."""
    folder = write_seed_package(
        tmp_path_factory.mktemp("seed"),
        "seed_face_detection",
        SEED_FACE_DETECTION,
        requirements=["opencv-python>=4.8.0", "numpy>=1.24.0"],
    )
    client.register_task(folder)
    return "seed_face_detection"


def test_the_seed_face_detection_package_runs_in_process(client, seed_face_detection):
    result = client.test_task(seed_face_detection, {"image_path": str(IMAGES / "astronaut.jpg")})
    assert result["face_count"] == 1
    assert result["image_size"] == [480, 640]
    assert len(result["faces"]) == 1 and result["faces"][0]["confidence"] == 1.0


def test_a_bare_image_path_works_as_in_the_seeds_task_test(client, seed_face_detection):
    # The seed: `task_manager test face_detection '"test.jpg"'`.
    result = client.test_task(seed_face_detection, "astronaut.jpg", cwd=IMAGES)
    assert result["face_count"] == 1


def test_the_seed_face_detection_package_runs_through_the_queue(client, seed_face_detection):
    record = client.run(seed_face_detection, {"image_path": str(IMAGES / "astronaut.jpg")})

    assert record.status == ExecutionStatus.SUCCEEDED, record.error
    assert record.result["face_count"] == 1
    assert record.worker_id.startswith("wtm:seed_face_detection@1.0.0#")
    # The replica read the photo back from the object store, as on another node.
    assert record.input["image_path"].startswith("s3://")


def test_a_seed_task_is_a_task_of_this_sdk_with_the_seeds_helpers(tmp_path, caplog):
    folder = write_seed_package(
        tmp_path,
        "seed_helpers",
        SEED_FACE_DETECTION,
        requirements=["opencv-python>=4.8.0", "numpy>=1.24.0"],
    )
    task = load_package(folder, tmp_path / "scratch").task

    assert isinstance(task, sdk.TaskBase)
    assert task.validate_input({"image_path": "x.jpg"})
    with caplog.at_level(logging.WARNING):
        assert not task.validate_input({"parameters": {}})
    assert "'image_path' is a required property" in caplog.text
    with caplog.at_level(logging.INFO):
        task.log_info("loaded")
        task.log_error("broken")
    assert ("INFO", "loaded") in [(r.levelname, r.message) for r in caplog.records]
    assert ("ERROR", "broken") in [(r.levelname, r.message) for r in caplog.records]
    assert task._load_image(str(IMAGES / "astronaut.jpg")).shape == (480, 640, 3)


def test_the_seed_sdk_import_paths_all_resolve():
    assert seedcompat.install()
    from tasks.base import TaskBase as from_package
    from tasks.base.task_base import (
        FatalError,
        MLTask,
        RetryableError,
        SimpleTask,
        TaskBase,
        ValidationError,
    )

    assert from_package is TaskBase
    assert issubclass(SimpleTask, TaskBase) and issubclass(MLTask, SimpleTask)
    assert issubclass(MLTask, sdk.MLTask) and issubclass(SimpleTask, sdk.SimpleTask)
    assert issubclass(ValidationError, FatalError) and RetryableError.retryable


def test_a_code_defined_pipeline_says_where_to_go_instead():
    seedcompat.install()
    from tasks.base.pipeline_base import BasePipeline

    class FaceProcessingPipeline(BasePipeline):
        def define_steps(self):
            return []

    with pytest.raises(PackageError, match=r"code-defined pipelines.*docs/migrating\.md"):
        FaceProcessingPipeline()


def test_a_tasks_package_of_the_users_own_is_left_alone(tmp_path, monkeypatch):
    seedcompat.install()  # so the alias, not the package below, is back after the test
    for name in [m for m in sys.modules if m == "tasks" or m.startswith("tasks.")]:
        monkeypatch.delitem(sys.modules, name)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "__init__.py").write_text("OWN = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    assert not seedcompat.install()
    assert "tasks" not in sys.modules
    import tasks

    assert tasks.OWN
    assert seedcompat.shadowing() == str(tmp_path / "tasks" / "__init__.py")
    assert not seedcompat.install()


SEED_ML_TASK = '''\
from tasks.base.task_base import MLTask
import numpy as np

class Task(MLTask):
    def load_model(self):
        """Load the model"""
        return np.array([0.5, 2.0])

    def preprocess_input(self, input_data):
        """Preprocess input for model"""
        return np.asarray(input_data["values"], dtype=float)

    def predict(self, preprocessed_input):
        """Run model inference"""
        return float(self.model @ preprocessed_input)

    def postprocess_output(self, model_output):
        """Convert model output to final result"""
        return {"score": model_output, "loads": self.load_count}
'''


def test_a_seed_ml_task_loads_its_model_and_runs_in_process(client, tmp_path):
    folder = write_seed_package(
        tmp_path,
        "seed_ml_task",
        SEED_ML_TASK,
        requirements=["numpy>=1.24.0"],
        input_schema={"type": "object", "required": ["values"]},
        output_schema={"type": "object", "required": ["score"]},
    )
    client.register_task(folder)

    assert client.test_task("seed_ml_task", {"values": [2, 3]}) == {"score": 7.0, "loads": 1}


# Requirements the cluster lacks --------------------------------------------------------
SIMPLE_SEED_TASK = textwrap.dedent(
    """\
    from tasks.base.task_base import TaskBase

    class Task(TaskBase):
        def process(self, input_data):
            import tensorflow as tf
            return {"version": tf.__version__}
    """
)


def test_a_package_needing_what_is_not_installed_is_refused_at_registration(client, tmp_path):
    requirements = ["opencv-python>=4.8.0", "numpy>=1.24.0", "tensorflow>=2.0.0"]
    folder = write_seed_package(
        tmp_path, "seed_needs_tf", SIMPLE_SEED_TASK, requirements=requirements
    )
    before = [(t.task_id, t.version, t.sha256) for t in client.tasks()]

    with pytest.raises(PackageError) as info:
        client.register_task(folder)

    message = str(info.value)
    assert "missing requirements: tensorflow>=2.0.0;" in message
    assert '"runtime_env": {"pip": ["tensorflow>=2.0.0"]}' in message
    assert "opencv" not in message and "numpy" not in message
    assert [(t.task_id, t.version, t.sha256) for t in client.tasks()] == before


def test_wtm_task_register_says_so_in_one_line(cli_env, client, tmp_path):
    folder = write_seed_package(
        tmp_path, "seed_needs_tf_cli", SIMPLE_SEED_TASK, requirements=["tensorflow>=2.0.0"]
    )
    result = CliRunner().invoke(app, ["task", "register", str(folder)])

    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "missing requirements: tensorflow>=2.0.0" in result.stderr
    assert "runtime_env" in result.stderr
    assert "seed_needs_tf_cli" not in [t.task_id for t in client.tasks()]


def test_a_package_that_brings_its_requirements_in_a_runtime_env_registers(client, tmp_path):
    folder = write_seed_package(
        tmp_path,
        "seed_brings_tf",
        SIMPLE_SEED_TASK,
        requirements=["tensorflow>=2.0.0"],
        runtime_env={"pip": ["tensorflow>=2.0.0"]},
    )

    record, changed = client.register_task(folder)

    assert changed and record.spec.runtime_env == {"pip": ["tensorflow>=2.0.0"]}
    assert "seed_brings_tf" in [t.task_id for t in client.tasks()]
