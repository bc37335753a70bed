"""The step cache: a step's output kept under its task's code and its input.

A step's cache key is its package's sha256 and its input document (arrays and
bytes by their content's digest): the same code on the same input gives the
same output. Outputs are kept as records keep them (:mod:`orchestrator.outputs`).

Two places look up: the driver, for a step whose input it holds (the
pipeline input, and outputs the cache gave it), before any replica is asked
for, so a cached pipeline runs with no replica at all; and a replica, for a
step whose input only it sees (an upstream output that never passed through
the dispatcher). A replica writes every output it computes under its key.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from orchestrator import keys
from orchestrator.errors import NotFoundError
from orchestrator.objects import ObjectStore
from orchestrator.outputs import restore, to_record


def key_of(task_id: str, package_sha256: str, document: Any) -> str:
    """The object key a step's output is cached under."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=_digest)
    digest = hashlib.sha256(f"{package_sha256}\n{canonical}".encode()).hexdigest()
    return keys.cache_key(task_id, digest)


def read(objects: ObjectStore, key: str) -> tuple[bytes, Any] | None:
    """An output written under ``key``: as stored, and as the next steps get it
    (arrays and bytes back in place); None if there is none (or an array it
    names was pruned)."""
    try:
        data = objects.get(keys.DATA_BUCKET, key)
        return data, restore(json.loads(data), objects)
    except NotFoundError:
        return None


def write(objects: ObjectStore, output: Any, *object_keys: str) -> None:
    """Keep an output under each key (arrays and bytes stored once, by content)."""
    data = json.dumps(to_record(output, objects)).encode()
    for key in object_keys:
        objects.put(keys.DATA_BUCKET, key, data)


def _digest(value: Any) -> str:
    """A stand-in for an array or bytes in a cache key: its content's digest."""
    if isinstance(value, np.ndarray):
        data = value.tobytes() + f"{value.dtype}{value.shape}".encode()
    elif isinstance(value, bytes | bytearray):
        data = bytes(value)
    else:
        return str(value)
    return hashlib.sha256(data).hexdigest()
