"""Read the lineage topic and check its invariants: contiguous versions, each update in exactly one."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from streamfed.registry import dedupe_versions, read_topic
from streamfed.serde.avro import AvroCodec
from streamfed.topology import Topology


def read_lineage(topo: Topology) -> list[dict[str, Any]]:
    return [r for _, r in read_topic(topo.kafka, topo.lineage_topic, AvroCodec("lineage")) if isinstance(r, dict)]


def check_lineage(raw: list[dict[str, Any]], real_kafka: bool) -> list[tuple[str, int]]:
    """Assert the invariants; returns every (site, sequence) that made it into a version."""
    assert raw, "no lineage records"
    # A version number written twice by one aggregator run would be a reuse. Across runs, the
    # embedded broker shows a killed run's aborted transaction, later redone by the next run.
    per_run = Counter((r["run_id"], r["version"]) for r in raw)
    assert max(per_run.values()) == 1, f"a run wrote a version twice: {per_run.most_common(3)}"
    if real_kafka:
        assert len({r["version"] for r in raw}) == len(raw), "read_committed shows a version twice"
    runs_by_version: dict[int, list[str]] = defaultdict(list)
    for r in raw:
        runs_by_version[r["version"]].append(r["run_id"])
    for version, runs in runs_by_version.items():
        if len(runs) > 1:  # only an earlier run's (aborted) record may precede the committed one
            assert runs[-1] != runs[0], f"version {version} repeated within run {runs[0]}"
    lineage = dedupe_versions(raw)
    versions = [r["version"] for r in lineage]
    assert versions == list(range(versions[0], versions[-1] + 1)), f"versions not contiguous: {versions}"
    for r in lineage:
        assert r["parent_version"] == r["version"] - 1
    pairs = [(u["site_id"], u["sequence"]) for r in lineage for u in r["updates"]]
    dup = [p for p, n in Counter(pairs).items() if n > 1]
    assert not dup, f"updates counted in more than one version: {dup[:5]}"
    return pairs
