"""The Learner protocol: river's learn/predict names, plus flat parameters that can be averaged."""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float32]
Vector = npt.NDArray[np.float32]


class Segment(NamedTuple):
    name: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1


@runtime_checkable
class Learner(Protocol):
    """A model whose parameters live in one flat float32 vector of fixed layout."""

    def layout(self) -> list[Segment]: ...

    def get_params(self) -> Vector: ...

    def set_params(self, params: Vector) -> None: ...

    def predict_proba_many(self, X: Matrix) -> Vector:
        """P(y = 1) for each row, without learning."""
        ...

    def learn_many(self, X: Matrix, y: Vector) -> None:
        """Learn from labelled rows (an online learner goes through them one by one, in order)."""
        ...


def num_params(learner: Learner) -> int:
    return sum(s.size for s in learner.layout())
