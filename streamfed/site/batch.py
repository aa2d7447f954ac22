"""One batch of raw record values into a site's learner: decode, validate, learn, and say what was rejected.

Shared by every way of feeding a site (:class:`~streamfed.site.processor.SiteProcessor` and the
stream-framework integrations), so that all of them reject the same records for the same reasons.
Sending rejected records to the dead-letter topic stays with the caller, which knows the messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamfed.errors import SerializationError
from streamfed.serde.avro import AvroCodec
from streamfed.serde.columnar import to_rows
from streamfed.site.learner import SiteLearner


@dataclass(frozen=True)
class Rejection:
    """A record of the batch that was not learned: its position in the batch, why, and the details."""

    index: int
    reason: str
    detail: str


def learn_batch(
    learner: SiteLearner,
    codec: AvroCodec,
    values: Sequence[bytes | None],
    timestamps_ms: Sequence[int],
    contribute: Sequence[bool] | None = None,
) -> list[Rejection]:
    """Decode and validate ``values``, learn the usable records, and return the others.

    Records that do not decode are rejected with reason ``decode``; records that name another site
    with ``wrong_site``, and repeats of a recent id with ``duplicate`` (the learner's
    :class:`~streamfed.site.guard.RecordGuard`); records that fail the topology's feature checks
    with the featurizer's reason (``missing``, ``out_of_range``, ...), and a second record of the
    same id in one batch as ``duplicate``. Rejections come in that order, each group in batch order.
    ``timestamps_ms[i]`` is the broker timestamp of ``values[i]``; the earliest one of the learned
    records starts the update window. ``contribute[i]`` False keeps ``values[i]`` out of the
    federated update's windows (see :meth:`SiteLearner.learn`).
    """
    n = len(values)
    columns = codec.decode_columns(values)
    decoded: list[dict[str, Any]] | list[dict[str, Any] | SerializationError]
    if columns is not None:  # every value a valid record of the codec's schema (the usual batch)
        if learner.guard.clean(columns, n):
            got = learner.featurizer.transform_columns(columns, n)
            if got is not None:  # and every record valid: learn the batch as columns
                X, y, _status = got
                learner.guard.remember(columns)
                mask = None if contribute is None else np.fromiter(contribute, dtype=bool, count=n)
                learner.learn(X, y, first_event_ms=min(timestamps_ms), contribute=mask)
                return []
        decoded = to_rows(list(columns), list(columns.values()))  # some record is refused: record by record
    else:
        decoded = codec.decode_many(values)
    records: list[dict[str, Any]] = []
    origin: list[int] = []
    rejected: list[Rejection] = []
    for i, rec in enumerate(decoded):
        if isinstance(rec, SerializationError):
            rejected.append(Rejection(i, "decode", str(rec)))
            continue
        problem = learner.guard.check(rec)
        if problem is not None:
            rejected.append(Rejection(i, *problem))
            continue
        records.append(rec)
        origin.append(i)
    if not records:
        return rejected
    X, y, status = learner.featurizer.transform(records)
    good = np.fromiter((s is True for s in status), dtype=bool, count=len(status))
    for j in np.flatnonzero(~good):
        reason, _, detail = str(status[j]).partition(": ")
        rejected.append(Rejection(origin[j], reason, detail))
    repeats = learner.guard.learnt([records[j] for j in np.flatnonzero(good)])
    for j, why in zip(np.flatnonzero(good), repeats, strict=True):
        if why is not None:  # the same id twice in this batch: the first is learnt
            good[j] = False
            rejected.append(Rejection(origin[j], "duplicate", why))
    if not good.all():
        X, y = X[good], y[good]
        origin = [i for i, g in zip(origin, good, strict=True) if g]
    if origin:
        mask = (
            None if contribute is None else np.fromiter((contribute[i] for i in origin), dtype=bool, count=len(origin))
        )
        learner.learn(X, y, first_event_ms=min(timestamps_ms[i] for i in origin), contribute=mask)
    return rejected
