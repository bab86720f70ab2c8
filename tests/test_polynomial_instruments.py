"""Two-stage polynomial invariant instruments (identify, then select) and their stage-2 bootstrap."""

import numpy as np
import pytest
from scipy.optimize import approx_fprime

from invariant_mr.inference.crossfit import crossfit_estimates, crossfit_instruments
from invariant_mr.errors import InputError
from invariant_mr.inference.polynomial_bootstrap import bootstrap_se, stage2_bootstrap
from invariant_mr.instruments.polynomial import PolynomialInvariantInstruments, _Stage1Problem, monomial_index
from invariant_mr.estimators.iv import fit_kclass
from invariant_mr.instruments.recovery import r_squared
from invariant_mr.inference.settings import InferenceSettings
from invariant_mr.simulation.paper import simulate_paper
from statistical_bounds import sd_ratio_band


@pytest.fixture(scope="module")
def poly2():
    return simulate_paper("poly2", n_envs=2, n_per_env=800, seed=3)


@pytest.fixture(scope="module")
def poly2_fit(poly2):
    return PolynomialInvariantInstruments(random_state=0).fit(poly2.data.Z, poly2.data.env)


def _tsls(sim, instruments):
    return fit_kclass(sim.data.outcome, sim.data.exposure, instruments, sim.data.env_dummies(drop_first=True))


def test_poly2_identifies_latents_and_recovers_w(poly2, poly2_fit):
    lr = poly2_fit
    assert (lr.degree_, lr.latent_dim_) == (2, 4)
    assert lr.heldout_error_ < 1e-8
    latents = np.column_stack([poly2.V, poly2.W])
    assert r_squared(latents, lr.encode(poly2.data.Z)) > 0.9999
    hw = lr.transform(poly2.data.Z)
    assert lr.n_components_ == 2
    assert r_squared(poly2.W, hw) > 0.99
    assert r_squared(poly2.V, hw) < 0.01
    # the chosen row is flagged in the selection table, with its held-out error
    chosen = [r for r in lr.selection_ if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["heldout_error"] == lr.heldout_error_


def test_transform_is_the_composed_linear_map(poly2, poly2_fit):
    lr = poly2_fit
    Z = poly2.data.Z[:50]
    via_stages = lr.stage2_.transform(lr.encode(Z))
    np.testing.assert_allclose(lr.transform(Z), via_stages, rtol=1e-9, atol=1e-9)
    codes = lr.encode(poly2.data.Z)
    np.testing.assert_allclose(codes.mean(0), 0, atol=1e-8)
    np.testing.assert_allclose(np.cov(codes.T, bias=True), np.eye(4), atol=1e-6)
    assert lr.reconstruction_error(poly2.data.Z) < 1e-8


def test_bias_within_oracle_se(poly2, poly2_fit):
    est = _tsls(poly2, poly2_fit.transform(poly2.data.Z))
    oracle = _tsls(poly2, poly2.W)
    # Nearly the oracle's instruments: the estimate tracks the oracle's well inside its SE (the gap is
    # the stage-2 directions' estimation error, which the bootstrap SE accounts for).
    assert abs(est.estimate - oracle.estimate) < 0.5 * oracle.se
    assert abs(est.estimate - poly2.theta) < 1.96 * oracle.se  # inside the oracle's 95% band


def test_linear_mixing_picks_degree_one():
    sim = simulate_paper("linear", n_envs=2, n_per_env=600, seed=4)
    lr = PolynomialInvariantInstruments(random_state=0).fit(sim.data.Z, sim.data.env)
    assert lr.degree_ == 1 and lr.latent_dim_ == 4
    assert r_squared(sim.W, lr.transform(sim.data.Z)) > 0.99


def test_permuting_environment_labels_leaves_the_estimate_unchanged(poly2, poly2_fit):
    swapped = np.where(poly2.data.env == "env1", "env2", "env1").astype(object)
    lr = PolynomialInvariantInstruments(random_state=0).fit(poly2.data.Z, swapped)
    a = _tsls(poly2, poly2_fit.transform(poly2.data.Z)).estimate
    b = _tsls(poly2, lr.transform(poly2.data.Z)).estimate
    assert lr.n_components_ == poly2_fit.n_components_
    assert b == pytest.approx(a, abs=1e-8)


def test_rescaling_columns_leaves_the_estimate_unchanged(poly2, poly2_fit):
    scale = np.random.default_rng(0).uniform(0.1, 10, size=poly2.data.p)
    Zs = poly2.data.Z * scale
    lr = PolynomialInvariantInstruments(random_state=0).fit(Zs, poly2.data.env)
    assert (lr.degree_, lr.latent_dim_, lr.n_components_) == (2, 4, poly2_fit.n_components_)
    a = _tsls(poly2, poly2_fit.transform(poly2.data.Z)).estimate
    b = _tsls(poly2, lr.transform(Zs)).estimate
    assert b == pytest.approx(a, abs=1e-6)


def test_same_seed_same_result(poly2, poly2_fit):
    again = PolynomialInvariantInstruments(random_state=0).fit(poly2.data.Z, poly2.data.env)
    np.testing.assert_array_equal(again.components_, poly2_fit.components_)


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_stage1_gradient_matches_finite_differences(degree):
    rng = np.random.default_rng(degree)
    X = rng.standard_normal((200, 5))
    T = np.column_stack([X, X[:, :2] ** 2]) + 0.1 * rng.standard_normal((200, 7))
    problem = _Stage1Problem(X, T, 3, degree, ridge=1e-4)
    L = rng.standard_normal(15)
    grad = problem.value_and_grad(L)[1]
    numeric = approx_fprime(L, lambda x: problem.value_and_grad(x)[0], 1e-7)
    np.testing.assert_allclose(grad, numeric, atol=1e-6 * max(1.0, np.abs(numeric).max()))


def test_monomial_index_counts():
    assert len(monomial_index(4, 2)) == 15 and len(monomial_index(4, 3)) == 35
    assert monomial_index(2, 2) == [(), (0,), (1,), (0, 0), (0, 1), (1, 1)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"degrees": [0, 2]}, "degrees"),
        ({"latent_dims": "many"}, "latent_dims"),
        ({"holdout": 1.5}, "holdout"),
        ({"n_restarts": 0}, "n_restarts"),
        ({"ridge": -1.0}, "ridge"),
        ({"latent_dims": 99}, "latent dimension"),
    ],
)
def test_bad_parameters_raise_input_error(poly2, kwargs, message):
    with pytest.raises(InputError, match=message):
        PolynomialInvariantInstruments(**kwargs).fit(poly2.data.Z[::8], poly2.data.env[::8])


def test_bad_data_raise_input_error(poly2, poly2_fit):
    Z, env = poly2.data.Z, poly2.data.env
    with pytest.raises(InputError, match="at least 2 environments"):
        PolynomialInvariantInstruments().fit(Z, np.full(Z.shape[0], "a", dtype=object))
    with pytest.raises(InputError, match="labels"):
        PolynomialInvariantInstruments().fit(Z, env[:-1])
    bad = Z.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="missing"):
        PolynomialInvariantInstruments().fit(bad, env)
    with pytest.raises(InputError, match="2-D"):
        PolynomialInvariantInstruments().fit(Z[:, 0], env)
    with pytest.raises(InputError, match="columns"):
        poly2_fit.transform(Z[:, :3])
    with pytest.raises(RuntimeError, match="not fitted"):
        PolynomialInvariantInstruments().transform(Z)


def test_crossfit_with_stage2_bootstrap(poly2):
    ctx = InferenceSettings(seed=0, per_env=False)
    hw, folds, learners = crossfit_instruments(
        poly2.data, lambda f: PolynomialInvariantInstruments(random_state=f), n_folds=2, rng=np.random.default_rng(1)
    )
    est = crossfit_estimates(poly2.data, hw, folds, ctx, method="invariant_polynomial")[0]
    oracle = _tsls(poly2, poly2.W)
    assert abs(est.estimate - poly2.theta) < 1.96 * oracle.se  # inside the oracle's 95% band
    draws = stage2_bootstrap(
        poly2.data.Z, poly2.data.env_codes, poly2.data.outcome, poly2.data.exposure, folds, learners,
        40, np.random.default_rng(2),
    )  # fmt: skip
    summary = bootstrap_se(draws)
    assert summary["n_valid"] == 40
    # The SD of 40 draws estimates the SE within the chi-square band of 40 draws; above, the
    # directions' error may add up to 25% (7% in benchmarks/results/coverage.md). Calibration
    # over seeds, which one data set cannot show, is checked in test_statistical_tier.py.
    lo, hi = sd_ratio_band(40)
    assert lo * est.se < summary["se"] < 1.25 * hi * est.se
    with pytest.raises(InputError, match="learners"):
        stage2_bootstrap(poly2.data.Z, poly2.data.env_codes, poly2.data.outcome, poly2.data.exposure,
                         folds, learners[:1], 10, np.random.default_rng(0))  # fmt: skip


def test_simulator_noise_and_authors_mixing_options():
    clean = simulate_paper("poly2", n_per_env=300, seed=5)
    noisy = simulate_paper("poly2", n_per_env=300, seed=5, noise=0.1)
    np.testing.assert_array_equal(clean.W, noisy.W)
    ratio = (noisy.data.Z - clean.data.Z).std(0) / clean.data.Z.std(0)
    assert np.all(np.abs(ratio - 0.1) < 0.02)
    assert noisy.params["noise"] == 0.1
    a = simulate_paper("poly3", n_per_env=300, seed=1, mix_seed=100, mixing_recipe="paper-code")
    b = simulate_paper("poly3", n_per_env=300, seed=2, mix_seed=100, mixing_recipe="paper-code")
    # one shared mixing: Z is the same linear map of the monomials in both data sets
    from invariant_mr.simulation.paper import monomials

    Ma, Mb = (monomials(np.column_stack([s.V, s.W]), 3) for s in (a, b))
    A = np.linalg.lstsq(Ma, a.data.Z, rcond=None)[0]
    np.testing.assert_allclose(Mb @ A, b.data.Z, atol=1e-6 * np.abs(b.data.Z).max())
    s = np.linalg.svd(A, compute_uv=False)
    assert s.min() >= 0.2 * s.max() - 1e-8
    assert a.params["weights"] == "clipped-normal" and a.params["mix_seed"] == 100
    disc = simulate_paper("discrete", n_per_env=300, seed=1, mixing_recipe="paper-code")
    assert disc.data.p == 4 and set(np.unique(disc.data.Z)) <= {0.0, 1.0, 2.0}
    for bad in ({"noise": -1}, {"weights": "uniform"}, {"mixing_recipe": "theirs"}, {"mix_seed": 1.5}):
        with pytest.raises(InputError):
            simulate_paper("poly2", n_per_env=50, **bad)


@pytest.mark.slow
@pytest.mark.parametrize("setting, K", [("poly3", 2), ("poly3-normal", 3), ("poly2-normal", 3)])
def test_noise_free_polynomial_settings_reach_the_oracle(setting, K):
    sim = simulate_paper(setting, n_envs=K, n_per_env=3000, seed=21)
    lr = PolynomialInvariantInstruments(random_state=0).fit(sim.data.Z, sim.data.env)
    assert lr.degree_ == int(setting[4]) and lr.latent_dim_ == 4
    hw = lr.transform(sim.data.Z)
    assert r_squared(sim.W, hw) > 0.99
    oracle = _tsls(sim, sim.W)
    assert abs(_tsls(sim, hw).estimate - oracle.estimate) < 0.25 * oracle.se
