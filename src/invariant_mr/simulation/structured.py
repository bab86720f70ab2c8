"""Population structure that top principal components do not capture (issue 20, part 4).

Two unrelated-sample models on unlinked variants, both Balding-Nichols at
heart (`balding_nichols.py`), each with the reason PC adjustment fails:

* `simulate_demes`, fine-scale structure with local confounding. K regions
  (the environments), each split into `n_demes` small demes. Frequencies are
  nested: p_k ~ BN(p, F_region), p_kd ~ BN(p_k, F_deme). The confounder is
  local, a random environmental effect of each deme (Mathieson & McVean 2012,
  Nat Genet 44:243, "differential confounding ... in spatially structured
  populations"): H = local_sd * u_deme + N(0, 1 - ...). Structure has
  K * n_demes - 1 dimensions (23 by default), so 10 PCs leave most of the
  deme axes, and with them the confounding, in the instruments.
  In METHOD.md notation V is the deme membership (its frequencies 2 p_kd enter
  Z), W the Mendelian segregation Z - 2 p_kd.
* `simulate_nonlinear_ancestry`, admixed Balding-Nichols populations whose
  confounder is a convex function of ancestry: H = z(exp(curvature * s)),
  s a standardised random ancestry axis. Adjusting linearly for PCs removes the
  linear part of the confounder; whether the rest matters depends on whether
  the instruments' dependence on ancestry is linear (it is, E[Z | q] = 2 P'q,
  under admixture), which this scenario measures.

With `keep_genome=True` each model also draws `n_genome_variants` extra
neutral variants from the same frequencies and keeps [instruments, extra] in
`latent["genome_genotypes"]`, the genome-wide panel `run --pcs-from` would
read (the benchmark's `tsls_pcs_genome`).
"""

from __future__ import annotations

import numpy as np

from invariant_mr.errors import InputError
from invariant_mr.simulation.balding_nichols import (
    balding_nichols_frequencies,
    draw_ancestry,
    draw_genotypes,
    variant_annotations,
)
from invariant_mr.simulation.fst import pairwise_hudson_fst
from invariant_mr.simulation.genetic_dataset import GeneticSimulation
from invariant_mr.simulation.phenotypes import check_fraction, confounded_phenotypes, standardise


def _nested_frequencies(parent: np.ndarray, F: float, rng: np.random.Generator) -> np.ndarray:
    """Balding-Nichols draw of a child population's frequencies around `parent` (clipped off 0 and 1)."""
    p = np.clip(parent, 1e-3, 1 - 1e-3)
    return rng.beta(p * (1 - F) / F, (1 - p) * (1 - F) / F)


def _result(genotypes, env_codes, pheno, truth, latent, rng, prefix, genome=None) -> GeneticSimulation:
    n_envs = int(env_codes.max()) + 1
    labels = np.array([f"pop{k + 1}" for k in range(n_envs)], dtype=object)
    env = labels[env_codes]
    annotations = variant_annotations(genotypes.shape[1], rng)
    realised = pairwise_hudson_fst(genotypes, env)
    truth = {
        **pheno.truth, **truth,
        "hudson_fst_between_environments": {f"{a}-{b}": v for (a, b), v in realised.items()},
        "causal_variant_ids": [str(annotations["variant_ids"][j]) for j in pheno.truth["causal_variant_index"]],
    }
    return GeneticSimulation(
        genotypes=genotypes, env=env,
        sample_ids=np.array([f"{prefix}{i + 1:07d}" for i in range(len(env_codes))], dtype=object),
        exposure=pheno.exposure, outcome=pheno.outcome, covariates=pheno.covariates, truth=truth,
        latent={**latent, **pheno.latent, **({"genome_genotypes": genome} if genome is not None else {})},
        **annotations,
    )


def simulate_demes(
    *,
    n_envs: int = 3,
    n_demes: int = 8,
    n_per_env: int = 3000,
    n_variants: int = 200,
    fst_region: float = 0.05,
    fst_deme: float = 0.02,
    local_confounding: float = 0.8,
    theta: float = 1.0,
    n_causal: int | None = None,
    h2: float = 0.3,
    keep_genome: bool = False,
    n_genome_variants: int = 2000,
    seed: int = 0,
) -> GeneticSimulation:
    """Fine-scale structure (`n_demes` demes in each of `n_envs` regions) with a local, deme-level confounder."""
    if n_envs < 2 or n_demes < 2:
        raise InputError(f"need at least 2 environments and 2 demes each, got {n_envs} and {n_demes}")
    if n_per_env < 10 * n_demes:
        raise InputError(f"--n-per-env must be at least 10 per deme ({10 * n_demes}), got {n_per_env}")
    fst_region = check_fraction(fst_region, "fst_region", closed_low=False)
    fst_deme = check_fraction(fst_deme, "fst_deme", closed_low=False)
    local_confounding = check_fraction(local_confounding, "local_confounding", closed_high=True)
    rng = np.random.default_rng([seed, 0xDE])
    # The genome panel's frequencies are drawn whether kept or not, so the instruments do not depend on keep_genome.
    ancestral, region = balding_nichols_frequencies(n_envs, n_variants + n_genome_variants, fst_region, rng)
    deme = np.stack([_nested_frequencies(region[k], fst_deme, rng) for k in range(n_envs) for _ in range(n_demes)])
    env_codes = np.repeat(np.arange(n_envs), n_per_env)
    deme_codes = np.concatenate([k * n_demes + (np.arange(n_per_env) * n_demes) // n_per_env for k in range(n_envs)])
    genotypes = draw_genotypes(deme[deme_codes][:, :n_variants], rng)
    u = rng.standard_normal(n_envs * n_demes)
    u -= np.array([u[k * n_demes:(k + 1) * n_demes].mean() for k in range(n_envs)]).repeat(n_demes)
    # Within-region deme effects only: region means are absorbed by environment fixed effects anyway.
    local = u[deme_codes] / max(u.std(), 1e-12)
    H = np.sqrt(local_confounding) * local + np.sqrt(1 - local_confounding) * rng.standard_normal(len(env_codes))
    pheno = confounded_phenotypes(genotypes, env_codes, H, rng, theta=theta, n_causal=n_causal, h2=h2)
    # Drawn last, so that keeping the genome panel changes nothing else.
    genome = np.hstack([genotypes, draw_genotypes(deme[deme_codes][:, n_variants:], rng)]) if keep_genome else None
    parameters = {
        "n_envs": n_envs, "n_demes": n_demes, "n_per_env": n_per_env, "n_variants": n_variants,
        "fst_region": fst_region, "fst_deme": fst_deme, "local_confounding": local_confounding, "theta": theta,
        "n_causal": n_causal, "h2": h2, "keep_genome": keep_genome, "n_genome_variants": n_genome_variants,
    }
    truth = {
        "model": "demes", "phenotype_model": "local (deme-level) confounding", "seed": seed, "parameters": parameters,
        "components": {"V": "deme membership (frequencies 2 p_kd)", "W": "Mendelian segregation Z - 2 p_kd"},
        "structure_dimensions": n_envs * n_demes - 1,
    }
    latent = {"deme": deme_codes, "deme_frequencies": deme[:, :n_variants], "ancestral_frequencies": ancestral[:n_variants]}
    return _result(genotypes, env_codes, pheno, truth, latent, rng, "dm", genome)


def simulate_nonlinear_ancestry(
    *,
    n_envs: int = 3,
    n_per_env: int = 3000,
    n_variants: int = 200,
    fst: float = 0.1,
    admixture: float = 0.3,
    admixture_concentration: float = 2.0,
    curvature: float = 1.5,
    ancestry_confounding: float = 0.8,
    theta: float = 1.0,
    n_causal: int | None = None,
    h2: float = 0.3,
    keep_genome: bool = False,
    n_genome_variants: int = 2000,
    seed: int = 0,
) -> GeneticSimulation:
    """Admixed Balding-Nichols populations with a confounder convex in ancestry: H = z(exp(curvature * s))."""
    if n_envs < 2:
        raise InputError(f"--envs must be at least 2, got {n_envs}")
    fst = check_fraction(fst, "--fst", closed_low=False)
    admixture = check_fraction(admixture, "--admixture")
    if admixture >= (n_envs - 1) / n_envs:
        raise InputError(f"--admixture must be below {(n_envs - 1) / n_envs:.3f} for {n_envs} environments")
    ancestry_confounding = check_fraction(ancestry_confounding, "ancestry_confounding", closed_high=True)
    lam = 1 - admixture * n_envs / (n_envs - 1)
    rng = np.random.default_rng([seed, 0xC0])
    env_codes = np.repeat(np.arange(n_envs), n_per_env)
    ancestral, source = balding_nichols_frequencies(n_envs, n_variants + n_genome_variants, min(fst / lam**2, 0.9), rng)
    q = draw_ancestry(env_codes, n_envs, admixture, admixture_concentration, rng)
    genotypes = draw_genotypes(q @ source[:, :n_variants], rng)
    s = standardise(q @ rng.standard_normal(n_envs))
    H = (np.sqrt(ancestry_confounding) * standardise(np.exp(curvature * s))
         + np.sqrt(1 - ancestry_confounding) * rng.standard_normal(len(env_codes)))
    pheno = confounded_phenotypes(genotypes, env_codes, H, rng, theta=theta, n_causal=n_causal, h2=h2)
    genome = np.hstack([genotypes, draw_genotypes(q @ source[:, n_variants:], rng)]) if keep_genome else None
    parameters = {
        "n_envs": n_envs, "n_per_env": n_per_env, "n_variants": n_variants, "fst": fst, "admixture": admixture,
        "admixture_concentration": admixture_concentration, "curvature": curvature,
        "ancestry_confounding": ancestry_confounding, "theta": theta, "n_causal": n_causal, "h2": h2,
        "keep_genome": keep_genome, "n_genome_variants": n_genome_variants,
    }
    truth = {
        "model": "nonlinear-ancestry", "phenotype_model": "confounder convex in ancestry", "seed": seed,
        "parameters": parameters,
        "components": {"V": "ancestry proportions q", "W": "Mendelian segregation Z - 2 P'q"},
    }
    latent = {"ancestry": q, "source_frequencies": source[:, :n_variants]}
    return _result(genotypes, env_codes, pheno, truth, latent, rng, "nl", genome)


__all__ = ["simulate_demes", "simulate_nonlinear_ancestry"]
