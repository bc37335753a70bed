"""A progress bar for waiting on many jobs, in a notebook or a terminal.

In a Jupyter kernel it is an HTML bar updated in place (no widget library
needed); elsewhere a Rich bar on stderr. ``progress=None`` means "on in a
notebook, off elsewhere"; True and False force it.
"""

from __future__ import annotations

import html
import sys
from collections import Counter
from typing import Any


def in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def bar(total: int, description: str, enabled: bool | None = None) -> _Bar:
    """A bar counting ``total`` jobs, or one that shows nothing."""
    if enabled is None:
        enabled = in_notebook()
    if not enabled or total == 0:
        return _Bar(total)
    return _NotebookBar(total, description) if in_notebook() else _TerminalBar(total, description)


class _Bar:
    """Counts finished jobs by status; shows nothing."""

    def __init__(self, total: int):
        self.total = total
        self.statuses: Counter[str] = Counter()

    def advance(self, status: Any) -> None:
        self.statuses[str(status)] += 1
        self._show()

    def summary(self) -> str:
        done = sum(self.statuses.values())
        parts = ", ".join(f"{n} {s}" for s, n in sorted(self.statuses.items()))
        return f"{done}/{self.total}" + (f" ({parts})" if parts else "")

    def _show(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Bar:
        self._show()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _NotebookBar(_Bar):
    def __init__(self, total: int, description: str):
        super().__init__(total)
        self.description = description
        self._handle: Any = None

    def _html(self) -> Any:
        from IPython.display import HTML

        done = sum(self.statuses.values())
        failed = done - self.statuses.get("succeeded", 0)
        colour = "#c62828" if failed else "#2e7d32"
        return HTML(
            f"<div>{html.escape(self.description)} "
            f"<progress value='{done}' max='{self.total}' style='width:40%'></progress> "
            f"<span style='color:{colour}'>{html.escape(self.summary())}</span></div>"
        )

    def _show(self) -> None:
        from IPython.display import display

        if self._handle is None:
            self._handle = display(self._html(), display_id=True)
        else:
            self._handle.update(self._html())


class _TerminalBar(_Bar):
    def __init__(self, total: int, description: str):
        super().__init__(total)
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self._progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            "{task.fields[statuses]}",
            console=Console(file=sys.stderr),
            transient=False,
        )
        self._task = self._progress.add_task(description, total=total, statuses="")
        self._progress.start()

    def _show(self) -> None:
        done = sum(self.statuses.values())
        parts = ", ".join(f"{n} {s}" for s, n in sorted(self.statuses.items()))
        self._progress.update(self._task, completed=done, statuses=parts)

    def close(self) -> None:
        self._progress.stop()
