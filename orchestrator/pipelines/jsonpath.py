"""JSONPath for input mappings, through ``jsonpath-ng`` (its extended grammar).

Fields, ``[n]``, ``['k']``, wildcards ``[*]`` / ``.*``, slices ``[1:3]``,
filters ``[?(@.score > 0.5)]`` and recursive descent ``$..bbox`` all work. A
*singular* path (fields and indexes only) reads one value; any other path
reads the list of every match, so ``$.detection.faces[*].bbox`` is the list of
every face's bbox.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from jsonpath_ng import jsonpath as ast
from jsonpath_ng.ext import parse as _parse

from orchestrator.errors import PathNotFound, SpecError


@dataclass(frozen=True)
class Path:
    """A parsed mapping path."""

    text: str
    expr: Any  # the jsonpath-ng expression
    segments: tuple[Any, ...]  # the chain of nodes after ``$``, outermost first

    @property
    def head(self) -> str | None:
        """The first field read (``detection`` in ``$.detection.faces``), if it is one."""
        return self.field(0)

    def field(self, i: int) -> str | None:
        """The field the ``i``-th segment reads, if it is one field."""
        return _field_name(self.segments[i]) if i < len(self.segments) else None

    @property
    def singular(self) -> bool:
        """Whether the path names one place (fields and single indexes only)."""
        return all(_field_name(s) is not None or _single_index(s) for s in self.segments)


@functools.lru_cache(maxsize=1024)  # a replica reads the same few mappings on every job
def parse(text: str) -> Path:
    """A mapping path; SpecError naming the path for anything that does not parse."""
    if not text.startswith("$"):
        raise SpecError(f"mapping {text!r} must start with '$'")
    try:
        expr = _parse(text)
    except Exception as e:  # its parser raises JSONPathError, its lexer bare Exceptions
        raise SpecError(f"mapping {text!r}: cannot read it ({e})") from e
    return Path(text, expr, tuple(_chain(expr)))


def read(path: Path, document: Any) -> Any:
    """The value a singular path names (PathNotFound if absent), or every match of any other."""
    matches = [m.value for m in path.expr.find(document)]
    if not path.singular:
        return matches
    if not matches:
        raise PathNotFound(f"nothing at {path.text}")
    return matches[0]


def _chain(expr: Any) -> list[Any]:
    """``Child(Child(Root, a), b)`` → ``[a, b]``; other shapes stay one node."""
    if isinstance(expr, ast.Child):
        return [*_chain(expr.left), *_chain(expr.right)]
    if isinstance(expr, ast.Root):
        return []
    return [expr]


def _field_name(node: Any) -> str | None:
    if isinstance(node, ast.Fields) and len(node.fields) == 1 and node.fields[0] != "*":
        return node.fields[0]
    return None


def _single_index(node: Any) -> bool:
    return isinstance(node, ast.Index) and len(node.indices) == 1


def schema_problem(path: Path, schema: dict[str, Any], skip: int = 1) -> str | None:
    """Why ``path`` (after its first ``skip`` nodes) cannot name anything ``schema`` allows.

    Follows fields through ``properties`` and indexes and wildcards through
    ``items``. A field is a problem when the object's schema lists its
    ``properties`` without it and does not allow others; anything the walk
    cannot follow (``$ref``, combinators, filters) is given the benefit of the
    doubt.
    """
    node = schema
    for segment in path.segments[skip:]:
        name = _field_name(segment)
        if name is not None:
            props = node.get("properties")
            if not isinstance(props, dict):
                return None
            if name not in props:
                # Only the properties it lists count, unless it says others are welcome
                # (additionalProperties true or a schema) or matches names by pattern.
                others = node.get("additionalProperties", False)
                if others is not False or node.get("patternProperties"):
                    return None
                known = ", ".join(sorted(props)) or "none"
                return f"no field {name!r} (it has: {known})"
            node = props[name]
        elif isinstance(segment, (ast.Index, ast.Slice, ast.Wildcard)):
            items = node.get("items")
            if not isinstance(items, dict):
                return None
            node = items
        else:
            return None
        if not isinstance(node, dict):
            return None
    return None
