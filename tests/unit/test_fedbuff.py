"""FedBuff: staleness weights, the buffer trigger, and the weighted server step."""

from __future__ import annotations

import numpy as np
import pytest

from streamfed.aggregation import CoordinateMedian, FedBuff, Mean, NormBound, PendingUpdate, TrimmedMean, make_rule
from streamfed.aggregation.fedbuff import staleness_weight
from streamfed.errors import ConfigError
from streamfed.topology import AggregationSpec


@pytest.mark.parametrize(
    ("staleness", "exponent", "expected"),
    [(0, 0.5, 1.0), (3, 0.5, 0.5), (8, 0.5, 1 / 3), (3, 1.0, 0.25), (1, 2.0, 0.25), (5, 0.0, 1.0)],
)
def test_staleness_weight(staleness: int, exponent: float, expected: float) -> None:
    assert staleness_weight(staleness, exponent) == pytest.approx(expected, rel=1e-12)


def test_staleness_weight_default_exponent_and_negative() -> None:
    assert staleness_weight(3) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="negative"):
        staleness_weight(-1)


def _upd(site: str, base: int, n: int, delta: list[float]) -> PendingUpdate:
    return PendingUpdate(site_id=site, sequence=1, base_version=base, num_examples=n, delta=np.array(delta, np.float32))


def test_add_returns_true_when_the_buffer_is_full() -> None:
    fb = FedBuff(AggregationSpec(buffer_size=3), Mean())
    assert fb.add(_upd("a", 0, 1, [1.0])) is False
    assert fb.add(_upd("b", 0, 1, [1.0])) is False
    assert fb.add(_upd("c", 0, 1, [1.0])) is True
    assert len(fb.buffer) == 3


def test_aggregate_weights_by_examples_and_staleness() -> None:
    spec = AggregationSpec(buffer_size=3, server_learning_rate=0.5, staleness_exponent=0.5)
    fb = FedBuff(spec, Mean())
    ups = [
        _upd("a", 5, 100, [1.0, 0.0]),  # staleness 0 -> 100
        _upd("b", 2, 200, [0.0, 1.0]),  # staleness 3 -> 200 * 0.5 = 100
        _upd("c", 5, 0, [4.0, 4.0]),  # staleness 0, no examples counted as 1 -> 1
    ]
    for u in ups:
        fb.add(u)
    params = np.array([10.0, -10.0], dtype=np.float32)
    new, used, _ = fb.aggregate(params, version=5)

    weights = np.array([100.0, 100.0, 1.0])
    combined = (weights[:, None] * np.array([[1.0, 0.0], [0.0, 1.0], [4.0, 4.0]])).sum(0) / weights.sum()
    np.testing.assert_allclose(new, params + 0.5 * combined, rtol=1e-6)
    assert new.dtype == np.float32
    assert fb.buffer == []
    assert used == ups
    assert [u.staleness for u in used] == [0, 3, 0]
    assert [u.weight for u in used] == pytest.approx([100.0, 100.0, 1.0])
    np.testing.assert_array_equal(params, [10.0, -10.0])  # the input parameters are not modified


def test_aggregate_without_example_weights_is_uniform_at_equal_staleness() -> None:
    fb = FedBuff(AggregationSpec(buffer_size=2, weight_by_examples=False), Mean())
    fb.add(_upd("a", 1, 10, [2.0]))
    fb.add(_upd("b", 1, 1000, [4.0]))
    new, used, _ = fb.aggregate(np.zeros(1, np.float32), version=1)
    assert new.tolist() == [3.0]
    assert [u.weight for u in used] == [1.0, 1.0]


def test_aggregate_without_example_weights_still_discounts_staleness() -> None:
    fb = FedBuff(AggregationSpec(buffer_size=2, weight_by_examples=False, staleness_exponent=1.0), Mean())
    fb.add(_upd("a", 4, 10, [3.0]))  # weight 1
    fb.add(_upd("b", 2, 10, [0.0]))  # staleness 2 -> weight 1/3
    new, used, _ = fb.aggregate(np.zeros(1, np.float32), version=4)
    assert new[0] == pytest.approx(3.0 * 1 / (1 + 1 / 3))
    assert [u.weight for u in used] == pytest.approx([1.0, 1 / 3])


def test_aggregate_uses_the_rule() -> None:
    fb = FedBuff(AggregationSpec(buffer_size=3, rule="median"), CoordinateMedian())
    for i, v in enumerate([1.0, 2.0, 100.0]):
        fb.add(_upd(f"s{i}", 0, 10 if i < 2 else 10_000, [v]))
    new, _, _ = fb.aggregate(np.zeros(1, np.float32), version=0)
    assert new.tolist() == [2.0]


@pytest.mark.parametrize(
    ("spec", "cls"),
    [
        (AggregationSpec(rule="mean"), Mean),
        (AggregationSpec(rule="median"), CoordinateMedian),
        (AggregationSpec(rule="trimmed_mean", trim_fraction=0.25), TrimmedMean),
        (AggregationSpec(rule="norm_bound", norm_bound=3.0), NormBound),
    ],
)
def test_make_rule(spec: AggregationSpec, cls: type) -> None:
    rule = make_rule(spec)
    assert isinstance(rule, cls)
    assert rule.name == spec.rule
    if isinstance(rule, TrimmedMean):
        assert rule.trim == 0.25
    if isinstance(rule, NormBound):
        assert rule.bound == 3.0


@pytest.mark.parametrize(("factory", "arg"), [(TrimmedMean, 0.5), (TrimmedMean, -0.1), (NormBound, 0.0)])
def test_rule_constructors_validate(factory: type, arg: float) -> None:
    with pytest.raises(ConfigError):
        factory(arg)


@pytest.mark.parametrize("kind", ["sgd", "momentum", "adam"])
def test_server_optimizers_step_along_the_combined_delta_and_keep_their_state(kind: str) -> None:
    from streamfed.aggregation.fedbuff import ServerOptimizer

    opt = ServerOptimizer(AggregationSpec(server_optimizer=kind, server_learning_rate=0.5))
    p = np.zeros(3, np.float32)
    u = np.array([1.0, -2.0, 0.0], np.float32)
    state: dict[str, np.ndarray] = {}
    for _ in range(3):
        new, state2 = opt.step(p, u, state)
        assert (np.sign(new - p) == np.sign(u)).all()  # a descent step moves along the delta
        assert state2 is not state and all(v.dtype == np.float32 for v in state2.values())
        p, state = new, state2
    assert set(state) == {"sgd": set(), "momentum": {"m"}, "adam": {"m", "v"}}[kind]
    if kind == "sgd":
        np.testing.assert_allclose(p, 3 * 0.5 * u)
    if kind == "momentum":  # m = u, 1.9 u, 2.71 u
        np.testing.assert_allclose(p, 0.5 * (1 + 1.9 + 2.71) * u, rtol=1e-6)


def test_the_optimizer_state_round_trips_through_the_checkpoint(tmp_path) -> None:
    from streamfed.aggregation.checkpoint import AggregatorState, Checkpoint

    st = AggregatorState(3, np.ones(4, np.float32), {"a": 2}, {"t:0": 9}, "c", {"m": np.full(4, 0.5, np.float32)})
    Checkpoint(tmp_path).write(st)
    loaded, pending = Checkpoint(tmp_path).load()  # type: ignore[misc]
    assert pending is None and loaded.version == 3
    np.testing.assert_array_equal(loaded.opt["m"], st.opt["m"])
