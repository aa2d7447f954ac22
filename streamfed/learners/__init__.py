"""Learners: river (every event), torch (periodic mini-batch steps), and the federated model.

The names below load on first use, so that importing one submodule (the aggregator needs only
:mod:`streamfed.learners.base` and the federated model) does not import river and scipy as well.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamfed.learners.base import Learner, Segment
    from streamfed.learners.features import Featurizer, RecordError
    from streamfed.learners.federated import FederatedModel, LinearLogistic, WideAndDeep, build_federated_model
    from streamfed.learners.online import RiverLogisticLearner

_WHERE = {
    "Featurizer": "features",
    "FederatedModel": "federated",
    "Learner": "base",
    "LinearLogistic": "federated",
    "RecordError": "features",
    "RiverLogisticLearner": "online",
    "Segment": "base",
    "WideAndDeep": "federated",
    "build_federated_model": "federated",
}

__all__ = [
    "Featurizer",
    "FederatedModel",
    "Learner",
    "LinearLogistic",
    "RecordError",
    "RiverLogisticLearner",
    "Segment",
    "WideAndDeep",
    "build_federated_model",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
