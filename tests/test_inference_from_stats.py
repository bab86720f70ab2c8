"""`Estimate` rows from sufficient statistics equal those of `estimation.iv_estimates`."""

from __future__ import annotations

import math

import pytest

from invariant_mr.inference.estimates import iv_estimates
from invariant_mr.estimators.sufficient_stats import EnvironmentCrossProducts
from invariant_mr.passes import LocalPasses, RowVectors
from invariant_mr.inference.from_stats import iv_estimates_from_stats
from invariant_mr.inference.settings import InferenceSettings
from invariant_mr.simulation.balding_nichols import simulate_balding_nichols


def _num_equal(a, b):
    if a is None or b is None:
        assert a is None and b is None
        return
    if isinstance(a, float) and math.isinf(a):
        assert a == b
        return
    assert abs(a - b) <= 1e-10 * max(1.0, abs(b)), (a, b)


def _nested_equal(a, b):
    if isinstance(b, dict):
        assert set(a) == set(b)
        for k in b:
            _nested_equal(a[k], b[k])
    elif isinstance(b, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _nested_equal(x, y)
    elif isinstance(b, float) or isinstance(a, float):
        _num_equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize("cov_type,max_ar", [("robust", 200), ("robust", 5), ("unadjusted", 200)])
def test_rows_match_iv_estimates(cov_type, max_ar):
    sim = simulate_balding_nichols(n_envs=3, n_per_env=300, n_variants=12, seed=8)
    data = sim.to_mrdata(include_covariates=True)
    vec = RowVectors.from_mrdata(data)
    stats = EnvironmentCrossProducts.from_arrays(sim.genotypes, vec, block_rows=200)
    passes = LocalPasses.from_array(sim.genotypes, vec, 200)
    ctx = InferenceSettings(cov_type=cov_type, ar_max_instruments=max_ar)
    methods = {"tsls_all_env": "tsls", "liml_all_env": "liml", "ols": "ols"}
    got = iv_estimates_from_stats(
        stats, methods, alpha=ctx.alpha, cov_type=cov_type, max_ar_instruments=max_ar, passes=passes
    )
    for method, kappa in methods.items():
        ref = iv_estimates(data, None if kappa == "ols" else data.Z, ctx, method=method, kappa=kappa)
        assert [r.scope for r in got[method]] == [r.scope for r in ref]
        for a, b in zip(got[method], ref):
            _nested_equal(a.to_dict(), b.to_dict())


@pytest.mark.parametrize("cov_type", ["robust", "unadjusted"])
def test_strength_diagnostics_match_instrument_diagnostics(cov_type):
    from invariant_mr.inference.diagnostics import instrument_diagnostics
    from invariant_mr.inference.from_stats import strength_diagnostics_from_stats

    sim = simulate_balding_nichols(n_envs=3, n_per_env=300, n_variants=12, seed=9)
    data = sim.to_mrdata(include_covariates=True)
    vec = RowVectors.from_mrdata(data)
    stats = EnvironmentCrossProducts.from_arrays(sim.genotypes, vec, block_rows=128)
    ctx = InferenceSettings(cov_type=cov_type, diagnostic_permutations=1)
    ref = [d for d in instrument_diagnostics(data, data.Z, ctx, method="m")
           if d.name.endswith(("overidentification_j", "first_stage_f"))]
    got = strength_diagnostics_from_stats(
        stats, alpha=ctx.alpha, cov_type=cov_type, method="m", passes=LocalPasses.from_array(sim.genotypes, vec)
    )
    assert [(d.name, d.scope) for d in got] == [(d.name, d.scope) for d in ref]
    for a, b in zip(got, ref):
        _nested_equal(a.to_dict(), b.to_dict())
