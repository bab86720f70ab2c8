"""The truncated-pair KDE of the weighted mode gives the dense evaluation's modes."""

from __future__ import annotations

import numpy as np
import pytest

from invariant_mr.estimators.summary import summary_mr
from invariant_mr.estimators.summary.summary_mr import kde_mode_rows


def _values(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Ratio estimates of weak variants: a tight core and Cauchy tails hundreds of bandwidths wide.
    return 1.0 + 0.2 * rng.standard_normal((300, 200)) + rng.standard_cauchy((300, 200)) * (rng.random((300, 200)) < 0.3)


@pytest.mark.parametrize("seed", [0, 1])
def test_sparse_pairs_match_dense_evaluation(monkeypatch, seed):
    values = _values(seed)
    weights = np.random.default_rng(seed + 10).random(200) + 0.1
    sparse = kde_mode_rows(values, weights)
    monkeypatch.setattr(summary_mr, "_KDE_SPARSE_MAX_SHARE", -1.0)  # force the dense sum
    dense = kde_mode_rows(values, weights)
    np.testing.assert_allclose(sparse, dense, rtol=1e-12, atol=1e-12)
    assert np.std(dense) > 0  # the rows differ: a real comparison


def test_fallback_rows_are_dense(monkeypatch):
    values = _values(2)[:40]
    weights = np.ones(200)
    monkeypatch.setattr(summary_mr, "_KDE_EXACT_BELOW", np.inf)  # every row takes the exact fallback
    fallback = kde_mode_rows(values, weights)
    monkeypatch.setattr(summary_mr, "_KDE_SPARSE_MAX_SHARE", -1.0)
    np.testing.assert_allclose(fallback, kde_mode_rows(values, weights), rtol=1e-12, atol=1e-12)


def test_small_chunks_give_the_same_modes(monkeypatch):
    values = _values(3)[:60]
    whole = kde_mode_rows(values, np.ones(200))
    monkeypatch.setattr(summary_mr, "_KDE_CHUNK", 1000)  # one row per chunk
    np.testing.assert_array_equal(kde_mode_rows(values, np.ones(200)), whole)
