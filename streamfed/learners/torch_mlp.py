"""A torch MLP trained in periodic mini-batch steps from a bounded replay buffer (``cuda`` if present)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from streamfed.learners.base import Matrix, Segment, Vector
from streamfed.learners.replay import ReplayBuffer

__all__ = ["ReplayBuffer", "TorchMLPLearner", "build_mlp", "pick_device"]

log = logging.getLogger(__name__)

# Below this many rows x parameters a CPU step is too small for torch's intra-op thread pool: the pool
# saves nothing, and on a busy machine its synchronisation made a site's steps 10-20x slower (and the
# site 2-4x slower; benchmarks/README.md). Such steps run on the calling thread alone.
SMALL_CPU_STEP = 1 << 23


@contextlib.contextmanager
def _single_thread(active: bool) -> Iterator[None]:
    """One torch intra-op thread inside the block (a process-wide setting, restored on exit)."""
    before = torch.get_num_threads()
    if not active or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def pick_device(choice: str = "auto") -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            from streamfed.errors import ConfigError

            raise ConfigError("model.deep.device is 'cuda' but no CUDA device is available; valid here: auto, cpu")
        return torch.device("cuda")
    return torch.device("cpu")


def build_mlp(dim: int, hidden: list[int], seed: int) -> nn.Sequential:
    """``dim -> hidden... -> 1`` with ReLUs, initialised by :func:`~streamfed.learners.federated.init_mlp`."""
    from streamfed.learners.federated import init_mlp

    layers: list[nn.Module] = []
    prev = dim
    for h in hidden:
        layers += [nn.Linear(prev, h), nn.ReLU()]
        prev = h
    layers.append(nn.Linear(prev, 1))
    net = nn.Sequential(*layers)
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(torch.from_numpy(init_mlp(dim, hidden, seed)), net.parameters())
    return net


class TorchMLPLearner:
    """An MLP for binary classification; parameters flattened in ``named_parameters`` order."""

    def __init__(
        self,
        dim: int,
        hidden: list[int],
        learning_rate: float = 1e-3,
        device: str = "auto",
        seed: int = 0,
    ) -> None:
        self.device = pick_device(device)
        self.net = build_mlp(dim, hidden, seed).to(self.device)
        self.n_params = sum(p.numel() for p in self.net.parameters())
        self.learning_rate = learning_rate
        self.loss = nn.BCEWithLogitsLoss()
        self.reset_optimizer()
        self.last_step_seconds = 0.0

    def reset_optimizer(self) -> None:
        """Fresh optimizer state (its moments would otherwise carry evicted records forward)."""
        self.opt = torch.optim.Adam(self.net.parameters(), lr=self.learning_rate)

    def layout(self) -> list[Segment]:
        return [Segment(f"deep.{n}", tuple(p.shape)) for n, p in self.net.named_parameters()]

    def get_params(self) -> Vector:
        with torch.no_grad():
            vec = torch.nn.utils.parameters_to_vector(self.net.parameters())
        return vec.detach().to("cpu", torch.float32).numpy().copy()

    def set_params(self, params: Vector) -> None:
        flat = np.asarray(params, dtype=np.float32).reshape(-1)
        if flat.size != self.n_params:
            raise ValueError(f"expected {self.n_params} parameters, got {flat.size}")
        # Copy: torch.from_numpy shares memory, and vector_to_parameters makes the parameters views of
        # the tensor, so without a copy every optimizer step would write into the caller's array.
        t = torch.from_numpy(flat.copy()).to(self.device)
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(t, self.net.parameters())

    def _small(self, rows: int) -> bool:
        return self.device.type == "cpu" and rows * self.n_params < SMALL_CPU_STEP

    def predict_proba_many(self, X: Matrix) -> Vector:
        if len(X) == 0:
            return np.zeros(0, dtype=np.float32)
        with torch.no_grad(), _single_thread(self._small(len(X))):
            x = torch.from_numpy(np.ascontiguousarray(X)).to(self.device, non_blocking=True)
            return torch.sigmoid(self.net(x)).squeeze(-1).float().cpu().numpy()

    def learn_many(self, X: Matrix, y: Vector) -> None:
        """One optimizer step on the batch."""
        if len(X) == 0:
            return
        pin = self.device.type == "cuda"
        xt = torch.from_numpy(np.ascontiguousarray(X))
        yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
        if pin:
            xt, yt = xt.pin_memory(), yt.pin_memory()
        xt = xt.to(self.device, non_blocking=True)
        yt = yt.to(self.device, non_blocking=True)
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(self.net(xt).squeeze(-1), yt)
        loss.backward()
        self.opt.step()

    def train_steps(self, buffer: ReplayBuffer, steps: int, batch_size: int, rng: np.random.Generator) -> int:
        """``steps`` mini-batch steps sampled from ``buffer``; returns rows seen."""
        if len(buffer) == 0:
            return 0
        t0 = time.perf_counter()
        seen = 0
        with _single_thread(self._small(batch_size)):
            for _ in range(steps):
                X, y = buffer.sample(batch_size, rng)
                self.learn_many(X, y)
                seen += len(X)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.last_step_seconds = (time.perf_counter() - t0) / steps
        return seen
