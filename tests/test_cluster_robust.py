"""Cluster-robust (family-clustered) inference: agreement with linearmodels, AR/J/F, permutations, coverage."""

import numpy as np
import pytest
from linearmodels.iv import IV2SLS, IVGMM, IVLIML
from scipy import stats

from invariant_mr.inference.diagnostics import (
    first_stage_strength,
    hsic_permutation_test,
    mmd_permutation_test,
    sargan_hansen_j,
)
from invariant_mr.errors import InputError
from invariant_mr.estimators.iv import fit_kclass
from invariant_mr.simulation.families import simulate_sibling_families
from invariant_mr.inference.weak_iv import anderson_rubin_confidence_set, anderson_rubin_test


def _data(seed, n=600, p=3, q=2, sibs=2):
    """Heteroskedastic IV data with a shared family effect; families in shuffled row order."""
    rng = np.random.default_rng(seed)
    fam = np.repeat(np.arange(n // sibs), sibs)
    rng.shuffle(fam)
    g = rng.standard_normal((n // sibs, p + 1))  # family components of instruments and error
    Z = rng.standard_normal((n, p)) + g[fam, :p]
    X1 = rng.standard_normal((n, q))
    h = rng.standard_normal(n)
    d = Z @ rng.uniform(0.2, 0.5, p) + X1 @ rng.standard_normal(q) + h + rng.standard_normal(n)
    y = 0.5 * d + X1 @ rng.standard_normal(q) + h + 2 * g[fam, p] + rng.standard_normal(n) * (1 + np.abs(Z[:, 0]))
    return y, d, Z, X1, fam.astype(str)  # string labels, as read from a family-ID column


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("kappa, model", [("tsls", IV2SLS), ("liml", IVLIML)])
def test_clustered_kclass_matches_linearmodels(seed, debiased, kappa, model):
    y, d, Z, X1, fam = _data(seed)
    exog = np.column_stack([np.ones(len(y)), X1])
    ref = model(y, exog, d[:, None], Z).fit(cov_type="clustered", clusters=fam, debiased=debiased)
    fit = fit_kclass(y, d, Z, X1, kappa=kappa, cov_type="cluster", clusters=fam, debiased=debiased)
    np.testing.assert_allclose(fit.params, ref.params.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.sqrt(np.diag(fit.cov)), ref.std_errors.to_numpy(), rtol=1e-6)
    assert fit.n_clusters == len(set(fam))
    # linearmodels reports the cluster-robust first-stage Wald chi2 (with its own debiasing); ours is F = chi2 / m.
    wald = ref.first_stage.diagnostics["f.stat"].iloc[0]
    assert fit.first_stage_f * Z.shape[1] == pytest.approx(wald, rel=1e-6)


@pytest.mark.parametrize("debiased", [False, True])
def test_clustered_ols_matches_linearmodels(debiased):
    y, d, _, X1, fam = _data(5)
    X = np.column_stack([np.ones(len(y)), X1, d])
    ref = IV2SLS(y, X, None, None).fit(cov_type="clustered", clusters=fam, debiased=debiased)
    fit = fit_kclass(y, d, None, X1, kappa="ols", cov_type="cluster", clusters=fam, debiased=debiased)
    np.testing.assert_allclose(fit.params, ref.params.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.sqrt(np.diag(fit.cov)), ref.std_errors.to_numpy(), rtol=1e-6)


@pytest.mark.parametrize("cov_type", ["robust", "unadjusted"])
def test_debiased_robust_and_unadjusted_match_linearmodels(cov_type):
    y, d, Z, X1, _ = _data(6)
    exog = np.column_stack([np.ones(len(y)), X1])
    ref = IV2SLS(y, exog, d[:, None], Z).fit(cov_type=cov_type, debiased=True)
    fit = fit_kclass(y, d, Z, X1, cov_type=cov_type, debiased=True)
    np.testing.assert_allclose(np.sqrt(np.diag(fit.cov)), ref.std_errors.to_numpy(), rtol=1e-6)


def test_singleton_clusters_reduce_to_hc0_everywhere():
    y, d, Z, X1, _ = _data(1)
    own = np.arange(len(y))
    a = fit_kclass(y, d, Z, X1, cov_type="robust")
    b = fit_kclass(y, d, Z, X1, cov_type="cluster", clusters=own)
    np.testing.assert_allclose(b.cov, a.cov, rtol=1e-10)
    assert b.first_stage_f == pytest.approx(a.first_stage_f, rel=1e-10)
    for fn in (anderson_rubin_test,):
        assert fn(y, d, Z, X1, beta0=0.3, cov_type="cluster", clusters=own)[0] == pytest.approx(
            fn(y, d, Z, X1, beta0=0.3, cov_type="robust")[0], rel=1e-10
        )
    assert sargan_hansen_j(y, d, Z, X1, cov_type="cluster", clusters=own)[0] == pytest.approx(
        sargan_hansen_j(y, d, Z, X1, cov_type="robust")[0], rel=1e-10
    )
    assert first_stage_strength(d, Z, X1, cov_type="cluster", clusters=own)[0] == pytest.approx(
        first_stage_strength(d, Z, X1, cov_type="robust")[0], rel=1e-10
    )


def test_cluster_anderson_rubin_is_linearmodels_clustered_wald_of_the_reduced_form():
    y, d, Z, X1, fam = _data(2)
    b = 0.7
    exog = np.column_stack([np.ones(len(y)), X1, Z])
    ref = IV2SLS(y - b * d, exog, None, None).fit(cov_type="clustered", clusters=fam)
    pz = ref.params.to_numpy()[-3:]
    wald = float(pz @ np.linalg.solve(ref.cov.to_numpy()[-3:, -3:], pz))
    stat, p, k = anderson_rubin_test(y, d, Z, X1, beta0=b, cov_type="cluster", clusters=fam)
    assert k == 3
    assert stat == pytest.approx(wald, rel=1e-6)
    assert p == pytest.approx(stats.chi2.sf(wald, 3), rel=1e-6)


@pytest.mark.parametrize("n_instruments", [1, 3])
def test_cluster_anderson_rubin_set_boundaries_have_p_equal_alpha(n_instruments):
    y, d, Z, X1, fam = _data(3)
    Z = Z[:, :n_instruments]
    cs = anderson_rubin_confidence_set(y, d, Z, X1, alpha=0.05, cov_type="cluster", clusters=fam)
    assert cs.is_bounded and not cs.is_empty
    for end in cs.intervals[0]:
        p = anderson_rubin_test(y, d, Z, X1, beta0=end, cov_type="cluster", clusters=fam)[1]
        assert p == pytest.approx(0.05, abs=1e-6)
    fit = fit_kclass(y, d, Z, X1, cov_type="cluster", clusters=fam)
    assert cs.contains(fit.estimate)


def test_cluster_hansen_j_and_first_stage_match_linearmodels():
    y, d, Z, X1, fam = _data(4)
    exog = np.column_stack([np.ones(len(y)), X1])
    gmm = IVGMM(y, exog, d[:, None], Z, weight_type="clustered", clusters=fam).fit(
        cov_type="clustered", clusters=fam
    )
    stat, p, df = sargan_hansen_j(y, d, Z, X1, cov_type="cluster", clusters=fam)
    assert df == 2
    assert stat == pytest.approx(gmm.j_stat.stat, rel=1e-6)
    assert p == pytest.approx(gmm.j_stat.pval, rel=1e-6)
    f, _, k = first_stage_strength(d, Z, X1, cov_type="cluster", clusters=fam)
    assert f == pytest.approx(fit_kclass(y, d, Z, X1, cov_type="cluster", clusters=fam).first_stage_f, rel=1e-10)


def test_cluster_inputs_are_validated():
    y, d, Z, X1, fam = _data(0, n=40)
    with pytest.raises(InputError, match="needs a cluster label"):
        fit_kclass(y, d, Z, X1, cov_type="cluster")
    with pytest.raises(InputError, match="use cov_type='cluster'"):
        fit_kclass(y, d, Z, X1, cov_type="robust", clusters=fam)
    with pytest.raises(InputError, match="one label per sample"):
        fit_kclass(y, d, Z, X1, cov_type="cluster", clusters=fam[:-1])
    bad = fam.astype(object)
    bad[3] = None
    with pytest.raises(InputError, match="missing"):
        fit_kclass(y, d, Z, X1, cov_type="cluster", clusters=bad)
    with pytest.raises(InputError, match="at least two clusters"):
        fit_kclass(y, d, Z, X1, cov_type="cluster", clusters=np.zeros(len(y)))
    with pytest.raises(InputError, match="more clusters"):
        anderson_rubin_test(y, d, Z, X1, cov_type="cluster", clusters=np.arange(len(y)) % 3)
    # "clustered" (linearmodels' spelling) is accepted.
    assert fit_kclass(y, d, Z, X1, cov_type="clustered", clusters=fam).cov_type == "cluster"


def test_whole_cluster_permutations_keep_families_together_and_are_seeded():
    rng = np.random.default_rng(0)
    n_fam = 150
    fam = np.repeat(np.arange(n_fam), 2)
    env = np.repeat(rng.integers(0, 2, n_fam), 2)  # a family lives in one environment
    X = rng.standard_normal((2 * n_fam, 2)) + np.repeat(rng.standard_normal((n_fam, 2)), 2, axis=0)
    a = mmd_permutation_test(X, env, n_permutations=99, rng=3, clusters=fam)
    assert a == mmd_permutation_test(X, env, n_permutations=99, rng=3, clusters=fam)
    assert 0 < a[1] <= 1
    from invariant_mr.inference.diagnostics import _ClusterBlocks
    from invariant_mr.estimators.iv import cluster_codes

    blocks = _ClusterBlocks(cluster_codes(fam, fam.size), None)
    perm = blocks.permuted_rows(np.random.default_rng(1))
    assert sorted(perm) == list(range(fam.size))
    # Siblings move together: the rows of one family map onto the rows of one family.
    moved = fam[perm].reshape(n_fam, 2)
    assert np.all(moved[:, 0] == moved[:, 1])
    Y = rng.standard_normal((2 * n_fam, 2))
    assert hsic_permutation_test(X, Y, n_permutations=49, rng=2, clusters=fam)[1] > 0
    with pytest.raises(InputError, match="spans two"):
        _ClusterBlocks(cluster_codes(fam, fam.size), np.arange(fam.size) % 2)


def test_whole_cluster_permutation_has_size_where_individual_permutation_does_not():
    """Null: X independent of Y, but both correlated within families (shared family components).

    Individual permutations treat siblings as independent and over-reject; permuting whole
    families keeps the test near its level. Rejection rates over 200 seeded datasets.
    """
    n_fam, reps = 100, 200
    rej_ind = rej_fam = 0
    for r in range(reps):
        rng = np.random.default_rng(100 + r)
        fam = np.repeat(np.arange(n_fam), 4)
        fx = np.repeat(rng.standard_normal((n_fam, 1)), 4, axis=0)
        fy = np.repeat(rng.standard_normal((n_fam, 1)), 4, axis=0)
        # X and Y are independent, each strongly clustered (within-family correlation about 0.9).
        X = fx + 0.3 * rng.standard_normal((4 * n_fam, 1))
        Y = fy + 0.3 * rng.standard_normal((4 * n_fam, 1))
        rej_ind += hsic_permutation_test(X, Y, n_permutations=99, rng=r)[1] <= 0.05
        rej_fam += hsic_permutation_test(X, Y, n_permutations=99, rng=r, clusters=fam)[1] <= 0.05
    tol = 3 * np.sqrt(0.05 * 0.95 / reps)
    assert rej_fam / reps <= 0.05 + tol
    assert rej_ind / reps > 0.3  # about 0.55: individual permutations are far too liberal here


def test_sibling_pairs_hc0_undercovers_and_clustered_covers():
    """2SLS with sibling pairs (shared family effect, IBD-correlated genotypes), 600 seeded reps.

    Binomial tolerance: 3 SE of a coverage of 0.95 at 600 reps is 0.027.
    """
    reps = 600
    hits = {"robust": 0, "cluster": 0}
    for r in range(reps):
        s = simulate_sibling_families(n_families=1000, n_variants=10, seed=r)
        for cov_type in hits:
            fit = fit_kclass(
                s.outcome, s.exposure, s.Z, None, cov_type=cov_type,
                clusters=s.family if cov_type == "cluster" else None,
            )
            lo, hi = fit.ci(0.05)
            hits[cov_type] += lo <= s.theta <= hi
    tol = 3 * np.sqrt(0.95 * 0.05 / reps)
    assert abs(hits["cluster"] / reps - 0.95) <= tol
    assert hits["robust"] / reps < 0.95 - tol


def test_iv_estimates_and_diagnostics_take_clusters():
    from invariant_mr.data import MRData
    from invariant_mr.inference.diagnostics import instrument_diagnostics
    from invariant_mr.inference.estimates import iv_estimates

    s = simulate_sibling_families(n_families=300, n_variants=4, seed=0)
    env = np.repeat(np.arange(300) % 2, 2).astype(str)  # each family in one environment
    data = MRData(Z=s.Z, exposure=s.exposure, outcome=s.outcome, env=env)
    from invariant_mr.inference.settings import InferenceSettings

    ctx = InferenceSettings(cov_type="cluster", diagnostic_permutations=49)
    rows = iv_estimates(data, s.Z, ctx, method="tsls", clusters=s.family)
    pooled = rows[0]
    ref = fit_kclass(s.outcome, s.exposure, s.Z, data.env_dummies(drop_first=True), cov_type="cluster", clusters=s.family)
    assert pooled.se == pytest.approx(ref.se, rel=1e-10) and pooled.extra["n_clusters"] == 300
    assert pooled.extra["ar_set_kind"] == "interval" and len(rows) == 3
    diags = {(d.name, d.scope): d for d in instrument_diagnostics(data, s.Z, ctx, clusters=s.family)}
    assert diags[("invariance_mmd", "pooled")].detail["permuted_whole_clusters"] is True
    assert diags[("overidentification_j", "pooled")].detail["cov_type"] == "cluster"
    f = diags[("first_stage_f", "pooled")].statistic
    assert f == pytest.approx(ref.first_stage_f, rel=1e-8)
