"""Aggregation: strategies behind a small protocol, and the Aggregator service."""

from streamfed.aggregation.fedbuff import FedBuff, PendingUpdate, staleness_weight
from streamfed.aggregation.rules import CoordinateMedian, Mean, NormBound, Rule, TrimmedMean, make_rule

__all__ = [
    "CoordinateMedian",
    "FedBuff",
    "Mean",
    "NormBound",
    "PendingUpdate",
    "Rule",
    "TrimmedMean",
    "make_rule",
    "staleness_weight",
]
