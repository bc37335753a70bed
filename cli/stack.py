"""`wtm up | down | health | demo`: the embedded stack and the guided demo."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cli.common import console, print_json, render_result, seconds, state
from cli.executions import steps_table
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
    image: Path = typer.Option(Path("data/images/astronaut_grid.jpg"), help="Photo to process."),
    tasks_dir: Path = typer.Option(Path("task_pkgs"), help="Example task packages."),
    pipelines_dir: Path = typer.Option(Path("pipelines"), help="Built-in pipelines."),
) -> None:
    """Register the examples and run the face processing pipeline on a sample photo."""
    client = state(ctx).client
    for folder in sorted(p for p in tasks_dir.iterdir() if (p / "task.json").is_file()):
        record, changed = client.register_task(folder)
        verb = "registered" if changed else "already registered"
        console.print(f"{verb} task {record.task_id} {record.version} ({record.sha256[:12]})")
    for path in sorted(pipelines_dir.glob("*.json")):
        for pipeline, changed in client.register_pipelines(path):
            verb = "registered" if changed else "already registered"
            console.print(f"{verb} pipeline {pipeline.pipeline_id} {pipeline.version}")
    with console.status(f"running face_processing_pipeline on {image} through the queue"):
        record = client.run("face_processing_pipeline", {"image_path": str(image)})
    if record.error:
        raise ExecutionFailed(record)
    faces = [
        {
            "face_id": f["face_id"],
            "bbox": f["bbox"],
            **f.get("attributes", {}),
            "features": f"{len(f.get('features', []))}-d, first {f['features'][0]:+.3f}"
            if f.get("features")
            else "-",
        }
        for f in record.result["faces"]
    ]
    render_result({"faces": faces}, title="faces")
    console.print(steps_table(record))
    console.print(
        f"{record.result['summary']['face_count']} face(s) on {image.name}; execution "
        f"{record.execution_id} {record.status.value} in {seconds(record.duration)} "
        f"(queue wait {seconds(record.queue_wait)})"
    )
    st = stack.read_state(client.settings)
    if st and st.dashboard_url:
        console.print(f"Ray dashboard: {st.dashboard_url}")
