"""`streamfed privacy report`: releases, sigma, clip and epsilon (RDP and PLD) per site and version."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from streamfed.cli.common import BootstrapOpt, StateDirOpt, TopologyOpt, fail, load
from streamfed.cli.models import CacheOpt, _versions
from streamfed.errors import StreamfedError

privacy_app = typer.Typer(help="Privacy accounting for auditors.", no_args_is_help=True)
out = Console()


@privacy_app.command("report")
def report(
    topology: TopologyOpt = "fraud",
    bootstrap: BootstrapOpt = None,
    state_dir: StateDirOpt = None,
    from_cache: CacheOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    latest_only: Annotated[bool, typer.Option("--latest", help="only the latest version")] = False,
) -> None:
    """Per site and model version: releases, mechanism, sigma, clip, lifetime and per-record epsilon by
    RDP and PLD at delta (zero-out adjacency), from the sites' ledgers
    (<state_dir>/<topology>/sites/<id>/ledger.jsonl, and sites/<id>/workers/<worker>/ledger.jsonl
    of a site run as several processes) and the model versions."""
    from streamfed.privacy.accountant import PrivacyLedger
    from streamfed.privacy.report import privacy_rows
    from streamfed.site.build import site_ledgers

    try:
        topo = load(topology, bootstrap, state_dir)
        ledgers = {space: PrivacyLedger(topo.privacy.delta, path=path).releases for space, path in site_ledgers(topo)}
        versions = _versions(topology, bootstrap, state_dir, from_cache)
    except StreamfedError as exc:
        raise fail(exc) from exc
    rows = privacy_rows(ledgers, versions, topo.privacy.delta, topo.privacy.max_updates_per_record)
    if latest_only and rows:
        last = rows[-1].version
        rows = [r for r in rows if r.version == last]
    if as_json:
        print(
            json.dumps(
                {
                    "topology": topo.name,
                    "delta": topo.privacy.delta,
                    "k": topo.privacy.max_updates_per_record,
                    "adjacency": "zero-out (REPLACE_SPECIAL)",
                    "rows": [r.to_json() for r in rows],
                },
                indent=1,
            )
        )
        return
    t = Table(
        title=f"{topo.name}: privacy by site and version (delta = {topo.privacy.delta:g}, "
        f"k = {topo.privacy.max_updates_per_record}, zero-out adjacency)"
    )
    for col in (
        "version",
        "site",
        "releases",
        "mechanism",
        "sigma",
        "clip",
        "ε RDP",
        "ε PLD",
        "ε/record RDP",
        "ε/record PLD",
    ):
        t.add_column(col, justify="left" if col == "site" else "right")
    for r in rows:
        t.add_row(
            str(r.version),
            r.site,
            str(r.releases),
            r.mechanism if r.mechanism == "window_sum" else f"{r.mechanism} {r.steps}x q={r.sampling_rate:g}",
            f"{r.sigma:.3f}",
            f"{r.clip_norm:g}",
            f"{r.epsilon_rdp:.3f}",
            f"{r.epsilon_pld:.3f}",
            f"{r.epsilon_per_record_rdp:.3f}",
            f"{r.epsilon_per_record_pld:.3f}",
        )
    out.print(t)
