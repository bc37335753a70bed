"""`wtm backup DIR` and `wtm restore DIR`: records and objects to a folder and back."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from cli.common import console, err_console, print_json, size, state

FORCE_BACKUP = "Write into DIR even if it is not empty (an earlier backup there is replaced)."
FORCE_RESTORE = "Restore even if the target holds data: the backup's records and objects win."


def backup(
    ctx: typer.Context,
    folder: Path = typer.Argument(..., metavar="DIR", help="An empty or new folder."),
    force: bool = typer.Option(False, "--force", help=FORCE_BACKUP),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Copy every record and object to DIR; safe while the system runs.

    Stream positions are noted first, then records (executions, pipelines,
    tasks, workers), then objects, so everything a record names is in the
    backup; manifest.json, written last with the sha256 of every file, marks
    it complete. Queued jobs themselves (stream entries) are not copied: see
    `wtm restore --help`.
    """
    with _Bars() as bars:
        from orchestrator.backup import backup as back_up

        manifest = back_up(state(ctx).settings, folder, force=force, progress=bars)
    if as_json:
        print_json(manifest.summary(folder))
        return
    n = manifest.counts
    console.print(
        f"backed up {n['tasks']} task version(s), {n['pipelines']} pipeline version(s), "
        f"{n['executions']} execution(s), {n['workers']} worker row(s) and "
        f"{n['objects']} object(s) ({size(n['object_bytes'])}) to {folder}"
    )
    if manifest.streams is None:
        console.print(f"no stream positions noted ({manifest.streams_note})")
    else:
        console.print(f"stream positions noted for {len(manifest.streams)} stream(s)")


def restore(
    ctx: typer.Context,
    folder: Path = typer.Argument(..., metavar="DIR", help="A folder `wtm backup` wrote."),
    force: bool = typer.Option(False, "--force", help=FORCE_RESTORE),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Restore a backup into this WTM_HOME's stores, which must be empty (or --force).

    The backup is checked whole first (manifest, format version, sha256 of
    every file): a damaged one is refused and nothing is written. Executions
    that were queued or running when the backup was taken are restored as
    failed, with an Interrupted error: the backup holds no queue entries,
    and they may have run on after it; `wtm executions retry ID` runs one
    again.
    """
    settings = state(ctx).settings
    with _Bars() as bars:
        from orchestrator.restore import restore as restore_backup

        restored = restore_backup(settings, folder, force=force, progress=bars)
    if as_json:
        print_json(restored.as_dict())
        return
    console.print(
        f"restored {restored.tasks} task version(s), {restored.pipelines} pipeline "
        f"version(s), {restored.executions} execution(s), {restored.workers} worker row(s) "
        f"and {restored.objects} object(s) ({size(restored.object_bytes)}) into {settings.home}"
    )
    if restored.interrupted:
        console.print(
            f"{len(restored.interrupted)} execution(s) queued or running at the backup were "
            "restored failed (Interrupted); `wtm executions retry ID` runs one again"
        )


class _Bars:
    """A Rich bar per phase on stderr (a terminal only), fed by the library's progress."""

    def __init__(self) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
            disable=not err_console.is_terminal,
        )
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        if phase not in self._tasks:
            self._tasks[phase] = self._progress.add_task(phase, total=total)
        self._progress.update(self._tasks[phase], completed=done, total=total)

    def __enter__(self) -> _Bars:
        self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()
