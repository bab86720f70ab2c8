"""Summary-statistic MR: agreement with reference implementations and exact identities."""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats

from invariant_mr.data import MRData
from invariant_mr.errors import InputError
from invariant_mr.pipeline import run_analysis
from invariant_mr.methods.registry import MethodContext
from invariant_mr.simulation.paper import simulate_paper
from invariant_mr.estimators.summary.summary_mr import (
    cochran_q,
    ivw,
    ivw_fixed,
    kde_mode_rows,
    leave_one_out,
    mr_egger,
    mr_presso,
    penalised_weighted_median,
    r_density_mode_rows,
    simple_median,
    simple_mode,
    weighted_median,
    weighted_median_rows,
    weighted_mode,
)
from invariant_mr.estimators.summary.sumstats import (
    SummaryStatistics,
    per_column_regression,
    read_summary_statistics,
    summary_statistics,
)
from statistical_bounds import assert_rate, assert_se_calibrated, assert_unbiased, assert_uniform_pvalues

REL = 1e-6


@pytest.fixture(scope="module")
def discrete_sumstats() -> SummaryStatistics:
    sim = simulate_paper("discrete", seed=11, n_per_env=1500)
    return summary_statistics(sim.data)


def synthetic_sumstats(seed: int, L: int = 25, theta: float = 0.3, pleiotropy: float = 0.0) -> SummaryStatistics:
    rng = np.random.default_rng(seed)
    bx = rng.uniform(0.05, 0.3, L) * rng.choice([-1, 1], L)
    sx = rng.uniform(0.01, 0.02, L)
    sy = rng.uniform(0.01, 0.03, L)
    alpha = pleiotropy * rng.uniform(0, 1, L)
    by = theta * bx + alpha + rng.normal(0, sy)
    bx_obs = bx + rng.normal(0, sx)
    return SummaryStatistics(tuple(f"v{j}" for j in range(L)), bx_obs, sx, by, sy, 10_000)


# ----------------------------------------------------------------------------- sumstats
def test_per_variant_regressions_match_statsmodels():
    sim = simulate_paper("discrete", seed=3, n_per_env=400)
    data = sim.data
    ss_u = summary_statistics(data, cov_type="unadjusted")
    ss_r = summary_statistics(data, cov_type="robust")
    C = np.column_stack([np.ones(data.n), data.env_dummies()])
    for j in (0, 7, 19):
        X = np.column_stack([data.Z[:, j], C])
        for target, b_u, s_u, s_r in (
            (data.exposure, ss_u.beta_exposure, ss_u.se_exposure, ss_r.se_exposure),
            (data.outcome, ss_u.beta_outcome, ss_u.se_outcome, ss_r.se_outcome),
        ):
            fit = sm.OLS(target, X).fit()
            assert b_u[j] == pytest.approx(fit.params[0], rel=1e-10)
            assert s_u[j] == pytest.approx(fit.bse[0], rel=1e-10)
            assert s_r[j] == pytest.approx(sm.OLS(target, X).fit(cov_type="HC0").bse[0], rel=1e-10)


def test_sumstats_tsv_round_trip_is_exact(tmp_path, discrete_sumstats):
    path = tmp_path / "ss.tsv"
    discrete_sumstats.to_tsv(path)
    header = path.read_text().splitlines()[0].split("\t")
    assert header == ["variant", "beta_exposure", "se_exposure", "beta_outcome", "se_outcome", "n"]
    back = read_summary_statistics(path)
    assert back.variant == discrete_sumstats.variant
    np.testing.assert_array_equal(back.beta_outcome, discrete_sumstats.beta_outcome)
    np.testing.assert_array_equal(back.se_exposure, discrete_sumstats.se_exposure)
    with pytest.raises(ValueError):
        discrete_sumstats.beta_exposure[0] = 1.0  # read-only


def test_per_column_regression_is_invariant_to_control_reparametrisation():
    rng = np.random.default_rng(0)
    X, y, C = rng.normal(size=(200, 5)), rng.normal(size=200), rng.normal(size=(200, 3))
    C1 = np.column_stack([np.ones(200), C])
    C2 = C1 @ rng.normal(size=(4, 4))  # same column space
    b1, s1, _ = per_column_regression(X, y, C1)
    b2, s2, _ = per_column_regression(X, y, C2)
    np.testing.assert_allclose(b1, b2, rtol=1e-10)
    np.testing.assert_allclose(s1, s2, rtol=1e-10)


# ----------------------------------------------------------------------------- references
def _reference_input(ss):
    import pytwosamplemr as pt
    return pt, pt.mr_input(ss.beta_exposure, ss.se_exposure, ss.beta_outcome, ss.se_outcome)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ivw_matches_pytwosamplemr(seed):
    ss = synthetic_sumstats(seed, pleiotropy=0.02 * seed)
    pt, obj = _reference_input(ss)
    ours, ref = ivw(ss), pt.mr_ivw(obj, model="random")
    assert ours.estimate == pytest.approx(ref.estimate, rel=REL)
    assert ours.se == pytest.approx(ref.se, rel=REL)
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=REL, abs=1e-300)
    assert ours.extra["cochran_q"] == pytest.approx(ref.heter_stat, rel=REL)


def test_ivw_matches_weighted_least_squares_from_the_published_formula(discrete_sumstats):
    """Independent of any MR package: WLS through the origin, SE scaled by max(1, residual SE)."""
    ss = discrete_sumstats
    w = ss.se_outcome**-2
    fit = sm.WLS(ss.beta_outcome, ss.beta_exposure[:, None], weights=w).fit()
    sigma = np.sqrt(fit.scale)
    ours = ivw(ss)
    assert ours.estimate == pytest.approx(fit.params[0], rel=1e-10)
    assert ours.se == pytest.approx(fit.bse[0] / sigma * max(1.0, sigma), rel=1e-10)
    q, df, _ = cochran_q(ss)
    assert q == pytest.approx(fit.scale * df, rel=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mr_egger_matches_pytwosamplemr(seed):
    ss = synthetic_sumstats(seed, pleiotropy=0.03)
    pt, obj = _reference_input(ss)
    ours, ref = mr_egger(ss, pvalues="normal"), pt.mr_egger(obj)
    assert ours.estimate == pytest.approx(ref.estimate, rel=REL)
    assert ours.se == pytest.approx(ref.se, rel=REL)
    assert ours.extra["intercept"] == pytest.approx(ref.intercept, rel=REL)
    assert ours.extra["intercept_se"] == pytest.approx(ref.intercept_se, rel=REL)
    assert ours.extra["intercept_pvalue"] == pytest.approx(ref.intercept_pvalue, rel=REL, abs=1e-12)
    assert ours.extra["i_squared_gx"] == pytest.approx(ref.i_sq, rel=REL)


def test_mr_egger_on_paper_data_matches_pytwosamplemr(discrete_sumstats):
    pt, obj = _reference_input(discrete_sumstats)
    ours, ref = mr_egger(discrete_sumstats, pvalues="normal"), pt.mr_egger(obj)
    assert ours.estimate == pytest.approx(ref.estimate, rel=REL)
    assert ours.se == pytest.approx(ref.se, rel=REL)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_median_matches_pytwosamplemr(seed):
    ss = synthetic_sumstats(seed, pleiotropy=0.02)
    pt, obj = _reference_input(ss)
    ref = pt.mr_median(obj, iterations=2000)
    ours = weighted_median(ss, n_bootstrap=2000, rng=5, weights="first_order")
    assert ours.estimate == pytest.approx(ref.estimate, rel=REL)
    # Bootstrap SEs use different random draws: agree within Monte Carlo error.
    assert ours.se == pytest.approx(ref.se, rel=0.1)


def test_weighted_median_rows_matches_the_reference_definition():
    import pytwosamplemr as pt
    rng = np.random.default_rng(4)
    vals, w = rng.normal(size=(50, 9)), rng.uniform(0.1, 2, 9)
    ours = weighted_median_rows(vals, w)
    ref = [pt.weighted_median(v, w) for v in vals]
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_bootstrap_ses_are_seeded(discrete_sumstats):
    a = weighted_median(discrete_sumstats, n_bootstrap=300, rng=1)
    b = weighted_median(discrete_sumstats, n_bootstrap=300, rng=1)
    c = weighted_median(discrete_sumstats, n_bootstrap=300, rng=2)
    assert a.se == b.se and a.se != c.se
    m1 = weighted_mode(discrete_sumstats, n_bootstrap=200, rng=1)
    m2 = weighted_mode(discrete_sumstats, n_bootstrap=200, rng=1)
    assert m1.se == m2.se and m1.se > 0


def test_weighted_mode_is_the_maximum_of_the_weighted_density():
    rng = np.random.default_rng(2)
    vals = np.concatenate([rng.normal(0.5, 0.05, 12), rng.normal(1.5, 0.05, 6)])
    w = rng.uniform(0.5, 1.5, vals.size)
    mode = kde_mode_rows(vals, w)[0]
    s = 0.9 * min(np.std(vals, ddof=1), 1.4826 * np.median(np.abs(vals - np.median(vals)))) / vals.size**0.2
    fine = np.linspace(vals.min() - 3 * s, vals.max() + 3 * s, 200_001)
    dens = np.exp(-0.5 * ((fine[:, None] - vals[None, :]) / s) ** 2) @ (w / w.sum())
    assert mode == pytest.approx(fine[np.argmax(dens)], abs=1e-3 * s)
    # Mode is robust to the minority cluster; weighted mode estimator recovers it.
    ss = synthetic_sumstats(0, L=30, theta=0.3)
    assert abs(weighted_mode(ss, n_bootstrap=100).estimate - 0.3) < 0.1


def test_leave_one_out_equals_refitting(discrete_sumstats):
    loo = leave_one_out(discrete_sumstats)
    for i in (0, 5, 29):
        keep = np.ones(discrete_sumstats.n_variants, bool)
        keep[i] = False
        fit = ivw(discrete_sumstats.subset(keep))
        assert loo["estimate"][i] == pytest.approx(fit.estimate, rel=1e-10)
        assert loo["se"][i] == pytest.approx(fit.se, rel=1e-10)


# ----------------------------------------------------------------------------- MR-PRESSO
def _presso_rss_loop(ss):
    """The published algorithm, one weighted regression per left-out variant (statsmodels)."""
    w = ss.se_outcome**-2
    x, y = ss.beta_exposure * np.sqrt(w), ss.beta_outcome * np.sqrt(w)
    rss = 0.0
    for i in range(ss.n_variants):
        keep = np.arange(ss.n_variants) != i
        slope = sm.OLS(y[keep], x[keep]).fit().params[0]
        rss += (y[i] - slope * x[i]) ** 2
    return rss


def test_mr_presso_detects_planted_outliers_and_corrects_ivw():
    ss = synthetic_sumstats(3, L=30, theta=0.3)
    by = np.array(ss.beta_outcome)
    by[[2, 11]] += 0.5  # two strongly pleiotropic variants
    bad = SummaryStatistics(ss.variant, ss.beta_exposure, ss.se_exposure, by, ss.se_outcome, ss.n)
    res = mr_presso(bad, n_distribution=2000, rng=0)
    assert res.rss_observed == pytest.approx(_presso_rss_loop(bad), rel=1e-10)
    assert res.global_pvalue < 0.01
    assert set(res.outliers) == {"v2", "v11"}
    assert abs(res.corrected.estimate - 0.3) < abs(res.raw.estimate - 0.3)
    kept = bad.subset([i for i in range(30) if i not in (2, 11)])
    assert res.corrected.estimate == pytest.approx(ivw(kept).estimate, rel=1e-12)
    assert res.corrected.se == pytest.approx(ivw(kept).se, rel=1e-12)
    clean = mr_presso(ss, n_distribution=2000, rng=0)
    assert clean.global_pvalue > 0.01 and clean.corrected is None
    again = mr_presso(bad, n_distribution=2000, rng=0)
    assert again.global_pvalue == res.global_pvalue


def test_mr_presso_global_test_size_small_subset():
    """Under no pleiotropy the global p-value is roughly uniform (20 seeds, loose bound)."""
    pvals = [mr_presso(synthetic_sumstats(s, L=15), n_distribution=500, rng=s).global_pvalue for s in range(20)]
    assert np.mean(np.array(pvals) < 0.05) <= 0.2
    assert_uniform_pvalues(pvals)  # two-sided: a test that never rejects is caught too


def test_ivw_coverage_valid_instruments():
    """IVW over 400 replications with valid instruments: unbiased, SE calibrated, 95% CI covers
    within the two-sided binomial band of 0.95 (0.91-0.98 at level 1e-3)."""
    sumstats = [synthetic_sumstats(100 + s, L=20) for s in range(400)]
    fits = [ivw(ss) for ss in sumstats]
    est = np.array([f.estimate for f in fits])
    # IVW ignores the error in the exposure associations (NOME), so it is diluted towards zero by
    # about sum(sx^2 / sy^2) / sum(bx^2 / sy^2) of theta (0.7% here): unbiased for that target.
    dilution = np.mean([np.sum((ss.se_exposure / ss.se_outcome) ** 2) / np.sum((ss.beta_exposure / ss.se_outcome) ** 2)
                        for ss in sumstats])  # fmt: skip
    assert_unbiased(est, 0.3 * (1 - dilution))
    assert_se_calibrated(est, [f.se for f in fits], tolerance=0.05)
    assert_rate([f.ci_low <= 0.3 <= f.ci_high for f in fits], 0.95, what="IVW coverage")


# ----------------------------------------------------------------------------- registered methods
def test_methods_run_through_the_pipeline():
    sim = simulate_paper("discrete", seed=2, n_per_env=600)
    ctx = MethodContext(seed=3, options={"n_bootstrap": 100, "presso_n_distribution": 200})
    res = run_analysis(sim.data, "ivw,mr_egger,weighted_median,weighted_mode,mr_presso", ctx)
    pooled = {e.method: e for e in res.estimates if e.scope == "pooled"}
    assert set(pooled) == {"ivw", "mr_egger", "weighted_median", "weighted_mode", "mr_presso"}
    assert pooled["ivw"].estimate == pytest.approx(ivw(summary_statistics(sim.data)).estimate, rel=1e-12)
    assert {e.scope for e in res.estimates} == {"pooled", "env:env1", "env:env2"}
    names = {d.name for d in res.diagnostics}
    assert {"cochran_q", "egger_intercept", "i_squared_gx", "leave_one_out", "mr_presso_global"} <= names
    again = run_analysis(sim.data, "weighted_median", ctx)
    assert again.estimates[0].se == res.select("weighted_median", "pooled")[0].se


def test_summary_methods_need_enough_variants():
    rng = np.random.default_rng(0)
    n = 200
    Z = rng.normal(size=(n, 2))
    d = Z.sum(1) + rng.normal(size=n)
    data = MRData(Z, d, d + rng.normal(size=n), np.repeat(["a", "b"], n // 2))
    res = run_analysis(data, "mr_egger", MethodContext())
    row = res.select("mr_egger", "pooled")[0]
    assert np.isnan(row.estimate) and "at least 3 variants" in row.extra["reason"]


def test_sumstats_p_threshold_selects_variants_for_every_scope():
    data = simulate_paper("poly3", n_envs=2, n_per_env=500, seed=3).data
    base = run_analysis(data, "ivw", MethodContext(seed=0))
    sel = run_analysis(data, "ivw", MethodContext(seed=0, options={"sumstats_p_threshold": 1e-6}))
    k_all = base.select("ivw")[0].n_instruments
    k_sel = {e.scope: e.n_instruments for e in sel.select("ivw")}
    assert k_all == data.p and 3 <= k_sel["pooled"] < k_all
    assert set(k_sel.values()) == {k_sel["pooled"]}  # the pooled selection is used in every environment
    # Too strict: the method reports why it has no estimate; it does not stop the run.
    none = run_analysis(data, "ivw,ols", MethodContext(seed=0, options={"sumstats_p_threshold": 1e-300}))
    row = none.select("ivw")[0]
    assert np.isnan(row.estimate) and "sumstats-p-threshold" in row.extra["reason"]
    assert np.isfinite(none.select("ols")[0].estimate)
    with pytest.raises(InputError, match="sumstats-p-threshold"):
        run_analysis(data, "ivw", MethodContext(seed=0, options={"sumstats_p_threshold": 2.0}))


# ----------------------------------------------------------------------------- conventions and new estimators
def _bmi_chd():
    from test_robust_summary_mr import bmi_chd_sumstats

    return bmi_chd_sumstats()


def test_weighted_median_defaults_to_twosamplemr_second_order_weights():
    # TwoSampleMR mr_weighted_median on BMI -> CHD (79 variants): b = 0.3870 (issue #21);
    # MendelianRandomization's first-order weights give 0.3962.
    ss = _bmi_chd()
    second = weighted_median(ss, n_bootstrap=50)
    first = weighted_median(ss, n_bootstrap=50, weights="first_order")
    assert second.estimate == pytest.approx(0.3870, abs=5e-5) and second.extra["weights"] == "second_order"
    assert first.estimate == pytest.approx(0.3962, abs=5e-5)
    with pytest.raises(InputError, match="median-weights"):
        weighted_median(ss, weights="third_order")


@pytest.mark.parametrize("seed", [0, 1])
def test_simple_and_penalised_medians_match_pytwosamplemr(seed):
    ss = synthetic_sumstats(seed, pleiotropy=0.03)
    pt, obj = _reference_input(ss)
    simple = simple_median(ss, n_bootstrap=1000, rng=3)
    ref = pt.mr_median(obj, weighting="simple", iterations=1000)
    assert simple.estimate == pytest.approx(ref.estimate, rel=REL)
    assert simple.se == pytest.approx(ref.se, rel=0.15)
    pen = penalised_weighted_median(ss, n_bootstrap=1000, rng=3, weights="first_order")
    ref = pt.mr_median(obj, weighting="penalized", iterations=1000)
    assert pen.estimate == pytest.approx(ref.estimate, rel=REL)
    assert pen.se == pytest.approx(ref.se, rel=0.15)


def test_penalised_median_down_weights_outlying_ratios():
    ss = synthetic_sumstats(3, pleiotropy=0.0)
    bx, sx, by, sy = ss.beta_exposure, ss.se_exposure, ss.beta_outcome.copy(), ss.se_outcome
    by[:3] += 40 * sy[:3]  # three grossly pleiotropic variants
    bad = SummaryStatistics(ss.variant, bx, sx, by, sy, ss.n)
    fit = penalised_weighted_median(bad, n_bootstrap=100, rng=0)
    assert fit.extra["n_downweighted"] >= 3
    w = 1 / (sy**2 / bx**2 + by**2 * sx**2 / bx**4)
    pen = w * np.minimum(1, 20 * stats.chi2.sf(w * (by / bx - fit.extra["weighted_median"]) ** 2, 1))
    assert fit.estimate == pytest.approx(weighted_median_rows(by / bx, pen)[0], rel=1e-12)


def test_ivw_fixed_effect_row_i_squared_and_residual_se():
    ss = _bmi_chd()
    re, fe = ivw(ss), ivw_fixed(ss)
    assert fe.estimate == re.estimate and fe.extra["model"] == "fixed_effect"
    bx, by, sy = ss.beta_exposure, ss.beta_outcome, ss.se_outcome
    assert fe.se == pytest.approx(1 / np.sqrt(np.sum(bx**2 / sy**2)), rel=1e-12)
    q, df = re.extra["cochran_q"], re.extra["cochran_q_df"]
    assert re.extra["i_squared"] == pytest.approx((q - df) / q, rel=1e-12)
    assert re.extra["residual_se"] == pytest.approx(np.sqrt(re.extra["phi"]), rel=1e-12)
    assert re.se == pytest.approx(fe.se * re.extra["residual_se"], rel=1e-12)  # over-dispersed here


def test_pvalue_conventions():
    ss = _bmi_chd()
    L = ss.n_variants
    tsmr, normal, t = (mr_egger(ss, pvalues=p) for p in ("twosamplemr", "normal", "t"))
    z = tsmr.estimate / tsmr.se
    # TwoSampleMR mr_egger_regression: p = 2 pt(|b / se|, L - 2), intercept likewise; intervals normal
    assert tsmr.pvalue == pytest.approx(2 * stats.t.sf(abs(z), L - 2), rel=1e-12)
    assert normal.pvalue == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-12)
    assert tsmr.ci_low == normal.ci_low and t.ci_low < normal.ci_low
    assert tsmr.extra["pvalue_distribution"] == f"t({L - 2})" and normal.extra["pvalue_distribution"] == "normal"
    iz = tsmr.extra["intercept"] / tsmr.extra["intercept_se"]
    assert tsmr.extra["intercept_pvalue"] == pytest.approx(2 * stats.t.sf(abs(iz), L - 2), rel=1e-12)
    # IVW is normal under TwoSampleMR's convention, t(L-1) only when asked
    i = ivw(ss)
    assert i.pvalue == pytest.approx(2 * stats.norm.sf(abs(i.estimate / i.se)), rel=1e-12)
    assert ivw(ss, pvalues="t").pvalue == pytest.approx(2 * stats.t.sf(abs(i.estimate / i.se), L - 1), rel=1e-12)
    with pytest.raises(InputError, match="summary-pvalues"):
        ivw(ss, pvalues="z")


def test_simple_mode_is_the_unweighted_density_mode():
    ss = _bmi_chd()
    fit = simple_mode(ss, n_bootstrap=100, rng=0)
    ratio = ss.beta_outcome / ss.beta_exposure
    assert fit.estimate == pytest.approx(r_density_mode_rows(ratio, np.ones_like(ratio))[0], rel=1e-12)
    assert fit.extra["pvalue_distribution"] == f"t({ss.n_variants - 1})" and fit.se > 0
    exact = simple_mode(ss, n_bootstrap=100, rng=0, density="exact")
    assert exact.estimate == pytest.approx(kde_mode_rows(ratio, np.ones_like(ratio))[0], rel=1e-12)


def test_r_density_mode_is_the_maximum_of_rs_binned_density():
    """R's density(): linear binning on 2n points over [min - 7bw, max + 7bw], kernel convolution (FFT), the
    first n points interpolated onto n points over [min - 3bw, max + 3bw]. Rebuilt here by direct sums."""
    rng = np.random.default_rng(5)
    vals = np.concatenate([rng.normal(0.4, 0.1, 25), rng.normal(1.2, 0.3, 10)])
    w = rng.uniform(0.2, 2.0, vals.size)
    w = w / w.sum()
    n = 512
    mad = 1.4826 * np.median(np.abs(vals - np.median(vals)))
    bw = 0.9 * min(np.std(vals, ddof=1), mad) / vals.size**0.2
    lo, up = vals.min() - 7 * bw, vals.max() + 7 * bw
    delta = (up - lo) / (n - 1)
    bins = np.zeros(n)
    for v, wi in zip(vals, w):
        k = int(np.floor((v - lo) / delta))
        f = (v - lo) / delta - k
        bins[k] += wi * (1 - f)
        bins[k + 1] += wi * f
    xords = lo + delta * np.arange(n)
    dens = np.array([np.sum(bins * stats.norm.pdf(x - xords, scale=bw)) for x in xords])
    xout = np.linspace(vals.min() - 3 * bw, vals.max() + 3 * bw, n)
    yout = np.interp(xout, xords, dens)
    assert r_density_mode_rows(vals, w)[0] == pytest.approx(xout[np.argmax(yout)], abs=1e-12)
    # and it lies within one output step of the exact kernel-sum mode
    assert abs(r_density_mode_rows(vals, w)[0] - kde_mode_rows(vals, w)[0]) < 1.5 * (xout[1] - xout[0])
