"""How records look in a notebook: HTML tables, and a Gantt chart of the steps.

Each record type's ``_repr_html_`` calls in here, so Jupyter shows an
execution as its status, timings and steps rather than one long line.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.models import ExecutionRecord, StepRecord

_COLOURS = {
    "succeeded": "#2e7d32",
    "failed": "#c62828",
    "dead_lettered": "#c62828",
    "cancelled": "#6d6d6d",
    "skipped": "#9e9e9e",
    "running": "#1565c0",
    "queued": "#8d6e63",
    "pending": "#8d6e63",
}


def _status(value: Any) -> str:
    text = str(value)
    colour = _COLOURS.get(text, "#000")
    return f'<span style="color:{colour};font-weight:bold">{html.escape(text)}</span>'


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.3f} s"


def _time(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td style='text-align:left'>{cell}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _error(error: Any) -> str:
    if error is None:
        return ""
    return html.escape(f"{error.type}: {error.message}")


def steps_html(steps: Sequence[StepRecord]) -> str:
    rows = [
        (
            html.escape(s.step_id),
            html.escape(s.task_id),
            _status(s.status),
            _seconds(s.duration),
            "cached" if s.cache_hit else "",
            html.escape(s.worker_id or ""),
            _error(s.error),
        )
        for s in steps
    ]
    header = ("step", "task", "status", "took", "cache", "worker", "error")
    return _table(header, rows)


def record_html(record: ExecutionRecord) -> str:
    facts = [
        ("execution", html.escape(record.execution_id)),
        (record.kind, html.escape(f"{record.target} {record.version or ''}".strip())),
        ("status", _status(record.status)),
        ("submitted", _time(record.submitted)),
        ("queue wait", _seconds(record.queue_wait)),
        ("took", _seconds(record.duration)),
        ("error", _error(record.error)),
    ]
    head = _table(("", ""), [(f"<b>{k}</b>", v) for k, v in facts if v])
    if record.kind == "pipeline" and record.steps:
        return head + steps_html(record.steps)
    return head


def executions_html(records: Sequence[ExecutionRecord]) -> str:
    rows = [
        (
            html.escape(r.execution_id),
            html.escape(r.target or ""),
            _status(r.status),
            _time(r.submitted),
            _seconds(r.duration),
            _error(r.error),
        )
        for r in records
    ]
    return _table(("execution", "target", "status", "submitted", "took", "error"), rows)


def critical_path(steps: Sequence[StepRecord], deps: dict[str, tuple[str, ...]]) -> list[str]:
    """The steps that decided when the execution ended: from the step that
    finished last, back through the dependency that finished last each time."""
    ran = {s.step_id: s for s in steps if s.finished_at is not None}
    if not ran:
        return []
    step = max(ran.values(), key=lambda s: s.finished_at or 0)
    path = [step.step_id]
    while True:
        before = [ran[d] for d in deps.get(step.step_id, ()) if d in ran]
        if not before:
            return path[::-1]
        step = max(before, key=lambda s: s.finished_at or 0)
        path.append(step.step_id)


def timeline(record: ExecutionRecord, deps: dict[str, tuple[str, ...]], ax: Any = None) -> Any:
    """A Gantt chart of the execution's steps (seconds from submission), the
    critical path outlined; returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    steps = [s for s in record.steps if s.started_at is not None]
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * max(len(steps), 1)))
    else:
        fig = ax.figure
    critical = set(critical_path(steps, deps))
    origin = record.submitted_at
    for row, step in enumerate(steps):
        start = (step.started_at or origin) - origin
        end = (step.finished_at or step.started_at or origin) - origin
        on_path = step.step_id in critical
        ax.barh(
            row,
            max(end - start, 1e-3),
            left=start,
            color=_COLOURS.get(str(step.status), "#888"),
            edgecolor="black" if on_path else "none",
            linewidth=2 if on_path else 0,
            hatch="//" if step.cache_hit else None,
        )
    ax.set_yticks(range(len(steps)), [s.step_id for s in steps])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since submission")
    title = f"{record.target} {record.execution_id}: {record.status}"
    ax.set_title(f"{title} (outlined: the critical path)")
    fig.tight_layout()
    return fig
