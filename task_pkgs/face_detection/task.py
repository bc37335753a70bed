"""Face detection with OpenCV's frontal-face Haar cascade (the seed's parameters)."""

from __future__ import annotations

from pathlib import Path

import cv2

from orchestrator import SimpleTask
from orchestrator.images import image_from_input
from orchestrator.vision import MIN_NEIGHBORS, MIN_SIZE, SCALE_FACTOR, detect_faces, load_cascade

SAMPLE = Path(__file__).parent / "sample.jpg"


class Task(SimpleTask):
    """Detects faces; the cascade loads once per replica in ``setup``."""

    def setup(self) -> None:
        self.face_cascade = load_cascade()

    def process(self, input_data: dict) -> dict:
        if input_data.get("demo_mode"):
            input_data = {**input_data, "image_path": str(SAMPLE)}
        image = image_from_input(input_data, self.objects)
        params = input_data.get("parameters") or {}
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        faces = detect_faces(
            self.face_cascade,
            gray,
            scale_factor=float(params.get("scale_factor", SCALE_FACTOR)),
            min_neighbors=int(params.get("min_neighbors", MIN_NEIGHBORS)),
            min_size=int(params.get("min_size", MIN_SIZE)),
        )
        faces = [{**face, "confidence": 1.0} for face in faces]
        return {"faces": faces, "face_count": len(faces), "image_size": list(image.shape[:2])}
