"""A version record alone is enough to score raw records: the same probabilities as the training
path's featurizer and model, for the linear and the wide-and-deep model; versions written before
records carried ``scoring`` still decode; a tampered or unscorable version is refused by name."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import fastavro
import numpy as np
import pytest

from streamfed.aggregation.build import build_aggregator
from streamfed.aggregation.records import VersionMeta, cost, version_record
from streamfed.errors import SerializationError
from streamfed.learners.features import Featurizer
from streamfed.learners.federated import build_federated_model, sigmoid
from streamfed.privacy.signing import write_keypair
from streamfed.serde.avro import AvroCodec
from streamfed.serving import Scorer
from streamfed.sources import TransactionSimulator
from streamfed.topology import load_topology
from streamfed.topology.loader import SCHEMA_DIR


def _version(tmp_path: Path, deep: bool) -> tuple[dict, object, list[dict]]:
    topo = load_topology("fraud", {"state_dir": str(tmp_path), "model": {"deep": {"enabled": deep}}})
    for s in topo.sites:
        write_keypair(topo.private_key_path(s), topo.public_key_path(s))
    agg = build_aggregator(topo)
    model = build_federated_model(topo.model, device="cpu")
    params = np.random.default_rng(5).normal(0, 0.3, model.num_params).astype(np.float32)
    meta = VersionMeta("fedbuff", 1.0, "sgd", "p", "r")
    rec = version_record(agg.model, meta, 7, 6, params, [], cost(agg.model, [], 0.0))
    site = topo.sites[0]
    assert site.simulator is not None
    records = TransactionSimulator(site.id, site.simulator).batch(500, t=0.0)
    X, _, status = Featurizer(topo.model.features, topo.model.label).transform(records)
    assert all(s is True for s in status)
    codec = AvroCodec("model_version")
    return codec.decode(codec.encode(rec)), sigmoid(model.logits(params, X)), records


@pytest.mark.parametrize("deep", [False, True], ids=["linear", "wide_deep"])
def test_a_version_record_scores_raw_records_as_training_does(tmp_path: Path, deep: bool) -> None:
    rec, want, records = _version(tmp_path, deep)
    scorer = Scorer.from_record(rec)
    assert scorer.version == 7
    got, status = scorer.score(records)
    assert all(s is True for s in status)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert float(np.std(got)) > 0.05  # not a constant: the parameters matter


def test_a_record_failing_the_feature_checks_scores_nan_with_its_reason(tmp_path: Path) -> None:
    rec, _, records = _version(tmp_path, False)
    bad = dict(records[0], amount="twelve")
    p, status = Scorer.from_record(rec).score([records[1], bad])
    assert np.isfinite(p[0]) and np.isnan(p[1])
    assert status[0] is True and "wrong_type" in str(status[1])


def test_tampered_parameters_are_refused(tmp_path: Path) -> None:
    rec, _, _ = _version(tmp_path, False)
    rec["params"] = rec["params"][:-4] + b"\x00\x00\x80\x3f"
    with pytest.raises(SerializationError, match="SHA-256"):
        Scorer.from_record(rec)


def test_a_version_written_with_the_first_schema_still_decodes(tmp_path: Path) -> None:
    rec, _, _ = _version(tmp_path, False)
    old = fastavro.parse_schema(json.loads((SCHEMA_DIR / "history" / "model_version.1.avsc").read_text()))
    body = io.BytesIO()
    fastavro.schemaless_writer(body, old, {k: v for k, v in rec.items() if k != "scoring"})
    fp = fastavro.schema.fingerprint(fastavro.schema.to_parsing_canonical_form(old), "CRC-64-AVRO")
    framed = struct.pack(">bI", 0, int(fp[-8:], 16) & 0x7FFFFFFF) + body.getvalue()
    back = AvroCodec("model_version").decode(framed)
    assert back["version"] == 7 and back["scoring"] is None
    with pytest.raises(SerializationError, match="no scoring section"):
        Scorer.from_record(back)
