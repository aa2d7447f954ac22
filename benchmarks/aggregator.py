"""Updates/s of the aggregator's verification and FedBuff aggregation, by model size, buffer and rule.

In process, no Kafka: real signed updates (made by ``SiteLearner.make_update``: clipped, noised,
accounted, signed, Avro-encoded) go through ``Aggregator.verify`` (decode, Ed25519 signature over
the header and the SHA-256 of the parameters, sequence, model, shape, finite values, norm, staleness)
and ``FedBuff.add``/``FedBuff.aggregate`` with each rule, as ``run_federation`` does.

Model sizes come from the ``fraud`` topology with ``model.deep.hidden = [h, h]`` (h chosen so the
parameter count is about 1e3, 1e5 and 1e6). The baseline, measured in the same run, is a floor for
any verifier that checks what this one checks: one SHA-256 pass over the encoded update, one Ed25519
verification of a signature over a header of the same size, and one float64 L2 norm of the parameters.
Per-parameter cost ratios between sizes show how the cost per update grows with the model.

    python benchmarks/aggregator.py           # 1e3, 1e5, 1e6 x K 3/10/30 x 4 rules (~1-2 min)
    python benchmarks/aggregator.py --quick   # 1e3 and 1e5, K 3/10 (< 60 s)
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent))
import itertools

from _common import header, median, ratio, table

from streamfed.aggregation.build import build_aggregator
from streamfed.aggregation.rules import RULES
from streamfed.learners.federated import build_federated_model
from streamfed.privacy.accountant import resolve_noise_multiplier
from streamfed.privacy.mechanisms import l2_norm
from streamfed.privacy.signing import canonical_message, write_keypair
from streamfed.serde.avro import AvroCodec
from streamfed.serde.tensors import params_to_bytes, sha256_hex
from streamfed.site.build import build_learner
from streamfed.topology import Topology, load_topology

SITES = [f"site-{i}" for i in range(6)]
N_FEATURES = 14  # the fraud topology's feature count (linear part: 14 weights + intercept)


def hidden_for(target: int) -> list[int]:
    """[h, h] such that the fraud model (linear + MLP d-h-h-1) has about ``target`` parameters."""
    online = N_FEATURES + 1
    if target < 5000:  # one hidden layer: 15 + (d + 2) h + 1
        return [max(1, round((target - online - 1) / (N_FEATURES + 2)))]
    # 15 + d h + h + h^2 + h + h + 1 = h^2 + (d + 3) h + 16
    b = N_FEATURES + 3
    return [round((-b + math.sqrt(b * b + 4 * (target - online - 1))) / 2)] * 2


def topology(state: Path, hidden: list[int], rule: str = "mean", buffer: int = 3, norm_bound: float = 1.0) -> Topology:
    return load_topology(
        "fraud",
        {
            "name": "benchagg",
            "state_dir": str(state),
            "sites": [{"id": s} for s in SITES],
            "model": {"deep": {"hidden": hidden}},
            "aggregation": {
                "rule": rule,
                "buffer_size": buffer,
                "norm_bound": norm_bound,
                "max_staleness": 1_000_000,
            },
        },
    )


def make_updates(topo: Topology, count: int, seed: int) -> tuple[list[bytes], list[dict[str, Any]]]:
    """``count`` signed, encoded updates from the sites in turn (each after a little learning)."""
    for s in topo.sites:
        write_keypair(topo.private_key_path(s), topo.public_key_path(s))
    root = np.random.default_rng(seed)
    learners = [
        build_learner(topo, s.id, rng=np.random.default_rng(root.integers(1 << 62)), persist=False, device="cpu")
        for s in topo.sites
    ]
    x = root.normal(size=(64, learners[0].featurizer.dim)).astype(np.float32)
    y = (root.random(64) < 0.3).astype(np.float32)
    codec = AvroCodec("model_update")
    blobs, records = [], []
    for i in range(count):
        learner = learners[i % len(learners)]
        learner.learn(x, y)
        record = learner.make_update()
        assert record is not None
        blobs.append(codec.encode(record))
        records.append(record)
    return blobs, records


def floor_seconds(blobs: list[bytes], records: list[dict[str, Any]]) -> float:
    """Per update: SHA-256 of the encoded update, one Ed25519 verify, a float64 L2 norm of its parameters."""
    key = Ed25519PrivateKey.generate()
    header = canonical_message(records[0])
    signature = key.sign(header)
    pub = key.public_key()
    t0 = time.perf_counter()
    for blob, rec in zip(blobs, records, strict=True):
        hashlib.sha256(blob).digest()
        pub.verify(signature, header)
        l2_norm(np.frombuffer(rec["params"], dtype="<f4"))
    return (time.perf_counter() - t0) / len(blobs)


def run_config(topo: Topology, blobs: list[bytes]) -> tuple[float, float, int]:
    """(verify s/update, aggregate s/update, versions) over every update, as run_federation does."""
    agg = build_aggregator(topo)
    t_verify = t_agg = 0.0
    versions = 0
    for blob in blobs:
        t0 = time.perf_counter()
        pending = agg.verify(blob, topo.updates_topic)
        t1 = time.perf_counter()
        t_verify += t1 - t0
        if agg.fedbuff.add(pending):
            params, _used, agg.state.opt = agg.fedbuff.aggregate(agg.state.params, agg.state.version, agg.state.opt)
            sha256_hex(params_to_bytes(params))  # every version record carries its parameters' hash
            agg.state.params = params
            agg.state.version += 1
            versions += 1
            t_agg += time.perf_counter() - t1
    return t_verify / len(blobs), t_agg / len(blobs), versions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="sizes 1e3 and 1e5, buffers 3 and 10 (CI smoke test)")
    ap.add_argument("--sizes", default=None, help="comma-separated parameter counts (default 1000,100000,1000000)")
    ap.add_argument("--buffers", default=None, help="comma-separated buffer sizes K (default 3,10,30)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions of each configuration (default 5; quick 1)")
    args = ap.parse_args()
    sizes = [int(float(s)) for s in (args.sizes or ("1e3,1e5" if args.quick else "1e3,1e5,1e6")).split(",")]
    buffers = [int(k) for k in (args.buffers or ("3,10" if args.quick else "3,10,30")).split(",")]
    reps = args.reps or (1 if args.quick else 3)
    header("aggregator: updates/s of verify + FedBuff aggregation (in process)", args)

    rows: list[list[object]] = []
    per_param: dict[tuple[str, int, int], float] = {}
    totals: dict[tuple[str, int], list[tuple[int, float]]] = {}
    verify_per_param: dict[int, float] = {}
    floor_ratio: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="streamfed-bench-") as tmp:
        for target in sizes:
            hidden = hidden_for(target)
            base = topology(Path(tmp) / f"n{target}", hidden)
            n_params = build_federated_model(base.model, device="cpu").num_params
            lcm = math.lcm(*buffers)
            wanted = 120 if target < 5e4 else (60 if target < 5e5 else 30)
            count = lcm * max(1, round(wanted / lcm)) if not args.quick else lcm * 2
            count = max(count, 2 * max(buffers))
            blobs, records = make_updates(base, count, seed=target)
            sigma = resolve_noise_multiplier(base.privacy)
            bound = base.privacy.clip_norm * sigma * math.sqrt(n_params)  # about the median noised norm
            floors: list[float] = []
            size_verify: list[float] = []
            for k in buffers:
                for rule in RULES:
                    topo = topology(Path(tmp) / f"n{target}", hidden, rule, k, bound)
                    runs = []
                    for _ in range(reps):  # the floor is measured next to every run, so it sees the same load
                        floors.append(floor_seconds(blobs, records))
                        runs.append(run_config(topo, blobs))
                    # Minimum over repetitions: on a shared machine, noise only ever adds time.
                    t_v = min(r[0] for r in runs)
                    t_a = min(r[1] for r in runs)
                    size_verify.append(t_v)
                    total = t_v + t_a
                    per_param[(rule, k, target)] = total / n_params
                    totals.setdefault((rule, k), []).append((n_params, total))
                    rows.append(
                        [
                            f"{n_params:,}",
                            rule,
                            k,
                            1 / total,
                            t_v * 1e6,
                            t_a * 1e6,
                            total * 1e9 / n_params,
                            runs[0][2],
                        ]
                    )
            floor = min(floors)
            verify_per_param[target] = median(size_verify) / n_params
            floor_ratio[target] = median(size_verify) / floor
            print(
                f"size {n_params:,} (hidden {hidden}): {count} updates of {len(blobs[0]):,} bytes; "
                f"floor (sha256 + ed25519 + norm) {floor * 1e6:,.0f} us/update",
                flush=True,
            )
    print()
    table(
        ["params", "rule", "K", "updates/s", "verify us/upd", "aggregate us/upd", "ns/param/upd", "versions"],
        rows,
    )
    if len(sizes) >= 2:
        fit_rows = []
        for (rule, k), pts in totals.items():
            n = np.array([p[0] for p in pts], dtype=np.float64)
            t = np.array([p[1] for p in pts])
            b, a = np.polyfit(n, t, 1, w=1 / t)  # relative least squares: small models count as much
            worst = float(np.max(np.abs((a + b * n) / t - 1)))
            fit_rows.append([rule, k, a * 1e6, b * 1e9, f"{100 * worst:.0f}%"])
        print("Fit: seconds per update = fixed + per_param * params (relative least squares over the sizes)\n")
        table(["rule", "K", "fixed us/update", "ns/param", "worst misfit"], fit_rows)
    for target, r in floor_ratio.items():
        ratio(f"verify/floor[{target:.0e}]", r)
    ordered = sorted(sizes)
    for lo, hi in itertools.pairwise(ordered):
        ratio(f"verify_per_param_cost[{hi:.0e}/{lo:.0e}]", verify_per_param[hi] / verify_per_param[lo])
        for k in buffers:
            for rule in RULES:
                ratio(
                    f"per_param_cost[{hi:.0e}/{lo:.0e}] {rule} K={k}",
                    per_param[(rule, k, hi)] / per_param[(rule, k, lo)],
                )
    print(
        "\nA per-parameter cost ratio near 1 means the cost per update grows linearly with the model; below 1,"
        " a fixed per-update cost (decode, signature, Python) is still being amortised."
    )


if __name__ == "__main__":
    main()
