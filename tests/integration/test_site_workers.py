"""One site run as two processes (``streamfed site --worker``) over a 4-partition topic: each reads its
share, publishes in its own sequence space under its own ledger, and no record is learnt twice or
lost across the rebalance when the second one joins."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamfed.broker.embedded import free_port
from streamfed.privacy.accountant import PrivacyLedger
from streamfed.privacy.signing import write_keypair
from streamfed.site.build import site_home
from streamfed.sources import RecordProducer, TransactionSimulator
from tests.deploy.helpers import scrape
from tests.integration.helpers import read_json, site_updates, start, stop, tail, wait_for

pytestmark = pytest.mark.kafka

FIRST, SECOND = 5_000, 10_000  # before and after the second worker joins
RECORDS = FIRST + SECOND
WINDOW = 3_000  # never cut by time: the first worker holds records read since its last release (FIRST % WINDOW
# of them, in batches of at most 2,000) in an open window when it gives partitions up


def _records(port: int) -> float:
    return sum(v for k, v in scrape(port).items() if k.startswith("streamfed_site_records_total{"))


def test_two_workers_of_one_site_share_its_partitions(topology_factory, tmp_path: Path) -> None:
    path, topo = topology_factory(
        "fraud",
        {
            "kafka": {"partitions": 4},
            "update": {"every_records": WINDOW, "every_seconds": 3600.0, "min_records": WINDOW},
        },
    )
    for s in topo.sites:
        write_keypair(topo.private_key_path(s), topo.public_key_path(s))
    site = topo.sites[0]
    assert site.simulator is not None
    logs, args = tmp_path / "logs", ["--topology", str(path)]
    ports = {"w0": free_port(), "w1": free_port()}
    agg = start(["aggregator", *args, "--summary-json", str(tmp_path / "agg.json")], logs / "agg.log", tmp_path)
    workers = {}

    def start_worker(name: str) -> None:
        workers[name] = start(
            ["site", *args, "--site", site.id, "--worker", name, "--metrics-port", str(ports[name]),
             "--summary-json", str(tmp_path / f"{name}.json")],
            logs / f"{name}.log",
            tmp_path,
        )  # fmt: skip

    try:
        start_worker("w0")
        wait_for(lambda: scrape(ports["w0"]), 120, "worker w0 serving metrics")
        out = RecordProducer(topo.kafka, "card_transaction", topo.name, "transaction_id")
        sim = TransactionSimulator(site.id, site.simulator)

        def labelled(n: int, t: float) -> list[dict]:
            batch = sim.batch(n, t=t)
            for r in batch:
                r["is_fraud"] = bool(r["is_fraud"])  # every record labelled: windows of WINDOW records
            return batch

        out.send(topo.transactions_topic(site), site.id, labelled(FIRST, 0.0))
        assert out.flush(30) == 0
        wait_for(lambda: _records(ports["w0"]) >= FIRST, 60, f"w0 learning\n{tail(logs / 'w0.log')}")
        # the second worker joins while the first is reading: a rebalance moves partitions to it
        start_worker("w1")
        # w1 owns partitions once it reports their lag (librdkafka statistics, every second)
        wait_for(
            lambda: any(k.startswith("streamfed_site_consumer_lag_records{") for k in scrape(ports["w1"])),
            120,
            f"worker w1 assigned partitions\n{tail(logs / 'w1.log')}",
        )
        out.send(topo.transactions_topic(site), site.id, labelled(SECOND, FIRST / 100))
        assert out.flush(30) == 0
        wait_for(
            lambda: _records(ports["w0"]) + _records(ports["w1"]) >= RECORDS,
            120,
            f"{RECORDS} records learnt by the two workers\n{tail(logs / 'w0.log')}\n{tail(logs / 'w1.log')}",
        )
        wait_for(
            lambda: {u["worker"] for u in site_updates(topo, site.id)} >= {"w0", "w1"},
            60,
            "updates from both workers",
        )
    finally:
        codes = {name: stop(proc) for name, proc in workers.items()}
        stop(agg)
    assert codes == {"w0": 0, "w1": 0}, codes
    reports = {name: read_json(tmp_path / f"{name}.json") for name in workers}
    assert reports["w1"]["records"] > 0, "the second worker read no partition"
    # each record learnt by exactly one worker: the first committed what it had read when it gave
    # partitions up, so the second started after it
    assert reports["w0"]["records"] + reports["w1"]["records"] == RECORDS, reports
    ups = site_updates(topo, site.id)
    for name in workers:
        seqs = [u["sequence"] for u in ups if u["worker"] == name]
        assert seqs == list(range(1, len(seqs) + 1)), (name, seqs)
        ledger = PrivacyLedger(topo.privacy.delta, path=site_home(topo, site.id, name) / "ledger.jsonl")
        assert [r.sequence for r in ledger.releases] == seqs
        assert reports[name]["last_sequence"] == seqs[-1]
    assert not (site_home(topo, site.id) / "ledger.jsonl").exists()
    agg_report = read_json(tmp_path / "agg.json")
    assert agg_report["rejected_reasons"] == {}, agg_report
    assert 2 <= agg_report["accepted"] <= len(ups)
