"""In memory, the moment-based methods run from statistics shared by the analysis: same numbers as on the rows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from invariant_mr.methods.registry import MethodContext, registered_methods
from invariant_mr.methods.streamed import IN_MEMORY_FROM_STATISTICS, from_statistics_in_memory
from invariant_mr.pipeline import run_analysis
from invariant_mr.simulation.genetic_dataset import simulate_genetic

FIELDS = ("estimate", "se", "ci_low", "ci_high", "pvalue", "first_stage_f", "ar_ci_low", "ar_ci_high", "n",
          "n_instruments")


@pytest.fixture(scope="module")
def data():
    sim = simulate_genetic("balding-nichols", n_envs=3, n_per_env=300, n_variants=30, fst=0.1, seed=11)
    return sim.to_mrdata(include_covariates=True)


def _close(a, b, tol):
    if a is None or b is None:
        return a is b
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= tol * max(1.0, abs(b))


@pytest.mark.parametrize("cov_type", ["robust", "unadjusted"])
def test_statistics_route_equals_row_route(data, cov_type):
    """Every method of IN_MEMORY_FROM_STATISTICS: estimates, SEs, CIs, F, AR sets and diagnostics to 1e-8."""
    specs = registered_methods()
    names = sorted(IN_MEMORY_FROM_STATISTICS)
    ctx = MethodContext(cov_type=cov_type, progress=False)
    for name in names:
        rows = specs[name].function(data, ctx)
        stats = from_statistics_in_memory(data, ctx, name, planned=tuple(names))
        assert stats is not None, name
        a = {(e.method, e.scope): e for e in rows.estimates}
        b = {(e.method, e.scope): e for e in stats.estimates}
        assert list(a) == list(b), name
        for key in a:
            for f in FIELDS:
                assert _close(getattr(b[key], f), getattr(a[key], f), 1e-8), (name, key, f, getattr(b[key], f),
                                                                              getattr(a[key], f))
            assert b[key].extra["route"].endswith("(in memory)")
            if name == "tsht":
                for k in ("valid_instruments", "relevant_instruments", "threshold"):
                    assert b[key].extra[k] == a[key].extra[k]
        da = {(d.name, d.scope): d for d in rows.diagnostics}
        db = {(d.name, d.scope): d for d in stats.diagnostics}
        assert set(da) == set(db), name
        for key in da:
            assert _close(db[key].statistic, da[key].statistic, 1e-8), (name, key)
            assert _close(db[key].pvalue, da[key].pvalue, 1e-8), (name, key)


def test_run_analysis_uses_the_statistics_route_and_falls_back(data):
    """run_analysis routes the eligible methods; cluster-robust SEs keep the row route."""
    res = run_analysis(data, ["tsls_all_env", "liml_all_env", "ivw", "tsht", "invariant_linear"],
                       MethodContext(progress=False))
    routes = {e.method: e.extra.get("route") for e in res.estimates if e.scope == "pooled"}
    assert routes["tsls_all_env"] == "sufficient statistics (in memory)"
    assert routes["tsht"] == "sufficient statistics (in memory)"
    assert routes["invariant_linear"] is None
    clustered = data.__class__(**{**data.__dict__, "clusters": np.arange(data.n) // 2})
    ctx = MethodContext(cov_type="cluster", progress=False)
    assert from_statistics_in_memory(clustered, ctx, "tsls_all_env") is None
    # Not a moment method: no statistics route.
    assert from_statistics_in_memory(data, MethodContext(progress=False), "invariant_linear_crossfit") is None
