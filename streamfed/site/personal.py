"""A site's personal model: it learns from every labelled record, never leaves the site, is never reset.

Logistic regression learns each labelled event in order (predict, then learn; river's update, in
micro-batches of ``model.online.micro_batch`` rows); when the
topology has a deep model, the site's own torch MLP takes mini-batch Adam steps from a replay buffer
of recent rows, and an :class:`~streamfed.site.served.ExpertMixture` learns how to blend the two.
Nothing here is published, so nothing here is noised: the privacy mechanism lives in
:mod:`streamfed.site.contribution`, which sees the same records separately.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from streamfed.learners.online import MicroBatchLogistic, RiverLogisticLearner
from streamfed.learners.replay import ReplayBuffer
from streamfed.site.served import Blend, logit
from streamfed.topology.spec import ModelSpec

if TYPE_CHECKING:
    from streamfed.learners.torch_mlp import TorchMLPLearner

log = logging.getLogger(__name__)


class PersonalModel:
    """Online learner on every labelled event, plus (optionally) a deep learner in periodic steps.

    ``background`` builds the deep learner (importing torch, 2-3 s) on a thread, so that a site
    starts learning at once: until it is there, the personal prediction is the online learner's and
    the labelled rows go into the replay buffer, from which the first deep steps then learn. Only
    where the device is known without asking torch (``cpu``, ``auto``); ``cuda`` is checked at once.
    """

    def __init__(
        self,
        spec: ModelSpec,
        names: list[str],
        rng: np.random.Generator,
        clock: Callable[[], float],
        device: str,
        background: bool = False,
    ) -> None:
        self.spec = spec
        o = spec.online
        self.online: RiverLogisticLearner | MicroBatchLogistic = (
            RiverLogisticLearner(names, o.learning_rate, o.l2)
            if o.micro_batch == 1
            else MicroBatchLogistic(names, o.learning_rate, o.l2, o.micro_batch)
        )
        self.deep: TorchMLPLearner | None = None
        self.replay: ReplayBuffer | None = None
        self.mix: Blend | None = None
        self.rng = rng
        self.clock = clock
        self.steps_taken = 0
        self.last_step_seconds = 0.0
        self._loading: threading.Thread | None = None
        self._load_error: BaseException | None = None
        if spec.deep.enabled:
            d = spec.deep
            self.replay = ReplayBuffer(len(names), d.replay_size)
            self.mix = Blend(spec.blend)
            if background and device != "cuda":
                self._loading = threading.Thread(
                    target=self._load_deep, args=(len(names), device), name="deep-model-load", daemon=True
                )
                self._loading.start()
            else:
                self.deep = self._build_deep(len(names), device)
        self._since_step = 0
        self._last_step = clock()

    def _build_deep(self, dim: int, device: str) -> TorchMLPLearner:
        from streamfed.learners.torch_mlp import TorchMLPLearner

        d = self.spec.deep
        return TorchMLPLearner(dim, list(d.hidden), d.learning_rate, device, self.spec.seed)

    def _load_deep(self, dim: int, device: str) -> None:
        try:
            self.deep = self._build_deep(dim, device)
            log.info("personal deep model ready (%s)", self.deep.device.type)
        except BaseException as exc:  # raised on the learning thread by the next call
            self._load_error = exc

    def _deep_ready(self) -> bool:
        if self._load_error is not None:
            raise RuntimeError(f"the personal deep model could not be built: {self._load_error}") from self._load_error
        return self.deep is not None

    def wait_deep(self, timeout_s: float | None = None) -> bool:
        """Wait for a deep learner built in the background; whether one is there."""
        if self._loading is not None:
            self._loading.join(timeout_s)
        return self._deep_ready()

    @property
    def device(self) -> str:
        return self.deep.device.type if self.deep is not None else "cpu"

    def prequential(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The personal logit of each row, scored before the row is learnt; then learn the labelled ones."""
        z_online = logit(self.online.prequential_many(X, y))
        if self.mix is None or self.replay is None:
            return z_online
        z = z_online  # while the deep learner is being built (background): the online learner's
        if self._deep_ready():
            assert self.deep is not None
            # The deep model learns only in steps, between batches, so scoring the batch up front is exact.
            z_deep = logit(self.deep.predict_proba_many(X))
            z = logit(self.mix.step(z_online, z_deep, y))  # scores, then learns the labelled rows
        labelled = ~np.isnan(y)
        if labelled.any():
            self.replay.add(X[labelled], y[labelled], window=0)
            self._since_step += int(labelled.sum())
        return z

    def maybe_step(self) -> bool:
        """Deep mini-batch steps when ``step_every_records`` new rows arrived or ``step_every_seconds`` passed."""
        if self.replay is None or len(self.replay) == 0 or self._since_step == 0 or not self._deep_ready():
            return False
        assert self.deep is not None
        d = self.spec.deep
        if self._since_step < d.step_every_records and self.clock() - self._last_step < d.step_every_seconds:
            return False
        self.deep.train_steps(self.replay, d.steps, d.batch_size, self.rng)
        self.last_step_seconds = self.deep.last_step_seconds
        self.steps_taken += d.steps
        self._since_step = 0
        self._last_step = self.clock()
        return True

    @property
    def deep_weight(self) -> float | None:
        """How much the personal prediction leans on the online learner (1) rather than the deep one (0)."""
        return None if self.mix is None else self.mix.weight
