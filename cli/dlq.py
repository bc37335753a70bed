"""`wtm dlq list | replay | purge`: jobs that kept failing delivery, as a workflow."""

from __future__ import annotations

import typer
from rich.table import Table

from cli.common import console, print_json, state, when
from orchestrator.errors import InputError

app = typer.Typer(
    help="Dead letters: jobs delivered too often without finishing.", no_args_is_help=True
)


@app.command("list")
def list_(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Every dead letter, oldest first: why it is there, its last error, its deliveries."""
    letters = state(ctx).client.dead_letters()
    if as_json:
        print_json([d.model_dump(mode="json") for d in letters])
        return
    table = Table(title=f"dead letters ({len(letters)})")
    for column in ("dlq_id", "execution_id", "target", "dead at", "deliveries", "reason", "error"):
        table.add_column(column, no_wrap=column.endswith("id"))
    for d in letters:
        table.add_row(
            d.dlq_id,
            d.execution_id or "-",
            d.target or "-",
            when(d.dead_at),
            str(d.deliveries) if d.deliveries is not None else "-",
            d.reason,
            d.error or "-",
        )
    console.print(table)


@app.command()
def replay(
    ctx: typer.Context,
    dlq_ids: list[str] = typer.Argument(None, metavar="[DLQ_ID]...", help="From `wtm dlq list`."),
    all_: bool = typer.Option(False, "--all", help="Replay every dead letter."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Run dead-lettered jobs again as new executions; prints the new ids."""
    if bool(dlq_ids) == all_:
        raise InputError("name the dead letters to replay, or --all (not both)")
    new_ids = state(ctx).client.replay_dead_letters(None if all_ else dlq_ids)
    if as_json:
        print_json({"execution_ids": new_ids})
    else:
        for execution_id in new_ids:
            console.print(execution_id)


@app.command()
def purge(
    ctx: typer.Context,
    dlq_ids: list[str] = typer.Argument(None, metavar="[DLQ_ID]...", help="Default: all."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask."),
) -> None:
    """Delete dead letters (their execution records stay, as history)."""
    if not yes and not typer.confirm(f"delete {'these' if dlq_ids else 'every'} dead letter?"):
        raise typer.Exit(1)
    gone = state(ctx).client.purge_dead_letters(dlq_ids or None)
    console.print(f"purged {gone} dead letter(s)")
