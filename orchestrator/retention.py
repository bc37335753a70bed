"""Retention: forgetting old executions and everything kept for them.

An execution is old once it has finished and was submitted before the
cutoff; queued and running executions are never old. Pruning removes, in
this order:

1. the old execution records, a batch at a time;
2. the objects that no longer belong to anything and were written before the
   cutoff: results and kept step outputs of executions that are gone,
   uploaded inputs (content-addressed, so shared) that no remaining
   execution or dead letter names, arrays and bytes of step outputs that no
   remaining result names, and step-cache entries;
3. dead letters moved there before the cutoff;
4. worker rows whose last heartbeat is older than the cutoff.

Objects go by sweeping rather than one execution at a time: a prune that
stopped half-way leaves orphans the next one removes, and an object written
after the cutoff is never touched; nor is an upload of the last
``UPLOAD_GRACE_S``, whatever the cutoff (its submit may still be under way).
Acknowledged stream entries need no pruning: they are deleted when acknowledged.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import redis

from orchestrator import keys
from orchestrator.errors import NotFoundError
from orchestrator.inputs import load_document
from orchestrator.intake import Job
from orchestrator.objects import ObjectStore
from orchestrator.records import RecordStore

log = logging.getLogger(__name__)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_INPUT_URI = keys.data_uri("inputs/")
#: Uploads newer than this are kept, named or not: a submit uploads its files
#: before its record exists, and a prune in between must not take them.
UPLOAD_GRACE_S = 3600.0


@dataclass
class Pruned:
    """How much one prune removed."""

    executions: int = 0
    objects: int = 0
    dead_letters: int = 0
    workers: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` in seconds; ValueError otherwise."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"duration {text!r}: use a number and one of s, m, h, d, w (say 30d)")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def prune(
    records: RecordStore,
    objects: ObjectStore,
    r: redis.Redis,
    before: float,
    batch: int = 500,
    progress: Callable[[str], None] | None = None,
) -> Pruned:
    """Remove what executions finished and submitted before ``before`` left (see above)."""
    say = progress or (lambda _: None)
    out = Pruned()
    say("records")
    while old := records.old_executions(before, batch):
        deleted = records.delete_executions([e.execution_id for e in old])
        out.executions += deleted
        if deleted == 0:  # another prune took them meanwhile: nothing more here
            break
    say("dead letters")
    cutoff_id = f"{int(before * 1000)}-0"  # entry ids start with the time they were added
    out.dead_letters = r.xtrim(keys.DEAD_LETTERS, minid=cutoff_id, approximate=False)
    say("objects")
    out.objects = _sweep_objects(records, objects, r, before)
    say("workers")
    for worker in records.list_workers():
        if (worker.heartbeat_at or worker.started_at or 0.0) < before:
            records.delete_worker(worker.worker_id)
            out.workers += 1
    log.info("pruned before %.0f: %s", before, out)
    return out


def _sweep_objects(
    records: RecordStore, objects: ObjectStore, r: redis.Redis, before: float
) -> int:
    live_ids: set[str] = set()
    named: set[str] = set()  # every input URI still named by an execution or a dead letter
    for execution in records.scan_executions():
        live_ids.add(execution.execution_id)
        named.update(_named_by(execution.input, execution.input_ref, objects))
        named.update(_stored_parts(execution.result, execution.result_ref, objects))
    for _, fields in r.xrange(keys.DEAD_LETTERS):
        job = _job(fields)
        if job is not None:
            named.update(_named_by(job.input, job.input_ref, objects))
    uploads_before = min(before, time.time() - UPLOAD_GRACE_S)

    def owner_gone(key: str) -> bool:
        prefix, rest = key.split("/", 1)
        if prefix == "results":
            return rest.removesuffix(".json") not in live_ids
        if prefix == "steps":
            return rest.split("/", 1)[0] not in live_ids
        if prefix in ("inputs", "arrays", "blobs"):
            return keys.data_uri(key) not in named
        return prefix == "cache"  # a cache entry is only ever an optimisation

    removed = 0
    for prefix in ("results/", "steps/", "inputs/", "arrays/", "blobs/", "cache/"):
        cutoff = uploads_before if prefix == "inputs/" else before
        for key, written in objects.list_modified(keys.DATA_BUCKET, prefix).items():
            if written < cutoff and owner_gone(key):
                objects.delete(keys.DATA_BUCKET, key)
                removed += 1
    return removed


def _named_by(document: Any, ref: str | None, objects: ObjectStore) -> set[str]:
    """The uploads an input names, and for an offloaded one its copy and what that names."""
    if ref is None:
        return set(input_uris(document))
    try:
        offloaded = load_document(None, ref, objects)
    except NotFoundError:  # gone already: it names nothing more
        return {ref}
    return {ref, *input_uris(offloaded)}


def _stored_parts(result: Any, ref: str | None, objects: ObjectStore) -> set[str]:
    """The arrays and bytes a result names (see orchestrator.outputs), stored result too."""
    if ref is not None:
        try:
            result = json.loads(
                objects.get(keys.DATA_BUCKET, "results/" + ref.rsplit("/results/", 1)[1])
            )
        except NotFoundError:
            return set()
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k in ("$array", "$bytes") and isinstance(v, str):
                    found.add(v)
                else:
                    walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(result)
    return found


def input_uris(document: Any) -> Iterable[str]:
    """The uploaded-input URIs an input document names (see _named_by for offloaded ones)."""
    if isinstance(document, str):
        if document.startswith(_INPUT_URI):
            yield document
    elif isinstance(document, dict):
        for value in document.values():
            yield from input_uris(value)
    elif isinstance(document, list):
        for value in document:
            yield from input_uris(value)


def _job(fields: dict) -> Job | None:
    try:
        return Job.decode(fields)
    except Exception:  # noqa: BLE001 - an unreadable dead letter names no input
        return None
