"""Secure aggregation of one buffer of updates (Bonawitz et al. 2017, double masking).

Each site of a cohort quantises its noised sum of clipped per-record gradients to integers modulo 2^32 with stochastic
rounding, then adds

* a **self-mask** ``PRG(r_i)`` from a fresh random seed ``r_i``, Shamir-shared among the cohort, and
* **pairwise masks** ``+PRG(s_ij)`` for each peer ``j`` after it and ``-PRG(s_ij)`` for each peer
  before it (in cohort order), where ``s_ij`` is derived per buffer from an X25519 agreement
  (HKDF-SHA256) and the PRG is a ChaCha20 keystream.

Pairwise masks cancel in the sum over the sites present. For a site that dropped out, each
survivor reveals its pairwise seeds with it for this buffer only; for every survivor, the cohort
reveals Shamir shares of its self-mask seed. An honest site never reveals both for the same peer,
so a late update from a "dropped" site stays masked. The aggregator thus learns the sum and
nothing about any one site's update (against an aggregator that follows the protocol and fewer
than ``threshold`` colluding sites).

Distributed noise: each site adds Gaussian noise of std ``sigma C / sqrt(threshold)`` to its sum;
any sum the aggregator can unmask has at least ``threshold`` contributions, hence noise std at
least ``sigma C``, and a record (in one site's sum, sensitivity C under zero-out adjacency) is
protected as by one release of noise multiplier ``sigma`` — the accountant is unchanged, but the
noise in the total is divided by ``sqrt(threshold)`` relative to per-site noise.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from streamfed.errors import AggregationError
from streamfed.privacy.accountant import resolve_noise_multiplier
from streamfed.privacy.signing import load_pem_key, pem_pair, write_keypair
from streamfed.topology.spec import Topology

U32 = npt.NDArray[np.uint32]
PRIME = 2**521 - 1  # a Mersenne prime: 256-bit seeds are field elements
MOD = 1 << 32


# -- Shamir secret sharing over GF(PRIME) ------------------------------------------------------
def shamir_split(secret: int, n: int, threshold: int) -> list[tuple[int, int]]:
    """``n`` shares ``(x, y)`` of ``secret``; any ``threshold`` of them recover it, fewer reveal nothing.

    >>> shares = shamir_split(12345, 5, 3)
    >>> shamir_combine(shares[1:4])
    12345
    """
    if not 1 <= threshold <= n:
        raise ValueError(f"need 1 <= threshold <= n, got threshold={threshold}, n={n}")
    if not 0 <= secret < PRIME:
        raise ValueError("secret out of the field")
    coeffs = [secret] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = []
    for x in range(1, n + 1):
        y = 0
        for c in reversed(coeffs):
            y = (y * x + c) % PRIME
        shares.append((x, y))
    return shares


def shamir_combine(shares: Sequence[tuple[int, int]]) -> int:
    """Lagrange interpolation at 0."""
    xs = [x for x, _ in shares]
    if len(set(xs)) != len(xs):
        raise ValueError("duplicate share indices")
    total = 0
    for i, (xi, yi) in enumerate(shares):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        total = (total + yi * num * pow(den, PRIME - 2, PRIME)) % PRIME
    return total


# -- primitives --------------------------------------------------------------------------------
def prg(seed: bytes, label: bytes, n: int) -> U32:
    """``n`` uint32 from a ChaCha20 keystream keyed by ``seed`` (32 bytes), nonce from ``label``."""
    nonce = hashlib.sha256(label).digest()[:16]
    enc = Cipher(algorithms.ChaCha20(seed, nonce), mode=None).encryptor()
    return np.frombuffer(enc.update(b"\x00" * (4 * n)), dtype="<u4").astype(np.uint32)


def quantize(x: npt.NDArray[np.floating], scale: float, bound: float, rng: np.random.Generator) -> U32:
    """``round(clip(x, -bound, bound) * scale)`` with stochastic rounding, as uint32 modulo 2^32."""
    v = np.clip(x.astype(np.float64), -bound, bound) * scale
    low = np.floor(v)
    q = low + (rng.random(v.shape) < (v - low))
    return q.astype(np.int64).astype(np.uint32)


def dequantize(total: U32, scale: float) -> npt.NDArray[np.float64]:
    """A sum modulo 2^32 read as a signed 32-bit integer, divided by ``scale``."""
    return total.astype(np.uint32).view(np.int32).astype(np.float64) / scale


def quantization_scale(bound: float, cohort_size: int) -> float:
    """The largest scale for which the sum of ``cohort_size`` values in ``[-bound, bound]`` fits in int32."""
    return float((2**31 - 1) // (cohort_size * (bound + 1.0)))


def _pair_key(own: X25519PrivateKey, peer: X25519PublicKey, context: bytes) -> bytes:
    shared = own.exchange(peer)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"streamfed-secagg-v1", info=context).derive(shared)


def _label(buffer: int, kind: bytes) -> bytes:
    return kind + struct.pack(">Q", buffer)


def public_bytes(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# -- messages ------------------------------------------------------------------------------------
@dataclass
class MaskedUpdate:
    site: str
    buffer: int
    values: U32
    shares: dict[str, bytes]  # peer -> encrypted Shamir share of this site's self-mask seed


@dataclass
class Reveal:
    site: str
    buffer: int
    self_mask_shares: dict[str, tuple[int, int]] = field(default_factory=dict)  # survivor -> its share
    pair_seeds: dict[str, bytes] = field(default_factory=dict)  # dropped peer -> s_(site, peer)


class SecAggClient:
    """One site's side: mask an update for a buffer, decrypt peers' shares, answer a recovery."""

    def __init__(
        self,
        site: str,
        cohort: Sequence[str],
        key: X25519PrivateKey,
        peers: Mapping[str, X25519PublicKey],
        threshold: int,
        context: bytes,
    ) -> None:
        if site not in cohort:
            raise ValueError(f"{site} is not in the cohort")
        self.site = site
        self.cohort = sorted(cohort)
        self.threshold = threshold
        self.context = context
        self._pair = {p: _pair_key(key, peers[p], context) for p in self.cohort if p != site}
        self._held: dict[tuple[int, str], tuple[int, int]] = {}  # (buffer, owner) -> my share of owner's seed
        self._revealed: dict[int, tuple[set[str], set[str]]] = {}

    def _pair_seed(self, peer: str, buffer: int) -> bytes:
        return hashlib.sha256(self._pair[peer] + _label(buffer, b"pair")).digest()

    def pairwise_mask(self, buffer: int, n: int) -> U32:
        total = np.zeros(n, dtype=np.uint64)
        for peer in self._pair:
            m = prg(self._pair_seed(peer, buffer), _label(buffer, b"mask"), n).astype(np.uint64)
            total += m if self.site < peer else (MOD - m)
        return (total % MOD).astype(np.uint32)

    def mask(self, buffer: int, quantized: U32) -> MaskedUpdate:
        seed = secrets.token_bytes(32)
        n = quantized.size
        values = (
            quantized.astype(np.uint64)
            + prg(seed, _label(buffer, b"self"), n).astype(np.uint64)
            + self.pairwise_mask(buffer, n).astype(np.uint64)
        ) % MOD
        shares = shamir_split(int.from_bytes(seed, "big"), len(self.cohort), self.threshold)
        enc: dict[str, bytes] = {}
        for peer, (x, y) in zip(self.cohort, shares, strict=True):
            plain = pack_share((x, y))
            if peer == self.site:
                self._held[(buffer, self.site)] = (x, y)
                continue
            aad = _label(buffer, self.site.encode() + b">" + peer.encode())
            nonce = hashlib.sha256(aad).digest()[:12]
            enc[peer] = ChaCha20Poly1305(self._pair[peer]).encrypt(nonce, plain, aad)
        return MaskedUpdate(self.site, buffer, values.astype(np.uint32), enc)

    def receive(self, update: MaskedUpdate) -> None:
        """Keep (decrypted) this site's share of a peer's self-mask seed."""
        blob = update.shares.get(self.site)
        if blob is None or update.site == self.site:
            return
        aad = _label(update.buffer, update.site.encode() + b">" + self.site.encode())
        nonce = hashlib.sha256(aad).digest()[:12]
        plain = ChaCha20Poly1305(self._pair[update.site]).decrypt(nonce, blob, aad)
        self._held[(update.buffer, update.site)] = unpack_share(plain)

    def remember(self, buffer: int, survivors: Sequence[str], dropped: Sequence[str]) -> None:
        """Restore what an earlier run of this site revealed for ``buffer``."""
        prev = self._revealed.get(buffer, (set(), set()))
        self._revealed[buffer] = (prev[0] | set(survivors), prev[1] | set(dropped))

    def revealed(self) -> dict[int, tuple[set[str], set[str]]]:
        """Per buffer, the sites this site has treated as survivors and as dropped."""
        return dict(self._revealed)

    def reveal(self, buffer: int, survivors: Sequence[str], dropped: Sequence[str]) -> Reveal:
        """Shares of survivors' self-mask seeds, and pairwise seeds with dropped peers.

        Refuses to call a site both a survivor and dropped, for this buffer, ever: that is what
        keeps a late update of a "dropped" site masked.
        """
        s, d = set(survivors), set(dropped)
        if s & d:
            raise AggregationError(f"sites both survived and dropped: {sorted(s & d)}")
        prev = self._revealed.get(buffer)
        if prev is not None and (prev[0] & d or prev[1] & s):
            raise AggregationError(f"buffer {buffer}: a recovery contradicting an earlier one was refused")
        self._revealed[buffer] = (s | (prev[0] if prev else set()), d | (prev[1] if prev else set()))
        out = Reveal(self.site, buffer)
        for owner in s:
            share = self._held.get((buffer, owner))
            if share is not None:
                out.self_mask_shares[owner] = share
        for peer in d:
            if peer in self._pair:
                out.pair_seeds[peer] = self._pair_seed(peer, buffer)
        return out


class SecAggServer:
    """The aggregator's side: sum masked updates, then remove the masks from the reveals."""

    def __init__(self, cohort: Sequence[str], threshold: int) -> None:
        self.cohort = sorted(cohort)
        self.threshold = threshold

    def unmask(self, updates: Sequence[MaskedUpdate], reveals: Sequence[Reveal]) -> U32:
        """The sum of the survivors' quantised values (mod 2^32)."""
        if not updates:
            raise AggregationError("no updates to unmask")
        buffer = updates[0].buffer
        survivors = sorted(u.site for u in updates)
        if len(survivors) < self.threshold:
            raise AggregationError(f"{len(survivors)} survivors < threshold {self.threshold}")
        dropped = [s for s in self.cohort if s not in survivors]
        n = updates[0].values.size
        total = np.zeros(n, dtype=np.uint64)
        for u in updates:
            if u.buffer != buffer or u.values.size != n:
                raise AggregationError("updates of different buffers or shapes")
            total += u.values.astype(np.uint64)
        for owner in survivors:  # remove self-masks, reconstructed from t shares
            shares = [r.self_mask_shares[owner] for r in reveals if owner in r.self_mask_shares]
            if len(shares) < self.threshold:
                raise AggregationError(f"only {len(shares)} shares of {owner}'s seed; need {self.threshold}")
            seed = shamir_combine(shares[: self.threshold]).to_bytes(32, "big")
            total += MOD - prg(seed, _label(buffer, b"self"), n).astype(np.uint64)
        for r in reveals:  # remove pairwise masks a survivor shared with a dropped site
            if r.site not in survivors:
                continue
            for peer, seed in r.pair_seeds.items():
                if peer not in dropped:
                    continue
                m = prg(seed, _label(buffer, b"mask"), n).astype(np.uint64)
                total += (MOD - m) if r.site < peer else m
        missing = [s for s in survivors for d in dropped if not any(r.site == s and d in r.pair_seeds for r in reveals)]
        if missing:
            raise AggregationError(f"pairwise seeds with dropped sites missing from: {sorted(set(missing))}")
        return (total % MOD).astype(np.uint32)


# -- keys and parameters shared by sites and the aggregator ------------------------------------
def write_x25519_keypair(private_path: Path, public_path: Path, overwrite: bool = False) -> bool:
    """Write a new X25519 key pair (PEM) unless one exists; returns whether a pair was written."""
    return write_keypair(private_path, public_path, overwrite, lambda: pem_pair(X25519PrivateKey.generate()))


def load_x25519_private(path: Path) -> X25519PrivateKey:
    return load_pem_key(path, X25519PrivateKey, "X25519 private key", " (streamfed keys generate)")


def load_x25519_public(path: Path) -> X25519PublicKey:
    return load_pem_key(path, X25519PublicKey, "X25519 public key", " (streamfed keys generate)")


@dataclass(frozen=True)
class SecAggParams:
    """What every party of one topology must agree on."""

    topology: str
    cohort: tuple[str, ...]
    threshold: int
    bound: float

    @property
    def scale(self) -> float:
        return quantization_scale(self.bound, len(self.cohort))

    @property
    def context(self) -> bytes:
        return f"streamfed-secagg/{self.topology}".encode()

    @property
    def noise_divisor(self) -> float:
        """Each site adds ``sigma C / sqrt(t)``: any sum the aggregator can unmask carries ``sigma C``."""
        return float(np.sqrt(self.threshold))


def secagg_params(topo: Topology) -> SecAggParams:
    """The secure-aggregation parameters every party of ``topo`` derives alike."""
    spec = topo.aggregation.secure
    if spec is None:
        raise ValueError(f"topology {topo.name} does not enable aggregation.secure")
    sigma = resolve_noise_multiplier(topo.privacy)
    bound = spec.bound or default_bound(
        topo.privacy.clip_norm, sigma, spec.threshold, topo.update.every_records, topo.update.learning_rate
    )
    return SecAggParams(topo.name, tuple(sorted(s.id for s in topo.sites)), spec.threshold, bound)


def default_bound(clip_norm: float, sigma: float, threshold: int, window: int, learning_rate: float = 1.0) -> float:
    """A site masks ``-lr (S + N)``, ``S`` the sum of a window's clipped gradients: each coordinate of
    ``S`` lies in ``[-W C, W C]`` for a window of ``W`` records, and the per-site noise has std
    ``sigma C / sqrt(t)``; six standard deviations beyond ``W C`` are clipped with probability below
    2e-9 per coordinate (a site that waited for a version and merged windows may exceed it; its
    coordinates are then clipped, after the noise: post-processing)."""
    return learning_rate * clip_norm * (window + 6.0 * sigma / np.sqrt(threshold))


REVEAL_DOMAIN = b"streamfed.secagg.reveal.v1\n"


def reveal_message(rec: Mapping[str, object]) -> bytes:
    """The bytes a site signs for a reveal: everything in it but the key id and the signature."""
    header = {
        "topology": rec["topology"],
        "buffer": rec["buffer"],
        "request_id": rec["request_id"],
        "site_id": rec["site_id"],
        "survivors": sorted(rec["survivors"]),  # type: ignore[call-overload]
        "dropped": sorted(rec["dropped"]),  # type: ignore[call-overload]
        "self_mask_shares": {k: v.hex() for k, v in sorted(rec["self_mask_shares"].items())},  # type: ignore[attr-defined]
        "pair_seeds": {k: v.hex() for k, v in sorted(rec["pair_seeds"].items())},  # type: ignore[attr-defined]
        "created_ms": rec["created_ms"],
    }
    return REVEAL_DOMAIN + json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def pack_share(share: tuple[int, int]) -> bytes:
    return struct.pack(">H", share[0]) + share[1].to_bytes(66, "big")


def unpack_share(blob: bytes) -> tuple[int, int]:
    if len(blob) != 68:
        raise AggregationError(f"a Shamir share is 68 bytes, got {len(blob)}")
    return struct.unpack(">H", blob[:2])[0], int.from_bytes(blob[2:], "big")
