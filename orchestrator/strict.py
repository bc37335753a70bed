"""Strict inputs: a field an input schema does not declare is refused, not ignored.

A misspelled optional field (``paramters``, ``parameters.min_neighbours``)
would otherwise pass JSON Schema and the task would run on its defaults. So
each object level of an input schema that declares ``properties`` and says
nothing of other fields refuses them: silence counts as strict, because that
protects the user. A level allows extra fields when it says so
(``additionalProperties`` true or a schema, ``unevaluatedProperties``), and
``patternProperties`` lets through the names its patterns match.

Levels are followed through ``properties`` only. Array items are left as
written: they carry data, often another task's output with fields of its own
(face_detection's ``confidence`` in face_attribute's ``faces``). A level that
uses ``$ref`` is left as written too, since its fields are not all in sight.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

from orchestrator.suggest import did_you_mean

# Keywords whose subschemas may declare more fields of the same object.
_COMPOSED = ("allOf", "anyOf", "oneOf", "if", "then", "else")
_OPENING = ("additionalProperties", "unevaluatedProperties", "$ref", "$dynamicRef")


def strict_schema(schema: dict[str, Any], root: bool = True) -> dict[str, Any]:
    """A copy of ``schema`` with ``additionalProperties: false`` where it says nothing.

    ``root=False`` leaves the top level as written and makes only the nested
    objects strict (for an input that other consumers share).
    """
    out = dict(schema)
    properties = out.get("properties")
    if not isinstance(properties, dict):
        return out
    out["properties"] = {
        name: strict_schema(sub) if isinstance(sub, dict) else sub
        for name, sub in properties.items()
    }
    composed = _composed_fields(schema)
    if root and composed is not None and not any(k in schema for k in _OPENING):
        # Fields declared only in allOf/anyOf/... branches are fields of this object too.
        extra = {name: {} for name in composed if name not in properties}
        out["properties"] = {**out["properties"], **extra}
        out["additionalProperties"] = False
    return out


def declared_fields(schema: dict[str, Any] | None) -> set[str] | None:
    """The top-level fields a strict input schema takes, or None when it takes any."""
    if not schema or not isinstance(schema.get("properties"), dict):
        return None
    if schema.get("additionalProperties", False) is not False or "patternProperties" in schema:
        return None
    if any(k in schema for k in _OPENING[1:]):
        return None
    composed = _composed_fields(schema)
    return None if composed is None else set(schema["properties"]) | composed


def unknown_field(error: Any) -> str | None:
    """The one-line message for a jsonschema ``additionalProperties: false`` error
    (``unknown field 'parameters.min_neighbours' (did you mean `min_neighbors`?)``),
    or None for any other error."""
    if error.validator != "additionalProperties" or error.validator_value is not False:
        return None
    properties = error.schema.get("properties") or {}
    patterns = error.schema.get("patternProperties") or {}
    name = next(_extra_names(error.instance, properties, patterns), None)
    if name is None:
        return None
    where = dotted([*error.absolute_path, name])
    return f"unknown field {where!r}{did_you_mean(name, properties)}"


def dotted(path: Sequence[str | int]) -> str:
    """``['faces', 0, 'bbox']`` → ``faces[0].bbox``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _extra_names(instance: Any, properties: dict, patterns: dict) -> Iterator[str]:
    if isinstance(instance, dict):
        for name in instance:
            if name not in properties and not any(re.search(p, name) for p in patterns):
                yield name


def _composed_fields(schema: dict[str, Any]) -> set[str] | None:
    """Fields declared by branches of allOf/anyOf/oneOf/if/then/else at this level;
    None when a branch may take fields out of sight ($ref, patternProperties)."""
    names: set[str] = set()
    for key in _COMPOSED:
        value = schema.get(key)
        for branch in value if isinstance(value, list) else [value]:
            if not isinstance(branch, dict):
                continue
            if any(k in branch for k in ("patternProperties", *_OPENING[1:])):
                return None
            if branch.get("additionalProperties", False) is not False:
                return None
            more = _composed_fields(branch)
            if more is None:
                return None
            names |= set(branch.get("properties") or {}) | more
    return names
