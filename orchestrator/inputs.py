"""Turning what a user typed into an input document.

INPUT is JSON text, ``@file.json``, or a bare string (the seed's
``'"test.jpg"'``). A bare string given to a task whose schema requires one
field (or whose first ``anyOf`` alternative does) becomes that field. Path
fields (``*_path``) relative to the caller's working directory are made
absolute and must exist, so the replica reads the file the caller meant.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator import keys
from orchestrator.errors import InputError

if TYPE_CHECKING:
    from orchestrator.objects import ObjectStore


def parse_input(text: str) -> Any:
    """JSON text, ``@file.json``, or a bare string."""
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        try:
            text = path.read_text()
        except OSError as e:
            raise InputError(f"input file {path}: {e.strerror or e}") from e
        return _loads(text, str(path))
    stripped = text.strip()
    if stripped[:1] in ("{", "[", '"') or stripped in ("true", "false", "null"):
        return _loads(stripped, "INPUT")
    try:
        return json.loads(stripped)  # numbers
    except json.JSONDecodeError:
        return text  # a bare word, such as an image name


def _loads(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(
            f"{source}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from e


def shape_input(value: Any, schema: dict[str, Any] | None) -> Any:
    """Wrap a bare value as the single required field of an object schema."""
    if isinstance(value, dict) or not schema or schema.get("type") != "object":
        return value
    field = _primary_field(schema)
    if field is None:
        raise InputError(f"input must be a JSON object, got {type(value).__name__}")
    return {field: value}


def _primary_field(schema: dict[str, Any]) -> str | None:
    """The one field a schema requires, or the first alternative's (anyOf/oneOf)."""
    required = schema.get("required") or []
    if len(required) == 1:
        return required[0]
    if required:
        return None
    for key in ("anyOf", "oneOf"):
        alternatives = schema.get(key) or []
        if alternatives and len(alternatives[0].get("required") or []) == 1:
            return alternatives[0]["required"][0]
    return None


def is_path_field(name: str) -> bool:
    return name == "path" or name.endswith("_path")


def local_paths(document: Any) -> Iterator[tuple[str, str]]:
    """(field, value) for every path field that names a local file, not a URI."""
    if isinstance(document, dict):
        for name, value in document.items():
            if is_path_field(name) and isinstance(value, str) and "://" not in value:
                yield name, value


def resolve_paths(document: Any, cwd: Path) -> Any:
    """Make ``*_path`` fields absolute against cwd; each must name a file."""
    if not isinstance(document, dict):
        return document
    out = dict(document)
    for name, value in local_paths(document):
        path = Path(value).expanduser()
        path = path if path.is_absolute() else (cwd / path)
        if not path.is_file():
            raise InputError(f"input field {name!r}: no such file {value!r}")
        out[name] = str(path.resolve())
    return out


def upload_files(document: Any, objects: ObjectStore) -> Any:
    """Put the files that (absolute) path fields name into the object store.

    Each becomes an ``s3://`` URI the replica reads through its object store,
    so a job runs on any node, and the input is the file as it was when the
    job was submitted. Uploads are content-addressed: the same file is stored
    once.
    """
    if not isinstance(document, dict):
        return document
    out = dict(document)
    for name, value in local_paths(document):
        data = Path(value).read_bytes()
        key = keys.input_key(hashlib.sha256(data).hexdigest(), Path(value).name)
        objects.put(keys.DATA_BUCKET, key, data)  # even if there: its time says it is in use
        out[name] = keys.data_uri(key)
    return out


def offload_document(
    document: Any, objects: ObjectStore, inline_bytes: int, max_bytes: int
) -> tuple[Any, str | None]:
    """(document, None) when it is small enough to travel in the job and the record;
    else (None, URI of its copy in the object store). Over ``max_bytes`` it is refused.

    A large input in the stream would sit in Redis's memory and AOF, and in
    every record read; in the object store it is read once, by the dispatcher.
    """
    data = json.dumps(document).encode()
    if len(data) > max_bytes:
        raise InputError(
            f"input is {_mb(len(data))}, over the {_mb(max_bytes)} limit "
            "(client.max_input_bytes); pass large data as files in *_path fields"
        )
    if len(data) <= inline_bytes:
        return document, None
    key = keys.input_document_key(hashlib.sha256(data).hexdigest())
    objects.put(keys.DATA_BUCKET, key, data)
    return None, keys.data_uri(key)


def load_document(document: Any, ref: str | None, objects: ObjectStore) -> Any:
    """The input document, read back from the object store if it was offloaded."""
    if ref is None:
        return document
    return json.loads(objects.get(keys.DATA_BUCKET, keys.data_key(ref)))


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"
