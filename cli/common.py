"""What every command group shares: settings, the client, errors, rendering."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from orchestrator.errors import OrchestratorError
from orchestrator.secrets import redact_text

if TYPE_CHECKING:  # imported where used: `wtm --help` loads none of the library
    from orchestrator import Client
    from orchestrator.models import ExecutionRecord, ExecutionStatus, StepRecord, StepStatus
    from orchestrator.settings import Settings
    from orchestrator.workers import Workers

# Piped or captured output is not cut to 80 columns: tables stay readable in logs.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


class CleanErrors(TyperGroup):
    """Turns the library's errors into one line on stderr and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OrchestratorError as e:
            _error(str(e))
            raise typer.Exit(e.exit_code) from e
        except Exception as e:
            redis = sys.modules.get("redis")  # a command that never used Redis never fails in it
            if redis is None or not isinstance(e, redis.RedisError):
                raise
            _error(f"cannot reach Redis: {type(e).__name__}: {e}")  # it went away mid-command
            raise typer.Exit(1) from e


def _error(message: str) -> None:
    shown = escape(redact_text(message))  # a quoted URL keeps its password hidden
    err_console.print(f"[red]Error:[/red] {shown}", markup=True, highlight=False, soft_wrap=True)


class AppState:
    """Built once per invocation by the root callback: settings and a client."""

    def __init__(self, settings: Settings | None = None):
        self._settings = settings
        self._client: Client | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from orchestrator import logs
            from orchestrator.settings import load_settings

            self._settings = load_settings()
            # The file gets the configured level and format; stderr only warnings, as text.
            logs.configure(self._settings, "cli", "wtm", stderr="WARNING", plain_stderr=True)
        return self._settings

    @property
    def client(self) -> Client:
        if self._client is None:
            from orchestrator.client import Client

            self._client = Client(self.settings, notify=notify)
        return self._client

    def workers(self) -> Workers:
        """Control of the replicas: starts the stack first if it is down (and says so)."""
        from orchestrator import stack
        from orchestrator.workers import Workers

        return Workers(stack.ensure(self.settings, notify))


def notify(message: str) -> None:
    """One line on stderr: what a command did beside what was asked (started the stack)."""
    err_console.print(message)


def state(ctx: typer.Context) -> AppState:
    root = ctx.find_root()
    if root.obj is None:
        root.obj = AppState()
    return root.obj


def print_json(data: Any) -> None:
    """JSON on stdout, for jq: models are dumped with their field names."""
    from pydantic import BaseModel

    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    elif isinstance(data, list):
        data = [d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in data]
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


_COLOURS = {
    "succeeded": "green",
    "failed": "red",
    "running": "yellow",
    "queued": "cyan",
    "dead_lettered": "magenta",
    "cancelled": "dim",
    "skipped": "dim",
}


def status_style(status: ExecutionStatus | StepStatus) -> str:
    """A status in its colour (step states share the execution states' colours)."""
    return f"[{_COLOURS.get(status.value, 'white')}]{status.value}[/]"


def render_result(result: Any, title: str = "Result") -> None:
    """Scalars as a key/value table, each list of objects as its own table."""
    if not isinstance(result, dict):
        console.print_json(json.dumps(result, default=str))
        return
    scalars = Table(title=title, show_header=False)
    scalars.add_column("field", style="bold")
    scalars.add_column("value")
    for key, value in result.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            continue
        scalars.add_row(key, json.dumps(value) if not isinstance(value, str) else value)
    if scalars.row_count:
        console.print(scalars)
    for key, value in result.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            console.print(_rows_table(key, value))


def _rows_table(title: str, rows: list[dict]) -> Table:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    return table


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list) and len(value) > 8:
        return f"[{len(value)} values]"
    return value if isinstance(value, str) else json.dumps(value)


def show_record(record: ExecutionRecord, as_json: bool) -> None:
    """An execution as JSON, or as a status line, its error and its result."""
    if as_json:
        print_json(record)
        return
    console.print(
        f"{record.execution_id} {record.target} {status_style(record.status)} "
        f"attempts {record.attempts} deliveries {record.deliveries} "
        f"worker {record.worker_id or '-'} "
        f"queue wait {seconds(record.queue_wait)} run {seconds(record.duration)}"
    )
    if record.error:
        console.print(f"[red]{record.error.type}[/red]: {record.error.message}", highlight=False)
    if record.result is not None:
        render_result(record.result)
    elif record.result_ref:
        console.print(f"result stored at {record.result_ref}")


def steps_table(record: ExecutionRecord) -> Table:
    """Each step with its status, what it waits for, attempts, timing and worker."""
    table = Table(title="steps")
    for column in (
        "step",
        "task",
        "status",
        "phase",
        "attempts",
        "started",
        "duration",
        "cache",
        "worker",
        "error",
    ):
        table.add_column(column)
    base = record.submitted_at
    for s in record.steps:
        offset = f"+{seconds(s.started_at - base)}" if s.started_at else "-"
        table.add_row(
            s.step_id,
            s.task_id,
            status_style(s.status),
            phase_text(s, record),
            str(s.attempts),
            offset,
            seconds(s.duration),
            "hit" if s.cache_hit else "",
            s.worker_id or "-",
            s.error.message if s.error else "",
        )
    return table


def phase_text(step: StepRecord, record: ExecutionRecord) -> str:
    """What a step does or waits for now, and since how long ("loading 1.2s");
    for an ended step, the longest wait it had before running, if any."""
    if not step.phases:
        return "-"
    last = step.phases[-1]
    if last.phase.value not in ("done", "cached") and not record.status.terminal:
        colour = "yellow" if last.phase.waiting else "cyan"
        return f"[{colour}]{last.phase.value}[/] {seconds(time.time() - last.at)}"
    waits = step.waits()
    if not waits:
        return "cached" if step.cache_hit else "ran"
    phase, waited = max(waits, key=lambda w: w[1])
    return f"waited {seconds(waited)} ({phase})"
