"""The denoising stage 1 (`manifold_projection`): projection, its gradient, when it is used, and what it recovers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import approx_fprime

from invariant_mr.instruments.manifold_projection import _FreeCodesProblem, project_onto_decoder
from invariant_mr.instruments.polynomial import PolynomialInvariantInstruments
from invariant_mr.instruments.polynomial_decoder import _monomials_np, monomial_index
from invariant_mr.instruments.recovery import r_squared
from invariant_mr.methods.registry import MethodContext
from invariant_mr.pipeline import run_analysis
from invariant_mr.simulation import simulate_paper


def _surface(seed: int, n: int = 400, k: int = 3, degree: int = 3, r: int = 25):
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((n, k))
    C = rng.standard_normal((len(monomial_index(k, degree)), r))
    return u, C, _monomials_np(u, monomial_index(k, degree)) @ C


def test_projection_recovers_exact_codes_from_a_perturbed_start():
    u, C, T = _surface(0)
    start = u + 0.05 * np.random.default_rng(1).standard_normal(u.shape)
    codes, cost = project_onto_decoder(T, C, 3, start, n_iter=40)
    np.testing.assert_allclose(codes, u, atol=1e-6)
    assert cost.max() < 1e-12


def test_projection_never_ends_worse_than_its_start():
    u, C, T = _surface(2)
    T = T + np.random.default_rng(3).standard_normal(T.shape)  # off the surface
    start = u + np.random.default_rng(4).standard_normal(u.shape)  # some starts far off
    start_cost = ((T - _monomials_np(start, monomial_index(3, 3)) @ C) ** 2).sum(1)
    _, cost = project_onto_decoder(T, C, 3, start, n_iter=10)
    assert np.all(cost <= start_cost + 1e-9)


def test_free_codes_gradient_matches_finite_differences():
    rng = np.random.default_rng(5)
    T = rng.standard_normal((40, 6))
    problem = _FreeCodesProblem(T, 2, 3, 1e-6)
    x = rng.standard_normal(80)
    value, grad = problem.value_and_grad(x)
    numeric = approx_fprime(x, lambda v: problem.value_and_grad(v)[0], 1e-7)
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-6)


@pytest.fixture(scope="module")
def poly3_noisy():
    """poly3, K = 2, 2% measurement noise: where the linear encoder loses the latents (issue 19)."""
    return simulate_paper("poly3", n_envs=2, n_per_env=1000, seed=11, noise=0.02)


@pytest.fixture(scope="module")
def poly3_noisy_fits(poly3_noisy):
    d = poly3_noisy.data
    return (
        PolynomialInvariantInstruments(n_restarts=2, random_state=0).fit(d.Z, d.env),
        PolynomialInvariantInstruments(n_restarts=2, denoise=False, random_state=0).fit(d.Z, d.env),
    )


def test_noise_free_data_keep_the_linear_encoder():
    sim = simulate_paper("poly2", n_envs=2, n_per_env=500, seed=3)
    lr = PolynomialInvariantInstruments(degrees=(1, 2), n_restarts=2, random_state=0).fit(sim.data.Z, sim.data.env)
    assert lr.stage1_encoder_ == "linear" and lr.projection_ is None
    assert not any(r["encoder"] == "projection" for r in lr.selection_)
    np.testing.assert_allclose(lr.directions(sim.data.Z)[:, : lr.n_components_], lr.transform(sim.data.Z))


def test_denoising_recovers_the_latents_the_linear_encoder_loses(poly3_noisy, poly3_noisy_fits):
    denoised, linear = poly3_noisy_fits
    assert denoised.stage1_encoder_ == "projection" and denoised.degree_ == 3
    chosen = [r for r in denoised.selection_ if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["encoder"] == "projection"
    # chosen by held-out reconstruction: at most denoise_gain of the linear encoder's error
    assert denoised.heldout_error_ < 0.5 * linear.heldout_error_
    latents = np.column_stack([poly3_noisy.V, poly3_noisy.W])
    r2_denoised = r_squared(latents, denoised.encode(poly3_noisy.data.Z))
    r2_linear = r_squared(latents, linear.encode(poly3_noisy.data.Z))
    assert r2_denoised > 0.9 and r2_denoised > r2_linear + 0.15
    # the most invariant directions carry W and (almost) no V
    first_two = denoised.directions(poly3_noisy.data.Z)[:, :2]
    assert r_squared(poly3_noisy.W, first_two) > 0.8
    assert r_squared(poly3_noisy.V, first_two) < 0.02


def test_denoised_fit_is_deterministic_under_a_seed(poly3_noisy, poly3_noisy_fits):
    d = poly3_noisy.data
    again = PolynomialInvariantInstruments(n_restarts=2, random_state=0).fit(d.Z, d.env)
    np.testing.assert_array_equal(again.directions(d.Z), poly3_noisy_fits[0].directions(d.Z))
    np.testing.assert_array_equal(again.transform(d.Z[:7]), poly3_noisy_fits[0].transform(d.Z[:7]))


def test_method_answers_and_is_right_on_poly3_with_two_percent_noise():
    """Before the denoising stage 1 the method abstained here (10 of 10 seeds on the verdict benchmark)."""
    sim = simulate_paper("poly3", n_envs=2, n_per_env=1500, seed=4, noise=0.02)
    ctx = MethodContext(seed=4, per_env=False, options={"poly_bootstrap": 50, "diagnostic_permutations": 49})
    (row,) = run_analysis(sim.data, "invariant_polynomial", ctx).select("invariant_polynomial")
    assert row.available, row.reason
    assert all(f["encoder"] == "projection" for f in row.extra["stage1"])
    # Right within sampling error: 3 SE (two-sided 0.3%), the SE floored at the oracle's order at this n.
    assert abs(row.estimate - sim.theta) < 3 * max(row.se, 0.015)
