"""The root `wtm` app: command groups joined with add_typer."""

from __future__ import annotations

import typer

from cli import backups, dlq, executions, pipeline, stack, task, worker
from cli.common import CleanErrors
from cli.run import run
from cli.warm import warm

app = typer.Typer(
    name="wtm",
    help="Worker Task Manager: ML tasks and pipelines on Ray.",
    cls=CleanErrors,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command()(stack.up)
app.command()(stack.down)
app.command()(stack.health)
app.command()(stack.supervise)
app.command()(stack.demo)
app.command()(run)
app.command()(warm)
app.command()(backups.backup)
app.command()(backups.restore)
app.add_typer(task.app, name="task")
app.add_typer(pipeline.app, name="pipeline")
app.add_typer(worker.app, name="worker")
app.add_typer(executions.app, name="executions")
app.add_typer(dlq.app, name="dlq")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
