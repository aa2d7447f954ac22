"""The aggregator's part in secure aggregation: one buffer at a time, unmasked only as a sum.

A buffer collects the cohort's masked updates against the current version. It is *due* when every
site has sent one, or ``dropout_timeout`` after its first update with at least ``threshold`` in it.
The aggregator then posts a request naming the survivors and the dropped sites (forwarding to each
site the encrypted self-mask shares addressed to it) and re-posts it every ``dropout_timeout`` until
the signed reveals suffice to remove the masks. What comes out is the sum of the survivors' noised
sums (each ``-lr (S_i + N_i)``), divided by their slots ``sum n_i`` into a mean step; no single
site's sum is ever in the clear here.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from streamfed.aggregation.fedbuff import PendingUpdate
from streamfed.errors import AggregationError, SignatureError
from streamfed.privacy.secagg import (
    MaskedUpdate,
    Reveal,
    SecAggParams,
    SecAggServer,
    dequantize,
    reveal_message,
    unpack_share,
)
from streamfed.privacy.signing import UpdateVerifier

log = logging.getLogger(__name__)


class SecureBuffer:
    def __init__(
        self,
        params: SecAggParams,
        dropout_timeout_s: float,
        verifier: UpdateVerifier,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.params = params
        self.server = SecAggServer(params.cohort, params.threshold)
        self.timeout = dropout_timeout_s
        self.verifier = verifier
        self.clock = clock
        self.buffer = 0
        self.updates: dict[str, PendingUpdate] = {}
        self.first_at: float | None = None
        self.request: dict[str, Any] | None = None
        self.requested_at = 0.0
        self.reveals: dict[str, Reveal] = {}
        self.bad_reveals = 0

    def __len__(self) -> int:
        return len(self.updates)

    def reset(self, version: int) -> None:
        """Start the buffer of ``version`` (after a version, or a rollback)."""
        self.buffer = version
        self.updates = {}
        self.first_at = None
        self.request = None
        self.reveals = {}

    def check(self, upd: Mapping[str, Any], version: int) -> tuple[str, str] | None:
        """Why this (already signature-checked) update cannot join the buffer, as (reason, detail)."""
        site, buffer = upd["site_id"], upd.get("secure_buffer")
        if buffer is None:
            return "secure", "a plaintext update: this topology aggregates under secure aggregation only"
        if int(buffer) != int(upd["base_version"]):
            return "secure", f"secure_buffer {buffer} differs from base_version {upd['base_version']}"
        if int(buffer) != version:
            return "stale", f"a secure buffer takes updates against the current version {version}, not {buffer}"
        if site not in self.params.cohort:
            return "secure", f'site "{site}" is not in the cohort'
        if site in self.updates:
            return "replay", f'site "{site}" already has an update in buffer {buffer}'
        if self.request is not None:
            return "stale", f"buffer {buffer} closed its membership when the recovery request was sent"
        return None

    def add(self, pending: PendingUpdate) -> None:
        if self.first_at is None:
            self.first_at = self.clock()
        self.updates[pending.site_id] = pending

    def due(self) -> bool:
        """Whether to (re-)post the recovery request now."""
        now = self.clock()
        if self.request is not None:
            return now - self.requested_at >= self.timeout
        if len(self.updates) == len(self.params.cohort):
            return True
        return (
            len(self.updates) >= self.params.threshold
            and self.first_at is not None
            and now - self.first_at >= self.timeout
        )

    def make_request(self) -> dict[str, Any]:
        """The recovery request (the same one, with the same id, when re-posted)."""
        if self.request is None:
            survivors = sorted(self.updates)
            dropped = [s for s in self.params.cohort if s not in self.updates]
            forwarded: dict[str, dict[str, bytes]] = {}
            for owner in survivors:
                for recipient, blob in self.updates[owner].shares.items():
                    if recipient in self.params.cohort:
                        forwarded.setdefault(recipient, {})[owner] = blob
            self.request = {
                "kind": "request",
                "topology": self.params.topology,
                "buffer": self.buffer,
                "request_id": uuid.uuid4().hex,
                "site_id": None,
                "survivors": survivors,
                "dropped": dropped,
                "forwarded": forwarded,
                "self_mask_shares": {},
                "pair_seeds": {},
                "created_ms": int(time.time() * 1000),
                "key_id": "",
                "signature": b"",
            }
            log.info("secure buffer %d: request with %s, dropped %s", self.buffer, survivors, dropped or "none")
        self.requested_at = self.clock()
        return self.request

    def add_reveal(self, rec: Mapping[str, Any]) -> bool:
        """Keep a reveal that answers the current request and carries a valid signature."""
        if rec["kind"] != "reveal" or self.request is None or rec["request_id"] != self.request["request_id"]:
            return False
        site = rec["site_id"] or ""
        try:
            req = self.request
            if sorted(rec["survivors"]) != req["survivors"] or sorted(rec["dropped"]) != req["dropped"]:
                raise AggregationError("the reveal names other survivors or dropped sites than the request")
            self.verifier.verify_bytes(site, rec["key_id"], reveal_message(rec), rec["signature"], f"reveal of {site}")
            shares = {owner: unpack_share(blob) for owner, blob in rec["self_mask_shares"].items()}
        except (SignatureError, AggregationError) as exc:
            self.bad_reveals += 1
            log.warning("secure buffer %d: reveal of %s refused: %s", self.buffer, site, exc)
            return False
        self.reveals[site] = Reveal(site, self.buffer, shares, dict(rec["pair_seeds"]))
        return True

    def unmask(self) -> tuple[np.ndarray, list[PendingUpdate]] | None:
        """The survivors' step (their unmasked total over their slots) and their updates, once the reveals suffice."""
        if self.request is None:
            return None
        survivors = self.request["survivors"]
        dropped = set(self.request["dropped"])
        for owner in survivors:
            if sum(owner in r.self_mask_shares for r in self.reveals.values()) < self.params.threshold:
                return None
        if dropped and not all(s in self.reveals and dropped <= set(self.reveals[s].pair_seeds) for s in survivors):
            return None
        used = [self.updates[s] for s in survivors]
        masked = [MaskedUpdate(u.site_id, self.buffer, u.delta.astype(np.uint32), {}) for u in used]
        total = self.server.unmask(masked, list(self.reveals.values()))
        slots = sum(max(1, u.num_examples) for u in used)
        mean = dequantize(total, self.params.scale) / slots
        for u in used:
            u.staleness = 0
            u.weight = max(1, u.num_examples) / slots
        return mean, used
