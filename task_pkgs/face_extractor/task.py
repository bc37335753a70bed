"""Face feature vectors from a fixed random projection shipped in the package (model.npz)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from orchestrator import MLTask
from orchestrator.errors import FatalError
from orchestrator.images import image_from_input
from orchestrator.vision import check_faces, detect_faces, load_cascade

MODEL = Path(__file__).parent / "model.npz"

# Detection when the input carries no faces: face_detection's defaults.


class Task(MLTask):
    """Crop and normalise each face, project it, L2-normalise the result.

    The model (and the face cascade used when the input has no faces) loads once
    per replica, in ``setup``.
    """

    def setup(self) -> None:
        super().setup()  # self.model = self.load_model()
        self.face_cascade = load_cascade()

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
            faces = detect_faces(self.face_cascade, gray)
        else:
            faces = check_faces(input_data["faces"], gray.shape)
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
