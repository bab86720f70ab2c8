"""Genome-wide PCs: the streamed randomised SVD against the exact PCs, LD pruning, and `run --pcs-from`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from genotype_writers import Fileset, write_bed

from invariant_mr.errors import InputError
from invariant_mr.estimators.genotype_pcs import (
    genotype_pcs,
    ld_prune,
    pcs_from_fileset,
    randomized_genotype_pcs,
    row_blocks_of_array,
)
from invariant_mr.io.genotype_sources import open_genotypes
from invariant_mr.simulation.balding_nichols import simulate_balding_nichols


@pytest.fixture(scope="module")
def structured():
    """4 populations: 3 PCs of structure above a flat noise spectrum."""
    sim = simulate_balding_nichols(n_envs=4, n_per_env=150, n_variants=800, fst=0.05, admixture=0.1, seed=3)
    return sim.genotypes.astype(float)


def _abs_corr(a, b):
    return abs(np.corrcoef(a, b)[0, 1])


@pytest.mark.parametrize("n_iter, tol", [(3, 1e-4), (10, 1e-9)])
def test_randomized_pcs_match_exact_pcs_of_the_structure(structured, n_iter, tol):
    """Power iterations converge on the structured PCs (the default 3 to 1e-4, more to rounding)."""
    exact = genotype_pcs(structured, 3)
    fit = randomized_genotype_pcs(row_blocks_of_array(structured, 128), 3, min_maf=0.0, seed=1, n_iter=n_iter)
    for j in range(3):
        assert _abs_corr(exact[:, j], fit.scores[:, j]) > 1 - tol
        assert np.linalg.norm(fit.scores[:, j]) == pytest.approx(np.linalg.norm(exact[:, j]), rel=tol)
    assert fit.passes == 2 + 2 * fit.n_iter + 1
    assert fit.variance_explained[0] > fit.variance_explained[2] > 0


def test_block_size_does_not_change_the_result(structured):
    a = randomized_genotype_pcs(row_blocks_of_array(structured, 37), 3, seed=5)
    b = randomized_genotype_pcs(row_blocks_of_array(structured, 1000), 3, seed=5)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-9, atol=1e-9)


def test_missing_genotypes_are_mean_imputed(structured):
    G = structured.copy()
    rng = np.random.default_rng(0)
    G[rng.random(G.shape) < 0.02] = np.nan
    fit = randomized_genotype_pcs(row_blocks_of_array(G, 100), 2, min_maf=0.0, seed=2, n_iter=10)
    # EIGENSOFT/PLINK convention: standardise with the observed moments, then missing -> 0.
    A = np.nan_to_num((G - np.nanmean(G, axis=0)) / np.nanstd(G, axis=0))
    U, sv, _ = np.linalg.svd(A, full_matrices=False)
    exact = U[:, :2] * sv[:2]
    for j in range(2):
        assert _abs_corr(exact[:, j], fit.scores[:, j]) > 1 - 1e-6


def test_bad_requests_are_input_errors(structured):
    with pytest.raises(InputError, match="at least 1"):
        randomized_genotype_pcs(row_blocks_of_array(structured), 0)
    with pytest.raises(InputError, match="variant"):
        randomized_genotype_pcs(row_blocks_of_array(np.ones((10, 5))), 2)


def _linked_fileset(tmp_path, n=300, seed=0):
    """Pairs of variants in perfect LD (copies) and independent ones, on two chromosomes."""
    rng = np.random.default_rng(seed)
    base = rng.binomial(2, 0.3, size=(n, 10)).astype(float)
    G = np.column_stack([base[:, :5], base[:, :5], base[:, 5:]])  # columns 5-9 copy 0-4
    p = G.shape[1]
    variants = pd.DataFrame({
        "variant_id": [f"rs{j}" for j in range(p)], "chrom": ["1"] * 10 + ["2"] * 5,
        "pos": list(range(1000, 11000, 1000)) + list(range(1000, 6000, 1000)), "ref": ["A"] * p, "alt": ["G"] * p,
    })
    fs = Fileset(G, np.array([f"F{i}" for i in range(n)], dtype=object),
                 np.array([f"S{i}" for i in range(n)], dtype=object), variants)
    return write_bed(fs, tmp_path / "gw")


def test_ld_pruning_keeps_one_of_each_copy(tmp_path):
    prefix = _linked_fileset(tmp_path)
    keep = ld_prune(open_genotypes(bfile=prefix), r2=0.5, window=20, rows=300)
    assert keep[:5].all() and not keep[5:10].any() and keep[10:].all()


def test_run_pcs_from_adds_genome_wide_pcs(tmp_path, capsys):
    from invariant_mr.cli import main
    from invariant_mr.simulation.genetic_dataset import write_fileset

    sim = simulate_balding_nichols(n_envs=3, n_per_env=100, n_variants=60, fst=0.05, seed=2)
    write_fileset(sim, tmp_path / "sim")
    prefix = tmp_path / "sim" / "genotypes"
    base = ["run", "--bfile", str(prefix), "--pheno", str(tmp_path / "sim" / "phenotypes.tsv"), "--env",
            "environment", "--exposure", "exposure", "--outcome", "outcome", "--quiet", "--no-per-env",
            "--methods", "tsls_pcs"]
    assert main(base + ["--pcs-from", str(prefix), "--n-pcs", "4", "--out", str(tmp_path / "out")]) == 0
    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    row = payload["estimates"][0]
    assert row["extra"]["pcs_from"] == "covariates PC1, PC2, PC3, PC4"
    record = payload["provenance"]["parameters"]["pcs_from"]
    assert record["n_pcs"] == 4 and record["n_samples"] == 300
    # The estimate equals 2SLS with the same PCs from the Python API as covariates.
    from invariant_mr.estimators.iv import fit_kclass

    _, pcs = pcs_from_fileset(prefix, 4, seed=0)
    data = sim.to_mrdata()
    ref = fit_kclass(data.outcome, data.exposure, data.Z, np.column_stack([data.env_dummies(), pcs.scores]))
    assert row["estimate"] == pytest.approx(ref.estimate, rel=1e-8)
    table = tmp_path / "t.tsv"
    table.write_text("iid\tenv\td\ty\tz1\na\t1\t0\t0\t1\n")
    assert main(["run", "--table", str(table), "--env", "env", "--exposure", "d", "--outcome", "y",
                 "--instruments", "z1", "--pcs-from", str(prefix), "--out", str(tmp_path / "bad")]) == 2
    assert "--pcs-from" in capsys.readouterr().err


def test_coalescent_keeps_the_genome_without_changing_the_data():
    """keep_genome only stores every distinct common SNP; ancestry_snps='genome' changes the confounder only."""
    pytest.importorskip("msprime")
    from invariant_mr.simulation.coalescent import simulate_coalescent

    kw = dict(n_per_env=30, length_mb=0.6, chunk_mb=0.3, n_variants=100, seed=5)
    plain = simulate_coalescent(**kw)
    kept = simulate_coalescent(**kw, keep_genome=True)
    assert np.array_equal(plain.genotypes, kept.genotypes) and np.array_equal(plain.outcome, kept.outcome)
    genome = kept.latent["genome_genotypes"]
    assert genome.shape[0] == 90 and genome.shape[1] > 100
    gw = simulate_coalescent(**kw, ancestry_snps="genome")
    assert np.array_equal(plain.genotypes, gw.genotypes) and not np.allclose(plain.outcome, gw.outcome)
    with pytest.raises(InputError, match="ancestry_snps"):
        simulate_coalescent(**kw, ancestry_snps="pcs")


def test_genome_wide_pcs_remove_the_stratification_that_instrument_pcs_leave():
    """Coalescent out-of-Africa genotypes whose confounder follows ancestry estimated from every common SNP
    (the real-study case, `coalescent-ooa-gwanc` in small): 2SLS adjusted for 10 genome-wide PCs keeps less
    than half the bias of 2SLS adjusted for 10 PCs of the 100 instruments (at the benchmark's size: 0.023 vs
    0.123). Fails if the genome-wide PCs stopped carrying ancestry (e.g. computed from the instruments)."""
    pytest.importorskip("msprime")
    from invariant_mr.estimators.iv import fit_kclass
    from invariant_mr.simulation.coalescent import simulate_coalescent

    bias_instruments, bias_genome = [], []
    for seed in range(4):
        sim = simulate_coalescent(n_per_env=800, length_mb=2.0, chunk_mb=1.0, n_variants=100,
                                  ancestry_snps="genome", keep_genome=True, seed=seed)
        data = sim.to_mrdata()
        env = data.env_dummies()
        genome = randomized_genotype_pcs(row_blocks_of_array(sim.latent["genome_genotypes"]), 10, seed=seed).scores
        for pcs, out in ((genotype_pcs(data.Z, 10), bias_instruments), (genome, bias_genome)):
            out.append(fit_kclass(data.outcome, data.exposure, data.Z, np.column_stack([env, pcs])).estimate
                       - sim.theta)
    assert np.mean(bias_instruments) > 0.06
    assert abs(np.mean(bias_genome)) < 0.5 * np.mean(bias_instruments)


def test_pcs_from_a_pass_cross_products_equal_the_pcs_of_the_rows():
    """`genotype_pcs(..., cross_products=(Z'Z, sums))` (what `run` takes from its first pass) gives the
    same scores as standardising the rows, up to rounding: every PC spans the same line (sign free), to
    1e-10, also beyond the structure (PCs 4-10 lie in the noise bulk), with a constant column present."""
    sim = simulate_balding_nichols(n_envs=4, n_per_env=300, n_variants=200, fst=0.05, seed=4)
    Z = sim.genotypes.astype(float)
    Z[:, 7] = 1.0  # a constant column: unscaled and contributing nothing, as on the rows
    exact = genotype_pcs(Z, 10)
    fast = genotype_pcs(Z, 10, cross_products=(Z.T @ Z, Z.sum(axis=0)))
    assert fast.shape == exact.shape == (1200, 10)
    for j in range(10):
        sign = np.sign(exact[:, j] @ fast[:, j])
        assert np.max(np.abs(sign * fast[:, j] - exact[:, j])) <= 1e-10 * np.max(np.abs(exact[:, j]))
    # The span is what adjustment sees: the projections of a vector onto both spans agree.
    v = np.random.default_rng(0).normal(size=1200)
    proj = [s @ np.linalg.lstsq(s, v, rcond=None)[0] for s in (exact, fast)]
    np.testing.assert_allclose(proj[0], proj[1], rtol=0, atol=1e-10)
    with pytest.raises(InputError, match="cross_products"):
        genotype_pcs(Z, 3, cross_products=(Z.T @ Z, Z.sum(axis=0)[:-1]))
