"""A site's model: the online learner and the deep learner side by side, one flat parameter vector."""

from __future__ import annotations

import numpy as np

from streamfed.learners.base import Matrix, Segment, Vector
from streamfed.learners.features import Featurizer
from streamfed.learners.online import RiverLogisticLearner
from streamfed.learners.torch_mlp import TorchMLPLearner
from streamfed.topology.spec import ModelSpec


class SiteModel:
    """Online (river) + deep (torch) learners; prediction blends them by ``blend``."""

    def __init__(self, spec: ModelSpec, device: str | None = None) -> None:
        self.spec = spec
        self.featurizer = Featurizer(spec.features, spec.label)
        names = self.featurizer.names
        self.online = RiverLogisticLearner(names, spec.online.learning_rate, spec.online.l2)
        self.deep: TorchMLPLearner | None = None
        if spec.deep.enabled:
            self.deep = TorchMLPLearner(
                len(names), list(spec.deep.hidden), spec.deep.learning_rate, device or spec.deep.device, spec.seed
            )
        self.blend = spec.blend if self.deep is not None else 1.0
        self._n_online = len(names) + 1

    def layout(self) -> list[Segment]:
        return self.online.layout() + (self.deep.layout() if self.deep else [])

    @property
    def num_params(self) -> int:
        return sum(s.size for s in self.layout())

    def get_params(self) -> Vector:
        parts = [self.online.get_params()]
        if self.deep is not None:
            parts.append(self.deep.get_params())
        return np.concatenate(parts).astype(np.float32)

    def set_params(self, params: Vector) -> None:
        if params.shape != (self.num_params,):
            raise ValueError(f"expected {self.num_params} parameters, got {params.shape}")
        self.online.set_params(params[: self._n_online])
        if self.deep is not None:
            self.deep.set_params(params[self._n_online :])

    def predict_proba_many(self, X: Matrix) -> Vector:
        p = self.online.predict_proba_many(X)
        if self.deep is not None and self.blend < 1.0:
            p = self.blend * p + (1 - self.blend) * self.deep.predict_proba_many(X)
        return p.astype(np.float32)

    def prequential_many(self, X: Matrix, y: Vector) -> Vector:
        """Predict each row, then let the online learner learn it (deep learning happens in steps)."""
        p_online = self.online.prequential_many(X, y)
        if self.deep is None or self.blend >= 1.0:
            return p_online
        # The deep model does not learn within a batch, so predicting the batch up front is exact.
        p_deep = self.deep.predict_proba_many(X)
        return (self.blend * p_online + (1 - self.blend) * p_deep).astype(np.float32)

    def learn_many(self, X: Matrix, y: Vector) -> None:
        """Learn the labelled rows; a row with a non-finite feature or label (NaN: unknown) is skipped."""
        keep = np.isfinite(X).all(axis=1) & np.isfinite(y)
        if not keep.all():
            X, y = X[keep], y[keep]
        if len(y) == 0:
            return
        self.online.learn_many(X, y)
        if self.deep is not None:
            self.deep.learn_many(X, y)


def build_model(spec: ModelSpec, device: str | None = None) -> SiteModel:
    return SiteModel(spec, device)


def initial_params(spec: ModelSpec) -> Vector:
    """Version 0: the deterministic initialisation every site and the aggregator share."""
    return build_model(spec, device="cpu").get_params()
