"""The personal deep model's replay buffer: numpy only, so a site fills it before torch is loaded."""

from __future__ import annotations

import numpy as np

from streamfed.learners.base import Matrix, Vector


class ReplayBuffer:
    """A ring of the most recent labelled rows, each tagged with the update window it arrived in.

    Rows are evicted by capacity and, for the privacy guarantee, once ``k`` updates have been
    published since they arrived: a row then influences at most ``k`` releases.

    >>> buf = ReplayBuffer(dim=2, capacity=4)
    >>> buf.add(np.ones((3, 2), dtype=np.float32), np.ones(3, dtype=np.float32), window=0)
    >>> buf.evict_windows_before(1); len(buf)
    0
    """

    def __init__(self, dim: int, capacity: int) -> None:
        self.capacity = capacity
        self.X = np.zeros((capacity, dim), dtype=np.float32)
        self.y = np.zeros(capacity, dtype=np.float32)
        self.window = np.full(capacity, -1, dtype=np.int64)
        self._next = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, X: Matrix, y: Vector, window: int) -> None:
        n = len(X)
        if n >= self.capacity:
            X, y, n = X[-self.capacity :], y[-self.capacity :], self.capacity
        idx = (self._next + np.arange(n)) % self.capacity
        self.X[idx] = X
        self.y[idx] = y
        self.window[idx] = window
        self._next = int((self._next + n) % self.capacity)
        self._size = min(self.capacity, self._size + n)

    def evict_windows_before(self, window: int) -> None:
        """Forget every row that arrived in an update window older than ``window``."""
        stale = (self.window >= 0) & (self.window < window)
        if stale.any():
            self.window[stale] = -1
            self.X[stale] = 0.0
        self._size = int((self.window >= 0).sum())

    def sample(self, n: int, rng: np.random.Generator) -> tuple[Matrix, Vector]:
        live = np.flatnonzero(self.window >= 0)
        idx = rng.choice(live, size=min(n, live.size), replace=live.size < n) if live.size else live
        return self.X[idx], self.y[idx]
