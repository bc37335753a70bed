"""`wtm executions list | show | cancel | retry | prune`: the history in the records."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.table import Table

from cli.common import (
    console,
    print_json,
    seconds,
    show_record,
    size,
    state,
    status_style,
    steps_table,
    when,
)
from cli.live import show_outcome

if TYPE_CHECKING:
    from orchestrator import logs

app = typer.Typer(help="Execution history.", no_args_is_help=True)


@app.command("list")
def list_(
    ctx: typer.Context,
    status: str | None = typer.Option(None, help="Only this status (e.g. failed)."),
    limit: int = typer.Option(20, min=1, help="At most this many, newest first."),
    target: str | None = typer.Option(None, "--task", help="Only this task or pipeline."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List executions, newest first."""
    records = state(ctx).client.executions(status, limit, target)
    if as_json:
        print_json(records)
        return
    table = Table(title=f"executions ({len(records)})")
    table.add_column("execution_id", no_wrap=True, min_width=26)  # ids stay whole
    for column in (
        "target",
        "status",
        "submitted",
        "queue wait",
        "duration",
        "attempts",
        "deliveries",
        "worker",
        "memory",
    ):
        table.add_column(column)
    for r in records:
        table.add_row(
            r.execution_id,
            r.target,
            status_style(r.status),
            when(r.submitted_at),
            seconds(r.queue_wait),
            seconds(r.duration),
            str(r.attempts),
            str(r.deliveries),
            r.worker_id or "-",
            size(r.memory_usage),
        )
    console.print(table)


@app.command()
def show(
    ctx: typer.Context,
    execution_id: str,
    as_json: bool = typer.Option(False, "--json"),
    lines: int = typer.Option(10, "--lines", min=0, help="Log lines to show per file."),
) -> None:
    """One execution: status, timings, steps, error and result, and where its logs are."""
    app_state = state(ctx)
    record = app_state.client.execution(execution_id)
    if as_json:
        print_json(record)
        return
    show_record(record, as_json=False)
    console.print(steps_table(record))
    from orchestrator.logs import execution_logs

    replicas = [s.worker_id for s in record.steps if s.worker_id] + [record.worker_id or ""]
    show_logs(execution_logs(app_state.settings, execution_id, list(filter(None, replicas))), lines)


def show_logs(found: list[logs.LogLines], lines: int) -> None:
    """Each log file that concerns the execution, with its last lines naming it."""
    if not found:
        console.print("logs: no line names this execution (dispatchers log successes at DEBUG)")
    for f in found:
        where = "" if f.exists else " (not on this machine: on the node that ran it)"
        console.print(f"logs of {f.process}: {f.path}{where}, {len(f.lines)} line(s) name it")
        for line in f.lines[-lines:] if lines else []:
            console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def cancel(ctx: typer.Context, execution_id: str) -> None:
    """Cancel a queued or running execution (a running step is stopped with its replica)."""
    record = state(ctx).client.cancel(execution_id)
    if record.status.value == "cancelled":
        console.print(f"{execution_id} cancelled")
    else:
        console.print(f"{execution_id} is running: its running step is being stopped")


@app.command()
def retry(
    ctx: typer.Context,
    execution_id: str,
    wait: bool = typer.Option(False, "--wait/--no-wait", help="Wait for the new execution."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Submit a finished execution again with the same input; prints the new id."""
    job = state(ctx).client.retry(execution_id)
    if wait:
        show_outcome(job, None, as_json)
    elif as_json:
        print_json({"execution_id": job.id})
    else:
        console.print(job.id)


@app.command()
def watch(
    ctx: typer.Context,
    execution_id: str,
    timeout: float | None = typer.Option(None, help="Stop watching after this many seconds."),
    as_json: bool = typer.Option(False, "--json", help="Print the ended record as JSON."),
) -> None:
    """Attach to an execution: its status and steps live until it ends, then its result.

    Exits 0 if it succeeded, 1 if not (or if --timeout ran out first)."""
    show_outcome(state(ctx).client.job(execution_id), timeout, as_json)


@app.command()
def prune(
    ctx: typer.Context,
    older_than: str | None = typer.Option(
        None,
        "--older-than",
        help="Age such as 30d, 12h, 90m (default: the retention setting, 30d).",
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Forget finished executions older than this, with their results, kept outputs,
    unused uploaded inputs and dead letters; queued and running ones stay."""
    client = state(ctx).client
    if as_json:
        print_json(client.prune(older_than).as_dict())
        return
    with console.status("pruning") as status:
        pruned = client.prune(older_than, progress=lambda what: status.update(f"pruning {what}"))
    console.print(
        f"pruned {pruned.executions} execution(s), {pruned.objects} object(s), "
        f"{pruned.dead_letters} dead letter(s), {pruned.workers} worker row(s)"
    )
