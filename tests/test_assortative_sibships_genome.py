"""The genome-wide neutral panel of the pedigree simulators (`keep_genome`, issue 20).

`simulate_assortative` and `simulate_sibships` carry extra neutral variants
through the same pedigree as the instruments, on their own random streams.
These tests check that keeping the panel changes nothing else, that the panel
is inherited (siblings share it by descent), that it is stratified like the
instruments where the instruments are, and that it is unrelated to the traits.
"""

from __future__ import annotations

import numpy as np
import pytest

from invariant_mr.errors import InputError
from invariant_mr.simulation.assortative import simulate_assortative
from invariant_mr.simulation.fst import pairwise_hudson_fst
from invariant_mr.simulation.genetic_dataset import simulate_genetic
from invariant_mr.simulation.sibships import simulate_sibships

AM = dict(n_envs=3, n_per_env=600, n_variants=60, n_causal=15, n_causal_outcome=10, generations=3,
          mating_correlation=0.6, h2=0.6, seed=11)
SIB = dict(n_envs=3, n_families_per_env=300, n_sibs=2, n_variants=100, n_causal=20, n_causal_outcome=10,
           fst=0.05, admixture=0.2, generations=2, h2=0.6, seed=12)
N_NEUTRAL = 400


@pytest.fixture(scope="module")
def assortative_pair():
    return simulate_assortative(**AM), simulate_assortative(**AM, keep_genome=True, n_genome_variants=N_NEUTRAL)


@pytest.fixture(scope="module")
def sibships_pair():
    return simulate_sibships(**SIB), simulate_sibships(**SIB, keep_genome=True, n_genome_variants=N_NEUTRAL)


def _assert_same_simulation(plain, kept):
    """Every output but the panel and its two parameter entries is bit-identical."""
    for name in ("genotypes", "env", "sample_ids", "family_ids", "exposure", "outcome", "variant_ids", "chrom",
                 "pos", "allele_1", "allele_2"):
        assert np.array_equal(getattr(plain, name), getattr(kept, name)), name
    assert plain.covariates.keys() == kept.covariates.keys()
    for name in plain.covariates:
        assert np.array_equal(plain.covariates[name], kept.covariates[name]), name
    assert set(kept.latent) == set(plain.latent) | {"genome_genotypes"}
    for name in plain.latent:
        assert np.array_equal(plain.latent[name], kept.latent[name]), name
    truth = dict(kept.truth)
    parameters = dict(truth.pop("parameters"))
    assert parameters.pop("keep_genome") is True and parameters.pop("n_genome_variants") == N_NEUTRAL
    assert parameters == plain.truth["parameters"]  # without the panel, the parameters read as before
    assert truth == {k: v for k, v in plain.truth.items() if k != "parameters"}


def _panel(sim):
    genome = sim.latent["genome_genotypes"]
    assert genome.dtype == np.int8 and genome.shape == (sim.n, sim.m + N_NEUTRAL)
    assert np.array_equal(genome[:, :sim.m], sim.genotypes)  # the instruments come first
    assert set(np.unique(genome).tolist()) <= {0, 1, 2}
    return genome[:, sim.m:]


def _within_population_z(X, env):
    """Each column centred and scaled within each population (monomorphic columns left at 0)."""
    Z = np.zeros(X.shape)
    for level in np.unique(env):
        rows = env == level
        block = X[rows].astype(float)
        sd = block.std(axis=0)
        Z[rows] = (block - block.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    return Z


def _sibling_and_unrelated_pairs(sim):
    """(first sib, second sib) of every family, and as many pairs of people from distinct families of
    one population (each person's next-but-one neighbour in the population's family order)."""
    order = np.argsort(sim.family_ids, kind="stable")
    fam = sim.family_ids[order]
    starts = np.flatnonzero(np.r_[True, fam[1:] != fam[:-1]])
    sibs = (order[starts], order[starts + 1])
    a, b = order[starts[:-1]], order[starts[1:] + 1]  # first of family i, second of family i + 1
    same_pop = sim.env[a] == sim.env[b]
    return sibs, (a[same_pop], b[same_pop])


def _pair_correlation(Z, pairs):
    """Mean over variants of the correlation between the members of the pairs (genotypes standardised)."""
    i, j = pairs
    return float(np.mean(Z[i] * Z[j]))


def _mean_chi2(columns, y):
    """Mean of n r^2 over columns: about 1 for columns unrelated to y (chi-squared with 1 df each)."""
    Xc = columns - columns.mean(axis=0)
    keep = Xc.std(axis=0) > 0
    r = (Xc[:, keep] * (y - y.mean())[:, None]).mean(axis=0) / (Xc[:, keep].std(axis=0) * y.std())
    return float(len(y) * np.mean(r**2))


# ---------------------------------------------------------------- nothing else changes
@pytest.mark.parametrize("pair", ["assortative_pair", "sibships_pair"])
def test_keeping_the_genome_changes_nothing_else(pair, request):
    plain, kept = request.getfixturevalue(pair)
    assert "genome_genotypes" not in plain.latent
    assert not any("genome" in k for k in plain.truth["parameters"])
    _assert_same_simulation(plain, kept)
    _panel(kept)


def test_panel_is_deterministic_and_seeded_through_simulate_genetic():
    """The benchmark's call: simulate_genetic(model, seed=rep, **params, keep_genome=True)."""
    kw = dict(n_envs=2, n_per_env=60, n_variants=20, generations=1, keep_genome=True, n_genome_variants=30)
    a = simulate_genetic("assortative", seed=4, **kw)
    b = simulate_genetic("assortative", seed=4, **kw)
    c = simulate_genetic("assortative", seed=5, **kw)
    assert np.array_equal(a.latent["genome_genotypes"], b.latent["genome_genotypes"])
    assert not np.array_equal(a.latent["genome_genotypes"][:, 20:], c.latent["genome_genotypes"][:, 20:])
    skw = dict(n_envs=2, n_families_per_env=20, n_variants=20, generations=1, keep_genome=True, n_genome_variants=30)
    s = simulate_genetic("sibships", seed=4, **skw)
    assert np.array_equal(s.latent["genome_genotypes"], simulate_genetic("sibships", seed=4, **skw).latent[
        "genome_genotypes"])
    assert s.latent["genome_genotypes"].shape == (80, 50)
    # No neutral variant: the panel is the instruments alone.
    empty = simulate_sibships(n_envs=2, n_families_per_env=20, n_variants=20, generations=1, keep_genome=True,
                              n_genome_variants=0, seed=4)
    assert np.array_equal(empty.latent["genome_genotypes"], empty.genotypes)


def test_negative_panel_size_is_refused():
    with pytest.raises(InputError, match="n_genome_variants"):
        simulate_assortative(n_per_env=40, n_variants=20, keep_genome=True, n_genome_variants=-1)
    with pytest.raises(InputError, match="n_genome_variants"):
        simulate_sibships(n_families_per_env=20, n_variants=20, keep_genome=True, n_genome_variants=-1)


# ---------------------------------------------------------------- the panel is inherited
@pytest.mark.parametrize("which", ["assortative", "sibships"])
def test_siblings_share_the_neutral_panel_by_descent(which, assortative_pair, sibships_pair):
    """Full siblings are IBD 1/2 on average: their standardised neutral genotypes correlate about 0.5;
    people of distinct families in one population correlate about 0 (only the ancestry spread within a
    population and distant kinship add a little). The standard errors are about 0.003 here."""
    sim = (assortative_pair if which == "assortative" else sibships_pair)[1]
    Z = _within_population_z(_panel(sim), sim.env)
    sibs, unrelated = _sibling_and_unrelated_pairs(sim)
    assert len(sibs[0]) >= 800 and len(unrelated[0]) >= 800
    assert np.all(sim.family_ids[sibs[0]] == sim.family_ids[sibs[1]])
    assert np.all(sim.family_ids[unrelated[0]] != sim.family_ids[unrelated[1]])
    assert 0.44 < _pair_correlation(Z, sibs) < 0.56
    assert abs(_pair_correlation(Z, unrelated)) < 0.03


# ---------------------------------------------------------------- stratified like the instruments
def test_sibships_panel_is_as_differentiated_as_the_instruments(sibships_pair):
    """Same Balding-Nichols model and the founders' own ancestry: F_ST of the same order (it is an
    average over 100 and 400 variants of one F_ST draw each, so the ratio is near 1 but not exactly)."""
    sim = sibships_pair[1]
    neutral = pairwise_hudson_fst(_panel(sim), sim.env)
    instruments = pairwise_hudson_fst(sim.genotypes, sim.env)
    ratio = np.mean(list(neutral.values())) / np.mean(list(instruments.values()))
    assert 0.6 < ratio < 1.6, (neutral, instruments)
    assert min(neutral.values()) > 0.01  # F_ST 0.05 sources, 20% admixture: clearly structured


def test_assortative_panel_frequencies_are_shared_by_the_environments(assortative_pair):
    """Generation-0 frequencies are common to every environment, like the instruments': F_ST is drift only."""
    sim = assortative_pair[1]
    neutral = pairwise_hudson_fst(_panel(sim), sim.env)
    assert max(abs(v) for v in neutral.values()) < 0.01, neutral


# ---------------------------------------------------------------- unrelated to the traits
def test_assortative_neutral_columns_are_unrelated_to_the_traits(assortative_pair):
    """Mean n r^2 over 400 neutral columns is about 1 for unrelated people (its sd about 0.07). Relatives
    share both genotypes and traits, which inflates it on the whole sample (about 1.5 here, as much as on
    the null instruments): so one sibling per family (cousins remain, about 1.1) and siblings' differences
    (exactly Mendelian, about 1.0). The causal instruments are the positive control."""
    sim = assortative_pair[1]
    neutral = _panel(sim).astype(float)
    (a, b), _ = _sibling_and_unrelated_pairs(sim)
    for y in (sim.exposure, sim.outcome):
        assert _mean_chi2(neutral[a], y[a]) < 1.35
        assert _mean_chi2(neutral[a] - neutral[b], y[a] - y[b]) < 1.25
    causal = sim.genotypes[:, sim.truth["causal_variant_index"]].astype(float)
    assert _mean_chi2(causal[a], sim.exposure[a]) > 5


def test_sibships_neutral_columns_are_unrelated_to_the_traits_within_families(sibships_pair):
    """Between families the panel follows ancestry, which confounds the traits (as in real data), so the
    Mendelian check is within families: siblings' neutral differences are unrelated to their exposure and
    outcome differences, while the causal instruments' differences are not."""
    sim = sibships_pair[1]
    (a, b), _ = _sibling_and_unrelated_pairs(sim)
    dn = (_panel(sim)[a].astype(float) - _panel(sim)[b])
    for y in (sim.exposure, sim.outcome):
        assert _mean_chi2(dn, y[a] - y[b]) < 1.4
    causal = sim.truth["causal_variant_index"]
    dc = sim.genotypes[a][:, causal].astype(float) - sim.genotypes[b][:, causal]
    assert _mean_chi2(dc, sim.exposure[a] - sim.exposure[b]) > 3
