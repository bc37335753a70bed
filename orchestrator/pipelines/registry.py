"""Registered pipelines: definitions in the object store, versions in the records."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from orchestrator import keys
from orchestrator.errors import ConflictError, NotFoundError
from orchestrator.models import PipelineRecord
from orchestrator.objects import ObjectStore
from orchestrator.pipelines.graph import Plan, compile_plan
from orchestrator.pipelines.spec import PipelineSpec, load_file
from orchestrator.records import RecordStore


def validate_file(path: Path, records: RecordStore) -> list[Plan]:
    """Every pipeline in a file, checked against the task registry; nothing stored."""
    return [compile_plan(spec, records.get_task) for spec in load_file(path)]


def register(
    spec: PipelineSpec, records: RecordStore, objects: ObjectStore, force: bool = False
) -> tuple[PipelineRecord, bool]:
    """Validate, then store the definition and record its version; returns (record, changed)."""
    compile_plan(spec, records.get_task)
    document = spec.model_dump(mode="json", exclude_none=True)
    data = json.dumps(document, sort_keys=True, indent=2).encode()
    sha = hashlib.sha256(data).hexdigest()
    existing = records.get_pipeline(spec.pipeline_id, spec.version)
    if existing and existing.sha256 == sha:
        return existing, False
    if existing and not force:
        raise ConflictError(
            f"pipeline {spec.pipeline_id} version {spec.version} is registered with other "
            "content; bump metadata.version or use --force"
        )
    key = f"pipelines/{spec.pipeline_id}/{spec.version}/{sha}.json"
    objects.put(keys.PIPELINES_BUCKET, key, data)
    record = PipelineRecord(
        pipeline_id=spec.pipeline_id,
        version=spec.version,
        sha256=sha,
        object_key=key,
        registered_at=time.time(),
        spec=document,
    )
    records.put_pipeline(record)
    return record, True


def resolve(records: RecordStore, pipeline_id: str, version: str | None = None) -> PipelineRecord:
    record = records.get_pipeline(pipeline_id, version)
    if record is None:
        pinned = f" version {version}" if version else ""
        raise NotFoundError(f"unknown pipeline {pipeline_id!r}{pinned}; see `wtm pipeline list`")
    return record


def delete(
    records: RecordStore, objects: ObjectStore, pipeline_id: str, version: str | None = None
) -> list[PipelineRecord]:
    """Remove versions from the records, then their definitions."""
    if version is not None:
        doomed = [resolve(records, pipeline_id, version)]
    else:
        doomed = [r for r in records.list_pipelines() if r.pipeline_id == pipeline_id]
    if not doomed:
        raise NotFoundError(f"unknown pipeline {pipeline_id!r}; see `wtm pipeline list`")
    for record in doomed:
        records.delete_pipeline(record.pipeline_id, record.version)
        objects.delete(keys.PIPELINES_BUCKET, record.object_key)
    return doomed


def spec_of(record: PipelineRecord) -> PipelineSpec:
    return PipelineSpec.model_validate(record.spec)


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
