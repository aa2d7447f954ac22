"""Metric names that ``streamfed.metrics`` exports, and the ones a PromQL expression uses."""

from __future__ import annotations

import re

from prometheus_client import Counter, Gauge, Histogram

_NAME = re.compile(r"\bstreamfed_[a-z_]+")
_SERIES_SUFFIXES = ("_bucket", "_sum", "_count")


def exported_metric_names() -> set[str]:
    """The names of the Counter, Gauge and Histogram objects in ``streamfed.metrics`` as exposed
    (a counter's exposed name ends in ``_total``; a histogram's series add suffixes, stripped below)."""
    import streamfed.metrics as m

    out = set()
    for obj in vars(m).values():
        if isinstance(obj, Counter):
            out.add(f"{obj._name}_total")
        elif isinstance(obj, Gauge | Histogram):
            out.add(obj._name)
    return out


def metric_names_in(expr: str) -> set[str]:
    """``streamfed_*`` names in a PromQL expression, histogram series suffixes stripped."""
    out = set()
    for name in _NAME.findall(expr):
        for suffix in _SERIES_SUFFIXES:
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        out.add(name)
    return out
