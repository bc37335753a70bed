"""The example notebook, executed top to bottom in a real Jupyter kernel."""

from __future__ import annotations

import nbformat
from nbclient import NotebookClient

from tests.conftest import ROOT

NOTEBOOK = ROOT / "examples" / "faces.ipynb"


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


def test_the_example_notebook_runs_clean(cli_env, client, tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    runner = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    runner.execute()  # raises CellExecutionError naming the cell that failed

    code = [c for c in notebook.cells if c.cell_type == "code"]
    by_source = {c.source.splitlines()[0]: c for c in code}
    assert all(o.get("output_type") != "error" for c in code for o in _outputs(c))
    summary = _text(by_source["job = client.submit("])
    assert "'face_count': 1" in summary  # astronaut.jpg: one face
    faces = _text(by_source['photos = sorted(PHOTOS.glob("*.jpg"))'])
    assert "'astronaut_grid.jpg': 4" in faces and "'coffee.jpg': 0" in faces
    assert "<progress" in faces  # the progress bar, drawn in the notebook
    assert "succeeded" in _text(by_source["job  # status, timings and each step, as a table"])
    timeline = by_source['busiest = max(jobs, key=lambda j: len(j.result()["faces"]))']
    assert any("image/png" in o.get("data", {}) for o in _outputs(timeline))
