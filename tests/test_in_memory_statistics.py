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


def test_extra_covariates_equal_a_fresh_first_pass(data):
    """with_covariates(ExtraCovariateKernel pass) = the first pass with the covariates appended."""
    from invariant_mr.estimators.sufficient_stats import EnvironmentCrossProducts
    from invariant_mr.methods.streamed_passes import first_pass, with_extra_covariates
    from invariant_mr.passes import RowVectors, statistics_view

    rng = np.random.default_rng(3)
    extra = rng.normal(size=(data.n, 2))
    grown = with_extra_covariates(statistics_view(data), extra, ("e1", "e2"))
    got = first_pass(grown)
    vec = RowVectors(env_codes=data.env_codes, env_levels=data.env_levels, exposure=data.exposure,
                     outcome=data.outcome, covariates=np.hstack([data.covariates, extra]))
    want = EnvironmentCrossProducts.from_arrays(data.Z, vec)
    assert got.q == want.q == data.covariates.shape[1] + 2
    assert got.covariate_names[-2:] == ("e1", "e2")
    assert np.array_equal(got.counts, want.counts)
    assert np.allclose(got.sums, want.sums, rtol=1e-12, atol=1e-9)
    assert np.allclose(got.cross, want.cross, rtol=1e-12, atol=1e-9)


def test_second_passes_reuse_the_meats_of_earlier_ones(data):
    """tsls_all's per-environment meats are tsls_all_env's, and TSHT's first-stage meats theirs: reused,
    with the same numbers as when computed afresh."""
    from invariant_mr.passes import statistics_view

    fresh = data.__class__(**data.__dict__)  # a new object: its own view and cache
    ctx = MethodContext(progress=False)
    planned = ("tsls_all", "tsls_all_env", "tsht")
    first = {m: from_statistics_in_memory(fresh, ctx, m, planned) for m in planned}
    passes = statistics_view(fresh).cache["passes"]
    assert sum(p.get("requests_reused", 0) for p in passes) > 0
    alone = from_statistics_in_memory(data.__class__(**data.__dict__), ctx, "tsht", ("tsht",))
    for a, b in zip(first["tsht"].estimates, alone.estimates):
        assert a.estimate == pytest.approx(b.estimate, rel=1e-10)
        assert a.se == pytest.approx(b.se, rel=1e-10)


def test_cholesky_whitening_gives_the_eigen_results(data, monkeypatch):
    """Every design whitened by Cholesky (the large-k path forced on) gives the row-route numbers,
    and a rank-deficient Gram matrix still goes to the eigendecomposition."""
    from invariant_mr.estimators import sufficient_stats as ss

    rng = np.random.default_rng(0)
    A = rng.normal(size=(200, 80))
    G = A.T @ A
    eig, chol = ss._SymmetricInverse(G, 1e-10), None
    monkeypatch.setattr(ss, "_CHOLESKY_MIN_K", 0)
    chol = ss._SymmetricInverse(G, 1e-10)
    assert chol.rank == eig.rank == 80
    assert np.allclose(chol.T.T @ G @ chol.T, np.eye(80), atol=1e-10)
    b = rng.normal(size=80)
    assert np.allclose(chol.solve(b), eig.solve(b), rtol=1e-9)
    B = np.hstack([A, A[:, :3]])  # three duplicate columns: rank 80 of 83
    assert ss._SymmetricInverse(B.T @ B, 1e-10).rank == 80
    test_statistics_route_equals_row_route(data.__class__(**data.__dict__), "robust")


def test_tsls_pcs_from_statistics_reads_the_rows_once_for_its_meats(data, monkeypatch):
    """tsls_pcs (robust) accumulates its SE, F, AR and J meats in one second pass: the J test's
    meat rides with the estimates' (it had a pass of its own), and its numbers stay the row route's."""
    from invariant_mr.estimators import sufficient_stats

    spec = registered_methods()["tsls_pcs"]
    ctx = MethodContext(cov_type="robust", progress=False)
    rows = spec.function(data, ctx)
    starts = []
    original = sufficient_stats.MeatKernel.start
    monkeypatch.setattr(sufficient_stats.MeatKernel, "start",
                        lambda self: starts.append(len(self.requests)) or original(self))
    stats = from_statistics_in_memory(data, ctx, "tsls_pcs", planned=("tsls_pcs",))
    assert len(starts) == 1, starts
    j_rows = {d.name: d for d in rows.diagnostics}
    j_stats = {d.name: d for d in stats.diagnostics}
    assert "tsls_pcs/overidentification_j" in j_stats
    assert _close(j_stats["tsls_pcs/overidentification_j"].statistic,
                  j_rows["tsls_pcs/overidentification_j"].statistic, 1e-8)
