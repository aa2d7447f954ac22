"""Shared by the benchmark scripts: the machine header, tables, ratio lines, repeated timing.

Every benchmark runs its baseline in the same invocation and prints ratios: the machines these run
on are shared and noisy, so absolute figures are context only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("streamfed", "confluent-kafka", "fastavro", "river", "torch", "numpy", "dp-accounting", "cryptography")


def _lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    try:
        import confluent_kafka

        out["librdkafka"] = confluent_kafka.libversion()[0]
    except ImportError:
        pass
    return out


def header(title: str, args: object) -> None:
    """Print what ran where: the benchmark, its arguments, the machine and the package versions."""
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = os.getloadavg()
    print(f"# {title}")
    print(f"date      {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}  commit {_git_commit()}")
    print(f"command   {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"args      {vars(args) if hasattr(args, '__dict__') else args}")
    print(
        f"machine   {_lscpu_model()}, nproc {os.cpu_count()}, {mem_gib:.0f} GiB, "
        f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(f"python    {platform.python_version()} ({platform.platform()})")
    print("packages  " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    print(flush=True)


@contextlib.contextmanager
def kafka_or_embedded(bootstrap: str | None) -> Iterator[str]:
    """``bootstrap`` if given, else an embedded broker's address for the ``with`` block."""
    if bootstrap is not None:
        yield bootstrap
        return
    from streamfed.broker import EmbeddedBroker

    broker = EmbeddedBroker()
    try:
        yield broker.start()
    finally:
        broker.stop()


def table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain fixed-width table (also valid Markdown)."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(str(col)), *(len(r[i]) for r in cells)) if cells else len(col) for i, col in enumerate(columns)]
    print("| " + " | ".join(str(c).ljust(w) for c, w in zip(columns, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print("| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |")
    print(flush=True)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        if v != v:  # NaN
            return "-"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3g}" if abs(v) < 0.01 and v != 0 else f"{v:.3f}"
    return str(v)


def ratio(name: str, value: float, target: str | None = None) -> None:
    """The line CI and the README read: ``RATIO a/b = 0.42``."""
    extra = f"  (target {target})" if target else ""
    print(f"RATIO {name} = {value:.3f}{extra}", flush=True)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def spread(values: Sequence[float]) -> str:
    """``min..max`` of repeated measurements, for the table."""
    if not values:
        return "-"
    return f"{min(values):,.0f}..{max(values):,.0f}" if max(values) >= 100 else f"{min(values):.3g}..{max(values):.3g}"
