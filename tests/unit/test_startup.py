"""What a process does before it can start: no torch where it is not used, the personal deep model
built on a thread for a live site, the sources' start gate."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from streamfed.cli.common import wait_for_gate
from streamfed.learners.federated import cuda_possible
from streamfed.privacy.signing import write_keypair
from streamfed.site.build import build_learner
from streamfed.sources import TransactionSimulator
from streamfed.topology import load_topology


@pytest.mark.skipif(cuda_possible(), reason="CUDA may be present here: auto asks torch")
def test_auto_picks_the_numpy_model_without_importing_torch_where_cuda_cannot_be() -> None:
    code = (
        "import sys\n"
        "from streamfed.learners.federated import wide_and_deep\n"
        "m = wide_and_deep(4, [8], 0, 'auto')\n"
        "print(type(m).__name__, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["WideAndDeep", "False"]


def test_a_deep_model_built_in_the_background_leaves_the_online_learner_serving_until_it_is_there(
    tmp_path: Path,
) -> None:
    topo = load_topology("fraud", {"state_dir": str(tmp_path)})
    site = topo.sites[0]
    write_keypair(topo.private_key_path(site), topo.public_key_path(site))
    assert topo.model.deep.enabled and site.simulator is not None
    kw = {"persist": False, "clock": lambda: 0.0, "device": "cpu"}
    eager = build_learner(topo, site.id, rng=np.random.default_rng(0), **kw)
    lazy = build_learner(topo, site.id, rng=np.random.default_rng(0), background_deep=True, **kw)
    lazy.personal._loading.join(60)  # type: ignore[union-attr]
    lazy.personal.deep = None  # as if torch were still loading
    records = TransactionSimulator(site.id, site.simulator).batch(1200, t=0.0)
    X, y, _ = eager.featurizer.transform(records)

    z_lazy = lazy.personal.prequential(X, y)
    z_online = eager.personal.online.prequential_many(X, y)
    # while it loads: the online learner's prediction, and the rows wait in the replay buffer
    np.testing.assert_allclose(1 / (1 + np.exp(-z_lazy)), z_online, rtol=1e-5, atol=1e-6)
    assert len(lazy.personal.replay) == int((~np.isnan(y)).sum())  # type: ignore[arg-type]
    assert not lazy.personal.maybe_step()
    assert not lazy.personal.wait_deep(0)

    lazy.personal._load_deep(len(eager.featurizer.names), "cpu")  # torch is here now
    assert lazy.personal.wait_deep(0) and lazy.personal.maybe_step()  # learns from the buffered rows


def test_a_failed_background_build_fails_the_next_call(tmp_path: Path) -> None:
    topo = load_topology("fraud", {"state_dir": str(tmp_path)})
    site = topo.sites[0]
    write_keypair(topo.private_key_path(site), topo.public_key_path(site))
    learner = build_learner(topo, site.id, persist=False, device="cpu", background_deep=True)
    learner.personal.wait_deep(60)
    learner.personal.deep = None
    learner.personal._load_error = OSError("no space left")
    X = np.zeros((2, len(learner.featurizer.names)), dtype=np.float32)
    with pytest.raises(RuntimeError, match="personal deep model could not be built: no space left"):
        learner.personal.prequential(X, np.array([0.0, 1.0], dtype=np.float32))


def test_the_start_gate_waits_for_its_file_or_a_stop(tmp_path: Path) -> None:
    stop = threading.Event()
    gate = tmp_path / "go"
    assert wait_for_gate(None, stop)
    threading.Timer(0.2, gate.touch).start()
    assert wait_for_gate(gate, stop) and gate.exists()
    threading.Timer(0.2, stop.set).start()
    assert not wait_for_gate(tmp_path / "never", stop)
