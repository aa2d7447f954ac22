"""A site's federated contribution: the privacy mechanism that owns clipping, noise and windows.

Labelled records fill **windows** of exactly ``update.every_records`` slots, cut by position (a
time-triggered release closes the current window early). Each record's log-loss gradient is clipped
to L2 norm ``C``; noise of std ``sigma C`` is added to each *sum*, so one record moves a noised sum by
at most ``C`` (zero-out adjacency, see :mod:`streamfed.privacy.accountant`). The release is the step
the site proposes for the global model, ``delta``, with the window's slot count:

* ``window_sum``: every record's gradient at the site's current global point (the version it has
  when the record arrives) is clipped and added to the window's sum; the release is
  ``delta = -lr (sum + N(0, (sigma C)^2 I)) / n``. Each record is in exactly one release.
* ``dp_sgd``: the release runs ``steps`` DP-SGD steps from the global point over the pool of the last
  ``k`` windows: each step takes a Poisson sample (rate ``q``) of the pooled records, sums their
  clipped gradients at the current local point, adds noise, divides by the *expected* sample size
  ``q |pool|`` and steps with ``lr``; ``delta`` is where the steps ended minus the global point. A
  record stays pooled for ``k`` releases.

Nothing else about the records leaves: the slot count ``n`` is public under zero-out adjacency (a
null record still takes its slot), and noise comes from the injected generator.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from streamfed.learners.federated import FederatedModel
from streamfed.privacy.accountant import Mechanism
from streamfed.privacy.mechanisms import add_gaussian_noise


@dataclass(frozen=True)
class Contribution:
    """One release, before signing."""

    delta: np.ndarray  # float32: the proposed step for the global model
    num_examples: int  # slots of the released window(s)
    noise_std: float  # std of the noise added to each sum (sigma C, divided for secure aggregation)
    grad_norm: float  # mean L2 norm of the records' gradients before clipping (a health metric)
    clipped: float  # fraction of records whose gradient was clipped


@dataclass
class _Window:
    n: int = 0
    total: np.ndarray | None = None  # window_sum: the clipped sum
    X: list[np.ndarray] | None = None  # dp_sgd: the rows
    y: list[np.ndarray] | None = None
    norm_sum: float = 0.0
    clipped: int = 0


class FederatedContribution:
    """Windows of clipped per-record gradients, released as noised, normalised steps."""

    def __init__(
        self,
        model: FederatedModel,
        mechanism: Mechanism,
        window: int,
        learning_rate: float,
        rng: np.random.Generator,
        noise_divisor: float = 1.0,
    ) -> None:
        if noise_divisor != 1.0 and mechanism.kind != "window_sum":
            raise ValueError("distributed noise (secure aggregation) needs the window_sum mechanism")
        self.model = model
        self.mechanism = mechanism
        self.window = window
        self.learning_rate = learning_rate
        self.rng = rng
        self.noise_std = mechanism.noise_std / noise_divisor
        self.point = model.initial_params()
        self.current = _Window()
        self.full: deque[_Window] = deque()
        self.pool: deque[_Window] = deque(maxlen=mechanism.releases_per_record)

    # -- filling windows ------------------------------------------------------------------------
    @property
    def pending_examples(self) -> int:
        """Slots in windows not yet released (full ones and the current one)."""
        return self.current.n + sum(w.n for w in self.full)

    @property
    def has_full_window(self) -> bool:
        return bool(self.full)

    def rebase(self, params: np.ndarray) -> None:
        """The new global point: later records' gradients (and dp_sgd's steps) start from it."""
        self.point = params.astype(np.float32)

    def add(self, X: np.ndarray, y: np.ndarray) -> None:
        """Labelled rows, in arrival order; a full window is set aside for release."""
        start = 0
        while start < len(y):
            take = min(len(y) - start, self.window - self.current.n)
            self._fill(self.current, X[start : start + take], y[start : start + take])
            start += take
            if self.current.n >= self.window:
                self.full.append(self.current)
                self.current = _Window()

    def _fill(self, win: _Window, X: np.ndarray, y: np.ndarray) -> None:
        win.n += len(y)
        if self.mechanism.kind == "window_sum":
            total, norms = self.model.clipped_grad_sum(self.point, X, y, self.mechanism.clip_norm)
            win.total = total if win.total is None else win.total + total
            self._note(win, norms)
        else:
            if win.X is None or win.y is None:
                win.X, win.y = [], []
            win.X.append(np.array(X, dtype=np.float32))
            win.y.append(np.array(y, dtype=np.float32))

    def _note(self, win: _Window, norms: np.ndarray) -> None:
        win.norm_sum += float(norms.sum())
        win.clipped += int((norms > self.mechanism.clip_norm).sum())

    # -- releasing ------------------------------------------------------------------------------
    def release(self, close_current: bool = False, merge: bool = False) -> Contribution | None:
        """The next release: the oldest full window, or the current partial one when ``close_current``
        and none is full; None if there is nothing. ``merge`` (``window_sum`` only: secure aggregation,
        where a site sends one update per version) releases every full window as one sum."""
        if not self.full and close_current and self.current.n:
            self.full.append(self.current)
            self.current = _Window()
        if not self.full:
            return None
        if self.mechanism.kind == "window_sum":
            if merge:
                wins = list(self.full)
                self.full.clear()
            else:
                wins = [self.full.popleft()]
            return self._window_sum(wins)
        return self._dp_sgd(self.full.popleft())

    def _window_sum(self, wins: list[_Window]) -> Contribution:
        n = sum(w.n for w in wins)
        total = np.sum([w.total for w in wins if w.total is not None], axis=0)
        noised = add_gaussian_noise(np.asarray(total, dtype=np.float64), self.noise_std, self.rng).astype(np.float64)
        delta = (-self.learning_rate / n) * noised
        return Contribution(
            delta.astype(np.float32),
            n,
            self.noise_std,
            sum(w.norm_sum for w in wins) / n,
            sum(w.clipped for w in wins) / n,
        )

    def _dp_sgd(self, win: _Window) -> Contribution:
        self.pool.append(win)
        X = np.concatenate([x for w in self.pool for x in (w.X or [])])
        y = np.concatenate([v for w in self.pool for v in (w.y or [])])
        slots = sum(w.n for w in self.pool)
        m = self.mechanism
        expected = m.sampling_rate * slots
        theta = self.point.astype(np.float64)
        norm_sum, clipped, seen = 0.0, 0, 0
        for _ in range(m.steps):
            pick = self.rng.random(len(y)) < m.sampling_rate if m.sampling_rate < 1.0 else slice(None)
            total, norms = self.model.clipped_grad_sum(theta.astype(np.float32), X[pick], y[pick], m.clip_norm)
            noised = add_gaussian_noise(np.asarray(total, dtype=np.float64), self.noise_std, self.rng)
            theta = theta - (self.learning_rate / expected) * noised.astype(np.float64)
            norm_sum += float(norms.sum())
            clipped += int((norms > m.clip_norm).sum())
            seen += len(norms)
        delta = theta - self.point.astype(np.float64)
        return Contribution(
            delta.astype(np.float32), win.n, self.noise_std, norm_sum / max(1, seen), clipped / max(1, seen)
        )
