"""Backups: every record and object copied to a folder while the system runs.

A backup is a folder (format version 1) that reads the same whichever
backends wrote it, so one taken of SQLite and a local folder restores into
MongoDB and MinIO, and back (:mod:`orchestrator.restore`)::

    manifest.json                written last: a folder without it is no backup
    records/executions.jsonl     one record per line, as the pydantic models dump it
    records/pipelines.jsonl
    records/tasks.jsonl
    records/workers.jsonl
    objects/<bucket>/<key>       every object of the system's buckets, byte for byte

Consistent while the system runs means, step by step:

1. The Redis stream positions are noted first: for each queue lane its
   length and last entry id, and the dispatchers' group's last delivered id
   and pending count (the dead-letter stream too). A client records an
   execution before adding its entry, so every job up to those positions
   has its record in the backup.
2. Records next, each read whole, referrers before what they name: executions,
   then pipelines, then tasks (a pipeline or task is registered before
   anything names it), then workers. A record that changes during the pass
   is in the backup as it was either before or after the change.
3. Objects last. Whatever a record names (a package, a pipeline file, an
   uploaded input, a stored result, a kept step output, an array) is written
   before the record is, so it is in the backup unless it was deleted while
   the backup ran (a prune, a deleted task). Objects are content-addressed or
   written once, so no copy mixes two versions of one.
4. The manifest: when, which backends, counts, the sha256 of every file.

Not in a backup: stream entries (queued jobs, dead letters), idempotency keys,
cancel flags, and the package cache (replicas rebuild it from the packages).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal

import redis
from pydantic import BaseModel

from orchestrator import keys
from orchestrator.errors import BackupError, ConflictError, NotFoundError
from orchestrator.models import ExecutionRecord, PipelineRecord, TaskRecord, WorkerRecord
from orchestrator.objects import ObjectStore, open_objects
from orchestrator.records import RecordStore, open_records
from orchestrator.settings import Settings
from orchestrator.stack.state import read as read_stack_state

FORMAT = "wtm-backup"
FORMAT_VERSION = 1

#: Each record kind with its model, in the order a backup reads them (referrers first).
RECORD_MODELS: dict[str, type[BaseModel]] = {
    keys.EXECUTIONS: ExecutionRecord,
    keys.PIPELINES: PipelineRecord,
    keys.TASKS: TaskRecord,
    keys.WORKERS: WorkerRecord,
}

#: Told how a long copy goes: (phase, done so far, total or None while unknown).
Progress = Callable[[str, int, int | None], None]


class StreamPosition(BaseModel):
    """Where one stream stood when the backup began."""

    stream: str
    length: int
    last_entry_id: str
    last_delivered_id: str | None = None  # the dispatchers' group, where it exists
    pending: int | None = None  # delivered to a dispatcher, not yet acknowledged
    lag: int | None = None  # not yet delivered (Redis 7 and later say)


class FileEntry(BaseModel):
    """One file of a backup, as written."""

    sha256: str
    size: int


class Manifest(BaseModel):
    """What a backup folder holds: written last, read first by a restore."""

    format: Literal["wtm-backup"] = FORMAT
    format_version: int = FORMAT_VERSION
    started_at: float
    finished_at: float
    records_backend: str  # "sqlite" or "mongo"
    objects_backend: str  # "local" or "minio"
    counts: dict[str, int]  # each record kind, "objects" and "object_bytes"
    executions_by_status: dict[str, int]
    streams: list[StreamPosition] | None = None  # None: no Redis was read
    streams_note: str | None = None  # why there are no stream positions
    files: dict[str, FileEntry]

    def summary(self, folder: str | Path) -> dict[str, Any]:
        """The manifest without its file list, and where the backup is (for ``--json``)."""
        return {"path": str(folder), **self.model_dump(mode="json", exclude={"files"})}


def backup(
    settings: Settings,
    folder: str | Path,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> Manifest:
    """Back up the stores the settings name into ``folder`` (see the module docstring).

    ``folder`` must be empty or absent unless ``force`` (then an earlier backup
    there is replaced). Stream positions are read from the settings' Redis, or
    the embedded stack's while it runs; the backup never starts anything.
    """
    if settings.records.uri is None and not settings.records_file.is_file():
        raise NotFoundError(f"no records at {settings.records_file}: is WTM_HOME right?")
    url = settings.redis.url or getattr(read_stack_state(settings), "redis_url", None)
    queues = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30) if url else None
    records, objects = open_records(settings), open_objects(settings)
    try:
        return backup_stores(
            records, objects, folder, queues=queues, force=force, progress=progress
        )
    finally:
        records.close()
        if queues is not None:
            queues.close()


def backup_stores(
    records: RecordStore,
    objects: ObjectStore,
    folder: str | Path,
    *,
    queues: redis.Redis | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> Manifest:
    """:func:`backup` of stores already open; ``queues``: the Redis to note positions of."""
    say: Progress = progress or (lambda *_: None)
    out = _Folder(_prepared(Path(folder), force))
    started = time.time()
    streams, note = _note_streams(queues)
    counts, statuses = _copy_records(records, out, say)
    counts.update(_copy_objects(objects, out, say))
    manifest = Manifest(
        started_at=started,
        finished_at=time.time(),
        records_backend=_kind(records),
        objects_backend=_kind(objects),
        counts=counts,
        executions_by_status=statuses,
        streams=streams,
        streams_note=note,
        files=out.files,
    )
    out.finish(manifest)
    return manifest


def stream_positions(r: redis.Redis) -> list[StreamPosition]:
    """Every queue lane's stream that exists, and the dead letters', as they stand now."""
    queues = sorted(_text(q) for q in r.smembers(keys.QUEUES_SET))
    names = [keys.stream(q, lane) for q in queues for lane in keys.LANES]
    positions = []
    for name in [*names, keys.DEAD_LETTERS]:
        try:
            info = r.xinfo_stream(name)
        except redis.ResponseError:  # no such stream: that lane was never used
            continue
        groups = {_text(g["name"]): g for g in r.xinfo_groups(name)}
        group = groups.get(keys.CONSUMER_GROUP, {})
        delivered = group.get("last-delivered-id")
        positions.append(
            StreamPosition(
                stream=name,
                length=info["length"],
                last_entry_id=_text(info["last-generated-id"]),
                last_delivered_id=_text(delivered) if delivered is not None else None,
                pending=group.get("pending"),
                lag=group.get("lag"),
            )
        )
    return positions


def _note_streams(queues: redis.Redis | None) -> tuple[list[StreamPosition] | None, str | None]:
    if queues is None:
        return None, "no Redis to read: none is configured and no embedded stack is running"
    try:
        return stream_positions(queues), None
    except redis.RedisError as e:  # the positions are a note; the backup goes on without
        return None, f"Redis did not answer: {type(e).__name__}"


def _copy_records(
    records: RecordStore, out: _Folder, say: Progress
) -> tuple[dict[str, int], dict[str, int]]:
    statuses: Counter[str] = Counter()

    def executions() -> Iterator[BaseModel]:
        for record in records.scan_executions():
            statuses[record.status.value] += 1
            yield record

    read: dict[str, Callable[[], Iterable[BaseModel]]] = {
        keys.EXECUTIONS: executions,
        keys.PIPELINES: records.list_pipelines,
        keys.TASKS: records.list_tasks,
        keys.WORKERS: records.list_workers,
    }
    counts = {}
    for kind in RECORD_MODELS:
        n = 0
        with out.open(keys.backup_records_file(kind)) as f:
            for record in read[kind]():
                f.write(record.model_dump_json().encode() + b"\n")
                n += 1
                if n % 500 == 0:
                    say(kind, n, None)
        counts[kind] = n
        say(kind, n, n)
    return counts, dict(statuses)


def _copy_objects(objects: ObjectStore, out: _Folder, say: Progress) -> dict[str, int]:
    say("listing objects", 0, None)
    listed = [(bucket, key) for bucket in keys.BUCKETS for key in objects.list(bucket)]
    copied = size = 0
    for done, (bucket, key) in enumerate(listed, 1):
        try:
            data = objects.get(bucket, key)
        except NotFoundError:  # deleted since it was listed (a prune): gone from the system too
            continue
        with out.open(keys.backup_object_file(bucket, key)) as f:
            f.write(data)
        copied, size = copied + 1, size + len(data)
        say("objects", done, len(listed))
    say("objects", len(listed), len(listed))
    return {"objects": copied, "object_bytes": size}


def _prepared(folder: Path, force: bool) -> Path:
    """The folder, checked empty (or, with force, cleared of an earlier backup)."""
    if folder.exists() and not folder.is_dir():
        raise ConflictError(f"backup folder {folder} is a file")
    if folder.is_dir() and any(folder.iterdir()):
        if not force:
            raise ConflictError(
                f"backup folder {folder} is not empty: choose an empty one, or --force"
            )
        # Only what a backup writes, manifest first: an interrupted overwrite is no backup.
        (folder / keys.BACKUP_MANIFEST).unlink(missing_ok=True)
        for part in ("records", "objects"):
            shutil.rmtree(folder / part, ignore_errors=True)
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)  # it holds every input and result
        folder.chmod(0o700)  # mkdir's mode does not apply to a folder that was there
    except OSError as e:
        raise BackupError(f"backup folder {folder}: {e.strerror}") from e
    return folder


class _Folder:
    """Files written under the backup folder, each hashed as it is written."""

    def __init__(self, root: Path):
        self.root = root
        self.files: dict[str, FileEntry] = {}

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[_Hashing]:
        path = self.root / name
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise BackupError(f"{name!r} would be written outside the backup folder")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as f:
                hashing = _Hashing(f)
                yield hashing
        except OSError as e:  # a full disk; an S3 key that is also a "folder" of others
            raise BackupError(f"cannot write {name} in the backup: {e.strerror}") from e
        self.files[name] = FileEntry(sha256=hashing.sha256.hexdigest(), size=hashing.size)

    def finish(self, manifest: Manifest) -> None:
        """Flush everything to disk, then write the manifest whole (it marks completion)."""
        os.sync()
        target = self.root / keys.BACKUP_MANIFEST
        tmp = target.with_name(f".{target.name}.tmp")
        with tmp.open("w") as f:
            f.write(manifest.model_dump_json(indent=1))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)


class _Hashing:
    def __init__(self, f: BinaryIO):
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._f.write(data)
        self.sha256.update(data)
        self.size += len(data)


def _kind(store: object) -> str:
    """A backend's short name, from its module: sqlite, mongo, local, minio."""
    return type(store).__module__.rsplit(".", 1)[-1]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
