"""Loading images for vision tasks from whatever the input holds.

A source may be a file path (``str`` or ``Path``), a ``file://`` URI, raw
encoded bytes, base64 text (``data:`` URI or plain), or a numpy array.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from orchestrator.errors import NotFoundError, ValidationError
from orchestrator.objects import ObjectStore


def load_image(source: Any, objects: ObjectStore | None = None) -> np.ndarray:
    """A BGR uint8 image (OpenCV's layout) from a path, URI, bytes or array.

    ``s3://bucket/key`` URIs are read from ``objects`` (the task's object store).
    """
    if isinstance(source, np.ndarray):
        return source
    if isinstance(source, bytes | bytearray | memoryview):
        return _decode(bytes(source), "image bytes")
    if isinstance(source, Path):
        return _read(source)
    if isinstance(source, str):
        if source.startswith("file://"):
            return _read(Path(unquote(urlparse(source).path)))
        if source.startswith("s3://"):
            return _decode(_from_store(source, objects), source)
        if source.startswith("data:"):
            return _decode(_b64(source.split(",", 1)[-1]), "data URI")
        return _read(Path(source))
    raise ValidationError(f"cannot load an image from a {type(source).__name__}")


def image_from_input(input_data: dict[str, Any], objects: ObjectStore | None = None) -> np.ndarray:
    """The image named by ``image_path`` or carried in ``image_data`` (base64)."""
    if input_data.get("image_path"):
        return load_image(input_data["image_path"], objects)
    if input_data.get("image_data"):
        return _decode(_b64(str(input_data["image_data"])), "image_data")
    raise ValidationError("input needs 'image_path' or 'image_data'")


def _from_store(uri: str, objects: ObjectStore | None) -> bytes:
    if objects is None:
        raise ValidationError(f"{uri}: no object store to read it from")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    try:
        return objects.get(bucket, key)
    except NotFoundError as e:
        raise ValidationError(f"image {uri!r} does not exist") from e


def _read(path: Path) -> np.ndarray:
    if not path.is_file():
        raise ValidationError(f"image {str(path)!r} does not exist")
    return _decode(path.read_bytes(), str(path))


def _decode(data: bytes, what: str) -> np.ndarray:
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValidationError(f"{what} is not a readable image")
    return image


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValidationError("image data is not valid base64") from e
