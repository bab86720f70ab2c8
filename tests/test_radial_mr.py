"""Radial IVW (RadialMR `ivw_radial`): each estimate checked against its defining equation on BMI -> CHD."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from invariant_mr.errors import InputError
from invariant_mr.estimators.radial_mr import ivw_radial
from invariant_mr.estimators.summary_mr import ivw
from test_robust_summary_mr import bmi_chd_sumstats


@pytest.fixture(scope="module")
def ss():
    return bmi_chd_sumstats()


@pytest.fixture(scope="module")
def radial(ss):
    return ivw_radial(ss, n_bootstrap=60, rng=0)


def test_first_order_radial_ivw_is_ivw_with_the_regression_se(ss):
    res = ivw_radial(ss, weights="first_order", n_bootstrap=5)
    conv = ivw(ss)
    assert res.effect.estimate == pytest.approx(conv.estimate, rel=1e-12)
    # lm's SE: the fixed-effect SE times the residual SE (here > 1, so the random-effects SE too)
    assert res.effect.se == pytest.approx(conv.extra["se_fixed_effect"] * conv.extra["residual_se"], rel=1e-10)
    assert res.q == pytest.approx(conv.extra["cochran_q"], rel=1e-10) and res.q_df == ss.n_variants - 1


def test_modified_second_order_iterative_and_exact_estimates(ss, radial):
    bx, sx, by, sy = ss.beta_exposure, ss.se_exposure, ss.beta_outcome, ss.se_outcome
    r = by / bx
    b1 = ivw(ss).estimate
    w = bx**2 / (sy**2 + b1**2 * sx**2)
    assert radial.effect.estimate == pytest.approx(np.sum(w * r) / np.sum(w), rel=1e-12)
    qj = w * (r - radial.effect.estimate) ** 2
    np.testing.assert_allclose(radial.q_contributions, qj, rtol=1e-10)
    assert set(radial.outliers) == {v for v, q in zip(ss.variant, qj) if stats.chi2.sf(q, 1) < 0.05}
    # iterative: a fixed point of b = sum w(b) r / sum w(b) to the 1e-5 tolerance
    b = radial.iterative.estimate
    wb = 1 / (sy**2 / bx**2 + b**2 * sx**2 / bx**2)
    assert abs(np.sum(wb * r) / np.sum(wb) - b) < 1e-5
    # exact FE: the minimiser of Q(b) with exact weights, to R optimize's tolerance
    fe = radial.exact_fe
    grid = np.linspace(fe.estimate - 0.05, fe.estimate + 0.05, 20001)
    q = [np.sum((r - g) ** 2 / (sy**2 / bx**2 + g**2 * sx**2 / bx**2)) for g in grid]
    assert 100 < np.argmin(q) < 19900 and fe.estimate == pytest.approx(grid[int(np.argmin(q))], abs=2e-4)
    w_fe = 1 / (sy**2 / bx**2 + fe.estimate**2 * sx**2 / bx**2)
    assert fe.se == pytest.approx(np.sqrt(1 / w_fe.sum()), rel=1e-12)
    assert fe.pvalue == pytest.approx(2 * stats.norm.sf(abs(fe.estimate / fe.se)), rel=1e-10)
    level = stats.chi2.ppf(1 - 2 * stats.norm.sf(stats.t.ppf(0.975, ss.n_variants - 1)), ss.n_variants - 1)
    # These variants are heterogeneous: Q never falls to the chi^2 level, so RadialMR's interval search
    # (the point nearest the level on each side) closes on the estimate.
    assert fe.extra["exact_q"] > level
    for end in (fe.extra["q_interval_low"], fe.extra["q_interval_high"]):
        assert end == pytest.approx(fe.estimate, abs=2e-3)
    # exact RE: Q at the estimate with the fitted phi equals its degrees of freedom; p on t(L-1)
    re, phi = radial.exact_re, radial.exact_re.extra["phi"]
    q_re = np.sum((r - re.estimate) ** 2 / (phi * sy**2 / bx**2 + re.estimate**2 * sx**2 / bx**2))
    assert q_re == pytest.approx(ss.n_variants - 1, rel=1e-3) and phi > 1
    assert re.pvalue == pytest.approx(2 * stats.t.sf(abs(re.estimate / re.se), ss.n_variants - 1), rel=1e-10)
    assert re.se > 0 and re.extra["pvalue_distribution"] == f"t({ss.n_variants - 1})"


def test_radial_is_seeded_and_validates(ss):
    a = ivw_radial(ss, n_bootstrap=20, rng=1).exact_re.se
    assert a == ivw_radial(ss, n_bootstrap=20, rng=1).exact_re.se != ivw_radial(ss, n_bootstrap=20, rng=2).exact_re.se
    with pytest.raises(InputError, match="radial-weights"):
        ivw_radial(ss, weights="third")


def test_vectorised_random_effects_bootstrap_matches_nested_searches(ss):
    """Each bootstrap draw's exact RE estimate equals RadialMR's two nested optimize() searches (to their tolerance)."""
    from invariant_mr.estimators.radial_mr import _exact_random_bootstrap, _minimise, _radial_lm

    bx, sx, by, sy = ss.beta_exposure, ss.se_exposure, ss.beta_outcome, ss.se_outcome
    idx = np.random.default_rng(0).integers(0, ss.n_variants, size=(6, ss.n_variants))
    got = _exact_random_bootstrap(bx, sx, by, sy, idx)
    df = ss.n_variants - 1
    for row, j in zip(got, idx):
        x, s_x, y, s_y = bx[j], sx[j], by[j], sy[j]
        r = y / x
        slope, se, sigma1 = _radial_lm(r, x**2 / s_y**2)
        sigma2 = _radial_lm(r, 1 / (s_y**2 / x**2 + y**2 * s_x**2 / x**4))[2]

        def q(beta, phi):
            return float(np.sum((r - beta) ** 2 / (phi * s_y**2 / x**2 + beta**2 * s_x**2 / x**2)))

        lb, ub = slope - 10 * se, slope + 10 * se
        phi = _minimise(lambda p: (q(_minimise(lambda b: q(b, p), lb, ub), p) - df) ** 2,
                        max(1.0, sigma2**2), max(1.0, sigma1**2) + 0.001)
        assert row == pytest.approx(_minimise(lambda b: q(b, phi), lb, ub), abs=2e-4)
