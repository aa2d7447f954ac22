"""`streamfed topology ...` and `streamfed keys ...`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console

from streamfed.cli.common import StateDirOpt, TopologyOpt, fail, load
from streamfed.errors import StreamfedError

topology_app = typer.Typer(help="Check and show topologies.", no_args_is_help=True)
keys_app = typer.Typer(help="Site keys: Ed25519 for signing, X25519 for secure aggregation.", no_args_is_help=True)
out = Console()


@topology_app.command("validate")
def validate(file: Annotated[str, typer.Argument(help="topology YAML file or name")]) -> None:
    """Print the resolved topology (defaults filled in), or the errors naming each field and its choices."""
    from streamfed.privacy.accountant import RELATION_NAME, resolve

    try:
        topo = load(file)
        mech, cal = resolve(topo.privacy)
    except StreamfedError as exc:
        raise fail(exc) from exc
    sigma = mech.noise_multiplier
    doc = topo.model_dump(mode="json")
    for group in ("settings", "consumer_settings", "producer_settings"):
        for key in doc["kafka"][group]:
            if any(word in key for word in ("password", "secret")):
                doc["kafka"][group][key] = "********"
    out.print(yaml.safe_dump(doc, sort_keys=False), end="", highlight=False)
    if mech.kind == "window_sum":
        how = f"one noised sum per window of {topo.update.every_records} records; each record in 1 release"
    else:
        how = (
            f"{mech.steps} noised steps per release, Poisson rate {mech.sampling_rate:g} over the last "
            f"{mech.releases_per_record} windows; each record in {mech.releases_per_record} releases"
        )
    chosen = "given" if cal.method == "given" else f"calibrated by {cal.method.upper()}"
    out.print(
        f"# privacy: mechanism {mech.kind} ({how}); noise multiplier sigma = {sigma:.4f} ({chosen}; "
        f"noise std {mech.noise_std:.4f} on each sum, sensitivity C = {mech.clip_norm:g}); per-record epsilon "
        f"at delta = {topo.privacy.delta:g}: RDP {cal.epsilon_rdp:.3f}, PLD {cal.epsilon_pld:.3f} "
        f"(guarantee {cal.epsilon:.3f}); adjacency: {RELATION_NAME}",
        highlight=False,
        soft_wrap=True,
    )
    if topo.aggregation.secure is not None:
        from streamfed.privacy.secagg import secagg_params

        sp = secagg_params(topo)
        out.print(
            f"# secure aggregation: cohort {len(sp.cohort)}, threshold t = {sp.threshold}, per-site noise std "
            f"{sigma * topo.privacy.clip_norm / sp.noise_divisor:.4f} (sigma C / sqrt(t); every unmasked sum "
            f"carries >= sigma C), coordinate bound {sp.bound:.4f}, quantisation scale {sp.scale:.4g}",
            highlight=False,
            soft_wrap=True,
        )
    out.print(
        f"# features ({len(topo.model.features.names())}): {', '.join(topo.model.features.names())}",
        highlight=False,
        soft_wrap=True,
    )


@topology_app.command("init")
def init(
    from_csv: Annotated[Path, typer.Option("--from-csv", help="CSV file (.gz read as gzip) to draft from")],
    label: Annotated[str, typer.Option(help="column holding the label")],
    site_column: Annotated[
        str | None, typer.Option(help="column whose values are the sites (one site per value; default: one site)")
    ] = None,
    positive: Annotated[
        list[str] | None, typer.Option(help="label value meaning positive (repeatable; default: inferred)")
    ] = None,
    name: Annotated[str | None, typer.Option(help="topology name (default: from the file name)")] = None,
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="where to write NAME.yaml and NAME.avsc")] = Path(
        "."
    ),
    separator: Annotated[str | None, typer.Option(help="column separator (default: sniffed)")] = None,
    rate: Annotated[float, typer.Option(help="records per second each site replays")] = 200.0,
    drop: Annotated[
        list[str] | None, typer.Option(help="column to leave out (repeatable), e.g. one known only after the label")
    ] = None,
    force: Annotated[bool, typer.Option(help="replace existing files")] = False,
) -> None:
    """Draft a topology and its Avro record schema from a CSV's header and values, then validate them."""
    from streamfed.topology.draft import draft_from_csv, write_draft

    try:
        draft = draft_from_csv(
            from_csv,
            out_dir,
            label=label,
            name=name,
            site_column=site_column,
            positive=positive,
            separator=separator,
            rate=rate,
            drop=drop,
        )
        topo_file, schema_file = write_draft(draft, from_csv, out_dir, force)
        topo = load(str(topo_file))
    except StreamfedError as exc:
        raise fail(exc) from exc
    for note in draft.notes:
        out.print(f"note: {note}", highlight=False, soft_wrap=True)
    out.print(
        f"wrote {topo_file} ({len(topo.sites)} site(s), {len(topo.model.features.names())} features) and "
        f"{schema_file}; review them, then: streamfed up {topo_file}",
        highlight=False,
        soft_wrap=True,
    )


@topology_app.command("graph")
def graph(
    file: Annotated[str, typer.Argument(help="topology YAML file or name")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="mermaid or svg")] = "mermaid",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write here (default: stdout)")] = None,
) -> None:
    """Draw the topology: sources, topics, sites, the aggregator and the models topic (Mermaid or SVG)."""
    from streamfed.topology.graph import mermaid, svg

    if fmt not in ("mermaid", "svg"):
        raise fail(StreamfedError(f"--format {fmt}: valid: mermaid, svg"))
    try:
        topo = load(file)
    except StreamfedError as exc:
        raise fail(exc) from exc
    text = svg(topo) if fmt == "svg" else mermaid(topo)
    if output is None:
        print(text, end="")
    else:
        output.write_text(text)
        out.print(f"wrote {output}", highlight=False)


@keys_app.command("generate")
def generate(
    topology: TopologyOpt = "fraud",
    site: Annotated[list[str] | None, typer.Option("--site", "-s", help="site id (repeatable; default: all)")] = None,
    state_dir: StateDirOpt = None,
    force: Annotated[bool, typer.Option(help="replace existing keys")] = False,
) -> None:
    """Write each site's Ed25519 signing key pair and X25519 secure-aggregation key pair."""
    from streamfed.privacy.secagg import write_x25519_keypair
    from streamfed.privacy.signing import write_keypair

    try:
        topo = load(topology, None, state_dir)
        ids = [s.id for s in topo.sites]
        for s in site or []:
            if s not in ids:
                raise typer.BadParameter(f'unknown site "{s}"; valid: {", ".join(ids)}')
        for spec in topo.sites:
            if site and spec.id not in site:
                continue
            priv, pub = topo.private_key_path(spec), topo.public_key_path(spec)
            wrote = write_keypair(priv, pub, overwrite=force)
            out.print(f"{spec.id}: {'wrote' if wrote else 'kept'} {priv} and {pub}", highlight=False)
            xpriv, xpub = topo.secagg_private_key_path(spec), topo.secagg_public_key_path(spec)
            wrote = write_x25519_keypair(xpriv, xpub, overwrite=force)
            out.print(f"{spec.id}: {'wrote' if wrote else 'kept'} {xpriv} and {xpub}", highlight=False)
    except StreamfedError as exc:
        raise fail(exc) from exc


def ensure_keys(topo_path: str, state_dir: Path | None) -> None:
    """Generate any missing site keys (used by `streamfed up`)."""
    from streamfed.privacy.secagg import write_x25519_keypair
    from streamfed.privacy.signing import write_keypair

    topo = load(topo_path, None, state_dir)
    for spec in topo.sites:
        write_keypair(topo.private_key_path(spec), topo.public_key_path(spec))
        write_x25519_keypair(topo.secagg_private_key_path(spec), topo.secagg_public_key_path(spec))


@topology_app.command("reference")
def reference() -> None:
    """Print the topology reference (every field, its type, default and meaning) as Markdown."""
    from streamfed.topology.reference import reference_markdown

    print(reference_markdown())


@keys_app.command("rotate")
def rotate(
    site: Annotated[str, typer.Option("--site", "-s", help="site id")],
    topology: TopologyOpt = "fraud",
    state_dir: StateDirOpt = None,
    grace: Annotated[float, typer.Option(help="seconds the old public key stays accepted")] = 3600.0,
) -> None:
    """Replace a site's key pair without downtime: the running site signs with the new key from its
    next update on, and the aggregator accepts the old one until the grace window ends."""
    from streamfed.privacy.signing import rotate_keypair

    try:
        topo = load(topology, None, state_dir)
        ids = [s.id for s in topo.sites]
        if site not in ids:
            raise typer.BadParameter(f'unknown site "{site}"; valid: {", ".join(ids)}')
        spec = topo.site(site)
        new_id = rotate_keypair(topo.private_key_path(spec), topo.public_key_path(spec), grace)
    except StreamfedError as exc:
        raise fail(exc) from exc
    out.print(f"{site}: new key {new_id}; the previous key is accepted for {grace:.0f} s more", highlight=False)
