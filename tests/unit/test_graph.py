"""`streamfed topology graph` draws every site, topic and the aggregator, as Mermaid or SVG."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from streamfed.topology import load_topology
from streamfed.topology.graph import mermaid, svg


def test_mermaid_names_every_site_topic_and_the_aggregator() -> None:
    topo = load_topology("heart")
    text = mermaid(topo)
    assert text.startswith("flowchart LR\n")
    for s in topo.sites:
        assert topo.transactions_topic(s) in text and f"site {s.id}" in text
    assert topo.updates_topic in text and topo.models_topic in text and "fedbuff K=1" in text
    assert text.count("-. version .->") == len(topo.sites)
    assert "secagg" not in text  # not a secure topology
    secure = load_topology("heart", {"aggregation": {"secure": {"threshold": 2}}})
    assert secure.secagg_topic in mermaid(secure)


def test_svg_is_well_formed_and_draws_one_box_per_component(tmp_path: Path) -> None:
    topo = load_topology("beijing")
    root = ET.fromstring(svg(topo))
    ns = "{http://www.w3.org/2000/svg}"
    # per site: source, topic, site; then updates, aggregator, models, serving apps
    assert len(root.findall(f"{ns}rect")) == 3 * len(topo.sites) + 4
    texts = " ".join(t.text or "" for t in root.iter(f"{ns}text"))
    assert all(f"site {s.id}" in texts for s in topo.sites)
    out = tmp_path / "g.svg"
    res = subprocess.run(
        [sys.executable, "-m", "streamfed", "topology", "graph", "fraud", "-f", "svg", "-o", str(out)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0 and ET.parse(out).getroot().tag == f"{ns}svg"
    bad = subprocess.run(
        [sys.executable, "-m", "streamfed", "topology", "graph", "fraud", "-f", "png"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "valid: mermaid, svg" in bad.stderr + bad.stdout
