"""Face detection with OpenCV's frontal-face Haar cascade (the seed's parameters)."""

from __future__ import annotations

from pathlib import Path

import cv2

from orchestrator import SimpleTask
from orchestrator.images import image_from_input

SAMPLE = Path(__file__).parent / "sample.jpg"


class Task(SimpleTask):
    """Detects faces; the cascade loads once per replica in ``setup``."""

    def setup(self) -> None:
        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        self.face_cascade = cv2.CascadeClassifier(path)
        if self.face_cascade.empty():
            raise RuntimeError(f"could not load the Haar cascade {path}")

    def process(self, input_data: dict) -> dict:
        if input_data.get("demo_mode"):
            input_data = {**input_data, "image_path": str(SAMPLE)}
        image = image_from_input(input_data, self.objects)
        params = input_data.get("parameters") or {}
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        min_size = int(params.get("min_size", 30))
        boxes = self.face_cascade.detectMultiScale(
            gray,
            scaleFactor=float(params.get("scale_factor", 1.1)),
            minNeighbors=int(params.get("min_neighbors", 5)),
            minSize=(min_size, min_size),
        )
        faces = [
            {"face_id": i, "bbox": [int(x), int(y), int(w), int(h)], "confidence": 1.0}
            for i, (x, y, w, h) in enumerate(sorted(map(tuple, boxes), key=lambda b: (b[1], b[0])))
        ]
        return {"faces": faces, "face_count": len(faces), "image_size": list(image.shape[:2])}
