"""Export a model version to .npz and load it back into a model that predicts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from streamfed.serde.tensors import params_from_bytes


def export_npz(version: dict[str, Any], path: Path) -> None:
    """One array per layout segment (``linear.weights``, ``deep.0.weight``, ...) and ``__meta__`` JSON."""
    flat = params_from_bytes(version["params"])
    arrays: dict[str, np.ndarray] = {}
    pos = 0
    for seg in version["layout"]:
        size = int(np.prod(seg["shape"])) if seg["shape"] else 1
        arrays[seg["name"]] = flat[pos : pos + size].reshape(seg["shape"])
        pos += size
    meta = {k: v for k, v in version.items() if k != "params"}
    arrays["__params__"] = flat
    arrays["__meta__"] = np.array(json.dumps(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]


def load_exported(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """(flat float32 parameters, metadata) from an exported file.

    The federated model's ``logits(params, X)`` takes the parameters.
    """
    with np.load(path) as z:
        return z["__params__"].astype(np.float32), json.loads(str(z["__meta__"]))
