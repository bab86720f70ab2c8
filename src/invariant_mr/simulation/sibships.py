"""Sibling families under stratification, assortative mating and a dynastic effect.

The data a within-family MR study sees (Brumpton et al. 2020): sibships drawn
from structured populations, in which the three biases of population MR all
act at once, and all three act between families:

* **Stratification.** K Balding-Nichols populations (`balding_nichols`) with
  admixture, so ancestry varies within every population too. A founder's
  ancestry proportions q set its allele frequencies; a child's ancestry is
  its parents' mean. The confounder `H_anc` (a random axis of ancestry,
  standardised) raises exposure and outcome.
* **Assortative mating.** In each of `generations` generations, mates are
  paired within their population on exposure (female) and outcome (male),
  the cross-trait design of Hartwig et al. (2018), with a partner correlation
  that grows across environments (`mating_correlation * k / (K - 1)`, the
  first mates at random). It correlates the exposure and outcome genetic
  scores between families.
* **Dynastic effect.** The parents' mean exposure `F` (standardised) raises
  the child's outcome (`dynastic`) and exposure (`family_effect`): an effect
  of the parents' genotypes that does not go through the child's exposure.
* A household effect `c` shared by siblings (`household_sd`) enters both
  traits, so errors correlate within families and SEs must be clustered.

Final generation (each couple has `n_sibs` children, the sample):

    D = sqrt(h2) G_D + sqrt(1 - h2) e_D + s H_anc + f F + c + H_ind
    Y = theta D + sqrt(h2_Y) G_Y + s H_anc + delta F + c + H_ind + e_Y

with G_D, G_Y the standardised exposure and outcome scores on disjoint
variants (the remaining variants are null), s = `stratification`,
delta = `dynastic`, H_ind ~ N(0, 1) an individual confounder.

Why within-family MR is valid here: given the parents' genotypes, a child's
genotype is the Mendelian lottery, independent of everything the siblings
share (H_anc, F, c) and of H_ind; unlinked loci segregate independently, so
the child's exposure and outcome scores are independent within the family.
The family fixed effect removes everything shared.

With `keep_genome=True` the simulation also carries `n_genome_variants`
neutral variants, for genome-wide PCs (the benchmark's `--prep genome-pcs`).
Their source frequencies come from the same Balding-Nichols model as the
instruments' (same K populations, same F_ST); each founder draws them at its
own ancestry mix q, like its instruments, so the panel carries the same
stratification; they are then transmitted from the same mothers and fathers
every generation, so siblings share them identical by descent, as in real
data. They affect no trait. Everything about them is drawn from separate
random streams, so keeping them changes no other output;
`latent["genome_genotypes"]` is [instruments, neutral] (int8).
"""

from __future__ import annotations

import numpy as np

from invariant_mr.errors import InputError
from invariant_mr.simulation.assortative import pair_mates, transmit
from invariant_mr.simulation.balding_nichols import (
    balding_nichols_frequencies,
    draw_ancestry,
    draw_genotypes,
    variant_annotations,
)
from invariant_mr.simulation.genetic_dataset import GeneticSimulation
from invariant_mr.simulation.phenotypes import (
    FamilyTraitModel,
    check_fraction,
    causal_counts,
    demographic_covariates,
    standardise,
)


def simulate_sibships(
    *,
    n_envs: int = 3,
    n_families_per_env: int = 1500,
    n_sibs: int = 2,
    n_variants: int = 200,
    fst: float = 0.05,
    admixture: float = 0.2,
    generations: int = 3,
    mating_correlation: float = 0.5,
    theta: float = 1.0,
    n_causal: int | None = None,
    n_causal_outcome: int | None = None,
    h2: float = 0.4,
    h2_outcome: float = 0.3,
    stratification: float = 0.5,
    family_effect: float = 0.3,
    dynastic: float = 0.3,
    household_sd: float = 0.5,
    keep_genome: bool = False,
    n_genome_variants: int = 2000,
    seed: int = 0,
) -> GeneticSimulation:
    """Sibships (n = n_envs * n_families_per_env * n_sibs) with their truth; see the module docstring.

    Environments are the populations `pop1`..`popK`; `family_ids` are the
    .fam FIDs (`write_fileset` writes them). `latent["H"]` holds every
    confounder (H_anc, F, c, H_ind) and the outcome score, for the oracle.
    `keep_genome` adds `n_genome_variants` neutral variants inherited through
    the same pedigree (see the module docstring); nothing else changes.
    """
    if n_envs < 2:
        raise InputError(f"--envs must be at least 2, got {n_envs}")
    if n_families_per_env < 10:
        raise InputError(f"need at least 10 families per environment, got {n_families_per_env}")
    if n_sibs < 2:
        raise InputError(f"a sibship design needs at least 2 siblings per family, got {n_sibs}")
    if generations < 0:
        raise InputError(f"--generations must be non-negative, got {generations}")
    mating_correlation = check_fraction(mating_correlation, "--mating-correlation")
    admixture = check_fraction(admixture, "--admixture")
    h2 = check_fraction(h2, "h2", closed_low=False)
    h2_outcome = check_fraction(h2_outcome, "h2_outcome")
    n_causal, n_causal_outcome = causal_counts(n_variants, n_causal, n_causal_outcome)
    if keep_genome and n_genome_variants < 0:
        raise InputError(f"n_genome_variants must be non-negative, got {n_genome_variants}")

    rng = np.random.default_rng([seed, 0x51B5])
    p_ancestral, source_freq = balding_nichols_frequencies(n_envs, n_variants, fst, rng)
    causal = rng.choice(n_variants, size=n_causal + n_causal_outcome, replace=False)
    model = FamilyTraitModel(
        exposure_index=np.sort(causal[:n_causal]), exposure_effects=rng.standard_normal(n_causal),
        outcome_index=np.sort(causal[n_causal:]), outcome_effects=rng.standard_normal(n_causal_outcome),
        base_frequencies=p_ancestral, theta=float(theta), h2_exposure=h2, h2_outcome=h2_outcome,
        family_effect=float(family_effect),
    )
    axis = rng.standard_normal(n_envs)  # the ancestry direction that carries the confounding

    # The neutral panel's own streams: 0x51B7 for its frequencies, 0x51B8 per population. Distinct
    # second words, because SeedSequence pads with zeros, so [seed, a] and [seed, a, 0] are one stream.
    neutral_source = None
    if keep_genome:
        _, neutral_source = balding_nichols_frequencies(
            n_envs, n_genome_variants, fst, np.random.default_rng([seed, 0x51B7]))

    n_parents = 2 * n_families_per_env
    blocks = []
    for k in range(n_envs):
        r = mating_correlation * k / (n_envs - 1)
        blocks.append(_population(k, n_parents, n_sibs, generations, r, source_freq, admixture, axis, model,
                                  stratification, np.random.default_rng([seed, 0x51B6, k]), neutral_source,
                                  np.random.default_rng([seed, 0x51B8, k]) if keep_genome else None))

    G = np.concatenate([b["G"] for b in blocks])
    s_anc = np.concatenate([b["ancestry"] for b in blocks])
    parent_D = np.concatenate([b["parent_D"] for b in blocks])
    env = np.concatenate([[f"pop{k + 1}"] * len(b["G"]) for k, b in enumerate(blocks)]).astype(object)
    family_ids = np.concatenate(
        [[f"pop{k + 1}_fam{f + 1:06d}" for f in b["family"]] for k, b in enumerate(blocks)]
    ).astype(object)
    family_code = np.unique(family_ids, return_inverse=True)[1]
    n = G.shape[0]
    H_anc = standardise(s_anc)
    F = standardise(parent_D)
    household = household_sd * rng.standard_normal(family_code.max() + 1)[family_code]
    H_ind = rng.standard_normal(n)
    G_D = model.score(G, "exposure")
    G_Y = model.score(G, "outcome")
    covariates = demographic_covariates(n, rng)
    D = (np.sqrt(h2) * G_D + np.sqrt(1 - h2) * rng.standard_normal(n) + stratification * H_anc
         + family_effect * F + household + H_ind)
    Y = (theta * D + np.sqrt(h2_outcome) * G_Y + stratification * H_anc + dynastic * F + household + H_ind
         + rng.standard_normal(n))

    annotations = variant_annotations(n_variants, rng)
    annotations["variant_ids"] = np.array([f"sib{j + 1:06d}" for j in range(n_variants)], dtype=object)
    ids = annotations["variant_ids"]
    parameters = {
        "n_envs": n_envs, "n_families_per_env": n_families_per_env, "n_sibs": n_sibs, "n_variants": n_variants,
        "fst": fst, "admixture": admixture, "generations": generations, "mating_correlation": mating_correlation,
        "theta": theta, "n_causal": n_causal, "n_causal_outcome": n_causal_outcome, "h2": h2,
        "h2_outcome": h2_outcome, "stratification": stratification, "family_effect": family_effect,
        "dynastic": dynastic, "household_sd": household_sd,
        # Only when kept, so the parameters of every run without the panel read as before.
        **({"keep_genome": True, "n_genome_variants": n_genome_variants} if keep_genome else {}),
    }
    truth = {
        "theta": float(theta),
        "model": "sibships",
        "phenotype_model": "sibships",
        "seed": seed,
        "parameters": parameters,
        "partner_correlation_by_environment": {
            f"pop{k + 1}": mating_correlation * k / (n_envs - 1) for k in range(n_envs)},
        "realised_partner_correlation": {f"pop{k + 1}": b["partner_correlation"] for k, b in enumerate(blocks)},
        "n_families": int(family_code.max() + 1),
        "n_causal": n_causal,
        "causal_variant_index": model.exposure_index.tolist(),
        "causal_variant_ids": [str(ids[j]) for j in model.exposure_index],
        "causal_effects": model.exposure_effects.tolist(),
        "outcome_variant_ids": [str(ids[j]) for j in model.outcome_index],
        "outcome_effects": model.outcome_effects.tolist(),
        "components": {
            "between-family (confounded)": "ancestry H_anc, parents' exposure F (dynastic), household c, "
                                            "and the cross-trait score correlation built by assortative mating",
            "within-family (valid)": "each child's Mendelian deviation from its parents' mean genotype",
        },
    }
    sample_ids = np.array([f"{e}_{i + 1:06d}" for i, e in enumerate(env)], dtype=object)
    return GeneticSimulation(
        genotypes=G, env=env, sample_ids=sample_ids, exposure=D, outcome=Y, covariates=covariates, truth=truth,
        latent={"H": np.column_stack([H_anc, F, household, H_ind, G_Y]), "ancestry": s_anc, "F": F,
                "G_exposure": G_D, "G_outcome": G_Y,
                **({"genome_genotypes": np.hstack([G, np.concatenate([b["neutral"] for b in blocks])])}
                   if keep_genome else {})},
        family_ids=family_ids, **annotations,
    )


def _population(k, n_parents, n_sibs, generations, correlation, source_freq, admixture, axis, model,
                stratification, rng, neutral_source=None, neutral_rng=None) -> dict:
    """One population: founders, `generations` rounds of assortative mating, then the sibships.

    With `neutral_source` (K x m source frequencies) the founders also draw a
    neutral panel at their own ancestry q, carried down the same pedigree with
    `neutral_rng` only, so `rng`'s draws, hence everything else, are unchanged.
    """
    n_envs = source_freq.shape[0]
    q = draw_ancestry(np.full(n_parents, k), n_envs, admixture if n_envs > 1 else 0.0, 4.0, rng)
    G = draw_genotypes(q @ source_freq, rng)
    neutral = None if neutral_source is None else draw_genotypes(q @ neutral_source, neutral_rng)
    ancestry = q @ axis
    partner_r = float("nan")
    for gen in range(generations + 1):
        # Each generation's traits, for choosing mates; the population's own ancestry spread sets H_anc.
        h = stratification * standardise(ancestry)
        D = np.sqrt(model.h2_exposure) * model.score(G, "exposure") + h + rng.standard_normal(len(G))
        Y = model.theta * D + np.sqrt(model.h2_outcome) * model.score(G, "outcome") + h + rng.standard_normal(len(G))
        order = rng.permutation(len(G))
        half = len(G) // 2
        females, males = order[:half], order[half: 2 * half]
        rank_f, rank_m = pair_mates(D[females], Y[males], correlation, rng)
        mothers, fathers = females[rank_f], males[rank_m]
        partner_r = float(np.corrcoef(D[mothers], Y[fathers])[0, 1])
        last = gen == generations
        per_couple = n_sibs if last else 2
        couple = np.repeat(np.arange(half), per_couple)
        G = transmit(G[mothers[couple]], rng) + transmit(G[fathers[couple]], rng)
        if neutral is not None:
            # Same parents as the instruments: the panel carries the pedigree (IBD between siblings).
            neutral = transmit(neutral[mothers[couple]], neutral_rng) + transmit(neutral[fathers[couple]], neutral_rng)
        parent_D = ((D[mothers] + D[fathers]) / 2)[couple]
        ancestry = ((ancestry[mothers] + ancestry[fathers]) / 2)[couple]
    return {"G": G, "ancestry": ancestry, "parent_D": parent_D, "family": couple,
            "partner_correlation": partner_r, "neutral": neutral}


__all__ = ["simulate_sibships"]
