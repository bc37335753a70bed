"""Building a step's input from the pipeline input and upstream outputs.

Runs on the replica, after Ray has resolved the upstream outputs there.
"""

from __future__ import annotations

from typing import Any

from orchestrator.errors import FatalError, PathNotFound
from orchestrator.pipelines import jsonpath

#: ``$.input...`` always reads the pipeline input, whatever the steps are called.
INPUT = "input"


def step_input(
    mapping: dict[str, str] | None, pipeline_input: Any, upstream: dict[str, Any]
) -> dict[str, Any]:
    """A step's input document.

    Without a mapping: the pipeline input merged with ``{step_id: output}`` for
    each dependency. With one, each field's JSONPath reads a scope where
    ``$.<step_id>...`` is a step's output (step ids win over input fields),
    ``$.input...`` the pipeline input, and any other ``$.<field>`` a pipeline
    input field. A missing pipeline-input field is left out (it may be
    optional); a missing step-output field is an error naming the mapping.
    """
    base = dict(pipeline_input) if isinstance(pipeline_input, dict) else {}
    if not mapping:
        return {**base, **upstream}
    scope = {**base, **upstream, INPUT: pipeline_input}
    out: dict[str, Any] = {}
    for field, text in mapping.items():
        path = jsonpath.parse(text)
        try:
            out[field] = jsonpath.read(path, scope)
        except PathNotFound as e:
            if path.head in upstream:
                raise FatalError(f"mapping {field!r} = {text!r}: {e}") from e
    return out
