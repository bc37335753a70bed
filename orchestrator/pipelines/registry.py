"""Registering pipelines: checked against the task registry, stored as versioned artifacts."""

from __future__ import annotations

import json
import time
from pathlib import Path

from orchestrator.artifacts import Candidate
from orchestrator.errors import NotFoundError
from orchestrator.models import PipelineRecord
from orchestrator.pipelines.graph import TaskLookup, compile_plan
from orchestrator.pipelinespec import PipelineSpec, load_file
from orchestrator.plan import Plan
from orchestrator.settings import Settings


def discover(root: Path) -> list[Path]:
    """The pipeline files directly under ``root``, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise NotFoundError(f"{root}: no such folder of pipeline files")
    return sorted(root.glob("*.json"))


def validate_file(path: Path, tasks: TaskLookup, settings: Settings) -> list[Plan]:
    """Every pipeline in a file, checked against the task registry; nothing stored."""
    return [compile_plan(spec, tasks, settings) for spec in load_file(path)]


def candidate(
    spec: PipelineSpec, tasks: TaskLookup, settings: Settings
) -> Candidate[PipelineRecord]:
    """Validate a pipeline against the task registry, ready to register (nothing is stored)."""
    compile_plan(spec, tasks, settings)
    document = spec.model_dump(mode="json", exclude_none=True)
    data = json.dumps(document, sort_keys=True, indent=2).encode()

    def build(sha: str, key: str) -> PipelineRecord:
        return PipelineRecord(
            pipeline_id=spec.pipeline_id,
            version=spec.version,
            sha256=sha,
            object_key=key,
            registered_at=time.time(),
            spec=spec,
        )

    return Candidate(spec.pipeline_id, spec.version, data, build)


def mermaid(spec: PipelineSpec) -> str:
    """The pipeline as a Mermaid flowchart, parallel groups as subgraphs."""
    lines = ["flowchart TD"]
    groups: dict[str, list[str]] = {}
    for s in spec.steps:
        lines.append(f'    {s.id}["{s.id}<br/>{s.task_id}"]')
        if s.parallel_group:
            groups.setdefault(s.parallel_group, []).append(s.id)
    for group, members in groups.items():
        lines.append(f"    subgraph {group}")
        lines.extend(f"        {m}" for m in members)
        lines.append("    end")
    for s in spec.steps:
        lines.extend(f"    {d} --> {s.id}" for d in s.deps)
    return "\n".join(lines)
