"""docs/topology.md carries the generated reference verbatim: the docs cannot drift from the code."""

from __future__ import annotations

from pathlib import Path

from streamfed.topology.reference import reference_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "topology.md"


def test_topology_doc_holds_the_generated_reference() -> None:
    text = DOC.read_text()
    body = text.split("identical.\n", 1)[1].strip()
    assert body == reference_markdown().strip(), (
        "docs/topology.md is out of date: keep its header and replace the rest with `streamfed topology reference`"
    )
