"""The aggregator's local checkpoint: committed and pending states, and params-file clean-up."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from streamfed.aggregation.checkpoint import AggregatorState, Checkpoint


def _state(version: int, seed: int, **kw: object) -> AggregatorState:
    params = np.random.default_rng(seed).normal(size=37).astype(np.float32)
    return AggregatorState(version, params, **kw)  # type: ignore[arg-type]


def _assert_same(a: AggregatorState, b: AggregatorState) -> None:
    assert a.version == b.version
    assert a.params.dtype == np.float32 == b.params.dtype
    np.testing.assert_array_equal(a.params, b.params)
    assert a.last_sequence == b.last_sequence
    assert a.offsets == b.offsets
    assert a.cluster_id == b.cluster_id
    assert a.params_sha256 == b.params_sha256


def _params_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("params-*.np[yz]"))


def test_no_checkpoint_yet(tmp_path: Path) -> None:
    assert Checkpoint(tmp_path / "agg").load() is None


def test_committed_only(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "agg")
    state = _state(3, 1, last_sequence={"a": 4, "b": 9}, offsets={"u:0": 17, "u:1": 3}, cluster_id="c1")
    cp.write(state)
    loaded = cp.load()
    assert loaded is not None
    committed, pending = loaded
    assert pending is None
    _assert_same(committed, state)
    assert _params_files(tmp_path / "agg") == [f"params-3-{state.params_sha256[:12]}.npz"]
    assert not list((tmp_path / "agg").glob("*.tmp"))


def test_committed_and_pending(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "agg")
    committed = _state(3, 1, last_sequence={"a": 4}, offsets={"u:0": 17}, cluster_id="c1")
    pending = _state(4, 2, last_sequence={"a": 5, "b": 1}, offsets={"u:0": 20, "u:2": 1}, cluster_id="c1")
    cp.write(committed, pending)
    loaded = cp.load()
    assert loaded is not None
    got_committed, got_pending = loaded
    assert got_pending is not None
    _assert_same(got_committed, committed)
    _assert_same(got_pending, pending)
    assert not np.array_equal(got_committed.params, got_pending.params)
    assert len(_params_files(tmp_path / "agg")) == 2


def test_a_reader_in_a_new_process_sees_the_same(tmp_path: Path) -> None:
    state = _state(8, 5, last_sequence={"x": 1}, offsets={"t:0": 2})
    Checkpoint(tmp_path / "agg").write(state)
    loaded = Checkpoint(tmp_path / "agg").load()
    assert loaded is not None
    _assert_same(loaded[0], state)


def test_old_params_files_are_removed(tmp_path: Path) -> None:
    folder = tmp_path / "agg"
    cp = Checkpoint(folder)
    v1, v2, v3 = _state(1, 1), _state(2, 2), _state(3, 3)
    cp.write(v1)
    cp.write(v1, v2)  # before the transaction: both kept
    assert len(_params_files(folder)) == 2
    cp.write(v2)  # promoted: v1's file goes
    assert _params_files(folder) == [f"params-2-{v2.params_sha256[:12]}.npz"]
    cp.write(v2, v3)
    cp.write(v2)  # rolled back: v3's file goes
    assert _params_files(folder) == [f"params-2-{v2.params_sha256[:12]}.npz"]
    loaded = cp.load()
    assert loaded is not None and loaded[1] is None
    _assert_same(loaded[0], v2)


def test_copy_is_deep() -> None:
    state = _state(1, 1, last_sequence={"a": 1}, offsets={"t:0": 1})
    dup = state.copy()
    dup.params[0] += 1.0
    dup.last_sequence["a"] = 2
    dup.offsets["t:0"] = 2
    assert state.last_sequence == {"a": 1} and state.offsets == {"t:0": 1}
    assert state.params[0] != dup.params[0]


def test_a_staged_version_is_promoted_only_if_its_transaction_committed(tmp_path: Path) -> None:
    """Killed after the commit, before the local cache was written: the restart adds the version."""
    from streamfed.registry.local import LocalRegistry

    cost = {
        "site_cpu_seconds": 0.0,
        "site_gpu_seconds": 0.0,
        "aggregator_cpu_seconds": 0.0,
        "gpu_energy_joules_measured": None,
        "energy_joules": 0.0,
        "co2e_grams": 0.0,
    }

    def records(v: int) -> tuple[dict, dict]:
        version = {
            "model": "m",
            "topology": "t",
            "version": v,
            "parent_version": v - 1,
            "created_ms": 0,
            "dtype": "float32",
            "params": b"\x00" * 4,
            "params_sha256": "s",
            "layout": [],
            "feature_order": [],
            "schema_fingerprint": "f",
            "contributions": [],
            "cost": cost,
            "rule": "mean",
            "server_learning_rate": 1.0,
            "delta": 1e-6,
            "quality": {},
            "producer_id": "p",
            "run_id": "r",
        }
        lineage = {
            "model": "m",
            "version": v,
            "parent_version": v - 1,
            "created_ms": 0,
            "params_sha256": "s",
            "updates": [],
            "cost": cost,
            "producer_id": "p",
            "run_id": "r",
        }
        return version, lineage

    reg = LocalRegistry(tmp_path / "registry")
    reg.stage(*records(5))
    assert reg.list_versions() == []
    assert reg.settle(5) and reg.list_versions() == [5] and reg.get_lineage(5) is not None
    reg.stage(*records(6))  # its transaction aborted: the checkpoint resumes at 5
    assert not reg.settle(5) and reg.list_versions() == [5]
    assert not reg.settle(5)  # nothing staged any more
