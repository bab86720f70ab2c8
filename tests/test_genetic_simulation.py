"""Genotype simulators: population genetics they must reproduce, determinism, PLINK output."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from invariant_mr.errors import InputError
from invariant_mr.simulation.assortative import pair_mates, simulate_assortative, transmit
from invariant_mr.simulation.balding_nichols import simulate_balding_nichols
from invariant_mr.simulation.fst import hudson_fst, pairwise_hudson_fst
from invariant_mr.simulation.genetic_dataset import simulate_genetic, write_fileset



# ---------------------------------------------------------------- F_ST estimator
def test_hudson_fst_matches_hand_computation():
    p1 = np.array([0.1, 0.5, 0.9])
    p2 = np.array([0.3, 0.5, 0.6])
    n1, n2 = 100, 60
    num = (p1 - p2) ** 2 - p1 * (1 - p1) / (n1 - 1) - p2 * (1 - p2) / (n2 - 1)
    den = p1 * (1 - p2) + p2 * (1 - p1)
    assert hudson_fst(p1, p2, n1, n2) == pytest.approx(num.sum() / den.sum(), rel=1e-12)


def test_hudson_fst_is_near_zero_for_one_population_split_in_two():
    rng = np.random.default_rng(5)
    p = rng.uniform(0.1, 0.9, size=3000)
    G = (rng.random((4000, 3000)) < p).astype(np.int8) + (rng.random((4000, 3000)) < p)
    env = np.repeat(["a", "b"], 2000)
    (fst,) = pairwise_hudson_fst(G, env).values()
    assert abs(fst) < 0.002


# ---------------------------------------------------------------- Balding-Nichols
@pytest.mark.parametrize("admixture", [0.0, 0.1])
def test_balding_nichols_hits_target_fst(admixture):
    # 3000 variants keep the Monte Carlo SD of one pair's F_ST near 0.003.
    sim = simulate_balding_nichols(
        n_envs=3, n_per_env=1000, n_variants=3000, fst=0.1, admixture=admixture, seed=11
    )
    fst = pairwise_hudson_fst(sim.genotypes, sim.env)
    assert len(fst) == 3
    for value in fst.values():
        assert abs(value - 0.1) < 0.01, fst
    assert abs(np.mean(list(fst.values())) - 0.1) < 0.006


def test_balding_nichols_is_deterministic_per_seed():
    a = simulate_balding_nichols(n_envs=2, n_per_env=100, n_variants=50, seed=3)
    b = simulate_balding_nichols(n_envs=2, n_per_env=100, n_variants=50, seed=3)
    c = simulate_balding_nichols(n_envs=2, n_per_env=100, n_variants=50, seed=4)
    assert np.array_equal(a.genotypes, b.genotypes)
    assert np.array_equal(a.exposure, b.exposure) and np.array_equal(a.outcome, b.outcome)
    assert a.truth == b.truth
    assert not np.array_equal(a.genotypes, c.genotypes)


def test_balding_nichols_genotypes_and_confounding_track_ancestry():
    sim = simulate_balding_nichols(n_envs=3, n_per_env=1500, n_variants=400, fst=0.1, seed=2)
    assert sim.genotypes.dtype == np.int8
    assert set(np.unique(sim.genotypes)) <= {0, 1, 2}
    # Within every population the confounder is correlated with the individual's
    # ancestry: this is what biases 2SLS after environment fixed effects.
    q, H = sim.latent["ancestry"], sim.latent["H"]
    codes = np.searchsorted(np.array(sim.env_levels, dtype=object), sim.env)
    for k in range(3):
        rows = codes == k
        fit = np.linalg.lstsq(np.column_stack([np.ones(rows.sum()), q[rows, 1:]]), H[rows], rcond=None)
        resid = H[rows] - np.column_stack([np.ones(rows.sum()), q[rows, 1:]]) @ fit[0]
        r2 = 1 - resid.var() / H[rows].var()
        assert r2 > 0.2
    # Between populations the exposure and outcome means differ (ancestry confounding).
    means = [sim.outcome[codes == k].mean() for k in range(3)]
    assert np.ptp(means) > 0.2


def test_balding_nichols_rejects_bad_options():
    with pytest.raises(InputError, match="--fst"):
        simulate_balding_nichols(n_envs=2, n_per_env=100, n_variants=50, fst=1.5)
    with pytest.raises(InputError, match="--envs"):
        simulate_balding_nichols(n_envs=1, n_per_env=100, n_variants=50)
    with pytest.raises(InputError, match="--admixture"):
        simulate_balding_nichols(n_envs=2, n_per_env=100, n_variants=50, admixture=0.6)


# ---------------------------------------------------------------- PLINK fileset
def test_fileset_round_trip_with_bed_reader(tmp_path):
    from bed_reader import open_bed

    sim = simulate_balding_nichols(n_envs=3, n_per_env=200, n_variants=120, fst=0.1, seed=7)
    out = write_fileset(sim, tmp_path / "sim")
    assert sorted(p.name for p in out.iterdir()) == [
        "genotypes.bed", "genotypes.bim", "genotypes.fam", "phenotypes.tsv", "truth.json"
    ]
    with open_bed(out / "genotypes.bed") as bed:
        G = bed.read(dtype="int8")
        assert np.array_equal(G, sim.genotypes)
        assert list(bed.iid) == list(sim.sample_ids)
        assert list(bed.sid) == list(sim.variant_ids)
        assert list(bed.allele_1) == list(sim.allele_1)
        assert np.array_equal(bed.bp_position, sim.pos)
        assert np.array_equal(bed.sex, sim.covariates["sex"])
    pheno = pd.read_csv(out / "phenotypes.tsv", sep="\t")
    assert list(pheno.columns[:4]) == ["IID", "environment", "exposure", "outcome"]
    assert {"age", "sex"} <= set(pheno.columns)
    assert np.array_equal(pheno["exposure"].to_numpy(), sim.exposure)
    assert np.array_equal(pheno["outcome"].to_numpy(), sim.outcome)
    assert list(pheno["environment"]) == list(sim.env)
    truth = json.loads((out / "truth.json").read_text())
    assert truth["theta"] == 1.0 and truth["model"] == "balding-nichols"
    assert len(truth["causal_variant_ids"]) == truth["n_causal"]


def test_fileset_refuses_existing_directory_and_overwrites_on_request(tmp_path):
    sim = simulate_balding_nichols(n_envs=2, n_per_env=50, n_variants=20, seed=1)
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="already exists"):
        write_fileset(sim, target)
    assert (target / "keep.txt").exists()
    with pytest.raises(InputError, match="not written by invariant-mr"):
        write_fileset(sim, target, overwrite=True)  # a user's folder is never replaced
    assert (target / "keep.txt").exists()
    (target / "keep.txt").unlink()
    target.rmdir()
    write_fileset(sim, target)
    write_fileset(sim, target, overwrite=True)  # a previous fileset is
    assert (target / "genotypes.bed").exists()
    # No staging directories are left behind.
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# ---------------------------------------------------------------- coalescent
EXPECTED_OOA_FST = {"CEU-YRI": 0.17, "CHB-YRI": 0.20, "CEU-CHB": 0.11}


def _check_ooa_fst(sim):
    fst = pairwise_hudson_fst(sim.genotypes, sim.env, min_maf=0.05)
    got = {f"{a}-{b}": v for (a, b), v in fst.items()}
    for pair, expected in EXPECTED_OOA_FST.items():
        assert abs(got[pair] - expected) < 0.03, got
    return got


def test_coalescent_out_of_africa_reproduces_known_fst_small_config():
    from invariant_mr.simulation.coalescent import simulate_coalescent

    # Small and fast (about 5 s): 100 diploids per population, 40 independent
    # 0.5 Mb chunks, so that the genome-wide F_ST is not dominated by a few trees.
    sim = simulate_coalescent(n_per_env=100, length_mb=20, chunk_mb=0.5, seed=0)
    assert sim.env_levels == ("CEU", "CHB", "YRI")
    assert sim.m > 10_000
    _check_ooa_fst(sim)
    # Only common biallelic sites were kept.
    freq = sim.genotypes.mean(axis=0) / 2
    assert np.all(np.minimum(freq, 1 - freq) > 0.05)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_coalescent_out_of_africa_fst_larger_samples(seed):
    from invariant_mr.simulation.coalescent import simulate_coalescent

    sim = simulate_coalescent(n_per_env=500, length_mb=20, chunk_mb=1.0, seed=seed)
    _check_ooa_fst(sim)


def test_coalescent_american_admixture_ancestry_proportions():
    from invariant_mr.simulation.coalescent import simulate_coalescent

    sim = simulate_coalescent(
        demography="AmericanAdmixture_4B18", n_per_env=60, length_mb=4, chunk_mb=0.5, seed=2
    )
    assert sim.env_levels == ("ADMIX", "AFR", "ASIA", "EUR")
    assert sim.truth["ancestry_reference_populations"] == ["AFR", "EUR", "ASIA"]
    q = sim.latent["ancestry"][sim.env == "ADMIX"].mean(axis=0)
    # The model's admixture pulse: 1/6 African, 1/3 European, 1/2 Asian.
    assert np.allclose(q, [1 / 6, 1 / 3, 1 / 2], atol=0.05)


def test_coalescent_is_deterministic_and_thins_to_n_variants():
    from invariant_mr.simulation.coalescent import simulate_coalescent

    a = simulate_coalescent(n_per_env=30, length_mb=0.6, chunk_mb=0.3, n_variants=200, seed=5)
    b = simulate_coalescent(n_per_env=30, length_mb=0.6, chunk_mb=0.3, n_variants=200, seed=5)
    assert a.genotypes.shape == (90, 200)
    assert np.array_equal(a.genotypes, b.genotypes) and np.array_equal(a.outcome, b.outcome)
    assert list(a.variant_ids) == list(b.variant_ids)
    assert len(set(a.chrom.tolist())) == 2  # one autosome per independent chunk
    with pytest.raises(InputError, match="--length-mb"):
        simulate_coalescent(n_per_env=30, length_mb=0.3, chunk_mb=0.3, n_variants=100_000, seed=5)
    with pytest.raises(InputError, match="--envs"):
        simulate_coalescent(n_per_env=30, n_envs=2, length_mb=0.3)


def test_coalescent_without_popgen_extra_names_the_install_command(monkeypatch):
    import sys

    from invariant_mr.simulation import coalescent

    monkeypatch.setitem(sys.modules, "msprime", None)
    with pytest.raises(InputError, match=r"invariant-mr\[popgen\]"):
        coalescent.simulate_coalescent(n_per_env=10, length_mb=0.1)


# ---------------------------------------------------------------- assortative mating
def test_transmission_is_mendelian():
    rng = np.random.default_rng(0)
    parents = np.repeat(np.array([[0, 1, 2]], dtype=np.int8), 20_000, axis=0)
    gametes = transmit(parents, rng)
    assert gametes[:, 0].max() == 0 and gametes[:, 2].min() == 1
    assert abs(gametes[:, 1].mean() - 0.5) < 4 * np.sqrt(0.25 / 20_000)


def test_pair_mates_reaches_target_partner_correlation():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal(20_000), rng.standard_normal(20_000)
    for r in (0.0, 0.3, 0.6):
        f, m = pair_mates(x, y, r, rng)
        assert abs(np.corrcoef(x[f], y[m])[0, 1] - r) < 0.03


def test_assortative_mating_builds_cross_locus_correlation_generation_by_generation():
    sim = simulate_assortative(
        n_envs=2, n_per_env=4000, n_variants=40, n_causal=10, n_causal_outcome=10, h2=0.8,
        h2_outcome=0.8, mating_correlation=0.8, mating_traits="exposure", generations=4,
        family_effect=0.0, seed=0,
    )
    assortative = [g["exposure_cross_locus_correlation"] for g in sim.truth["generation_history"]["pop2"]]
    random_mating = [g["exposure_cross_locus_correlation"] for g in sim.truth["generation_history"]["pop1"]]
    assert abs(assortative[0]) < 0.01  # generation 0 is in linkage equilibrium
    assert np.all(np.diff(assortative) > 0), assortative
    assert assortative[-1] > 0.03
    assert max(abs(v) for v in random_mating) < 0.01, random_mating
    variance = [g["exposure_score_variance"] for g in sim.truth["generation_history"]["pop2"]]
    assert variance[-1] > 1.1 * variance[0]


def test_cross_trait_assortative_mating_correlates_exposure_and_outcome_scores():
    sim = simulate_assortative(
        n_envs=2, n_per_env=4000, n_variants=40, n_causal=10, n_causal_outcome=10, h2=0.8,
        h2_outcome=0.8, mating_correlation=0.8, mating_traits="cross", generations=4,
        family_effect=0.0, seed=1,
    )
    corr = [g["exposure_outcome_score_correlation"] for g in sim.truth["generation_history"]["pop2"]]
    assert np.all(np.diff(corr) > 0), corr
    assert corr[-1] > 0.15
    # Mating never changes allele frequencies beyond drift: first moments stay invariant.
    f1 = sim.genotypes[sim.env == "pop1"].mean(axis=0)
    f2 = sim.genotypes[sim.env == "pop2"].mean(axis=0)
    assert np.max(np.abs(f1 - f2)) < 0.15


def test_assortative_is_deterministic_and_writes_families(tmp_path):
    from bed_reader import open_bed

    a = simulate_assortative(n_envs=3, n_per_env=100, n_variants=60, generations=2, seed=9)
    b = simulate_assortative(n_envs=3, n_per_env=100, n_variants=60, generations=2, seed=9)
    assert np.array_equal(a.genotypes, b.genotypes) and np.array_equal(a.exposure, b.exposure)
    assert a.truth["partner_correlation_by_environment"] == {"pop1": 0.0, "pop2": 0.25, "pop3": 0.5}
    out = write_fileset(a, tmp_path / "am")
    with open_bed(out / "genotypes.bed") as bed:
        fids = list(bed.fid)
    assert len(set(fids)) < a.n  # siblings share a family id
    assert fids == list(a.family_ids)


# ---------------------------------------------------------------- dispatcher and CLI
def test_simulate_genetic_dispatches_and_drops_options_a_model_does_not_take():
    sim = simulate_genetic("balding-nichols", n_envs=2, n_per_env=50, n_variants=30, fst=0.05,
                           demography="OutOfAfrica_3G09", generations=3, seed=1)
    assert sim.truth["model"] == "balding-nichols" and sim.n == 100
    with pytest.raises(InputError, match="unknown genetic model"):
        simulate_genetic("wright-fisher")


def test_cli_simulate_balding_nichols_writes_ready_to_run_fileset(tmp_path):
    from invariant_mr.cli import main

    out = tmp_path / "bn"
    code = main([
        "simulate", "--model", "balding-nichols", "--envs", "3", "--n-per-env", "200",
        "--n-variants", "100", "--fst", "0.1", "--seed", "0", "--out", str(out),
    ])
    assert code == 0
    assert {p.name for p in out.iterdir()} == {
        "genotypes.bed", "genotypes.bim", "genotypes.fam", "phenotypes.tsv", "truth.json"
    }
    truth = json.loads((out / "truth.json").read_text())
    assert truth["parameters"]["fst"] == 0.1 and truth["seed"] == 0
    assert "invariant-mr" in truth["provenance"]["software"]
    # The same call refuses to overwrite.
    assert main(["simulate", "--model", "balding-nichols", "--out", str(out)]) == 2
