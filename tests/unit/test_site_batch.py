"""learn_batch: the one place that decides which raw records a site learns and why it rejects the others."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from confluent_kafka import KafkaError

from streamfed.kafka.deadletters import DeadLetterSink
from streamfed.privacy.signing import write_keypair
from streamfed.serde.avro import AvroCodec
from streamfed.site.batch import Rejection, learn_batch
from streamfed.site.build import build_learner
from streamfed.site.processor import SiteProcessor, SiteTopics
from streamfed.sources import TransactionSimulator
from streamfed.topology import load_topology


def test_bad_records_are_rejected_with_reasons_and_the_rest_learned(tmp_path: Path) -> None:
    topo = load_topology("fraud", {"state_dir": str(tmp_path)})
    site = topo.sites[0]
    write_keypair(topo.private_key_path(site), topo.public_key_path(site))
    learner = build_learner(topo, site.id, rng=np.random.default_rng(0), persist=False, clock=lambda: 0.0, device="cpu")
    assert site.simulator is not None
    records = TransactionSimulator(site.id, site.simulator).batch(50, t=0.0)
    for r in records:
        r["is_fraud"] = bool(r["is_fraud"])  # all labelled, so the window counts every learned record
    codec = AvroCodec(topo.model.record_schema)
    values: list[bytes | None] = [codec.encode(r) for r in records]
    values[3] = b"\x00junk"
    values[10] = codec.encode({**records[10], "hour": 99})
    values[20] = None
    stamps = [1000 + i for i in range(len(values))]
    stamps[0] = 5  # the earliest record of the batch is a good one
    stamps[3] = 1  # an earlier but rejected one must not start the window

    rejected = learn_batch(learner, codec, values, stamps)

    assert [(r.index, r.reason) for r in rejected] == [(3, "decode"), (20, "decode"), (10, "out_of_range")]
    assert all(isinstance(r, Rejection) and r.detail for r in rejected)
    assert "hour" in rejected[2].detail
    assert learner.report.records == learner.contribution.pending_examples == 47
    assert learner.window_first_ms == 5


def test_records_of_another_site_and_repeated_ids_are_rejected(tmp_path: Path) -> None:
    topo = load_topology("fraud", {"state_dir": str(tmp_path)})
    site = topo.sites[0]
    write_keypair(topo.private_key_path(site), topo.public_key_path(site))
    learner = build_learner(topo, site.id, rng=np.random.default_rng(0), persist=False, clock=lambda: 0.0, device="cpu")
    assert site.simulator is not None and topo.model.id_field == "transaction_id"
    records = TransactionSimulator(site.id, site.simulator).batch(12, t=0.0)
    codec = AvroCodec(topo.model.record_schema)
    values: list[bytes | None] = [codec.encode(r) for r in records]
    values[1] = codec.encode({**records[1], "site_id": topo.sites[1].id})  # another site's name
    values[2] = codec.encode({**records[2], "site_id": ""})
    values[3] = codec.encode({**records[3], "site_id": "../" + site.id})
    values[7] = codec.encode(records[5])  # the same transaction twice in one batch

    rejected = learn_batch(learner, codec, values, [0] * len(values))
    assert [(r.index, r.reason) for r in rejected] == [
        (1, "wrong_site"),
        (2, "wrong_site"),
        (3, "wrong_site"),
        (7, "duplicate"),
    ]
    assert learner.report.records == 8
    # a later batch repeating a learnt record is rejected too (the guard remembers dedup_window ids)
    again = learn_batch(learner, codec, [codec.encode(records[0])], [0])
    assert [(r.index, r.reason) for r in again] == [(0, "duplicate")]


def test_a_batch_of_only_bad_records_learns_nothing(tmp_path: Path) -> None:
    topo = load_topology("fraud", {"state_dir": str(tmp_path)})
    site = topo.sites[0]
    write_keypair(topo.private_key_path(site), topo.public_key_path(site))
    learner = build_learner(topo, site.id, rng=np.random.default_rng(0), persist=False, clock=lambda: 0.0, device="cpu")
    codec = AvroCodec(topo.model.record_schema)

    rejected = learn_batch(learner, codec, [b"", None], [0, 0])

    assert [(r.index, r.reason) for r in rejected] == [(0, "decode"), (1, "decode")]
    assert learner.report.records == 0 and learner.window_first_ms is None


class _Msg:
    """A consumed message as confluent-kafka shows it (the parts SiteProcessor reads)."""

    def __init__(self, offset: int, value: bytes | None, ts_ms: int, eof: bool = False) -> None:
        self._offset, self._value, self._ts, self._eof = offset, value, ts_ms, eof

    def error(self) -> KafkaError | None:
        return KafkaError(KafkaError._PARTITION_EOF) if self._eof else None

    def topic(self) -> str:
        return "transactions"

    def partition(self) -> int:
        return 1

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return f"k{self._offset}".encode()

    def value(self) -> bytes | None:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return (1, self._ts)


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> None:
        self.sent.append((topic, key, value))


def test_the_site_processor_dead_letters_what_learn_batch_rejects(tmp_path: Path) -> None:
    topo = load_topology("fraud", {"state_dir": str(tmp_path)})
    site = topo.sites[0]
    write_keypair(topo.private_key_path(site), topo.public_key_path(site))
    learner = build_learner(topo, site.id, rng=np.random.default_rng(0), persist=False, clock=lambda: 0.0, device="cpu")
    assert site.simulator is not None
    records = TransactionSimulator(site.id, site.simulator).batch(20, t=0.0)
    for r in records:
        r["is_fraud"] = bool(r["is_fraud"])
    codec = AvroCodec(topo.model.record_schema)
    msgs = [_Msg(i, codec.encode(r), 1000 + i) for i, r in enumerate(records)]
    msgs[2] = _Msg(2, codec.encode({**records[2], "amount": -1.0}), 1002)
    msgs[5] = _Msg(5, b"junk", 1005)
    msgs.append(_Msg(20, None, 0, eof=True))  # end of partition: skipped, not a dead letter
    topics = SiteTopics(transactions="transactions", updates="u", models="m", dead_letters="dead")
    processor = SiteProcessor(learner, topo.kafka, topics, codec)
    producer = _Producer()
    processor._dead = DeadLetterSink(producer, "dead", "site", site.id, codec.registry)

    processor.process(msgs)  # type: ignore[arg-type]

    letters = [AvroCodec("dead_letter").decode(value) for _, _, value in producer.sent]
    assert [(t, k) for t, k, _ in producer.sent] == [("dead", site.id.encode())] * 2
    assert [(d["offset"], d["reason"], d["key"]) for d in letters] == [(5, "decode", b"k5"), (2, "out_of_range", b"k2")]
    assert all(d["source_topic"] == "transactions" and d["partition"] == 1 for d in letters)
    assert processor.report.dead_letters == 2
    assert processor.report.dead_letter_reasons == {"decode": 1, "out_of_range": 1}
    assert learner.report.records == learner.contribution.pending_examples == 18 and learner.window_first_ms == 1000


def test_records_kept_out_of_windows_are_learnt_but_not_contributed(tmp_path: Path) -> None:
    """contribute=False (a stream job learning again records it already released): the personal
    model and the blend learn them, the federated windows do not take them."""
    topo = load_topology("fraud", {"state_dir": str(tmp_path)})
    site = topo.sites[0]
    write_keypair(topo.private_key_path(site), topo.public_key_path(site))
    learner = build_learner(topo, site.id, rng=np.random.default_rng(0), persist=False, clock=lambda: 0.0, device="cpu")
    assert site.simulator is not None
    records = TransactionSimulator(site.id, site.simulator).batch(40, t=0.0)
    for r in records:
        r["is_fraud"] = bool(r["is_fraud"])
    codec = AvroCodec(topo.model.record_schema)
    values: list[bytes | None] = [codec.encode(r) for r in records]
    values[5] = b"\x00junk"  # rejected: its flag must not shift the others'
    contribute = [i >= 30 for i in range(len(values))]
    before = learner.personal.online.get_params().copy()

    rejected = learn_batch(learner, codec, values, [0] * len(values), contribute)

    assert [r.index for r in rejected] == [5]
    assert learner.report.records == 39
    assert learner.contribution.pending_examples == 10  # records 30..39 only
    assert not np.array_equal(learner.personal.online.get_params(), before)  # all 39 were learnt


def _twin_learners(tmp_path: Path):
    topo = load_topology("fraud", {"state_dir": str(tmp_path)})
    site = topo.sites[0]
    write_keypair(topo.private_key_path(site), topo.public_key_path(site))
    made = [
        build_learner(topo, site.id, rng=np.random.default_rng(0), persist=False, clock=lambda: 0.0, device="cpu")
        for _ in range(2)
    ]
    assert site.simulator is not None
    return topo, site, made


def test_clean_batches_learnt_as_columns_learn_what_the_record_path_learns(tmp_path: Path, monkeypatch) -> None:
    """The column path (every record valid) and the record-by-record path give the same scores,
    windows, guard state and metrics, batch after batch, with a refused record in one batch."""
    topo, site, (by_columns, by_records) = _twin_learners(tmp_path)
    codec = AvroCodec(topo.model.record_schema)
    sim = TransactionSimulator(site.id, site.simulator)
    batches = [[codec.encode(r) for r in sim.batch(300, t=float(i))] for i in range(5)]
    batches[2][7] = batches[1][0]  # a record learnt in an earlier batch: this batch takes the record path
    stamps = list(range(300))

    seen: dict[str, list] = {"columns": [], "records": []}
    for name, learner in (("columns", by_columns), ("records", by_records)):
        learn = learner.learn
        monkeypatch.setattr(learner, "learn", lambda X, y, _l=learn, _n=name, **kw: seen[_n].append(_l(X, y, **kw)))
    rejected: dict[str, list] = {"columns": [], "records": []}
    for values in batches:
        rejected["columns"].append(learn_batch(by_columns, codec, values, stamps))
        with monkeypatch.context() as m:  # the same batch with the column path refused at its first step
            m.setattr(codec, "decode_columns", lambda _values: None)
            rejected["records"].append(learn_batch(by_records, codec, values, stamps))

    assert [[(r.index, r.reason) for r in b] for b in rejected["columns"]] == [[], [], [(7, "duplicate")], [], []]
    assert rejected["columns"] == rejected["records"]
    assert len(seen["columns"]) == len(seen["records"]) == 5
    for a, b in zip(seen["columns"], seen["records"], strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    assert by_columns.report.records == by_records.report.records == 1499
    assert by_columns.contribution.pending_examples == by_records.contribution.pending_examples
    assert list(by_columns.guard._seen) == list(by_records.guard._seen)
    assert by_columns.window_first_ms == by_records.window_first_ms == 0


def test_a_clean_batch_repeating_an_id_learnt_earlier_is_not_learnt_as_columns(tmp_path: Path) -> None:
    topo, site, (learner, _) = _twin_learners(tmp_path)
    codec = AvroCodec(topo.model.record_schema)
    records = TransactionSimulator(site.id, site.simulator).batch(20, t=0.0)
    values = [codec.encode(r) for r in records]
    assert learn_batch(learner, codec, values[:10], list(range(10))) == []
    columns = codec.decode_columns(values[5:15])
    assert columns is not None
    assert not learner.guard.clean(columns, 10)  # ids 5..9 were learnt
    assert learner.guard.clean(codec.decode_columns(values[10:20]), 10)
    again = learn_batch(learner, codec, values[5:15], list(range(10)))
    assert [(r.index, r.reason) for r in again] == [(i, "duplicate") for i in range(5)]
    assert learner.report.records == 15
