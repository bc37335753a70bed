"""Helpers for testing task packages in process, with their schemas enforced.

from orchestrator.testing import load_package
task = load_package("task_pkgs/face_detection")
task({"image_path": "data/images/astronaut.jpg"})["face_count"]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from orchestrator.objects.local import LocalObjectStore
from orchestrator.packages import register
from orchestrator.records.sqlite import SqliteRecordStore
from orchestrator.runner import TaskRunner


def load_package(folder: str | Path, scratch: str | Path | None = None) -> TaskRunner:
    """Package, verify and load a task folder exactly as a replica would."""
    scratch = Path(scratch or tempfile.mkdtemp(prefix="wtm-test-"))
    records = SqliteRecordStore(scratch / "records.db")
    objects = LocalObjectStore(scratch / "objects")
    record, _ = register(Path(folder), records, objects)
    return TaskRunner.load(record, objects, scratch / "cache")
