"""Assortative mating over generations: a forward simulation on unlinked variants.

Follows the design of Hartwig, Davies & Davey Smith (2018, Genet Epidemiol,
doi 10.1002/gepi.22138): the exposure and the outcome each have their own
causal variants; in every generation mates are paired so that their mating
phenotypes have a chosen correlation, either the same trait in both partners
("exposure") or one partner's exposure with the other's outcome ("cross",
their cross-trait scenario, the one that biases MR). Pairing on phenotype
correlates the trait alleles a child receives from its two parents, so
cross-locus correlation (gametic-phase disequilibrium) and the variance of
the genetic scores build up generation by generation, towards an equilibrium.

Generation 0 is in Hardy-Weinberg and linkage equilibrium at frequencies
p_j ~ U(0.1, 0.9) shared by every environment. Each couple has two children,
so the population size is constant; a parent transmits the counted allele
with probability dosage / 2 at every locus independently (unlinked loci).

Environments are populations that mate with different strength: with K
environments, environment k (0-based) has partner correlation
`mating_correlation * k / (K - 1)`, so the first one mates at random. Allele
frequencies, hence the first moments of the genotypes, are the same in
every environment up to drift; only the covariance along the trait-score
directions differs. The final generation is the sample; siblings share a
family id (the .fam FID).

See `phenotypes.family_phenotypes` for the phenotypes and for V and W.

With `keep_genome=True` the simulation also carries `n_genome_variants`
neutral variants through the same pedigree, for genome-wide PCs (the
benchmark's `--prep genome-pcs`): generation-0 founders in Hardy-Weinberg at
their own frequencies U(0.1, 0.9), shared by the environments like the
instruments', then transmitted from the same mothers and fathers every
generation, so siblings share them identical by descent as in real data.
They affect no trait, hence take no part in choosing mates. Everything about
them is drawn from separate random streams, so keeping them changes no other
output; `latent["genome_genotypes"]` is [instruments, neutral] (int8).
"""

from __future__ import annotations

import numpy as np

from invariant_mr.errors import InputError
from invariant_mr.simulation.balding_nichols import draw_genotypes, variant_annotations
from invariant_mr.simulation.genetic_dataset import GeneticSimulation
from invariant_mr.simulation.phenotypes import (
    FamilyTraitModel,
    check_fraction,
    causal_counts,
    demographic_covariates,
    family_phenotypes,
    standardise,
)

MATING_TRAITS = ("cross", "exposure")


def transmit(parent_genotypes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One gamete per parent: the counted allele with probability dosage / 2 (0, 1/2, 1)."""
    return (rng.random(parent_genotypes.shape, dtype=np.float32) * 2 < parent_genotypes).astype(np.int8)


def pair_mates(
    mating_female: np.ndarray, mating_male: np.ndarray, correlation: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (females, males) of couples whose mating phenotypes correlate about `correlation`.

    Each partner is ranked on sqrt(r) z + sqrt(1 - r) e (z the standardised
    phenotype, e fresh noise), and the i-th ranked female marries the i-th
    ranked male. The ranking scores then correlate almost perfectly, so the
    phenotypes correlate about sqrt(r) * sqrt(r) = r. r = 0 is random mating.
    """
    def ranking(values):
        z = (values - values.mean()) / values.std()
        return np.sqrt(correlation) * z + np.sqrt(1 - correlation) * rng.standard_normal(len(values))

    return np.argsort(ranking(mating_female)), np.argsort(ranking(mating_male))


def cross_locus_correlation(genotypes: np.ndarray, index: np.ndarray, effects: np.ndarray) -> float:
    """Mean correlation between distinct trait loci, each coded so its allele raises the trait.

    Zero in linkage equilibrium; assortative mating on the trait makes it positive.
    """
    X = genotypes[:, index].astype(np.float64) * np.sign(effects)
    C = np.corrcoef(X, rowvar=False)
    k = C.shape[0]
    return float((C.sum() - np.trace(C)) / (k * (k - 1)))


def _simulate_population(
    n: int, generations: int, correlation: float, mating_traits: str, model: FamilyTraitModel,
    rng: np.random.Generator, neutral_frequencies: np.ndarray | None = None,
    neutral_rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict], np.ndarray | None]:
    """Genotypes, family environment and family ids of the last generation, per-generation stats, and
    the neutral panel of the last generation (None unless `neutral_frequencies` are given).

    The neutral panel draws only from `neutral_rng`, never from `rng`, so the
    pedigree, and with it every other output, is the same with or without it.
    """
    p = model.base_frequencies
    G = ((rng.random((n, len(p)), dtype=np.float32) < p).astype(np.int8)
         + (rng.random((n, len(p)), dtype=np.float32) < p))
    neutral = None
    if neutral_frequencies is not None:
        m = len(neutral_frequencies)
        neutral = draw_genotypes(np.broadcast_to(neutral_frequencies, (n, m)), neutral_rng)
    F = np.zeros(n)  # generation 0 has no modelled parents
    families = np.arange(n)
    history = []
    for gen in range(generations + 1):
        D, Y, scores = family_phenotypes(G, F, model, rng)
        history.append({
            "generation": gen,
            "exposure_score_variance": float(scores["G_exposure"].var()),
            "outcome_score_variance": float(scores["G_outcome"].var()),
            "exposure_outcome_score_correlation": float(np.corrcoef(scores["G_exposure"], scores["G_outcome"])[0, 1]),
            "exposure_cross_locus_correlation": cross_locus_correlation(G, model.exposure_index, model.exposure_effects),
        })
        if gen == generations:
            break
        # Alternate sexes; a couple is one female and one male.
        order = rng.permutation(n)
        females, males = order[: n // 2], order[n // 2: 2 * (n // 2)]
        mate_f = D[females]
        mate_m = (Y if mating_traits == "cross" else D)[males]
        rank_f, rank_m = pair_mates(mate_f, mate_m, correlation, rng)
        mothers, fathers = females[rank_f], males[rank_m]
        history[-1]["partner_correlation"] = float(np.corrcoef(mate_f[rank_f], mate_m[rank_m])[0, 1])
        # Two children per couple keep the size constant (plus one extra child when n is odd).
        n_couples = len(mothers)
        child_couple = np.concatenate([np.arange(n_couples), np.arange(n_couples), np.arange(n - 2 * n_couples)])
        G = transmit(G[mothers[child_couple]], rng) + transmit(G[fathers[child_couple]], rng)
        if neutral is not None:
            # Same parents as the instruments: the panel carries the pedigree (IBD between siblings).
            neutral = (transmit(neutral[mothers[child_couple]], neutral_rng)
                       + transmit(neutral[fathers[child_couple]], neutral_rng))
        F = standardise((D[mothers] + D[fathers])[child_couple] / 2)
        families = child_couple
    return G, F, families, history, neutral


def simulate_assortative(
    *,
    n_envs: int = 3,
    n_per_env: int = 3000,
    n_variants: int = 500,
    generations: int = 5,
    mating_correlation: float = 0.5,
    mating_traits: str = "cross",
    theta: float = 1.0,
    n_causal: int | None = None,
    n_causal_outcome: int | None = None,
    h2: float = 0.3,
    h2_outcome: float = 0.3,
    family_effect: float = 0.3,
    keep_genome: bool = False,
    n_genome_variants: int = 2000,
    seed: int = 0,
) -> GeneticSimulation:
    """K populations with assortative mating of increasing strength, `generations` generations long.

    `n_causal` exposure variants and `n_causal_outcome` outcome variants are
    disjoint; the remaining variants are null. `mating_correlation` is the
    partner correlation in the last environment (the first mates at random).
    `keep_genome` adds `n_genome_variants` neutral variants inherited through
    the same pedigree (see the module docstring); nothing else changes.
    """
    if n_envs < 2:
        raise InputError(f"--envs must be at least 2, got {n_envs}")
    if n_per_env < 20:
        raise InputError(f"--n-per-env must be at least 20, got {n_per_env}")
    if generations < 0:
        raise InputError(f"--generations must be non-negative, got {generations}")
    if mating_traits not in MATING_TRAITS:
        raise InputError(f"--mating-traits must be one of {', '.join(MATING_TRAITS)}, got {mating_traits!r}")
    mating_correlation = check_fraction(mating_correlation, "--mating-correlation", closed_high=False)
    h2 = check_fraction(h2, "h2", closed_low=False)
    h2_outcome = check_fraction(h2_outcome, "h2_outcome")
    n_causal, n_causal_outcome = causal_counts(n_variants, n_causal, n_causal_outcome)
    if keep_genome and n_genome_variants < 0:
        raise InputError(f"n_genome_variants must be non-negative, got {n_genome_variants}")

    rng = np.random.default_rng([seed, 0xA550])
    p = rng.uniform(0.1, 0.9, size=n_variants)
    causal = rng.choice(n_variants, size=n_causal + n_causal_outcome, replace=False)
    exposure_index, outcome_index = np.sort(causal[:n_causal]), np.sort(causal[n_causal:])
    model = FamilyTraitModel(
        exposure_index=exposure_index,
        exposure_effects=rng.standard_normal(n_causal),
        outcome_index=outcome_index,
        outcome_effects=rng.standard_normal(n_causal_outcome),
        base_frequencies=p,
        theta=float(theta),
        h2_exposure=h2,
        h2_outcome=h2_outcome,
        family_effect=float(family_effect),
    )
    strengths = [mating_correlation * k / (n_envs - 1) for k in range(n_envs)]
    # The neutral panel's own streams: 0xA552 for its frequencies, 0xA553 per population. Distinct
    # second words, because SeedSequence pads with zeros, so [seed, a] and [seed, a, 0] are one stream.
    neutral_p = None
    if keep_genome:
        neutral_p = np.random.default_rng([seed, 0xA552]).uniform(0.1, 0.9, size=n_genome_variants)
    blocks, neutral_blocks, fam_env, fam_ids, env, histories = [], [], [], [], [], {}
    for k, r in enumerate(strengths):
        label = f"pop{k + 1}"
        G, F, families, history, neutral = _simulate_population(
            n_per_env, generations, r, mating_traits, model, np.random.default_rng([seed, 0xA551, k]),
            neutral_p, np.random.default_rng([seed, 0xA553, k]) if keep_genome else None,
        )
        blocks.append(G)
        neutral_blocks.append(neutral)
        fam_env.append(F)
        fam_ids.extend(f"{label}_fam{f + 1:06d}" for f in families)
        env.extend([label] * n_per_env)
        histories[label] = history
    G = np.concatenate(blocks)
    F = np.concatenate(fam_env)
    n = G.shape[0]
    covariates = demographic_covariates(n, rng)
    D, Y, scores = family_phenotypes(G, F, model, rng, covariates)
    annotations = variant_annotations(n_variants, rng)
    annotations["variant_ids"] = np.array([f"am{j + 1:06d}" for j in range(n_variants)], dtype=object)
    parameters = {
        "n_envs": n_envs, "n_per_env": n_per_env, "n_variants": n_variants, "generations": generations,
        "mating_correlation": mating_correlation, "mating_traits": mating_traits, "theta": theta,
        "n_causal": n_causal, "n_causal_outcome": n_causal_outcome, "h2": h2, "h2_outcome": h2_outcome,
        "family_effect": family_effect,
        # Only when kept, so the parameters of every run without the panel read as before.
        **({"keep_genome": True, "n_genome_variants": n_genome_variants} if keep_genome else {}),
    }
    ids = annotations["variant_ids"]
    truth = {
        "theta": float(theta),
        "model": "assortative",
        "phenotype_model": "family",
        "seed": seed,
        "parameters": parameters,
        "partner_correlation_by_environment": dict(zip([f"pop{k + 1}" for k in range(n_envs)], strengths)),
        "n_causal": n_causal,
        "causal_variant_index": exposure_index.tolist(),
        "causal_variant_ids": [str(ids[j]) for j in exposure_index],
        "causal_effects": model.exposure_effects.tolist(),
        "outcome_variant_ids": [str(ids[j]) for j in outcome_index],
        "outcome_effects": model.outcome_effects.tolist(),
        "generation_history": histories,
        "components": {
            "V": "outcome-score direction and the exposure-variant components that mating and "
                 "transmission correlate with the outcome score and the family environment",
            "W": "exposure and null variant components independent of the outcome score and family environment",
        },
    }
    sample_ids = np.array([f"{e}_{i + 1:06d}" for i, e in enumerate(env)], dtype=object)
    return GeneticSimulation(
        genotypes=G,
        env=np.array(env, dtype=object),
        sample_ids=sample_ids,
        exposure=D,
        outcome=Y,
        covariates=covariates,
        truth=truth,
        latent={"base_frequencies": p, **scores, "H": np.column_stack([scores["G_outcome"], F]),
                **({"genome_genotypes": np.hstack([G, np.concatenate(neutral_blocks)])} if keep_genome else {})},
        family_ids=np.array(fam_ids, dtype=object),
        **annotations,
    )
