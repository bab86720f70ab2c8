"""Radial IVW (RadialMR `ivw_radial`): each estimate checked against its defining equation on BMI -> CHD."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from invariant_mr.errors import InputError
from invariant_mr.estimators.summary.radial_mr import ivw_radial
from invariant_mr.estimators.summary.summary_mr import ivw
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
    from invariant_mr.estimators.summary.radial_mr import _exact_random_bootstrap, _minimise, _radial_lm

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


def test_reproduces_radialmr_printed_example_on_data_radial():
    """RadialMR's own example (man/ivw_radial.Rd; output printed on its reference page, gh-pages
    reference/ivw_radial.md of github.com/WSpiller/RadialMR): data_radial's LDL-C -> CHD variants with
    LDL p < 5e-8 (82 of 185; tests/data/README.md), ivw_radial(ldl.fdat, 0.05, 1, 0.0001, TRUE):
                      Estimate  Std.Error   t value     Pr(>|t|)
        Effect (1st) 0.4874900 0.05830409  8.361163 6.210273e-17
        Iterative    0.4873205 0.05827885  8.361874 6.172955e-17
        Exact (FE)   0.4958973 0.03804168 13.035630 7.673061e-39
        Exact (RE)   0.4910400 0.05664928  8.668071 3.601563e-13   (bootstrap SE; a second run printed 0.05262928)
        Residual standard error: 1.544 on 81 degrees of freedom; F-statistic: 69.91 on 1 and 81 DF
        Q-Statistic for heterogeneity: 193.0843 on 81 DF, p-value: 3.827332e-11; Outliers detected; iterations = 3
    """
    from pathlib import Path

    from invariant_mr.estimators.summary.two_sample import summary_statistics_from_table
    from invariant_mr.io.gwas_sumstats import read_mr_sumstats

    table = read_mr_sumstats(Path(__file__).parent / "data" / "ldl_chd_radialmr.tsv")
    assert table.n_variants == 185
    table = table.subset(np.flatnonzero(table.pval_exposure[:, 0] < 5e-8))
    ss = summary_statistics_from_table(table)
    res = ivw_radial(ss, weights="first_order", tol=1e-4, n_bootstrap=1000, rng=0)
    printed = {  # estimate, SE, t (or z), p: every printed digit of the deterministic rows
        "effect": (0.4874900, 0.05830409, 8.361163, 6.210273e-17),
        "iterative": (0.4873205, 0.05827885, 8.361874, 6.172955e-17),
        "exact_fe": (0.4958973, 0.03804168, 13.035630, 7.673061e-39),
    }
    for name, (est, se, z, p) in printed.items():
        fit = getattr(res, name)
        assert fit.estimate == pytest.approx(est, abs=5e-8), name
        assert fit.se == pytest.approx(se, abs=5e-9), name
        assert fit.estimate / fit.se == pytest.approx(z, abs=5e-7), name
        assert fit.pvalue == pytest.approx(p, rel=5e-7), name
    assert res.iterations == 3
    assert res.effect.extra["residual_se"] == pytest.approx(1.544, abs=5e-4)
    assert (res.effect.estimate / res.effect.se) ** 2 == pytest.approx(69.91, abs=5e-3)
    assert (res.q, res.q_df) == (pytest.approx(193.0843, abs=5e-5), 81)
    assert res.q_pvalue == pytest.approx(3.827332e-11, rel=5e-7)
    assert len(res.outliers) > 0
    # Exact random effects: the estimate is deterministic; its SE is a bootstrap (R printed 0.0566 and
    # 0.0526 in two runs of the same example), and R's p-value 2 (1 - pt(t, 81)) loses digits to
    # cancellation at this size, so ours is held to its t(81) definition instead.
    assert res.exact_re.estimate == pytest.approx(0.4910400, abs=5e-8)
    assert 0.045 < res.exact_re.se < 0.065
    assert res.exact_re.pvalue == pytest.approx(2 * stats.t.sf(res.exact_re.estimate / res.exact_re.se, 81), rel=1e-10)


def _scalar_exact_random(x, s_x, y, s_y):
    """One draw's exact random-effects estimate, solved on its own with root finders to ~1e-14: phi
    by `brentq` on Q(beta*(phi), phi) = L - 1, beta*(phi) by `brentq` on dQ/dbeta = 0 within the
    10-SE bounds (an independent check of the vectorised Newton iterations)."""
    from scipy import optimize

    from invariant_mr.estimators.summary.radial_mr import _radial_lm

    r, df = y / x, x.size - 1
    a, c = s_y**2 / x**2, s_x**2 / x**2
    slope, se, sigma1 = _radial_lm(r, x**2 / s_y**2)
    sigma2 = _radial_lm(r, 1 / (s_y**2 / x**2 + y**2 * s_x**2 / x**4))[2]
    lb, ub = slope - 10 * se, slope + 10 * se

    def q(beta, phi):
        return float(np.sum((r - beta) ** 2 / (phi * a + beta**2 * c)))

    def dq(beta, phi):
        e, den = r - beta, phi * a + beta**2 * c
        return float(np.sum(-2 * e / den - 2 * beta * c * e**2 / den**2))

    def beta_star(phi):
        if dq(lb, phi) >= 0:
            return lb
        if dq(ub, phi) <= 0:
            return ub
        return optimize.brentq(dq, lb, ub, args=(phi,), xtol=1e-15, rtol=1e-15)

    lo, hi = max(1.0, sigma2**2), max(1.0, sigma1**2) + 0.001
    f_lo, f_hi = q(beta_star(lo), lo) - df, q(beta_star(hi), hi) - df
    if f_lo > 0 and f_hi > 0:
        phi = hi
    elif f_lo < 0 and f_hi < 0:
        phi = lo
    else:
        phi = optimize.brentq(lambda p: q(beta_star(p), p) - df, lo, hi, xtol=1e-15, rtol=1e-15)
    return beta_star(phi)


@pytest.mark.parametrize("seed", [0, 1])
def test_vectorised_random_effects_bootstrap_matches_scalar_root_finding(ss, seed):
    """Every draw (with and without a sign change of Q - (L - 1) in the phi bracket) equals the
    per-draw root-finding solution to 1e-10: the Newton iterations reach the same minimiser as a
    50-step bisection or brentq would, so the bootstrap SE is unchanged, not merely close."""
    from invariant_mr.estimators.summary.radial_mr import _exact_random_bootstrap

    bx, sx, by, sy = ss.beta_exposure, ss.se_exposure, ss.beta_outcome, ss.se_outcome
    idx = np.random.default_rng(seed).integers(0, ss.n_variants, size=(150, ss.n_variants))
    got = _exact_random_bootstrap(bx, sx, by, sy, idx)
    want = np.array([_scalar_exact_random(bx[j], sx[j], by[j], sy[j]) for j in idx])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    # A near-homogeneous draw set (the outcome pulled onto the IVW line) puts Q below L - 1 across the
    # whole bracket for some draws: the bound branch must match too.
    fitted = ivw(ss).estimate * bx
    shrunk = fitted + 0.2 * (by - fitted)
    got = _exact_random_bootstrap(bx, sx, shrunk, sy, idx[:60])
    want = np.array([_scalar_exact_random(bx[j], sx[j], shrunk[j], sy[j]) for j in idx[:60]])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


def test_random_effects_bootstrap_se_is_unchanged_by_the_newton_solver(ss):
    """The exact-RE bootstrap SE on BMI -> CHD (1000 draws) as the 50-step bisection solver of commit
    bbd9fa9 gave it for these seeds (0.058251539422003465, 0.05954740369527149): same draws, same
    minimisers, so the same SE to rounding, not merely within Monte Carlo error."""
    assert ivw_radial(ss, n_bootstrap=1000, rng=0).exact_re.se == pytest.approx(0.058251539422003465, rel=1e-13)
    assert ivw_radial(ss, n_bootstrap=1000, rng=7).exact_re.se == pytest.approx(0.05954740369527149, rel=1e-13)
