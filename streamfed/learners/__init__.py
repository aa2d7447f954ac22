"""Learners behind one protocol: river (every event) and torch (periodic mini-batch steps)."""

from streamfed.learners.base import Learner, Segment
from streamfed.learners.features import Featurizer, RecordError
from streamfed.learners.model import SiteModel, build_model
from streamfed.learners.online import RiverLogisticLearner
from streamfed.learners.torch_mlp import ReplayBuffer, TorchMLPLearner, pick_device

__all__ = [
    "Featurizer",
    "Learner",
    "RecordError",
    "ReplayBuffer",
    "RiverLogisticLearner",
    "Segment",
    "SiteModel",
    "TorchMLPLearner",
    "build_model",
    "pick_device",
]
