"""A loaded task with its schemas enforced: what a replica and `task test` call."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np

from orchestrator.errors import ValidationError
from orchestrator.models import TaskRecord
from orchestrator.objects import ObjectStore
from orchestrator.outputs import check_recordable
from orchestrator.packages import fetch, load_task
from orchestrator.sdk import TaskBase
from orchestrator.strict import strict_schema, unknown_field


class TaskRunner:
    """Validates input, runs the task, validates output. Thread-safe if the task is."""

    def __init__(self, record: TaskRecord, task: TaskBase):
        self.record = record
        self.task = task
        self._input = compiled(record.spec.input_schema)
        self._output = compiled(record.spec.output_schema)

    @classmethod
    def load(cls, record: TaskRecord, objects: ObjectStore, cache: Path) -> TaskRunner:
        """Fetch, verify and import a registered package."""
        task = load_task(record, fetch(record, objects, cache))
        task.objects = objects
        return cls(record, task)

    @property
    def load_count(self) -> int:
        return self.task.load_count

    def __call__(self, input_data: Any) -> dict[str, Any]:
        check(self._input, input_data, f"{self.record.task_id} input")
        output = self.task.run(input_data)
        check(self._output, output, f"{self.record.task_id} output")
        check_recordable(output, f"{self.record.task_id} output")
        return output

    def run_batch(self, inputs: list[Any]) -> list[Any]:
        """Validate each input, run the batch once, validate each output.

        An input that fails validation gets its own error back in its slot;
        the rest of the batch still runs.
        """
        results: list[Any] = [None] * len(inputs)
        valid = []
        for i, item in enumerate(inputs):
            try:
                check(self._input, item, f"{self.record.task_id} input")
                valid.append(i)
            except ValidationError as e:
                results[i] = e
        self.task.ensure_ready()
        outputs = self.task.process_batch([inputs[i] for i in valid]) if valid else []
        if len(outputs) != len(valid):
            raise ValidationError(
                f"{self.record.task_id}: process_batch returned {len(outputs)} results "
                f"for {len(valid)} inputs"
            )
        for i, output in zip(valid, outputs, strict=True):
            try:
                check(self._output, output, f"{self.record.task_id} output")
                check_recordable(output, f"{self.record.task_id} output")
                results[i] = output
            except ValidationError as e:
                results[i] = e
        return results


def compiled(
    schema: dict | None, strict: bool = False, top: bool = True
) -> jsonschema.protocols.Validator | None:
    """The schema compiled (None without one): as written, what a replica enforces (its
    input may hold upstream outputs), or strict (orchestrator.strict), what a submit does."""
    return _compiled(json.dumps(schema, sort_keys=True), strict, top) if schema else None


@functools.lru_cache(maxsize=256)  # a client checks the same few schemas on every submit
def _compiled(text: str, strict: bool, top: bool) -> jsonschema.protocols.Validator:
    schema = json.loads(text)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return _with_numpy_types(cls)(strict_schema(schema, top) if strict else schema)


@functools.cache
def _with_numpy_types(cls):
    """The validator class, with numpy arrays counted as arrays and numpy numbers as
    numbers (outputs may hold them; see orchestrator.outputs)."""
    base = cls.TYPE_CHECKER

    def array(checker, value) -> bool:
        return isinstance(value, np.ndarray) or base.is_type(value, "array")

    def number(checker, value) -> bool:
        return isinstance(value, np.number) or base.is_type(value, "number")

    def integer(checker, value) -> bool:
        return isinstance(value, np.integer) or base.is_type(value, "integer")

    types = base.redefine_many({"array": array, "number": number, "integer": integer})
    return jsonschema.validators.extend(cls, type_checker=types)


def check(validator, document: Any, what: str) -> None:
    """Raise ValidationError naming the first offending field, if any."""
    if validator is not None:
        _raise_best(validator.iter_errors(document), what)


def _raise_best(errors, what: str) -> None:
    error = jsonschema.exceptions.best_match(errors)
    if error is None:
        return
    unknown = unknown_field(error)
    if unknown:
        raise ValidationError(f"{what}: {unknown}")
    where = "/".join(str(p) for p in error.absolute_path)
    field = f" field {where!r}" if where else ""
    raise ValidationError(f"{what}{field}: {_message(error)}")


def _message(error) -> str:
    """Schema errors in a user's words: an anyOf of required fields names them."""
    if error.validator in ("anyOf", "oneOf"):
        fields = [f for alt in error.validator_value for f in alt.get("required", [])]
        if fields and all(set(alt) == {"required"} for alt in error.validator_value):
            return "needs one of " + ", ".join(repr(f) for f in fields)
    return error.message


def validate_input(schema: dict | None, document: Any, what: str, strict_top: bool = True) -> None:
    """Check a document against a JSON Schema before anything is queued.

    Unknown fields are refused unless the schema allows them (orchestrator.strict);
    ``strict_top=False`` leaves the top level as written (an input other steps share).
    """
    check(compiled(schema, strict=True, top=strict_top), document, what)


def validate_fields(schema: dict | None, document: Any, what: str, strict_top: bool = True) -> None:
    """Check the part of an input that is known before it runs: errors inside the fields
    it holds, and unknown ones, but not the fields it lacks (upstream steps fill them)."""
    validator = compiled(schema, strict=True, top=strict_top)
    if validator is not None:
        errors = validator.iter_errors(document)
        _raise_best((e for e in errors if e.absolute_path or unknown_field(e)), what)
