"""Local processes and ports: start a command, wait for it, find and stop processes.

The embedded stack uses these; nothing here knows about Redis or Ray.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil

from orchestrator.errors import StackError


def matching(pids: list[int], patterns: list[str]) -> list[psutil.Process]:
    """Live processes with these pids or a command line matching a pattern, and
    every descendant of those (Ray's workers are children of its raylet)."""
    found: dict[int, psutil.Process] = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            found[pid] = psutil.Process(pid)
    compiled = [re.compile(p) for p in patterns]
    if compiled:
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if any(m.search(cmdline) for m in compiled):
                found[proc.pid] = proc
    for proc in list(found.values()):
        with contextlib.suppress(psutil.Error):
            for child in proc.children(recursive=True):
                found[child.pid] = child
    me = os.getpid()
    return [p for p in found.values() if p.pid != me and alive(p)]


def alive(proc: psutil.Process) -> bool:
    """Running, and not a zombie waiting to be reaped."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def terminate(procs: list[psutil.Process]) -> None:
    """SIGTERM each (those already gone are skipped)."""
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()


def stop(procs: list[psutil.Process], grace_s: float = 10) -> list[str]:
    """SIGTERM, then SIGKILL what is left after ``grace_s``; returns their names, one each."""
    names = sorted(name_of(p) for p in procs)
    terminate(procs)
    left = wait_gone(procs, grace_s)
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
    wait_gone(left, 5)
    return names


def wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until every process has exited; those still running after ``timeout_s``.

    A process that exited but that its parent has not reaped yet (a zombie: our
    daemons' parent is init, which reaps when it gets to it) counts as gone.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        left = [p for p in procs if _running(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def name_of(proc: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return proc.name()
    return str(proc.pid)


def listening_on(port: int) -> list[psutil.Process]:
    """Processes listening on a TCP port of this machine."""
    found = []
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            listening = conn.status == psutil.CONN_LISTEN and conn.laddr
            if listening and conn.laddr.port == port and conn.pid:
                with contextlib.suppress(psutil.Error):
                    found.append(psutil.Process(conn.pid))
    return found


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports from the kernel's ephemeral range."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def port_open(port: int | None) -> bool:
    if not port:
        return False
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


def http_ok(url: str, headers: dict[str, str] | None = None) -> bool:
    """Whether url answers a GET with a success (a refusal, 4xx, is not one)."""
    request = urllib.request.Request(url, headers=headers or {})
    with contextlib.suppress(Exception), urllib.request.urlopen(request, timeout=2) as r:
        return r.status < 500
    return False


def run(cmd: list[str], what: str, env: dict | None = None, timeout: float = 60) -> str:
    """Run a command to completion; StackError with its last line if it fails."""
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise StackError(f"{what} could not start: {e}") from e
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise StackError(f"{what} failed: {tail[0]}")
    return done.stdout + done.stderr


def wait_for(check: Callable[[], bool], what: str, log: Path, timeout: float = 20) -> None:
    """Poll a readiness check (a service coming up); StackError pointing at its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise StackError(f"{what} did not come up within {timeout:g}s; see {log}")
