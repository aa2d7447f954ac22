"""A site's personal model: it learns from every labelled record, never leaves the site, is never reset.

Logistic regression learns each labelled event in order (predict, then learn; river's update, in
micro-batches of ``model.online.micro_batch`` rows); when the
topology has a deep model, the site's own torch MLP takes mini-batch Adam steps from a replay buffer
of recent rows, and an :class:`~streamfed.site.served.ExpertMixture` learns how to blend the two.
Nothing here is published, so nothing here is noised: the privacy mechanism lives in
:mod:`streamfed.site.contribution`, which sees the same records separately.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from streamfed.learners.online import MicroBatchLogistic, RiverLogisticLearner
from streamfed.site.served import Blend, logit
from streamfed.topology.spec import ModelSpec

if TYPE_CHECKING:
    from streamfed.learners.torch_mlp import ReplayBuffer, TorchMLPLearner


class PersonalModel:
    """Online learner on every labelled event, plus (optionally) a deep learner in periodic steps."""

    def __init__(
        self, spec: ModelSpec, names: list[str], rng: np.random.Generator, clock: Callable[[], float], device: str
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
        if spec.deep.enabled:
            from streamfed.learners.torch_mlp import ReplayBuffer, TorchMLPLearner

            d = spec.deep
            self.deep = TorchMLPLearner(len(names), list(d.hidden), d.learning_rate, device, spec.seed)
            self.replay = ReplayBuffer(len(names), d.replay_size)
            self.mix = Blend(spec.blend)
        self._since_step = 0
        self._last_step = clock()

    @property
    def device(self) -> str:
        return self.deep.device.type if self.deep is not None else "cpu"

    def prequential(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The personal logit of each row, scored before the row is learnt; then learn the labelled ones."""
        z_online = logit(self.online.prequential_many(X, y))
        if self.deep is None or self.mix is None or self.replay is None:
            return z_online
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
        if self.deep is None or self.replay is None or len(self.replay) == 0 or self._since_step == 0:
            return False
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
