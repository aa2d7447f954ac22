"""Options and helpers shared by the commands."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from streamfed.errors import StreamfedError
from streamfed.topology import Topology, load_topology

console = Console(stderr=True)

TopologyOpt = Annotated[str, typer.Option("--topology", "-t", help="topology name (in topologies/) or YAML path")]
BootstrapOpt = Annotated[
    str | None, typer.Option("--bootstrap", help="Kafka bootstrap servers, overriding the topology's")
]
StateDirOpt = Annotated[
    Path | None, typer.Option("--state-dir", help="folder for checkpoints, ledgers and keys (default: topology's)")
]
MetricsPortOpt = Annotated[int | None, typer.Option("--metrics-port", help="serve Prometheus /metrics here (0: any)")]
SummaryOpt = Annotated[Path | None, typer.Option("--summary-json", help="write a JSON summary here on exit")]
DurationOpt = Annotated[float | None, typer.Option("--duration", help="stop after this many seconds")]
StartGateOpt = Annotated[
    Path | None,
    typer.Option(
        "--start-gate",
        help="set up, then wait until this file exists before producing (`streamfed up` starts its sources "
        "with every other process and creates it once they are all ready)",
    ),
]


def wait_for_gate(gate: Path | None, stop: threading.Event) -> bool:
    """Wait until ``gate`` exists (at once if None); False if ``stop`` was set first."""
    while gate is not None and not gate.exists():
        if stop.wait(0.05):
            return False
    return True


LOG_FORMATS = ("text", "json")


class JsonLines(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, process, and the
    exception's traceback when there is one (for log shippers: Loki, Elasticsearch, Cloud Logging)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr at ``STREAMFED_LOG_LEVEL``, as text or, with ``STREAMFED_LOG_FORMAT=json`` (set by
    ``streamfed --log-format json``, inherited by the processes ``up`` starts), as JSON lines."""
    level = (
        logging.DEBUG
        if verbose
        else getattr(logging, os.environ.get("STREAMFED_LOG_LEVEL", "INFO").upper(), logging.INFO)
    )
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("STREAMFED_LOG_FORMAT", "text") == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


def load(topology: str, bootstrap: str | None = None, state_dir: Path | None = None, kafka: bool = False) -> Topology:
    """The topology with the command line's overrides; with ``kafka``, also a broker that answers
    (one line naming the address, before anything is created, when none does)."""
    topo = _load(topology, bootstrap, state_dir)
    if kafka:
        from streamfed.kafka.clients import check_reachable

        check_reachable(topo.kafka)
    return topo


def _load(topology: str, bootstrap: str | None, state_dir: Path | None) -> Topology:
    overrides: dict[str, Any] = {}
    if bootstrap:
        overrides["kafka"] = {"bootstrap_servers": bootstrap}
    if state_dir is not None:
        overrides["state_dir"] = str(state_dir)
    return load_topology(topology, overrides)


def fail(exc: StreamfedError) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False, soft_wrap=True)  # one line
    return typer.Exit(2)


def stop_on_signals(event: threading.Event) -> None:
    """SIGTERM and SIGINT set ``event``; the service finishes its current batch and exits cleanly."""

    def handler(signum: int, _frame: Any) -> None:
        logging.getLogger("streamfed").info("signal %d: stopping", signum)
        event.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def write_json(path: Path | None, data: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)
