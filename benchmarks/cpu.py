"""CPU per job, read from /proc over a timed burst: the machine's and each process group's.

    with CpuMeter(groups_of_my_stack) as meter:
        run_the_burst()
    meter.per_job(jobs)   # {"machine": 9.6, "dispatcher": 6.4, "replicas": 2.8, ...} ms per job

The machine's busy time comes from ``/proc/stat`` (everything that ran, this
benchmark's peers and the rest of the machine included); a group's from the
``utime + stime`` of its processes in ``/proc/PID/stat``, read before and after
(a process that ends during the burst counts until its last read, one that
starts counts from zero).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import psutil

HZ = os.sysconf("SC_CLK_TCK")

#: A process's group, from its command line: the first pattern found in it names it.
STACK_GROUPS = (
    ("DispatcherActor", "dispatcher"),
    ("Replica", "replicas"),
    ("ControllerActor", "controller"),
    ("redis-server", "redis"),
    ("raylet", "ray daemons"),
    ("gcs_server", "ray daemons"),
    ("dashboard", "ray daemons"),
    ("agent", "ray daemons"),
    ("default_worker", "ray daemons"),  # idle workers Ray keeps started
    ("supervisor", "ray daemons"),
    ("Noop", "actor"),  # the bare Ray side's actor
)


def machine_busy_ms() -> float:
    """Milliseconds of CPU the whole machine spent busy since boot (all cores)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields[:8]]
    idle = values[3] + values[4]  # idle and iowait
    return (sum(values) - idle) * 1000 / HZ


def process_ms(pid: int) -> float | None:
    """Milliseconds of CPU one process has used (user and system), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / HZ  # utime, stime


def stack_groups(wtm_home: Path, client_pid: int | None = None) -> dict[int, str]:
    """This benchmark's stack's processes by group: those whose environment names its
    ``WTM_HOME`` (or whose working folder is in it), and the client (this process)."""
    found: dict[int, str] = {}
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            ours = proc.environ().get("WTM_HOME") == str(wtm_home)
            if not ours and not Path(proc.cwd()).is_relative_to(wtm_home):
                continue
            command = " ".join(proc.cmdline())
            group = next((g for pattern, g in STACK_GROUPS if pattern in command), "ray daemons")
            found[proc.pid] = group
    found[client_pid or os.getpid()] = "client"
    return found


def tree_groups(root_pid: int, name: str) -> dict[int, str]:
    """A process and every process under it (a Celery worker and its pool), as one group."""
    try:
        root = psutil.Process(root_pid)
        return {p.pid: name for p in [root, *root.children(recursive=True)]}
    except psutil.Error:
        return {}


class CpuMeter:
    """CPU used during a ``with`` block: the machine's, and each group's processes'.

    ``groups`` lists the processes to watch by group; it is called before and
    after the block (so processes started meanwhile, replicas say, are found).
    """

    def __init__(self, groups: Callable[[], dict[int, str]]):
        self.groups = groups
        self.ms: dict[str, float] = {}

    def __enter__(self) -> CpuMeter:
        self._before = {pid: process_ms(pid) or 0.0 for pid in self.groups()}
        self._machine = machine_busy_ms()
        return self

    def __exit__(self, *exc: object) -> None:
        machine = machine_busy_ms() - self._machine
        after = self.groups()
        self.ms = {"machine": machine}
        for pid, group in after.items():
            used = (process_ms(pid) or 0.0) - self._before.get(pid, 0.0)
            self.ms[group] = self.ms.get(group, 0.0) + max(used, 0.0)

    def per_job(self, jobs: int) -> dict[str, float]:
        """Milliseconds of CPU per job, by group, and the machine's."""
        return {group: ms / jobs for group, ms in self.ms.items()}
