"""A topology drawn: sources, topics, sites, the aggregator and what it publishes.

:func:`mermaid` gives a Mermaid flowchart (GitHub and most Markdown viewers draw it);
:func:`svg` a self-contained SVG with a fixed layered layout (no Graphviz needed): data sources,
each site's transaction topic, the sites, the updates topic, the aggregator and the models topic,
with the models topic's arrow back to every site. What never leaves a site (raw records, the
personal model) is drawn inside the site's box.
"""

from __future__ import annotations

from html import escape

from streamfed.topology.spec import SiteSpec, Topology


def _source(site: SiteSpec) -> str:
    if site.simulator is not None:
        return "simulator"
    if site.source is not None:
        return f"replay {site.source.path.name}"
    return "your producer"


def _personal(topo: Topology) -> str:
    return "personal model (online + deep)" if topo.model.deep.enabled else "personal model (online)"


def _node_id(kind: str, name: str) -> str:
    return f"{kind}_" + "".join(ch if ch.isalnum() else "_" for ch in name)


def mermaid(topo: Topology) -> str:
    """A Mermaid ``flowchart LR`` of the topology."""
    secure = topo.aggregation.secure is not None
    lines = ["flowchart LR"]
    upd, agg, models = "t_updates", "aggregator", "t_models"
    personal = _personal(topo)
    for s in topo.sites:
        src, topic, site = _node_id("src", s.id), _node_id("t", s.id), _node_id("site", s.id)
        lines.append(f'  {src}(["{_source(s)}"]) --> {topic}[["{topo.transactions_topic(s)}"]]')
        lines.append(f'  {topic} --> {site}["site {s.id}<br/>{personal}<br/>raw records stay here"]')
        lines.append(f"  {site} -- signed DP update --> {upd}")
        lines.append(f"  {models} -. version .-> {site}")
    lines.append(f'  {upd}[["{topo.updates_topic}"]] --> {agg}{{{{"aggregator<br/>{_agg_label(topo)}"}}}}')
    lines.append(f'  {agg} -- version, lineage --> {models}[("{topo.models_topic} (compacted)")]')
    lines.append(f'  {agg} -. rejected .-> t_rejected[["{topo.rejected_topic}"]]')
    lines.append(f'  {models} --> serving(["serving apps: streamfed.ModelSubscriber"])')
    if secure:
        lines.append(f'  {agg} <-. masks, shares .-> t_secagg[["{topo.secagg_topic}"]]')
    lines.append(
        f"  %% privacy: {topo.privacy.mechanism}, per-record epsilon {topo.privacy.epsilon:g}, "
        f"delta {topo.privacy.delta:g}"
    )
    return "\n".join(lines) + "\n"


def _agg_label(topo: Topology) -> str:
    a = topo.aggregation
    label = f"{a.strategy} K={a.buffer_size}, {a.rule}, server {a.server_optimizer}"
    return label + (", secure" if a.secure is not None else "")


# -- SVG -----------------------------------------------------------------------------------------
_COLS = (20, 190, 460, 700, 920, 1150)  # x of: source, transaction topic, site, updates, aggregator, models
_W = {"source": 150, "topic": 250, "site": 200, "updates": 190, "aggregator": 200, "models": 200}
_ROW = 84
_TOP = 70


def _fit(text: str, width: float) -> str:
    """Shorten ``text`` with an ellipsis to fit ``width`` pixels (about 6.6 per character at 12 px)."""
    n = int((width - 10) / 6.6)
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def _box(x: float, y: float, w: float, h: float, lines: list[str], style: str) -> str:
    rx = {"topic": 4, "site": 10, "store": 16, "source": 22, "agg": 10}[style]
    fill = {"topic": "#eef3fb", "site": "#eaf6ec", "store": "#fdf3e3", "source": "#f4f4f4", "agg": "#f3ecfa"}[style]
    out = [f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="{rx}" fill="{fill}" stroke="#555"/>']
    step = 15
    y0 = y + h / 2 - (len(lines) - 1) * step / 2 + 4
    for i, text in enumerate(lines):
        weight = ' font-weight="bold"' if i == 0 else ""
        out.append(
            f'<text x="{x + w / 2}" y="{y0 + i * step}" text-anchor="middle"{weight}>{escape(_fit(text, w))}</text>'
        )
    return "\n".join(out)


def _arrow(x1: float, y1: float, x2: float, y2: float, dashed: bool = False, label: str = "") -> str:
    dash = ' stroke-dasharray="5,4"' if dashed else ""
    mx = (x1 + x2) / 2
    path = f"M{x1},{y1} C{mx},{y1} {mx},{y2} {x2},{y2}"
    out = f'<path d="{path}" fill="none" stroke="#555"{dash} marker-end="url(#arrow)"/>'
    if label:
        out += f'<text x="{mx}" y="{(y1 + y2) / 2 - 4}" text-anchor="middle" class="small">{escape(label)}</text>'
    return out


def svg(topo: Topology) -> str:
    """A standalone SVG drawing of the topology."""
    n = len(topo.sites)
    height = max(_TOP + n * _ROW + 30, _TOP + n * _ROW / 2 + 130)
    width = _COLS[5] + _W["models"] + 20
    mid = _TOP + n * _ROW / 2 - 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        "<style>.small{font-size:10px;fill:#444}</style>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>',
        f'<text x="20" y="28" font-size="16" font-weight="bold">{escape(topo.name)}: '
        f"{escape(topo.description or topo.model.name)}</text>",
        f'<text x="20" y="48" class="small">privacy {topo.privacy.mechanism}, per-record epsilon '
        f"{topo.privacy.epsilon:g} at delta {topo.privacy.delta:g}, clip {topo.privacy.clip_norm:g}; "
        f"a site publishes every {topo.update.every_records} labelled records or "
        f"{topo.update.every_seconds:g} s</text>",
    ]
    upd_x, agg_x, mod_x = _COLS[3], _COLS[4], _COLS[5]
    box_h = 56
    parts.append(_box(upd_x, mid, _W["updates"], box_h, ["updates", topo.updates_topic], "topic"))
    parts.append(_box(agg_x, mid, _W["aggregator"], box_h, ["aggregator", _agg_label(topo)], "agg"))
    parts.append(_box(mod_x, mid, _W["models"], box_h, ["models (compacted)", topo.models_topic], "store"))
    parts.append(_arrow(upd_x + _W["updates"], mid + box_h / 2, agg_x, mid + box_h / 2))
    parts.append(_arrow(agg_x + _W["aggregator"], mid + box_h / 2, mod_x, mid + box_h / 2, label="versions"))
    serve_y = mid + box_h + 40
    parts.append(_box(mod_x, serve_y, _W["models"], 40, ["serving apps", "streamfed.ModelSubscriber"], "source"))
    cx = mod_x + _W["models"] / 2
    parts.append(f'<path d="M{cx},{mid + box_h} L{cx},{serve_y}" stroke="#555" marker-end="url(#arrow)"/>')
    personal = _personal(topo)
    for i, s in enumerate(topo.sites):
        y = _TOP + i * _ROW
        parts.append(_box(_COLS[0], y, _W["source"], box_h, _source(s).split(" ", 1), "source"))
        parts.append(_box(_COLS[1], y, _W["topic"], box_h, ["transactions", topo.transactions_topic(s)], "topic"))
        parts.append(
            _box(
                _COLS[2],
                y,
                _W["site"],
                box_h,
                [f"site {s.id}", personal, "raw records stay here"],
                "site",
            )
        )
        cy = y + box_h / 2
        parts.append(_arrow(_COLS[0] + _W["source"], cy, _COLS[1], cy))
        parts.append(_arrow(_COLS[1] + _W["topic"], cy, _COLS[2], cy))
        parts.append(_arrow(_COLS[2] + _W["site"], cy - 8, upd_x, mid + box_h / 2, label="DP update" if i == 0 else ""))
        # the new version goes back to the site (drawn under the boxes, dashed)
        parts.append(
            f'<path d="M{mod_x + 20},{mid + box_h} C{mod_x},{height - 20} {_COLS[2] + _W["site"] + 60},{cy + 30} '
            f'{_COLS[2] + _W["site"]},{cy + 12}" fill="none" stroke="#999" stroke-dasharray="5,4" '
            'marker-end="url(#arrow)"/>'
        )
    parts.append(
        f'<text x="{_COLS[2]}" y="{height - 12}" class="small">dashed: each new version goes back to every site, '
        "which rebases on it</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
