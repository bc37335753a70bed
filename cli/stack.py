"""`wtm up | down | health | demo`: the embedded stack and the guided demo."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cli.common import console, err_console, print_json, render_result, seconds, state
from orchestrator import stack
from orchestrator.errors import ExecutionFailed


def up(ctx: typer.Context) -> None:
    """Start the embedded stack (Redis, Ray head, dispatchers); idempotent."""
    settings = state(ctx).settings
    with console.status("starting the embedded stack") as status:
        st = stack.up(settings, notify=lambda msg: status.update(msg))
    console.print(f"[green]up[/green] in {settings.home}")
    if st.dashboard_url:
        console.print(f"Ray dashboard: {st.dashboard_url}")


def down(ctx: typer.Context) -> None:
    """Stop everything `wtm up` started for this WTM_HOME."""
    stopped = stack.down(state(ctx).settings)
    if stopped:
        console.print(f"stopped: {', '.join(stopped)}")
    else:
        console.print("nothing was running")


def health(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Report each component: Redis, records, objects, Ray, dispatchers."""
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
    image: Path = typer.Option(Path("data/images/astronaut.jpg"), help="Photo to process."),
    tasks_dir: Path = typer.Option(Path("task_pkgs"), help="Example task packages."),
) -> None:
    """Register the example tasks and run face detection on a sample photo."""
    app = state(ctx)
    client = app.client
    for folder in sorted(p for p in tasks_dir.iterdir() if (p / "task.json").is_file()):
        record, changed = client.register_task(folder)
        verb = "registered" if changed else "already registered"
        console.print(f"{verb} {record.task_id} {record.version} ({record.sha256[:12]})")
    with console.status(f"running face_detection on {image} through the queue"):
        record = client.run("face_detection", {"image_path": str(image)})
    if record.error:
        raise ExecutionFailed(record)
    render_result(record.result, title=f"face_detection on {image.name}")
    console.print(
        f"execution {record.execution_id}: {record.status.value} on {record.worker_id}, "
        f"queue wait {seconds(record.queue_wait)}, run {seconds(record.duration)}"
    )
    st = stack.read_state(client.settings)
    if st and st.dashboard_url:
        err_console.print(f"Ray dashboard: {st.dashboard_url}")
