"""Assumption diagnostics: kernel identities, reference agreement, size and power."""

from __future__ import annotations

import numpy as np
import pytest

from invariant_mr.inference.diagnostics import (
    environment_varying_component,
    first_stage_strength,
    hsic_permutation_test,
    instrument_diagnostics,
    mmd_permutation_test,
    poly2_features,
    sargan_hansen_j,
)
from invariant_mr.estimators.iv import fit_kclass
from invariant_mr.inference.settings import InferenceSettings
from invariant_mr.simulation.paper import simulate_paper
from statistical_bounds import rate_band


def _data(seed, n=1500, k=3, strength=0.4):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, k))
    C = rng.normal(size=(n, 2))
    H = rng.normal(size=n)
    d = Z @ np.full(k, strength) + C[:, 0] + H + rng.normal(size=n)
    y = d + C @ np.array([0.5, -0.2]) + H + rng.normal(size=n) * (1 + 0.5 * np.abs(Z[:, 0]))
    return y, d, Z, C


def test_poly2_features_reproduce_the_polynomial_kernel():
    X = np.random.default_rng(0).normal(size=(40, 4))
    F = poly2_features(X)
    np.testing.assert_allclose(F @ F.T, (X @ X.T + 1) ** 2 - 1, rtol=1e-12, atol=1e-12)


def _standardise(X):
    return (X - X.mean(0)) / X.std(0)


def test_mmd_statistic_equals_the_kernel_v_statistic():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(120, 3))
    X[60:] += 0.3
    codes = np.repeat([0, 1], 60)
    stat, p, used = mmd_permutation_test(X, codes, n_permutations=50, rng=0)
    Xs = _standardise(X)
    K = (Xs @ Xs.T + 1) ** 2
    a, b = codes == 0, codes == 1
    mmd2 = K[np.ix_(a, a)].mean() + K[np.ix_(b, b)].mean() - 2 * K[np.ix_(a, b)].mean()
    assert used == "poly2"
    assert stat == pytest.approx(mmd2, rel=1e-10)


def test_hsic_statistic_equals_the_kernel_v_statistic():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(80, 2))
    Y = X[:, :1] ** 2 + rng.normal(size=(80, 1))
    stat, p, _ = hsic_permutation_test(X, Y, n_permutations=200, rng=0)
    Kx = (_standardise(X) @ _standardise(X).T + 1) ** 2
    Ky = (_standardise(Y) @ _standardise(Y).T + 1) ** 2
    Hc = np.eye(80) - 1 / 80
    assert stat == pytest.approx(np.trace(Kx @ Hc @ Ky @ Hc) / 80**2, rel=1e-10)
    assert p < 0.01  # quadratic dependence is detected by the degree-2 kernel


def test_permutation_tests_are_seeded_and_pvalues_are_valid():
    rng = np.random.default_rng(3)
    X, codes = rng.normal(size=(300, 2)), rng.integers(0, 3, 300)
    a = mmd_permutation_test(X, codes, n_permutations=99, rng=7)
    b = mmd_permutation_test(X, codes, n_permutations=99, rng=7)
    assert a == b
    assert 1 / 100 <= a[1] <= 1.0
    Y = rng.normal(size=(300, 2))
    h1 = hsic_permutation_test(X, Y, n_permutations=99, rng=7, strata=codes)
    assert h1 == hsic_permutation_test(X, Y, n_permutations=99, rng=7, strata=codes)


def test_wide_inputs_switch_to_random_fourier_features():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 30))
    stat, p, used = mmd_permutation_test(X, np.repeat([0, 1], 100), n_permutations=20, rng=0)
    assert used.startswith("rbf")


def test_sargan_matches_ivmodels_and_hansen_matches_linearmodels():
    import ivmodels.tests as ivm
    import linearmodels.iv as lm
    y, d, Z, C = _data(0)
    ref_stat, ref_p = ivm.j_test(Z, d[:, None], y, C=C, estimator="tsls")
    stat, p, df = sargan_hansen_j(y, d, Z, C, cov_type="unadjusted")
    assert df == 2
    assert stat == pytest.approx(ref_stat, rel=1e-8)
    assert p == pytest.approx(ref_p, rel=1e-8)
    exog = np.column_stack([np.ones(len(y)), C])
    gmm = lm.IVGMM(y, exog, d[:, None], Z).fit()
    stat_r, p_r, _ = sargan_hansen_j(y, d, Z, C, cov_type="robust")
    assert stat_r == pytest.approx(gmm.j_stat.stat, rel=1e-6)
    assert p_r == pytest.approx(gmm.j_stat.pval, rel=1e-6)


def test_first_stage_strength_matches_the_estimator():
    y, d, Z, C = _data(4, strength=0.1)
    for cov in ("robust", "unadjusted"):
        f, p, k = first_stage_strength(d, Z, C, cov_type=cov)
        assert k == 3
        assert f == pytest.approx(fit_kclass(y, d, Z, C, cov_type=cov).first_stage_f, rel=1e-10)


def test_environment_varying_component_is_independent_of_valid_instruments():
    sim = simulate_paper("linear", seed=0, n_per_env=3000)
    comp = environment_varying_component(sim.data.Z, sim.W)
    # Linear mixing: the residual is A_V (V - L(V | W)), exactly linear in (V, W) and,
    # because V and W are independent, almost entirely explained by V alone.
    VW = np.column_stack([np.ones(sim.data.n), sim.V, sim.W])
    coef, *_ = np.linalg.lstsq(VW, comp, rcond=None)
    np.testing.assert_allclose(VW @ coef, comp, atol=1e-8 * np.abs(comp).max())
    Vonly = VW[:, :3]
    coef_v, *_ = np.linalg.lstsq(Vonly, comp, rcond=None)
    r2 = 1 - np.sum((comp - Vonly @ coef_v) ** 2, axis=0) / np.sum((comp - comp.mean(0)) ** 2, axis=0)
    assert np.all(r2 > 0.99)


def test_instrument_diagnostics_flag_confounded_and_pass_oracle_instruments():
    sim = simulate_paper("linear", seed=1, n_per_env=3000)
    ctx = InferenceSettings(seed=0, diagnostic_permutations=199)
    oracle = {d.name: d for d in instrument_diagnostics(sim.data, sim.W, ctx, method="oracle") if d.scope == "pooled"}
    assert oracle["oracle/invariance_mmd"].pvalue > 0.01
    assert oracle["oracle/independence_hsic"].pvalue > 0.01
    assert oracle["oracle/overidentification_j"].pvalue > 0.01
    assert oracle["oracle/first_stage_f"].statistic > 10
    allz = {d.name: d for d in instrument_diagnostics(sim.data, sim.data.Z, ctx) if d.scope == "pooled"}
    assert allz["invariance_mmd"].pvalue <= 0.01 and "not invariant" in allz["invariance_mmd"].flag
    assert allz["overidentification_j"].pvalue < 0.01
    # all of Z leaves no complement; honest "not computed" instead of a fake p-value
    assert allz["independence_hsic"].pvalue is None and "not computed" in allz["independence_hsic"].flag
    # against the V-part given explicitly, all of Z is flagged as dependent
    vpart = environment_varying_component(sim.data.Z, sim.W)
    dep = instrument_diagnostics(sim.data, sim.data.Z, ctx, complement=vpart)
    hsic = next(d for d in dep if d.name == "independence_hsic")
    assert hsic.pvalue <= 0.01
    scopes = {d.scope for d in dep if d.name == "first_stage_f"}
    assert scopes == {"pooled", "env:env1", "env:env2"}
    again = instrument_diagnostics(sim.data, sim.W, ctx, method="oracle")
    assert {d.name: d.pvalue for d in again if d.scope == "pooled"} == {k: v.pvalue for k, v in oracle.items()}


def test_permutation_tests_hold_size_small_subset():
    """Null data (invariant, independent): 40 seeds, rejection at 5% at most 5/40."""
    rej_mmd, rej_hsic = 0, 0
    for s in range(40):
        rng = np.random.default_rng(100 + s)
        X = rng.normal(size=(400, 2))
        codes = np.repeat([0, 1], 200)
        rej_mmd += mmd_permutation_test(X, codes, n_permutations=99, rng=s)[1] <= 0.05
        rej_hsic += hsic_permutation_test(X, rng.normal(size=(400, 2)), n_permutations=99, rng=s)[1] <= 0.05
    assert rej_mmd <= 5 and rej_hsic <= 5


@pytest.mark.slow
def test_permutation_tests_hold_size_on_paper_oracle_instruments():
    """300 paper-linear data sets, oracle W: rejection at 5% at most 0.07 and not below the binomial band.

    A permutation test is exact, so a test that (almost) never rejects fails the lower end.
    """
    rej = np.zeros(2)
    for s in range(300):
        sim = simulate_paper("linear", seed=10_000 + s, n_per_env=1000)
        rej[0] += mmd_permutation_test(sim.W, sim.data.env_codes, n_permutations=199, rng=s)[1] <= 0.05
        comp = environment_varying_component(sim.data.Z, sim.W)
        rej[1] += hsic_permutation_test(sim.W, comp, n_permutations=199, rng=s)[1] <= 0.05
    assert np.all(rej / 300 <= 0.07)
    assert np.all(rej / 300 >= rate_band(300, 0.05)[0])
