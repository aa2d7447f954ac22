"""`streamfed topology init --from-csv` drafts a topology and a schema that load, replay and encode;
a topology names its own record schema by a path relative to the topology file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from streamfed.errors import ConfigError
from streamfed.serde import AvroCodec
from streamfed.serde.avro import SchemaRegistry
from streamfed.sources.replay import read_source_rows
from streamfed.topology import load_topology
from streamfed.topology.draft import draft_from_csv, write_draft
from streamfed.topology.loader import REPO_ROOT, schema_fields

BANK = REPO_ROOT.parent / "shared" / "data" / "bank_marketing" / "bank-additional-full.csv.gz"

CSV = """patient id,clinic,age,smoker,ward,blood.pressure,readmitted
{rows}"""


def _write_csv(path: Path, n: int = 150) -> Path:
    rows = []
    for i in range(n):
        bp = "" if i % 17 == 0 else f"{110 + (i * 7) % 60}.5"
        rows.append(
            f"{1000 + i},{'north' if i % 3 else 'South Wing'},{30 + i % 50},{'yes' if i % 4 else 'no'},"
            f"{'abc'[i % 3]},{bp},{'Y' if i % 5 == 0 else 'N'}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(CSV.format(rows="\n".join(rows)) + "\n")
    return path


def test_a_draft_infers_types_sites_and_the_label_and_loads_as_a_topology(tmp_path: Path) -> None:
    csv_file = _write_csv(tmp_path / "data" / "clinic_visits.csv")
    out = tmp_path / "conf"
    draft = draft_from_csv(csv_file, out, label="readmitted", site_column="clinic", positive=["Y"])
    topo_file, schema_file = write_draft(draft, csv_file, out)

    topo = load_topology(topo_file)
    assert topo.name == "clinic-visits"
    assert [s.id for s in topo.sites] == ["north", "south-wing"]
    assert topo.sites[1].source is not None and topo.sites[1].source.where == {"clinic": ["South Wing"]}
    feats = topo.model.features
    assert [f.name for f in feats.numeric] == ["age", "blood_pressure"]
    assert feats.numeric[1].missing is not None  # the column has gaps
    assert feats.numeric[0].missing is None
    assert [c.name for c in feats.categorical] == ["ward"] and sorted(feats.categorical[0].values) == ["a", "b", "c"]
    assert feats.boolean == ["smoker"]
    assert "patient id" not in json.dumps(topo.model.model_dump())  # a distinct integer per row: an id
    assert any("patient id" in n for n in draft.notes)
    # the schema is found by its path, relative to the topology file
    assert Path(topo.model.record_schema) == schema_file.resolve()
    fields = schema_fields(topo.model.record_schema)
    assert fields["readmitted"] == ["null", "boolean"] and fields["blood_pressure"] == ["null", "double"]

    # what `streamfed replay` makes of the drafted source, and the codec of the drafted schema
    codec = AvroCodec(topo.model.record_schema, SchemaRegistry())
    recs = list(read_source_rows(topo.sites[1].source, "south-wing", fields, "readmitted", "record_id"))
    assert len(recs) == 50 and {r["smoker"] for r in recs} == {True, False}
    assert sum(r["readmitted"] for r in recs) == sum(1 for i in range(150) if i % 3 == 0 and i % 5 == 0)
    assert any(r["blood_pressure"] is None for r in recs)
    assert codec.decode(codec.encode({**recs[0], "event_time": 1}))["ward"] == recs[0]["ward"]


def test_the_label_rule_is_inferred_or_asked_for(tmp_path: Path) -> None:
    csv_file = _write_csv(tmp_path / "v.csv")
    with pytest.raises(ConfigError, match=r"--label ward: cannot tell which values are positive.*a, b, c"):
        draft_from_csv(csv_file, tmp_path, label="ward")
    auto = draft_from_csv(csv_file, tmp_path, label="readmitted")  # Y/N: positive is Y
    assert auto.topology["sites"][0]["source"]["label_positive"] == ["Y"]
    with pytest.raises(ConfigError, match=r"--positive yes: not a value of column readmitted"):
        draft_from_csv(csv_file, tmp_path, label="readmitted", positive=["yes"])
    with pytest.raises(ConfigError, match=r"--site-column hospital: no such column .*columns: patient id, clinic"):
        draft_from_csv(csv_file, tmp_path, label="readmitted", site_column="hospital", positive=["Y"])
    smoker = draft_from_csv(csv_file, tmp_path, label="smoker")  # yes/no: positive is yes
    assert smoker.topology["sites"][0]["source"]["label_positive"] == ["yes"]


@pytest.mark.skipif(not BANK.is_file(), reason="needs ../shared/data")
def test_the_cli_drafts_the_bank_file_and_refuses_to_overwrite(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "streamfed", "topology", "init", "--from-csv", str(BANK), "--label", "y"]
    cmd += ["--site-column", "job", "--drop", "duration", "--out-dir", str(tmp_path), "--name", "mybank"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "wrote" in res.stdout and "12 site(s)" in res.stdout
    doc = yaml.safe_load((tmp_path / "mybank.yaml").read_text())
    assert doc["sites"][0]["source"]["separator"] == ";"  # sniffed
    assert doc["sites"][0]["source"]["label_positive"] == ["yes"]
    assert doc["sites"][0]["source"]["fields"]["emp_var_rate"] == "emp.var.rate"
    assert "duration" not in json.dumps(doc["model"])
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "exists; pass --force" in again.stderr + again.stdout


def test_a_schema_path_that_does_not_exist_is_named(tmp_path: Path) -> None:
    src = yaml.safe_load((REPO_ROOT / "topologies" / "heart.yaml").read_text())
    src["model"]["record_schema"] = "schemas/mine.avsc"
    src["sites"] = [{"id": "a", "simulator": {}}]
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(src))
    with pytest.raises(ConfigError, match=r"record_schema: schema file .*schemas/mine.avsc does not exist"):
        load_topology(path)
    with pytest.raises(ConfigError, match=r'unknown schema "nope"; valid: .*clinical_record.*or a path to an .avsc'):
        load_topology(path, {"model": {"record_schema": "nope"}})
