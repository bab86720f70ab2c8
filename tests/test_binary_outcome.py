"""IV log odds ratios for binary outcomes: 2SRI and 2SPS, stacked sandwich, bootstrap, bias and coverage."""

import numpy as np
import pytest
from scipy import special

from invariant_mr.errors import InputError
from invariant_mr.estimators.binary_outcome import fit_binary_iv, logistic_regression
from invariant_mr.simulation.binary import population_log_or, simulate_binary_outcome


def _data(seed=0, n=2000, **kw):
    s = simulate_binary_outcome(n=n, n_variants=5, strength=0.25, seed=seed, **kw)
    C = np.random.default_rng(seed + 1).standard_normal((n, 2))
    return s, C


@pytest.mark.parametrize("method", ["2sri", "2sps"])
def test_point_estimates_match_statsmodels(method):
    import statsmodels.api as sm
    s, C = _data(1)
    n = s.outcome.size
    fit = fit_binary_iv(s.outcome, s.exposure, s.Z, C, method=method)
    W1 = np.column_stack([np.ones(n), C, s.Z])
    dhat = W1 @ sm.OLS(s.exposure, W1).fit().params
    extra = [s.exposure, s.exposure - dhat] if method == "2sri" else [dhat]
    ref = sm.Logit(s.outcome, np.column_stack([np.ones(n), C, *extra])).fit(disp=0, tol=1e-12)
    np.testing.assert_allclose(fit.params, ref.params, rtol=1e-6, atol=1e-9)
    # The second-stage-only SE ignores the first stage; ours must differ from it (it is not the same SE).
    assert fit.se != pytest.approx(ref.bse[3], rel=1e-3)


def test_logistic_regression_matches_statsmodels_and_detects_separation():
    import statsmodels.api as sm
    rng = np.random.default_rng(0)
    X = np.column_stack([np.ones(500), rng.standard_normal((500, 3))])
    y = (rng.random(500) < special.expit(X @ [0.2, 1.0, -0.5, 0.0])).astype(float)
    beta, _ = logistic_regression(X, y)
    np.testing.assert_allclose(beta, sm.Logit(y, X).fit(disp=0, tol=1e-12).params, rtol=1e-7)
    with pytest.raises(InputError, match="separat"):
        logistic_regression(X, (X[:, 1] > 0).astype(float))


def _stacked_mean_score(theta, method, y, d, W1, C):
    """Mean of the stacked (first stage, second stage) estimating equations: a reference written from scratch."""
    p1 = W1.shape[1]
    gamma, beta = theta[:p1], theta[p1:]
    dhat = W1 @ gamma
    X2 = np.column_stack([C, d, d - dhat]) if method == "2sri" else np.column_stack([C, dhat])
    psi1 = W1 * (d - dhat)[:, None]
    psi2 = X2 * (y - special.expit(X2 @ beta))[:, None]
    return np.hstack([psi1, psi2])


@pytest.mark.parametrize("method", ["2sri", "2sps"])
def test_sandwich_equals_a_numerical_m_estimation_sandwich(method):
    """A^-1 B A^-T / n with A from central finite differences of the stacked mean score."""
    s, C = _data(2, n=1500)
    n = s.outcome.size
    fit = fit_binary_iv(s.outcome, s.exposure, s.Z, C, method=method)
    W1 = np.column_stack([np.ones(n), C, s.Z])
    Cc = np.column_stack([np.ones(n), C])
    theta = np.hstack([fit.first_stage, fit.params])
    args = (method, s.outcome, s.exposure, W1, Cc)
    scores = _stacked_mean_score(theta, *args)
    np.testing.assert_allclose(scores.mean(axis=0), 0, atol=1e-8)  # both stages solved
    A = np.empty((theta.size, theta.size))
    h = 1e-6
    for j in range(theta.size):
        e = np.zeros(theta.size)
        e[j] = h
        A[:, j] = -(_stacked_mean_score(theta + e, *args).mean(0) - _stacked_mean_score(theta - e, *args).mean(0)) / (2 * h)
    B = scores.T @ scores / n
    Ainv = np.linalg.inv(A)
    V = Ainv @ B @ Ainv.T / n
    k = W1.shape[1]
    np.testing.assert_allclose(fit.cov, V[k:, k:], rtol=1e-5)


def test_bootstrap_is_seeded_and_agrees_with_the_sandwich():
    s, C = _data(3)
    a = fit_binary_iv(s.outcome, s.exposure, s.Z, C, se="bootstrap", n_bootstrap=200, seed=5)
    b = fit_binary_iv(s.outcome, s.exposure, s.Z, C, se="bootstrap", n_bootstrap=200, seed=5)
    sw = fit_binary_iv(s.outcome, s.exposure, s.Z, C)
    assert a.se == b.se and a.estimate == sw.estimate
    assert a.se == pytest.approx(sw.se, rel=0.2)  # 200 draws: the SD of an SD estimate is about 5%
    assert a.n_bootstrap == 200 and a.seed == 5 and a.se_type == "bootstrap"


def test_clusters_of_one_reproduce_the_unclustered_sandwich_and_families_resample_together():
    s, C = _data(4)
    n = s.outcome.size
    a = fit_binary_iv(s.outcome, s.exposure, s.Z, C)
    b = fit_binary_iv(s.outcome, s.exposure, s.Z, C, clusters=np.arange(n))
    np.testing.assert_allclose(b.cov, a.cov, rtol=1e-10)
    fam = np.repeat(np.arange(n // 2), 2)
    c = fit_binary_iv(s.outcome, s.exposure, s.Z, C, clusters=fam, se="bootstrap", n_bootstrap=20, seed=0)
    assert c.n_clusters == n // 2 and c.se_type == "bootstrap (clustered)"


def test_result_is_immutable_and_exports():
    s, C = _data(5)
    fit = fit_binary_iv(s.outcome, s.exposure, s.Z, C)
    with pytest.raises(Exception):
        fit.estimate = 0.0
    assert not fit.params.flags.writeable
    out = fit.to_dict()
    assert out["odds_ratio"] == pytest.approx(np.exp(fit.estimate))
    assert out["or_ci_low"] < out["odds_ratio"] < out["or_ci_high"]
    assert "residual_coefficient" in out and "2sri" in fit.summary()


def test_input_errors():
    s, C = _data(6, n=300)
    with pytest.raises(InputError, match="0/1"):
        fit_binary_iv(s.outcome * 2, s.exposure, s.Z)
    with pytest.raises(InputError, match="only one value"):
        fit_binary_iv(np.zeros(300), s.exposure, s.Z)
    with pytest.raises(InputError, match="method"):
        fit_binary_iv(s.outcome, s.exposure, s.Z, method="probit")
    with pytest.raises(InputError, match="at least one instrument"):
        fit_binary_iv(s.outcome, s.exposure, None)


def test_population_log_or_is_attenuated_and_zero_at_the_null():
    assert population_log_or(-1.0, 0.0, 1.0, 0.5) == pytest.approx(0.0, abs=1e-12)
    assert population_log_or(-1.0, 0.5, 0.0, 0.5) == pytest.approx(0.5, abs=1e-12)  # no confounder: collapsible
    assert 0 < population_log_or(-1.0, 0.5, 1.0, 0.5) < 0.5


def _simulate(reps, n, seed0, **kw):
    out = {"2sri": [], "2sps": []}
    for r in range(reps):
        s = simulate_binary_outcome(n=n, n_variants=5, strength=0.25, seed=seed0 + r, **kw)
        for m in out:
            f = fit_binary_iv(s.outcome, s.exposure, s.Z, None, method=m)
            lo, hi = f.ci(0.05)
            out[m].append((f.estimate, lo <= s.beta <= hi))
    return {m: np.array(v) for m, v in out.items()}, s


def test_2sri_covers_the_conditional_log_or_and_2sps_is_attenuated():
    """200 seeded reps under the control-function model (rho = 1), n = 2000.

    Coverage tolerance: 3 binomial SE at 200 reps (0.046). 2SRI bias within 4 Monte Carlo SE
    plus 0.02 (finite-sample first-stage bias); 2SPS clearly below beta (non-collapsibility).
    """
    reps = 200
    res, s = _simulate(reps, 2000, 1000)
    sri, sps = res["2sri"], res["2sps"]
    assert abs(sri[:, 1].mean() - 0.95) <= 3 * np.sqrt(0.95 * 0.05 / reps)
    assert abs(sri[:, 0].mean() - s.beta) <= 4 * sri[:, 0].std() / np.sqrt(reps) + 0.02
    assert sps[:, 0].mean() < s.beta - 0.08


@pytest.mark.slow
@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_binary_iv_bias_and_coverage_large(beta):
    """1000 reps, n = 5000: 2SRI unbiased for beta and covering; at beta = 0 both tests have size 0.05."""
    reps = 1000
    res, s = _simulate(reps, 5000, 50_000, beta=beta)
    tol = 3 * np.sqrt(0.95 * 0.05 / reps)
    sri, sps = res["2sri"], res["2sps"]
    assert abs(sri[:, 1].mean() - 0.95) <= tol
    assert abs(sri[:, 0].mean() - beta) <= 4 * sri[:, 0].std() / np.sqrt(reps) + 0.015
    if beta == 0:
        assert abs(sps[:, 1].mean() - 0.95) <= tol
    else:
        assert sps[:, 0].mean() < beta - 0.08
