"""A StreamFed site inside an existing Faust (faust-streaming) app.

:func:`site_agent` adds to a ``faust.App`` what :class:`~streamfed.site.processor.SiteProcessor`
does in a process of its own, with the same building blocks: an agent over the site's transaction
topic takes batches (``stream.take_events``), decodes, validates and learns them with
:func:`~streamfed.site.batch.learn_batch`, sends the rejected records to the dead-letter topic with
their reason (:class:`~streamfed.kafka.deadletters.DeadLetterSink`), and publishes the clipped,
noised, accounted and signed update of :meth:`~streamfed.site.learner.SiteLearner.make_update`
when a window is due; a second agent follows the models topic and rebases the site on each new
global version. Raw records stay in the app. The CPU work (decoding, learning, deep steps, making
an update, reading a version) runs in the event loop's default executor, so the app's other agents
keep running meanwhile.

Example
-------
.. code-block:: python

    import faust

    from streamfed.integrations.faust import site_agent
    from streamfed.topology import load_topology

    topology = load_topology("fraud")
    app = faust.App("bank-north", broker=f"kafka://{topology.kafka.bootstrap_servers}", store="memory://")
    site = site_agent(app, topology, "bank-north")  # then: faust -A <this module> worker

``examples/faust_app.py`` is a complete app.

Notes
-----
- Secure aggregation (``aggregation.secure``) is not supported: :class:`SiteAgent` refuses such
  a topology, as its sites publish masked updates with less noise each.
- Bad records go to the dead-letter topic with the same reasons as in ``streamfed site``. Should
  the learner fail on a whole batch (a fault of the site, not of a record), the batch is
  dead-lettered with reason ``error`` and logged, so the agent and the app's offsets keep moving.
- Run a site in **one** worker process. The learner keeps the site's privacy ledger and update
  sequence numbers under the topology's state directory, the same files ``streamfed site`` uses:
  never run both for one site.
- Offsets: a batch is acked once it is learned, and before an update is produced the app's acked
  offsets are committed, so that after a crash no record is learned into more windows than the
  ledger accounts for (as ``SiteProcessor`` does). Where other agents of the app read the same
  topic, Faust commits an offset only once all of them have acked it.
- The models agent never commits, so with Faust's default ``consumer_auto_offset_reset="earliest"``
  each start reads every version again. Faust reads ``read_uncommitted`` unless the app has
  ``processing_guarantee="exactly_once"``: a version from an aborted transaction may then be
  applied until the real one with the same number replaces it (``SiteLearner.wants``).
- The app's broker settings apply. Updates and versions of large models need Faust's
  ``producer_max_request_size`` and ``consumer_max_fetch_size`` raised to the topology's
  ``kafka.max_message_bytes``. On the embedded broker, group joins are fast with
  ``broker_session_timeout=2.0, broker_heartbeat_interval=0.3``.
- Metrics go to the default Prometheus registry under the usual ``streamfed_site_*`` names; serve
  them with ``prometheus_client.start_http_server``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

try:
    import faust
    from faust.types import EventT, Message, StreamT, TopicT
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
    raise ImportError("streamfed.integrations.faust needs faust-streaming: pip install 'streamfed[faust]'") from exc

from streamfed.errors import ConfigError, SerializationError
from streamfed.kafka.deadletters import DeadLetterSink
from streamfed.serde.avro import AvroCodec
from streamfed.serde.registry import registry_for
from streamfed.site.batch import Rejection, learn_batch
from streamfed.site.build import build_learner
from streamfed.site.learner import SiteLearner, SiteReport
from streamfed.topology.spec import Topology

__all__ = ["SiteAgent", "site_agent"]

log = logging.getLogger(__name__)

# StreamFed's records are Avro in the Confluent wire format: Faust passes the bytes through untouched.
_RAW: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}


class _FaustMessage:
    """A Faust message seen as a :class:`~streamfed.kafka.deadletters.SourceMessage`."""

    __slots__ = ("message",)

    def __init__(self, message: Message) -> None:
        self.message = message

    def topic(self) -> str | None:
        return str(self.message.topic)

    def partition(self) -> int | None:
        return int(self.message.partition)

    def offset(self) -> int | None:
        return int(self.message.offset)

    def key(self) -> bytes | None:
        return self.message.key

    def value(self) -> bytes | None:
        return self.message.value


class _TopicProducer:
    """A Faust topic as a :class:`~streamfed.kafka.deadletters.LetterProducer`: into the app's producer buffer.

    Call it on the event loop (``send_soon`` is not thread-safe).
    """

    def __init__(self, topic: TopicT) -> None:
        self.topic = topic

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> None:
        if topic != self.topic.get_topic_name():
            raise ValueError(f"this producer writes to {self.topic.get_topic_name()}, not {topic}")
        self.topic.send_soon(key=key, value=value)


class SiteAgent:
    """One StreamFed site attached to a Faust app: a learning agent, a models agent and a timer.

    Build it with :func:`site_agent` before the app's worker starts.

    Parameters
    ----------
    app
        The Faust app to attach to.
    topology
        The topology of the site; topic names and the site's specs come from it.
    site_id
        The site: one of ``topology.sites``.
    learner
        A learner to use instead of ``build_learner(topology, site_id, persist=persist)``.
    max_records
        Records per batch; default the smaller of 2000 and the update window, so that a batch never
        spans more than one window.
    within_s
        Seconds a batch waits to fill up before it is processed as it is.
    tick_s
        How often the time triggers (deep steps, the update window's ``every_seconds``) are checked
        when no records arrive.
    persist
        Keep the ledger and sequence state under the topology's state directory (the default);
        ``False`` only for throwaway runs.
    """

    def __init__(
        self,
        app: faust.App,
        topology: Topology,
        site_id: str,
        *,
        learner: SiteLearner | None = None,
        max_records: int | None = None,
        within_s: float = 1.0,
        tick_s: float = 0.5,
        persist: bool = True,
    ) -> None:
        site = topology.site(site_id)
        if getattr(topology.aggregation, "secure", None) is not None:
            # A masked site divides its noise among the buffer's sites: an unmasked update would leak.
            raise ConfigError(
                f"topology {topology.name} uses aggregation.secure, which the Faust integration does not "
                "support; run the site with `streamfed site`"
            )
        if (max_records is not None and max_records < 1) or within_s <= 0 or tick_s <= 0:
            raise ValueError("max_records, within_s and tick_s must be positive")
        self.app = app
        self.site_id = site.id
        self.learner = learner if learner is not None else build_learner(topology, site.id, persist=persist)
        self.codec = AvroCodec(topology.model.record_schema, registry_for(topology.kafka))
        self.update_codec = AvroCodec("model_update", self.codec.registry)
        self.version_codec = AvroCodec("model_version", self.codec.registry)
        self.max_records = max_records or min(2000, self.learner.update.every_records)
        self.within_s = within_s
        self.transactions = app.topic(topology.transactions_topic(site), **_RAW)
        self.updates = app.topic(topology.updates_topic, **_RAW)
        # acks=False: offsets on the models topic are never committed, so each start reads every version.
        self.models = app.topic(topology.models_topic, acks=False, **_RAW)
        dead_letters = app.topic(topology.dead_letter_topic, **_RAW)
        self.dead_letters = DeadLetterSink(
            _TopicProducer(dead_letters),
            topology.dead_letter_topic,
            "site",
            site.id,
            self.codec.registry,
            max_bytes=topology.kafka.max_message_bytes,
        )
        # Two agents and a timer share the learner: a batch with its acks and release, a rebase and a
        # timed step never interleave (each runs in the executor while holding this lock).
        self._lock = asyncio.Lock()
        prefix = f"streamfed.{topology.name}.site.{site.id}"
        self.agent = app.agent(self.transactions, name=f"{prefix}.learn")(self._learn_stream)
        self.models_agent = app.agent(self.models, name=f"{prefix}.models")(self._follow_stream)
        app.timer(tick_s, name=f"{prefix}.tick")(self._tick)

    @property
    def report(self) -> SiteReport:
        """What the site did so far: records, dead letters by reason, updates, epsilon, base version, ..."""
        self.learner.export_quality()  # read rarely (summaries): the AUCs as of the last record
        return self.learner.report

    # -- records --------------------------------------------------------------------------------
    async def _learn_stream(self, stream: StreamT[bytes]) -> None:
        # take_events is take with the messages (dead letters name topic, partition and offset).
        batches = cast(faust.Stream[bytes], stream).take_events(self.max_records, within=self.within_s)
        async for events in batches:
            messages = [event.message for event in events]
            async with self._lock:
                try:
                    rejected = await asyncio.to_thread(self._learn, messages)
                except Exception as exc:  # a fault of the site, not of a record: keep the agent and offsets moving
                    log.exception("site=%s failed on a batch of %d records", self.site_id, len(messages))
                    detail = f"{type(exc).__name__}: {exc}"
                    rejected = [Rejection(i, "error", detail) for i in range(len(messages))]
                for r in rejected:
                    self._dead_letter(messages[r.index], r.reason, r.detail)
                # Acked here rather than after this body (take_events would), so the commit before a
                # release below includes this batch.
                for event in events:
                    await stream.ack(event)
                while await self._maybe_publish():
                    pass

    def _learn(self, messages: Sequence[Message]) -> list[Rejection]:
        values = [m.value for m in messages]
        stamps = [int(m.timestamp * 1000) for m in messages]
        rejected = learn_batch(self.learner, self.codec, values, stamps)
        self.learner.maybe_step()
        return rejected

    def _dead_letter(self, message: Message, reason: str, detail: str) -> None:
        self.dead_letters.send(_FaustMessage(message), reason, detail)
        self.learner.count_dead_letter(reason)

    # -- updates --------------------------------------------------------------------------------
    async def _tick(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self.learner.maybe_step)
            while await self._maybe_publish():
                pass

    async def _maybe_publish(self) -> bool:
        """Release the window's update when it is due: ledger and sequence first, then offsets, then produce.

        Called holding the lock, after the window's records were acked. As with ``SiteProcessor``, a
        crash can lose an update but never releases a record in more windows than accounted.
        """
        if not self.learner.due():
            return False
        record = await asyncio.to_thread(self.learner.make_update)
        if record is None:  # the budget is spent: the site keeps learning locally
            return False
        # A commit already in flight (Faust's periodic one) may predate this batch's acks; then
        # commit() waits for it and returns False, and a second call commits them.
        if not await self.app.consumer.commit():
            await self.app.consumer.commit()
        meta = await (await self.updates.send(key=self.site_id.encode(), value=self.update_codec.encode(record)))
        log.info(
            "site=%s update seq=%d produced at %s[%d]@%d",
            self.site_id,
            record["sequence"],
            meta.topic,
            meta.partition,
            meta.offset,
        )
        return True

    # -- global versions ------------------------------------------------------------------------
    async def _follow_stream(self, stream: StreamT[bytes]) -> None:
        async for event in stream.events():
            version = await asyncio.to_thread(self._read_version, event)
            if version is not None:
                async with self._lock:
                    await asyncio.to_thread(self._rebase, *version)

    def _read_version(self, event: EventT[bytes]) -> tuple[int, np.ndarray, str] | None:
        """The version, parameters and digest of a model version record for this site's model, else None."""
        msg = event.message
        try:
            return self.learner.wanted_version(self.version_codec, msg.value)
        except (SerializationError, KeyError) as exc:
            log.warning("site=%s ignores an unreadable model version at offset %d: %s", self.site_id, msg.offset, exc)
            return None

    def _rebase(self, version: int, params: np.ndarray, sha: str) -> None:
        self.learner.rebase(version, params, sha)
        log.info("site=%s rebased on version %d", self.site_id, version)


def site_agent(app: faust.App, topology: Topology, site_id: str, **kwargs: Any) -> SiteAgent:
    """Attach StreamFed site ``site_id`` of ``topology`` to ``app``; keyword arguments go to :class:`SiteAgent`."""
    return SiteAgent(app, topology, site_id, **kwargs)
