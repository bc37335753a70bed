"""Writes model.npz, face_extractor's model, byte for byte the same on every run.

The model is a fixed random projection: a face crop, scaled to 32x32 grayscale,
histogram-equalised and lightly blurred (1024 values in 0..1), minus ``mean``,
times ``projection`` (1024x128, Gaussian, seed 1234, scaled by 1/sqrt(128) so
that distances are roughly kept). Nothing is learned; by Johnson-Lindenstrauss
the cosine between two features approximates the cosine between the two
centred crops, which is enough to group the same face and tell it from others.

    python build_model.py            # rewrites model.npz next to this file
    python build_model.py OUT.npz    # writes elsewhere (the tests compare)
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import numpy as np

SEED = 1234
SIZE = 32  # crops are SIZE x SIZE pixels
DIMENSION = 128
BLUR_SIGMA = 1.5  # tolerates the pixel or two a detector's box moves between shots
OUTPUT = Path(__file__).parent / "model.npz"


def build() -> dict[str, np.ndarray]:
    """The model's arrays. RandomState's stream is frozen across numpy versions."""
    rng = np.random.RandomState(SEED)
    projection = rng.standard_normal((SIZE * SIZE, DIMENSION)) / np.sqrt(DIMENSION)
    return {
        "projection": projection.astype(np.float32),
        # An equalised crop spreads its pixels evenly over 0..1, so 0.5 is the mean
        # of every pixel of every crop: subtracting it centres the input.
        "mean": np.full(SIZE * SIZE, 0.5, dtype=np.float32),
        "size": np.array(SIZE, dtype=np.int32),
        "blur_sigma": np.array(BLUR_SIGMA, dtype=np.float32),
    }


def write(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Like ``np.savez``, but with fixed timestamps, so the bytes never change."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, arrays[name], allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue())


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT
    write(build(), target)
    print(f"wrote {target} ({target.stat().st_size} bytes)")
