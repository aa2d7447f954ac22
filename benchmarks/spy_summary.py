"""Summarise a py-spy ``--format raw`` profile: inclusive and self share of each function under a root.

    py-spy record -r 500 -f raw -o /tmp/site.spy -- python benchmarks/site_ingest.py --only-full --records 200000
    python benchmarks/spy_summary.py /tmp/site.spy --root SiteProcessor.run

Inclusive share: samples whose stack (below the root) passes through the function; self share:
samples whose innermost frame is the function. Both are of the samples under the root. py-spy samples
from outside the process, so unlike an in-process profiler it barely slows the Python code it measures.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def _name(frame: str) -> str:
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    file = m.group("file")
    for marker in ("site-packages/", "streamfed/", "benchmarks/"):
        if marker in file:
            file = file.split(marker, 1)[1] if marker == "site-packages/" else marker + file.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({file})"


def summarise(path: Path, root: str, top: int) -> None:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        idx = next((i for i, f in enumerate(frames) if f.startswith(root + " ")), None)
        if idx is None:
            continue
        n = int(count)
        total += n
        below = [_name(f) for f in frames[idx + 1 :]]
        for name in set(below):
            inclusive[name] += n
        own[below[-1] if below else _name(frames[idx])] += n
    if not total:
        raise SystemExit(f"no samples under {root!r} in {path}")
    print(f"{total} samples under {root}\n")
    print("| inclusive % | self % | function |")
    print("|---:|---:|---|")
    for name, n in inclusive.most_common(top):
        print(f"| {100 * n / total:5.1f} | {100 * own[name] / total:5.1f} | {name} |")
    print("\nlargest self time:\n")
    print("| self % | function |")
    print("|---:|---|")
    for name, n in own.most_common(top):
        print(f"| {100 * n / total:5.1f} | {name} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw", type=Path, help="py-spy record --format raw output")
    ap.add_argument("--root", default="SiteProcessor.run", help="function whose subtree is summarised")
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    summarise(args.raw, args.root, args.top)


if __name__ == "__main__":
    main()
