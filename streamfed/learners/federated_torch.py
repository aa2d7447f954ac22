"""The wide-and-deep federated model in torch, for a GPU: per-example gradients by ``torch.func``
(``vmap`` over ``grad``), batched on the device. Same parameters, layout, initialisation and
results as the numpy :class:`~streamfed.learners.federated.WideAndDeep` (a contract test holds them
to each other); ``build_federated_model`` picks it when the site's device is ``cuda``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from streamfed.learners.base import Matrix, Vector
from streamfed.learners.federated import WideAndDeep

# Per-example gradient matrices are built in chunks of at most this many rows x parameters.
CHUNK_ELEMENTS = 1 << 24


class TorchWideAndDeep(WideAndDeep):
    """``z = w.x + b + mlp(x)``; per-example gradients by ``torch.func`` on ``device``. Layout, size and
    version 0 are :class:`~streamfed.learners.federated.WideAndDeep`'s; its net is built from them."""

    def __init__(self, dim: int, hidden: list[int], seed: int = 0, device: str = "auto") -> None:
        import torch
        from torch import nn

        from streamfed.learners.torch_mlp import build_mlp, pick_device

        super().__init__(dim, hidden, seed)
        self._torch = torch
        self.torch_device = pick_device(device)
        self.device = self.torch_device.type
        self.net: nn.Module = build_mlp(dim, hidden, seed).to(self.torch_device)
        self._fn: Any = None

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
