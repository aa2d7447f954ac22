"""Small CPU steps of the torch learner run on one intra-op thread; the process setting is restored."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamfed.learners import torch_mlp
from streamfed.learners.torch_mlp import ReplayBuffer, TorchMLPLearner


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _buffer(rows: int = 256, dim: int = 4) -> ReplayBuffer:
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(dim, rows)
    buf.add(rng.normal(size=(rows, dim)).astype(np.float32), (rng.random(rows) < 0.5).astype(np.float32), window=1)
    return buf


def test_small_steps_and_predictions_use_one_thread_and_restore_the_setting(two_threads, monkeypatch) -> None:
    seen: list[int] = []
    learner = TorchMLPLearner(4, [8], device="cpu")
    real = learner.learn_many

    def spy(X: np.ndarray, y: np.ndarray) -> None:
        seen.append(torch.get_num_threads())
        real(X, y)

    monkeypatch.setattr(learner, "learn_many", spy)
    learner.train_steps(_buffer(), steps=3, batch_size=64, rng=np.random.default_rng(1))
    assert seen == [1, 1, 1]
    assert torch.get_num_threads() == 2
    learner.predict_proba_many(np.zeros((10, 4), dtype=np.float32))
    assert torch.get_num_threads() == 2


def test_large_steps_keep_the_thread_pool(two_threads, monkeypatch) -> None:
    monkeypatch.setattr(torch_mlp, "SMALL_CPU_STEP", 1)
    seen: list[int] = []
    learner = TorchMLPLearner(4, [8], device="cpu")
    real = learner.learn_many
    monkeypatch.setattr(learner, "learn_many", lambda X, y: (seen.append(torch.get_num_threads()), real(X, y)))
    learner.train_steps(_buffer(), steps=2, batch_size=64, rng=np.random.default_rng(1))
    assert seen == [2, 2]


def test_the_setting_is_restored_when_a_step_fails(two_threads) -> None:
    learner = TorchMLPLearner(4, [8], device="cpu")
    with pytest.raises(RuntimeError):
        learner.predict_proba_many(np.zeros((3, 5), dtype=np.float32))  # wrong width
    assert torch.get_num_threads() == 2
