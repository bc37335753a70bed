"""Merge step of the face pipeline: one record per face with everything known."""

from __future__ import annotations

from orchestrator import SimpleTask


class Task(SimpleTask):
    """Attaches attributes and features to each detected face, by face_id."""

    def process(self, input_data: dict) -> dict:
        attributes = input_data.get("attributes") or {}
        features = input_data.get("features") or {}
        faces = []
        for face in input_data["faces"]:
            key = str(face["face_id"])
            merged = dict(face)
            if key in attributes:
                merged["attributes"] = attributes[key]
            if key in features:
                merged["features"] = features[key]
            faces.append(merged)
        summary = {
            "face_count": len(faces),
            "with_attributes": sum("attributes" in f for f in faces),
            "with_features": sum("features" in f for f in faces),
        }
        return {"faces": faces, "summary": summary}
