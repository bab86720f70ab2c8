"""TwoSampleMR's further summary-statistic methods (`estimators.summary_extra`, the NOME modes):
each against a reference library (scipy, statsmodels) or its definition worked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import optimize, stats
from statsmodels.tools.numdiff import approx_hess3

from invariant_mr.cli import main
from invariant_mr.errors import InputError
from invariant_mr.estimators.summary.summary_extra import (
    binomial_two_sided_p_half,
    egger_bootstrap,
    ivw_mre,
    sign_concordance,
    two_sample_ml,
    unweighted_regression,
)
from invariant_mr.estimators.summary.summary_mr import (
    _MAD_SCALE,
    ivw,
    r_density_mode_rows,
    simple_mode,
    simple_mode_nome,
    weighted_mode,
    weighted_mode_nome,
)
from invariant_mr.estimators.summary.sumstats import SummaryStatistics
from test_robust_summary_mr import bmi_chd_sumstats

DATA = Path(__file__).parent / "data"


def _ss(bx, sx, by, sy) -> SummaryStatistics:
    bx, sx, by, sy = (np.asarray(a, dtype=float) for a in (bx, sx, by, sy))
    return SummaryStatistics(tuple(f"v{j}" for j in range(bx.size)), bx, sx, by, sy, 10_000)


def _simulated(seed: int, L: int = 30, beta: float = 0.3, scale: float = 1.0) -> SummaryStatistics:
    rng = np.random.default_rng(seed)
    g = rng.normal(0.08, 0.04, L)
    sx = rng.uniform(0.005, 0.015, L)
    sy = rng.uniform(0.01, 0.03, L)
    return _ss(g + rng.normal(0, sx), sx, (beta * g + rng.normal(0, sy)) * scale, sy * scale)


@pytest.fixture(scope="module")
def bmi_chd():
    return bmi_chd_sumstats()


# ----------------------------------------------------------------------------- mr_sign
@pytest.mark.parametrize("n", [6, 7, 12, 25, 80])
def test_binomial_p_equals_scipy_binomtest_for_every_count(n):
    for x in range(n + 1):
        assert binomial_two_sided_p_half(x, n) == pytest.approx(stats.binomtest(x, n, 0.5).pvalue, rel=1e-12, abs=1e-300)


def test_sign_concordance_on_a_hand_computed_case():
    # 8 variants with non-zero associations, 7 concordant (one exposure beta of 0 is left out):
    # b = 2 (7/8 - 1/2) = 0.75, p = 2 P(X <= 1 | n = 8, 1/2) = 2 (1 + 8) / 256 = 0.0703125.
    bx = [0.1, -0.2, 0.3, 0.1, -0.1, 0.2, 0.05, 0.1, 0.0]
    by = [0.01, -0.02, 0.03, 0.01, -0.01, 0.02, 0.005, -0.01, 0.02]
    fit = sign_concordance(_ss(bx, [0.01] * 9, by, [0.01] * 9))
    assert fit.estimate == pytest.approx(0.75, abs=1e-15)
    assert fit.pvalue == pytest.approx(0.0703125, rel=1e-12)
    assert fit.n_variants == 8 and fit.extra["n_concordant"] == 7
    assert np.isnan(fit.se) and fit.extra["twosamplemr_method"] == "Sign concordance test"


def test_sign_concordance_needs_six_variants_and_reads_bmi_chd(bmi_chd):
    with pytest.raises(InputError, match="at least 6"):
        sign_concordance(_ss([0.1] * 5, [0.01] * 5, [0.1] * 5, [0.01] * 5))
    fit = sign_concordance(bmi_chd)
    bx, by = bmi_chd.beta_exposure, bmi_chd.beta_outcome
    x = int(np.sum(np.sign(bx) == np.sign(by)))
    assert fit.estimate == pytest.approx(2 * (x / 79 - 0.5), abs=1e-15)
    assert fit.pvalue == pytest.approx(stats.binomtest(x, 79, 0.5).pvalue, rel=1e-12)


# ----------------------------------------------------------------------------- mr_uwr, mr_ivw_mre
@pytest.mark.parametrize("scale", [1.0, 300.0])  # residual SE below 1 (the usual case) and above 1
def test_unweighted_regression_is_ols_through_the_origin_with_twosamplemrs_se(scale):
    ss = _simulated(3, scale=scale)
    ols = sm.OLS(ss.beta_outcome, ss.beta_exposure).fit()
    sigma = np.sqrt(ols.scale)
    fit = unweighted_regression(ss)
    assert fit.estimate == pytest.approx(ols.params[0], rel=1e-12)
    assert fit.se == pytest.approx(ols.bse[0] / min(1.0, sigma), rel=1e-10)
    assert fit.extra["q"] == pytest.approx(ols.scale * (ss.n_variants - 1), rel=1e-10)
    assert fit.pvalue == pytest.approx(2 * stats.norm.sf(abs(fit.estimate / fit.se)), rel=1e-10)
    assert (sigma < 1) == (scale == 1.0)


def test_ivw_mre_is_the_weighted_regressions_own_se_even_when_underdispersed():
    ss = _simulated(5)
    wls = sm.WLS(ss.beta_outcome, ss.beta_exposure, weights=ss.se_outcome**-2).fit()
    fit = ivw_mre(ss)
    assert fit.estimate == pytest.approx(wls.params[0], rel=1e-12)
    assert fit.se == pytest.approx(wls.bse[0], rel=1e-10)
    ref = ivw(ss)
    assert fit.estimate == pytest.approx(ref.estimate, rel=1e-12)
    assert fit.extra["q"] == pytest.approx(ref.extra["cochran_q"], rel=1e-10)
    # Under-dispersed data (Q < L - 1): mr_ivw floors the scale at 1, mr_ivw_mre does not.
    tight = _ss(ss.beta_exposure, ss.se_exposure, 0.3 * ss.beta_exposure, ss.se_outcome)
    assert ivw_mre(tight).se < ivw(tight).se


# ----------------------------------------------------------------------------- mr_two_sample_ml
def _full_negloglik(params, bx, sx, by, sy):
    g, b = params[:-1], params[-1]
    return 0.5 * np.sum((bx - g) ** 2 / sx**2) + 0.5 * np.sum((by - b * g) ** 2 / sy**2)


@pytest.mark.parametrize("seed", [1, 2])
def test_ml_equals_the_full_likelihood_maximum_and_its_numerical_hessian(seed):
    ss = _simulated(seed, L=12)
    bx, sx, by, sy = ss.beta_exposure, ss.se_exposure, ss.beta_outcome, ss.se_outcome
    start = np.append(bx, ivw(ss).estimate)  # TwoSampleMR's starting point
    opt = optimize.minimize(_full_negloglik, start, args=(bx, sx, by, sy), method="BFGS",
                            options={"gtol": 1e-10, "maxiter": 10_000})  # fmt: skip
    hess = approx_hess3(opt.x, _full_negloglik, args=(bx, sx, by, sy))
    fit = two_sample_ml(ss)
    assert fit.estimate == pytest.approx(opt.x[-1], rel=1e-6)
    assert fit.se == pytest.approx(np.sqrt(np.linalg.inv(hess)[-1, -1]), rel=1e-5)
    assert fit.extra["q"] == pytest.approx(2 * opt.fun, rel=1e-6)
    assert fit.extra["twosamplemr_method"] == "Maximum likelihood"


def test_ml_without_exposure_error_is_ivw_with_the_fixed_effect_se():
    ss = _simulated(4)
    exact = _ss(ss.beta_exposure, ss.se_exposure * 1e-9, ss.beta_outcome, ss.se_outcome)
    fit, ref = two_sample_ml(exact), ivw(exact)
    assert fit.estimate == pytest.approx(ref.estimate, rel=1e-8)
    assert fit.se == pytest.approx(ref.extra["se_fixed_effect"], rel=1e-6)


def test_ml_corrects_the_weak_instrument_dilution_of_ivw():
    # Weak instruments (mean F ~ 4): IVW is diluted towards 0; ML, which models the error in bx, is not.
    ml, iv = [], []
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        L = 60
        g = rng.normal(0.02, 0.01, L)
        sx = np.full(L, 0.01)
        sy = np.full(L, 0.005)
        ss = _ss(g + rng.normal(0, sx), sx, 0.5 * g + rng.normal(0, sy), sy)
        ml.append(two_sample_ml(ss).estimate)
        iv.append(ivw(ss).estimate)
    assert abs(np.mean(ml) - 0.5) < 0.05 < 0.5 - np.mean(iv)


# ----------------------------------------------------------------------------- NOME modes
def test_weighted_mode_nome_uses_first_order_ses_for_weights_and_bootstrap(bmi_chd):
    ss = bmi_chd
    bx, by, sy = ss.beta_exposure, ss.beta_outcome, ss.se_outcome
    ratio, se1 = by / bx, sy / np.abs(bx)
    fit = weighted_mode_nome(ss, n_bootstrap=200, rng=7)
    assert fit.estimate == pytest.approx(float(r_density_mode_rows(ratio, se1**-2)[0]), abs=1e-15)
    boot = r_density_mode_rows(np.random.default_rng(7).normal(ratio, se1, size=(200, ss.n_variants)), se1**-2)
    assert fit.se == pytest.approx(_MAD_SCALE * np.median(np.abs(boot - np.median(boot))), rel=1e-12)
    assert fit.pvalue == pytest.approx(2 * stats.t.sf(abs(fit.estimate / fit.se), ss.n_variants - 1), rel=1e-10)
    assert fit.extra["twosamplemr_method"] == "Weighted mode (NOME)"


def test_simple_mode_nome_keeps_the_simple_modes_estimate_with_a_first_order_bootstrap(bmi_chd):
    ss = bmi_chd
    ratio, se1 = ss.beta_outcome / ss.beta_exposure, ss.se_outcome / np.abs(ss.beta_exposure)
    fit = simple_mode_nome(ss, n_bootstrap=200, rng=3)
    assert fit.estimate == simple_mode(ss, n_bootstrap=2).estimate
    boot = r_density_mode_rows(np.random.default_rng(3).normal(ratio, se1, size=(200, ss.n_variants)), np.ones(79))
    assert fit.se == pytest.approx(_MAD_SCALE * np.median(np.abs(boot - np.median(boot))), rel=1e-12)
    # The default modes are unchanged: second-order SEs, no NOME label.
    assert "twosamplemr_method" not in weighted_mode(ss, n_bootstrap=2).extra


# ----------------------------------------------------------------------------- Egger bootstrap
def test_egger_bootstrap_follows_the_packages_per_draw_formula():
    ss = _simulated(8, L=15)
    B = 300
    fit = egger_bootstrap(ss, n_bootstrap=B, rng=11)
    rng = np.random.default_rng(11)
    xs = rng.normal(ss.beta_exposure, ss.se_exposure, size=(B, 15))
    ys = rng.normal(ss.beta_outcome, ss.se_outcome, size=(B, 15))
    w = ss.se_outcome**-2
    slopes, ints = [], []
    for x, y in zip(xs, ys):
        y, x = y * np.sign(x), np.abs(x)
        b = np.cov(x * w, y * w)[0, 1] / np.var(x * w, ddof=1)
        slopes.append(b)
        ints.append(np.mean(y) - np.mean(x) * b)
    slopes, ints = np.array(slopes), np.array(ints)
    assert fit.estimate == pytest.approx(slopes.mean(), rel=1e-10)
    assert fit.se == pytest.approx(slopes.std(ddof=1), rel=1e-10)
    assert fit.pvalue == np.mean(np.sign(slopes.mean()) * slopes < 0)
    assert fit.extra["intercept"] == pytest.approx(ints.mean(), rel=1e-9, abs=1e-12)
    assert fit.extra["intercept_se"] == pytest.approx(ints.std(ddof=1), rel=1e-9)


# ----------------------------------------------------------------------------- the CLI
def test_mr_runs_every_new_method_by_name_with_twosamplemrs_names(tmp_path):
    methods = "mr_sign,mr_uwr,ivw_mre,mr_two_sample_ml,simple_mode_nome,weighted_mode_nome,mr_egger_bootstrap,mr_grip"
    out = tmp_path / "o"
    code = main(["mr", "--exposure-gwas", str(DATA / "bmi_chd_twosamplemr_exposure.tsv"), "--outcome-gwas",
                 str(DATA / "bmi_chd_twosamplemr_outcome.tsv"), "--methods", methods, "--n-bootstrap", "100",
                 "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    table = pd.read_csv(out / "mr_results.tsv", sep="\t")
    assert set(table["method"]) == set(methods.split(","))
    ml = table.set_index("method").loc["mr_two_sample_ml"]
    assert ml["b"] == pytest.approx(two_sample_ml(bmi_chd_sumstats()).estimate, rel=1e-9)  # printed to 10 digits
    sign = table.set_index("method").loc["mr_sign"]
    assert np.isnan(sign["se"]) and 0 < sign["pval"] < 1
    rows = json.loads((out / "results.json").read_text())["estimates"]
    names = {r["method"]: r["extra"]["twosamplemr_method"] for r in rows if r["scope"] == "pooled"}
    assert names["mr_uwr"] == "Unweighted regression" and names["weighted_mode_nome"] == "Weighted mode (NOME)"


# ----------------------------------------------------------------------------- MR-GRIP
def test_mr_grip_is_statsmodels_wls_and_invariant_to_allele_coding():
    from invariant_mr.estimators.summary.summary_extra import mr_grip

    ss = _simulated(9, L=20)
    bx, by, sy = ss.beta_exposure, ss.beta_outcome, ss.se_outcome
    wls = sm.WLS(by * bx, sm.add_constant(bx**2), weights=1 / (bx**2 * sy**2)).fit()
    fit = mr_grip(ss)
    assert fit.estimate == pytest.approx(wls.params[1], rel=1e-10)
    assert fit.se == pytest.approx(wls.bse[1], rel=1e-10)
    assert fit.extra["intercept"] == pytest.approx(wls.params[0], rel=1e-9, abs=1e-15)
    assert fit.pvalue == pytest.approx(2 * stats.t.sf(abs(wls.tvalues[1]), 18), rel=1e-9)
    flip = np.where(np.arange(20) % 3 == 0, -1.0, 1.0)  # swap the alleles of every third variant
    flipped = mr_grip(_ss(bx * flip, ss.se_exposure, by * flip, sy))
    assert flipped.estimate == pytest.approx(fit.estimate, rel=1e-12) and flipped.se == pytest.approx(fit.se, rel=1e-12)


def test_twosamplemr_names_cover_registered_methods_and_new_rows_carry_them(bmi_chd):
    from invariant_mr.estimators.summary.summary_extra import TWOSAMPLEMR_METHODS
    from invariant_mr.methods.catalogue import BUILTIN_METHODS

    registered = {m.name for m in BUILTIN_METHODS}
    assert set(TWOSAMPLEMR_METHODS) <= registered
    for fit in (sign_concordance(bmi_chd), unweighted_regression(bmi_chd), ivw_mre(bmi_chd), two_sample_ml(bmi_chd),
                egger_bootstrap(bmi_chd, n_bootstrap=10), simple_mode_nome(bmi_chd, n_bootstrap=2),
                weighted_mode_nome(bmi_chd, n_bootstrap=2)):  # fmt: skip
        assert (fit.extra["twosamplemr_obj"], fit.extra["twosamplemr_method"]) == TWOSAMPLEMR_METHODS[fit.method]


def test_mr_defaults_leave_the_extra_methods_out_and_all_runs_them():
    from invariant_mr.estimators.summary.summary_extra import TWOSAMPLEMR_METHODS
    from invariant_mr.io.gwas_sumstats import harmonise, read_gwas
    from invariant_mr.pipeline import methods_for

    table = harmonise(read_gwas(DATA / "bmi_chd_twosamplemr_exposure.tsv"),
                      read_gwas(DATA / "bmi_chd_twosamplemr_outcome.tsv")).table  # fmt: skip
    extra = {"mr_sign", "mr_uwr", "ivw_mre", "mr_two_sample_ml", "simple_mode_nome", "weighted_mode_nome",
             "mr_grip", "mr_egger_bootstrap"}  # fmt: skip
    default = {s.name for s in methods_for(table, None)}
    assert not default & extra and {"ivw", "mr_egger", "weighted_median", "simple_mode", "weighted_mode"} <= default
    assert extra <= {s.name for s in methods_for(table, "all")} and extra <= set(TWOSAMPLEMR_METHODS)


def test_twosamplemr_function_names_select_the_same_methods():
    from invariant_mr.methods.registry import resolve_methods

    names = [s.name for s in resolve_methods("mr_ivw_fe,mr_simple_mode_nome,mr_egger_regression,ivw,mr_ivw")]
    assert names == ["ivw_fixed", "simple_mode_nome", "mr_egger", "ivw"]  # duplicates after aliasing dropped once
    with pytest.raises(InputError, match="unknown method"):
        resolve_methods("mr_not_a_method")
