"""The JSONPath subset that input mappings use: ``$.a.b``, ``[n]``, ``[*]``, ``['k']``.

``[*]`` maps the rest of the path over a list, so ``$.detection.faces[*].bbox``
is the list of every face's bbox.
"""

from __future__ import annotations

import re
from typing import Any

from orchestrator.errors import SpecError

_TOKEN = re.compile(r"\.([A-Za-z_][\w-]*)|\[(\d+|\*)\]|\[['\"]([^'\"]+)['\"]\]")
WILDCARD = "*"


class Missing(LookupError):
    """Raised when a path reads a field or index the document does not have."""


def parse(path: str) -> list[str | int]:
    """``$.a[0].b`` → ``["a", 0, "b"]``; SpecError for anything else."""
    if not path.startswith("$"):
        raise SpecError(f"mapping {path!r} must start with '$'")
    segments: list[str | int] = []
    pos = 1
    while pos < len(path):
        match = _TOKEN.match(path, pos)
        if match is None:
            raise SpecError(f"mapping {path!r}: cannot read {path[pos:]!r}")
        name, index, quoted = match.groups()
        if index == WILDCARD:
            segments.append(WILDCARD)
        elif index is not None:
            segments.append(int(index))
        else:
            segments.append(name or quoted)
        pos = match.end()
    return segments


def read(document: Any, segments: list[str | int]) -> Any:
    """Follow segments through a document; Missing names what is absent."""
    value = document
    for i, segment in enumerate(segments):
        if segment == WILDCARD:
            if not isinstance(value, list):
                raise Missing(f"[*] applied to a {type(value).__name__}")
            return [read(item, segments[i + 1 :]) for item in value]
        if isinstance(segment, int):
            if not isinstance(value, list) or segment >= len(value):
                raise Missing(f"no index [{segment}]")
            value = value[segment]
        else:
            if not isinstance(value, dict) or segment not in value:
                raise Missing(f"no field {segment!r}")
            value = value[segment]
    return value
