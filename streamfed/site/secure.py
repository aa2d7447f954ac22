"""A site's part in secure aggregation: mask one update per buffer, answer recovery requests.

The buffer of an update is its base version. A site sends at most one masked update per buffer
(it keeps learning locally until the next version arrives), and answers each of the aggregator's
requests for a buffer not yet closed with a signed reveal: its shares of the survivors' self-mask
seeds and its pairwise seeds with the dropped sites, never both for one peer (see
:mod:`streamfed.privacy.secagg`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from streamfed.errors import AggregationError
from streamfed.privacy.secagg import MaskedUpdate, SecAggClient, SecAggParams, pack_share, quantize, reveal_message
from streamfed.privacy.signing import SiteSigner

log = logging.getLogger(__name__)


class SecureSite:
    KEEP_BUFFERS = 1000  # revealed memberships kept on disk (older buffers are long closed)

    def __init__(
        self,
        site_id: str,
        params: SecAggParams,
        key: X25519PrivateKey,
        peers: Mapping[str, X25519PublicKey],
        signer: SiteSigner,
        rng: np.random.Generator,
        state_path: Path | None = None,
    ) -> None:
        self.site_id = site_id
        self.params = params
        self.client = SecAggClient(site_id, params.cohort, key, peers, params.threshold, params.context)
        self.signer = signer
        self.rng = rng
        self.sent_for: int | None = None
        self._answered: set[str] = set()
        self.refusals = 0
        # What this site revealed, per buffer, survives restarts: a restarted site must still refuse a
        # request that contradicts one it answered before.
        self.state_path = state_path
        if state_path is not None and state_path.exists():
            for buffer, (survivors, dropped) in json.loads(state_path.read_text()).items():
                self.client.remember(int(buffer), survivors, dropped)

    def _save(self) -> None:
        if self.state_path is None:
            return
        kept = dict(sorted(self.client.revealed().items())[-self.KEEP_BUFFERS :])
        doc = {str(b): [sorted(s), sorted(d)] for b, (s, d) in kept.items()}
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.state_path)

    def can_publish(self, base_version: int) -> bool:
        """One masked update per buffer: a second one would double this site's weight in the sum."""
        return self.sent_for != base_version

    def encode(self, noised: np.ndarray, record: dict[str, Any]) -> None:
        """Quantise and mask ``noised`` (the site's noised sum, ``delta * num_examples``) for the buffer
        of ``record``'s base version (before signing)."""
        buffer = int(record["base_version"])
        q = quantize(noised, self.params.scale, self.params.bound, self.rng)
        masked = self.client.mask(buffer, q)
        record["params"] = masked.values.astype("<u4").tobytes()
        record["secure_buffer"] = buffer
        record["self_mask_shares"] = masked.shares
        self.sent_for = buffer

    def answer(self, request: Mapping[str, Any], current_version: int) -> dict[str, Any] | None:
        """The signed reveal for ``request``, or None (already answered, buffer closed, or refused)."""
        if request["kind"] != "request" or request["topology"] != self.params.topology:
            return None
        rid, buffer = request["request_id"], int(request["buffer"])
        if rid in self._answered or buffer < current_version:
            return None  # a newer version exists: that buffer was closed
        self._answered.add(rid)
        for owner, blob in request["forwarded"].get(self.site_id, {}).items():
            try:
                self.client.receive(MaskedUpdate(owner, buffer, np.zeros(0, np.uint32), {self.site_id: blob}))
            except (InvalidTag, KeyError) as exc:
                log.warning("site=%s cannot decrypt %s's share for buffer %d: %r", self.site_id, owner, buffer, exc)
        try:
            reveal = self.client.reveal(buffer, request["survivors"], request["dropped"])
        except AggregationError as exc:
            self.refusals += 1
            log.warning("site=%s refuses request %s: %s", self.site_id, rid, exc)
            return None
        self._save()
        rec: dict[str, Any] = {
            "kind": "reveal",
            "topology": self.params.topology,
            "buffer": buffer,
            "request_id": rid,
            "site_id": self.site_id,
            "survivors": sorted(request["survivors"]),
            "dropped": sorted(request["dropped"]),
            "forwarded": {},
            "self_mask_shares": {o: pack_share(s) for o, s in reveal.self_mask_shares.items()},
            "pair_seeds": dict(reveal.pair_seeds),
            "created_ms": int(time.time() * 1000),
            "key_id": "",
        }
        rec["key_id"], rec["signature"] = self.signer.sign_bytes(reveal_message(rec))
        return rec
