"""l2_norm (no BLAS) agrees with numpy's norm, for the clip and the aggregator's norm check."""

from __future__ import annotations

import numpy as np
import pytest

from streamfed.privacy.mechanisms import clip_l2, l2_norm


@pytest.mark.parametrize("n", [0, 1, 15, 100_003])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_numpy_norm(n: int, dtype: type) -> None:
    v = np.random.default_rng(n).normal(size=n).astype(dtype)
    assert l2_norm(v) == pytest.approx(float(np.linalg.norm(v.astype(np.float64))), rel=1e-12, abs=0.0)


def test_non_finite_values_give_a_non_finite_norm_and_clip_refuses_them() -> None:
    assert not np.isfinite(l2_norm(np.array([1.0, np.inf], dtype=np.float32)))
    with pytest.raises(ValueError, match="non-finite"):
        clip_l2(np.array([1.0, np.nan], dtype=np.float32), 1.0)
