"""`wtm run TARGET INPUT`: one execution through the queue."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from cli.common import console, print_json, state
from cli.live import show_outcome
from orchestrator.inputs import parse_input

if TYPE_CHECKING:
    from orchestrator import Client
    from orchestrator.client import Kind


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
    cache: bool = typer.Option(
        True, "--cache/--no-cache", help="--no-cache runs every step, cached or not."
    ),
) -> None:
    """Run a task or a pipeline through the queue and (by default) follow it live."""
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
        cache=cache,
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
    cache: bool = True,
) -> None:
    """Submit (printing the id) or follow it live and show the record; shared by
    run and execute."""
    options = {"priority": priority, "version": version, "kind": kind, "idempotency_key": key}
    job = client.submit(target, document, cache=cache, **options)
    if not wait:
        print_json({"execution_id": job.id}) if as_json else console.print(job.id)
        return
    show_outcome(job, timeout, as_json)
