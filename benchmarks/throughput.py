"""No-op jobs side by side: this system, Celery, and bare Ray actor calls, in one run.

    .venv/bin/python benchmarks/throughput.py      # or: make bench

Each side runs on this machine with what a user would run:

- **this system**: its own embedded stack (redis-server, Ray head, controller,
  a dispatcher) in a temporary ``WTM_HOME``; a no-op task with default
  settings; the SDK's ``client.gather(client.map(...))`` of ``JOBS`` jobs (the
  equivalent of Celery's group), and, as a second row, ``JOBS`` separate
  ``client.submit`` calls, then a wait for each.
- **Celery** (from the ``bench`` extra; skipped if it is not installed): a
  redis-server of its own as broker and result backend, ``acks_late``, a
  prefork worker with one process per core; ``group(...).get()``.
- **bare Ray**: a plain actor on this system's Ray cluster; ``ray.get`` of
  ``JOBS`` calls. No queue, no records: the floor.

Round trips are ``ROUND_TRIPS`` sequential calls after warm-up: ``client.run``,
``task.delay().get()``, ``ray.get(actor.f.remote())``. The same run also
times a pipeline ``A -> {B, C} -> D`` whose parallel steps B and C are the
same task, against the ideal A + T + D.

Writes ``benchmarks/throughput.md`` and, with matplotlib, ``throughput.png``;
stops everything it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import say, stop_stack  # noqa: E402
from cpu import CpuMeter, stack_groups, tree_groups  # noqa: E402

from orchestrator import Client, cluster, stack  # noqa: E402
from orchestrator.models import ExecutionStatus  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402
from orchestrator.stack import services  # noqa: E402
from orchestrator.stack.state import StackState  # noqa: E402
from orchestrator.testing import write_task  # noqa: E402

JOBS = 2000  # no-op jobs per side for throughput
ROUND_TRIPS = 200  # sequential calls per side for latency
WARMUP = 20
GROUP_T = 1.0  # seconds B and C (one task) sleep in the A -> {B, C} -> D pipeline
GROUP_EDGE = 0.2  # seconds A and D sleep
GROUP_RUNS = 3
RESULTS = ROOT / "benchmarks" / "throughput.md"
CHART = ROOT / "benchmarks" / "throughput.png"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed_calls(call, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        out.append(time.perf_counter() - started)
    return out


# this system -----------------------------------------------------------------
def ours(client: Client, work: Path) -> dict[str, Any]:
    client.register_task(write_task(work, "noop", "return {}"))
    for _ in range(WARMUP):
        client.run("noop", {})
    say(f"  ours: map and gather {JOBS} jobs ...")
    with CpuMeter(lambda: stack_groups(client.settings.home)) as cpu:
        started = time.perf_counter()
        jobs = client.map("noop", [{}] * JOBS)
        submitted = time.perf_counter() - started
        results = client.gather(jobs, timeout=600, return_exceptions=True, progress=False)
        elapsed = time.perf_counter() - started
    failed = sum(isinstance(r, Exception) for r in results)
    say(f"  ours: {JOBS} jobs submitted one by one ...")
    started = time.perf_counter()
    ids = [client.submit("noop", {}) for _ in range(JOBS)]
    one_by_one_submitted = time.perf_counter() - started
    failed += sum(client.wait(i, timeout=600).status != ExecutionStatus.SUCCEEDED for i in ids)
    one_by_one = time.perf_counter() - started
    say(f"  ours: {ROUND_TRIPS} round trips ...")
    trips = timed_calls(lambda: client.run("noop", {}), ROUND_TRIPS)
    return {
        "jobs_per_s": JOBS / elapsed,
        "cpu_ms": cpu.per_job(JOBS),
        "submit_per_s": JOBS / submitted,
        "one_by_one_per_s": JOBS / one_by_one,
        "one_by_one_submit_per_s": JOBS / one_by_one_submitted,
        "failed": failed,
        "p50_ms": statistics.median(trips) * 1000,
        "p99_ms": percentile(trips, 0.99) * 1000,
    }


def bare_ray(settings: Settings) -> dict[str, Any]:
    import ray

    cluster.connect(settings)

    @ray.remote
    class Noop:
        def f(self) -> dict:
            return {}

    actor = Noop.remote()
    ray.get([actor.f.remote() for _ in range(WARMUP)])
    say(f"  bare Ray: {JOBS} calls ...")
    with CpuMeter(lambda: stack_groups(settings.home)) as cpu:
        started = time.perf_counter()
        ray.get([actor.f.remote() for _ in range(JOBS)])
        elapsed = time.perf_counter() - started
    trips = timed_calls(lambda: ray.get(actor.f.remote()), ROUND_TRIPS)
    ray.kill(actor)
    return {
        "jobs_per_s": JOBS / elapsed,
        "cpu_ms": cpu.per_job(JOBS),
        "failed": 0,
        "p50_ms": statistics.median(trips) * 1000,
        "p99_ms": percentile(trips, 0.99) * 1000,
    }


def parallel_group_of_one_task(client: Client, work: Path) -> dict[str, Any]:
    sleep = "import time\ntime.sleep(input_data.get('s', 0))\nreturn {}"
    client.register_task(write_task(work, "g_edge", sleep))
    client.register_task(write_task(work, "g_same", sleep))  # default replicas
    doc = {
        "pipelines": {
            "group_same_task": {
                "pipeline_id": "group_same_task",
                "steps": [
                    {"step_id": "a", "task_id": "g_edge", "input_mapping": {"s": "$.input.a"}},
                    *(
                        {
                            "step_id": s,
                            "task_id": "g_same",
                            "depends_on": ["a"],
                            "parallel_group": "g",
                            "input_mapping": {"s": "$.input.t"},
                        }
                        for s in ("b", "c")
                    ),
                    {
                        "step_id": "d",
                        "task_id": "g_edge",
                        "depends_on": ["b", "c"],
                        "input_mapping": {"s": "$.input.a"},
                    },
                ],
            }
        },
        "global_settings": {"enable_caching": False},
    }
    path = work / "group.json"
    path.write_text(json.dumps(doc))
    client.register_pipelines(path)
    document = {"a": GROUP_EDGE, "t": GROUP_T}
    client.run("group_same_task", document, timeout=300)  # warm: replicas start on demand
    durations = []
    for _ in range(GROUP_RUNS):
        record = client.run("group_same_task", document, timeout=300)
        if record.status != ExecutionStatus.SUCCEEDED:
            raise RuntimeError(f"group pipeline: {record.status.value}: {record.error}")
        durations.append(record.duration or float("nan"))
    ideal = 2 * GROUP_EDGE + GROUP_T
    return {"ideal_s": ideal, "duration_s": statistics.median(durations)}


# Celery ----------------------------------------------------------------------
CELERY_APP = """
from celery import Celery
import os
app = Celery("bench", broker=os.environ["BENCH_REDIS"], backend=os.environ["BENCH_REDIS"])
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=4, result_expires=600)

@app.task
def noop():
    return {}
"""


def celery_side(home: Path) -> dict[str, Any] | None:
    try:
        import celery  # noqa: F401
    except ImportError:
        say("  Celery is not installed (pip install -e '.[bench]'): skipped")
        return None
    home.mkdir(parents=True, exist_ok=True)
    state = StackState(home=str(home), started_at=time.time())
    services.start_redis(Settings(home=home), state)
    (home / "benchapp.py").write_text(CELERY_APP)
    env = {**os.environ, "BENCH_REDIS": state.redis_url, "PYTHONPATH": str(home)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "benchapp", "worker", "--pool=prefork",
         f"--concurrency={os.cpu_count()}", "--loglevel=WARNING", "--without-gossip",
         "--without-mingle"],
        cwd=home, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        os.environ["BENCH_REDIS"] = state.redis_url
        sys.path.insert(0, str(home))
        import benchapp  # the same module the worker runs
        from celery import group

        deadline = time.monotonic() + 60
        while not benchapp.app.control.ping(timeout=0.5):
            if time.monotonic() > deadline:
                raise RuntimeError("the Celery worker did not start")
        for _ in range(WARMUP):
            benchapp.noop.delay().get(timeout=30)
        say(f"  Celery: {JOBS} jobs ...")

        def processes() -> dict[int, str]:
            redis = {pid: "redis" for pid in ([state.redis_pid] if state.redis_pid else [])}
            return {**tree_groups(worker.pid, "celery worker"), **redis, os.getpid(): "client"}

        with CpuMeter(processes) as cpu:
            started = time.perf_counter()
            group(benchapp.noop.s() for _ in range(JOBS))().get(timeout=600)
            elapsed = time.perf_counter() - started
        trips = timed_calls(lambda: benchapp.noop.delay().get(timeout=30), ROUND_TRIPS)
        return {
            "jobs_per_s": JOBS / elapsed,
            "cpu_ms": cpu.per_job(JOBS),
            "failed": 0,
            "p50_ms": statistics.median(trips) * 1000,
            "p99_ms": percentile(trips, 0.99) * 1000,
        }
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGTERM)  # the worker and its pool: its own group
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        services.stop(state)


# report ----------------------------------------------------------------------
def report(sides: dict[str, dict | None], group: dict[str, Any], seconds: float) -> str:
    ours_ = sides["this system"]
    celery_ = sides.get("Celery")
    lines = [
        "# No-op jobs side by side",
        "",
        f"Machine: {os.cpu_count()} cores; {JOBS} no-op jobs per side for throughput, "
        f"{ROUND_TRIPS} sequential round trips for latency, after {WARMUP} warm-up calls. "
        f"Whole script: {seconds:.0f} s.",
        "",
        "| side | jobs/s | round trip p50 (ms) | p99 (ms) | failed |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in sides.items():
        if r is None:
            lines.append(f"| {name} | not installed | | | |")
            continue
        lines.append(
            f"| {name} | {r['jobs_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['failed']} |"
        )
    lines += ["", *cpu_table(sides)]
    if celery_:
        lines += [
            "",
            f"This system against Celery: **{ours_['jobs_per_s'] / celery_['jobs_per_s']:.2f}x** "
            f"the throughput (target 2x), p50 round trip "
            f"**{ours_['p50_ms'] / celery_['p50_ms']:.2f}x** Celery's (target at most 1x), "
            f"**{ours_['cpu_ms']['machine'] / celery_['cpu_ms']['machine']:.2f}x** Celery's "
            "machine CPU per job (target at most 1x).",
        ]
    lines += [
        f"This system's row is `client.gather(client.map(...))`; `map` submitted at "
        f"{ours_['submit_per_s']:.0f} jobs/s. Submitted one by one (`client.submit` in a "
        f"loop, then `client.wait` on each): {ours_['one_by_one_per_s']:.0f} jobs/s, "
        f"submitting at {ours_['one_by_one_submit_per_s']:.0f} jobs/s.",
        "",
        "## A parallel group whose steps are one task",
        "",
        f"`A -> {{B, C}} -> D`, B and C the same task sleeping {GROUP_T:g} s (default replica "
        f"settings), A and D {GROUP_EDGE:g} s: median record duration "
        f"**{group['duration_s']:.2f} s** against the ideal A + T + D = {group['ideal_s']:.2f} s "
        f"({group['duration_s'] / group['ideal_s']:.2f}x; target within 1.10x).",
        "",
    ]
    return "\n".join(lines)


def cpu_table(sides: dict[str, dict | None]) -> list[str]:
    """CPU per job during each side's burst: the machine's, then each process group's."""
    groups = sorted({g for r in sides.values() if r for g in r["cpu_ms"]} - {"machine"})
    lines = [
        "CPU per job over each burst, in ms (the machine's from /proc/stat, each group's "
        "from its processes' /proc/PID/stat):",
        "",
        "| side | machine | " + " | ".join(groups) + " |",
        "|---|---:|" + "---:|" * len(groups),
    ]
    for name, r in sides.items():
        if r:
            cells = [f"{r['cpu_ms'][g]:.2f}" if g in r["cpu_ms"] else "" for g in groups]
            lines.append(f"| {name} | {r['cpu_ms']['machine']:.2f} | " + " | ".join(cells) + " |")
    return lines


def chart(sides: dict[str, dict | None]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    shown = {k: v for k, v in sides.items() if v}
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.bar(list(shown), [v["jobs_per_s"] for v in shown.values()], color="#4477aa")
    left.set_title("no-op jobs/s (higher is better)")
    left.set_yscale("log")
    right.bar(list(shown), [v["p50_ms"] for v in shown.values()], color="#cc6677")
    right.set_title("round trip p50, ms (lower is better)")
    fig.tight_layout()
    fig.savefig(CHART, dpi=100)
    return True


def main() -> int:
    for var in [v for v in os.environ if v.startswith("WTM_")]:
        del os.environ[var]  # this benchmark runs on its own embedded stack only
    home = Path(tempfile.mkdtemp(prefix="wtmt-", dir="/tmp"))
    settings = Settings(home=home / "wtm")
    started = time.perf_counter()
    client = None
    sides: dict[str, dict | None] = {}
    try:
        say(f"starting the embedded stack in {settings.home} ...")
        stack.up(settings)
        resolved = stack.resolve(settings)
        client = Client(resolved)
        say("this system ...")
        sides["this system"] = ours(client, home / "pkgs")
        say("A -> {B, C} -> D with B and C one task ...")
        group = parallel_group_of_one_task(client, home / "pkgs")
        say("bare Ray ...")
        sides["bare Ray actor"] = bare_ray(resolved)
        say("Celery ...")
        sides["Celery"] = celery_side(home / "celery")
    finally:
        stop_stack(client, settings)
        shutil.rmtree(home, ignore_errors=True)
    text = report(sides, group, time.perf_counter() - started)
    RESULTS.write_text(text)
    drew = chart(sides)
    print(text)
    say(f"wrote {RESULTS.relative_to(ROOT)}" + (f" and {CHART.relative_to(ROOT)}" if drew else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
