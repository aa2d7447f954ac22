"""Serving apps: follow the models topic and score raw records with the newest global version.

>>> from streamfed.serving import ModelSubscriber                    # doctest: +SKIP
>>> with ModelSubscriber("localhost:9092", "fraud-detector", topic="streamfed.fraud.models") as sub:
...     sub.wait_for_version(1, timeout_s=60)
...     sub.predict([{"amount": 12.5, "hour": 3, ...}])                # probabilities, NaN for a bad record

Each version record carries what scoring needs (``scoring``: the feature transforms, the label and
the model's kind), so an app needs no topology. A version is used only when its parameters match
their SHA-256 and its number is above the current one (duplicates and re-announcements are
skipped); aborted transactions are never seen (``read_committed``). The swap is one reference
assignment: a ``predict`` call scores every record with the same version.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from confluent_kafka import KafkaError

from streamfed.errors import SerializationError, StreamfedError
from streamfed.learners.features import Featurizer
from streamfed.learners.federated import FederatedModel, LinearLogistic, sigmoid, wide_and_deep
from streamfed.registry.reader import open_from_start
from streamfed.serde import params_from_bytes, sha256_hex
from streamfed.serde.avro import AvroCodec
from streamfed.serde.registry import registry_for
from streamfed.topology.spec import FeatureSpec, KafkaSpec, ModelSpec

log = logging.getLogger(__name__)

SCORING_FORMAT = 1


def scoring_doc(spec: ModelSpec) -> str:
    """What a version record carries for scoring: the feature transforms, the label, the model."""
    model: dict[str, Any] = {"kind": "linear"}
    if spec.deep.enabled:
        model = {"kind": "wide_deep", "hidden": list(spec.deep.hidden)}
    doc = {"format": SCORING_FORMAT, "label": spec.label, "features": spec.features.model_dump(mode="json")}
    return json.dumps({**doc, "model": model}, sort_keys=True)


@dataclass(frozen=True)
class Scorer:
    """One version's parameters with its feature transforms: raw records in, probabilities out."""

    model_name: str
    version: int
    params_sha256: str
    created_ms: int
    featurizer: Featurizer
    model: FederatedModel
    params: np.ndarray

    @classmethod
    def from_record(cls, rec: dict[str, Any], device: str = "cpu") -> Scorer:
        """Build from a decoded version record; raises :class:`SerializationError` when it cannot
        be scored (written before versions carried ``scoring``, a bad digest, an unknown kind)."""
        if not rec.get("scoring"):
            raise SerializationError(f"version {rec.get('version')} carries no scoring section (written before 0.2)")
        try:
            doc = json.loads(rec["scoring"])
            features = FeatureSpec.model_validate(doc["features"])
            kind = doc["model"]["kind"]
        except (ValueError, KeyError, TypeError) as exc:
            raise SerializationError(f"version {rec.get('version')}: unreadable scoring section: {exc}") from exc
        if doc.get("format") != SCORING_FORMAT:
            raise SerializationError(f"scoring format {doc.get('format')}; this reader knows {SCORING_FORMAT}")
        if sha256_hex(rec["params"]) != rec["params_sha256"]:
            raise SerializationError(f"version {rec['version']}: parameters do not match their SHA-256")
        featurizer = Featurizer(features, doc["label"])
        if featurizer.names != list(rec["feature_order"]):
            raise SerializationError(f"version {rec['version']}: feature order differs from its transforms")
        model: FederatedModel
        if kind == "linear":
            model = LinearLogistic(featurizer.dim)
        elif kind == "wide_deep":
            model = wide_and_deep(featurizer.dim, list(doc["model"]["hidden"]), device=device)
        else:
            raise SerializationError(f'unknown model kind "{kind}"; this reader knows linear, wide_deep')
        params = params_from_bytes(rec["params"], model.num_params)
        return cls(
            rec["model"], int(rec["version"]), rec["params_sha256"], int(rec["created_ms"]), featurizer, model, params
        )

    def score(self, records: Sequence[dict[str, Any]]) -> tuple[np.ndarray, list[bool | str]]:
        """(probability per record, NaN where it fails the features' checks; True or the reason)."""
        X, _, status = self.featurizer.transform(records)
        p = sigmoid(self.model.logits(self.params, X)) if len(records) else np.zeros(0)
        bad = np.array([s is not True for s in status], dtype=bool)
        p = np.asarray(p, dtype=np.float64)
        p[bad] = np.nan
        return p, status


class ModelSubscriber:
    """Follows one model on the models topic from its latest version; hot-swaps on each new one.

    ``on_version(scorer)`` is called from the subscriber's thread after each swap. ``bootstrap``
    is a ``host:port`` list or a topology's :class:`KafkaSpec` (its client settings apply).
    """

    def __init__(
        self,
        bootstrap: str | KafkaSpec,
        model: str,
        topic: str,
        on_version: Callable[[Scorer], None] | None = None,
        device: str = "cpu",
    ) -> None:
        self.kafka = bootstrap if isinstance(bootstrap, KafkaSpec) else KafkaSpec(bootstrap_servers=bootstrap)
        self.model = model
        self.topic = topic
        self.on_version = on_version
        self.device = device
        self.codec = AvroCodec("model_version", registry_for(self.kafka))
        self._current: Scorer | None = None
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.skipped: dict[str, int] = {}

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> ModelSubscriber:
        consumer, _ = open_from_start(self.kafka, self.topic)
        self._thread = threading.Thread(target=self._run, args=(consumer,), name="streamfed-subscriber", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self) -> ModelSubscriber:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- what apps use ----------------------------------------------------------------------------
    @property
    def current(self) -> Scorer | None:
        return self._current

    def wait_for_version(self, at_least: int = 0, timeout_s: float | None = None) -> Scorer:
        """Block until a version numbered ``at_least`` or above is in use; raises TimeoutError."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._changed:
            while self._current is None or self._current.version < at_least:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    have = None if self._current is None else self._current.version
                    raise TimeoutError(f"no version >= {at_least} of {self.model} within {timeout_s} s (have {have})")
                self._changed.wait(left if left is None else min(left, 1.0))
        return self._current

    def predict(self, records: Sequence[dict[str, Any]]) -> np.ndarray:
        """Probabilities from the version in use (NaN for a record failing the feature checks)."""
        scorer = self._current  # one version for the whole call, whatever arrives meanwhile
        if scorer is None:
            raise StreamfedError(f"no version of {self.model} yet (wait_for_version first)")
        return scorer.score(records)[0]

    # -- the follow loop --------------------------------------------------------------------------
    def _skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1

    def _offer(self, rec: dict[str, Any]) -> None:
        if rec.get("model") != self.model:
            return
        now = self._current
        if now is not None and int(rec["version"]) <= now.version:
            self._skip("not_newer")  # a re-announcement, a duplicate, or older than the one in use
            return
        try:
            scorer = Scorer.from_record(rec, self.device)
        except SerializationError as exc:
            self._skip("unscorable")
            log.warning("model %s version %s skipped: %s", self.model, rec.get("version"), exc)
            return
        with self._changed:
            self._current = scorer
            self._changed.notify_all()
        if self.on_version is not None:
            self.on_version(scorer)

    def _run(self, consumer: Any) -> None:
        # Catch-up: the compacted topic holds at least the latest version per key; only the
        # highest seen before the end is built, then each new one as it comes.
        parts = {tp.partition for tp in consumer.assignment()}
        at_end: set[int] = set()
        best: dict[str, Any] | None = None
        try:
            while not self._stop.is_set():
                for msg in consumer.consume(100, 0.2):
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            at_end.add(int(msg.partition() or 0))
                        continue
                    try:
                        rec = self.codec.decode(msg.value())
                    except SerializationError as exc:
                        self._skip("decode")
                        log.warning("%s@%d does not decode: %s", self.topic, msg.offset(), exc)
                        continue
                    if at_end >= parts:
                        self._offer(rec)
                    elif rec.get("model") == self.model and (best is None or rec["version"] >= best["version"]):
                        best = rec
                if best is not None and at_end >= parts:
                    self._offer(best)
                    best = None
        finally:
            consumer.close()
