"""The example notebook, executed top to bottom in a real Jupyter kernel, on a stack
it starts itself in a fresh WTM_HOME (as a new user's first call would)."""

from __future__ import annotations

import base64

import nbformat
import pytest
from nbclient import NotebookClient

from orchestrator import Client, stack
from orchestrator.settings import Settings
from tests.conftest import ROOT

NOTEBOOK = ROOT / "examples" / "faces.ipynb"
FACE_TASKS = {"face_detection", "face_attribute", "face_extractor", "face_merge"}


def _outputs(cell) -> list[dict]:
    return [dict(o) for o in cell.get("outputs", [])]


def _text(cell) -> str:
    parts = []
    for output in _outputs(cell):
        data = output.get("data", {})
        parts.append(
            output.get("text", "") + data.get("text/plain", "") + data.get("text/html", "")
        )
    return "\n".join(parts)


def _png(cell) -> bytes:
    [image] = [o["data"]["image/png"] for o in _outputs(cell) if "image/png" in o.get("data", {})]
    return base64.b64decode(image)


@pytest.fixture
def fresh_home(tmp_path, monkeypatch):
    """A user's shell with nothing running: the notebook's first call starts the stack."""
    home = tmp_path / "wtm"
    for var in [v for v in __import__("os").environ if v.startswith(("WTM_", "RAY_AUTH"))]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("WTM_HOME", str(home))
    monkeypatch.setenv("HOME", str(tmp_path))
    try:
        yield home
    finally:
        stack.down(Settings(home=home))


def test_the_example_notebook_runs_clean_and_loads_each_model_once(fresh_home, tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    runner = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    runner.execute()  # raises CellExecutionError naming the cell that failed

    code = [c for c in notebook.cells if c.cell_type == "code"]

    def cell(start: str):
        [found] = [c for c in code if c.source.startswith(start)]
        return found

    assert all(o.get("output_type") != "error" for c in code for o in _outputs(c))
    summary = _text(cell("cold = client.submit("))
    assert "'face_count': 1" in summary  # astronaut.jpg: one face
    faces = _text(cell("photos = sorted("))
    assert "'astronaut_grid.jpg': 4" in faces and "'coffee.jpg': 0" in faces
    assert "<progress" in faces  # the progress bar, drawn in the notebook
    assert "succeeded" in _text(cell("cold  # status"))
    # The pictures: the cold run's (kept beside the test) and a warm one's.
    cold = _png(cell("cold_figure ="))
    (tmp_path / "timeline-cold.png").write_bytes(cold)
    assert cold.startswith(b"\x89PNG")
    assert _png(cell("busiest ="))

    # Each face task's replica started once, for the cold run, and stayed: the five
    # warm runs after it loaded nothing and stopped nothing.
    client = Client(Settings(home=fresh_home), start=False)
    try:
        events = [e for e in client.replica_events(100) if e.task_id in FACE_TASKS]
        workers = [w for w in client.workers() if w.task_id in FACE_TASKS]
        runs = client.executions(target="face_processing_pipeline", limit=100)
    finally:
        client.close()
    assert sorted(e.task_id for e in events if e.event == "started") == sorted(FACE_TASKS)
    assert [e for e in events if e.event != "started"] == []
    assert sorted(w.task_id for w in workers) == sorted(FACE_TASKS)
    assert {w.worker_id: w.loads for w in workers} == {w.worker_id: 1 for w in workers}
    assert len(runs) == 6  # 1 cold + 5 warm, every step on those four replicas
    assert {s.worker_id for r in runs for s in r.steps} == {w.worker_id for w in workers}
