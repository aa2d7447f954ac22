"""`streamfed up`: broker, aggregator, every site and the data sources, on one machine.

Each component runs as its own process (as in production), started with the same commands a
person would type; `up` watches them through their Prometheus endpoints and collects their JSON
summaries into one.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from streamfed.cli.common import console, fail, load, setup_logging, write_json
from streamfed.cli.up_children import GRACE_S, START_GATE, Child, plan
from streamfed.cli.up_summary import AUC_KEYS, explain, record, summarize
from streamfed.errors import StreamfedError

out = Console()


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
            *(g(AUC_KEYS[p], "{:.3f}") for p in ("served", "personal", "global")),
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
    report: Annotated[
        Path | None,
        typer.Option(
            help="also write the HTML report (AUC and epsilon over time per site) here; always in the run folder"
        ),
    ] = None,
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
    t0, t0_unix = time.monotonic(), time.time()
    try:
        if bootstrap is None:
            broker = EmbeddedBroker(log_file=run_dir / "logs" / "broker.log")
            run_dir.joinpath("logs").mkdir(parents=True, exist_ok=True)
            bootstrap = broker.start()
        topo = load(topology, bootstrap, state)
        provision_topology(topo)
        ensure_keys(topology, state)
        children = plan(topo, topology, bootstrap, state, run_dir, duration if duration is not None else 1e9)
    except StreamfedError as exc:
        if broker:
            broker.stop()
        raise fail(exc) from exc
    console.print(f"broker {bootstrap}; logs, summaries and report.html in {run_dir}", highlight=False)
    stop = {"flag": False}

    def _stop(_signum: int, _frame: Any) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    # seconds since the command started: broker up and topics made, every process ready (the data
    # starts), first record learned, first version committed, stop asked, everything stopped
    timeline: dict[str, float] = {"started": time.monotonic() - t0}
    for c in children:  # the sources too: they set up, then wait for the start gate
        c.start()
    failed: list[str] = []
    last: dict[str, tuple[float, float]] = {}
    rates: dict[str, float] = {}
    sources_started = False
    history: dict[str, dict[str, Any]] = {}  # site -> {"auc": series, "epsilon": series}, for the report
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
                        (run_dir / START_GATE).touch()
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
                    if c.kind == "aggregator" and any(
                        k.startswith("streamfed_aggregator_versions_total") and v > 0 for k, v in s.items()
                    ):
                        timeline.setdefault("first_version", now)
                    if c.kind != "site":
                        continue
                    if sources_started:
                        record(history.setdefault(c.name, {}), s, elapsed)
                    if "streamfed_site_records_total" in s:
                        if s["streamfed_site_records_total"] > 0:
                            timeline.setdefault("first_record", now)
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
    summary["timeline_start_unix"] = round(t0_unix, 3)  # the timeline's 0 (benchmarks/startup.py)
    summary["duration_seconds"] = round(timeline["stop"] - timeline.get("ready", timeline["stop"]), 1)
    summary["notes"] = explain(summary, topo)
    write_json(run_dir / "summary.json", summary)
    write_json(summary_json, summary)
    from streamfed.report import run_report

    page = run_report(summary, history, f"streamfed up {topo.name}: {run_dir.name}")
    for target in (run_dir / "report.html", report):
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(page)
    out.print_json(json.dumps(summary))
    for note in summary["notes"]:
        console.print(f"[yellow]{note}[/yellow]", highlight=False)
    if failed:
        raise typer.Exit(1)


class _NullLive:
    def __enter__(self) -> _NullLive:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, _renderable: object) -> None:
        return None
