"""Placement and data movement across two Ray nodes (a separate driver process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import IMAGES, ROOT


def test_custom_resource_placement_and_file_input_through_the_object_store(tmp_path):
    script = Path(__file__).with_name("scenario.py")
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(IMAGES / "astronaut.jpg")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])

    assert result["status"] == "succeeded", result["error"]
    assert result["ran_on"] == result["special_node"] != result["head_node"]
    assert result["input"]["image_path"].startswith("s3://ai-data/inputs/")
    assert result["shape"] == [480, 640, 3]
