"""Two-sample MR on GWAS summary statistics: published reference outputs, multivariable MR, Steiger."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats

from invariant_mr.errors import InputError
from invariant_mr.estimators.summary.multivariable_mr import conditional_f_statistics, mv_egger, mv_ivw
from invariant_mr.estimators.summary.steiger import (
    r2_from_bsen,
    r2_from_eaf,
    r2_from_pn,
    steiger_filtering,
    steiger_test,
    variance_explained,
)
from invariant_mr.estimators.summary.two_sample import (
    mv_egger_table,
    mv_ivw_table,
    steiger_from_table,
    summary_statistics_from_table,
)
from invariant_mr.io.gwas_sumstats import SumstatsTable, read_mr_sumstats
from invariant_mr.estimators.summary.summary_mr import ivw, mr_egger, weighted_median, weighted_median_rows

LIPIDS = Path(__file__).parent / "data" / "lipids_chd_mendelianrandomization.tsv"

# Printed outputs of the MendelianRandomization vignettes (version 0.9.0) on the package's
# ldlc/hdlc/trig/chdlodds example data (tests/data/README.md):
#   univariable: https://sb452.github.io/MendelianRandomizationVignette/articles/Univariable_MR_Methods.html
#   multivariable: https://sb452.github.io/MendelianRandomizationVignette/articles/Multivariable_MR_Methods.html
# (source: github.com/sb452/MendelianRandomizationVignette, articles/*.html).
PRINTED = 5e-4 + 1e-12  # a value printed to 3 decimals is within half a unit of the last digit


@pytest.fixture(scope="module")
def lipids() -> SumstatsTable:
    return read_mr_sumstats(LIPIDS)


def test_univariable_ivw_reproduces_the_printed_vignette_output(lipids):
    # Vignette "IVW Example with uncorrelated variants": mr_ivw(ldlc -> chdlodds)
    # Estimate 2.834, Std Error 0.530, 95% CI 1.796, 3.873; RSE 1.920; Q = 99.5304 on 27 df.
    fit = ivw(summary_statistics_from_table(lipids, "ldlc"))
    assert fit.estimate == pytest.approx(2.834, abs=PRINTED)
    assert fit.se == pytest.approx(0.530, abs=PRINTED)
    assert (fit.ci_low, fit.ci_high) == (pytest.approx(1.796, abs=PRINTED), pytest.approx(3.873, abs=PRINTED))
    assert np.sqrt(fit.extra["phi"]) == pytest.approx(1.920, abs=PRINTED)
    assert fit.extra["cochran_q"] == pytest.approx(99.5304, abs=5e-5)


def test_univariable_egger_reproduces_the_printed_vignette_output(lipids):
    # Vignette "MR-Egger method": Estimate 3.253, SE 0.770, CI 1.743, 4.762; intercept -0.011,
    # SE 0.015, CI -0.041, 0.018, p 0.451; RSE 1.935; Q = 97.3975 on 26 df; I^2_GX 91.9%.
    fit = mr_egger(summary_statistics_from_table(lipids, "ldlc"), pvalues="normal")  # the package default
    assert fit.estimate == pytest.approx(3.253, abs=PRINTED)
    assert fit.se == pytest.approx(0.770, abs=PRINTED)
    assert (fit.ci_low, fit.ci_high) == (pytest.approx(1.743, abs=PRINTED), pytest.approx(4.762, abs=PRINTED))
    assert fit.extra["intercept"] == pytest.approx(-0.011, abs=PRINTED)
    assert fit.extra["intercept_se"] == pytest.approx(0.015, abs=PRINTED)
    assert fit.extra["intercept_ci_low"] == pytest.approx(-0.041, abs=PRINTED)
    assert fit.extra["intercept_ci_high"] == pytest.approx(0.018, abs=PRINTED)
    assert fit.extra["intercept_pvalue"] == pytest.approx(0.451, abs=PRINTED)
    assert fit.extra["residual_se"] == pytest.approx(1.935, abs=PRINTED)
    assert fit.extra["rucker_q"] == pytest.approx(97.3975, abs=5e-5)
    assert fit.extra["i_squared_gx"] == pytest.approx(0.919, abs=5e-4)


def test_weighted_and_simple_median_reproduce_the_printed_vignette_estimates(lipids):
    # Vignette "Median-based method": weighted median 2.683 (SE 0.419 by bootstrap),
    # simple median 1.755 (SE 0.740).
    ss = summary_statistics_from_table(lipids, "ldlc")
    fit = weighted_median(ss, n_bootstrap=2000, rng=0, weights="first_order")  # mr_median
    assert fit.estimate == pytest.approx(2.683, abs=PRINTED)
    assert fit.se == pytest.approx(0.419, rel=0.1)  # a bootstrap SE: Monte Carlo error only
    ratio = ss.beta_outcome / ss.beta_exposure
    assert weighted_median_rows(ratio, np.ones(ss.n_variants))[0] == pytest.approx(1.755, abs=PRINTED)


def test_weighted_mode_reproduces_the_printed_mbe_estimate(lipids):
    # Vignette "Mode-based method of Hartwig et al" (mr_mbe: weighted, delta standard errors [not
    # assuming NOME], bandwidth factor 1): MBE 2.946 (SE 1.005, a bootstrap).
    from invariant_mr.estimators.summary.summary_mr import weighted_mode

    fit = weighted_mode(summary_statistics_from_table(lipids, "ldlc"), n_bootstrap=1000, rng=0)
    assert fit.estimate == pytest.approx(2.946, abs=PRINTED)
    assert fit.se == pytest.approx(1.005, rel=0.1)  # Monte Carlo error only


def test_mv_ivw_reproduces_the_printed_vignette_output(lipids):
    # Vignette "Multivariable inverse-variance weighted method": mr_mvivw(ldlc, hdlc, trig):
    #   exposure_1 1.925 0.439 (1.064, 2.786) p 0.000; exposure_2 -0.590 0.555 (-1.677, 0.498) p 0.288;
    #   exposure_3 0.723 0.230 (0.272, 1.174) p 0.002; RSE 1.433; Q = 51.3599 on 25 df (p 0.0014).
    fit = mv_ivw_table(lipids)
    np.testing.assert_allclose(fit.estimate, [1.925, -0.590, 0.723], atol=PRINTED)
    np.testing.assert_allclose(fit.se, [0.439, 0.555, 0.230], atol=PRINTED)
    np.testing.assert_allclose(fit.ci_low, [1.064, -1.677, 0.272], atol=PRINTED)
    np.testing.assert_allclose(fit.ci_high, [2.786, 0.498, 1.174], atol=PRINTED)
    np.testing.assert_allclose(fit.pvalue, [0.000, 0.288, 0.002], atol=PRINTED)
    assert fit.residual_se == pytest.approx(1.433, abs=PRINTED)
    assert (fit.cochran_q, fit.cochran_q_df) == (pytest.approx(51.3599, abs=5e-5), 25)
    assert fit.cochran_q_pvalue == pytest.approx(0.0014, abs=5e-5)
    rows = fit.rows()
    assert [r.extra["exposure"] for r in rows] == ["ldlc", "hdlc", "trig"]
    assert rows[2].estimate == fit.estimate[2] and rows[0].method == "mv_ivw"


def test_mv_egger_reproduces_the_printed_vignette_output(lipids):
    # Vignette "Multivariable MR-Egger" (orientated to exposure 1):
    #   2.829 0.515 (1.819, 3.839); -0.663 0.496 (-1.636, 0.310) p 0.182; 0.827 0.209 (0.417, 1.237);
    #   intercept -0.028 0.010 (-0.049, -0.008) p 0.007; RSE 1.280; Q = 39.3421 on 24 df.
    fit = mv_egger_table(lipids)
    np.testing.assert_allclose(fit.estimate, [2.829, -0.663, 0.827], atol=PRINTED)
    np.testing.assert_allclose(fit.se, [0.515, 0.496, 0.209], atol=PRINTED)
    np.testing.assert_allclose(fit.ci_low, [1.819, -1.636, 0.417], atol=PRINTED)
    np.testing.assert_allclose(fit.ci_high, [3.839, 0.310, 1.237], atol=PRINTED)
    assert fit.pvalue[1] == pytest.approx(0.182, abs=PRINTED)
    assert fit.extra["intercept"] == pytest.approx(-0.028, abs=PRINTED)
    assert fit.extra["intercept_se"] == pytest.approx(0.010, abs=PRINTED)
    assert fit.extra["intercept_ci_low"] == pytest.approx(-0.049, abs=PRINTED)
    assert fit.extra["intercept_ci_high"] == pytest.approx(-0.008, abs=PRINTED)
    assert fit.extra["intercept_pvalue"] == pytest.approx(0.007, abs=PRINTED)
    assert fit.residual_se == pytest.approx(1.280, abs=PRINTED)
    assert (fit.cochran_q, fit.cochran_q_df) == (pytest.approx(39.3421, abs=5e-5), 24)
    assert fit.extra["orientated_to"] == "ldlc"


def _mv_data(seed, L=40, K=3):
    rng = np.random.default_rng(seed)
    bx = rng.normal(0, 0.1, (L, K)) + 0.05 * rng.normal(size=(L, 1))
    sx = rng.uniform(0.005, 0.02, (L, K))
    sy = rng.uniform(0.01, 0.03, L)
    by = bx @ np.array([0.3, -0.2, 0.1][:K]) + 0.01 + rng.normal(0, sy)
    return bx + rng.normal(0, sx), sx, by, sy


@pytest.mark.parametrize("seed", [0, 1])
def test_mv_ivw_and_egger_equal_weighted_least_squares(seed):
    """Independent of any MR package: statsmodels WLS, SEs scaled by max(1, residual SE)."""
    bx, sx, by, sy = _mv_data(seed)
    w = sy**-2
    ref = sm.WLS(by, bx, weights=w).fit()
    sigma = np.sqrt(ref.scale)
    fit = mv_ivw(bx, sx, by, sy, model="random")
    np.testing.assert_allclose(fit.estimate, ref.params, rtol=1e-10)
    np.testing.assert_allclose(fit.se, ref.bse / sigma * max(1.0, sigma), rtol=1e-10)
    fixed = mv_ivw(bx, sx, by, sy, model="fixed")
    np.testing.assert_allclose(fixed.se, ref.bse / sigma, rtol=1e-10)
    sign = np.where(bx[:, 1] < 0, -1.0, 1.0)
    ref_e = sm.WLS(by * sign, sm.add_constant(bx * sign[:, None]), weights=w).fit()
    sig_e = np.sqrt(ref_e.scale)
    eg = mv_egger(bx, sx, by, sy, orientate=1)
    np.testing.assert_allclose(eg.estimate, ref_e.params[1:], rtol=1e-10)
    np.testing.assert_allclose(eg.se, ref_e.bse[1:] / sig_e * max(1.0, sig_e), rtol=1e-10)
    assert eg.extra["intercept"] == pytest.approx(ref_e.params[0], rel=1e-10)
    # With one exposure, multivariable IVW is the univariable IVW.
    from invariant_mr.estimators.summary.sumstats import SummaryStatistics

    uni = ivw(SummaryStatistics(tuple(map(str, range(40))), bx[:, 0], sx[:, 0], by, sy, 1000))
    one = mv_ivw(bx[:, :1], sx[:, :1], by, sy, model="random")
    assert one.estimate[0] == pytest.approx(uni.estimate, rel=1e-12)
    assert one.se[0] == pytest.approx(uni.se, rel=1e-12)


def test_conditional_f_follows_strength_mvmr():
    """MVMR strength_mvmr (gencov = 0), recomputed with statsmodels OLS for the delta regressions.

    Source: github.com/WSpiller/MVMR, R/strength_mvmr.R: delta from lm(bx_j ~ -1 + bx_-j),
    sigma2 = sx_j^2 + sum delta^2 sx_-j^2, F = sum((bx_j - bx_-j delta)^2 / sigma2) / L.
    """
    bx, sx, _, _ = _mv_data(3, L=30)
    ours = conditional_f_statistics(bx, sx)
    for j in range(3):
        others = [k for k in range(3) if k != j]
        delta = sm.OLS(bx[:, j], bx[:, others]).fit().params
        sigma2 = sx[:, j] ** 2 + sum(delta[i] ** 2 * sx[:, k] ** 2 for i, k in enumerate(others))
        ref = np.sum((bx[:, j] - bx[:, others] @ delta) ** 2 / sigma2) / 30
        assert ours[j] == pytest.approx(ref, rel=1e-10)
    # Duplicating an exposure leaves it no conditional strength.
    dup = conditional_f_statistics(np.column_stack([bx[:, 0], bx[:, 0]]), np.column_stack([sx[:, 0], sx[:, 0]]))
    assert np.all(dup < 1e-20)


def test_multivariable_input_errors():
    bx, sx, by, sy = _mv_data(0, L=3)
    with pytest.raises(InputError, match="more variants than exposures"):
        mv_ivw(bx, sx, by, sy)
    bx, sx, by, sy = _mv_data(0, L=10)
    with pytest.raises(InputError, match="collinear"):
        mv_ivw(np.column_stack([bx[:, 0], 2 * bx[:, 0]]), sx[:, :2], by, sy)
    with pytest.raises(InputError, match="positive"):
        mv_ivw(bx, -sx, by, sy)
    with pytest.raises(InputError, match="2 exposure names"):
        mv_ivw(bx, sx, by, sy, exposures=["a", "b"])


# ----------------------------------------------------------------------------- Steiger
def test_r2_from_bsen_is_the_squared_sample_correlation():
    """For a simple regression, t^2 / (t^2 + n - 2) is exactly r^2 (TwoSampleMR get_r_from_bsen)."""
    rng = np.random.default_rng(0)
    n = 500
    g = rng.binomial(2, 0.3, n).astype(float)
    y = 0.2 * g + rng.normal(size=n)
    fit = sm.OLS(y, sm.add_constant(g)).fit()
    r2 = r2_from_bsen(fit.params[1], fit.bse[1], n)
    assert r2 == pytest.approx(np.corrcoef(g, y)[0, 1] ** 2, rel=1e-10)


def test_r2_from_pn_inverts_get_p_from_r2n():
    """TwoSampleMR get_p_from_r2n: F = r2 (n-2)/(1-r2), p = pf(F, 1, n-1, upper); get_r_from_pn inverts it."""
    n = np.array([1000.0, 5000.0, 300_000.0, 300_000.0])
    r2 = np.array([0.01, 0.002, 0.0005, 0.02])  # the last p-value (~1e-1300) underflows qf: log-scale path
    fval = r2 * (n - 2) / (1 - r2)
    logp = stats.f.logsf(fval, 1, n - 1)
    p = np.exp(logp)
    finite = p > 0
    np.testing.assert_allclose(r2_from_pn(p[finite], n[finite]), r2[finite], rtol=1e-8)
    # Beyond double precision the inversion works from a representable p: 1e-300 at n = 300,000.
    r2_tiny = r2_from_pn(1e-300, 300_000.0)
    f_tiny = r2_tiny * (300_000 - 2) / (1 - r2_tiny)
    assert stats.f.logsf(f_tiny, 1, 300_000 - 1) == pytest.approx(np.log(1e-300), rel=1e-9)
    assert r2_from_eaf(0.1, 0.3) == pytest.approx(2 * 0.3 * 0.7 * 0.01)
    with pytest.raises(InputError, match="sample size"):
        variance_explained(np.ones(2))


def test_steiger_test_matches_pytwosamplemr_with_equal_sample_sizes():
    """pytwosamplemr.mr_steiger (r given) uses one pooled n; it equals r.test when the two n agree."""
    import pytwosamplemr as pt
    rng = np.random.default_rng(1)
    r_exp, r_out = rng.uniform(0.02, 0.06, 20), rng.uniform(0.0, 0.02, 20)
    n = np.full(20, 50_000.0)
    ref = pt.mr_steiger(None, None, n, n, r_exp=r_exp, r_out=r_out)
    ours = steiger_test(r_exp**2, r_out**2, n, n)
    assert ours.r2_exposure == pytest.approx(ref["r2_exp"], rel=1e-12)
    assert ours.r2_outcome == pytest.approx(ref["r2_out"], rel=1e-12)
    assert ours.pvalue == pytest.approx(ref["steiger_test"], rel=1e-6, abs=1e-300)
    assert ours.correct_direction is ref["correct_causal_direction"] is True


def test_steiger_test_is_psych_r_test_for_independent_correlations():
    """psych::r.test(n, n2, r12, r34): z = (atanh r12 - atanh r34) / sqrt(1/(n-3) + 1/(n2-3))."""
    r2e, r2o = np.array([0.01, 0.02]), np.array([0.004, 0.001])
    res = steiger_test(r2e, r2o, [20_000, 40_000], [100_000, 100_000])
    z = (np.arctanh(np.sqrt(0.03)) - np.arctanh(np.sqrt(0.005))) / np.sqrt(1 / (30_000 - 3) + 1 / (100_000 - 3))
    assert res.z == pytest.approx(z, rel=1e-12)
    assert res.pvalue == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-10)
    rev = steiger_test(r2o, r2e, [100_000, 100_000], [20_000, 40_000])
    assert rev.correct_direction is False and rev.pvalue == pytest.approx(res.pvalue, rel=1e-12)
    per = steiger_filtering(r2e, r2o, 30_000, 100_000)
    assert per["steiger_dir"].tolist() == [True, True] and per["steiger_pval"].shape == (2,)
    assert "exposure -> outcome" in res.summary()


def test_steiger_from_table_detects_reverse_causation():
    """Variants chosen for the outcome that then act on the exposure: Steiger flags the reverse direction."""
    rng = np.random.default_rng(5)
    L, n = 15, 100_000
    eaf = rng.uniform(0.1, 0.5, L)
    sd_g = np.sqrt(2 * eaf * (1 - eaf))
    b_out = rng.uniform(0.02, 0.04, L) / sd_g  # variants act on the outcome ...
    b_exp = 0.3 * b_out  # ... and the exposure only through it
    se = 1 / (sd_g * np.sqrt(n))
    fwd = SumstatsTable(
        variant=tuple(f"v{i}" for i in range(L)), exposures=("x",),
        beta_exposure=b_out + rng.normal(0, se), se_exposure=se,
        beta_outcome=b_exp + rng.normal(0, se), se_outcome=se,
        eaf_exposure=eaf, eaf_outcome=eaf, n_exposure=np.full(L, n), n_outcome=np.full(L, n),
    )  # fmt: skip
    rev = SumstatsTable(
        variant=fwd.variant, exposures=("x",), beta_exposure=fwd.beta_outcome, se_exposure=se,
        beta_outcome=fwd.beta_exposure, se_outcome=se, eaf_exposure=eaf, eaf_outcome=eaf,
        n_exposure=fwd.n_exposure, n_outcome=fwd.n_outcome,
    )  # fmt: skip
    ok = steiger_from_table(fwd)
    assert ok.correct_direction and ok.pvalue < 1e-10
    bad = steiger_from_table(rev)
    assert not bad.correct_direction and bad.pvalue < 1e-10
    # Standardised traits: 2 eaf (1 - eaf) b^2 agrees closely with the t-statistic version here.
    assert steiger_from_table(fwd, method="eaf").r2_exposure == pytest.approx(ok.r2_exposure, rel=0.05)
    no_n = SumstatsTable(fwd.variant, ("x",), fwd.beta_exposure, se, fwd.beta_outcome, se)
    with pytest.raises(InputError, match="n_exposure and n_outcome"):
        steiger_from_table(no_n)


def test_mv_ivw_lm_model_q_a_and_t_pvalues(lipids):
    """TwoSampleMR mv_multiple / MVMR ivw_mvmr: the weighted lm's own SEs; MVMR's Q_A on L - K - 1 df."""
    bx, sx, by, sy = lipids.beta_exposure, lipids.se_exposure, lipids.beta_outcome, lipids.se_outcome
    L, K = bx.shape
    fit = mv_ivw(bx, sx, by, sy)
    ref = sm.WLS(by, bx, weights=sy**-2).fit()
    np.testing.assert_allclose(fit.estimate, ref.params, rtol=1e-10)
    np.testing.assert_allclose(fit.se, ref.bse, rtol=1e-10)  # "lm": scaled by the residual SE, whatever its size
    assert fit.model == "lm" and fit.residual_se == pytest.approx(np.sqrt(ref.scale), rel=1e-10)
    np.testing.assert_allclose(fit.pvalue, 2 * stats.norm.sf(np.abs(ref.params / ref.bse)), rtol=1e-10)
    t = mv_ivw(bx, sx, by, sy, pvalues="t")  # MVMR prints lm's t p-values on L - K df
    np.testing.assert_allclose(t.pvalue, ref.pvalues, rtol=1e-8)
    sigma2 = sy**2 + (sx**2) @ (fit.estimate**2)
    q_a = np.sum((by - bx @ fit.estimate) ** 2 / sigma2)
    assert fit.extra["q_a"] == pytest.approx(q_a, rel=1e-12) and fit.extra["q_a_df"] == L - K - 1
    assert fit.extra["q_a_pvalue"] == pytest.approx(stats.chi2.sf(q_a, L - K - 1), rel=1e-10)
    assert fit.extra["q_a"] < fit.cochran_q  # the second-order weights only add variance
    # Under-dispersion: lm shrinks the SE below the fixed-effect one, MendelianRandomization's random does not.
    small = mv_ivw(bx, sx, bx @ fit.estimate + 0.01 * (by - bx @ fit.estimate), sy)
    rand = mv_ivw(bx, sx, bx @ fit.estimate + 0.01 * (by - bx @ fit.estimate), sy, model="random")
    assert small.residual_se < 1 and np.all(small.se < rand.se)


LIPIDS_SBP = Path(__file__).parent / "data" / "lipids_sbp_mvmr.tsv"


def test_q_a_conditional_f_and_ivw_reproduce_the_mvmr_vignette_on_rawdat_mvmr():
    """MVMR's tutorial (wspiller.github.io/MVMR/articles/MVMR.html, source articles/MVMR.md in
    github.com/WSpiller/MVMR) on its `rawdat_mvmr` data (LDL-C, HDL-C, triglycerides -> SBP, 145 SNPs;
    tests/data/README.md), gencov = 0. Printed:
      strength_mvmr:   F-statistic 46.33671 67.80463 38.80184
      pleiotropy_mvmr: Q 683.0807 on 141 DF, p-value 4.880403e-72
      ivw_mvmr:        -0.021845061 (0.01417255, t -1.541364, p 0.1254538), 0.003735249 (0.01033779, 0.361320,
                       0.7183973), 0.025572042 (0.01601913, 1.596344, 0.1126351); residual SE 2.197 on 142 df
    """
    table = read_mr_sumstats(LIPIDS_SBP)
    assert table.n_variants == 145 and table.exposures == ("ldl", "hdl", "trg")
    fit = mv_ivw(table.beta_exposure, table.se_exposure, table.beta_outcome, table.se_outcome, pvalues="t")
    np.testing.assert_allclose(fit.conditional_f, [46.33671, 67.80463, 38.80184], atol=5e-6)
    assert (fit.extra["q_a"], fit.extra["q_a_df"]) == (pytest.approx(683.0807, abs=5e-5), 141)
    assert fit.extra["q_a_pvalue"] == pytest.approx(4.880403e-72, rel=1e-6)
    np.testing.assert_allclose(fit.estimate, [-0.021845061, 0.003735249, 0.025572042], atol=5e-10)
    np.testing.assert_allclose(fit.se, [0.01417255, 0.01033779, 0.01601913], atol=5e-9)
    np.testing.assert_allclose(fit.estimate / fit.se, [-1.541364, 0.361320, 1.596344], atol=5e-7)
    np.testing.assert_allclose(fit.pvalue, [0.1254538, 0.7183973, 0.1126351], atol=5e-8)
    assert fit.residual_se == pytest.approx(2.197, abs=5e-4) and fit.cochran_q_df == 142
