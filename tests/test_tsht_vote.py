"""TSHT's vectorised vote equals the per-voter loop of Guo et al. (RobustIV's formulas)."""

from __future__ import annotations

import numpy as np

from invariant_mr.estimators.tsht import _vote


def _loop_votes(Gamma, g, V_G, V_g, C_Gg, tn):
    C_sym = (C_Gg + C_Gg.T) / 2
    S = np.flatnonzero(np.abs(g) > tn * np.sqrt(np.diag(V_g)))
    ratios = Gamma / g
    votes = np.zeros((S.size, S.size), dtype=bool)
    for col, j in enumerate(S):
        b = ratios[j]
        T = V_G + b * b * V_g - 2 * b * C_sym
        r = g / g[j]
        se2 = np.diag(T) + r * r * T[j, j] - 2 * r * T[:, j]
        votes[:, col] = (np.abs(Gamma - b * g) <= np.sqrt(np.maximum(se2, 0)) * tn)[S]
    votes = votes & votes.T
    np.fill_diagonal(votes, True)
    return votes


def test_vectorised_vote_equals_loop():
    rng = np.random.default_rng(4)
    p = 60
    g = rng.normal(0.3, 0.2, p)
    Gamma = 1.5 * g + np.where(np.arange(p) < 15, rng.normal(0, 0.3, p), 0.0) + rng.normal(0, 0.01, p)
    A = rng.standard_normal((p, p)) / p
    V_G, V_g = 1e-4 * (A @ A.T + np.eye(p)), 1e-4 * (A.T @ A + np.eye(p))
    C = 3e-5 * (A + A.T)
    _, valid, votes, _ = _vote(Gamma, g, V_G, V_g, C, 2.0)
    expected = _loop_votes(Gamma, g, V_G, V_g, C, 2.0)
    np.testing.assert_array_equal(votes, expected)
    assert 0 < (~valid).sum() and expected.sum() < expected.size  # a non-trivial vote
