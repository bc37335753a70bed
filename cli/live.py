"""Following an execution live: its status and steps redrawn as events arrive.

Shared by `wtm run`, `wtm pipeline execute` and `wtm executions watch`. On a
terminal the display updates in place and is cleared at the end (the final
record is printed after it); piped, nothing but the final record is printed.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import typer
from rich.console import Group
from rich.live import Live
from rich.text import Text

from cli.common import console, err_console, seconds, show_record, status_style, steps_table
from orchestrator.errors import Detached, WaitTimeout

if TYPE_CHECKING:
    from orchestrator.jobs import Job
    from orchestrator.models import ExecutionRecord


def _view(record: ExecutionRecord, since: float) -> Group:
    head = Text.from_markup(
        f"{record.execution_id} {record.target} {status_style(record.status)} "
        f"waited {seconds(time.monotonic() - since)}"
    )
    if record.kind == "pipeline":
        return Group(head, steps_table(record))
    return Group(head)


def follow(job: Job, timeout: float | None) -> ExecutionRecord:
    """Wait for the job, redrawing on each event; the ended record.

    Raises :class:`~orchestrator.errors.WaitTimeout` after ``timeout`` and
    :class:`~orchestrator.errors.Detached` on Ctrl-C (the execution goes on).
    """
    since = time.monotonic()
    shown = [job.record]  # what the display draws, redrawn by Live four times a second
    try:
        with Live(get_renderable=lambda: _view(shown[0], since), console=console, transient=True):
            for event in job.events(timeout):
                # A step event carries no record (nor does a terminal one too large to publish).
                shown[0] = event.record or job.client.execution(job.id)
    except KeyboardInterrupt as e:
        raise Detached(job.id) from e
    return job.wait()  # ended: kept by the handle, no read


def show_outcome(job: Job, timeout: float | None, as_json: bool) -> None:
    """Follow the job, then print its record (and steps) and exit like `wtm run`."""
    try:
        record = job.wait(timeout) if as_json else follow(job, timeout)
    except Detached as e:  # Ctrl-C: the execution goes on; say how to find it
        err_console.print(
            f"interrupted: execution {e.execution_id} is still running. Follow it with "
            f"`wtm executions watch {e.execution_id}`, stop it with "
            f"`wtm executions cancel {e.execution_id}`",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(130) from e
    except WaitTimeout:
        record = job.record  # as it is now: the one the wait last read may be older
    show_record(record, as_json)
    if record.kind == "pipeline" and not as_json:
        console.print(steps_table(record))
    exit_unless_succeeded(record, timeout)


def exit_unless_succeeded(record: ExecutionRecord, timeout: float | None) -> None:
    """Exit 1 for a failed execution, or one still going when --timeout ran out."""
    if record.status.value == "succeeded":
        return
    if not record.status.terminal:
        waited = f" after {timeout:g}s" if timeout is not None else ""
        err_console.print(
            f"still {record.status.value}{waited}; follow it with "
            f"`wtm executions watch {record.execution_id}`"
        )
    raise typer.Exit(1)
