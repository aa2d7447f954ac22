"""The federated model: what sites train together, under privacy, and what every version holds.

One flat float32 parameter vector with a named layout, and the two things a private contribution
needs: its logits, and the sum of per-record gradients clipped to an L2 bound (with the norms
before clipping). ``LinearLogistic`` is logistic regression and ``WideAndDeep``
adds an MLP to the linear logit (``z = w.x + b + mlp(x)``), both in numpy (no torch import: the
aggregator and serving apps never load torch). On a GPU, :class:`~streamfed.learners.federated_torch.TorchWideAndDeep`
is the same model in torch, with per-example gradients from ``torch.func``.

>>> m = LinearLogistic(2)
>>> X = np.array([[1.0, 0.0], [0.0, 3.0]], dtype=np.float32); y = np.array([1.0, 0.0], dtype=np.float32)
>>> total, norms = m.clipped_grad_sum(m.initial_params(), X, y, clip_norm=1.0)
>>> [round(float(v), 3) for v in total], [round(float(n), 3) for n in norms]
([-0.354, 0.474, 0.146], [0.707, 1.581])
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from streamfed.learners.base import Matrix, Segment, Vector
from streamfed.topology.spec import ModelSpec


class FederatedModel(Protocol):
    """A model with flat parameters whose per-record clipped gradients can be summed."""

    device: str

    def layout(self) -> list[Segment]: ...

    @property
    def num_params(self) -> int: ...

    def initial_params(self) -> Vector:
        """Version 0: a deterministic initialisation every site and the aggregator share."""
        ...

    def logits(self, params: Vector, X: Matrix) -> np.ndarray: ...

    def clipped_grad_sum(self, params: Vector, X: Matrix, y: Vector, clip_norm: float) -> tuple[np.ndarray, np.ndarray]:
        """(sum over rows of each row's log-loss gradient clipped to ``clip_norm``, norms before clipping)."""
        ...


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500.0, 500.0)))


class LinearLogistic:
    """Logistic regression, parameters ``[weights in feature order, intercept]``; numpy only."""

    device = "cpu"

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def layout(self) -> list[Segment]:
        return [Segment("linear.weights", (self.dim,)), Segment("linear.intercept", (1,))]

    @property
    def num_params(self) -> int:
        return self.dim + 1

    def initial_params(self) -> Vector:
        return np.zeros(self.dim + 1, dtype=np.float32)

    def logits(self, params: Vector, X: Matrix) -> np.ndarray:
        p = np.asarray(params, dtype=np.float64)
        return X.astype(np.float64) @ p[:-1] + p[-1]

    def clipped_grad_sum(self, params: Vector, X: Matrix, y: Vector, clip_norm: float) -> tuple[np.ndarray, np.ndarray]:
        Xd = X.astype(np.float64)
        r = sigmoid(self.logits(params, X)) - y.astype(np.float64)  # d loss / d logit per row
        # ||g_i|| = |r_i| sqrt(||x_i||^2 + 1): the gradient of row i is r_i [x_i, 1]
        norms = np.abs(r) * np.sqrt(np.einsum("ij,ij->i", Xd, Xd) + 1.0)
        coef = r * np.minimum(1.0, clip_norm / np.maximum(norms, 1e-300))
        total = np.empty(self.dim + 1, dtype=np.float64)
        total[:-1] = coef @ Xd
        total[-1] = coef.sum()
        return total, norms


def mlp_layers(dim: int, hidden: list[int]) -> list[tuple[str, tuple[int, ...]]]:
    """The MLP's parameters in order, named as torch's ``nn.Sequential`` of Linear and ReLU names them."""
    out: list[tuple[str, tuple[int, ...]]] = []
    prev = dim
    for k, h in enumerate([*hidden, 1]):
        out += [(f"{2 * k}.weight", (h, prev)), (f"{2 * k}.bias", (h,))]
        prev = h
    return out


def init_mlp(dim: int, hidden: list[int], seed: int) -> np.ndarray:
    """The MLP's initial parameters, flat (float32): weights uniform in +-1/sqrt(fan-in), biases in
    +-0.01, in layout order. Version 0 of every site and of the aggregator, and the start of each
    site's personal deep model.

    The uniforms are torch's ``torch.rand(shape, generator=torch.Generator().manual_seed(seed))``,
    drawn without torch: both are Mersenne Twister (MT19937) seeded the same way as numpy's
    ``RandomState(seed)``, and torch makes a float32 uniform from the low 24 bits of one 32-bit draw.
    A contract test holds the two to each other.
    """
    rs = np.random.RandomState(seed)
    two, one = np.float32(2.0), np.float32(1.0)
    parts = []
    for _, shape in mlp_layers(dim, hidden):
        bound = np.float32(1.0 / math.sqrt(shape[-1]) if len(shape) > 1 else 0.01)
        raw = rs.randint(0, 1 << 32, size=math.prod(shape), dtype=np.uint64)
        u = ((raw & ((1 << 24) - 1)).astype(np.float64) * 2.0**-24).astype(np.float32)
        parts.append((u * two - one) * bound)
    return np.concatenate(parts).astype(np.float32)


class WideAndDeep:
    """``z = w.x + b + mlp(x)`` in numpy (no torch import); per-example gradient norms without
    materialising per-example gradients.

    The MLP is ``dim -> hidden... -> 1`` with ReLUs, parameters in the layout of
    :func:`mlp_layers`. A linear layer's per-example gradient is the outer product of the error
    reaching its output, ``d_i``, and its input ``a_i`` (and ``d_i`` for its bias), so its squared
    norm is ``|d_i|^2 (|a_i|^2 + 1)`` and the clipped sum is ``(c * d)^T a``: one backward pass over the
    batch gives every row's norm and the clipped sum exactly (Goodfellow, "Efficient per-example
    gradient computations", 2015). On ``cuda`` use :class:`TorchWideAndDeep`.
    """

    device = "cpu"

    def __init__(self, dim: int, hidden: list[int], seed: int = 0) -> None:
        self.dim = dim
        self.hidden = list(hidden)
        self._deep = [(name, shape) for name, shape in mlp_layers(dim, hidden)]
        self._n_deep = sum(math.prod(s) for _, s in self._deep)
        self._init = init_mlp(dim, hidden, seed)

    def layout(self) -> list[Segment]:
        return [Segment("linear.weights", (self.dim,)), Segment("linear.intercept", (1,))] + [
            Segment(f"deep.{n}", s) for n, s in self._deep
        ]

    @property
    def num_params(self) -> int:
        return self.dim + 1 + self._n_deep

    def initial_params(self) -> Vector:
        return np.concatenate([np.zeros(self.dim + 1, dtype=np.float32), self._init]).astype(np.float32)

    def _layers(self, params: Vector) -> tuple[np.ndarray, float, list[tuple[np.ndarray, np.ndarray]]]:
        """(linear weights, intercept, [(W, b) per MLP layer]) as float64 views of ``params``."""
        p = np.asarray(params, dtype=np.float64)
        w, b = p[: self.dim], float(p[self.dim])
        layers, i = [], self.dim + 1
        for k in range(0, len(self._deep), 2):
            (_, ws), (_, bs) = self._deep[k], self._deep[k + 1]
            W = p[i : i + math.prod(ws)].reshape(ws)
            i += W.size
            layers.append((W, p[i : i + bs[0]]))
            i += bs[0]
        return w, b, layers

    def _forward(self, params: Vector, X: Matrix) -> tuple[np.ndarray, list[np.ndarray], Any]:
        """(logits, each layer's input, the layers); hidden inputs are after the ReLU."""
        w, b, layers = self._layers(params)
        x = np.asarray(X, dtype=np.float64)
        inputs, a = [], x
        for k, (W, bias) in enumerate(layers):
            inputs.append(a)
            a = a @ W.T + bias
            if k < len(layers) - 1:
                a = np.maximum(a, 0.0)
        return x @ w + b + a[:, 0], inputs, layers

    def logits(self, params: Vector, X: Matrix) -> np.ndarray:
        if len(X) == 0:
            return np.zeros(0)
        return self._forward(params, X)[0]

    def clipped_grad_sum(self, params: Vector, X: Matrix, y: Vector, clip_norm: float) -> tuple[np.ndarray, np.ndarray]:
        n = len(X)
        if n == 0:
            return np.zeros(self.num_params), np.zeros(0)
        z, inputs, layers = self._forward(params, X)
        r = sigmoid(z) - np.asarray(y, dtype=np.float64)  # d loss / d logit per row
        x = inputs[0]
        sq = r * r * (np.einsum("ij,ij->i", x, x) + 1.0)  # the linear part
        errors: list[np.ndarray] = [np.empty(0)] * len(layers)
        d = r[:, None]  # the error at the last layer's output
        for k in range(len(layers) - 1, -1, -1):
            a = inputs[k]
            errors[k] = d
            sq += np.einsum("ij,ij->i", d, d) * (np.einsum("ij,ij->i", a, a) + 1.0)
            if k:
                d = (d @ layers[k][0]) * (a > 0.0)  # back through W_k, then the ReLU that made a
        norms = np.sqrt(sq)
        c = np.minimum(1.0, clip_norm / np.maximum(norms, 1e-300))
        rc = r * c
        parts = [rc @ x, [rc.sum()]]
        for a, d in zip(inputs, errors, strict=True):
            dc = d * c[:, None]
            parts += [(dc.T @ a).ravel(), dc.sum(axis=0)]
        return np.concatenate([np.asarray(p, dtype=np.float64).ravel() for p in parts]), norms


def build_federated_model(spec: ModelSpec, device: str | None = None) -> FederatedModel:
    """The topology's federated model: linear, or wide-and-deep when ``model.deep.enabled``."""
    dim = len(spec.features.names())
    if not spec.deep.enabled:
        return LinearLogistic(dim)
    return wide_and_deep(dim, list(spec.deep.hidden), spec.seed, device or spec.deep.device)


def cuda_possible() -> bool:
    """False where torch cannot find CUDA, known without importing it (2-3 s): Linux without the NVIDIA
    kernel driver, whose ``/proc/driver/nvidia/version`` CUDA needs. Elsewhere True: ask torch."""
    if sys.platform.startswith("linux"):
        return Path("/proc/driver/nvidia/version").exists()
    return True


def wide_and_deep(dim: int, hidden: list[int], seed: int = 0, device: str = "cpu") -> FederatedModel:
    """The numpy :class:`WideAndDeep`, or its torch twin when ``device`` is (or ``auto`` finds) ``cuda``.

    Only ``cuda``, and ``auto`` where CUDA could be present, import torch.
    """
    if device == "cpu" or (device == "auto" and not cuda_possible()):
        return WideAndDeep(dim, hidden, seed)
    from streamfed.learners.torch_mlp import pick_device

    if pick_device(device).type == "cuda":
        from streamfed.learners.federated_torch import TorchWideAndDeep

        return TorchWideAndDeep(dim, hidden, seed, "cuda")
    return WideAndDeep(dim, hidden, seed)
