"""The federated model: what sites train together, under privacy, and what every version holds.

One flat float32 parameter vector with a named layout, and the two things a private contribution
needs: its logits, and the sum of per-record gradients clipped to an L2 bound (with the norms
before clipping). ``LinearLogistic`` is logistic regression in numpy (no torch import);
``WideAndDeep`` adds a torch MLP to the linear logit (``z = w.x + b + mlp(x)``) and computes
per-example gradients with ``torch.func`` (``vmap`` over ``grad``), batched on the GPU when there
is one.

>>> m = LinearLogistic(2)
>>> X = np.array([[1.0, 0.0], [0.0, 3.0]], dtype=np.float32); y = np.array([1.0, 0.0], dtype=np.float32)
>>> total, norms = m.clipped_grad_sum(m.initial_params(), X, y, clip_norm=1.0)
>>> [round(float(v), 3) for v in total], [round(float(n), 3) for n in norms]
([-0.354, 0.474, 0.146], [0.707, 1.581])
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from streamfed.learners.base import Matrix, Segment, Vector
from streamfed.topology.spec import ModelSpec

# Per-example gradient matrices are built in chunks of at most this many rows x parameters.
CHUNK_ELEMENTS = 1 << 24


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


class WideAndDeep:
    """``z = w.x + b + mlp(x)``; per-example gradients by ``torch.func`` on ``device``."""

    def __init__(self, dim: int, hidden: list[int], seed: int = 0, device: str = "auto") -> None:
        import torch
        from torch import nn

        from streamfed.learners.torch_mlp import build_mlp, pick_device

        self._torch = torch
        self.dim = dim
        self.torch_device = pick_device(device)
        self.device = self.torch_device.type
        self.net: nn.Module = build_mlp(dim, hidden, seed).to(self.torch_device)
        self._deep = [(name, tuple(p.shape)) for name, p in self.net.named_parameters()]
        self._n_deep = sum(math.prod(s) for _, s in self._deep)
        self._fn: Any = None

    def layout(self) -> list[Segment]:
        return [Segment("linear.weights", (self.dim,)), Segment("linear.intercept", (1,))] + [
            Segment(f"deep.{n}", s) for n, s in self._deep
        ]

    @property
    def num_params(self) -> int:
        return self.dim + 1 + self._n_deep

    def initial_params(self) -> Vector:
        torch = self._torch
        with torch.no_grad():
            deep = torch.nn.utils.parameters_to_vector(self.net.parameters()).to("cpu", torch.float32).numpy()
        return np.concatenate([np.zeros(self.dim + 1, dtype=np.float32), deep]).astype(np.float32)

    def _split(self, flat: Any) -> tuple[Any, Any, dict[str, Any]]:
        w, b = flat[: self.dim], flat[self.dim]
        out, i = {}, self.dim + 1
        for name, shape in self._deep:
            n = math.prod(shape)
            out[name] = flat[i : i + n].view(shape)
            i += n
        return w, b, out

    def _logit(self, flat: Any, x: Any) -> Any:
        from torch.func import functional_call

        w, b, deep = self._split(flat)
        return x @ w + b + functional_call(self.net, deep, (x,)).squeeze(-1)

    def _tensor(self, a: np.ndarray) -> Any:
        t = self._torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        if self.torch_device.type == "cuda":
            t = t.pin_memory()
        return t.to(self.torch_device, non_blocking=True)

    def logits(self, params: Vector, X: Matrix) -> np.ndarray:
        torch = self._torch
        if len(X) == 0:
            return np.zeros(0)
        with torch.no_grad():
            z = self._logit(self._tensor(params), self._tensor(X))
        return z.double().cpu().numpy()

    def _grad_fn(self) -> Any:
        if self._fn is None:
            torch = self._torch
            from torch.func import grad, vmap

            def loss(flat: Any, x: Any, y: Any) -> Any:
                z = self._logit(flat, x.unsqueeze(0)).squeeze(0)
                return torch.nn.functional.binary_cross_entropy_with_logits(z, y)

            self._fn = vmap(grad(loss), in_dims=(None, 0, 0))
        return self._fn

    def clipped_grad_sum(self, params: Vector, X: Matrix, y: Vector, clip_norm: float) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        flat = self._tensor(params)
        total = torch.zeros(self.num_params, dtype=torch.float64, device=self.torch_device)
        norms = []
        rows = max(1, CHUNK_ELEMENTS // self.num_params)
        fn = self._grad_fn()
        with torch.no_grad():
            for a in range(0, len(X), rows):
                G = fn(flat, self._tensor(X[a : a + rows]), self._tensor(y[a : a + rows]))  # (n, d)
                n = torch.linalg.vector_norm(G, dim=1)
                factor = torch.clamp(clip_norm / torch.clamp(n, min=1e-30), max=1.0)
                total += (G * factor.unsqueeze(1)).sum(0, dtype=torch.float64)
                norms.append(n)
        if not norms:
            return np.zeros(self.num_params), np.zeros(0)
        return total.cpu().numpy(), torch.cat(norms).double().cpu().numpy()


def build_federated_model(spec: ModelSpec, device: str | None = None) -> FederatedModel:
    """The topology's federated model: linear, or wide-and-deep when ``model.deep.enabled``."""
    dim = len(spec.features.names())
    if not spec.deep.enabled:
        return LinearLogistic(dim)
    return WideAndDeep(dim, list(spec.deep.hidden), spec.seed, device or spec.deep.device)
