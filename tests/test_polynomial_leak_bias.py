"""The leak-bias bound behind invariant_polynomial's abstention rule (inference.leak_bias)."""

from __future__ import annotations

import numpy as np
import pytest

from invariant_mr.inference.leak_bias import leak_bias_bounds, stability


def _leaky(n: int, leak: float, seed: int):
    """Two environments; instrument W + leak * V, and the confounded V as the most varying direction."""
    rng = np.random.default_rng(seed)
    env = np.repeat([0, 1], n // 2)
    H = rng.standard_normal(n) + 2.0 * env
    V = rng.standard_normal(n) + H
    W = rng.standard_normal(n)
    D = V + W + H + rng.standard_normal(n)
    Y = D + H + rng.standard_normal(n)  # theta = 1
    return np.column_stack([W + leak * V, V]), env, D, Y


@pytest.mark.parametrize("leak", [0.1, 0.2])
def test_bound_tracks_the_bias_a_linear_leak_causes(leak):
    rows = [leak_bias_bounds(*_leaky(6000, leak, seed)) for seed in range(10)]
    bound = np.mean([r["bound"][0] for r in rows])
    bias = np.mean([r["estimate"][0] - 1.0 for r in rows])
    assert bias > 0.05  # the leak matters here
    assert abs(bound - bias) < 0.25 * bias


def test_no_leak_gives_a_bound_well_below_the_se():
    rows = [leak_bias_bounds(*_leaky(6000, 0.0, seed)) for seed in range(10)]
    assert np.mean([r["bound"][0] / r["se"][0] for r in rows]) < 0.5
    assert abs(np.mean([r["estimate"][0] for r in rows]) - 1.0) < 0.02


def test_no_shift_in_the_varying_direction_gives_no_bound():
    A, env, D, Y = _leaky(2000, 0.1, 0)
    rng = np.random.default_rng(1)
    A[:, -1] = rng.standard_normal(A.shape[0])  # a "varying" direction that does not vary
    out = leak_bias_bounds(A, env, D, Y)
    assert out["shift"][-1] < 0.1
    # nothing to calibrate the leak with: the bound is missing or too large for the rule to answer on
    assert np.isnan(out["bound"][0]) or out["bound"][0] > 0.5 * out["se"][0]


def test_stability_z():
    est, se = np.array([1.0, 1.2]), np.array([0.05, 0.03])
    assert stability(est, se, 1) == 0.0
    assert stability(est, se, 2) == pytest.approx(0.2 / 0.04)
    # nearly equal SEs: the difference's SD is floored at half the SE
    assert stability(np.array([1.0, 1.01]), np.array([0.0300, 0.0299]), 2) == pytest.approx(0.01 / 0.01495, rel=1e-3)
