"""`streamfed models list|show|export`: versions from the models topic or the aggregator's cache."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from streamfed.cli.common import BootstrapOpt, StateDirOpt, TopologyOpt, fail, load
from streamfed.errors import StreamfedError

models_app = typer.Typer(help="Model versions, their lineage and DP summary.", no_args_is_help=True)
out = Console()
CacheOpt = Annotated[bool, typer.Option("--from-cache", help="read the aggregator's local cache, not Kafka")]


def _versions(topology: str, bootstrap: str | None, state_dir: Path | None, from_cache: bool) -> list[dict[str, Any]]:
    from streamfed.registry import LocalRegistry, dedupe_versions, read_topic
    from streamfed.serde.avro import AvroCodec
    from streamfed.serde.registry import registry_for

    topo = load(topology, bootstrap, state_dir, kafka=not from_cache)
    if from_cache:
        reg = LocalRegistry(topo.home / "aggregator" / "registry")
        return [v for n in reg.list_versions() if (v := reg.get_version(n)) is not None]
    recs = [
        r
        for _, r in read_topic(topo.kafka, topo.models_topic, AvroCodec("model_version", registry_for(topo.kafka)))
        if isinstance(r, dict) and r["model"] == topo.model.name
    ]
    return dedupe_versions(recs)


def _pick(versions: list[dict[str, Any]], version: int | None) -> dict[str, Any]:
    if not versions:
        raise typer.BadParameter("no model versions found")
    if version is None:
        return versions[-1]
    for v in versions:
        if v["version"] == version:
            return v
    raise typer.BadParameter(f"no version {version}; have {versions[0]['version']}..{versions[-1]['version']}")


def _dp(v: dict[str, Any]) -> dict[str, Any]:
    by_site: dict[str, float] = {}
    for c in v["contributions"]:
        by_site[c["site_id"]] = max(by_site.get(c["site_id"], 0.0), c["epsilon_spent"])
    return {
        "delta": v["delta"],
        "site_epsilon_spent": by_site,
        "noise_std": sorted({c["noise_std"] for c in v["contributions"]}),
        "clip_norm": sorted({c["clip_norm"] for c in v["contributions"]}),
    }


@models_app.command("list")
def list_(
    topology: TopologyOpt = "fraud",
    bootstrap: BootstrapOpt = None,
    state_dir: StateDirOpt = None,
    from_cache: CacheOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """One line per version: parent, time, contributing updates, sites, max epsilon."""
    try:
        versions = _versions(topology, bootstrap, state_dir, from_cache)
    except StreamfedError as exc:
        raise fail(exc) from exc
    rows = [
        {
            "version": v["version"],
            "parent": v["parent_version"],
            "created_ms": v["created_ms"],
            "updates": len(v["contributions"]),
            "sites": sorted({c["site_id"] for c in v["contributions"]}),
            "max_epsilon": max((c["epsilon_spent"] for c in v["contributions"]), default=0.0),
            "energy_joules": v["cost"]["energy_joules"],
            "co2e_grams": v["cost"]["co2e_grams"],
            "params_sha256": v["params_sha256"][:12],
        }
        for v in versions
    ]
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    t = Table(title=f"{len(rows)} versions")
    for col in ("version", "parent", "created", "updates", "sites", "max ε", "energy J", "CO2e g", "sha256"):
        t.add_column(col)
    for r in rows:
        t.add_row(
            str(r["version"]),
            str(r["parent"]),
            time.strftime("%H:%M:%S", time.localtime(r["created_ms"] / 1000)),
            str(r["updates"]),
            ",".join(r["sites"]),
            f"{r['max_epsilon']:.2f}",
            f"{r['energy_joules']:.1f}",
            f"{r['co2e_grams']:.4f}",
            r["params_sha256"],
        )
    out.print(t)


@models_app.command("show")
def show(
    version: Annotated[int | None, typer.Argument(help="version (default: latest)")] = None,
    topology: TopologyOpt = "fraud",
    bootstrap: BootstrapOpt = None,
    state_dir: StateDirOpt = None,
    from_cache: CacheOpt = False,
) -> None:
    """A version's metadata, lineage (every contributing update) and DP summary, as JSON."""
    try:
        v = _pick(_versions(topology, bootstrap, state_dir, from_cache), version)
    except StreamfedError as exc:
        raise fail(exc) from exc
    doc = {k: val for k, val in v.items() if k != "params"}
    doc["num_params"] = len(v["params"]) // 4
    doc["dp"] = _dp(v)
    print(json.dumps(doc, indent=1))


@models_app.command("export")
def export(
    path: Annotated[Path, typer.Argument(help="output .npz file")],
    version: Annotated[int | None, typer.Option(help="version (default: latest)")] = None,
    topology: TopologyOpt = "fraud",
    bootstrap: BootstrapOpt = None,
    state_dir: StateDirOpt = None,
    from_cache: CacheOpt = False,
) -> None:
    """Write a version's parameters as .npz: one array per segment, plus metadata (load with
    ``streamfed.registry.export.load_exported``)."""
    from streamfed.registry.export import export_npz

    try:
        v = _pick(_versions(topology, bootstrap, state_dir, from_cache), version)
    except StreamfedError as exc:
        raise fail(exc) from exc
    export_npz(v, path)
    out.print(f"version {v['version']} ({len(v['params']) // 4} parameters) written to {path}")
    _ = np  # numpy is the format's reader


@models_app.command("watch")
def watch(
    topology: TopologyOpt = "fraud",
    bootstrap: BootstrapOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    count: Annotated[int | None, typer.Option(help="stop after this many versions")] = None,
    duration: Annotated[float | None, typer.Option(help="stop after this many seconds")] = None,
) -> None:
    """Follow the models topic: the latest version first, then each new one as it is committed
    (what a serving app sees through ``streamfed.serving.ModelSubscriber``)."""
    import queue

    from streamfed.serving import ModelSubscriber, Scorer

    arrived: queue.Queue[Scorer] = queue.Queue()
    try:
        topo = load(topology, bootstrap, kafka=True)
        sub = ModelSubscriber(topo.kafka, topo.model.name, topo.models_topic, on_version=arrived.put).start()
    except StreamfedError as exc:
        raise fail(exc) from exc
    deadline = None if duration is None else time.monotonic() + duration
    seen = 0
    try:
        while (count is None or seen < count) and (deadline is None or time.monotonic() < deadline):
            try:
                s = arrived.get(timeout=0.5)
            except queue.Empty:
                continue
            seen += 1
            row = {
                "model": s.model_name,
                "version": s.version,
                "created_ms": s.created_ms,
                "params_sha256": s.params_sha256,
                "num_params": int(s.params.size),
                "features": len(s.featurizer.names),
            }
            if as_json:
                print(json.dumps(row), flush=True)
            else:
                when = time.strftime("%H:%M:%S", time.localtime(s.created_ms / 1000))
                print(f"{when} {s.model_name} v{s.version} sha256 {s.params_sha256[:12]} ({row['num_params']} params)")
    except KeyboardInterrupt:
        pass
    finally:
        sub.close()
