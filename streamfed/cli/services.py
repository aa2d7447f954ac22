"""Long-running commands: broker, provision, site, aggregator, simulate, replay; and lag."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from streamfed.cli.common import (
    BootstrapOpt,
    DurationOpt,
    MetricsPortOpt,
    StartGateOpt,
    StateDirOpt,
    SummaryOpt,
    TopologyOpt,
    console,
    fail,
    load,
    setup_logging,
    stop_on_signals,
    wait_for_gate,
    write_json,
)
from streamfed.errors import StreamfedError

log = logging.getLogger("streamfed.cli")


def broker(
    port: Annotated[int | None, typer.Option(help="port to listen on (default: a free one; tansu only)")] = None,
    provision: Annotated[str | None, typer.Option(help="also create this topology's topics")] = None,
    kafka: Annotated[
        bool, typer.Option("--kafka", help="Apache Kafka (KRaft, Java 17) instead of the embedded tansu")
    ] = False,
    brokers: Annotated[int, typer.Option(help="--kafka: brokers in the cluster (3: replicated)", min=1)] = 1,
    data_dir: Annotated[
        Path | None, typer.Option(help="--kafka: keep the brokers' data here (default: a temporary folder)")
    ] = None,
) -> None:
    """Start a broker and print its bootstrap address: the embedded tansu (in memory, the default), or
    Apache Kafka 4.x in KRaft mode from the jars deploy/kafka/fetch resolves from Maven Central."""
    from streamfed.broker import EmbeddedBroker
    from streamfed.kafka import provision_topology

    setup_logging()
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        if kafka:
            from streamfed.broker.kafka import KafkaCluster

            b: EmbeddedBroker | KafkaCluster = KafkaCluster(brokers, data_dir)
            what = f"Apache Kafka, {brokers} broker(s), data in {b.folder}"
        else:
            b = EmbeddedBroker(port)
            what = "embedded broker (memory only)"
        with b:
            if provision:
                provision_topology(load(provision, b.bootstrap))
            print(b.bootstrap, flush=True)
            console.print(f"{what} on [bold]{b.bootstrap}[/bold]; Ctrl-C stops it")
            while not stop.wait(0.5):
                if not b.running:
                    raise typer.Exit(1)
    except StreamfedError as exc:
        raise fail(exc) from exc


def provision(topology: TopologyOpt = "fraud", bootstrap: BootstrapOpt = None) -> None:
    """Create the topology's topics (idempotent)."""
    from streamfed.kafka import provision_topology

    setup_logging()
    try:
        topo = load(topology, bootstrap, kafka=True)
        created = provision_topology(topo)
    except StreamfedError as exc:
        raise fail(exc) from exc
    console.print(f"{len(created)} topics created on {topo.kafka.bootstrap_servers}")


def lag(
    topology: TopologyOpt = "fraud",
    bootstrap: BootstrapOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Consumer lag of every site and of the aggregator, from the broker's committed and end offsets."""
    from rich.table import Table

    from streamfed.kafka.lag import topology_lag

    setup_logging()
    try:
        lags = topology_lag(load(topology, bootstrap, kafka=True))
    except StreamfedError as exc:
        raise fail(exc) from exc
    if as_json:
        print(json.dumps({who: g.to_json() for who, g in lags.items()}, indent=2))
        return
    table = Table("member", "group", "topic", "partitions", "committed", "end", "lag")
    for who, g in lags.items():
        committed = sum(p.committed or 0 for p in g.partitions)
        end = sum(p.end for p in g.partitions)
        table.add_row(who, g.group, g.topic, str(len(g.partitions)), str(committed), str(end), str(g.lag))
    console.print(table)


def site(
    site_id: Annotated[str, typer.Option("--site", "-s", help="site id from the topology")],
    topology: TopologyOpt = "fraud",
    bootstrap: BootstrapOpt = None,
    state_dir: StateDirOpt = None,
    metrics_port: MetricsPortOpt = None,
    duration: DurationOpt = None,
    max_records: Annotated[int | None, typer.Option(help="stop after this many records")] = None,
    summary_json: SummaryOpt = None,
    worker: Annotated[
        str,
        typer.Option(
            "--worker",
            "-w",
            help="run the site as several processes, one per name: each reads its share of the topic's"
            " partitions and keeps its own privacy ledger and update sequence (metrics on any free port"
            " unless --metrics-port)",
        ),
    ] = "",
) -> None:
    """Run one site: learn on its transaction topic, publish private updates, follow global versions."""
    from streamfed import metrics
    from streamfed.kafka import provision_topology
    from streamfed.site import build_site

    setup_logging()
    try:
        topo = load(topology, bootstrap, state_dir, kafka=True)
        spec = topo.site(site_id) if site_id in {s.id for s in topo.sites} else None
        if spec is None:
            raise typer.BadParameter(f'unknown site "{site_id}"; valid: {", ".join(s.id for s in topo.sites)}')
        if metrics_port is None:
            metrics_port = 0 if worker else spec.metrics_port  # workers of one site: a port each
        metrics.serve(metrics_port)
        provision_topology(topo)
        proc = build_site(topo, site_id, background_deep=True, worker=worker)
    except StreamfedError as exc:
        raise fail(exc) from exc
    stop_on_signals(proc.stop_event)
    report = proc.run(max_records=max_records, timeout_s=duration)
    write_json(summary_json, report.to_json())
    log.info("site=%s done: %s", site_id, report.to_json())


def aggregator(
    topology: TopologyOpt = "fraud",
    bootstrap: BootstrapOpt = None,
    state_dir: StateDirOpt = None,
    metrics_port: MetricsPortOpt = None,
    duration: DurationOpt = None,
    max_versions: Annotated[int | None, typer.Option(help="stop after this many new versions")] = None,
    summary_json: SummaryOpt = None,
) -> None:
    """Run the aggregator: verify updates, buffer K, commit versions + lineage + offsets in one transaction."""
    from streamfed import metrics
    from streamfed.aggregation.build import build_aggregator
    from streamfed.kafka import provision_topology

    setup_logging()
    try:
        topo = load(topology, bootstrap, state_dir, kafka=True)
        metrics.serve(metrics_port if metrics_port is not None else topo.metrics.aggregator_port)
        provision_topology(topo)
        agg = build_aggregator(topo)
    except StreamfedError as exc:
        raise fail(exc) from exc
    stop_on_signals(agg.stop_event)
    report = agg.run(max_versions=max_versions, timeout_s=duration)
    write_json(summary_json, report.to_json())
    log.info("aggregator done: %s", report.to_json())


def simulate(
    topology: TopologyOpt = "fraud",
    sites: Annotated[list[str] | None, typer.Option("--site", "-s", help="only these sites (repeatable)")] = None,
    bootstrap: BootstrapOpt = None,
    rate_scale: Annotated[float, typer.Option(help="multiply every site's rate")] = 1.0,
    duration: DurationOpt = None,
    max_records: Annotated[int | None, typer.Option(help="stop after this many records in all")] = None,
    metrics_port: MetricsPortOpt = None,
    summary_json: SummaryOpt = None,
    start_gate: StartGateOpt = None,
) -> None:
    """Produce synthetic card transactions for the topology's simulated sites at their set rates."""
    from streamfed import metrics
    from streamfed.kafka import provision_topology
    from streamfed.sources import RecordProducer, TransactionSimulator

    setup_logging()
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        topo = load(topology, bootstrap, kafka=True)
        chosen = [s for s in topo.sites if s.simulator is not None and (not sites or s.id in sites)]
        if not chosen:
            raise typer.BadParameter(
                "no simulated sites selected; sites with a 'simulator' section: "
                + ", ".join(s.id for s in topo.sites if s.simulator)
                or "none"
            )
        if topo.model.record_schema != "card_transaction":
            raise typer.BadParameter(
                f"the simulator produces card_transaction records; {topo.name} uses "
                f"{topo.model.record_schema} (use `streamfed replay`)"
            )
        metrics.serve(metrics_port)
        provision_topology(topo)
        out = RecordProducer(topo.kafka, topo.model.record_schema, topo.name, "transaction_id")
    except StreamfedError as exc:
        raise fail(exc) from exc
    wait_for_gate(start_gate, stop)
    sims = [
        (s.id, s.simulator.rate * rate_scale, TransactionSimulator(s.id, s.simulator), topo.transactions_topic(s))
        for s in chosen
        if s.simulator is not None
    ]
    total_rate = sum(rate for _, rate, _, _ in sims)
    produced = dict.fromkeys((s.id for s in chosen), 0)
    t0 = time.monotonic()
    for due, now in _paced(total_rate, stop):
        if duration is not None and now >= duration:
            break
        if max_records is not None:
            due = min(due, max_records - sum(produced.values()))
        now_ms = int(time.time() * 1000)
        for sid, rate, sim, topic in sims:
            n = round(due * rate / total_rate)
            if n:
                out.send(topic, sid, sim.batch(n, now, now_ms))
                produced[sid] += n
        if max_records is not None and sum(produced.values()) >= max_records:
            break
    out.flush()
    summary = {
        "transactions": sum(produced.values()),
        "per_site": produced,
        "delivery_errors": out.errors,
        "seconds": time.monotonic() - t0,
    }
    write_json(summary_json, summary)
    log.info("simulate done: %s", summary)


def _paced(rate: float, stop: threading.Event) -> Iterator[tuple[int, float]]:
    from streamfed.sources import pace

    yield from pace(rate, stop=stop)


def replay(
    site_id: Annotated[str, typer.Option("--site", "-s", help="site id from the topology")],
    file: Annotated[Path | None, typer.Argument(help="data file (default: the site's source.path)")] = None,
    topology: TopologyOpt = "heart",
    bootstrap: BootstrapOpt = None,
    rate: Annotated[float | None, typer.Option(help="records/s (default: the source's rate)")] = None,
    summary_json: SummaryOpt = None,
    start_gate: StartGateOpt = None,
) -> None:
    """Produce a real data file's rows as records, by the topology's column mapping, at a set rate."""
    from streamfed.kafka import provision_topology
    from streamfed.kafka.clients import check_reachable
    from streamfed.sources import RecordProducer, read_source_rows
    from streamfed.topology.loader import schema_fields

    setup_logging()
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        topo = load(topology, bootstrap)
        ids = [s.id for s in topo.sites]
        if site_id not in ids:
            raise typer.BadParameter(f'unknown site "{site_id}"; valid: {", ".join(ids)}')
        spec = topo.site(site_id)
        if spec.source is None:
            raise typer.BadParameter(f'site "{site_id}" has no source section in {topo.name}')
        source = spec.source if file is None else spec.source.model_copy(update={"path": file})
        fields = schema_fields(topo.model.record_schema)
        id_field = next(iter(fields))
        if not Path(source.path).is_file():
            raise typer.BadParameter(f"no data file at {source.path}")
        rows = read_source_rows(source, site_id, fields, topo.model.label, id_field)
        check_reachable(topo.kafka)  # the inputs first, then the broker, then topics
        provision_topology(topo)
        out = RecordProducer(topo.kafka, topo.model.record_schema, topo.name, id_field)
    except StreamfedError as exc:
        raise fail(exc) from exc
    wait_for_gate(start_gate, stop)
    topic = topo.transactions_topic(spec)
    sent = 0
    done = False
    t0 = time.monotonic()
    try:
        for due, _now in _paced(rate or source.rate, stop):
            batch = []
            for _ in range(due):
                rec = next(rows, None)
                if rec is None:
                    done = True
                    break
                rec["event_time"] = int(time.time() * 1000)
                batch.append(rec)
            if batch:
                out.send(topic, site_id, batch)
                sent += len(batch)
            if done:
                break
    except StreamfedError as exc:
        raise fail(exc) from exc
    out.flush()
    summary = {"transactions": sent, "site": site_id, "file": str(source.path), "seconds": time.monotonic() - t0}
    write_json(summary_json, summary)
    log.info("replay done: %s", summary)
