"""Face helpers shared by vision tasks (packages cannot import each other).

Detection uses the seed's parameters (scaleFactor 1.1, minNeighbors 5,
minSize 30x30) and orders faces top to bottom, then left to right, so every
task numbers the faces of a photo the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from orchestrator.errors import ValidationError

SCALE_FACTOR = 1.1
MIN_NEIGHBORS = 5
MIN_SIZE = 30
FRONTAL_FACE = "haarcascade_frontalface_default.xml"


def load_cascade(name: str = FRONTAL_FACE):
    """One of OpenCV's bundled Haar cascades; RuntimeError if it will not load."""
    import cv2

    path = cv2.data.haarcascades + name
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"could not load the Haar cascade {path}")
    return cascade


def detect_faces(
    cascade,
    gray: np.ndarray,
    scale_factor: float = SCALE_FACTOR,
    min_neighbors: int = MIN_NEIGHBORS,
    min_size: int = MIN_SIZE,
) -> list[dict[str, Any]]:
    """``[{"face_id", "bbox": [x, y, w, h]}]`` in reading order."""
    boxes = cascade.detectMultiScale(
        gray, scaleFactor=scale_factor, minNeighbors=min_neighbors, minSize=(min_size, min_size)
    )
    ordered = sorted(map(tuple, boxes), key=lambda b: (b[1], b[0]))
    return [{"face_id": i, "bbox": [int(v) for v in box]} for i, box in enumerate(ordered)]


def check_faces(faces: list[dict], shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """The input's faces, each bbox inside the image and each face_id used once."""
    height, width = shape[:2]
    seen: set[str] = set()
    checked = []
    for face in faces:
        face_id = face["face_id"]
        if str(face_id) in seen:
            raise ValidationError(f"face {face_id!r} appears more than once in 'faces'")
        seen.add(str(face_id))
        x, y, w, h = face["bbox"]
        if w <= 0 or h <= 0:
            raise ValidationError(f"face {face_id!r}: bbox {face['bbox']} has no area")
        if x < 0 or y < 0 or x + w > width or y + h > height:
            raise ValidationError(
                f"face {face_id!r}: bbox {face['bbox']} lies outside the {width}x{height} image"
            )
        checked.append({"face_id": face_id, "bbox": [x, y, w, h]})
    return checked
