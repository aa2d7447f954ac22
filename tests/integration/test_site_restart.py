"""kill -9 of a site, then a restart: sequence numbers and the privacy ledger continue."""

from __future__ import annotations

import itertools
import signal
from pathlib import Path

import pytest

from streamfed.privacy.signing import write_keypair
from streamfed.registry import read_topic
from streamfed.serde.avro import AvroCodec
from tests.integration.helpers import read_json, start, stop, wait_for

pytestmark = pytest.mark.kafka


def _updates(topo, site_id: str) -> list[dict]:
    recs = [r for _, r in read_topic(topo.kafka, topo.updates_topic, AvroCodec("model_update"))]
    return [r for r in recs if isinstance(r, dict) and r["site_id"] == site_id]


def test_site_kill9_and_restart_continues_sequence_and_epsilon(topology_factory, tmp_path: Path) -> None:
    path, topo = topology_factory("fraud", {"update": {"every_records": 500, "every_seconds": 1.0, "min_records": 50}})
    for s in topo.sites:
        write_keypair(topo.private_key_path(s), topo.public_key_path(s))
    site = topo.sites[0].id
    logs = tmp_path / "logs"
    args = ["--topology", str(path)]
    agg = start(["aggregator", *args, "--summary-json", str(tmp_path / "agg.json")], logs / "agg.log", tmp_path)
    sim = start(["simulate", *args, "--site", site, "--rate-scale", "0.5"], logs / "sim.log", tmp_path)
    proc = start(["site", *args, "--site", site], logs / "site-1.log", tmp_path)
    try:
        wait_for(lambda: len(_updates(topo, site)) >= 3, 90, "three updates from the site")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        before = _updates(topo, site)
        proc = start(
            ["site", *args, "--site", site, "--summary-json", str(tmp_path / "site-2.json")],
            logs / "site-2.log",
            tmp_path,
        )
        wait_for(lambda: len(_updates(topo, site)) >= len(before) + 3, 90, "three updates after the restart")
    finally:
        stop(sim)
        stop(proc)
        stop(agg)
    ups = _updates(topo, site)
    seqs = [u["sequence"] for u in ups]
    eps = [u["epsilon_spent"] for u in ups]
    assert seqs == sorted(set(seqs)), f"a sequence number was reused or reordered: {seqs}"
    assert all(b > a for a, b in itertools.pairwise(eps)), f"epsilon went back: {eps}"
    assert ups[len(before)]["epsilon_spent"] > before[-1]["epsilon_spent"]
    second = read_json(tmp_path / "site-2.json")
    assert second["epsilon"] == pytest.approx(ups[-1]["epsilon_spent"])
    assert second["last_sequence"] == seqs[-1]
    assert read_json(tmp_path / "agg.json")["rejected_reasons"].get("replay", 0) == 0
