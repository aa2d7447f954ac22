"""A producer that keeps what it could not deliver and recreates itself after failures.

librdkafka retries on its own while a broker is briefly away, but gives a message up after
``message.timeout.ms``, and an idempotent or transactional producer can reach a state it never
leaves: a fatal error (``KafkaError.fatal()``), or, against a broker restarted without its state, an
endless ``UNKNOWN_PRODUCER_ID`` loop that only ends in timeouts. :class:`ResilientProducer` keeps
every message until a delivery report says it arrived; after any failed delivery or fatal error it
purges the old client, builds a new one and produces the kept messages again, in their original
order and with their original bytes (so an update keeps its sequence number and signature).

Memory is bounded: at most ``max_pending`` messages are kept; beyond that the oldest waiting one
is dropped and counted (``dropped``, and the ``on_drop`` callback). A message the broker or
librdkafka can never take (too large, invalid) is dropped at once, counted in ``refused`` and
logged, rather than kept at the head of the queue where it would hold up every later message.
A message whose delivery report was lost may be delivered twice; consumers deduplicate (the
aggregator rejects a repeated (site, sequence)).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from streamfed.kafka.clients import make_producer
from streamfed.topology.spec import KafkaSpec

log = logging.getLogger(__name__)

# Give a message up (and recreate the client) after this long, unless the topology sets its own
# ``message.timeout.ms``: librdkafka's default of five minutes would hide a stuck client that long.
DEFAULT_MESSAGE_TIMEOUT_MS = 15000

# Errors no retry can cure: the message itself is refused.
PERMANENT = {
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.INVALID_MSG_SIZE,
    KafkaError.INVALID_RECORD,
    KafkaError.RECORD_LIST_TOO_LARGE,
}


@dataclass
class _Kept:
    id: int
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, str | bytes | None]] | None


class ResilientProducer:
    """Produce, keep until delivered, recreate on failure.

    Parameters
    ----------
    kafka
        Connection settings; the client is built with :func:`~streamfed.kafka.clients.make_producer`.
    name
        Names the producer in logs.
    max_pending
        Messages kept (waiting or in flight) at most; the oldest waiting one is dropped beyond it.
    max_in_flight
        Messages handed to librdkafka at once; ``1`` keeps a strict order even across failures
        (a later message can never arrive before an earlier one that failed). ``None``: no limit.
    retry_backoff_s
        Wait this long after a failure before producing the kept messages again.
    on_drop, on_recreate
        Called once per dropped message and per new client (for metrics).
    extra
        More librdkafka settings for the client.
    """

    def __init__(
        self,
        kafka: KafkaSpec,
        name: str = "producer",
        max_pending: int = 10000,
        max_in_flight: int | None = None,
        retry_backoff_s: float = 1.0,
        on_drop: Callable[[], None] | None = None,
        on_recreate: Callable[[], None] | None = None,
        **extra: Any,
    ) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.kafka = kafka
        self.name = name
        self.max_pending = max_pending
        self.max_in_flight = max_in_flight
        self.retry_backoff_s = retry_backoff_s
        self.on_drop = on_drop
        self.on_recreate = on_recreate
        self.extra = dict(extra)
        configured = {**kafka.settings, **kafka.producer_settings, **self.extra}
        if "message.timeout.ms" not in configured and "delivery.timeout.ms" not in configured:
            self.extra["message.timeout.ms"] = DEFAULT_MESSAGE_TIMEOUT_MS
        self._waiting: deque[_Kept] = deque()
        self._failed: list[_Kept] = []
        self._in_flight: dict[int, _Kept] = {}
        self._next_id = 0
        self._broken = False
        self._retry_at = 0.0
        self.delivered = 0
        self.dropped = 0
        self.refused = 0
        self.failures = 0
        self.recreated = 0
        self._producer = self._make()

    # -- the client -----------------------------------------------------------------------------
    def _make(self) -> Producer:
        return make_producer(self.kafka, error_cb=self._on_error, **self.extra)

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            log.warning("%s: fatal producer error, will recreate the client: %s", self.name, err)
            self._broken = True
        else:
            log.debug("%s: %s", self.name, err)

    def _recreate(self) -> None:
        old = self._producer
        try:  # hand every message still inside the old client back to us (as purged)
            old.purge(in_queue=True, in_flight=True, blocking=False)
            old.poll(0)
        except (KafkaException, RuntimeError) as exc:
            log.debug("%s: purge of the old client: %s", self.name, exc)
        # Messages whose reports never came are ours again too (a late report of one is ignored).
        self._failed.extend(self._in_flight.values())
        self._in_flight.clear()
        self._producer = self._make()
        self._broken = False
        self.recreated += 1
        if self.on_recreate is not None:
            self.on_recreate()
        log.warning("%s: producer recreated; %d message(s) kept to produce again", self.name, self.pending)

    # -- bookkeeping ----------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Messages not yet known to be delivered (waiting, failed or in flight)."""
        return len(self._waiting) + len(self._failed) + len(self._in_flight)

    def _delivered(self, kept: _Kept) -> Callable[[KafkaError | None, Any], None]:
        def report(err: KafkaError | None, _msg: Any) -> None:
            if self._in_flight.pop(kept.id, None) is None:
                return  # reclaimed when the client was recreated
            if err is None:
                self.delivered += 1
                return
            if err.code() in PERMANENT:
                self._refuse(kept, err)
                return
            self.failures += 1
            self._failed.append(kept)
            if err.code() != KafkaError._PURGE_QUEUE and err.code() != KafkaError._PURGE_INFLIGHT:
                log.warning("%s: delivery to %s failed (%s); kept to produce again", self.name, kept.topic, err)
                self._broken = True

        return report

    def _requeue_failed(self) -> None:
        if self._failed:
            # Failed messages are older than every waiting one: they go back in front, in order.
            self._failed.sort(key=lambda k: k.id)
            self._waiting.extendleft(reversed(self._failed))
            self._failed.clear()
            self._retry_at = time.monotonic() + self.retry_backoff_s

    def _refuse(self, kept: _Kept, err: KafkaError | str) -> None:
        self.refused += 1
        size = len(kept.value or b"")
        log.warning("%s: %s refused a message of %d bytes for good (%s); dropped", self.name, kept.topic, size, err)
        if self.on_drop is not None:
            self.on_drop()

    def _trim(self) -> None:
        while self.pending > self.max_pending and self._waiting:
            lost = self._waiting.popleft()
            self.dropped += 1
            log.warning("%s: %d messages kept; dropped the oldest for %s", self.name, self.max_pending, lost.topic)
            if self.on_drop is not None:
                self.on_drop()

    def _pump(self) -> None:
        if time.monotonic() < self._retry_at:
            return
        while self._waiting and (self.max_in_flight is None or len(self._in_flight) < self.max_in_flight):
            kept = self._waiting[0]
            try:
                self._producer.produce(
                    kept.topic, key=kept.key, value=kept.value, headers=kept.headers, on_delivery=self._delivered(kept)
                )
            except BufferError:
                return  # librdkafka's queue is full: poll() makes room
            except KafkaException as exc:
                err = exc.args[0]
                if isinstance(err, KafkaError) and err.code() in PERMANENT:
                    self._waiting.popleft()
                    self._refuse(kept, err)
                    continue
                log.warning("%s: produce failed (%s); will recreate the client", self.name, err)
                self._broken = True
                return
            self._waiting.popleft()
            self._in_flight[kept.id] = kept

    # -- the Producer-like interface ------------------------------------------------------------
    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        """Keep the message and hand it to librdkafka as soon as order and capacity allow."""
        self._next_id += 1
        self._waiting.append(_Kept(self._next_id, topic, key, value, headers))
        self._trim()
        if not self._failed and not self._broken:
            self._pump()

    def poll(self, timeout: float = 0) -> int:
        """Serve delivery reports, recreate the client after a failure, produce what is kept."""
        try:
            served = int(self._producer.poll(timeout))
        except KafkaException as exc:
            log.warning("%s: poll failed (%s); will recreate the client", self.name, exc.args[0])
            self._broken = True
            served = 0
        if self._broken:
            self._recreate()
        self._requeue_failed()
        self._trim()
        self._pump()
        return served

    def flush(self, timeout: float = 10.0) -> int:
        """Poll until everything kept is delivered or ``timeout`` passes; returns what is still pending."""
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            self.poll(min(0.1, max(0.0, deadline - time.monotonic())))
        return self.pending

    def __len__(self) -> int:
        return self.pending
