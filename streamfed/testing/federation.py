"""An in-process federation: the real site learners and the real aggregator checks, no broker.

Sites take turns learning a batch each; every update goes through the aggregator's verification
and FedBuff exactly as in a deployment, and each new version reaches every site at once. Time
triggers are disabled (a stopped clock), so a run is deterministic for a given seed. Used by tests
of aggregation rules under attack and by the quality benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from streamfed.aggregation.aggregator import Rejected
from streamfed.aggregation.build import build_aggregator
from streamfed.privacy.signing import write_keypair
from streamfed.serde.avro import AvroCodec
from streamfed.serde.tensors import params_to_bytes, sha256_hex
from streamfed.site.build import build_learner
from streamfed.site.learner import SiteLearner
from streamfed.topology.spec import Topology

Tamper = Callable[[np.ndarray], np.ndarray]


@dataclass
class FederationResult:
    versions: int
    accepted: int
    rejected: dict[str, int]
    global_auc: dict[str, float | None]
    local_auc: dict[str, float | None]
    history: list[tuple[int, float | None]] = field(default_factory=list)

    def mean_global_auc(self, sites: list[str] | None = None) -> float:
        vals = [v for s, v in self.global_auc.items() if v is not None and (sites is None or s in sites)]
        return float(np.mean(vals)) if vals else float("nan")


def run_federation(
    topo: Topology,
    streams: Mapping[str, Iterator[list[dict]]],
    seed: int = 0,
    tamper: Mapping[str, Tamper] | None = None,
    max_rounds: int | None = None,
) -> FederationResult:
    """Run until every stream is exhausted (or ``max_rounds`` turns per site).

    ``streams`` maps site id -> an iterator of record batches (decoded records). ``tamper`` makes a
    site malicious: its noised delta is rewritten before signing, as a compromised site would.
    """
    for s in topo.sites:
        write_keypair(topo.private_key_path(s), topo.public_key_path(s))
    clock = _StoppedClock()
    root = np.random.default_rng(seed)
    learners: dict[str, SiteLearner] = {
        sid: build_learner(
            topo, sid, rng=np.random.default_rng(root.integers(1 << 62)), persist=False, clock=clock, device="cpu"
        )
        for sid in streams
    }
    agg = build_aggregator(topo)
    codec = AvroCodec("model_update")
    tamper = tamper or {}
    history: list[tuple[int, float | None]] = []
    live = dict(streams)
    rounds = 0
    while live and (max_rounds is None or rounds < max_rounds):
        rounds += 1
        for sid in list(live):
            batch = next(live[sid], None)
            if batch is None:
                del live[sid]
                continue
            learner = learners[sid]
            X, y, status = learner.featurizer.transform(batch)
            good = np.array([st is True for st in status], dtype=bool)
            learner.learn(X[good], y[good])
            learner.maybe_step()
            if not learner.due():
                continue
            record = learner.make_update(tamper.get(sid))
            if record is None:
                continue
            try:
                pending = agg.verify(codec.encode(record), topo.updates_topic)
            except Rejected as rej:
                agg.report.rejected += 1
                agg.report.rejected_reasons[rej.reason] = agg.report.rejected_reasons.get(rej.reason, 0) + 1
                continue
            agg.report.accepted += 1
            if agg.fedbuff.add(pending):
                params, _used, opt = agg.fedbuff.aggregate(agg.state.params, agg.state.version, agg.state.opt)
                agg.state.version += 1
                agg.state.params, agg.state.opt = params, opt
                agg.report.versions += 1
                sha = sha256_hex(params_to_bytes(params))
                for other in learners.values():
                    other.rebase(agg.state.version, params, sha)
                aucs = [lr.global_metrics.get_auc() for lr in learners.values()]
                known = [a for a in aucs if a is not None]
                history.append((agg.state.version, float(np.mean(known)) if known else None))
    return FederationResult(
        versions=agg.report.versions,
        accepted=agg.report.accepted,
        rejected=dict(agg.report.rejected_reasons),
        global_auc={sid: lr.global_metrics.get_auc() for sid, lr in learners.items()},
        local_auc={sid: lr.local_metrics.get_auc() for sid, lr in learners.items()},
        history=history,
    )


class _StoppedClock:
    """A clock that never advances: only record-count triggers fire."""

    def __call__(self) -> float:
        return 0.0
