"""Building a step's input from the pipeline input and upstream outputs.

Runs on the replica, after Ray has resolved the upstream outputs there.
"""

from __future__ import annotations

from typing import Any

from orchestrator.errors import FatalError
from orchestrator.pipelines import jsonpath


def step_input(
    mapping: dict[str, str] | None, pipeline_input: Any, upstream: dict[str, Any]
) -> dict[str, Any]:
    """A step's input document.

    Without a mapping: the pipeline input merged with ``{step_id: output}`` for
    each dependency. With one: each field's JSONPath, where ``$.<step_id>...``
    reads a step's output (step ids win), ``$.input...`` always reads the
    pipeline input, and any other ``$.<field>`` reads the pipeline input. A
    missing pipeline-input field is left out (it may be optional); a missing
    step-output field is an error naming the mapping.
    """
    if not mapping:
        base = dict(pipeline_input) if isinstance(pipeline_input, dict) else {}
        return {**base, **upstream}
    out: dict[str, Any] = {}
    for field, path in mapping.items():
        segments = jsonpath.parse(path)
        head = segments[0] if segments else None
        if head in upstream:
            source, rest, from_step = upstream[head], segments[1:], True
        elif head == "input":
            source, rest, from_step = pipeline_input, segments[1:], False
        else:
            source, rest, from_step = pipeline_input, segments, False
        try:
            out[field] = jsonpath.read(source, rest)
        except jsonpath.Missing as e:
            if from_step:
                raise FatalError(f"mapping {field!r} = {path!r}: {e}") from e
    return out
