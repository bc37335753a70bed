"""`wtm pipeline register | list | info | validate | execute | delete`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.syntax import Syntax
from rich.table import Table
from rich.tree import Tree

from cli import run
from cli.common import console, print_json, state, when
from orchestrator.errors import NotFoundError
from orchestrator.inputs import parse_input

app = typer.Typer(help="Register, inspect and execute pipelines.", no_args_is_help=True)


@app.command()
def register(
    ctx: typer.Context,
    files: list[Path] = typer.Argument(None, help="Pipeline files (default: pipelines/*.json)."),
    json_config: Path | None = typer.Option(None, help="A config_pipeline.json file."),
    force: bool = typer.Option(False, help="Replace a version registered with other content."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Validate and store pipelines (every file in pipelines/ when none is named)."""
    client = state(ctx).client
    paths = list(files or []) + ([json_config] if json_config else [])
    if paths:
        done = client.register_pipeline_files(paths, force=force)
    else:
        done = client.register_pipelines_in(Path("pipelines"), force=force)
    if as_json:
        print_json([record for record, _ in done])
        return
    for record, changed in done:
        verb = "registered" if changed else "unchanged"
        console.print(f"{verb} {record.pipeline_id} {record.version}")


@app.command("list")
def list_(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Registered pipelines, one row per version."""
    records = state(ctx).client.pipelines()
    if as_json:
        print_json(records)
        return
    table = Table(title=f"pipelines ({len(records)} versions)")
    table.add_column("pipeline_id", no_wrap=True)
    for column in ("version", "name", "steps", "groups", "enabled", "registered"):
        table.add_column(column)
    for r in records:
        spec = r.spec
        groups = sorted({s.parallel_group for s in spec.steps if s.parallel_group})
        table.add_row(
            r.pipeline_id,
            r.version,
            spec.name or "",
            str(len(spec.steps)),
            ", ".join(groups) or "-",
            str(spec.enabled),
            when(r.registered_at),
        )
    console.print(table)


@app.command()
def info(
    ctx: typer.Context,
    pipeline_id: str,
    version: str | None = typer.Option(None),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Steps as a tree with dependencies and groups, then a Mermaid graph."""
    from orchestrator.pipelines.registry import mermaid

    client = state(ctx).client
    record = client.pipeline(pipeline_id, version)
    spec = record.spec
    try:  # what each step would run with now: every level of the policy resolved
        policies = {
            s.step_id: s.policy
            for s in client.plan(pipeline_id, record.version, kind="pipeline").steps
        }
    except NotFoundError:  # a task it uses is gone; the tree still shows the pipeline
        policies = {}
    if as_json:
        print_json(
            {
                **record.model_dump(mode="json"),
                "mermaid": mermaid(spec),
                "policies": {k: v.model_dump() for k, v in policies.items()},
            }
        )
        return
    tree = Tree(f"[bold]{spec.pipeline_id}[/bold] {record.version}: {spec.name or ''}")
    if spec.description:
        tree.add(spec.description)
    steps = tree.add("steps")
    for s in spec.steps:
        node = steps.add(
            f"[bold]{s.id}[/bold] → task {s.task_id}"
            + (f" [cyan](group {s.parallel_group})[/cyan]" if s.parallel_group else "")
        )
        node.add(f"depends on: {', '.join(s.deps) or '-'}")
        policy = policies.get(s.id)
        retries = policy and f"{policy.retries} retr{'y' if policy.retries == 1 else 'ies'}"
        node.add(
            f"runs with: timeout {policy.timeout:g} s, {retries}"
            if policy
            else "runs with: unknown (a task it uses is not registered)"
        )
        for field, path in (s.input_mapping or {}).items():
            node.add(f"{field} ← {path}", highlight=False)
    for name, value in (
        ("input_validation", spec.input_validation),
        ("output_format", spec.output_format),
        ("metadata", spec.metadata),
        ("global_settings", spec.global_settings),
    ):
        if value:
            data = value if isinstance(value, dict) else value.model_dump()
            branch = tree.add(name)
            for key, item in data.items():
                branch.add(f"{key}: {item}", highlight=False)
    console.print(tree)
    console.print(Syntax(mermaid(spec), "text", theme="ansi_dark", background_color="default"))


@app.command()
def validate(ctx: typer.Context, file: Path) -> None:
    """Check a pipeline file against the task registry without registering it."""
    plans = state(ctx).client.validate_pipelines(file)
    for plan in plans:
        stages = [s[0] if len(s) == 1 else "{" + ", ".join(s) + "}" for s in plan.stages()]
        console.print(f"[green]valid[/green] {plan.target}: " + " → ".join(stages))


@app.command()
def execute(
    ctx: typer.Context,
    pipeline_id: str,
    input_text: str = typer.Argument(
        ..., metavar="INPUT", help="JSON text, @file.json, or a bare string."
    ),
    wait: bool = typer.Option(True, "--wait/--no-wait"),
    workers: bool = typer.Option(False, "--workers", help="Accepted for the seed; always on."),
    priority: int | None = typer.Option(None, help="1 (low) to 10 (high)."),
    version: str | None = typer.Option(None),
    timeout: float | None = typer.Option(None, help="Stop waiting after this many seconds."),
    as_json: bool = typer.Option(False, "--json"),
    key: str | None = typer.Option(
        None, "--key", help="Idempotency key: a key seen before returns that execution."
    ),
    cache: bool = typer.Option(
        True, "--cache/--no-cache", help="--no-cache runs every step, cached or not."
    ),
) -> None:
    """Run a pipeline through the queue, its steps shown live; prints its result and
    per-step timings."""
    run.execute(
        state(ctx).client,
        pipeline_id,
        parse_input(input_text),
        wait=wait,
        priority=priority,
        version=version,
        timeout=timeout,
        as_json=as_json,
        kind="pipeline",  # a pipeline, even where a task has the same name
        key=key,
        cache=cache,
    )


@app.command()
def delete(
    ctx: typer.Context,
    pipeline_id: str,
    version: str | None = typer.Option(None, help="Only this version (default: all)."),
) -> None:
    """Remove a pipeline (or one version) from the records and the object store."""
    removed = state(ctx).client.delete_pipeline(pipeline_id, version)
    console.print(f"deleted {pipeline_id}: {', '.join(r.version for r in removed)}")
