"""How records look in a notebook: HTML tables, and a Gantt chart of the steps.

Each record type's ``_repr_html_`` calls in here, so Jupyter shows an
execution as its status, timings and steps rather than one long line.
"""

from __future__ import annotations

import html
import textwrap
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


def _waited(step: StepRecord) -> str:
    """The step's waits for a replica, or what it waits for now."""
    if step.phase is not None and step.phase.waiting:
        return html.escape(f"{step.phase} now")
    return html.escape(", ".join(f"{phase} {took:.3f} s" for phase, took in step.waits()))


def steps_html(steps: Sequence[StepRecord]) -> str:
    rows = [
        (
            html.escape(s.step_id),
            html.escape(s.task_id),
            _status(s.status),
            _waited(s),
            _seconds(s.duration),
            "cached" if s.cache_hit else "",
            html.escape(s.worker_id or ""),
            _error(s.error),
        )
        for s in steps
    ]
    header = ("step", "task", "status", "waited for a replica", "took", "cache", "worker", "error")
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


#: How the timeline draws each part of a step's time: label, colour, hatch.
SEGMENTS = {
    "queue wait": ("#cfd8dc", None),
    "waiting for room": ("#ffcc80", None),
    "replica start and model load": ("#fb8c00", None),
    "slot busy": ("#fdd835", None),
    "run": ("#2e7d32", None),
    "cache hit": ("#a5d6a7", "//"),
}
_SEGMENT_OF = {
    "queued": "queue wait",
    "placing": "waiting for room",
    "starting": "replica start and model load",
    "loading": "replica start and model load",
    "busy": "slot busy",
    "running": "run",
    "cached": "cache hit",
}


def segments(step: StepRecord, end: float) -> list[tuple[str, float, float]]:
    """A step's time as ``(segment, start, end)`` parts, from its phase marks (a
    record written before phases were kept: one run from its start to its end).
    A part still going ends at ``end``."""
    marks = [(m.phase.value, m.at) for m in step.phases]
    if not marks and step.started_at is not None:
        marks = [("running", step.started_at)]
        if step.finished_at is not None:
            marks.append(("done", step.finished_at))
    parts = []
    for i, (phase, at) in enumerate(marks):
        if phase not in _SEGMENT_OF:
            continue  # done: nothing after it
        until = marks[i + 1][1] if i + 1 < len(marks) else (step.finished_at or end)
        parts.append((_SEGMENT_OF[phase], at, max(until, at)))
    return parts


def timeline(record: ExecutionRecord, deps: dict[str, tuple[str, ...]], ax: Any = None) -> Any:
    """A Gantt chart of where the execution's time went, in seconds from submission.

    Each step's row shows its parts: the queue wait, any wait for a replica
    (room to place it; its start and model load; a busy slot), the run
    (coloured by how the step ended) or the cache hit. The critical path is
    outlined; a legend names every part. Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    steps = [s for s in record.steps if s.phases or s.started_at is not None]
    if ax is None:
        fig, ax = plt.subplots(figsize=(9, 1.6 + 0.5 * max(len(steps), 1)))
    else:
        fig = ax.figure
    origin = record.submitted_at
    end = record.finished_at or max(
        (m.at for s in steps for m in s.phases), default=record.started_at or origin
    )
    critical = set(critical_path(steps, deps))
    used: list[str] = []
    for row, step in enumerate(steps):
        for name, start, stop in segments(step, end):
            colour, hatch = SEGMENTS[name]
            if name == "run":
                colour = _COLOURS.get(str(step.status), colour)
            on_path = step.step_id in critical
            bar = ax.barh(
                row,
                max(stop - start, 1e-3),
                left=start - origin,
                color=colour,
                hatch=hatch,
                edgecolor="black" if on_path else "white",
                linewidth=1.8 if on_path else 0.5,
            )
            bar.patches[0].set_gid(f"{step.step_id}:{name}")
            if name not in used:
                used.append(name)
            _label_if_room(ax, start - origin, stop - start, row, end - origin)
    ax.set_yticks(range(len(steps)), [s.step_id for s in steps])
    ax.invert_yaxis()
    ax.set_xlim(left=0)
    ax.set_xlabel("seconds since submission")
    handles = [Patch(facecolor=SEGMENTS[n][0], hatch=SEGMENTS[n][1], label=n) for n in used]
    handles.append(
        Patch(facecolor="white", edgecolor="black", linewidth=1.8, label="critical path")
    )
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.22),
        ncol=3,
        frameon=False,
        fontsize="small",
    )
    took = f" in {end - origin:.2f}s" if record.finished_at else ""
    title = f"{record.target} {record.execution_id}: {record.status}{took}"
    ax.set_title(textwrap.fill(title, 70), fontsize="medium", loc="left")
    fig.tight_layout()
    return fig


def _label_if_room(ax: Any, left: float, width: float, row: int, total: float) -> None:
    """Write a part's seconds on its bar when the bar is wide enough to hold them."""
    if total > 0 and width / total > 0.08:
        ax.text(
            left + width / 2, row, f"{width:.2f}s", ha="center", va="center", fontsize="x-small"
        )
