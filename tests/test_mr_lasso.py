"""MR-Lasso (MendelianRandomization `mr_lasso`): glmnet's path, the heterogeneity stopping rule, post-lasso IVW."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from invariant_mr.errors import InputError
from invariant_mr.estimators.summary.mr_lasso import glmnet_lasso_path, mr_lasso
from invariant_mr.estimators.summary.summary_mr import ivw
from invariant_mr.estimators.summary.two_sample import summary_statistics_from_table
from invariant_mr.io.gwas_sumstats import read_mr_sumstats
from test_robust_summary_mr import bmi_chd_sumstats

LIPIDS = Path(__file__).parent / "data" / "lipids_chd_mendelianrandomization.tsv"


def test_path_solves_glmnets_standardised_lasso_at_every_lambda():
    """KKT conditions of glmnet's problem (intercept = FALSE, standardize = TRUE: columns scaled by their
    centred SD, not centred): |x~_j' r| <= lambda, with equality and the sign of beta_j on the support."""
    rng = np.random.default_rng(0)
    X = rng.normal(0.3, 1, (30, 12))
    y = X[:, :3] @ np.array([1.0, -2.0, 0.5]) + rng.normal(0, 0.5, 30)
    lambdas, coefs = glmnet_lasso_path(X, y)
    n = len(y)
    xs = X.std(axis=0)  # 1/n SD, centred
    ys = y.std()
    for lam, beta in zip(lambdas, coefs):
        b_std = beta * xs / ys
        Xs = X / xs / np.sqrt(n)
        r = y / ys / np.sqrt(n) - Xs @ b_std
        g = Xs.T @ r
        lam_std = lam / ys
        assert np.all(np.abs(g) <= lam_std * (1 + 1e-5))
        on = b_std != 0
        np.testing.assert_allclose(g[on], lam_std * np.sign(b_std[on]), rtol=1e-5)
    assert np.all(coefs[0] == 0) and np.any(coefs[-1] != 0)
    # log-spaced from lambda_max, ratio 1e-4 over 99 steps (n > p), until glmnet's early exits stop the path
    np.testing.assert_allclose(np.diff(np.log(lambdas)), np.log(1e-4) / 99, rtol=1e-9)


@pytest.mark.parametrize("exposure", ["ldlc", "trig"])
def test_post_lasso_estimate_matches_pytwosamplemr_on_the_lipid_data(exposure):
    pt = pytest.importorskip("pytwosamplemr")
    ss = summary_statistics_from_table(read_mr_sumstats(LIPIDS), exposure)
    ours = mr_lasso(ss)
    ref = pt.mr_lasso(pt.mr_input(bx=ss.beta_exposure, bxse=ss.se_exposure, by=ss.beta_outcome, byse=ss.se_outcome))
    assert len(ours.valid) == ref.n_valid
    assert ours.fit.estimate == pytest.approx(ref.estimate, rel=1e-9)
    assert ours.fit.se == pytest.approx(ref.se, rel=1e-9)
    assert ours.fit.pvalue == pytest.approx(ref.pvalue, rel=1e-6)


def test_post_lasso_is_ivw_on_the_valid_variants_and_matches_pytwosamplemr_on_bmi_chd():
    pt = pytest.importorskip("pytwosamplemr")
    ss = bmi_chd_sumstats()
    res = mr_lasso(ss)
    keep = np.isin(ss.variant, res.valid)
    sub = ivw(ss.subset(keep))
    assert res.fit.estimate == pytest.approx(sub.estimate, rel=1e-12)
    # SE divided by min(1, residual SE): the random-effects IVW SE when over-dispersed
    assert res.fit.se == pytest.approx(sub.extra["se_fixed_effect"] * max(1.0, sub.extra["residual_se"]), rel=1e-12)
    ref = pt.mr_lasso(pt.mr_input(bx=ss.beta_exposure, bxse=ss.se_exposure, by=ss.beta_outcome, byse=ss.se_outcome))
    assert len(res.valid) == ref.n_valid and res.fit.estimate == pytest.approx(ref.estimate, rel=1e-9)


def test_fixed_lambda_and_errors():
    ss = summary_statistics_from_table(read_mr_sumstats(LIPIDS), "ldlc")
    chosen = mr_lasso(ss)
    again = mr_lasso(ss, lam=chosen.lam)
    assert set(again.valid) == set(chosen.valid)
    assert len(mr_lasso(ss, lam=1e3 * chosen.lam).valid) == ss.n_variants  # large lambda: every intercept zero
    with pytest.raises(InputError, match="lambda must be positive"):
        mr_lasso(ss, lam=-1.0)


def test_reproduces_mendelianrandomizations_printed_mr_lasso_on_ldlc():
    """MendelianRandomization's vignette ("Univariable MR methods", Lasso method;
    github.com/sb452/MendelianRandomizationVignette, gh-pages articles/Univariable_MR_Methods.html):
    mr_lasso(mr_input(bx = ldlc, bxse = ldlcse, by = chdlodds, byse = chdloddsse)) prints
        Number of variants : 28; Number of valid instruments : 26; Tuning parameter : 0.7757552
        exposure 2.671 (SE 0.431), 95% CI 1.827, 3.515, p-value 0.000
    The tuning parameter is on glmnet's reported scale and fixes the whole path (lambda_max and its
    standardisation: columns scaled by their centred SD but not centred, because intercept = FALSE);
    pytwosamplemr's port reports 0.4313 here and centres the columns, which is why it selects other
    variants on HDL-C (24 valid against our 19)."""
    ss = summary_statistics_from_table(read_mr_sumstats(LIPIDS), "ldlc")
    res = mr_lasso(ss)
    assert ss.n_variants == 28 and len(res.valid) == 26
    assert res.lam == pytest.approx(0.7757552, abs=5e-8)
    assert res.fit.estimate == pytest.approx(2.671, abs=5e-4) and res.fit.se == pytest.approx(0.431, abs=5e-4)
    assert (res.fit.ci_low, res.fit.ci_high) == (pytest.approx(1.827, abs=5e-4), pytest.approx(3.515, abs=5e-4))
    assert res.fit.pvalue < 5e-4
