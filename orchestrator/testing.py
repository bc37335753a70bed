"""Helpers for testing task packages in process, with their schemas enforced.

from orchestrator.testing import load_package
task = load_package("task_pkgs/face_detection")
task({"image_path": "data/images/astronaut.jpg"})["face_count"]
"""

from __future__ import annotations

import json
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from orchestrator import artifacts
from orchestrator.objects.local import LocalObjectStore
from orchestrator.packages import register
from orchestrator.records.sqlite import SqliteRecordStore
from orchestrator.runner import TaskRunner


def load_package(folder: str | Path, scratch: str | Path | None = None) -> TaskRunner:
    """Package, verify and load a task folder exactly as a replica would."""
    scratch = Path(scratch or tempfile.mkdtemp(prefix="wtm-test-"))
    records = SqliteRecordStore(scratch / "records.db")
    objects = LocalObjectStore(scratch / "objects")
    record, _ = register(Path(folder), artifacts.tasks(records, objects))
    return TaskRunner.load(record, objects, scratch / "cache")


def write_task(
    parent: str | Path, task_id: str, body: str, setup: str | None = None, **spec: Any
) -> Path:
    """Write a one-file task package whose ``Task.process`` has the given body.

    The body sees ``input_data``, ``self`` (with a class counter ``calls``) and
    the SDK's ``FatalError`` and ``RetryableError``; ``setup``, if given, is the
    body of ``Task.setup`` (a replica runs it once: the model load); ``spec``
    adds task.json fields.
    """
    folder = Path(parent) / task_id
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "task_id": task_id,
        "name": task_id,
        "version": "1.0.0",
        "entry_point": "task.Task",
        "timeout": 30,
        "max_retries": 0,
        **spec,
    }
    (folder / "task.json").write_text(json.dumps(doc))
    code = "from orchestrator import FatalError, RetryableError, SimpleTask\n\n\n"
    code += "class Task(SimpleTask):\n    calls = 0\n\n    def process(self, input_data):\n"
    code += textwrap.indent(textwrap.dedent(body).strip() + "\n", " " * 8)
    if setup is not None:
        code += "\n    def setup(self):\n"
        code += textwrap.indent(textwrap.dedent(setup).strip() + "\n", " " * 8)
    (folder / "task.py").write_text(code)
    return folder
