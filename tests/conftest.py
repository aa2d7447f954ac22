"""Fixtures: a real Kafka-protocol broker and uniquely named topologies whose topics are deleted after."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamfed.topology import Topology, load_topology
from streamfed.topology.loader import _merge, resolve_topology_path


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[str]:
    """``STREAMFED_BOOTSTRAP`` if set, else an embedded tansu broker for the whole session."""
    env = os.environ.get("STREAMFED_BOOTSTRAP")
    if env:
        yield env
        return
    from streamfed.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield broker.bootstrap


@pytest.fixture
def real_kafka() -> bool:
    return bool(os.environ.get("STREAMFED_BOOTSTRAP"))


TopologyFactory = Callable[..., tuple[Path, Topology]]


@pytest.fixture
def topology_factory(bootstrap: str, tmp_path: Path) -> Iterator[TopologyFactory]:
    """Write a copy of a shipped topology under a unique name (so unique topics) into ``tmp_path``."""
    made: list[Topology] = []

    def make(base: str = "fraud", overrides: dict[str, Any] | None = None) -> tuple[Path, Topology]:
        src = resolve_topology_path(base)
        data = yaml.safe_load(src.read_text())
        for site in data.get("sites", []):
            source = site.get("source")
            if source and not Path(source["path"]).is_absolute():
                source["path"] = str((src.resolve().parent / source["path"]).resolve())
        data = _merge(data, overrides or {})
        data["name"] = f"t{uuid.uuid4().hex[:10]}"
        data.setdefault("kafka", {})["bootstrap_servers"] = bootstrap
        data["state_dir"] = str(tmp_path / "state")
        path = tmp_path / f"{data['name']}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        topo = load_topology(path)
        made.append(topo)
        return path, topo

    yield make
    from streamfed.kafka.clients import admin_client
    from streamfed.kafka.topics import topic_plan

    for topo in made:  # clean-up is best effort: a topic never created is fine to skip
        admin = admin_client(topo.kafka)
        for fut in admin.delete_topics([t.topic for t in topic_plan(topo)], operation_timeout=10).values():
            with contextlib.suppress(Exception):
                fut.result(10)
