"""`wtm task register | list | info | test`: the task registry."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table
from rich.tree import Tree

from cli.common import console, print_json, render_result, size, state, when
from orchestrator.inputs import parse_input

app = typer.Typer(help="Register, inspect and test task packages.", no_args_is_help=True)


@app.command()
def register(
    ctx: typer.Context,
    paths: list[Path] = typer.Argument(..., help="Task package folders."),
    force: bool = typer.Option(False, help="Replace a version registered with other content."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Store task packages in the object store and their metadata in the records.

    All or none: every folder is checked before any is stored.
    """
    done = state(ctx).client.register_tasks(paths, force=force)
    if as_json:
        print_json([record for record, _ in done])
        return
    for record, changed in done:
        verb = "registered" if changed else "unchanged"
        console.print(
            f"{verb} {record.task_id} {record.version} "
            f"sha256 {record.sha256[:12]} ({size(record.size)})"
        )


@app.command("list")
def list_(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Registered tasks, one row per version."""
    records = state(ctx).client.tasks()
    if as_json:
        print_json(records)
        return
    table = Table(title=f"tasks ({len(records)} versions)")
    for column in (
        "task_id",
        "version",
        "name",
        "queue",
        "priority",
        "timeout",
        "sha256",
        "size",
        "registered",
    ):
        table.add_column(column)
    for r in records:
        s = r.spec
        table.add_row(
            r.task_id,
            r.version,
            s.name,
            s.queue,
            str(s.priority),
            f"{s.timeout:g} s" if s.timeout else "default",
            r.sha256[:12],
            size(r.size),
            when(r.registered_at),
        )
    console.print(table)


@app.command()
def info(
    ctx: typer.Context,
    task_id: str,
    version: str | None = typer.Option(None, help="A version (default: latest)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """A task's metadata, schemas and versions."""
    client = state(ctx).client
    record = client.task(task_id, version)
    versions = client.task_versions(task_id)
    policy = client.plan(task_id, record.version).steps[0].policy
    if as_json:
        print_json(
            {
                **record.model_dump(mode="json"),
                "versions": [v.version for v in versions],
                "policy": policy.model_dump(),
            }
        )
        return
    spec = record.spec
    tree = Tree(f"[bold]{record.task_id}[/bold] {record.version}: {spec.name}")
    tree.add(spec.description or "(no description)")
    meta = tree.add("metadata")
    for key in (
        "author",
        "category",
        "entry_point",
        "queue",
        "priority",
        "timeout",
        "max_retries",
        "tags",
        "requirements",
    ):
        value = getattr(spec, key)
        meta.add(f"{key}: {'unset' if value is None else value}")
    meta.add(f"sha256: {record.sha256} ({size(record.size)})")
    retries = f"{policy.retries} retr{'y' if policy.retries == 1 else 'ies'}"
    meta.add(f"runs with: timeout {policy.timeout:g} s, {retries}")
    for key, schema in (("input_schema", spec.input_schema), ("output_schema", spec.output_schema)):
        branch = tree.add(key)
        for line in json.dumps(schema, indent=2).splitlines():
            branch.add(line, highlight=False)
    vbranch = tree.add("versions")
    for v in versions:
        vbranch.add(f"{v.version}  {v.sha256[:12]}  {when(v.registered_at)}")
    console.print(tree)


@app.command()
def test(
    ctx: typer.Context,
    task_id: str,
    input_text: str = typer.Argument(
        ..., metavar="INPUT", help="JSON text, @file.json, or a bare string."
    ),
    version: str | None = typer.Option(None),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Run a registered task in this process, without the cluster."""
    result = state(ctx).client.test_task(task_id, parse_input(input_text), version=version)
    print_json(result) if as_json else render_result(result, title=task_id)


@app.command()
def create(
    name: str,
    template: str = typer.Option("simple", help="simple, ml or vision."),
    author: str = typer.Option("unknown", help="Written into task.json."),
    directory: Path = typer.Option(Path("task_pkgs"), "--dir", help="Parent folder."),
) -> None:
    """Write a new task package (task.py, task.json, README, a test)."""
    from orchestrator import templates

    folder = templates.create(name, template, author, directory)
    console.print(f"created {folder}: edit task.py, then `wtm task register {folder}`")


@app.command()
def delete(
    ctx: typer.Context,
    task_id: str,
    version: str | None = typer.Option(None, help="Only this version (default: all)."),
    force: bool = typer.Option(False, help="Delete even if a pipeline uses it."),
) -> None:
    """Remove a task (or one version) from the records and the object store."""
    removed = state(ctx).client.delete_task(task_id, version, force=force)
    console.print(f"deleted {task_id}: {', '.join(r.version for r in removed)}")
