"""Genotype-native invariant instruments (`invariant_genotype`), Bekker SEs, and the PCs-fail simulators."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from invariant_mr.errors import InputError
from invariant_mr.estimators.genotype_pcs import genotype_pcs
from invariant_mr.estimators.iv import fit_kclass
from invariant_mr.estimators.many_instruments import bekker_se, fit_liml_bekker
from invariant_mr.instruments.genotype_invariant import GenotypeInvariantInstruments
from invariant_mr.simulation.balding_nichols import draw_genotypes
from invariant_mr.simulation.genetic_dataset import simulate_genetic
from statistical_bounds import assert_rate


# ----------------------------------------------------------------------------- Bekker SEs
def _many_instruments(seed, n=400, k=40, strength=0.06):
    r = np.random.default_rng(seed)
    Z = r.standard_normal((n, k))
    u = r.standard_normal(n)
    d = Z @ np.full(k, strength) + 0.6 * u + 0.8 * r.standard_normal(n)
    return 1.0 * d + u, d, Z


def test_bekker_se_covers_where_the_conventional_liml_se_undercovers():
    est, bek, conv = [], [], []
    for seed in range(400):
        y, d, Z = _many_instruments(seed)
        fit = fit_liml_bekker(y, d, Z, cov_type="unadjusted")
        est.append(fit.estimate)
        bek.append(fit.se)
        conv.append(fit.fit.se)
    est, bek, conv = map(np.array, (est, bek, conv))
    assert_rate(np.abs(est - 1) <= 1.96 * bek, 0.95, what="Bekker coverage")
    # The conventional SE is too small here (k/n = 0.1): its intervals cover clearly less.
    assert np.mean(np.abs(est - 1) <= 1.96 * conv) < 0.93
    assert np.median(bek) > 1.1 * np.median(conv)
    # LIML stays centred where 2SLS is pulled towards OLS.
    assert abs(est.mean() - 1) < 3 * est.std() / np.sqrt(est.size)


def test_bekker_se_reduces_to_the_liml_se_with_one_instrument():
    y, d, Z = _many_instruments(0, n=5000, k=1, strength=0.3)
    fit = fit_kclass(y, d, Z, kappa="liml", cov_type="unadjusted")
    assert bekker_se(y, d, Z, estimate=fit.estimate) == pytest.approx(fit.se, rel=0.01)


def test_bekker_se_rejects_instruments_collinear_with_the_controls():
    y, d, Z = _many_instruments(0, n=200, k=2)
    with pytest.raises(InputError):
        bekker_se(y, d, Z, Z, estimate=1.0)


# ----------------------------------------------------------------------------- the learner
def _populations(freqs: np.ndarray, n_per_env: int, seed: int):
    rng = np.random.default_rng(seed)
    K = freqs.shape[0]
    Z = draw_genotypes(np.repeat(freqs, n_per_env, axis=0), rng).astype(float)
    return Z, np.repeat([f"e{k}" for k in range(K)], n_per_env)


def test_identical_populations_lose_no_direction():
    p = np.random.default_rng(1).uniform(0.1, 0.9, 60)
    Z, env = _populations(np.tile(p, (3, 1)), 800, seed=2)
    g = GenotypeInvariantInstruments(random_state=0).fit(Z, env)
    assert g.n_mean_removed_ == 0 and g.n_cov_removed_ == 0
    assert g.transform(Z, env).shape == (Z.shape[0], 60)


def test_hardy_weinberg_variance_differences_do_not_count_as_non_invariance():
    """Different allele frequencies (F_ST ~ 0.1) and no LD: the mean shifts go, no covariance direction does."""
    rng = np.random.default_rng(3)
    p = rng.uniform(0.1, 0.9, 60)
    freqs = np.stack([rng.beta(p * 9, (1 - p) * 9) for _ in range(3)])
    Z, env = _populations(freqs, 800, seed=4)
    g = GenotypeInvariantInstruments(random_state=0).fit(Z, env)
    assert g.n_mean_removed_ >= 2
    assert g.n_cov_removed_ == 0


def test_removed_directions_carry_the_ancestry_and_the_instruments_do_not():
    sim = simulate_genetic("balding-nichols", n_envs=3, n_per_env=1500, n_variants=100, fst=0.1, seed=5)
    data = sim.to_mrdata()
    g = GenotypeInvariantInstruments(random_state=0).fit(data.Z, data.env)
    q = sim.latent["ancestry"]
    codes = data.env_codes
    within_q = q - np.stack([q[codes == k].mean(axis=0) for k in range(3)])[codes]
    def r2(X, y):
        X = np.column_stack([np.ones(len(y)), X])
        resid = y - X @ np.linalg.lstsq(X, y, rcond=None)[0]
        return 1 - resid.var() / y.var()
    removed = g.removed_scores(data.Z, data.env)
    kept = g.transform(data.Z, data.env)
    assert r2(removed, within_q[:, 0]) > 0.2  # chance level: about 6 / 4,500
    # What is kept is Mendelian noise: its multiple R^2 on the within-environment ancestry is at the level of
    # chance (about k / n = 0.02 for 94 columns on 4,500 rows).
    assert r2(kept, within_q[:, 0]) < 0.04


def test_learner_input_errors():
    Z, env = _populations(np.full((2, 10), 0.5), 50, seed=0)
    with pytest.raises(InputError):
        GenotypeInvariantInstruments().fit(Z, env[:-1])
    with pytest.raises(InputError):
        GenotypeInvariantInstruments().fit(Z, np.repeat("a", Z.shape[0]))
    with pytest.raises(InputError):
        GenotypeInvariantInstruments().transform(Z, env)
    g = GenotypeInvariantInstruments(random_state=0).fit(Z, env)
    with pytest.raises(InputError, match="not seen"):
        g.transform(Z, np.repeat("zz", Z.shape[0]))
    Z_missing = Z.copy()
    Z_missing[0, 0] = np.nan
    with pytest.raises(InputError):
        GenotypeInvariantInstruments().fit(Z_missing, env)


def test_learner_is_seeded():
    sim = simulate_genetic("demes", n_per_env=600, n_demes=4, n_variants=60, seed=0)
    data = sim.to_mrdata()
    a = GenotypeInvariantInstruments(random_state=3).fit(data.Z, data.env)
    b = GenotypeInvariantInstruments(random_state=3).fit(data.Z, data.env)
    np.testing.assert_array_equal(a.components_, b.components_)


# ----------------------------------------------------------------------------- where PCs fail
def test_fine_scale_structure_defeats_ten_pcs_but_not_the_invariant_instruments():
    """3 regions x 8 demes (23 structure dimensions), a deme-level confounder: seeded, 3 replicates."""
    gi, pcs = [], []
    for seed in range(3):
        sim = simulate_genetic("demes", n_per_env=2000, n_variants=150, seed=seed)
        data = sim.to_mrdata()
        env = data.env_dummies()
        X = GenotypeInvariantInstruments(random_state=seed).fit_transform(data.Z, data.env)
        gi.append(fit_liml_bekker(data.outcome, data.exposure, X, env).estimate - sim.theta)
        fit = fit_kclass(data.outcome, data.exposure, data.Z, np.column_stack([env, genotype_pcs(data.Z, 10)]))
        pcs.append(fit.estimate - sim.theta)
    assert np.mean(pcs) > 0.15
    assert abs(np.mean(gi)) < 0.08
    assert np.sqrt(np.mean(np.square(gi))) < 0.5 * np.sqrt(np.mean(np.square(pcs)))


def test_structured_simulators_are_reproducible_and_keep_the_genome_apart():
    for model in ("demes", "nonlinear-ancestry", "balding-nichols"):
        a = simulate_genetic(model, n_per_env=300, n_variants=40, n_genome_variants=60, keep_genome=True, seed=4)
        b = simulate_genetic(model, n_per_env=300, n_variants=40, n_genome_variants=60, seed=4)
        np.testing.assert_array_equal(a.genotypes, b.genotypes)
        np.testing.assert_array_equal(a.outcome, b.outcome)
        assert a.latent["genome_genotypes"].shape == (a.n, 100)
        np.testing.assert_array_equal(a.latent["genome_genotypes"][:, :40], a.genotypes)
    # The Balding-Nichols panel follows the same ancestry: its top PC tracks the ancestry proportions as the
    # instruments' does, and its neutral columns are unrelated to the outcome beyond ancestry.
    bn = simulate_genetic("balding-nichols", n_per_env=400, n_variants=40, n_genome_variants=400, fst=0.1,
                          keep_genome=True, seed=5)
    extra = bn.latent["genome_genotypes"][:, 40:].astype(float)
    extra -= extra.mean(axis=0)
    pc1 = np.linalg.svd(extra, full_matrices=False)[0][:, 0]
    q = bn.latent["ancestry"]
    assert max(abs(np.corrcoef(pc1, q[:, k])[0, 1]) for k in range(q.shape[1])) > 0.9
    with pytest.raises(InputError):
        simulate_genetic("demes", n_demes=1)
    with pytest.raises(InputError):
        simulate_genetic("nonlinear-ancestry", admixture=0.9)


# ----------------------------------------------------------------------------- the method
def test_method_runs_through_the_registry_with_bekker_se_and_diagnostics():
    from invariant_mr.methods.registry import MethodContext, resolve_methods
    from invariant_mr.pipeline import run_analysis

    assert [s.name for s in resolve_methods("invariant_genotype")] == ["invariant_genotype"]
    sim = simulate_genetic("balding-nichols", n_envs=3, n_per_env=1000, n_variants=80, fst=0.1, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_analysis(sim.to_mrdata(), ["invariant_genotype"],
                              MethodContext(seed=0, options={"diagnostic_permutations": 99}), command="test")
    pooled = next(e for e in result.estimates if e.scope == "pooled")
    assert pooled.extra["se_kind"].startswith("Bekker")
    assert pooled.se >= 0.9 * pooled.extra["conventional_se"]
    assert pooled.extra["n_removed"] >= 2
    assert pooled.extra["ar_set_kind"] == "not computed"  # 70-odd instruments: above the many-instrument cap
    assert abs(pooled.estimate - sim.theta) < 5 * pooled.se
    names = {d.name for d in result.diagnostics}
    assert {"invariant_genotype/invariance_mmd", "invariant_genotype/independence_hsic",
            "invariant_genotype/leak_shift", "invariant_genotype/overidentification_j"} <= names


def test_non_genotype_data_leave_the_method_unavailable_not_the_run_broken():
    """Few continuous columns: removing the shifting directions can leave instruments spanned by the
    environment effects; that is this design's failure, reported as such, never the whole run's."""
    from invariant_mr.methods.registry import MethodContext
    from invariant_mr.pipeline import run_analysis
    from invariant_mr.simulation.paper import simulate_paper

    data = simulate_paper("poly2", n_envs=2, n_per_env=1000, seed=0, noise=0.02).data
    result = run_analysis(data, "invariant_genotype,tsls_all_env",
                          MethodContext(seed=0, per_env=False, options={"diagnostic_permutations": 99}))
    assert result.select("tsls_all_env")[0].available
    (row,) = result.select("invariant_genotype")
    assert row.available or row.reason.startswith("no usable instruments")


def test_the_fast_spectra_equal_the_direct_ones():
    """The mean-shift eigenpairs from the K x K twin, the projected covariance shift formed by low-rank
    updates, and the relabelled Gram matrices from the total all equal their direct m x m forms."""
    from invariant_mr.instruments import genotype_invariant as gi

    rng = np.random.default_rng(3)
    K, m, n = 3, 40, 900
    weights = np.array([0.2, 0.3, 0.5])
    means, scale = rng.standard_normal((K, m)), rng.uniform(0.5, 2.0, m)
    dm = (means - weights @ means) / scale
    direct = np.einsum("e,ei,ej->ij", weights, dm, dm)
    vals, vecs = gi._mean_shift_eigen(means, weights, scale, K - 1)
    assert np.allclose(direct @ vecs, vecs * vals, atol=1e-10)
    assert np.allclose(vals, np.linalg.eigvalsh(direct)[::-1][:K - 1], atol=1e-10)
    corr = np.stack([np.cov(rng.standard_normal((200, m)), rowvar=False) for _ in range(K)])
    U = np.linalg.qr(rng.standard_normal((m, 2)))[0]
    P = np.eye(m) - U @ U.T
    pooled = np.tensordot(weights, corr, axes=1)
    explicit = sum(w * (P @ (C - pooled) @ P) @ (P @ (C - pooled) @ P) for w, C in zip(weights, corr))
    assert np.allclose(gi._cov_shift_matrix(corr, weights, U), explicit, atol=1e-12)
    assert np.allclose(gi._top_eigenvalues(explicit, 5), np.linalg.eigvalsh(explicit)[::-1][:5], atol=1e-10)
    X = rng.standard_normal((n, m)).astype(np.float32)
    lab = rng.integers(0, K, n)
    grams = gi._relabelled_grams(X, lab, K, (X.T @ X).astype(np.float64))
    for e in range(K):
        Xe = X[lab == e].astype(np.float64)
        assert np.allclose(grams[e], Xe.T @ Xe / Xe.shape[0], rtol=1e-4, atol=1e-5)
