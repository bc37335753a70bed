"""Restoring a backup folder (:mod:`orchestrator.backup`) into a system's stores.

Checks first, writes after. A folder without its manifest, of an unknown
format version, with a listed file missing or changed (size, sha256), or with
a record that does not parse is refused with one line naming the problem,
before anything is opened for writing; so is a target that holds any record
or object, unless ``force`` (then the backup's records and objects replace
those with the same ids and keys, and the rest stay).

Objects are written first, then records, so a record never names an object
not there yet. What changes on the way in:

- Executions that were queued or running when the backup was taken are
  restored ``failed``, with an ``Interrupted`` error naming the backup's
  time. A backup holds no stream entries, so nothing would ever run them;
  and the originals may have run on after the backup, so whether to run one
  again is the user's call: ``wtm executions retry ID``.
- A result stored as an object is named by the target's object store (a
  ``file://`` path of another home becomes this one's, or ``s3://``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from orchestrator import keys, lifecycle
from orchestrator.backup import (
    FORMAT,
    FORMAT_VERSION,
    RECORD_MODELS,
    FileEntry,
    Manifest,
    Progress,
)
from orchestrator.errors import BackupError, ConflictError, Interrupted
from orchestrator.models import ErrorInfo, ExecutionRecord, PipelineRecord, TaskRecord, WorkerRecord
from orchestrator.objects import ObjectStore, open_objects
from orchestrator.records import RecordStore, open_records
from orchestrator.settings import Settings

BATCH = 500  # executions inserted at once
_SOME = 1000  # a target's executions are counted up to this many, for the refusal


@dataclass
class Restored:
    """What a restore wrote, and which executions it restored as interrupted."""

    tasks: int = 0
    pipelines: int = 0
    executions: int = 0
    workers: int = 0
    objects: int = 0
    object_bytes: int = 0
    interrupted: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def restore(
    settings: Settings,
    folder: str | Path,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> Restored:
    """Restore the backup in ``folder`` into the stores the settings name (see above)."""
    manifest = check(folder, progress)
    objects = open_objects(settings)
    if not force:  # before the records are opened: a new SQLite file is a write
        _refuse_if_held(_objects_held(objects))
    records = open_records(settings)
    try:
        return _restore(Path(folder), manifest, records, objects, force, progress)
    finally:
        records.close()


def restore_stores(
    records: RecordStore,
    objects: ObjectStore,
    folder: str | Path,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> Restored:
    """:func:`restore` into stores already open."""
    manifest = check(folder, progress)
    if not force:
        _refuse_if_held(_objects_held(objects))
    return _restore(Path(folder), manifest, records, objects, force, progress)


def check(folder: str | Path, progress: Progress | None = None) -> Manifest:
    """The backup's manifest, once every file it lists is there, whole and readable;
    BackupError naming the first problem otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BackupError(f"{folder}: no such folder")
    path = folder / keys.BACKUP_MANIFEST
    if not path.is_file():
        raise BackupError(
            f"{folder}: no {keys.BACKUP_MANIFEST}: not a backup, or one that did not finish"
        )
    manifest = _read_manifest(path)
    _check_listing(manifest)
    say = progress or (lambda *_: None)
    total = sum(entry.size for entry in manifest.files.values())
    done = 0
    for name, entry in manifest.files.items():
        _check_file(folder, name, entry)
        done += entry.size
        say("checking", done, total)
    for kind, model in RECORD_MODELS.items():
        parsed = sum(1 for _ in _records(folder, kind, model))  # or BackupError names a line
        if parsed != manifest.counts.get(kind):
            raise BackupError(
                f"{keys.backup_records_file(kind)} holds {parsed} records, "
                f"the manifest counts {manifest.counts.get(kind)}"
            )
    return manifest


def _read_manifest(path: Path) -> Manifest:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BackupError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BackupError(f"{path}: not a wtm backup manifest")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise BackupError(
            f"{path}: unknown format version {version!r} (this wtm reads {FORMAT_VERSION})"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BackupError(f"{path}: malformed at {where}: {first['msg']}") from e


def _check_listing(manifest: Manifest) -> None:
    """Every record file listed, every object file in a known bucket, counts that agree."""
    for kind in RECORD_MODELS:
        if keys.backup_records_file(kind) not in manifest.files:
            raise BackupError(f"incomplete backup: {keys.backup_records_file(kind)} not listed")
    objects = 0
    for name in manifest.files:
        if name.startswith("objects/"):
            objects += 1
            _object_of(name)
    if objects != manifest.counts.get("objects", 0):
        raise BackupError(
            f"incomplete backup: {objects} object files listed, "
            f"counts say {manifest.counts.get('objects', 0)}"
        )


def _check_file(folder: Path, name: str, entry: FileEntry) -> None:
    path = folder / name
    if ".." in Path(name).parts or not path.resolve().is_relative_to(folder.resolve()):
        raise BackupError(f"{name}: names a file outside the backup")
    if not path.is_file():
        raise BackupError(f"incomplete backup: {name} is missing")
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    if size != entry.size or digest.hexdigest() != entry.sha256:
        raise BackupError(f"{name}: checksum mismatch (the backup is damaged or was changed)")


def _records(folder: Path, kind: str, model: type[BaseModel]) -> Iterator[Any]:
    """The records of one kind, parsed line by line; BackupError names a bad line."""
    name = keys.backup_records_file(kind)
    with (folder / name).open("rb") as f:
        for n, line in enumerate(f, 1):
            try:
                yield model.model_validate_json(line)
            except ValidationError as e:
                first = e.errors()[0]
                raise BackupError(f"{name} line {n}: not a {kind} record: {first['msg']}") from e


def _objects_held(objects: ObjectStore) -> dict[str, int]:
    return {"objects": sum(len(objects.list(bucket)) for bucket in keys.BUCKETS)}


def _records_held(records: RecordStore) -> dict[str, int]:
    return {
        keys.TASKS: len(records.list_tasks()),
        keys.PIPELINES: len(records.list_pipelines()),
        keys.EXECUTIONS: len(records.list_executions(limit=_SOME)),
        keys.WORKERS: len(records.list_workers()),
    }


def _refuse_if_held(held: dict[str, int]) -> None:
    found = ", ".join(
        f"{'at least ' if n >= _SOME else ''}{n} {kind}" for kind, n in held.items() if n
    )
    if found:
        raise ConflictError(
            f"the target already holds data: {found}; restore into an empty WTM_HOME "
            "(and empty stores), or --force to write the backup over it"
        )


def _restore(
    folder: Path,
    manifest: Manifest,
    records: RecordStore,
    objects: ObjectStore,
    force: bool,
    progress: Progress | None,
) -> Restored:
    if not force:
        _refuse_if_held(_records_held(records))
    say = progress or (lambda *_: None)
    out = Restored()
    names = [n for n in manifest.files if n.startswith("objects/")]
    for done, name in enumerate(names, 1):
        data = (folder / name).read_bytes()
        objects.put(*_object_of(name), data)
        out.objects, out.object_bytes = done, out.object_bytes + len(data)
        say("objects", done, len(names))
    for record in _records(folder, keys.PIPELINES, PipelineRecord):
        records.put_pipeline(record)
        out.pipelines += 1
    for record in _records(folder, keys.TASKS, TaskRecord):
        records.put_task(record)
        out.tasks += 1
    for record in _records(folder, keys.WORKERS, WorkerRecord):
        records.put_worker(record)
        out.workers += 1
    _restore_executions(folder, manifest, records, objects, force, out, say)
    return out


def _restore_executions(
    folder: Path,
    manifest: Manifest,
    records: RecordStore,
    objects: ObjectStore,
    force: bool,
    out: Restored,
    say: Progress,
) -> None:
    total = manifest.counts.get(keys.EXECUTIONS)
    batch: list[ExecutionRecord] = []

    def flush() -> None:
        if force:  # replace as a whole: whatever the target's own says, the backup's wins
            records.delete_executions([r.execution_id for r in batch])
        records.insert_executions(batch)
        out.executions += len(batch)
        batch.clear()
        say(keys.EXECUTIONS, out.executions, total)

    for record in _records(folder, keys.EXECUTIONS, ExecutionRecord):
        if not record.status.terminal:
            _interrupt(record, manifest)
            out.interrupted.append(record.execution_id)
        if record.result_ref and "/results/" in record.result_ref:
            key = keys.result_key_of(record.result_ref)
            record.result_ref = objects.uri(keys.DATA_BUCKET, key)
        batch.append(record)
        if len(batch) >= BATCH:
            flush()
    if batch:
        flush()


def _interrupt(record: ExecutionRecord, manifest: Manifest) -> None:
    """Fail an execution the backup caught queued or running (see the module docstring)."""
    taken = datetime.fromtimestamp(manifest.started_at, timezone.utc)
    message = (
        f"{record.status.value} when the backup of {taken:%Y-%m-%d %H:%M:%S} UTC was taken; "
        "a backup holds no queue entries, so it was restored failed: "
        f"`wtm executions retry {record.execution_id}` runs it again"
    )
    ended = max(manifest.finished_at, record.started_at or 0.0)
    lifecycle.fail(record, ErrorInfo(type=Interrupted.__name__, message=message), ended)


def _object_of(name: str) -> tuple[str, str]:
    """(bucket, key) of a backup's ``objects/<bucket>/<key>`` file."""
    parts = name.split("/", 2)
    if len(parts) < 3 or parts[1] not in keys.BUCKETS or not parts[2]:
        raise BackupError(f"{name}: not an object of the buckets {', '.join(keys.BUCKETS)}")
    return parts[1], parts[2]
