"""`wtm up | down | health | demo`: the embedded stack and the guided demo."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer
from rich.table import Table

from cli.common import console, print_json, render_result, seconds, state, steps_table
from orchestrator.errors import InputError


def up(ctx: typer.Context) -> None:
    """Start the embedded stack (Redis, Ray head, dispatchers); idempotent."""
    from orchestrator import stack

    settings = state(ctx).settings
    with console.status("starting the embedded stack") as status:
        st = stack.up(settings, notify=lambda msg: status.update(msg))
    console.print(f"[green]up[/green] in {settings.home}")
    if st.dashboard_url:
        console.print(f"Ray dashboard: {st.dashboard_url}")
    if st.ray_token_file:  # the dashboard asks for it once per browser
        console.print(f"Ray auth token: in {st.ray_token_file}")
    if st.metrics_url:
        console.print(f"Metrics (Prometheus): {st.metrics_url}")


def down(ctx: typer.Context) -> None:
    """Stop everything `wtm up` started for this WTM_HOME."""
    from orchestrator import stack

    settings = state(ctx).settings
    stopped = stack.down(settings)
    if stopped:
        console.print(f"stopped {len(stopped)} processes of the stack in {settings.home}")
    else:
        console.print("nothing was running")


def supervise(ctx: typer.Context) -> None:
    """Keep the control plane deployed on your own cluster (runs until stopped).

    For production (WTM_REDIS__URL and WTM_RAY__ADDRESS set): whenever the
    controller and dispatchers are gone, a new Ray head say, they are deployed
    again. The embedded stack needs none: `wtm up` starts its own supervisor.
    """
    settings = state(ctx).settings
    if settings.embedded:
        raise InputError(
            "`wtm supervise` watches a cluster you run (set WTM_REDIS__URL and "
            "WTM_RAY__ADDRESS); the embedded stack is supervised by `wtm up`"
        )
    from orchestrator import logs
    from orchestrator.stack.supervisor import watch_cluster

    # Every line to stderr too, in the configured format: the container's log.
    logs.configure(settings, "supervise", stderr=settings.log_level)
    with contextlib.suppress(KeyboardInterrupt):
        watch_cluster(settings)


def health(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Report each component: Redis, records, objects, Ray, dispatchers."""
    from orchestrator import stack

    components = stack.health(state(ctx).settings)
    if as_json:
        print_json(components)
    else:
        table = Table(title="wtm health")
        for column in ("component", "status", "detail"):
            table.add_column(column)
        for c in components:
            table.add_row(c.name, "[green]ok[/]" if c.ok else "[red]down[/]", c.detail)
        console.print(table)
    if not all(c.ok for c in components):
        raise typer.Exit(1)


def demo(
    ctx: typer.Context,
    image: Path = typer.Option(Path("data/images/astronaut_grid.jpg"), help="Photo to process."),
    tasks_dir: Path = typer.Option(Path("task_pkgs"), help="Example task packages."),
    pipelines_dir: Path = typer.Option(Path("pipelines"), help="Built-in pipelines."),
) -> None:
    """Register the examples and run the face processing pipeline on a sample photo."""
    from orchestrator import stack
    from orchestrator.demo import run_demo

    client = state(ctx).client
    with console.status(f"registering the examples, then running the face pipeline on {image}"):
        done = run_demo(client, image, tasks_dir, pipelines_dir)
    for r in done.registered:
        verb = "registered" if r.changed else "unchanged"
        console.print(f"{verb} {r.kind} {r.name} {r.version} ({r.sha256[:12]})")
    record = done.record
    render_result({"faces": done.faces}, title="faces")
    console.print(steps_table(record))
    console.print(
        f"{done.face_count} face(s) on {image.name}; execution "
        f"{record.execution_id} {record.status.value} in {seconds(record.duration)} "
        f"(queue wait {seconds(record.queue_wait)})"
    )
    st = stack.read_state(client.settings)
    if st and st.dashboard_url:
        console.print(f"Ray dashboard: {st.dashboard_url}")
