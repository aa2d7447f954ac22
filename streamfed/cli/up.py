"""`streamfed up`: broker, aggregator, every site and the data sources, on one machine.

Each component runs as its own process (as in production), started with the same commands a
person would type; `up` watches them through their Prometheus endpoints and collects their JSON
summaries into one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from streamfed.cli.common import console, fail, load, setup_logging, write_json
from streamfed.errors import StreamfedError

out = Console()


@dataclass
class Child:
    name: str
    kind: str  # aggregator | site | source
    cmd: list[str]
    log: Path
    summary: Path
    metrics_port: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    samples: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.log, "ab")  # noqa: SIM115 - owned by the child
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(self.cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def ready(self) -> bool:
        """In its main loop (its ``streamfed_process_ready`` gauge, from its last scrape)."""
        return any(k.startswith("streamfed_process_ready") and v >= 1 for k, v in self.samples.items())

    def terminate(self) -> None:
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (if still running), then wait up to ``timeout_s`` before a kill."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def scrape(self) -> dict[str, float]:
        """Sum of each metric family's samples (by name and label set) from the child's /metrics."""
        if self.metrics_port is None:
            return {}
        from prometheus_client.parser import text_string_to_metric_families

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=0.5) as r:
                text = r.read().decode()
        except OSError:
            return self.samples
        samples: dict[str, float] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k not in ("topology", "site"))
                key = f"{s.name}{{{labels}}}" if labels else s.name
                samples[key] = samples.get(key, 0.0) + s.value
        self.samples = samples
        return samples


# Seconds a stopping process of each kind gets before it is killed: above its own flush bounds.
GRACE_S = {"source": 45.0, "site": 40.0, "aggregator": 60.0}


def _cli() -> list[str]:
    return [sys.executable, "-m", "streamfed"]


def _plan(topo_arg: str, bootstrap: str, state_dir: Path, run_dir: Path, duration: float) -> list[Child]:
    from streamfed.broker.embedded import free_port

    topo = load(topo_arg, bootstrap, state_dir)
    common = ["--topology", topo_arg, "--bootstrap", bootstrap]
    children = []
    port = free_port()
    children.append(
        Child(
            "aggregator",
            "aggregator",
            [
                *_cli(),
                "aggregator",
                *common,
                "--state-dir",
                str(state_dir),
                "--metrics-port",
                str(port),
                "--summary-json",
                str(run_dir / "aggregator.json"),
            ],
            run_dir / "logs" / "aggregator.log",
            run_dir / "aggregator.json",
            port,
        )
    )
    for s in topo.sites:
        port = free_port()
        children.append(
            Child(
                s.id,
                "site",
                [
                    *_cli(),
                    "site",
                    *common,
                    "--site",
                    s.id,
                    "--state-dir",
                    str(state_dir),
                    "--metrics-port",
                    str(port),
                    "--summary-json",
                    str(run_dir / f"site-{s.id}.json"),
                ],
                run_dir / "logs" / f"site-{s.id}.log",
                run_dir / f"site-{s.id}.json",
                port,
            )
        )
    if any(s.simulator for s in topo.sites):
        children.append(
            Child(
                "simulator",
                "source",
                [
                    *_cli(),
                    "simulate",
                    *common,
                    "--duration",
                    str(duration),
                    "--summary-json",
                    str(run_dir / "simulator.json"),
                ],
                run_dir / "logs" / "simulator.log",
                run_dir / "simulator.json",
            )
        )
    for s in topo.sites:
        if s.source is not None and s.simulator is None:
            children.append(
                Child(
                    f"replay-{s.id}",
                    "source",
                    [
                        *_cli(),
                        "replay",
                        *common,
                        "--site",
                        s.id,
                        "--summary-json",
                        str(run_dir / f"replay-{s.id}.json"),
                    ],
                    run_dir / "logs" / f"replay-{s.id}.log",
                    run_dir / f"replay-{s.id}.json",
                )
            )
    return children


def _table(children: list[Child], elapsed: float, rates: dict[str, float]) -> Table:
    t = Table(title=f"StreamFed up {elapsed:5.0f} s", title_justify="left")
    for col in (
        "site",
        "records",
        "rec/s",
        "dead",
        "updates",
        "ε spent",
        "AUC served",
        "AUC local",
        "AUC global",
        "base v",
    ):
        t.add_column(col, justify="right" if col != "site" else "left")
    agg = next((c for c in children if c.kind == "aggregator"), None)
    for c in children:
        if c.kind != "site":
            continue
        s = c.samples

        def g(key: str, fmt: str = "{:.0f}", s: dict[str, float] = s) -> str:
            return fmt.format(s[key]) if key in s else "-"

        dead = sum(v for k, v in s.items() if k.startswith("streamfed_site_dead_letters_total"))
        t.add_row(
            c.name + ("" if c.alive else " (stopped)"),
            g("streamfed_site_records_total"),
            f"{rates.get(c.name, 0.0):.0f}",
            f"{dead:.0f}",
            g("streamfed_site_updates_published_total"),
            g("streamfed_site_epsilon_spent", "{:.2f}"),
            g("streamfed_site_prequential_auc{model=served}", "{:.3f}"),
            g("streamfed_site_prequential_auc{model=local}", "{:.3f}"),
            g("streamfed_site_prequential_auc{model=global}", "{:.3f}"),
            g("streamfed_site_base_version"),
        )
    if agg is not None:
        a = agg.samples
        rej = sum(v for k, v in a.items() if k.startswith("streamfed_aggregator_updates_rejected_total"))
        version = max([v for k, v in a.items() if k.startswith("streamfed_aggregator_model_version")] or [0])
        t.caption = (
            f"aggregator: version {version:.0f}, "
            f"accepted {a.get('streamfed_aggregator_updates_accepted_total', 0):.0f}, rejected {rej:.0f}, "
            f"buffer {a.get('streamfed_aggregator_buffer_updates', 0):.0f}"
        )
    return t


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def summarize(
    children: list[Child], failed: list[str], seconds: float, bootstrap: str, run_dir: Path
) -> dict[str, Any]:
    agg = _read(run_dir / "aggregator.json") or {}
    sites: dict[str, Any] = {}
    for c in children:
        if c.kind == "site":
            r = _read(c.summary) or {}
            sites[c.name] = {
                "records": r.get("records", 0),
                "epsilon": r.get("epsilon", 0.0),
                "epsilon_per_record": r.get("epsilon_per_record", 0.0),
                "auc": r.get("auc"),
                "local_auc": r.get("local_auc"),
                "global_auc": r.get("global_auc"),
                "served_weight": r.get("served_weight"),
                "updates_published": r.get("updates_published", 0),
                "dead_letters": r.get("dead_letters", 0),
                "base_version": r.get("base_version", 0),
                "budget_exhausted": r.get("budget_exhausted", False),
            }
    transactions = sum((_read(c.summary) or {}).get("transactions", 0) for c in children if c.kind == "source")
    g_aucs = [s["global_auc"] for s in sites.values() if s["global_auc"] is not None]
    return {
        "seconds": round(seconds, 1),
        "bootstrap": bootstrap,
        "run_dir": str(run_dir),
        "model_versions": agg.get("versions", 0),
        "transactions": transactions,
        "updates_published": sum(s["updates_published"] for s in sites.values()),
        "updates_accepted": agg.get("accepted", 0),
        "updates_rejected": agg.get("rejected", 0),
        "updates_buffered": agg.get("buffered", 0),
        "rejected_reasons": agg.get("rejected_reasons", {}),
        "dead_letters": sum(s["dead_letters"] for s in sites.values()),
        "sites": sites,
        "global": {"version": agg.get("version", 0), "auc": sum(g_aucs) / len(g_aucs) if g_aucs else None},
        "failed": failed,
    }


def up(
    topology: Annotated[str, typer.Argument(help="topology name (in topologies/) or YAML path")] = "fraud",
    duration: Annotated[
        float | None,
        typer.Option(help="stop this many seconds after every process is ready and the data starts (default: Ctrl-C)"),
    ] = None,
    bootstrap: Annotated[
        str | None, typer.Option(help="use this Kafka instead of starting the embedded broker")
    ] = None,
    summary_json: Annotated[Path | None, typer.Option(help="write the run's JSON summary here")] = None,
    state_dir: Annotated[Path | None, typer.Option(help="checkpoints/ledgers/keys (default: a new run folder)")] = None,
    live: Annotated[bool, typer.Option(help="show the live progress table")] = True,
    ready_timeout: Annotated[
        float, typer.Option(help="give up when the aggregator and sites are not all ready after this many seconds")
    ] = 180.0,
) -> None:
    """Run the whole loop on this machine: broker, aggregator, every site and the data sources."""
    from streamfed.broker import EmbeddedBroker
    from streamfed.cli.config import ensure_keys
    from streamfed.kafka import provision_topology

    setup_logging()
    run_dir = Path(".streamfed") / "runs" / time.strftime("%Y%m%d-%H%M%S")
    state = state_dir or run_dir / "state"
    broker: EmbeddedBroker | None = None
    t0 = time.monotonic()
    try:
        if bootstrap is None:
            broker = EmbeddedBroker(log_file=run_dir / "logs" / "broker.log")
            run_dir.joinpath("logs").mkdir(parents=True, exist_ok=True)
            bootstrap = broker.start()
        topo = load(topology, bootstrap, state)
        provision_topology(topo)
        ensure_keys(topology, state)
        children = _plan(topology, bootstrap, state, run_dir, duration if duration is not None else 1e9)
    except StreamfedError as exc:
        if broker:
            broker.stop()
        raise fail(exc) from exc
    console.print(f"broker {bootstrap}; logs and summaries in {run_dir}", highlight=False)
    stop = {"flag": False}

    def _stop(_signum: int, _frame: Any) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    # seconds since the command started: broker up and topics made, every process ready (the data
    # starts), first record learned, first version committed, stop asked, everything stopped
    timeline: dict[str, float] = {"started": time.monotonic() - t0}
    for c in children:
        if c.kind != "source":
            c.start()
    failed: list[str] = []
    last: dict[str, tuple[float, float]] = {}
    rates: dict[str, float] = {}
    sources_started = False
    try:
        with (
            Live(_table(children, 0, rates), console=out, refresh_per_second=2, transient=False)
            if live
            else _NullLive() as view
        ):
            while not stop["flag"]:
                now = time.monotonic() - t0
                if not sources_started:
                    if all(c.ready for c in children if c.kind != "source"):
                        # every process is in its loop: the data starts, and so does --duration
                        timeline["ready"] = now
                        console.print(f"every process ready after {now:.1f} s; sources start", highlight=False)
                        for c in children:
                            if c.kind == "source":
                                c.start()
                        sources_started = True
                    elif now > ready_timeout:
                        waiting = [c.name for c in children if c.kind != "source" and not c.ready]
                        console.print(f"[red]not ready after {ready_timeout:.0f} s: {', '.join(waiting)}[/red]")
                        failed.extend(w for w in waiting if w not in failed)
                        break
                elapsed = now - timeline.get("ready", now)
                if duration is not None and sources_started and elapsed >= duration:
                    break
                for c in children:
                    if c.kind != "source" and not c.alive and c.name not in failed:
                        failed.append(c.name)
                        console.print(
                            f"[red]{c.name} exited with code {c.proc.returncode if c.proc else '?'}; see {c.log}[/red]"
                        )
                    s = c.scrape()
                    if c.kind == "site" and s.get("streamfed_site_records_total", 0) > 0:
                        timeline.setdefault("first_record", now)
                    if c.kind == "aggregator" and any(
                        k.startswith("streamfed_aggregator_versions_total") and v > 0 for k, v in s.items()
                    ):
                        timeline.setdefault("first_version", now)
                    if c.kind == "site" and "streamfed_site_records_total" in s:
                        t_scrape, n = time.monotonic(), s["streamfed_site_records_total"]
                        if c.name in last:
                            dt = t_scrape - last[c.name][0]
                            if dt > 0:
                                rates[c.name] = (n - last[c.name][1]) / dt
                        last[c.name] = (t_scrape, n)
                view.update(_table(children, elapsed, rates))
                if failed and not sources_started:
                    break  # a process died before the data started: nothing to wait for
                time.sleep(0.25 if not sources_started else 1.0)
    finally:
        timeline["stop"] = time.monotonic() - t0
        for kind in ("source", "site", "aggregator"):
            # each kind stops in parallel, with a grace above its own flush bounds (sources 30 s,
            # sites 2 x 10 s, the aggregator's last commit or abort 30 s): a healthy process is never killed
            group = [c for c in children if c.kind == kind and c.proc is not None]
            for c in group:
                c.terminate()
            for c in group:
                code = c.stop(GRACE_S[kind])
                if code not in (0, None, -signal.SIGTERM) and c.name not in failed:
                    failed.append(c.name)
        if broker:
            broker.stop()
        timeline["stopped"] = time.monotonic() - t0
    summary = summarize(children, failed, time.monotonic() - t0, bootstrap, run_dir)
    summary["timeline_seconds"] = {k: round(v, 1) for k, v in timeline.items()}
    summary["duration_seconds"] = round(timeline["stop"] - timeline.get("ready", timeline["stop"]), 1)
    summary["notes"] = explain(summary, topo)
    write_json(run_dir / "summary.json", summary)
    write_json(summary_json, summary)
    out.print_json(json.dumps(summary))
    for note in summary["notes"]:
        console.print(f"[yellow]{note}[/yellow]", highlight=False)
    if failed:
        raise typer.Exit(1)


def explain(summary: dict[str, Any], topo: Any) -> list[str]:
    """Why a run made no version (or less than it should), from its own figures."""
    notes: list[str] = []
    if summary["failed"]:
        notes.append(f"failed: {', '.join(summary['failed'])} (their logs are in {summary['run_dir']}/logs)")
    if summary["model_versions"] > 0:
        return notes
    records = sum(s["records"] for s in summary["sites"].values())
    if "ready" not in summary.get("timeline_seconds", {}):
        notes.append("no version: the aggregator and sites never became ready, so no data was produced")
    elif summary["transactions"] == 0:
        notes.append("no version: the sources produced no records")
    elif records == 0:
        notes.append(f"no version: {summary['transactions']} records were produced but no site read any")
    elif summary["updates_published"] == 0:
        notes.append(
            f"no version: the sites read {records} records but published no update; a site publishes after "
            f"{topo.update.every_records} labelled records or {topo.update.every_seconds:g} s with at least "
            f"{topo.update.min_records} (update.*); run longer or lower them"
        )
    elif summary["updates_accepted"] == 0:
        reasons = ", ".join(f"{k} {v}" for k, v in summary["rejected_reasons"].items()) or "none recorded"
        notes.append(
            f"no version: {summary['updates_published']} updates published, none accepted (rejected: {reasons})"
        )
    else:
        notes.append(
            f"no version: {summary['updates_accepted']} updates accepted, {summary['updates_buffered']} still "
            f"buffered; a version needs aggregation.buffer_size = {topo.aggregation.buffer_size}"
        )
    return notes


class _NullLive:
    def __enter__(self) -> _NullLive:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, _renderable: object) -> None:
        return None
