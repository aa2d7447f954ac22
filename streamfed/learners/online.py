"""River's logistic regression, updated on every labelled event, with a flat parameter view."""

from __future__ import annotations

import math

import numpy as np
from river import linear_model, optim
from river._river_rust.vectordict import VectorDict

from streamfed.learners.base import Matrix, Segment, Vector


class RiverLogisticLearner:
    """``river.linear_model.LogisticRegression`` with parameters [weights in feature order, intercept].

    >>> m = RiverLogisticLearner(["a", "b"], learning_rate=0.1)
    >>> m.learn_many(np.array([[1.0, 0.0]], dtype=np.float32), np.array([1.0], dtype=np.float32))
    >>> m.get_params().round(3).tolist()
    [0.05, 0.0, 0.05]
    """

    def __init__(self, feature_names: list[str], learning_rate: float = 0.05, l2: float = 0.0) -> None:
        self.names = list(feature_names)
        self.learning_rate = learning_rate
        self.l2 = l2
        self.model = linear_model.LogisticRegression(
            optimizer=optim.SGD(learning_rate), l2=l2, intercept_lr=learning_rate
        )

    def layout(self) -> list[Segment]:
        return [Segment("online.weights", (len(self.names),)), Segment("online.intercept", (1,))]

    def get_params(self) -> Vector:
        w = self.model._weights
        vals = [float(w[n]) if n in w else 0.0 for n in self.names]
        vals.append(float(self.model.intercept))
        return np.asarray(vals, dtype=np.float32)

    def set_params(self, params: Vector) -> None:
        d = len(self.names)
        if params.shape != (d + 1,):
            raise ValueError(f"expected {d + 1} online parameters, got {params.shape}")
        self.model._weights = VectorDict({n: float(v) for n, v in zip(self.names, params[:d].tolist(), strict=True)})
        self.model.intercept = float(params[d])

    def predict_proba_many(self, X: Matrix) -> Vector:
        p = self.get_params()
        z = X.astype(np.float64) @ p[:-1].astype(np.float64) + float(p[-1])
        return (1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))).astype(np.float32)

    def predict_proba_one(self, x: dict[str, float]) -> float:
        return float(self.model.predict_proba_one(x)[True])

    def learn_many(self, X: Matrix, y: Vector) -> None:
        self.prequential_many(X, y)

    def prequential_many(self, X: Matrix, y: Vector) -> Vector:
        """For each row in order: predict, then learn if the label is known. Returns the predictions."""
        names = self.names
        model = self.model
        out = np.empty(len(X), dtype=np.float32)
        for i, (row, label) in enumerate(zip(X.tolist(), y.tolist(), strict=True)):
            x = {n: v for n, v in zip(names, row, strict=True) if v != 0.0}
            out[i] = model.predict_proba_one(x)[True]
            if not math.isnan(label):
                model.learn_one(x, label == 1.0)
        return out
