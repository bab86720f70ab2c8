"""Anderson-Rubin tests and confidence sets: agreement with ivmodels, inversion, honest unbounded sets."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from invariant_mr.inference.estimates import iv_estimates
from invariant_mr.estimators.iv import fit_kclass
from invariant_mr.inference.settings import InferenceSettings
from invariant_mr.simulation.paper import simulate_paper
from invariant_mr.inference.weak_iv import (
    ConfidenceSet,
    _prepare,
    _robust_blocks,
    _robust_set_numeric,
    add_anderson_rubin,
    anderson_rubin_confidence_set,
    anderson_rubin_test,
)

import ivmodels.tests as ivm_tests
import linearmodels.iv as lm
from statistical_bounds import assert_rate, assert_uniform_pvalues


def iv_data(seed: int, n: int = 400, k: int = 3, strength: float = 0.5, hetero: bool = True, theta: float = 1.0):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, k))
    C = rng.normal(size=(n, 2))
    H = rng.normal(size=n)
    d = Z @ np.full(k, strength) + C[:, 0] + H + rng.normal(size=n)
    scale = 1 + np.abs(Z[:, 0]) if hetero else 1.0
    y = theta * d + C @ np.array([0.5, -0.2]) + H + rng.normal(size=n) * scale
    return y, d, Z, C


@pytest.mark.parametrize("seed,k,strength", [(0, 1, 0.5), (1, 3, 0.3), (2, 4, 0.05), (3, 2, 0.0)])
def test_classical_ar_statistic_matches_ivmodels(seed, k, strength):
    y, d, Z, C = iv_data(seed, k=k, strength=strength)
    for beta in (-1.0, 0.3, 1.0, 4.0):
        ref_stat, ref_p = ivm_tests.anderson_rubin_test(Z, d[:, None], y, beta=np.array([beta]), C=C)
        stat, p, df = anderson_rubin_test(y, d, Z, C, beta0=beta, cov_type="unadjusted")
        assert df == k
        assert stat == pytest.approx(ref_stat * k, rel=1e-8)  # ivmodels reports it on the F scale
        assert p == pytest.approx(ref_p, rel=1e-8, abs=1e-14)


@pytest.mark.parametrize(
    "seed,k,strength,kind",
    [(0, 1, 1.0, "interval"), (5, 3, 0.5, "interval"), (1, 3, 0.05, None), (2, 3, 0.0, None), (4, 1, 0.02, None)],
)
def test_classical_ar_set_matches_ivmodels(seed, k, strength, kind):
    y, d, Z, C = iv_data(seed, k=k, strength=strength)
    ref = ivm_tests.inverse_anderson_rubin_test(Z, d[:, None], y, alpha=0.05, C=C)
    cs = anderson_rubin_confidence_set(y, d, Z, C, alpha=0.05, cov_type="unadjusted")
    if kind is not None:
        assert cs.kind == kind
    assert cs.is_empty == ref.is_empty()
    assert cs.is_bounded == (ref.is_bounded() or ref.is_empty())
    ref_bounds = np.sort(ref._boundary().ravel()) if not ref.is_empty() else np.array([])
    ours = np.array([v for iv in cs.intervals for v in iv if math.isfinite(v)])
    np.testing.assert_allclose(np.sort(ours), ref_bounds, rtol=1e-7)


def test_set_kinds_cover_unbounded_and_whole_line():
    kinds = set()
    for seed in range(40):
        y, d, Z, C = iv_data(seed, k=3, strength=0.03)
        kinds.add(anderson_rubin_confidence_set(y, d, Z, C, cov_type="unadjusted").kind)
    assert {"two_rays", "whole_line", "interval"} <= kinds
    # A set that is the union of two rays has no finite hull and None in the Estimate.
    two = ConfidenceSet(((-math.inf, -1.0), (2.0, math.inf)))
    assert two.kind == "two_rays" and not two.contains(0.0) and two.contains(5.0)
    assert math.isinf(two.hull[0]) and two.to_list() == [[None, -1.0], [2.0, None]]
    empty = ConfidenceSet(())
    assert empty.kind == "empty" and not empty.contains(0.0)


def test_empty_set_when_instruments_contradict_each_other():
    rng = np.random.default_rng(0)
    n = 2000
    Z = rng.normal(size=(n, 2))
    d = Z @ np.array([1.0, 1.0]) + rng.normal(size=n)
    y = d + 3.0 * Z[:, 1] + rng.normal(size=n)  # second instrument has a large direct effect
    for cov in ("unadjusted", "robust"):
        cs = anderson_rubin_confidence_set(y, d, Z, cov_type=cov)
        assert cs.is_empty, cov


@pytest.mark.parametrize("cov_type", ["unadjusted", "robust"])
@pytest.mark.parametrize("seed,k,strength", [(0, 1, 0.5), (1, 3, 0.3), (2, 3, 0.06), (6, 5, 0.2)])
def test_pvalue_equals_alpha_on_the_boundary(cov_type, seed, k, strength):
    y, d, Z, C = iv_data(seed, k=k, strength=strength)
    cs = anderson_rubin_confidence_set(y, d, Z, C, alpha=0.1, cov_type=cov_type)
    finite = [v for iv in cs.intervals for v in iv if math.isfinite(v)]
    for b in finite:
        _, p, _ = anderson_rubin_test(y, d, Z, C, beta0=b, cov_type=cov_type)
        assert p == pytest.approx(0.1, abs=1e-6)
    # points strictly inside are accepted, points outside rejected
    for lo, hi in cs.intervals:
        mid = 0.5 * (lo + hi) if math.isfinite(lo) and math.isfinite(hi) else (hi - 1 if math.isfinite(hi) else lo + 1)
        assert anderson_rubin_test(y, d, Z, C, beta0=mid, cov_type=cov_type)[1] > 0.1
    if cs.is_bounded and not cs.is_empty:
        assert anderson_rubin_test(y, d, Z, C, beta0=cs.hull[1] + 1.0, cov_type=cov_type)[1] < 0.1


def test_robust_set_is_unbounded_exactly_when_robust_first_stage_is_weak():
    for seed in range(15):
        y, d, Z, C = iv_data(seed, k=3, strength=0.06)
        cs = anderson_rubin_confidence_set(y, d, Z, C, cov_type="robust")
        f = fit_kclass(y, d, Z, C, cov_type="robust").first_stage_f
        weak = f * 3 <= stats.chi2.ppf(0.95, 3)
        assert (not cs.is_bounded) == weak


def test_numeric_robust_inversion_agrees_with_the_closed_form_for_one_instrument():
    y, d, Z, C = iv_data(3, k=1, strength=0.3)
    closed = anderson_rubin_confidence_set(y, d, Z, C, cov_type="robust")
    pr = _prepare(y, d, Z, C, True)
    numeric = _robust_set_numeric(pr, _robust_blocks(pr), stats.chi2.ppf(0.95, 1), 0.05, 4001)
    assert closed.kind == numeric.kind
    np.testing.assert_allclose(np.array(closed.intervals), np.array(numeric.intervals), rtol=1e-8)


def test_tsls_and_liml_match_linearmodels():
    y, d, Z, C = iv_data(8, k=3, strength=0.4)
    exog = np.column_stack([np.ones(len(y)), C])
    for kappa, model in (("tsls", lm.IV2SLS), ("liml", lm.IVLIML)):
        ref = model(y, exog, d[:, None], Z).fit(cov_type="robust")
        ours = fit_kclass(y, d, Z, C, kappa=kappa, cov_type="robust")
        assert ours.estimate == pytest.approx(ref.params.iloc[-1], rel=1e-8)
        assert ours.se == pytest.approx(ref.std_errors.iloc[-1], rel=1e-8)


def test_add_anderson_rubin_fills_every_scope():
    sim = simulate_paper("linear", seed=1, n_per_env=500)
    ctx = InferenceSettings(seed=0)
    rows = iv_estimates(sim.data, sim.W, ctx, method="oracle")
    with_ar = add_anderson_rubin(rows, sim.data, sim.W, ctx)
    assert [r.scope for r in with_ar] == [r.scope for r in rows]
    for r in with_ar:
        assert r.extra["ar_set_kind"] in ("interval", "two_rays", "whole_line", "empty", "ray", "union")
        if r.extra["ar_set_kind"] == "interval":
            assert r.ar_ci_low < r.estimate < r.ar_ci_high
    pooled = with_ar[0]
    # pooled AR uses the environment fixed effects, like the Wald row
    direct = anderson_rubin_confidence_set(
        sim.data.outcome, sim.data.exposure, sim.W, sim.data.env_dummies(), cov_type="robust"
    )
    assert (pooled.ar_ci_low, pooled.ar_ci_high) == direct.hull
    assert pooled.to_dict()["ar_ci_low"] is not None
    # OLS rows have no instruments and are left alone
    assert add_anderson_rubin(rows, sim.data, None, ctx) == rows


@pytest.mark.parametrize("cov_type", ["unadjusted", "robust"])
def test_ar_size_weak_instruments(cov_type):
    """500 seeds, weak heteroskedastic design: size within a two-sided binomial band of 0.05.

    A test that never rejects fails the lower end. Heteroskedasticity makes the classical
    variant mildly oversized (its upper end is the band of 0.08); robust stays at nominal size.
    The robust p-values are also uniform (Kolmogorov-Smirnov).
    """
    pvalues = np.array(
        [
            anderson_rubin_test(*iv_data(2000 + s, n=500, k=3, strength=0.05), beta0=1.0, cov_type=cov_type)[1]
            for s in range(500)
        ]
    )
    assert_rate(pvalues < 0.05, 0.05, p_high=0.08 if cov_type == "unadjusted" else None, what="AR size")
    if cov_type == "robust":
        assert_uniform_pvalues(pvalues)
