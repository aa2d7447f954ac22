"""Counters exist at zero from the start, one rejection series for every reason the code can give."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import REGISTRY

from streamfed import metrics as M

ROOT = Path(__file__).resolve().parents[2] / "streamfed" / "aggregation"


def test_every_rejection_reason_in_the_code_is_pre_created() -> None:
    source = (ROOT / "aggregator.py").read_text() + (ROOT / "secure.py").read_text()
    used = set(re.findall(r'Rejected\(\s*"(\w+)"', source)) | set(re.findall(r'return "(\w+)", f?"', source))
    assert used, "no rejection reasons found: the pattern no longer matches the code"
    assert used <= set(M.REJECT_REASONS), f"reasons missing from REJECT_REASONS: {used - set(M.REJECT_REASONS)}"


def test_start_aggregator_and_site_create_zero_series() -> None:
    M.start_aggregator("metrics-init", "m")
    M.start_site("metrics-init", "s1")
    for reason in M.REJECT_REASONS:
        value = REGISTRY.get_sample_value(
            "streamfed_aggregator_updates_rejected_total", {"topology": "metrics-init", "reason": reason}
        )
        assert value == 0.0, reason
    assert REGISTRY.get_sample_value("streamfed_site_records_total", {"topology": "metrics-init", "site": "s1"}) == 0.0


def test_every_label_name_is_declared_once_with_its_meaning() -> None:
    from prometheus_client.metrics import MetricWrapperBase

    used: dict[str, set[str]] = {}
    for name, obj in vars(M).items():
        if isinstance(obj, MetricWrapperBase):
            for label in obj._labelnames:
                used.setdefault(label, set()).add(name)
    assert used, "no metrics found"
    undeclared = set(used) - set(M.LABELS)
    assert not undeclared, f"labels without a declared meaning: {undeclared} (metrics.LABELS)"
    # a site's AUC and log loss are per predictor; "model" is only ever the model's name
    assert {"SITE_AUC", "SITE_LOGLOSS"} <= used["predictor"] and not used["model"] & {"SITE_AUC", "SITE_LOGLOSS"}
