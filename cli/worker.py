"""`wtm worker start | status | monitor | stop | scale`: the replicas on the cluster."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import typer
from rich.live import Live
from rich.table import Table

from cli.common import console, print_json, seconds, size, state, when

if TYPE_CHECKING:
    from orchestrator.models import ReplicaEvent, WorkerRecord

app = typer.Typer(help="Replicas that serve the tasks.", no_args_is_help=True)


@app.command()
def start(
    ctx: typer.Context,
    task: list[str] = typer.Option(None, "--task", help="Task id (repeatable); default: all."),
    queues: str | None = typer.Option(None, help="Also run a dispatcher for these queues (a,b)."),
    concurrency: int | None = typer.Option(None, min=1, help="That dispatcher's jobs at once."),
    replicas: int = typer.Option(1, min=1, help="Replicas to keep per task."),
) -> None:
    """Start replicas (loading each task once) and optionally a dispatcher."""
    workers = state(ctx).workers()
    queue_list = [q for q in (queues or "").split(",") if q]
    with console.status("starting replicas (models load once per replica)"):
        started = workers.start(task or None, replicas, queue_list, concurrency)
    for task_id, names in started["replicas"].items():
        console.print(f"{task_id}: {', '.join(names)}")
    if started["dispatcher"]:
        console.print(f"dispatcher {started['dispatcher']} on {queues or 'every queue'}")


@app.command()
def status(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json"),
    events: int = typer.Option(8, min=0, help="Also show this many recent starts and stops."),
) -> None:
    """Every replica's last heartbeat (silent ones are shown dead), and why the newest
    started or stopped."""
    client = state(ctx).client
    workers = client.workers()
    if as_json:
        print_json(workers)
        return
    console.print(_table(workers))
    if events:
        console.print(_events_table(client.replica_events(events)))


@app.command("events")
def events_(
    ctx: typer.Context,
    limit: int = typer.Option(20, min=1, help="At most this many, newest first."),
    task: str | None = typer.Option(None, "--task", help="Only this task's replicas."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Replica starts and stops, newest first, each with why (demand, warm, idle, room...)."""
    found = state(ctx).client.replica_events(limit, task)
    if as_json:
        print_json(found)
    else:
        console.print(_events_table(found))


@app.command()
def monitor(
    ctx: typer.Context,
    interval: float = typer.Option(1.0, min=0.1, help="Seconds between refreshes."),
    count: int = typer.Option(0, min=0, help="Stop after this many refreshes (0: never)."),
) -> None:
    """A live view of every replica, refreshed until Ctrl-C."""
    client = state(ctx).client
    shown = 0
    with Live(_table(client.workers()), console=console) as live:
        while count == 0 or shown < count:
            time.sleep(interval)  # a display refresh, not a synchronisation
            live.update(_table(client.workers()))
            shown += 1
    console.print()  # end the live view's last line


@app.command()
def stop(
    ctx: typer.Context,
    task: str | None = typer.Option(None, help="Only this task's replicas."),
    dispatchers: bool = typer.Option(
        False, "--dispatchers", help="Stop the dispatchers `start --queues` added instead."
    ),
) -> None:
    """Stop replicas (all, or one task's); jobs start them again on demand."""
    workers = state(ctx).workers()
    if dispatchers:
        names = workers.stop_dispatchers()
        console.print(
            f"stopped {len(names)} dispatcher(s)" + (f": {', '.join(names)}" if names else "")
        )
        return
    stopped = workers.stop(task)
    console.print(
        f"stopped {len(stopped)} replica(s)" + (f": {', '.join(stopped)}" if stopped else "")
    )


@app.command()
def scale(
    ctx: typer.Context,
    task_id: str,
    count: int = typer.Argument(..., min=0),
    version: str | None = typer.Option(None),
) -> None:
    """Pin a task to N replicas (0 lets it scale on demand again)."""
    state(ctx).workers().scale(task_id, count, version)
    console.print(f"{task_id}: scaling to {count} replica(s)")


def _table(workers: list[WorkerRecord]) -> Table:
    table = Table(title=f"workers ({len(workers)})")
    # Ids stay whole however narrow the terminal: the other columns give way.
    width = max((len(w.worker_id) for w in workers), default=9)
    table.add_column("worker_id", no_wrap=True, min_width=width)
    for column in (
        "node",
        "pid",
        "state",
        "in flight",
        "processed",
        "failed",
        "p50",
        "mean",
        "memory",
        "heartbeat",
    ):
        table.add_column(column)
    now = time.time()
    for w in workers:
        colour = {
            "dead": "red",
            "busy": "yellow",
            "broken": "magenta",
        }.get(w.state.value, "green")
        age = f"{now - w.heartbeat_at:.0f}s ago" if w.heartbeat_at else "-"
        table.add_row(
            w.worker_id,
            w.node or "-",
            str(w.pid or "-"),
            f"[{colour}]{w.state.value}[/]",
            str(w.in_flight),
            str(w.processed),
            str(w.failed),
            seconds(w.p50_latency),
            seconds(w.mean_latency),
            size(w.memory),
            age,
        )
    return table


def _events_table(events: list[ReplicaEvent]) -> Table:
    table = Table(title=f"replica starts and stops ({len(events)}, newest first)")
    table.add_column("when", no_wrap=True)
    table.add_column("replica", no_wrap=True)
    table.add_column("event")
    table.add_column("why")
    colours = {"started": "green", "stopping": "yellow", "stopped": "red"}
    for e in events:
        colour = colours.get(e.event, "white")
        table.add_row(when(e.at), e.replica, f"[{colour}]{e.event}[/]", e.reason)
    return table
