"""`wtm task create`: new task packages that register and pass `task test` as made."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

from orchestrator.errors import ConflictError, InputError
from orchestrator.taskspec import MAX_ID

TEMPLATES = ("simple", "ml", "vision")

_SIMPLE = '''"""{name}: a stateless processing step."""

from orchestrator import SimpleTask


class Task(SimpleTask):
    """Echoes its input with a word count; replace process() with your logic."""

    def process(self, input_data: dict) -> dict:
        text = str(input_data.get("input", ""))
        return {{"output": text, "word_count": len(text.split())}}
'''

_ML = '''"""{name}: a model-serving task. The model loads once per replica."""

import json
import math
from pathlib import Path

from orchestrator import MLTask

MODEL = Path(__file__).parent / "model.json"


class Task(MLTask):
    """A logistic model over simple text features, loaded from model.json.

    Replace model.json and predict() with your own model (a pickled sklearn
    estimator, torch weights, ...): load_model() runs once per replica.
    """

    def load_model(self) -> dict:
        return json.loads(MODEL.read_text())

    def preprocess_input(self, input_data: dict) -> list[float]:
        text = str(input_data.get("input", ""))
        words = text.split()
        return [len(text), len(words), sum(w[:1].isupper() for w in words)]

    def predict(self, features: list[float]) -> float:
        z = self.model["bias"] + sum(w * x for w, x in zip(self.model["weights"], features))
        return 1 / (1 + math.exp(-z))

    def postprocess_output(self, score: float) -> dict:
        label = "positive" if score >= self.model["threshold"] else "negative"
        return {{"prediction": label, "score": round(score, 6)}}
'''

_VISION = '''"""{name}: an image task built on the SDK's image helpers."""

import cv2

from orchestrator import SimpleTask
from orchestrator.images import image_from_input


class Task(SimpleTask):
    """Reports an image's size and brightness; replace with your vision logic."""

    def process(self, input_data: dict) -> dict:
        image = image_from_input(input_data)
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        height, width = gray.shape
        return {{"width": width, "height": height, "brightness": float(gray.mean())}}
'''

_TEST = '''"""Tests for {task_id}: run with pytest; the package loads as on a replica."""

from pathlib import Path

import pytest

from orchestrator.testing import load_package

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return load_package(HERE, tmp_path_factory.mktemp("{task_id}"))


def test_sample_input(task):
    result = task({sample})
    assert {check}
'''


def _schemas(template: str) -> tuple[dict, dict, str, str]:
    """Input schema, output schema, a sample input and what the test checks."""
    if template == "vision":
        inp = {
            "type": "object",
            "properties": {"image_path": {"type": "string"}, "image_data": {"type": "string"}},
            "anyOf": [{"required": ["image_path"]}, {"required": ["image_data"]}],
        }
        out = {"type": "object", "required": ["width", "height", "brightness"]}
        sample = '{"image_path": str(HERE / "sample.png")}'
        return inp, out, sample, 'result["width"] == 64 and result["height"] == 48'
    inp = {"type": "object", "properties": {"input": {"type": "string"}}}
    if template == "ml":
        out = {
            "type": "object",
            "required": ["prediction", "score"],
            "properties": {
                "prediction": {"enum": ["positive", "negative"]},
                "score": {"type": "number", "minimum": 0, "maximum": 1},
            },
        }
        return inp, out, '{"input": "test_data"}', '0 <= result["score"] <= 1'
    out = {"type": "object", "required": ["output", "word_count"]}
    return inp, out, '{"input": "test data"}', 'result["word_count"] == 2'


def create(name: str, template: str, author: str, parent: Path) -> Path:
    """Write a new package folder ``parent/name``; refuses to overwrite one."""
    if template not in TEMPLATES:
        raise InputError(f"unknown template {template!r}; one of {', '.join(TEMPLATES)}")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
        raise InputError(f"task name {name!r}: use letters, digits and underscores")
    if len(name) > MAX_ID:
        raise InputError(f"task name {name[:20]}...: {len(name)} characters, over {MAX_ID}")
    folder = Path(parent) / name
    if folder.exists():
        raise ConflictError(f"{folder} already exists")
    inp, out, sample, check = _schemas(template)
    spec = {
        "task_id": name,
        "name": name.replace("_", " ").title(),
        "description": f"A {template} task created on {date.today().isoformat()}.",
        "version": "0.1.0",
        "author": author,
        "category": {"ml": "ml", "vision": "computer_vision"}.get(template, "general"),
        "entry_point": "task.Task",
        "requirements": [],
        "tags": [template],
        "queue": "default",
        "priority": 5,
        "timeout": 60,
        "max_retries": 2,
        "input_schema": inp,
        "output_schema": out,
    }
    code = {"simple": _SIMPLE, "ml": _ML, "vision": _VISION}[template]
    folder.mkdir(parents=True)
    (folder / "task.json").write_text(json.dumps(spec, indent=2) + "\n")
    (folder / "task.py").write_text(code.format(name=name))
    (folder / "test_task.py").write_text(_TEST.format(task_id=name, sample=sample, check=check))
    (folder / "README.md").write_text(_readme(name, template, author))
    if template == "ml":
        model = {"weights": [0.01, 0.2, 0.3], "bias": -0.5, "threshold": 0.5}
        (folder / "model.json").write_text(json.dumps(model, indent=2) + "\n")
    if template == "vision":
        _write_sample_image(folder / "sample.png")
    return folder


def _readme(name: str, template: str, author: str) -> str:
    sample = '{"image_path": "sample.png"}' if template == "vision" else '{"input": "test_data"}'
    return (
        f"# {name}\n\nA `{template}` task by {author}. Edit `task.py` and `task.json`, "
        "then:\n\n"
        f"    wtm task register task_pkgs/{name}\n"
        f"    wtm task test {name} '{sample}'\n"
        f"    python -m pytest task_pkgs/{name}\n"
    )


def _write_sample_image(path: Path) -> None:
    import cv2
    import numpy as np

    gradient = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))
    cv2.imwrite(str(path), cv2.merge([gradient, gradient, gradient]))
