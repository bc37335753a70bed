"""Cold and warm runs: what a first pipeline waits for, and what later ones do.

    .venv/bin/python benchmarks/coldstart.py      # about a minute on 2 cores

On a fresh embedded stack of its own (a temporary WTM_HOME, stopped at the end):

A. A chain of three tasks whose models each take ``LOAD_S`` to load (their
   ``setup`` sleeps), ``WORK_S`` of work each: the first run (every replica
   cold) and the median of ``RUNS`` warm runs, against the sum of the loads
   (what starting each stage's replicas when the stage is reached costs) and
   the single longest load (the floor: every replica loading at once).
B. The face processing pipeline with caching off, on ``astronaut_grid.jpg``:
   the first run, then ``RUNS`` more as the example notebook makes them (one,
   then a ``map`` over the sample photos), counting the replicas started and
   stopped and the models loaded after the first run (the target: none).
C. The same face pipeline with caching on, run again with every replica
   stopped: answered from the cache without starting one.

Writes ``benchmarks/coldstart.md`` and prints it.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import say, stop_stack  # noqa: E402
from orchestrator import Client, stack  # noqa: E402
from orchestrator.models import ExecutionRecord, ExecutionStatus  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402
from orchestrator.testing import write_task  # noqa: E402
from orchestrator.workers import Workers  # noqa: E402

RESULTS = ROOT / "benchmarks" / "coldstart.md"
IMAGES = ROOT / "data" / "images"
LOAD_S = 2.0
WORK_S = 0.05
RUNS = 5
FACE_TASKS = ("face_detection", "face_attribute", "face_extractor", "face_merge")


def wall(record: ExecutionRecord) -> float:
    """Submission to the terminal record: what the caller waited."""
    if record.status != ExecutionStatus.SUCCEEDED:
        raise RuntimeError(f"{record.target}: {record.status}: {record.error}")
    return (record.finished_at or 0.0) - record.submitted_at


def replica_waits(record: ExecutionRecord) -> float:
    """Seconds the execution's steps waited for replicas, summed over its steps."""
    return sum(took for step in record.steps for _, took in step.waits())


def chain(client: Client, work: Path) -> dict:
    for name in ("a", "b", "c"):
        body = f"import time\ntime.sleep({WORK_S})\nreturn {{'ok': True}}"
        setup = f"import time\ntime.sleep({LOAD_S})"
        client.register_task(write_task(work, f"cold_{name}", body, setup=setup))
    spec = {
        "pipeline_id": "cold_chain",
        "steps": [
            {"step_id": "a", "task_id": "cold_a"},
            {"step_id": "b", "task_id": "cold_b", "depends_on": ["a"]},
            {"step_id": "c", "task_id": "cold_c", "depends_on": ["b"]},
        ],
    }
    (work / "cold_chain.json").write_text(json.dumps(spec))
    client.register_pipelines(work / "cold_chain.json")
    first = client.run("cold_chain", {}, timeout=300)
    warm = [wall(client.run("cold_chain", {}, timeout=300)) for _ in range(RUNS)]
    return {"cold": wall(first), "waits": replica_waits(first), "warm": statistics.median(warm)}


def events(client: Client) -> list:
    return [e for e in client.replica_events(1000) if e.task_id in FACE_TASKS]


def loads(client: Client) -> int:
    return sum(w.loads for w in client.workers() if w.task_id in FACE_TASKS)


def faces(client: Client) -> dict:
    client.register_tasks_in(ROOT / "task_pkgs")
    client.register_pipelines_in(ROOT / "pipelines")
    photo = {"image_path": str(IMAGES / "astronaut_grid.jpg")}
    first = client.run("face_processing_pipeline", photo, cache=False, timeout=300)
    started, loaded = len(events(client)), loads(client)
    warm = [wall(client.run("face_processing_pipeline", photo, cache=False, timeout=300))]
    photos = [{"image_path": str(p)} for p in sorted(IMAGES.glob("*.jpg"))][: RUNS - 1]
    client.gather(client.map("face_processing_pipeline", photos, cache=False), timeout=300)
    steady = [
        wall(client.run("face_processing_pipeline", photo, cache=False, timeout=300))
        for _ in range(RUNS)
    ]
    later = events(client)[: len(events(client)) - started]
    return {
        "cold": wall(first),
        "waits": replica_waits(first),
        "warm": statistics.median(warm + steady),
        "events after": len(later),
        "loads after": loads(client) - loaded,
        "replicas": started,
    }


def cached(client: Client, settings: Settings) -> dict:
    photo = {"image_path": str(IMAGES / "astronaut_grid.jpg")}
    client.run("face_processing_pipeline", photo, timeout=300)  # fills the cache
    for task_id in FACE_TASKS:
        Workers(settings).stop(task_id)
    before = len(events(client))
    record = client.run("face_processing_pipeline", photo, timeout=300)
    return {
        "wall": wall(record),
        "hits": sum(s.cache_hit for s in record.steps),
        "started": len(events(client)) - before,
    }


def report(a: dict, b: dict, c: dict, took: float) -> str:
    floor, stages = LOAD_S + 3 * WORK_S, 3 * (LOAD_S + WORK_S)
    return f"""# Cold and warm runs (`benchmarks/coldstart.py`)

Machine: {os.cpu_count()} cores, CPython {platform.python_version()}, {platform.system()}.
A fresh embedded stack; whole script {took:.0f} s. Wall: submission to the terminal record.

## A. A chain of three tasks, each model loading in {LOAD_S:g} s, {WORK_S * 1000:.0f} ms of work

| run | wall (s) |
|---|---:|
| first run, every replica cold | {a["cold"]:.2f} |
| steady state (median of {RUNS} warm runs) | {a["warm"]:.3f} |
| floor: the longest load, then the work (every replica loading at once) | {floor:.2f} |
| stage by stage: each stage's load when it is reached (the sum of the loads) | {stages:.2f} |
| target: floor + 2 s | {floor + 2:.2f} |

The first run's steps waited {a["waits"]:.2f} s for replicas in all (their records' phases).

## B. The face processing pipeline (astronaut_grid.jpg, caching off)

| run | wall (s) |
|---|---:|
| first run, every replica cold | {b["cold"]:.2f} |
| steady state (median of {RUNS + 1} runs after the first, a `map` between) | {b["warm"]:.3f} |

Replicas started for the first run: {b["replicas"]}. After it, over {2 * RUNS} more pipelines:
**{b["events after"]} replica starts or stops, {b["loads after"]} model loads** (target: none).

## C. The face pipeline cached, every replica stopped

Answered in {c["wall"] * 1000:.0f} ms, {c["hits"]} of 4 steps from the cache,
{c["started"]} replicas started.
"""


def main() -> int:
    for var in [v for v in os.environ if v.startswith("WTM_")]:
        del os.environ[var]  # its own embedded stack only
    home = Path(tempfile.mkdtemp(prefix="wtmc-", dir="/tmp"))
    settings = Settings(home=home)
    client = None
    started = time.perf_counter()
    try:
        say(f"starting the embedded stack in {home} ...")
        stack.up(settings)
        resolved = stack.resolve(settings)
        client = Client(resolved)
        work = home / "work"
        work.mkdir()
        say("A: a cold chain of three 2 s loads ...")
        a = chain(client, work)
        say("B: the face pipeline, cold then warm ...")
        b = faces(client)
        say("C: the face pipeline from the cache, no replica running ...")
        c = cached(client, resolved)
        text = report(a, b, c, time.perf_counter() - started)
    finally:
        stop_stack(client, settings)
    print(text)
    RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
