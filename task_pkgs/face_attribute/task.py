"""Per-face attributes (eyes, smile, brightness, sharpness) with OpenCV's Haar cascades."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from orchestrator import SimpleTask
from orchestrator.images import image_from_input
from orchestrator.vision import check_faces, detect_faces, load_cascade

# Detection when the input carries no faces: face_detection's defaults.

# Eyes and smiles are searched on the face crop scaled to this width, so that one set of
# cascade parameters fits a 40-pixel face and a 400-pixel one alike.
ANALYSIS_WIDTH = 120


class Task(SimpleTask):
    """Describes each face; the three cascades load once per replica in ``setup``."""

    def setup(self) -> None:
        self.face_cascade = load_cascade("haarcascade_frontalface_default.xml")
        self.eye_cascade = load_cascade("haarcascade_eye.xml")
        self.smile_cascade = load_cascade("haarcascade_smile.xml")

    def process(self, input_data: dict) -> dict:
        image = image_from_input(input_data, self.objects)
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        if input_data.get("faces") is None:
            faces = detect_faces(self.face_cascade, gray)
        else:
            faces = check_faces(input_data["faces"], gray.shape)
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
