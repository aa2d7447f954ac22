"""A StreamFed site as a PyFlink DataStream job (``pip install 'streamfed[flink]'``).

:func:`site_job` builds, on a ``StreamExecutionEnvironment``, the job that does what ``streamfed
site`` does in a process of its own: it reads the site's transactions, decodes and validates them
and learns them with the same site learner (:func:`~streamfed.site.batch.learn_batch`: the same
dead-letter reasons, the personal model, the served blend, the clipped, noised, accounted and signed
updates of :meth:`~streamfed.site.learner.SiteLearner.make_update`), follows the models topic and
rebases on each new global version. The learner runs in one keyed operator (:class:`SiteFunction`,
keyed by the site) that keeps what a restart needs in Flink state.

Sources
-------
- ``kafka`` (the default): Flink's ``KafkaSource``, built by the Kafka SQL connector
  (``org.apache.flink:flink-sql-connector-kafka``, ``format = raw``), so that each record reaches the
  operator with its partition, offset and broker timestamp. PyFlink's DataStream builder only has a
  value deserializer, and the offsets are what makes a restart exact (below). The consumer group is
  the one ``streamfed site`` uses; Flink commits it on each checkpoint.
- ``files``: Flink's ``FileSource`` over data-lake files of JSON lines, one record of the topology's
  schema per line (what ``avro-tools tojson`` or a Spark ``write.json`` gives). A line that is not
  JSON or not a record of the schema goes to the dead letters with reason ``decode``. With
  ``monitor_s`` the folders are watched for new files.

The connector jar is fetched from Maven Central by ``deploy/flink/fetch`` (Maven; kept in
``~/.cache/streamfed/flink``), or taken from ``STREAMFED_FLINK_KAFKA_JAR``.

What survives a restart
-----------------------
Flink restarts a failed job from its last checkpoint and reads the records since again. The
operator's state holds a snapshot of the learner (personal model, served blend, global base, the
update windows not yet released, the rolling metrics and drift detector, the duplicate guard, the
positions it has read), taken every ``snapshot_records`` records or ``snapshot_s`` seconds, and the
records read since that snapshot. After a restore the snapshot is loaded and those records are
learnt again, so a restart loses no record.

The privacy ledger and the update sequence numbers are not Flink state: an update that reached the
broker after the last checkpoint cannot be taken back, so they stay in the site's state directory
(``<state_dir>/<topology>/sites/<site>/``, written and fsynced before each update is produced), as
for ``streamfed site``. Next to them, ``flink-released.json`` holds, per partition, the offset up to
which every record read has been put into a released window or given up; it too is written before
each update. Records at or below it are learnt by the personal model and the blend but never put
into a window again, and the restored windows are dropped when the ledger shows a release after the
snapshot: no record is released more often than the ledger accounts for (a crash can lose a window,
as with ``streamfed site``). Keep the state directory on storage that outlives a task (a local disk
for a local job, a shared volume for a cluster). For ``files`` the position is the record's place
in the order the operator reads it; that order is the same after a restore with one source reader
(``parallelism=1``, the default).

Setup
-----
- Java 11 or newer (17 here): ``JAVA_HOME``, or ``java`` on the ``PATH``.
- The Python the Flink workers run is ``python.executable``; :func:`site_job` sets it to the
  interpreter that builds the job (``sys.executable``), which must have ``streamfed[flink]``.
- On a cluster, ship the job with ``flink run -py`` and the connector jar with ``-j``.

Not supported: secure aggregation (``aggregation.secure``), as in the Faust integration; one site
per job (run a job per site).

Example
-------
.. code-block:: python

    from streamfed.integrations.flink import site_job

    job = site_job("topologies/fraud.yaml", "bank-north")
    job.execute()  # runs until cancelled; bounded=True reads up to the topic's end, then returns the report

or ``python -m streamfed.integrations.flink topologies/fraud.yaml bank-north``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

try:
    from pyflink.common import Configuration, Duration, Types, WatermarkStrategy
    from pyflink.datastream import RuntimeExecutionMode, StreamExecutionEnvironment
    from pyflink.datastream.connectors.file_system import FileSource, StreamFormat
    from pyflink.datastream.functions import KeyedProcessFunction, RuntimeContext
    from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor
    from pyflink.table import StreamTableEnvironment
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
    raise ImportError("streamfed.integrations.flink needs PyFlink: pip install 'streamfed[flink]'") from exc

from streamfed import metrics as M
from streamfed.errors import ConfigError, SerializationError
from streamfed.kafka.clients import make_consumer, site_group
from streamfed.kafka.deadletters import DeadLetterSink
from streamfed.kafka.resilient import ResilientProducer
from streamfed.serde.avro import AvroCodec
from streamfed.serde.registry import registry_for
from streamfed.site.batch import learn_batch
from streamfed.site.build import build_learner, site_home
from streamfed.site.learner import SiteLearner
from streamfed.topology.loader import load_topology, resolve_topology_path
from streamfed.topology.spec import Topology

__all__ = ["SiteFunction", "SiteJob", "kafka_connector_jar", "site_job"]

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
FETCH = REPO_ROOT / "deploy" / "flink" / "fetch"
KAFKA_JAR_ENV = "STREAMFED_FLINK_KAFKA_JAR"
RELEASED_FILE = "flink-released.json"
REPORT_FILE = "flink-report.json"

# (partition, offset, broker timestamp ms, value, key): a Kafka record as the operator sees it; for
# files the partition is "file", the offset the record's place in the stream, the value the line's
# bytes and the key None.
Row = tuple[Any, int, int, bytes | None, bytes | None]


def kafka_connector_jar() -> Path:
    """Flink's Kafka SQL connector jar: ``STREAMFED_FLINK_KAFKA_JAR``, or what ``deploy/flink/fetch`` keeps."""
    env = os.environ.get(KAFKA_JAR_ENV)
    if env:
        if not Path(env).is_file():
            raise ConfigError(f"{KAFKA_JAR_ENV}={env} is not a file")
        return Path(env)
    if not FETCH.is_file():
        raise ConfigError(
            f"set {KAFKA_JAR_ENV} to org.apache.flink:flink-sql-connector-kafka's jar for this Flink "
            "(a checkout of the repository fetches it with deploy/flink/fetch)"
        )
    proc = subprocess.run([str(FETCH)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise ConfigError(f"deploy/flink/fetch failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


class _Message:
    """A row seen as a :class:`~streamfed.kafka.deadletters.SourceMessage` (for the dead letters)."""

    __slots__ = ("_key", "_offset", "_partition", "_topic", "_value")

    def __init__(self, topic: str | None, row: Row) -> None:
        self._topic = topic
        self._partition = row[0] if isinstance(row[0], int) else None
        self._offset = row[1]
        self._value = row[3]
        self._key = row[4]

    def topic(self) -> str | None:
        return self._topic

    def partition(self) -> int | None:
        return self._partition

    def offset(self) -> int | None:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value


class ReleasedMarks:
    """Per partition, the offset up to which every record read is in a released window or given up.

    Written (and fsynced) before each update is produced, like the ledger: it outlives a checkpoint
    restore, which rolls the operator's state back to before releases that are already public.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.marks: dict[str, int] = {}
        if path is not None and path.exists():
            self.marks = {str(k): int(v) for k, v in json.loads(path.read_text())["released"].items()}

    def allows(self, partition: Any, offset: int) -> bool:
        """Whether the record at ``offset`` of ``partition`` may go into a window."""
        return offset > self.marks.get(str(partition), -1)

    def advance(self, read: dict[str, int]) -> None:
        for part, off in read.items():
            self.marks[part] = max(off, self.marks.get(part, -1))
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump({"released": self.marks}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


# What a snapshot holds of the learner. Not the ledger, the sequence state or any random generator:
# the noise of later releases must not be predictable from a checkpoint, nor drawn twice.
_LEARNER_FIELDS = (
    "base",
    "base_version",
    "base_sha",
    "served",
    "local_metrics",
    "global_metrics",
    "served_metrics",
    "drift",
    "guard",
    "window_first_ms",
)
_WINDOW_FIELDS = ("point", "current", "full", "pool")


def _snapshot(learner: SiteLearner, read: dict[str, int], position: int) -> bytes:
    personal = learner.personal
    rng, personal.rng = personal.rng, None  # type: ignore[assignment]
    try:
        return pickle.dumps(
            {
                "learner": {f: getattr(learner, f) for f in _LEARNER_FIELDS},
                "personal": personal,
                "windows": {f: getattr(learner.contribution, f) for f in _WINDOW_FIELDS},
                "next_sequence": learner.state.next_sequence,
                "records": learner.report.records,
                "labelled": learner.report.labelled,
                "dead_letters": learner.report.dead_letters,
                "dead_letter_reasons": dict(learner.report.dead_letter_reasons),
                "read": dict(read),
                "position": position,
            },
            protocol=pickle.HIGHEST_PROTOCOL,
        )
    finally:
        personal.rng = rng


def _restore(learner: SiteLearner, blob: bytes) -> tuple[dict[str, int], int, bool]:
    """Load a snapshot into ``learner``; the positions read, and whether its windows were dropped."""
    snap = pickle.loads(blob)
    for f, v in snap["learner"].items():
        setattr(learner, f, v)
    personal = snap["personal"]
    personal.rng, personal.clock = learner.personal.rng, learner.personal.clock
    learner.personal = personal
    report = learner.report
    report.records, report.labelled = snap["records"], snap["labelled"]
    report.dead_letters, report.dead_letter_reasons = snap["dead_letters"], dict(snap["dead_letter_reasons"])
    report.base_version = learner.base_version
    dropped = learner.state.next_sequence > snap["next_sequence"]
    if dropped:  # a release after the snapshot: its windows may be in it; only the global point stays
        learner.contribution.rebase(snap["windows"]["point"])
    else:
        for f, v in snap["windows"].items():
            setattr(learner.contribution, f, v)
    return dict(snap["read"]), int(snap["position"]), dropped


_metrics_served: set[int] = set()


def _serve_metrics(port: int | None) -> None:
    """Serve /metrics once per worker process (a restarted operator opens again in the same one)."""
    if port is None or port in _metrics_served:
        return
    try:
        M.serve(port)
        _metrics_served.add(port)
    except OSError as exc:  # a port taken must not fail the job: it would restart over and over
        log.warning("metrics not served on port %d: %s", port, exc)


class SiteFunction(KeyedProcessFunction):
    """The site learner as a keyed Flink operator; one key, the site.

    Input rows are ``(partition, offset, timestamp_ms, value)``. Rows are learnt in batches of
    ``batch_records`` (or every ``tick_s`` when fewer arrive); every ``tick_s`` the operator also reads
    new model versions, takes the personal model's timed steps and releases due updates. It emits
    one JSON line per update it produces (sequence, base version, examples, epsilon).

    ``source_name`` names a files source in its dead letters' ``source_topic``. ``metrics_port``:
    serve the usual ``streamfed_site_*`` metrics from the Python worker on this port.
    ``fail_once_after`` (tests) raises once, after that many records, to make Flink restore the job.
    """

    def __init__(
        self,
        topology: str,
        overrides: dict[str, Any],
        site_id: str,
        source: Literal["kafka", "files"],
        *,
        batch_records: int = 500,
        tick_s: float = 0.2,
        snapshot_records: int = 20_000,
        snapshot_s: float = 5.0,
        source_name: str | None = None,
        metrics_port: int | None = None,
        fail_once_after: int | None = None,
    ) -> None:
        self.metrics_port = metrics_port
        self.topology_path = topology
        self.source_name = source_name
        self.overrides = overrides
        self.site_id = site_id
        self.source = source
        self.batch_records = batch_records
        self.tick_s = tick_s
        self.snapshot_records = snapshot_records
        self.snapshot_s = snapshot_s
        self.fail_once_after = fail_once_after

    # -- life cycle -----------------------------------------------------------------------------
    def open(self, runtime_context: RuntimeContext) -> None:
        topo: Topology = load_topology(self.topology_path, self.overrides)
        self.topo = topo
        site = topo.site(self.site_id)
        self.home = site_home(topo, site.id)
        self.learner = build_learner(topo, site.id)
        self.codec = AvroCodec(topo.model.record_schema, registry_for(topo.kafka))
        self.update_codec = AvroCodec("model_update", self.codec.registry)
        self.version_codec = AvroCodec("model_version", self.codec.registry)
        self.transactions = topo.transactions_topic(site)
        self.marks = ReleasedMarks(self.home / RELEASED_FILE)
        self.producer = ResilientProducer(topo.kafka, f"flink site {site.id}", max_pending=100_000)
        self.updates = ResilientProducer(topo.kafka, f"flink site {site.id} updates", max_pending=1000, max_in_flight=1)
        self.dead = DeadLetterSink(
            self.producer,
            topo.dead_letter_topic,
            "site",
            site.id,
            self.codec.registry,
            max_bytes=topo.kafka.max_message_bytes,
        )
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        self.models = make_consumer(topo.kafka, None)
        self.models.assign([TopicPartition(topo.models_topic, 0, OFFSET_BEGINNING)])
        self._catch_up_models(TopicPartition(topo.models_topic, 0))
        _serve_metrics(self.metrics_port)
        M.ready(topo.name, "site", site.id)
        self.snapshot_state = runtime_context.get_state(ValueStateDescriptor("learner", Types.PICKLED_BYTE_ARRAY()))
        # the batches learnt since the snapshot (one entry each), and the records not learnt yet: lists
        # kept short, as PyFlink's list state slows down with its length
        self.log_state = runtime_context.get_list_state(ListStateDescriptor("learnt", Types.PICKLED_BYTE_ARRAY()))
        self.pending_state = runtime_context.get_list_state(ListStateDescriptor("pending", Types.PICKLED_BYTE_ARRAY()))
        self.pending: list[Row] = []
        self.read: dict[str, int] = {}  # partition -> highest offset learnt
        self.position = 0  # files: the next record's place in the stream
        self.since_snapshot = 0
        self.snapshot_at = time.monotonic()
        self.restored = False
        self.first_at: float | None = None  # when the first record arrived, and the last was learnt
        self.learnt_at = 0.0
        self.timer_at: float | None = None
        self.t0 = time.monotonic()
        self.restores = 0
        self.replayed = 0
        self.failed = False

    def close(self) -> None:
        # End of a bounded input, or a cancel: learn what is left, release what is due, deliver.
        try:
            self._learn_pending()
            while self.learner.due() and self._publish():
                pass
        finally:
            left = self.updates.flush(10)
            self.learner.report.updates_pending = left
            if left:
                log.warning("site=%s stops with %d update(s) not delivered", self.site_id, left)
            self.learner.report.dead_letters_undelivered = self.producer.flush(10)
            self.models.close()
            if not self.failed:
                self._write_report()
            log.info("site=%s closed: %s", self.site_id, self.home / REPORT_FILE)

    # -- records --------------------------------------------------------------------------------
    def process_element(self, row: Any, ctx: KeyedProcessFunction.Context) -> Iterable[str]:
        self._ensure_restored()
        if self.first_at is None:
            self.first_at = time.monotonic()
        item = self._row(row)
        self.pending_state.add(item)
        self.since_snapshot += 1
        self.pending.append(item)
        if len(self.pending) >= self.batch_records:
            self._learn_pending()
        if self.timer_at is None:
            self._arm(ctx)
        if self.fail_once_after is not None and self.learner.report.records >= self.fail_once_after:
            marker = self.home / "flink-failed-once"
            if not marker.exists():
                marker.touch()
                self.failed = True  # this instance's report is not the job's
                raise RuntimeError(f"fail_once_after={self.fail_once_after}: a failure to test the restore")
        return ()

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterable[str]:
        self._ensure_restored()
        self.timer_at = None
        self._learn_pending()
        self._poll_models()
        self.learner.maybe_step()
        out = []
        while self.learner.due():
            line = self._publish()
            if line is None:
                break
            out.append(line)
        self.producer.poll(0)
        self.updates.poll(0)
        if self.since_snapshot >= self.snapshot_records or (
            self.since_snapshot and time.monotonic() - self.snapshot_at >= self.snapshot_s
        ):
            self._take_snapshot()
        self._arm(ctx)
        return out

    def _arm(self, ctx: Any) -> None:
        now = ctx.timer_service().current_processing_time()
        self.timer_at = now + self.tick_s * 1000
        ctx.timer_service().register_processing_time_timer(int(self.timer_at))

    def _row(self, row: Any) -> Row:
        if self.source == "files":
            pos = self.position
            self.position += 1
            return ("file", pos, int(time.time() * 1000), row.encode() if isinstance(row, str) else row, None)
        ts = row[2]
        ms = ts.to_epoch_milli() if hasattr(ts, "to_epoch_milli") else int(ts)
        return (int(row[0]), int(row[1]), ms, row[3], row[4])

    def _values(self, rows: Sequence[Row]) -> tuple[list[bytes | None], list[str | None]]:
        """The rows' Avro values; for files, each JSON line encoded (or why it cannot be)."""
        if self.source == "kafka":
            return [r[3] for r in rows], [None] * len(rows)
        values: list[bytes | None] = []
        problems: list[str | None] = []
        for r in rows:
            try:
                rec = json.loads(r[3] or b"")
                if not isinstance(rec, dict):
                    raise ValueError(f"a JSON {type(rec).__name__}, not an object")
                values.append(self.codec.encode(rec))
                problems.append(None)
            except (ValueError, SerializationError) as exc:
                values.append(None)
                problems.append(f"line is not a {self.codec.name} record: {exc}")
        return values, problems

    def _learn(self, rows: Sequence[Row], letters: bool) -> None:
        values, problems = self._values(rows)
        keep = [i for i, p in enumerate(problems) if p is None]
        contribute = [self.marks.allows(rows[i][0], rows[i][1]) for i in keep]
        rejected = learn_batch(
            self.learner, self.codec, [values[i] for i in keep], [rows[i][2] for i in keep], contribute
        )
        for r in rows:
            part = str(r[0])
            if r[1] > self.read.get(part, -1):
                self.read[part] = r[1]
        if not letters:
            return
        topic = self.transactions if self.source == "kafka" else self.source_name
        for i, p in enumerate(problems):
            if p is not None:
                self._dead_letter(topic, rows[i], "decode", p)
        for rej in rejected:
            self._dead_letter(topic, rows[keep[rej.index]], rej.reason, rej.detail)

    def _learn_pending(self) -> None:
        if not self.pending:
            return
        rows, self.pending = self.pending, []
        self._learn(rows, letters=True)
        self.learnt_at = time.monotonic()
        self.log_state.add(rows)
        self.pending_state.clear()
        self.learner.maybe_step()

    def _dead_letter(self, topic: str | None, row: Row, reason: str, detail: str) -> None:
        self.dead.send(_Message(topic, row), reason, detail)
        self.learner.count_dead_letter(reason)

    # -- state ----------------------------------------------------------------------------------
    def _ensure_restored(self) -> None:
        """On the first call with the key: load the snapshot and learn again the records read since."""
        if self.restored:
            return
        self.restored = True
        blob = self.snapshot_state.value()
        batches: list[list[Row]] = list(self.log_state.get() or [])
        pending: list[Row] = list(self.pending_state.get() or [])
        if blob is None and not batches and not pending:
            return
        self.restores += 1
        dropped = False
        if blob is not None:
            self.read, self.position, dropped = _restore(self.learner, blob)
        # the batches learnt before the checkpoint sent their dead letters then; the pending records
        # were not learnt yet, and are now (they stay in the pending state until then)
        for rows in batches:
            self._learn(rows, letters=False)
        self.pending = pending + self.pending
        rows = [r for b in batches for r in b] + pending
        if self.source == "files" and rows:
            self.position = max(self.position, max(r[1] for r in rows) + 1)
        self.replayed += len(rows)
        self.since_snapshot = len(rows)
        log.info(
            "site=%s restored: snapshot %s, %d record(s) learnt again, windows %s",
            self.site_id,
            "loaded" if blob is not None else "absent",
            len(rows),
            "dropped (a release followed the snapshot)" if dropped else "kept",
        )

    def _take_snapshot(self) -> None:
        self._learn_pending()
        self.snapshot_state.update(_snapshot(self.learner, self.read, self.position))
        self.log_state.clear()
        self.since_snapshot = 0
        self.snapshot_at = time.monotonic()

    # -- updates and versions -------------------------------------------------------------------
    def _publish(self) -> str | None:
        """Ledger and sequence (make_update), then the released marks, then produce."""
        record = self.learner.make_update()
        if record is None:
            return None
        self.marks.advance(self.read)
        self.updates.produce(self.topo.updates_topic, key=self.site_id.encode(), value=self.update_codec.encode(record))
        self.updates.poll(0)
        return json.dumps(
            {
                "site": self.site_id,
                "sequence": record["sequence"],
                "base_version": record["base_version"],
                "num_examples": record["num_examples"],
                "epsilon_spent": record["epsilon_spent"],
            }
        )

    def _catch_up_models(self, tp: Any, timeout_s: float = 10.0) -> None:
        """Start from the newest global version: read the models topic up to its end as of now."""
        try:
            _, end = self.models.get_watermark_offsets(tp, timeout=timeout_s)
        except Exception as exc:  # the broker is slow or away: the timer's polls catch up later
            log.warning("site=%s could not read the models topic's end: %s", self.site_id, exc)
            return
        deadline = time.monotonic() + timeout_s
        while end > 0 and time.monotonic() < deadline:
            self._poll_models(0.2)
            pos = self.models.position([tp])[0].offset
            if pos >= end:
                break

    def _poll_models(self, timeout_s: float = 0) -> None:
        for msg in self.models.consume(100, timeout_s):
            if msg.error() is not None:
                continue
            try:
                wanted = self.learner.wanted_version(self.version_codec, msg.value())
            except (SerializationError, KeyError) as exc:
                log.warning("site=%s ignores an unreadable model version at %d: %s", self.site_id, msg.offset(), exc)
                continue
            if wanted is not None:
                self.learner.rebase(*wanted)

    def _write_report(self) -> None:
        self.learner.export_quality()
        report = self.learner.report.to_json()
        report.update(
            seconds=time.monotonic() - self.t0,
            learn_seconds=self.learnt_at - self.first_at if self.first_at is not None else 0.0,
            restores=self.restores,
            replayed=self.replayed,
        )
        path = self.home / REPORT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        os.replace(tmp, path)  # whoever waits for the report never reads half of it


@dataclass
class SiteJob:
    """A site's job on ``env``: run it with :meth:`execute` (or ``env.execute``)."""

    env: StreamExecutionEnvironment
    site_id: str
    report_path: Path  # the operator writes its SiteReport (JSON) here when it closes

    def execute(self, name: str | None = None, close_timeout_s: float = 30.0) -> dict[str, Any]:
        """Run the job until it ends (a bounded one; an unbounded one until it is cancelled) and
        return the operator's report. PyFlink's ``execute`` can return before the operator has closed
        (learnt its last records, released what was due, delivered): this waits for its report."""
        self.report_path.unlink(missing_ok=True)
        self.env.execute(name or f"streamfed site {self.site_id}")
        deadline = time.monotonic() + close_timeout_s
        while not self.report_path.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the site's operator wrote no report to {self.report_path} in {close_timeout_s} s")
            time.sleep(0.05)
        return dict(json.loads(self.report_path.read_text()))


def site_job(
    topology: str | Path,
    site_id: str,
    *,
    env: StreamExecutionEnvironment | None = None,
    overrides: dict[str, Any] | None = None,
    files: Sequence[str | Path] | None = None,
    monitor_s: float | None = None,
    bounded: bool = False,
    parallelism: int = 1,
    checkpoint_ms: int = 2000,
    kafka_properties: dict[str, str] | None = None,
    flink_config: dict[str, str] | None = None,
    **function_kwargs: Any,
) -> SiteJob:
    """Add site ``site_id`` of ``topology`` to ``env`` (a new local environment by default).

    ``files``: read these files or folders (JSON lines) instead of the site's Kafka topic, and with
    ``monitor_s`` watch them for new files. ``bounded``: read the topic up to its end as of the start,
    then finish (tests and benchmarks). ``kafka_properties``: Java Kafka client settings for the
    source (``security.protocol``, ``sasl.jaas.config``, ...); StreamFed's own clients take the
    topology's librdkafka settings. ``flink_config``: Flink settings of the new environment
    (ignored with ``env``). ``function_kwargs`` go to :class:`SiteFunction`. Call
    :meth:`SiteJob.execute` to run it.
    """
    path = resolve_topology_path(topology).resolve()
    topo = load_topology(path, overrides)
    site = topo.site(site_id)
    if topo.aggregation.secure is not None:
        raise ConfigError(
            f"topology {topo.name} uses aggregation.secure, which the Flink job does not support; "
            "run the site with `streamfed site`"
        )
    # the Flink workers may run in another folder: hand them an absolute state directory
    merged = {**(overrides or {}), "state_dir": str(topo.state_dir.resolve())}
    if env is None:
        config = Configuration()
        config.set_string("python.executable", sys.executable)
        config.set_string("python.client.executable", sys.executable)
        for key, value in (flink_config or {}).items():
            config.set_string(key, value)
        env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_parallelism(parallelism)
    env.enable_checkpointing(checkpoint_ms)
    home = site_home(topo, site.id)
    home.mkdir(parents=True, exist_ok=True)
    kind: Literal["kafka", "files"] = "files" if files else "kafka"
    if files:
        function_kwargs.setdefault("source_name", "file:" + ",".join(str(Path(f).resolve()) for f in files))
    function = SiteFunction(str(path), merged, site.id, kind, **function_kwargs)
    if files:
        if bounded and monitor_s is not None:
            raise ValueError("a bounded job does not monitor its files (monitor_s)")
        builder = FileSource.for_record_stream_format(
            StreamFormat.text_line_format(), *[str(Path(f).resolve()) for f in files]
        )
        if monitor_s is not None:
            builder = builder.monitor_continuously(Duration.of_millis(int(monitor_s * 1000)))
        env.set_runtime_mode(RuntimeExecutionMode.STREAMING)
        stream = env.from_source(builder.build(), WatermarkStrategy.no_watermarks(), f"files {site.id}")
        keyed = stream.filter(lambda line: bool(line.strip())).key_by(lambda _: site_id, key_type=Types.STRING())
    else:
        env.add_jars(kafka_connector_jar().as_uri())
        t_env = StreamTableEnvironment.create(env)
        table = f"transactions_{site.id}".replace("-", "_")
        props = {"bootstrap.servers": topo.kafka.bootstrap_servers, "group.id": site_group(topo.name, site.id)}
        props.update(kafka_properties or {})
        options = {
            "connector": "kafka",
            "topic": topo.transactions_topic(site),
            "key.format": "raw",
            "key.fields": "key",
            "value.format": "raw",
            "value.fields-include": "EXCEPT_KEY",
            "scan.startup.mode": "group-offsets",
            "properties.auto.offset.reset": "earliest",
            **{f"properties.{k}": v for k, v in props.items()},
        }
        if bounded:
            options["scan.bounded.mode"] = "latest-offset"
        with_clause = ", ".join(f"'{k}' = '{v}'" for k, v in options.items())
        t_env.execute_sql(
            f"CREATE TEMPORARY TABLE `{table}` (`key` BYTES, `value` BYTES, `partition` INT METADATA VIRTUAL, "
            "`offset` BIGINT METADATA VIRTUAL, `ts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL) "
            f"WITH ({with_clause})"
        )
        stream = t_env.to_data_stream(
            t_env.sql_query(f"SELECT `partition`, `offset`, `ts`, `value`, `key` FROM `{table}`")
        )
        keyed = stream.key_by(lambda _: site_id, key_type=Types.STRING())
    keyed.process(function, output_type=Types.STRING()).name(f"streamfed site {site.id}").print()
    return SiteJob(env, site.id, home / REPORT_FILE)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m streamfed.integrations.flink TOPOLOGY SITE [--files F ...] [--bounded]``."""
    ap = argparse.ArgumentParser(prog="python -m streamfed.integrations.flink", description=__doc__.splitlines()[0])
    ap.add_argument("topology", help="topology file or shipped name")
    ap.add_argument("site", help="the site's id")
    ap.add_argument("--bootstrap", help="Kafka bootstrap servers (overrides the topology's)")
    ap.add_argument("--files", nargs="+", help="JSON-lines files or folders instead of the Kafka topic")
    ap.add_argument("--monitor-s", type=float, help="watch --files for new files every N seconds")
    ap.add_argument("--bounded", action="store_true", help="read up to the end as of the start, then stop")
    ap.add_argument("--checkpoint-ms", type=int, default=2000)
    ap.add_argument("--metrics-port", type=int, help="serve Prometheus metrics from the Python worker")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    overrides = {"kafka": {"bootstrap_servers": args.bootstrap}} if args.bootstrap else None
    try:
        job = site_job(
            args.topology,
            args.site,
            overrides=overrides,
            files=args.files,
            monitor_s=args.monitor_s,
            bounded=args.bounded,
            checkpoint_ms=args.checkpoint_ms,
            metrics_port=args.metrics_port,
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = job.execute()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
