"""Ten sites under sustained load: bounded lag, flat memory, no dead letters from good input.

A soak test (minutes): ``STREAMFED_SOAK=1 python -m pytest tests/reliability/test_load_soak.py -s``.
``STREAMFED_SOAK_SECONDS`` (default 300) and ``STREAMFED_SOAK_RATE`` (records/s per site, default 400)
set the load; the RSS and lag series are printed and written to ``soak.json`` in the test's folder.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from pathlib import Path

import pytest

from streamfed.broker.embedded import free_port
from streamfed.privacy.signing import write_keypair
from tests.integration.helpers import start, stop, tail

pytestmark = [pytest.mark.kafka, pytest.mark.reliability, pytest.mark.soak]

SECONDS = float(os.environ.get("STREAMFED_SOAK_SECONDS", "300"))
RATE = float(os.environ.get("STREAMFED_SOAK_RATE", "400"))
SITES = 10


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def scrape(port: int) -> dict[str, float] | None:
    """Sum of each metric family (over its labels) on a /metrics endpoint; None while it is not up."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^(streamfed_[a-z_]+)(?:\{[^}]*\})? ([0-9.eE+-]+|NaN)$", line)
        if m and m.group(2) != "NaN":
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


@pytest.mark.timeout(SECONDS + 300)
def test_ten_sites_at_sustained_rate_keep_lag_bounded_and_memory_flat(topology_factory, tmp_path: Path) -> None:
    sites = [
        {"id": f"bank-{i}", "simulator": {"rate": RATE, "fraud_rate": 0.02 + 0.004 * i, "seed": 100 + i}}
        for i in range(SITES)
    ]
    path, topo = topology_factory(
        "fraud", {"sites": sites, "update": {"every_records": 4000, "every_seconds": 5.0, "min_records": 200}}
    )
    for s in topo.sites:
        write_keypair(topo.private_key_path(s), topo.public_key_path(s))
    args = ["--topology", str(path)]
    logs = tmp_path / "logs"
    ports = {s.id: free_port() for s in topo.sites}
    ports["aggregator"] = free_port()
    procs = {
        s.id: start(["site", *args, "--site", s.id, "--metrics-port", str(ports[s.id])], logs / f"{s.id}.log", tmp_path)
        for s in topo.sites
    }
    procs["aggregator"] = start(
        ["aggregator", *args, "--metrics-port", str(ports["aggregator"])], logs / "agg.log", tmp_path
    )
    procs["simulate"] = start(["simulate", *args], logs / "sim.log", tmp_path)
    samples: list[dict] = []
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < SECONDS:
            time.sleep(10)
            assert all(p.poll() is None for p in procs.values()), "a process died under load"
            sample: dict = {"t": round(time.monotonic() - t0), "rss_mb": {}, "site_lag": 0.0}
            published = accepted = records = dead = 0.0
            for name, proc in procs.items():
                sample["rss_mb"][name] = round(rss_mb(proc.pid), 1)
            scraped = {name: scrape(port) for name, port in ports.items()}
            if any(m is None for m in scraped.values()):
                assert time.monotonic() - t0 < 120, f"metrics endpoints not up: {scraped}"
                continue  # still starting
            for s in topo.sites:
                m = scraped[s.id] or {}
                sample["site_lag"] += m.get("streamfed_site_consumer_lag_records", 0.0)
                published += m.get("streamfed_site_updates_published_total", 0.0)
                records += m.get("streamfed_site_records_total", 0.0)
                dead += m.get("streamfed_site_dead_letters_total", 0.0)
            a = scraped["aggregator"] or {}
            accepted = a.get("streamfed_aggregator_updates_accepted_total", 0.0)
            rejected = a.get("streamfed_aggregator_updates_rejected_total", 0.0)
            sample.update(
                records=records,
                dead_letters=dead,
                published=published,
                aggregator_lag=published - accepted - rejected,
                version=a.get("streamfed_aggregator_model_version", 0.0),
            )
            samples.append(sample)
            print(json.dumps(sample), flush=True)
    finally:
        codes = {name: stop(p) for name, p in procs.items()}
        (tmp_path / "soak.json").write_text(json.dumps(samples, indent=1))
    assert all(c == 0 for c in codes.values()), f"{codes}\n{tail(logs / 'agg.log')}"
    assert len(samples) >= 6
    last = samples[-1]
    assert last["dead_letters"] == 0
    assert last["records"] >= 0.5 * RATE * SITES * (SECONDS - 30), "the sites fell far behind the offered load"
    # Lag bounded: the second half never exceeds what the whole run's first minute reached, plus slack.
    early = max(s["site_lag"] for s in samples[:6])
    assert max(s["site_lag"] for s in samples[len(samples) // 2 :]) <= 2 * early + 20 * RATE * SITES
    assert max(s["aggregator_lag"] for s in samples[len(samples) // 2 :]) <= 50
    # Memory flat: after the first minute of warm-up no process grows by more than 25 % + 50 MB.
    warm = samples[5]["rss_mb"]
    for name, mb in last["rss_mb"].items():
        assert mb <= 1.25 * warm[name] + 50, f"{name} grew from {warm[name]} MB to {mb} MB"
