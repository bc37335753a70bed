"""`wtm warm TARGET`: start a task's or pipeline's replicas before a burst."""

from __future__ import annotations

import typer
from rich.table import Table

from cli.common import console, err_console, print_json, state


def warm(
    ctx: typer.Context,
    target: str = typer.Argument(..., help="A registered task or pipeline id."),
    version: str | None = typer.Option(None, help="A version of it (default: the latest)."),
    timeout: float | None = typer.Option(None, help="Stop waiting after this many seconds."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Start the replicas TARGET needs and wait until their models are loaded.

    Replicas stay until idle for `controller.idle_timeout_s`, so the next runs
    load nothing. Exits 1 if some task got fewer replicas than its plan wants.
    """
    client = state(ctx).client
    with console.status(f"warming {target}: starting replicas, loading models"):
        report = client.warm(target, version=version, timeout=timeout)
    if as_json:
        print_json(report)
    else:
        table = Table(title=f"{target}: replicas ready")
        for column in ("task version", "ready", "wanted", "replicas"):
            table.add_column(column)
        for key, got in sorted(report.items()):
            ready = len(got["ready"])
            colour = "green" if ready >= got["wanted"] else "yellow"
            replicas = ", ".join(got["ready"]) or "-"
            table.add_row(key, f"[{colour}]{ready}[/]", str(got["wanted"]), replicas)
        console.print(table)
    short = {key: got["short"] for key, got in report.items() if got["short"]}
    for key, why in short.items():
        err_console.print(f"{key}: fewer replicas than wanted: {why}")
    if short:
        raise typer.Exit(1)
