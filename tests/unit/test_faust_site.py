"""The Faust site refuses what it cannot do safely (no broker: a faust.App connects only when a worker starts)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("faust", reason="needs the faust extra: pip install 'streamfed[faust]'")

import faust

from streamfed.errors import ConfigError
from streamfed.integrations.faust import site_agent
from streamfed.topology import load_topology


def test_a_secure_aggregation_topology_is_refused(tmp_path: Path) -> None:
    topo = load_topology("fraud", {"state_dir": str(tmp_path), "aggregation": {"secure": {"threshold": 2}}})
    app = faust.App("refuse-secure", broker="kafka://127.0.0.1:9", store="memory://", web_enabled=False)
    with pytest.raises(ConfigError, match=r"aggregation\.secure"):
        site_agent(app, topo, topo.sites[0].id)
