"""A run as one self-contained HTML page: per site, AUC (served, personal, global) and epsilon over
time, as inline SVG line charts (no scripts, no external files), with the run's summary.

``streamfed up`` writes one per run (``report.html`` in the run folder, or ``--report PATH``) from
what it scrapes once a second.
"""

from __future__ import annotations

import json
import math
from html import escape
from typing import Any

# one colour per series, the same in every chart
COLOURS = {
    "served": "#1b7837",
    "personal": "#2166ac",
    "global": "#b2182b",
    "epsilon": "#762a83",
    "local-only": "#999999",
    "centralised": "#000000",
}

Series = dict[str, list[tuple[float, float]]]


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def line_chart(
    series: Series,
    title: str,
    y_range: tuple[float, float] | None = None,
    width: int = 420,
    height: int = 200,
    x_label: str = "seconds",
) -> str:
    """An SVG line chart of ``series`` (name -> [(x, value)]), x in ``x_label`` units."""
    pts = [p for s in series.values() for p in s if not math.isnan(p[1])]
    left, right, top, bottom = 44, 10, 24, 28
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        f'font-size="10"><text x="{left}" y="14" font-size="12" font-weight="bold">{escape(title)}</text>'
    ]
    if not pts:
        out.append(f'<text x="{left}" y="{height / 2}">no data yet</text></svg>')
        return "".join(out)
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    x1 = x1 if x1 > x0 else x0 + 1
    y0, y1 = y_range if y_range else (min(p[1] for p in pts), max(p[1] for p in pts))
    y1 = y1 if y1 > y0 else y0 + 1

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

    out.append(
        f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
        'fill="none" stroke="#ccc"/>'
    )
    for t in _ticks(y0, y1):
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 4}" y="{sy(t) + 3:.1f}" text-anchor="end">{t:g}</text>')
    for t in _ticks(x0, x1):
        out.append(f'<text x="{sx(t):.1f}" y="{height - bottom + 12}" text-anchor="middle">{t:g}</text>')
    out.append(f'<text x="{width - right}" y="{height - 4}" text-anchor="end">{escape(x_label)}</text>')
    lx = left + 6
    for name, s in series.items():
        colour = COLOURS.get(name, "#333")
        good = [(x, y) for x, y in s if not math.isnan(y)]
        if good:
            d = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in good)
            out.append(f'<polyline points="{d}" fill="none" stroke="{colour}" stroke-width="1.6"/>')
        out.append(f'<text x="{lx}" y="{top + 12}" fill="{colour}">{escape(name)}</text>')
        lx += 7 * len(name) + 14
    out.append("</svg>")
    return "".join(out)


def run_report(summary: dict[str, Any], history: dict[str, dict[str, Series]], title: str) -> str:
    """The HTML page of a run: ``history[site]`` holds ``auc`` and ``epsilon`` series."""
    rows = []
    for sid, s in summary.get("sites", {}).items():

        def f(v: Any, fmt: str = "{:.3f}") -> str:
            return "-" if v is None else fmt.format(v)

        rows.append(
            f"<tr><td>{escape(sid)}</td><td>{s['records']}</td><td>{f(s['auc'])}</td><td>{f(s['local_auc'])}</td>"
            f"<td>{f(s['global_auc'])}</td><td>{f(s['epsilon_per_record'], '{:.2f}')}</td>"
            f"<td>{f(s['epsilon'], '{:.1f}')}</td><td>{s['updates_published']}</td></tr>"
        )
    charts = []
    for sid, h in history.items():
        charts.append(
            f'<div class="site"><h3>{escape(sid)}</h3>'
            + line_chart(h.get("auc", {}), "prequential AUC", (0.0, 1.0))
            + line_chart(h.get("epsilon", {}), "lifetime epsilon spent (all releases)")
            + "</div>"
        )
    notes = "".join(f"<li>{escape(n)}</li>" for n in summary.get("notes", []))
    g = summary.get("global", {})
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>
body{{font-family:sans-serif;margin:24px;color:#222}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} td:first-child{{text-align:left}}
.site{{display:inline-block;margin:0 18px 18px 0;vertical-align:top}} h3{{margin:4px 0}}
</style></head><body>
<h1>{escape(title)}</h1>
<p>{summary.get("model_versions", 0)} versions (global version {g.get("version", 0)}, mean global AUC at the
sites {"-" if g.get("auc") is None else f"{g['auc']:.3f}"}); {summary.get("transactions", 0)} records produced;
updates published {summary.get("updates_published", 0)}, accepted {summary.get("updates_accepted", 0)}, rejected
{summary.get("updates_rejected", 0)}; dead letters {summary.get("dead_letters", 0)}. Time axis: seconds since
the data started. Epsilon per record is the guarantee of each record; the lifetime figure composes every
release of the site (see docs/privacy.md).</p>
{f"<ul>{notes}</ul>" if notes else ""}
<table><tr><th>site</th><th>records</th><th>AUC served</th><th>AUC personal</th><th>AUC global</th>
<th>epsilon per record</th><th>lifetime epsilon</th><th>updates</th></tr>{"".join(rows)}</table>
{"".join(charts)}
<details><summary>summary JSON</summary><pre>{escape(json.dumps(summary, indent=2, sort_keys=True))}</pre></details>
</body></html>
"""
