"""Estimation from per-environment sufficient statistics agrees with the in-memory estimators."""

from __future__ import annotations

import numpy as np
import pytest

from invariant_mr.errors import InputError
from invariant_mr.inference.estimates import exogenous_controls
from invariant_mr.estimators.kclass_from_stats import kclass_from_stats, kclass_requests
from invariant_mr.estimators.sufficient_stats import (
    EnvironmentCrossProducts,
    accumulate_meats,
    partial_out,
)
from invariant_mr.passes import LocalPasses, RowVectors, iter_array_blocks
from invariant_mr.estimators.iv import fit_kclass
from invariant_mr.simulation.balding_nichols import simulate_balding_nichols

RTOL = 1e-10


def close(a, b, rtol=RTOL):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(1.0, float(np.max(np.abs(b)))))


@pytest.fixture(scope="module")
def sim():
    return simulate_balding_nichols(n_envs=3, n_per_env=400, n_variants=30, seed=3)


@pytest.fixture(scope="module")
def data(sim):
    return sim.to_mrdata(include_covariates=True)


@pytest.fixture(scope="module")
def vectors(data):
    return RowVectors.from_mrdata(data)


@pytest.fixture(scope="module")
def stats(sim, vectors):
    # int8 blocks straight from the simulation, in uneven blocks
    return EnvironmentCrossProducts.from_arrays(sim.genotypes, vectors, block_rows=177)


@pytest.fixture(scope="module")
def passes(sim, vectors):
    return LocalPasses.from_array(sim.genotypes, vectors, block_rows=250)


def test_cross_products_match_direct_sums(stats, data):
    codes = data.env_codes
    for e in range(3):
        rows = codes == e
        Z, C = data.Z[rows], data.covariates[rows]
        close(stats.zz[e], Z.T @ Z)
        close(stats.zd[e], Z.T @ data.exposure[rows])
        close(stats.zc[e], Z.T @ C)
        close(stats.cy[e], C.T @ data.outcome[rows])
        close(stats.dy[e], data.exposure[rows] @ data.outcome[rows])
        assert stats.counts[e] == rows.sum()
    assert stats.n == data.n and stats.p == data.p and stats.q == 2


def test_merge_of_chunks_equals_one_pass(sim, vectors, stats):
    n = sim.genotypes.shape[0]
    cut = 517
    a = EnvironmentCrossProducts.accumulate(iter_array_blocks(sim.genotypes, 100, 0, cut), vectors)
    b = EnvironmentCrossProducts.accumulate(iter_array_blocks(sim.genotypes, 64, cut, n), vectors)
    merged = a.merge(b)
    close(merged.cross, stats.cross)
    np.testing.assert_array_equal(merged.counts, stats.counts)
    with pytest.raises(InputError):
        a.merge(a.select([0, 1]))


@pytest.mark.parametrize("kappa", ["ols", "tsls", "liml", "fuller(1)"])
@pytest.mark.parametrize("cov_type", ["unadjusted", "robust"])
def test_pooled_kclass_matches_fit_kclass(data, stats, passes, kappa, cov_type):
    controls = exogenous_controls(data, True)
    ref = fit_kclass(data.outcome, data.exposure, data.Z, controls, kappa=kappa, cov_type=cov_type)
    design = partial_out(stats, instruments=[] if kappa == "ols" else None)
    fit = kclass_from_stats(design, kappa=kappa, cov_type=cov_type, passes=passes)
    close(fit.estimate, ref.estimate)
    close(fit.se, ref.se)
    close(fit.kappa, ref.kappa)
    assert fit.n_instruments == ref.n_instruments and fit.n == ref.n
    if ref.first_stage_f is None:
        assert fit.first_stage_f is None
    else:
        close(fit.first_stage_f, ref.first_stage_f)


@pytest.mark.parametrize("cov_type", ["unadjusted", "robust"])
def test_without_fixed_effects_and_per_environment(data, stats, passes, cov_type):
    ref = fit_kclass(data.outcome, data.exposure, data.Z, data.covariates, kappa="liml", cov_type=cov_type)
    fit = kclass_from_stats(partial_out(stats, env_fixed_effects=False), kappa="liml", cov_type=cov_type, passes=passes)
    close([fit.estimate, fit.se, fit.first_stage_f], [ref.estimate, ref.se, ref.first_stage_f])
    for level in data.env_levels:
        rows = data.env == level
        ref = fit_kclass(
            data.outcome[rows], data.exposure[rows], data.Z[rows], data.covariates[rows], cov_type=cov_type
        )
        fit = kclass_from_stats(partial_out(stats, env=level), cov_type=cov_type, passes=passes)
        assert fit.scope == f"env:{level}" and fit.n == rows.sum()
        close([fit.estimate, fit.se, fit.first_stage_f], [ref.estimate, ref.se, ref.first_stage_f])


def test_instruments_as_controls_and_projected_instruments(data, stats, passes):
    # TSHT's final fit: some instrument columns become exogenous controls.
    valid, invalid = np.arange(0, 30, 2), np.arange(1, 30, 2)
    controls = np.hstack([exogenous_controls(data, True), data.Z[:, invalid]])
    ref = fit_kclass(data.outcome, data.exposure, data.Z[:, valid], controls, cov_type="robust")
    fit = kclass_from_stats(partial_out(stats, instruments=valid, z_controls=invalid), passes=passes)
    close([fit.estimate, fit.se, fit.first_stage_f], [ref.estimate, ref.se, ref.first_stage_f])
    # Learned linear directions: statistics of Z W without a new first pass.
    W = np.random.default_rng(0).standard_normal((30, 4))
    ref = fit_kclass(data.outcome, data.exposure, data.Z @ W, exogenous_controls(data, True), kappa="liml")
    fit = kclass_from_stats(partial_out(stats.project(W)), kappa="liml", passes=passes)
    close([fit.estimate, fit.se, fit.first_stage_f], [ref.estimate, ref.se, ref.first_stage_f])


def test_one_second_pass_serves_several_fits(data, stats, passes):
    designs = [partial_out(stats), partial_out(stats, env=data.env_levels[1])]
    requests = [r for d in designs for r in kclass_requests(d, "tsls")]
    meats = accumulate_meats(passes, requests)
    for i, d in enumerate(designs):
        shared = kclass_from_stats(d, cov_type="robust", meats=meats[2 * i : 2 * i + 2])
        alone = kclass_from_stats(d, cov_type="robust", passes=passes)
        assert shared == alone
    with pytest.raises(InputError, match="second pass"):
        kclass_from_stats(designs[0], cov_type="robust")


def test_missing_genotypes_are_imputed_on_the_fly(sim, vectors):
    G = sim.genotypes.copy()
    rng = np.random.default_rng(1)
    missing = rng.random(G.shape) < 0.02
    G[missing] = -127  # PLINK missing code as int8
    fill = np.array([G[~missing[:, j], j].mean() for j in range(G.shape[1])])
    imputed = np.where(missing, fill[None, :], G.astype(float))
    ref = fit_kclass(vectors.outcome, vectors.exposure, imputed, np.hstack([vectors.covariates, np.eye(3)[vectors.env_codes][:, 1:]]))
    st = EnvironmentCrossProducts.from_arrays(G, vectors, block_rows=300, fill=fill)
    fit = kclass_from_stats(partial_out(st, fill=fill), passes=LocalPasses.from_array(G, vectors, 300))
    close([fit.estimate, fit.se, fit.first_stage_f], [ref.estimate, ref.se, ref.first_stage_f])
    # float32 blocks with NaN for missing give the same statistics
    G32 = np.where(missing, np.nan, G).astype(np.float32)
    st32 = EnvironmentCrossProducts.from_arrays(G32, vectors, block_rows=500, fill=fill)
    close(st32.cross, st.cross)
    with pytest.raises(InputError, match="missing"):
        EnvironmentCrossProducts.from_arrays(G, vectors)


# ----------------------------------------------------------------------------- AR, J, F, sumstats
from invariant_mr.inference.diagnostics import first_stage_strength, sargan_hansen_j
from invariant_mr.estimators.sumstats_from_stats import (
    summary_statistics_from_stats,
)
from invariant_mr.inference.tests_from_stats import (
    anderson_rubin_from_stats,
    anderson_rubin_test_from_stats,
    first_stage_from_stats,
    sargan_hansen_j_from_stats,
)
from invariant_mr.estimators.summary.sumstats import summary_statistics
from invariant_mr.inference.weak_iv import anderson_rubin_confidence_set, anderson_rubin_test


def _same_set(a, b):
    assert a.kind == b.kind
    assert len(a.intervals) == len(b.intervals)
    for (lo1, hi1), (lo2, hi2) in zip(a.intervals, b.intervals):
        for x, y in ((lo1, lo2), (hi1, hi2)):
            assert (np.isinf(x) and x == y) or abs(x - y) <= RTOL * max(1.0, abs(y))


@pytest.mark.parametrize("cov_type", ["unadjusted", "robust"])
@pytest.mark.parametrize("columns", [[4], [0, 3, 5, 7, 11], list(range(30))])
def test_anderson_rubin_matches_weak_iv(data, stats, passes, cov_type, columns):
    controls = exogenous_controls(data, True)
    design = partial_out(stats, instruments=columns)
    ref = anderson_rubin_confidence_set(data.outcome, data.exposure, data.Z[:, columns], controls, cov_type=cov_type)
    got = anderson_rubin_from_stats(design, cov_type=cov_type, passes=passes)
    _same_set(got, ref)
    ref_t = anderson_rubin_test(data.outcome, data.exposure, data.Z[:, columns], controls, beta0=0.7, cov_type=cov_type)
    got_t = anderson_rubin_test_from_stats(design, beta0=0.7, cov_type=cov_type, passes=passes)
    close(got_t[:2], ref_t[:2])
    assert got_t[2] == ref_t[2]


@pytest.mark.parametrize("cov_type", ["unadjusted", "robust"])
def test_j_and_first_stage_match_diagnostics(data, stats, passes, cov_type):
    controls = exogenous_controls(data, True)
    design = partial_out(stats)
    close(sargan_hansen_j_from_stats(design, cov_type=cov_type, passes=passes),
          sargan_hansen_j(data.outcome, data.exposure, data.Z, controls, cov_type=cov_type))
    close(first_stage_from_stats(design, cov_type=cov_type, passes=passes),
          first_stage_strength(data.exposure, data.Z, controls, cov_type=cov_type))
    level = data.env_levels[2]
    rows = data.env == level
    close(first_stage_from_stats(partial_out(stats, env=level), cov_type=cov_type, passes=passes),
          first_stage_strength(data.exposure[rows], data.Z[rows], data.covariates[rows], cov_type=cov_type))
    with pytest.raises(InputError, match="overidentification"):
        sargan_hansen_j_from_stats(partial_out(stats, instruments=[3]), cov_type=cov_type, passes=passes)


@pytest.mark.parametrize("cov_type", ["unadjusted", "robust"])
@pytest.mark.parametrize("fe,cov", [(True, True), (False, False)])
def test_summary_statistics_match_sumstats(data, stats, passes, cov_type, fe, cov):
    ref = summary_statistics(data, env_fixed_effects=fe, adjust_covariates=cov, cov_type=cov_type)
    got = summary_statistics_from_stats(
        stats, env_fixed_effects=fe, adjust_covariates=cov, cov_type=cov_type, passes=passes,
        variant_names=data.instrument_names,
    )
    for name in ("beta_exposure", "se_exposure", "beta_outcome", "se_outcome"):
        close(getattr(got, name), getattr(ref, name))
    assert got.variant == ref.variant and got.n == ref.n and got.cov_type == ref.cov_type
    assert got.adjusted_for == ref.adjusted_for


def test_peak_memory_follows_the_documented_formula():
    """One block + O(m^2) + the row vectors: tracemalloc peak below the module docstring's bound."""
    import tracemalloc

    n, p, q, K, b = 40_000, 300, 2, 3, 2_000
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 3, size=(b, p), dtype=np.int8)  # the reader's int8 block (B_in)
    vec = RowVectors(
        rng.integers(0, K, n), ("a", "b", "c"), rng.standard_normal(n), rng.standard_normal(n),
        rng.standard_normal((n, q)),
    )

    def blocks():
        for lo in range(0, n, b):
            yield np.arange(lo, lo + b), pool

    m = q + p + 2
    tracemalloc.start()
    try:
        st = EnvironmentCrossProducts.accumulate(blocks(), vec)
        peak1 = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    bound1 = b * p + 16 * b * m + 8 * (K + 2) * m * m
    design = partial_out(st)
    requests = kclass_requests(design, "tsls")  # s j = 1 (SE) and p (robust F)
    tracemalloc.start()
    try:
        accumulate_meats(LocalPasses(blocks, vec), requests)
        peak2 = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    bound2 = b * p + 8 * b * (4 * (p + 2) + 2 * p) + 8 * (1 + p * p)
    dense = 8 * n * p
    assert 0.3 * bound1 < peak1 < bound1 < dense / 5
    assert 0.3 * bound2 < peak2 < bound2 < dense / 3


@pytest.mark.parametrize("cov_type", ["unadjusted", "robust"])
def test_tsht_from_statistics_matches_rows(cov_type):
    from invariant_mr.estimators.tsht import TwoStageHardThresholding

    sim = simulate_balding_nichols(n_envs=3, n_per_env=700, n_variants=20, seed=11)
    data = sim.to_mrdata(include_covariates=True)
    # Direct effects of three variants on the outcome make them invalid.
    y = data.outcome + data.Z[:, :3] @ np.array([0.6, -0.5, 0.4])
    vec = RowVectors(data.env_codes, data.env_levels, data.exposure, y, data.covariates)
    st = EnvironmentCrossProducts.from_arrays(sim.genotypes, vec, block_rows=400)
    ps = LocalPasses.from_array(sim.genotypes, vec, 333)
    ref = TwoStageHardThresholding(cov_type=cov_type).fit(y, data.exposure, data.Z, exogenous_controls(data, True))
    got = TwoStageHardThresholding(cov_type=cov_type).fit_statistics(st, passes=ps)
    np.testing.assert_array_equal(got.valid_, ref.valid_)
    np.testing.assert_array_equal(got.relevant_, ref.relevant_)
    np.testing.assert_array_equal(got.votes_, ref.votes_)
    assert (~ref.valid_).sum() >= 1  # the vote did exclude something
    close([got.estimate_, got.se_, got.fit_.first_stage_f], [ref.estimate_, ref.se_, ref.fit_.first_stage_f])
    # per environment (intercept and covariates)
    level = data.env_levels[0]
    rows = data.env_codes == 0
    ref = TwoStageHardThresholding(cov_type=cov_type).fit(y[rows], data.exposure[rows], data.Z[rows], data.covariates[rows])
    got = TwoStageHardThresholding(cov_type=cov_type).fit_statistics(st, env=level, passes=ps)
    np.testing.assert_array_equal(got.valid_, ref.valid_)
    close([got.estimate_, got.se_], [ref.estimate_, ref.se_])


def test_moments_for_the_closed_form_directions(stats, data):
    from invariant_mr.instruments.moments import EnvironmentMoments

    ref = EnvironmentMoments.from_arrays(data.Z, data.env_codes, 3)
    got = stats.to_moments()
    close(got.within_covariance, ref.within_covariance)
    close(got.means, ref.means)


def test_per_environment_summary_statistics_match_the_methods(data, stats):
    from invariant_mr.methods.summary_level import _env_sumstats

    for i, level in enumerate(data.env_levels):
        ref = _env_sumstats(data, data.env_codes == i)
        got = summary_statistics_from_stats(
            stats.environment(level), env_fixed_effects=False, variant_names=data.instrument_names
        )
        for name in ("beta_exposure", "se_exposure", "beta_outcome", "se_outcome"):
            close(getattr(got, name), getattr(ref, name))
        assert got.adjusted_for == ref.adjusted_for and got.n == ref.n
