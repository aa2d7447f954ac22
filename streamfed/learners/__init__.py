"""Learners: river (every event), torch (periodic mini-batch steps), and the federated model."""

from streamfed.learners.base import Learner, Segment
from streamfed.learners.features import Featurizer, RecordError
from streamfed.learners.federated import FederatedModel, LinearLogistic, WideAndDeep, build_federated_model
from streamfed.learners.online import RiverLogisticLearner

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
