"""Benchmarks of pipelines and per-job overhead, on an embedded stack of their own.

    .venv/bin/python benchmarks/pipelines.py

Starts a redis-server and a Ray head in a temporary WTM_HOME, runs three
benchmarks, prints a Markdown table of the results, writes it to
``benchmarks/results.md`` and stops everything it started.

A. Parallel group vs chain on sleep tasks (0.2 s, then two of 1.0 s).
B. The face processing pipeline, with its parallel group and as a chain.
C. Overhead per job: a no-op task through the whole system vs a plain Ray actor call.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator import Client, cluster, stack  # noqa: E402
from orchestrator.models import ExecutionRecord, ExecutionStatus, StepRecord  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402
from orchestrator.testing import write_task  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results.md"
IMAGE = ROOT / "data" / "images" / "astronaut_grid.jpg"
FACE_PIPELINE = ROOT / "pipelines" / "face_processing_pipeline.json"

RUNS = 5  # timed runs per pipeline variant, after one warm-up
A_SLEEP = 0.2  # seconds step a sleeps
T = 1.0  # seconds steps b and c sleep
CALLS = 50  # timed calls per side in benchmark C, after warm-up
WARMUP_CALLS = 5
RUN_TIMEOUT_S = 180.0  # a run that takes longer than this is a failure


# helpers -------------------------------------------------------------------
def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run_once(client: Client, target: str, document: Any) -> tuple[ExecutionRecord, float]:
    """One execution through the queue: (terminal record, client-side wall seconds)."""
    started = time.perf_counter()
    record = client.run(target, document, timeout=RUN_TIMEOUT_S)
    wall = time.perf_counter() - started
    if record.status != ExecutionStatus.SUCCEEDED:
        error = record.error.message if record.error else "no terminal state in time"
        raise RuntimeError(f"{target}: {record.status.value}: {error}")
    return record, wall


def overlap(a: StepRecord, b: StepRecord) -> float:
    """Seconds during which both steps were running (by their records)."""
    if None in (a.started_at, a.finished_at, b.started_at, b.finished_at):
        return float("nan")
    return max(0.0, min(a.finished_at, b.finished_at) - max(a.started_at, b.started_at))


@dataclass
class Series:
    """The timed runs of one pipeline variant."""

    name: str
    critical: Callable[[dict[str, float]], float]  # step durations -> critical path (s)
    pair: tuple[str, str]  # the two steps whose overlap is measured
    cold: float = float("nan")  # the warm-up run's record duration (replicas starting)
    durations: list[float] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)
    queue_waits: list[float] = field(default_factory=list)
    paths: list[float] = field(default_factory=list)
    steps: dict[str, list[float]] = field(default_factory=dict)
    overlaps: list[float] = field(default_factory=list)
    workers: set[tuple[str, str]] = field(default_factory=set)

    def add(self, record: ExecutionRecord, wall: float) -> None:
        self.durations.append(record.duration or float("nan"))
        self.walls.append(wall)
        self.queue_waits.append(record.queue_wait or 0.0)
        by_id = {s.step_id: s for s in record.steps}
        times = {s.step_id: s.duration or float("nan") for s in record.steps}
        for step_id, seconds in times.items():
            self.steps.setdefault(step_id, []).append(seconds)
        self.workers.update((s.step_id, s.worker_id or "?") for s in record.steps)
        self.paths.append(self.critical(times))
        self.overlaps.append(overlap(by_id[self.pair[0]], by_id[self.pair[1]]))

    def replicas(self, *step_ids: str) -> str:
        """Which replicas ran these steps, e.g. ``b: wtm:sleep_b@1.0.0#0``."""
        return "; ".join(
            f"{step}: {', '.join(sorted(w for s, w in self.workers if s == step))}"
            for step in step_ids
        )

    def step(self, step_id: str) -> float:
        return median(self.steps[step_id])

    def after(self, step_id: str) -> float:
        """Median of (record duration - that step's duration), per run."""
        return median([d - s for d, s in zip(self.durations, self.steps[step_id], strict=True)])


def run_pair(client: Client, document: Any, *series: Series, runs: int = RUNS) -> None:
    """Warm each variant up once, then alternate them, so drift hits both alike."""
    for s in series:
        s.cold = run_once(client, s.name, document)[0].duration or float("nan")
    for _ in range(runs):
        for s in series:
            s.add(*run_once(client, s.name, document))


def write_pipelines(path: Path, pipelines: list[dict], global_settings: dict) -> Path:
    """A pipeline file in the seed's format: ``{"pipelines": {...}, "global_settings"}``."""
    doc = {
        "pipelines": {p["pipeline_id"]: p for p in pipelines},
        "global_settings": global_settings,
    }
    path.write_text(json.dumps(doc, indent=2))
    return path


# benchmark A ---------------------------------------------------------------
def bench_sleep(client: Client, work: Path) -> dict[str, Any]:
    pkgs = work / "pkgs"
    bc = {"replicas": {"min": 0, "max": 1, "max_concurrency": 1}}
    write_task(
        pkgs, "sleep_a", f"import time\ntime.sleep({A_SLEEP})\nreturn {{'slept': {A_SLEEP}}}"
    )
    write_task(pkgs, "sleep_b", f"import time\ntime.sleep({T})\nreturn {{'slept': {T}}}", **bc)
    write_task(pkgs, "sleep_c", f"import time\ntime.sleep({T})\nreturn {{'slept': {T}}}", **bc)
    for task_id in ("sleep_a", "sleep_b", "sleep_c"):
        client.register_task(pkgs / task_id)

    def pipeline(pipeline_id: str, c_deps: list[str], group: str | None) -> dict:
        return {
            "pipeline_id": pipeline_id,
            "steps": [
                {"step_id": "a", "task_id": "sleep_a"},
                {
                    "step_id": "b",
                    "task_id": "sleep_b",
                    "depends_on": ["a"],
                    "parallel_group": group,
                },
                {
                    "step_id": "c",
                    "task_id": "sleep_c",
                    "depends_on": c_deps,
                    "parallel_group": group,
                },
            ],
        }

    no_cache = {"enable_caching": False}
    client.register_pipelines(
        write_pipelines(work / "sleep_parallel.json", [pipeline("sleep_par", ["a"], "g")], no_cache)
    )
    client.register_pipelines(
        write_pipelines(work / "sleep_chain.json", [pipeline("sleep_seq", ["b"], None)], no_cache)
    )
    parallel = Series("sleep_par", lambda t: t["a"] + max(t["b"], t["c"]), ("b", "c"))
    chain = Series("sleep_seq", lambda t: t["a"] + t["b"] + t["c"], ("b", "c"))
    run_pair(client, {}, parallel, chain)
    return {"parallel": parallel, "chain": chain}


# benchmark B ---------------------------------------------------------------
def bench_face(client: Client, work: Path) -> dict[str, Any]:
    for folder in sorted(p for p in (ROOT / "task_pkgs").iterdir() if (p / "task.json").exists()):
        client.register_task(folder)
    client.register_pipelines(FACE_PIPELINE)  # as shipped (caching on); not run here
    seed = json.loads(FACE_PIPELINE.read_text())
    original = seed["pipelines"]["face_processing_pipeline"]
    parallel = {**json.loads(json.dumps(original)), "pipeline_id": "face_bench_parallel"}
    chain = {**json.loads(json.dumps(original)), "pipeline_id": "face_bench_chain"}
    for step in chain["steps"]:
        if step["step_id"] == "attributes":
            step["parallel_group"] = None
        if step["step_id"] == "features":
            step["depends_on"], step["parallel_group"] = ["attributes"], None
    no_cache = {**seed.get("global_settings", {}), "enable_caching": False}
    client.register_pipelines(
        write_pipelines(work / "face_bench.json", [parallel, chain], no_cache)
    )
    document = {"image_path": str(IMAGE)}
    pair = ("attributes", "features")
    par = Series(
        "face_bench_parallel",
        lambda t: t["detection"] + max(t["attributes"], t["features"]) + t["merge"],
        pair,
    )
    seq = Series("face_bench_chain", lambda t: sum(t.values()), pair)
    run_pair(client, document, par, seq)
    faces = client.executions(limit=1, target="face_bench_chain")[0].result
    face_count = len(faces.get("faces", [])) if isinstance(faces, dict) else None
    return {"parallel": par, "chain": seq, "face_count": face_count}


# benchmark C ---------------------------------------------------------------
class Noop:
    """The plain Ray actor peer of the ``sleep0`` task."""

    def f(self) -> dict:
        return {}


def bench_overhead(client: Client, work: Path, settings: Settings) -> dict[str, Any]:
    import ray

    client.register_task(write_task(work / "pkgs", "sleep0", "return {}"))
    for _ in range(WARMUP_CALLS):
        run_once(client, "sleep0", {})
    system, durations, waits = [], [], []
    for _ in range(CALLS):
        record, wall = run_once(client, "sleep0", {})
        system.append(wall)
        durations.append(record.duration or float("nan"))
        waits.append(record.queue_wait or 0.0)

    cluster.connect(settings)
    actor = ray.remote(Noop).remote()
    for _ in range(WARMUP_CALLS):
        ray.get(actor.f.remote())
    direct = []
    for _ in range(CALLS):
        started = time.perf_counter()
        ray.get(actor.f.remote())
        direct.append(time.perf_counter() - started)
    ray.kill(actor)
    return {
        "system": median(system),
        "system_p90": statistics.quantiles(system, n=10)[-1],
        "duration": median(durations),
        "queue_wait": median(waits),
        "direct": median(direct),
        "direct_p90": statistics.quantiles(direct, n=10)[-1],
    }


# report --------------------------------------------------------------------
def report(a: dict, b: dict, c: dict, elapsed: float, load: tuple[float, float]) -> str:
    ms = 1000.0
    pa, sa = a["parallel"], a["chain"]
    pb, sb = b["parallel"], b["chain"]
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}, Ray {_ray_version()}, {platform.system()}. "
        f"Medians of {RUNS} runs per variant after one warm-up each, the two variants "
        f"alternating (A, B), and of {CALLS} calls after {WARMUP_CALLS} warm-up calls (C). "
        f"Whole script: {elapsed:.0f} s. Load average (1 min) at start {load[0]:.1f}, "
        f"at end {load[1]:.1f}: other processes on the machine share its cores.",
        "",
        "Record duration: the execution record's `duration` (dispatcher start to finish). "
        "Client wall: `client.run` as the caller sees it (validate, record, enqueue, wait "
        "for the event, read the record). Critical path: the longest chain of the run's "
        "own step durations; duration minus critical path is what the system adds "
        "between steps.",
        "",
        f"## A. Parallel group vs chain (sleep tasks: a {A_SLEEP} s, then b and c {T} s each)",
        "",
        "| variant | ideal (s) | record duration (s) | client wall (s) | critical path of "
        "its steps (s) | queue wait (s) | b, c overlap (s) | first run, cold (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        _row_a(f"parallel: b, c in one group (ideal A+T = {A_SLEEP}+{T})", A_SLEEP + T, pa),
        _row_a(f"chain: c after b (ideal A+2T = {A_SLEEP}+2x{T})", A_SLEEP + 2 * T, sa),
        "",
        f"Speedup chain/parallel: **{_ratio(sa.durations, pa.durations):.2f}x** by record "
        f"duration, {_ratio(sa.walls, pa.walls):.2f}x by client wall "
        f"(ideal {(A_SLEEP + 2 * T) / (A_SLEEP + T):.2f}x). Replicas, parallel variant: "
        f"{pa.replicas('b', 'c')}.",
        "",
        "## B. Face processing pipeline (astronaut_grid.jpg, caching off)",
        "",
        "| variant | record duration (s) | client wall (s) | critical path of its steps (s) "
        "| detection (s) | attributes (s) | features (s) | merge (s) | duration after "
        "detection (s) | attributes, features overlap (s) | first run, cold (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        _row_b("parallel: attributes, features in group face_analysis", pb),
        _row_b("chain: features after attributes", sb),
        "",
        f"Speedup chain/parallel: **{_ratio(sb.durations, pb.durations):.2f}x** by record "
        f"duration, {_ratio(sb.walls, pb.walls):.2f}x by client wall, "
        f"{sb.after('detection') / pb.after('detection'):.2f}x on the part after detection "
        f"(the part the group can shorten). Faces found: {b['face_count']}. Replicas, "
        f"parallel variant: {pb.replicas('attributes', 'features')}.",
        "",
        "## C. Overhead per job (no-op task `sleep0`)",
        "",
        "| path | median latency (ms) | p90 (ms) |",
        "|---|---:|---:|",
        f"| `client.run('sleep0', {{}})`: client, Redis, dispatcher, replica, records, event "
        f"| {c['system'] * ms:.1f} | {c['system_p90'] * ms:.1f} |",
        f"| `ray.get(actor.f.remote())` on a plain Ray actor | {c['direct'] * ms:.2f} "
        f"| {c['direct_p90'] * ms:.2f} |",
        f"| **overhead per job** (difference of the medians) "
        f"| **{(c['system'] - c['direct']) * ms:.1f}** | |",
        "",
        f"Ratio system/direct: {c['system'] / c['direct']:.0f}x. Of the system's latency, "
        f"the record's duration (dispatcher start to finish) is {c['duration'] * ms:.1f} ms "
        f"and its queue wait (submitted to picked up) {c['queue_wait'] * ms:.1f} ms; the rest "
        "is the client (validate, insert, enqueue, wait for the event, read the record).",
        "",
    ]
    return "\n".join(lines)


def _ratio(slow: list[float], fast: list[float]) -> float:
    return median(slow) / median(fast)


def _row_a(name: str, ideal: float, s: Series) -> str:
    return (
        f"| {name} | {ideal:.2f} | {median(s.durations):.3f} | {median(s.walls):.3f} "
        f"| {median(s.paths):.3f} | {median(s.queue_waits):.3f} | {median(s.overlaps):.3f} "
        f"| {s.cold:.2f} |"
    )


def _row_b(name: str, s: Series) -> str:
    steps = " | ".join(f"{s.step(x):.3f}" for x in ("detection", "attributes", "features", "merge"))
    return (
        f"| {name} | {median(s.durations):.3f} | {median(s.walls):.3f} | {median(s.paths):.3f} "
        f"| {steps} | {s.after('detection'):.3f} | {median(s.overlaps):.3f} | {s.cold:.2f} |"
    )


def _ray_version() -> str:
    import ray

    return ray.__version__


def _leftovers(home: Path, pids: list[int]) -> list[str]:
    """Processes of the stack still running after ``down`` (should be none).

    ``pids`` are the stack's own (redis-server, Ray head, workers) taken before ``down``;
    anything else whose command line names the home counts too.
    """
    found = {}
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            cmdline = " ".join(proc.info["cmdline"] or [])
            mine = proc.pid in pids or str(home) in cmdline
            if mine and proc.pid != os.getpid() and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found[proc.pid] = f"{proc.pid} {cmdline[:100]}"
    return list(found.values())


def main() -> int:
    for var in [v for v in os.environ if v.startswith("WTM_")]:
        del os.environ[var]  # this benchmark runs on its own embedded stack only
    home = Path(tempfile.mkdtemp(prefix="wtmb-", dir="/tmp"))
    settings = Settings(home=home)
    started = time.perf_counter()
    load_at_start = os.getloadavg()[0]
    client = None
    try:
        print(f"starting the embedded stack in {home} ...", file=sys.stderr, flush=True)
        stack.up(settings)
        resolved = stack.resolve(settings)
        client = Client(resolved)
        work = home / "work"
        print("A: parallel group vs chain (sleep tasks) ...", file=sys.stderr, flush=True)
        a = bench_sleep(client, work)
        print("B: face processing pipeline ...", file=sys.stderr, flush=True)
        b = bench_face(client, work)
        print("C: overhead per job ...", file=sys.stderr, flush=True)
        c = bench_overhead(client, work, resolved)
        load = (load_at_start, os.getloadavg()[0])
        text = report(a, b, c, time.perf_counter() - started, load)
    finally:
        if client is not None:
            client.close()
        with contextlib.suppress(Exception):
            import ray

            ray.shutdown()
        pids = stack.stack_pids(settings)  # redis-server, the Ray head and its workers
        stack.down(settings)
        stray = _leftovers(home, pids)
        shutil.rmtree(home, ignore_errors=True)
    print(text)
    RESULTS.write_text(text)
    if stray:
        print("processes left running:\n" + "\n".join(stray), file=sys.stderr)
        return 1
    print(
        f"stack stopped ({len(pids)} processes, none left); wrote {RESULTS.relative_to(ROOT)}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
