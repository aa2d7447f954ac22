"""Parameter vectors on the wire: float32, little-endian, flat."""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt

from streamfed.errors import SerializationError

F32 = np.dtype("<f4")


def params_to_bytes(vec: npt.ArrayLike) -> bytes:
    return np.ascontiguousarray(vec, dtype=F32).tobytes()


def params_from_bytes(blob: bytes, expected: int | None = None) -> npt.NDArray[np.float32]:
    if len(blob) % 4:
        raise SerializationError(f"parameter blob of {len(blob)} bytes is not a whole number of float32")
    vec = np.frombuffer(blob, dtype=F32)
    if expected is not None and vec.size != expected:
        raise SerializationError(f"expected {expected} parameters, got {vec.size}")
    return vec.astype(np.float32)


def sha256_hex(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()
