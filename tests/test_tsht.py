"""TSHT (invalid-instrument-robust) and 2SLS with genotype PCs."""

from __future__ import annotations

import numpy as np
import pytest

from invariant_mr.errors import InputError
from invariant_mr.estimators.genotype_pcs import genotype_pcs
from invariant_mr.pipeline import run_analysis
from invariant_mr.methods.registry import MethodContext
from invariant_mr.estimators.tsht import TwoStageHardThresholding
from invariant_mr.simulation.paper import simulate_paper
import linearmodels.iv as lm
from statistical_bounds import assert_rate, assert_se_calibrated, assert_unbiased


def invalid_iv_data(seed: int, n: int = 3000, p: int = 10, n_invalid: int = 3, theta: float = 1.0):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, p))
    H = rng.normal(size=n)
    d = Z @ np.full(p, 0.4) + H + rng.normal(size=n)
    pi = np.zeros(p)
    pi[:n_invalid] = np.linspace(0.6, 0.3, n_invalid)
    y = theta * d + Z @ pi + H + rng.normal(size=n) * (1 + 0.5 * np.abs(Z[:, -1]))
    return y, d, Z, pi != 0


def test_tsht_selects_the_valid_instruments_and_equals_oracle_2sls():
    y, d, Z, invalid = invalid_iv_data(0)
    model = TwoStageHardThresholding().fit(y, d, Z)
    np.testing.assert_array_equal(model.valid_, ~invalid)
    assert model.relevant_.all()
    exog = np.column_stack([np.ones(len(y)), Z[:, invalid]])
    ref = lm.IV2SLS(y, exog, d[:, None], Z[:, ~invalid]).fit(cov_type="robust")
    assert model.estimate_ == pytest.approx(ref.params.iloc[-1], rel=1e-8)
    assert model.se_ == pytest.approx(ref.std_errors.iloc[-1], rel=1e-8)


def test_tsht_beats_2sls_with_invalid_instruments():
    from invariant_mr.estimators.iv import fit_kclass

    errs_tsht, errs_tsls = [], []
    for seed in range(8):
        y, d, Z, _ = invalid_iv_data(seed)
        errs_tsht.append(abs(TwoStageHardThresholding().fit(y, d, Z).estimate_ - 1.0))
        errs_tsls.append(abs(fit_kclass(y, d, Z).estimate - 1.0))
    assert np.median(errs_tsht) < 0.25 * np.median(errs_tsls)


def test_tsht_validates_inputs():
    y, d, Z, _ = invalid_iv_data(1, n=200)
    with pytest.raises(InputError, match="at least 2 instruments"):
        TwoStageHardThresholding().fit(y, d, Z[:, :1])
    with pytest.raises(InputError, match="cov_type"):
        TwoStageHardThresholding(cov_type="hc3").fit(y, d, Z)
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="individually strong"):
        TwoStageHardThresholding().fit(y, rng.normal(size=200), Z)


def test_tsht_method_reports_selection_and_ar_set():
    sim = simulate_paper("discrete", seed=4, n_per_env=800)
    res = run_analysis(sim.data, "tsht", MethodContext(seed=0))
    pooled = res.select("tsht", "pooled")[0]
    assert set(pooled.extra["valid_instruments"]) <= set(sim.data.instrument_names)
    assert pooled.n_instruments == len(pooled.extra["valid_instruments"])
    assert "ar_set_kind" in pooled.extra


def test_tsls_pcs_matches_linearmodels_with_pc_controls():
    sim = simulate_paper("discrete", seed=5, n_per_env=700)
    data = sim.data
    res = run_analysis(data, "tsls_pcs", MethodContext(seed=0, per_env=False, options={"n_pcs": 4}))
    row = res.select("tsls_pcs", "pooled")[0]
    pcs = genotype_pcs(data.Z, 4)
    exog = np.column_stack([np.ones(data.n), data.env_dummies(), pcs])
    # The PCs lie in the span of Z: the instruments left are Z's directions orthogonal to them.
    basis = np.column_stack([np.ones(data.n), pcs])
    resid = data.Z - basis @ np.linalg.lstsq(basis, data.Z, rcond=None)[0]
    u, s, _ = np.linalg.svd(resid, full_matrices=False)
    instruments = u[:, s > 1e-8 * s[0]]
    assert instruments.shape[1] == data.p - 4
    ref = lm.IV2SLS(data.outcome, exog, data.exposure[:, None], instruments).fit(cov_type="robust")
    assert row.estimate == pytest.approx(ref.params.iloc[-1], rel=1e-7)
    assert row.se == pytest.approx(ref.std_errors.iloc[-1], rel=1e-7)
    assert row.extra["n_pcs"] == 4 and row.n_instruments == data.p - 4
    assert "ar_set_kind" in row.extra


def test_genotype_pcs_are_the_leading_principal_components():
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))
    pcs = genotype_pcs(Z, 3)
    Zs = (Z - Z.mean(0)) / Z.std(0)
    eigval = np.sort(np.linalg.eigvalsh(Zs.T @ Zs))[::-1]
    np.testing.assert_allclose(np.sum(pcs**2, axis=0), eigval[:3], rtol=1e-10)
    np.testing.assert_allclose(pcs.T @ pcs, np.diag(eigval[:3]), atol=1e-8 * eigval[0])


def test_tsht_coverage_with_invalid_instruments():
    """TSHT over 300 replications with 3 invalid instruments (selection consistent here): unbiased,
    SE calibrated, post-selection Wald CI covers within the two-sided binomial band of 0.95."""
    fits = [TwoStageHardThresholding().fit(*invalid_iv_data(500 + seed, n=2000)[:3]).fit_ for seed in range(300)]
    est = np.array([f.estimate for f in fits])
    assert_unbiased(est, 1.0)
    assert_se_calibrated(est, [f.se for f in fits], tolerance=0.05)
    assert_rate([lo <= 1.0 <= hi for lo, hi in (f.ci(0.05) for f in fits)], 0.95, what="TSHT coverage")


@pytest.mark.parametrize("shape", [(400, 30), (25, 60)])
def test_genotype_pcs_match_the_svd_scores_up_to_sign(shape):
    rng = np.random.default_rng(4)
    Z = rng.integers(0, 3, shape).astype(float) + rng.standard_normal((shape[0], 2)) @ rng.standard_normal((2, shape[1]))
    Zs = (Z - Z.mean(0)) / Z.std(0)
    U, s, _ = np.linalg.svd(Zs, full_matrices=False)
    got = genotype_pcs(Z, 4)
    np.testing.assert_allclose(np.abs(got), np.abs(U[:, :4] * s[:4]), atol=1e-8)
