"""`wtm run TARGET INPUT`: one execution through the queue."""

from __future__ import annotations

from typing import Any

import typer

from cli.common import console, err_console, print_json, show_record, state, steps_table
from orchestrator import Client
from orchestrator.client import Kind
from orchestrator.errors import Detached
from orchestrator.inputs import parse_input
from orchestrator.models import ExecutionRecord, ExecutionStatus


def run(
    ctx: typer.Context,
    target: str = typer.Argument(..., help="A registered task or pipeline id."),
    input_text: str = typer.Argument(
        ..., metavar="INPUT", help="JSON text, @file.json, or a bare string."
    ),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait for the result."),
    priority: int | None = typer.Option(None, help="1 (low) to 10 (high)."),
    version: str | None = typer.Option(None, help="Pin a task version."),
    timeout: float | None = typer.Option(None, help="Stop waiting after this many seconds."),
    as_json: bool = typer.Option(False, "--json", help="Print the execution record as JSON."),
    key: str | None = typer.Option(
        None, "--key", help="Idempotency key: a key seen before returns that execution."
    ),
) -> None:
    """Run a task or a pipeline through the queue and (by default) wait for it."""
    execute(
        state(ctx).client,
        target,
        parse_input(input_text),
        wait=wait,
        priority=priority,
        version=version,
        timeout=timeout,
        as_json=as_json,
        key=key,
    )


def execute(
    client: Client,
    target: str,
    document: Any,
    *,
    wait: bool,
    priority: int | None,
    version: str | None,
    timeout: float | None,
    as_json: bool,
    kind: Kind | None = None,
    key: str | None = None,
) -> None:
    """Submit (printing the id) or run and show the record; shared by run and execute."""
    options = {"priority": priority, "version": version, "kind": kind, "idempotency_key": key}
    if not wait:
        execution_id = client.submit(target, document, **options)
        print_json({"execution_id": execution_id}) if as_json else console.print(execution_id)
        return
    try:
        record = client.run(target, document, timeout=timeout, **options)
    except Detached as e:  # Ctrl-C: the execution goes on; say how to find it
        err_console.print(
            f"interrupted: execution {e.execution_id} is still running. Follow it with "
            f"`wtm executions show {e.execution_id}`, stop it with "
            f"`wtm executions cancel {e.execution_id}`",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(130) from e
    show_record(record, as_json)
    if record.kind == "pipeline" and not as_json:
        console.print(steps_table(record))
    exit_unless_succeeded(record, timeout)


def exit_unless_succeeded(record: ExecutionRecord, timeout: float | None) -> None:
    """Exit 1 for a failed execution, or one still going when --timeout ran out."""
    if record.status == ExecutionStatus.SUCCEEDED:
        return
    if not record.status.terminal:
        waited = f" after {timeout:g}s" if timeout is not None else ""
        err_console.print(
            f"still {record.status.value}{waited}; follow it with "
            f"`wtm executions show {record.execution_id}`"
        )
    raise typer.Exit(1)
