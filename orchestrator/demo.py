"""The guided demo: register the examples, run the face pipeline on a photo, shape the faces.

`wtm demo` renders what :func:`run_demo` returns; a notebook can call it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.client import Client
from orchestrator.errors import ExecutionFailed
from orchestrator.models import ExecutionRecord

PIPELINE = "face_processing_pipeline"


@dataclass
class Registered:
    """One example registered (or found registered already)."""

    kind: str  # "task" or "pipeline"
    name: str
    version: str
    changed: bool
    sha256: str


@dataclass
class DemoRun:
    """What the demo did: the examples it registered and the pipeline's execution."""

    registered: list[Registered]
    record: ExecutionRecord
    faces: list[dict[str, Any]] = field(default_factory=list)

    @property
    def face_count(self) -> int:
        return len(self.faces)


def register_examples(client: Client, tasks_dir: Path, pipelines_dir: Path) -> list[Registered]:
    """Register every example task and pipeline as it is on disk.

    Forced: the demo runs the examples in this checkout, even where an older
    copy is registered under the same version.
    """
    done = [
        Registered("task", r.task_id, r.version, changed, r.sha256)
        for r, changed in client.register_tasks_in(tasks_dir, force=True)
    ]
    done += [
        Registered("pipeline", r.pipeline_id, r.version, changed, r.sha256)
        for r, changed in client.register_pipelines_in(pipelines_dir, force=True)
    ]
    return done


def run_demo(client: Client, image: Path, tasks_dir: Path, pipelines_dir: Path) -> DemoRun:
    """Register the examples, then run the face pipeline on ``image`` through the queue."""
    registered = register_examples(client, tasks_dir, pipelines_dir)
    record = client.run(PIPELINE, {"image_path": str(image)})
    if record.error:
        raise ExecutionFailed(record)
    return DemoRun(registered, record, face_rows(record.result))


def face_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each face of the pipeline's result as one flat row: bbox, attributes, features."""
    rows = []
    for face in result.get("faces", []):
        features = face.get("features") or []
        rows.append(
            {
                "face_id": face["face_id"],
                "bbox": face["bbox"],
                **face.get("attributes", {}),
                "features": f"{len(features)}-d, first {features[0]:+.3f}" if features else "-",
            }
        )
    return rows
