"""A private embedded stack driven through the `wtm` command, as a user's shell would.

Each command runs in a process of its own, with a HOME and a WTM_HOME of the
test's and nothing of this process's WTM_* or Ray auth settings, so the stack
and its Ray drivers see only what a user's fresh shell would give them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def shell_env(home: Path, wtm_home: Path, **extra: str) -> dict[str, str]:
    """A user's environment: their HOME and WTM_HOME, and the ``extra`` variables."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("WTM_", "RAY_AUTH", "RAY_ADDRESS"))
    }
    env.update(HOME=str(home), WTM_HOME=str(wtm_home), PYTHONPATH=str(ROOT), **extra)
    return env


def wtm(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``wtm ARGS`` in a process of its own; its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def running(env: dict[str, str]) -> Iterator[subprocess.CompletedProcess]:
    """`wtm up` in env, and `wtm down` after, however the test ends."""
    try:
        yield wtm(env, "up")
    finally:
        wtm(env, "down")


def processes_of(wtm_home: Path) -> list[psutil.Process]:
    """Live processes of the stack in wtm_home: its WTM_HOME in their environment, or
    (redis-server writes its title over its environment) their working folder in it."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            ours = proc.environ().get("WTM_HOME") == str(wtm_home)
            if ours or Path(proc.cwd()).is_relative_to(wtm_home):
                found.append(proc)
    return found
