"""Face feature vectors from a fixed random projection shipped in the package (model.npz)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from orchestrator import MLTask
from orchestrator.errors import FatalError, ValidationError
from orchestrator.images import image_from_input

MODEL = Path(__file__).parent / "model.npz"

# Detection when the input carries no faces: face_detection's defaults.
SCALE_FACTOR = 1.1
MIN_NEIGHBORS = 5
MIN_SIZE = 30


class Task(MLTask):
    """Crop and normalise each face, project it, L2-normalise the result.

    The model (and the face cascade used when the input has no faces) loads once
    per replica, in ``setup``.
    """

    def setup(self) -> None:
        super().setup()  # self.model = self.load_model()
        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        self.face_cascade = cv2.CascadeClassifier(path)
        if self.face_cascade.empty():
            raise RuntimeError(f"could not load the Haar cascade {path}")

    def load_model(self) -> dict[str, Any]:
        try:
            with np.load(MODEL, allow_pickle=False) as data:
                projection, mean = data["projection"], data["mean"]
                size, blur_sigma = int(data["size"]), float(data["blur_sigma"])
        except (OSError, ValueError, KeyError) as e:
            raise FatalError(f"cannot read the model {MODEL}: {e}") from e
        if projection.ndim != 2 or projection.shape[0] != size * size or mean.shape != (size**2,):
            raise FatalError(
                f"model {MODEL} is inconsistent: projection {projection.shape}, "
                f"mean {mean.shape}, size {size}"
            )
        return {
            "projection": projection.astype(np.float32),
            "mean": mean.astype(np.float32),
            "size": size,
            "blur_sigma": blur_sigma,
        }

    def preprocess_input(self, input_data: dict[str, Any]) -> dict[str, Any]:
        """The faces and their crops: one row of ``size * size`` values in 0..1 per face."""
        image = image_from_input(input_data, self.objects)
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        if input_data.get("faces") is None:
            faces = self.detect(gray)
        else:
            faces = checked_faces(input_data["faces"], gray.shape)
        size = self.model["size"]
        crops = np.zeros((len(faces), size * size), dtype=np.float32)
        for row, face in enumerate(faces):
            x, y, w, h = face["bbox"]
            crops[row] = self.normalise(gray[y : y + h, x : x + w])
        return {"faces": faces, "crops": crops}

    def predict(self, model_input: dict[str, Any]) -> dict[str, Any]:
        projected = (model_input["crops"] - self.model["mean"]) @ self.model["projection"]
        return {"faces": model_input["faces"], "projected": projected}

    def postprocess_output(self, model_output: dict[str, Any]) -> dict[str, Any]:
        projected = model_output["projected"]
        norms = np.linalg.norm(projected, axis=1, keepdims=True)
        unit = projected / np.maximum(norms, np.finfo(np.float32).tiny)
        faces = model_output["faces"]
        features = {
            str(face["face_id"]): [float(v) for v in vector]
            for face, vector in zip(faces, unit, strict=True)
        }
        return {
            "features": features,
            "dimension": int(self.model["projection"].shape[1]),
            "face_count": len(faces),
            "faces": faces,
        }

    def normalise(self, crop: np.ndarray) -> np.ndarray:
        """A grayscale crop as the model expects it: square, equalised, blurred, 0..1."""
        size = self.model["size"]
        small = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
        small = cv2.equalizeHist(small)
        small = cv2.GaussianBlur(small, (0, 0), self.model["blur_sigma"])
        return small.reshape(-1).astype(np.float32) / 255.0

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
