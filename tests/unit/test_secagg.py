"""Secure aggregation: masks cancel exactly, a dropout still yields the sum, a masked update looks uniform."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from scipy import stats

from streamfed.errors import AggregationError
from streamfed.privacy.secagg import (
    SecAggClient,
    SecAggServer,
    dequantize,
    quantization_scale,
    quantize,
    shamir_combine,
    shamir_split,
)

SITES = ["a", "b", "c", "d", "e"]


def _cohort(threshold: int = 3) -> tuple[dict[str, SecAggClient], SecAggServer]:
    keys = {s: X25519PrivateKey.generate() for s in SITES}
    pubs = {s: k.public_key() for s, k in keys.items()}
    clients = {s: SecAggClient(s, SITES, keys[s], pubs, threshold, b"topology-t") for s in SITES}
    return clients, SecAggServer(SITES, threshold)


def _round(clients, present, n=1000, buffer=7, seed=0):
    rng = np.random.default_rng(seed)
    scale = quantization_scale(4.0, len(SITES))
    xs = {s: rng.normal(0, 1, n) for s in present}
    qs = {s: quantize(xs[s], scale, 4.0, rng) for s in present}
    masked = [clients[s].mask(buffer, qs[s]) for s in present]
    for m in masked:
        for s in present:
            clients[s].receive(m)
    return xs, qs, masked, scale


def test_shamir_threshold() -> None:
    secret = 2**255 + 12345
    shares = shamir_split(secret, 5, 3)
    assert shamir_combine(shares[:3]) == secret
    assert shamir_combine([shares[4], shares[0], shares[2]]) == secret
    assert shamir_combine(shares[:2]) != secret


def test_masks_cancel_exactly_when_everyone_is_present() -> None:
    clients, server = _cohort()
    _, qs, masked, _ = _round(clients, SITES)
    # the pairwise masks alone cancel in the sum
    n = 1000
    pair = sum(clients[s].pairwise_mask(7, n).astype(np.uint64) for s in SITES) % (1 << 32)
    assert not pair.any()
    reveals = [clients[s].reveal(7, SITES, []) for s in SITES]
    total = server.unmask(masked, reveals)
    expected = sum(q.astype(np.uint64) for q in qs.values()) % (1 << 32)
    assert np.array_equal(total, expected.astype(np.uint32))


def test_one_dropout_still_yields_the_correct_sum() -> None:
    clients, server = _cohort()
    present = ["a", "b", "c", "e"]  # d dropped after the cohort was formed
    xs, qs, masked, scale = _round(clients, present)
    reveals = [clients[s].reveal(7, present, ["d"]) for s in present]
    total = server.unmask(masked, reveals)
    expected = sum(q.astype(np.uint64) for q in qs.values()) % (1 << 32)
    assert np.array_equal(total, expected.astype(np.uint32))
    # and dequantised, the sum is the float sum up to rounding
    approx = dequantize(total, scale)
    assert np.max(np.abs(approx - sum(xs.values()))) < len(present) / scale + 1e-9


def test_a_site_never_reveals_both_masks_of_one_peer() -> None:
    clients, _ = _cohort()
    clients["a"].reveal(3, ["a", "b", "c"], ["d"])
    with pytest.raises(AggregationError):
        clients["a"].reveal(3, ["a", "b", "c", "d"], [])


def test_too_few_survivors_cannot_unmask() -> None:
    clients, server = _cohort(threshold=3)
    _, _, masked, _ = _round(clients, ["a", "b"])
    reveals = [clients[s].reveal(7, ["a", "b"], ["c", "d", "e"]) for s in ["a", "b"]]
    with pytest.raises(AggregationError):
        server.unmask(masked, reveals)


def test_a_single_masked_update_is_indistinguishable_from_uniform() -> None:
    clients, _ = _cohort()
    n = 200_000
    x = np.full(n, 0.5)  # a constant update: any structure would show
    q = quantize(x, quantization_scale(4.0, 5), 4.0, np.random.default_rng(1))
    values = clients["a"].mask(11, q).values
    u = values.astype(np.float64) / 2**32
    # the keys are fresh each run, so each p-value is uniform under the null: 1e-6 makes a false
    # failure a one-in-a-million event, while any structure over 200,000 values gives p far below it
    assert stats.kstest(u, "uniform").pvalue > 1e-6
    counts = np.bincount((values >> 24).astype(np.int64), minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-6
    # the unmasked quantised vector is, of course, far from uniform
    assert stats.kstest(q.astype(np.float64) / 2**32, "uniform").pvalue < 1e-6
