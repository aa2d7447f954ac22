"""A site's update leaves only once its ledger line is durable, and updates leave in sequence order.

The site fsyncs its privacy ledger on a thread while it goes on learning (SiteProcessor.publish);
here that fsync is held back: no update may reach the updates topic until it completes.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from streamfed.kafka.topics import provision_topology
from streamfed.privacy.signing import write_keypair
from streamfed.site.build import build_site
from streamfed.sources import RecordProducer, TransactionSimulator
from streamfed.topology import SimulatorSpec
from tests.integration.helpers import site_updates, wait_for

pytestmark = pytest.mark.kafka

RECORDS = 3000


def test_updates_wait_for_the_ledger_fsync_and_leave_in_order(topology_factory, tmp_path: Path) -> None:
    _, topo = topology_factory("fraud", {"update": {"every_records": 500, "every_seconds": 60.0, "min_records": 50}})
    provision_topology(topo)
    site = topo.sites[0]
    write_keypair(topo.private_key_path(site), topo.public_key_path(site))
    prod = RecordProducer(topo.kafka, "card_transaction", topo.name, "transaction_id")
    prod.send(
        topo.transactions_topic(site),
        site.id,
        TransactionSimulator(site.id, SimulatorSpec(seed=5)).batch(RECORDS, t=0.0),
    )
    assert prod.flush(30) == 0 and prod.errors == 0

    proc = build_site(topo, site.id)
    ledger = proc.learner.ledger
    real_sync, gate, synced = ledger.sync, threading.Event(), []

    def held_sync() -> None:
        gate.wait(120)
        real_sync()
        synced.append(len(ledger.releases))

    ledger.sync = held_sync  # type: ignore[method-assign]
    runner = threading.Thread(target=proc.run, kwargs={"max_records": RECORDS, "timeout_s": 120})
    runner.start()
    try:
        wait_for(lambda: proc.report.updates_published >= 3, 60, "three updates made (in the ledger, not durable)")
        time.sleep(1.0)  # had any left, the broker would hold it by now
        assert site_updates(topo, site.id) == []
        assert ledger.path is not None and len(ledger.path.read_text().splitlines()) >= 3
    finally:
        gate.set()
        runner.join(120)
    assert not runner.is_alive()
    made = proc.report.updates_published
    assert made >= RECORDS // 500 - 1 and synced and max(synced) == made
    got = site_updates(topo, site.id)
    assert [u["sequence"] for u in got] == list(range(1, made + 1))  # each once, in order
    assert {r.sequence for r in ledger.releases} == set(range(1, made + 1))
    assert proc.report.updates_pending == 0
