"""Shared by quality.py and rounds.py: real data sets as per-site streams, and the learning arms.

Everything runs in process on the platform's real code paths: records come from the topology's
``source`` sections through ``read_source_rows`` (what ``streamfed replay`` produces) and the
topology's ``Featurizer``; every arm learns with ``SiteLearner`` (the personal model: river online
learner on every record, torch steps from its replay buffer where the topology has a deep model;
the served blend; prequential scoring of personal, global and served); federated updates are made
by ``SiteLearner.make_update`` (per-record clipped gradients, Gaussian noise with sigma calibrated by
dp-accounting from the topology's per-record epsilon, ledger, Ed25519 signature), encoded as Avro,
checked by ``Aggregator.verify`` and combined by the topology's ``FedBuff``, rule and server
optimizer. No broker: time triggers are disabled (a stopped clock), so a run is deterministic for a
given seed.

``run_secure`` drives secure aggregation (``aggregation.secure``) the same way: each update is
noised with sigma C / sqrt(t), quantised and masked by ``SecureSite.encode`` before signing, checked
by ``Aggregator.verify`` (which applies ``SecureBuffer.check``) and buffered; when every site has
sent one against the current version, ``SecureBuffer.make_request`` goes to every site through the
Avro wire format, each ``SecureSite.answer`` comes back signed, ``SecureBuffer.add_reveal`` checks
it and ``SecureBuffer.unmask`` yields the mean, applied with the server learning rate as the
aggregator does.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

from streamfed.aggregation.aggregator import Aggregator, Rejected
from streamfed.aggregation.build import build_aggregator
from streamfed.aggregation.secure import SecureBuffer
from streamfed.learners.features import Featurizer
from streamfed.privacy.accountant import resolve
from streamfed.privacy.secagg import write_x25519_keypair
from streamfed.privacy.signing import write_keypair
from streamfed.serde.avro import AvroCodec
from streamfed.serde.tensors import params_to_bytes, sha256_hex
from streamfed.site.build import build_learner, build_secure_site
from streamfed.site.learner import SiteLearner
from streamfed.site.secure import SecureSite
from streamfed.sources.replay import read_source_rows
from streamfed.topology import Topology, load_topology
from streamfed.topology.loader import schema_fields

NEVER = 1 << 40  # an update trigger that never fires (local-only and centralised arms publish nothing)
BATCH = 10  # records a site learns at a time: what a 0.1 s poll holds at the topologies' replay rates
KINDS = ("served", "local", "global")  # the three prequential scores of a site


class _StoppedClock:
    def __call__(self) -> float:
        return 0.0


@dataclass
class SiteData:
    """One site's stream after decoding and featurizing: rows in replay order."""

    site: str
    X: np.ndarray
    y: np.ndarray  # NaN where the label is unknown
    t: np.ndarray  # order key shared by all sites (file row, hour, or position for unordered files)
    dead: int = 0


# Overrides applied to every topology ``load`` returns, under each call's own (``quality.py --online-micro-batch``).
BASE_OVERRIDES: dict[str, Any] = {}


def _merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def load(name: str, overrides: Mapping[str, Any] | None = None, state_dir: Path | None = None) -> Topology:
    """A shipped topology with its state (keys) under a temporary folder."""
    state = state_dir or Path(tempfile.mkdtemp(prefix="streamfed-bench-"))
    return load_topology(name, {**_merged(BASE_OVERRIDES, overrides or {}), "state_dir": str(state)})


def load_sites(topo: Topology, max_rows: int | None = None, sites: list[str] | None = None) -> dict[str, SiteData]:
    """Every site's source file as a featurized stream (dead-lettered records dropped and counted)."""
    fields = schema_fields(topo.model.record_schema)
    id_field = next(iter(fields))
    feat = Featurizer(topo.model.features, topo.model.label)
    out: dict[str, SiteData] = {}
    for spec in topo.sites:
        if sites is not None and spec.id not in sites:
            continue
        assert spec.source is not None, f"site {spec.id} has no source"
        recs = []
        for rec in read_source_rows(spec.source, spec.id, fields, topo.model.label, id_field):
            recs.append(rec)
            if max_rows is not None and len(recs) >= max_rows:
                break
        X, y, status = feat.transform(recs)
        good = np.array([s is True for s in status], dtype=bool)
        if spec.source.shuffle_seed is not None:  # no time order: interleave sites proportionally
            t = (np.arange(len(recs)) + 0.5) / max(1, len(recs))
        else:
            t = np.array([float(r[id_field].rsplit("-", 1)[1]) for r in recs])
        out[spec.id] = SiteData(spec.id, X[good], y[good], t[good], dead=int((~good).sum()))
    return out


def schedule(data: Mapping[str, SiteData], chunk: int) -> list[list[tuple[str, int, int]]]:
    """The pooled stream in order of ``t``, cut into chunks of ``chunk`` records; each chunk lists
    every site's contiguous slice ``(site, start, end)``."""
    keys = np.concatenate([d.t for d in data.values()])
    owner = np.concatenate([np.full(len(d.t), i) for i, d in enumerate(data.values())])
    order = np.lexsort((owner, keys))
    names = list(data)
    pos = dict.fromkeys(names, 0)
    out = []
    for start in range(0, len(order), chunk):
        counts = np.bincount(owner[order[start : start + chunk]], minlength=len(names))
        part = []
        for i, n in enumerate(counts.tolist()):
            if n:
                s = names[i]
                part.append((s, pos[s], pos[s] + n))
                pos[s] += n
        out.append(part)
    return out


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC (ties counted half) of scores ``p`` for labels ``y`` in {0, 1}; NaN labels ignored."""
    keep = ~np.isnan(y)
    y, p = y[keep], p[keep]
    pos = int((y == 1).sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    r = rankdata(p)
    return float((r[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


@dataclass
class ArmResult:
    """Prequential scores of one arm: each record scored before it was learnt.

    ``scores[kind][site]`` for kind ``served`` (personal and global blended), ``local`` (the personal
    model) and ``global`` (the global version); arms that publish nothing have ``local`` only.
    """

    name: str
    scores: dict[str, dict[str, np.ndarray]]
    versions: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    epsilon_per_record: float | None = None
    epsilon_rdp: float | None = None
    epsilon_pld: float | None = None
    sigma: float | None = None
    threshold: int | None = None  # secure aggregation's t
    noise_std: float | None = None  # the std each site adds to each sum (sigma C, or sigma C / sqrt(t))
    unmask_error: float | None = None  # secure: largest |unmasked step - mean of the sites' steps|
    scale: float | None = None  # secure: the quantisation scale
    # per site, (records of the site seen, the site's lifetime epsilon) after each of its releases
    epsilon_trace: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def site_auc(self, data: Mapping[str, SiteData], kind: str = "local") -> dict[str, float]:
        return {s: auc(data[s].y, self.scores[kind][s]) for s in data}

    def mean_site_auc(self, data: Mapping[str, SiteData], kind: str = "local") -> float:
        vals = [v for v in self.site_auc(data, kind).values() if not math.isnan(v)]
        return float(np.mean(vals)) if vals else float("nan")

    def pooled_auc(self, data: Mapping[str, SiteData], kind: str = "local") -> float:
        return auc(np.concatenate([data[s].y for s in data]), np.concatenate([self.scores[kind][s] for s in data]))


def _learner(topo: Topology, site: str, seed: int, publish: bool, contribute: bool | None = None) -> SiteLearner:
    if not publish:
        topo = topo.model_copy(update={"update": topo.update.model_copy(update={"every_records": NEVER})})
    return build_learner(
        topo,
        site,
        rng=np.random.default_rng(seed),
        persist=False,
        clock=_StoppedClock(),
        device="cpu",
        contribute=publish if contribute is None else contribute,
    )


def _keys(topo: Topology) -> None:
    for s in topo.sites:
        if not topo.private_key_path(s).exists():
            write_keypair(topo.private_key_path(s), topo.public_key_path(s))
        if topo.aggregation.secure is not None:
            write_x25519_keypair(topo.secagg_private_key_path(s), topo.secagg_public_key_path(s))


def _empty_scores(data: Mapping[str, SiteData], kinds: tuple[str, ...] = KINDS) -> dict[str, dict[str, np.ndarray]]:
    return {k: {s: np.full(len(d.y), np.nan, dtype=np.float32) for s, d in data.items()} for k in kinds}


def _batches(plan: list[list[tuple[str, int, int]]]) -> Iterator[tuple[str, int, int]]:
    """The plan's slices cut into batches of at most ``BATCH`` records, in plan order."""
    for part in plan:
        for s, a, b in part:
            for lo in range(a, b, BATCH):
                yield s, lo, min(b, lo + BATCH)


def run_local(
    topo: Topology, data: Mapping[str, SiteData], plan: list[list[tuple[str, int, int]]], seed: int = 0
) -> ArmResult:
    """Each site learns only its own stream (no updates leave it, so no noise)."""
    _keys(topo)
    learners = {s: _learner(topo, s, 1000 + 7919 * seed + i, publish=False) for i, s in enumerate(data)}
    scores = _empty_scores(data, ("local",))
    for s, a, b in _batches(plan):
        lr = learners[s]
        scores["local"][s][a:b] = lr.learn(data[s].X[a:b], data[s].y[a:b]).personal
        lr.maybe_step()
    return ArmResult("local-only", scores)


def run_central(
    topo: Topology, data: Mapping[str, SiteData], plan: list[list[tuple[str, int, int]]], seed: int = 0
) -> ArmResult:
    """One learner on the pooled stream, in the same order (no sites, no noise)."""
    _keys(topo)
    lr = _learner(topo, next(iter(data)), 999 + 7919 * seed, publish=False)
    scores = _empty_scores(data, ("local",))
    for part in plan:
        rows = [(s, lo, min(b, lo + BATCH)) for s, a, b in part for lo in range(a, b, BATCH)]
        X = np.concatenate([data[s].X[a:b] for s, a, b in rows])
        y = np.concatenate([data[s].y[a:b] for s, a, b in rows])
        t = np.concatenate([data[s].t[a:b] for s, a, b in rows])
        order = np.argsort(t, kind="stable")
        p = np.empty(len(y), dtype=np.float32)
        for lo in range(0, len(order), BATCH * len(part)):  # the pooled stream in batches, like the sites'
            idx = order[lo : lo + BATCH * len(part)]
            p[idx] = lr.learn(X[idx], y[idx]).personal
            lr.maybe_step()
        k = 0
        for s, a, b in rows:
            scores["local"][s][a:b] = p[k : k + b - a]
            k += b - a
    return ArmResult("centralised", scores)


class Server:
    """The aggregator's real checks and FedBuff, driven in process (as ``run_federation`` does)."""

    def __init__(self, topo: Topology) -> None:
        _keys(topo)
        self.topo = topo
        self.agg: Aggregator = build_aggregator(topo)
        self.codec = AvroCodec("model_update")

    @property
    def version(self) -> int:
        return self.agg.state.version

    @property
    def params(self) -> np.ndarray:
        return self.agg.state.params

    def submit(self, record: dict[str, Any]) -> bool:
        """Verify and buffer one update; True when a new version was made."""
        try:
            pending = self.agg.verify(self.codec.encode(record), self.topo.updates_topic)
        except Rejected as rej:
            self.agg.report.rejected += 1
            reasons = self.agg.report.rejected_reasons
            reasons[rej.reason] = reasons.get(rej.reason, 0) + 1
            return False
        self.agg.report.accepted += 1
        if not self.agg.fedbuff.add(pending):
            return False
        state = self.agg.state
        state.params, _used, state.opt = self.agg.fedbuff.aggregate(state.params, state.version, state.opt)
        state.version += 1
        self.agg.report.versions += 1
        return True

    def sha(self) -> str:
        return sha256_hex(params_to_bytes(self.params))


def _learn(lr: SiteLearner, data: SiteData, a: int, b: int, scores: dict[str, dict[str, np.ndarray]], s: str) -> None:
    got = lr.learn(data.X[a:b], data.y[a:b])
    scores["served"][s][a:b] = got.served
    scores["local"][s][a:b] = got.personal
    scores["global"][s][a:b] = got.global_
    lr.maybe_step()


def _privacy(topo: Topology) -> dict[str, float]:
    _, cal = resolve(topo.privacy)
    return {
        "epsilon_per_record": cal.epsilon,
        "epsilon_rdp": cal.epsilon_rdp,
        "epsilon_pld": cal.epsilon_pld,
        "sigma": cal.sigma,
    }


def run_federated(
    topo: Topology,
    data: Mapping[str, SiteData],
    plan: list[list[tuple[str, int, int]]],
    seed: int = 0,
    on_version: Callable[[int], None] | None = None,
) -> ArmResult:
    """StreamFed: every site learns its stream and publishes private updates; each new version
    reaches every site at once. Every record is scored by the served blend, the personal model and
    the global version before anything learns it."""
    server = Server(topo)
    root = np.random.default_rng(seed)
    learners = {s: _learner(topo, s, int(root.integers(1 << 62)), publish=True) for s in data}
    scores = _empty_scores(data)
    trace: dict[str, list[tuple[int, float]]] = {s: [] for s in data}
    for s, a, b in _batches(plan):
        lr = learners[s]
        _learn(lr, data[s], a, b, scores, s)
        while lr.due():
            record = lr.make_update()
            if record is None:
                break
            trace[s].append((b, lr.ledger.spent))
            if server.submit(record):
                sha = server.sha()
                for other in learners.values():
                    other.rebase(server.version, server.params, sha)
                if on_version is not None:
                    on_version(server.version)
    priv = _privacy(topo)
    return ArmResult(
        "streamfed",
        scores,
        versions=server.agg.report.versions,
        accepted=server.agg.report.accepted,
        rejected=dict(server.agg.report.rejected_reasons),
        noise_std=priv["sigma"] * topo.privacy.clip_norm,
        epsilon_trace=trace,
        **priv,
    )


def secure_topology(
    name: str, epsilon: float, threshold: int | None = None, server_learning_rate: float | None = None
) -> Topology:
    """A shipped topology at per-record ``epsilon`` with ``aggregation.secure`` (threshold ``t``,
    default every site; rule mean, as the shipped topologies have), optionally another server step."""
    t = threshold or len(load(name).sites)
    agg: dict[str, Any] = {"rule": "mean", "secure": {"threshold": t}}
    if server_learning_rate is not None:
        agg["server_learning_rate"] = server_learning_rate
    return load(name, {"privacy": {"epsilon": epsilon}, "aggregation": agg})


class SecureServer:
    """The aggregator's verify and ``SecureBuffer`` driven in process: a buffer closes when every
    site has sent its update against the current version (no dropouts in process); its request and
    the sites' reveals pass through the ``secagg_message`` Avro format."""

    def __init__(self, topo: Topology) -> None:
        _keys(topo)
        self.topo = topo
        self.agg: Aggregator = build_aggregator(topo)
        assert self.agg.secure is not None
        self.buffer: SecureBuffer = self.agg.secure
        self.buffer.clock = _StoppedClock()
        self.buffer.reset(0)
        self.codec = AvroCodec("model_update")
        self.secagg = AvroCodec("secagg_message")
        self.noised: dict[str, np.ndarray] = {}  # each site's noised delta, kept only to check the unmasked mean
        self.max_unmask_error = 0.0

    @property
    def version(self) -> int:
        return self.agg.state.version

    @property
    def params(self) -> np.ndarray:
        return self.agg.state.params

    def sha(self) -> str:
        return sha256_hex(params_to_bytes(self.params))

    def submit(self, record: dict[str, Any], sites: Mapping[str, SecureSite], bases: Mapping[str, int]) -> bool:
        """Verify and buffer one masked update; when the buffer is due, run the recovery with every
        site and unmask. True when a new version was made."""
        try:
            pending = self.agg.verify(self.codec.encode(record), self.topo.updates_topic)
        except Rejected as rej:
            self.agg.report.rejected += 1
            reasons = self.agg.report.rejected_reasons
            reasons[rej.reason] = reasons.get(rej.reason, 0) + 1
            return False
        self.agg.report.accepted += 1
        self.buffer.add(pending)
        if not self.buffer.due():
            return False
        request = self.secagg.decode(self.secagg.encode(self.buffer.make_request()))
        for sid, site in sites.items():
            reveal = site.answer(request, bases[sid])
            if reveal is not None:
                self.buffer.add_reveal(self.secagg.decode(self.secagg.encode(reveal)))
        out = self.buffer.unmask()
        if out is None:
            raise RuntimeError(f"secure buffer {self.buffer.buffer} could not be unmasked with every site's reveal")
        mean, used = out
        # What the protocol must give: the sum of the sites' noised sums (each clipped to the bound)
        # over their slots, up to one quantisation step per site. The benchmark stops otherwise.
        bound = self.buffer.params.bound
        slots = sum(u.num_examples for u in used)
        expected = np.sum([np.clip(self.noised.pop(u.site_id), -bound, bound) for u in used], axis=0) / slots
        err = float(np.max(np.abs(mean - expected))) * slots
        self.max_unmask_error = max(self.max_unmask_error, err)
        if err > 2.0 * len(used) / self.buffer.params.scale:
            raise RuntimeError(f"secure buffer {self.buffer.buffer}: unmasked sum is off by {err:.3g}")
        state = self.agg.state
        assert self.agg.fedbuff.optimizer is not None
        state.params, state.opt = self.agg.fedbuff.optimizer.step(state.params, mean.astype(np.float32), state.opt)
        state.version += 1
        self.agg.report.versions += 1
        self.buffer.reset(self.agg.state.version)
        return True


def _keeping(
    store: dict[str, np.ndarray], site: str, secure: SecureSite
) -> Callable[[np.ndarray, dict[str, Any]], None]:
    def encode(noised: np.ndarray, record: dict[str, Any]) -> None:
        store[site] = noised.astype(np.float64)
        secure.encode(noised, record)

    return encode


def run_secure(
    topo: Topology,
    data: Mapping[str, SiteData],
    plan: list[list[tuple[str, int, int]]],
    seed: int = 0,
) -> ArmResult:
    """StreamFed with secure aggregation: as ``run_federated``, but a site that has an update in the
    current buffer keeps learning (its window grows) until the next version, as ``SiteProcessor``
    does, and a version is the unmasked mean of one update per site."""
    assert topo.aggregation.secure is not None
    server = SecureServer(topo)
    root = np.random.default_rng(seed)
    learners = {s: _learner(topo, s, int(root.integers(1 << 62)), publish=True) for s in data}
    secure = {s: build_secure_site(topo, lr) for s, lr in learners.items()}
    scores = _empty_scores(data)
    for s, a, b in _batches(plan):
        lr = learners[s]
        _learn(lr, data[s], a, b, scores, s)
        if not lr.due() or not secure[s].can_publish(lr.base_version):
            continue
        record = lr.make_update(encode=_keeping(server.noised, s, secure[s]), merge=True)
        bases = {o: other.base_version for o, other in learners.items()}
        if record is not None and server.submit(record, secure, bases):
            sha = server.sha()
            for other in learners.values():
                other.rebase(server.version, server.params, sha)
    priv = _privacy(topo)
    return ArmResult(
        "secure",
        scores,
        versions=server.agg.report.versions,
        accepted=server.agg.report.accepted,
        rejected=dict(server.agg.report.rejected_reasons),
        threshold=topo.aggregation.secure.threshold,
        noise_std=priv["sigma"] * topo.privacy.clip_norm / server.buffer.params.noise_divisor,
        unmask_error=server.max_unmask_error,
        scale=server.buffer.params.scale,
        **priv,
    )


def per_record_epsilon(topo: Topology) -> tuple[float, float]:
    """(sigma calibrated from the topology's target, the guarantee: the tighter of RDP and PLD)."""
    _, cal = resolve(topo.privacy)
    return cal.sigma, cal.epsilon


def chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for a in range(0, n, size):
        yield a, min(n, a + size)
