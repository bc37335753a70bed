"""Per-face attributes (eyes, smile, brightness, sharpness) with OpenCV's Haar cascades."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from orchestrator import SimpleTask
from orchestrator.errors import ValidationError
from orchestrator.images import image_from_input

# Detection when the input carries no faces: face_detection's defaults.
SCALE_FACTOR = 1.1
MIN_NEIGHBORS = 5
MIN_SIZE = 30

# Eyes and smiles are searched on the face crop scaled to this width, so that one set of
# cascade parameters fits a 40-pixel face and a 400-pixel one alike.
ANALYSIS_WIDTH = 120


class Task(SimpleTask):
    """Describes each face; the three cascades load once per replica in ``setup``."""

    def setup(self) -> None:
        self.face_cascade = _cascade("haarcascade_frontalface_default.xml")
        self.eye_cascade = _cascade("haarcascade_eye.xml")
        self.smile_cascade = _cascade("haarcascade_smile.xml")

    def process(self, input_data: dict) -> dict:
        image = image_from_input(input_data, self.objects)
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        if input_data.get("faces") is None:
            faces = self.detect(gray)
        else:
            faces = checked_faces(input_data["faces"], gray.shape)
        described = []
        for face in faces:
            x, y, w, h = face["bbox"]
            described.append({**face, **self.describe(gray[y : y + h, x : x + w])})
        attributes = {
            str(f["face_id"]): {k: f[k] for k in ("eyes", "smile", "brightness", "sharpness")}
            for f in described
        }
        return {
            "attributes": attributes,
            "faces": described,
            "face_count": len(described),
            "image_size": list(image.shape[:2]),
        }

    def detect(self, gray: np.ndarray) -> list[dict[str, Any]]:
        """Faces found the way face_detection finds them, in the same order."""
        boxes = self.face_cascade.detectMultiScale(
            gray,
            scaleFactor=SCALE_FACTOR,
            minNeighbors=MIN_NEIGHBORS,
            minSize=(MIN_SIZE, MIN_SIZE),
        )
        ordered = sorted(map(tuple, boxes), key=lambda b: (b[1], b[0]))
        return [{"face_id": i, "bbox": [int(v) for v in box]} for i, box in enumerate(ordered)]

    def describe(self, crop: np.ndarray) -> dict[str, Any]:
        """The attributes of one grayscale face crop."""
        h, w = crop.shape
        height = max(1, round(h * ANALYSIS_WIDTH / w))
        face = cv2.resize(crop, (ANALYSIS_WIDTH, height), interpolation=cv2.INTER_CUBIC)
        side = ANALYSIS_WIDTH
        eyes = self.eye_cascade.detectMultiScale(
            face[: int(height * 0.6)],  # eyes sit in the upper part of a frontal face
            scaleFactor=1.1,
            minNeighbors=5,
            minSize=(side // 8, side // 8),
        )
        smiles = self.smile_cascade.detectMultiScale(
            face[height // 2 :],  # and the mouth in the lower half
            scaleFactor=1.7,
            minNeighbors=20,
            minSize=(side // 4, max(1, height // 10)),
        )
        return {
            "eyes": len(eyes),
            "smile": len(smiles) > 0,
            "brightness": round(float(crop.mean()), 3),
            "sharpness": round(float(cv2.Laplacian(crop, cv2.CV_64F).var()), 3),
        }


def checked_faces(faces: list[dict], shape: tuple[int, ...]) -> list[dict[str, Any]]:
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


def _cascade(name: str) -> cv2.CascadeClassifier:
    path = cv2.data.haarcascades + name
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"could not load the Haar cascade {path}")
    return cascade
