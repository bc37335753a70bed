"""Step outputs as records keep them: JSON, with arrays and bytes in the object store.

Between steps an output passes as a Ray object, arrays and all. What is
written down (a kept step output, a cache entry, the execution's result) must
be JSON: each numpy array and each ``bytes`` value is stored in the data
bucket, content-addressed, and stands in the document as a reference::

    {"$array": "s3://ai-data/arrays/<sha256>.npy", "dtype": "float64", "shape": [1000, 1000]}
    {"$bytes": "s3://ai-data/blobs/<sha256>", "size": 1234}

:func:`restore` turns the references back into arrays and bytes. A value
that is none of JSON's types, an array or bytes cannot be recorded:
:func:`check_recordable` says which field, in one line.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np

from orchestrator import keys
from orchestrator.errors import ValidationError
from orchestrator.objects import ObjectStore

_RECORDABLE = (str, int, float, bool, type(None), np.ndarray, np.generic, bytes, bytearray)


def check_recordable(value: Any, what: str) -> None:
    """Raise ValidationError naming the first field that cannot be recorded."""
    problem = _first_unrecordable(value, "")
    if problem is not None:
        where, kind = problem
        field = f" field {where!r}" if where else ""
        raise ValidationError(
            f"{what}{field}: a {kind} cannot be recorded; use JSON types, numpy arrays or bytes"
        )


def _first_unrecordable(value: Any, path: str) -> tuple[str, str] | None:
    if isinstance(value, _RECORDABLE):
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                return path, f"key of type {type(k).__name__}"
            found = _first_unrecordable(v, f"{path}.{k}" if path else k)
            if found:
                return found
        return None
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            found = _first_unrecordable(v, f"{path}[{i}]" if path else f"[{i}]")
            if found:
                return found
        return None
    return path, type(value).__name__


def to_record(value: Any, objects: ObjectStore) -> Any:
    """The value as JSON, its arrays and bytes stored and referenced."""
    if isinstance(value, dict):
        return {k: to_record(v, objects) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_record(v, objects) for v in value]
    if isinstance(value, np.ndarray):
        buffer = io.BytesIO()
        np.save(buffer, value, allow_pickle=False)
        uri = _store(objects, "arrays", buffer.getvalue(), ".npy")
        return {"$array": uri, "dtype": str(value.dtype), "shape": list(value.shape)}
    if isinstance(value, bytes | bytearray):
        return {"$bytes": _store(objects, "blobs", bytes(value), ""), "size": len(value)}
    if isinstance(value, np.generic):
        return value.item()
    return value


def restore(value: Any, objects: ObjectStore) -> Any:
    """Arrays and bytes back in place of the references :func:`to_record` left."""
    if isinstance(value, dict):
        if isinstance(value.get("$array"), str):
            data = objects.get(keys.DATA_BUCKET, keys.data_key(value["$array"]))
            return np.load(io.BytesIO(data), allow_pickle=False)
        if isinstance(value.get("$bytes"), str):
            return objects.get(keys.DATA_BUCKET, keys.data_key(value["$bytes"]))
        return {k: restore(v, objects) for k, v in value.items()}
    if isinstance(value, list):
        return [restore(v, objects) for v in value]
    return value


def _store(objects: ObjectStore, kind: str, data: bytes, suffix: str) -> str:
    key = f"{kind}/{hashlib.sha256(data).hexdigest()}{suffix}"
    objects.put(keys.DATA_BUCKET, key, data)
    return keys.data_uri(key)
