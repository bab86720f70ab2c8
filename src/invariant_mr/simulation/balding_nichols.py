"""Balding-Nichols populations with admixture: stratification on unlinked variants.

Model (Balding & Nichols 1995; the form used by hail's `balding_nichols_model`):

* ancestral frequency of variant j: p_j ~ U(0.1, 0.9);
* source population s = 1..K: p_sj ~ Beta(p_j (1 - F) / F, (1 - p_j)(1 - F) / F),
  so that the expected pairwise Hudson F_ST between two sources is F;
* individual i sampled in environment k has ancestry proportions
  q_i ~ Dirichlet(c * b_k), with b_k putting mass 1 - m on source k and m / (K - 1)
  on each other source (m = `admixture`, c = `admixture_concentration`),
  so ancestry varies within every population, as in a real biobank;
* genotype Z_ij ~ Binomial(2, pi_ij), pi_ij = sum_s q_is p_sj.

Mixing makes environments closer than their sources: the environment means
are lambda p_k + const with lambda = 1 - m K / (K - 1). The source F is
therefore set to `fst / lambda^2`, so that `fst` is the F_ST between the
sampled environments, the quantity a user would measure. The realised
pairwise Hudson F_ST is stored in the truth.

In METHOD.md notation, `Z = 2 P' q + W`: a linear mixing of the ancestry
proportions `V = q` (confounded: its distribution differs across
environments, and the confounder H is a function of it, see
`phenotypes.stratified_phenotypes`) and the Mendelian segregation noise
`W = Z - 2 P' q`, which is independent of H given q. W's covariance depends
weakly on the environment (Var = 2 pi (1 - pi)), so the invariance is
approximate, to order F_ST.
"""

from __future__ import annotations

import numpy as np

from invariant_mr.errors import InputError
from invariant_mr.simulation.fst import pairwise_hudson_fst
from invariant_mr.simulation.genetic_dataset import GeneticSimulation
from invariant_mr.simulation.phenotypes import check_fraction, stratified_phenotypes

_BASES = np.array(["A", "C", "G", "T"], dtype=object)

#: Rows of genotypes drawn at once; bounds the float32 work arrays to ~ 3 x rows x m x 4 bytes.
_CHUNK_ROWS = 8192


def balding_nichols_frequencies(
    n_sources: int, n_variants: int, fst: float, rng: np.random.Generator, freq_range=(0.1, 0.9)
) -> tuple[np.ndarray, np.ndarray]:
    """Ancestral frequencies (m,) and per-source frequencies (K, m)."""
    fst = check_fraction(fst, "--fst", closed_low=False)
    lo, hi = freq_range
    p = rng.uniform(lo, hi, size=n_variants)
    a = p * (1 - fst) / fst
    b = (1 - p) * (1 - fst) / fst
    return p, rng.beta(a, b, size=(n_sources, n_variants))


def draw_genotypes(freqs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """int8 dosages ~ Binomial(2, freqs) as two uniform-vs-frequency comparisons (7x faster than binomial)."""
    n, m = freqs.shape
    out = np.empty((n, m), dtype=np.int8)
    for start in range(0, n, _CHUNK_ROWS):
        f = freqs[start:start + _CHUNK_ROWS].astype(np.float32, copy=False)
        g = (rng.random(f.shape, dtype=np.float32) < f).astype(np.int8)
        g += rng.random(f.shape, dtype=np.float32) < f
        out[start:start + _CHUNK_ROWS] = g
    return out


def draw_ancestry(
    env_codes: np.ndarray, n_sources: int, admixture: float, concentration: float, rng: np.random.Generator
) -> np.ndarray:
    """Ancestry proportions (n, K): mostly the environment's own source, some admixture."""
    q = np.zeros((len(env_codes), n_sources))
    if admixture == 0:
        q[np.arange(len(env_codes)), env_codes] = 1.0
        return q
    for k in range(n_sources):
        rows = np.flatnonzero(env_codes == k)
        base = np.full(n_sources, admixture / (n_sources - 1))
        base[k] = 1 - admixture
        q[rows] = rng.dirichlet(concentration * base, size=len(rows))
    return q


def variant_annotations(n_variants: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Unlinked variants spread over chromosomes 1-22, about 1 Mb apart, random ref/alt bases."""
    chrom = 1 + (np.arange(n_variants) * 22) // n_variants
    pos = np.empty(n_variants, dtype=np.int64)
    for c in np.unique(chrom):
        rows = np.flatnonzero(chrom == c)
        pos[rows] = 1_000_000 * (1 + np.arange(len(rows))) + rng.integers(0, 500_000, size=len(rows))
    pairs = np.array([rng.choice(4, size=2, replace=False) for _ in range(n_variants)])
    return {
        "variant_ids": np.array([f"bn{j + 1:06d}" for j in range(n_variants)], dtype=object),
        "chrom": chrom.astype(str).astype(object),
        "pos": pos,
        "allele_1": _BASES[pairs[:, 0]],
        "allele_2": _BASES[pairs[:, 1]],
    }


def simulate_balding_nichols(
    *,
    n_envs: int = 3,
    n_per_env: int = 2000,
    n_variants: int = 500,
    fst: float = 0.1,
    admixture: float = 0.1,
    admixture_concentration: float = 4.0,
    theta: float = 1.0,
    n_causal: int | None = None,
    h2: float = 0.3,
    ancestry_confounding: float = 0.5,
    within_confounding: float = 0.5,
    within_correlation: float = 0.6,
    keep_genome: bool = False,
    n_genome_variants: int = 2000,
    seed: int = 0,
) -> GeneticSimulation:
    """K admixed Balding-Nichols populations with stratified exposure and outcome.

    Environments are the K sampled populations (`pop1`..`popK`). See the module
    docstring for the genotype model and `phenotypes.stratified_phenotypes` for
    the phenotypes; `seed` fixes everything.

    `keep_genome` also draws `n_genome_variants` neutral variants from the same
    model (the same ancestry proportions, source frequencies of the same F_ST)
    and keeps [instruments, extra] in `latent["genome_genotypes"]`, the
    genome-wide panel `run --pcs-from` would read. The panel has its own random
    stream, so keeping it changes nothing else.
    """
    if n_envs < 2:
        raise InputError(f"--envs must be at least 2, got {n_envs}")
    if n_per_env < 20:
        raise InputError(f"--n-per-env must be at least 20, got {n_per_env}")
    if n_variants < 2:
        raise InputError(f"--n-variants must be at least 2, got {n_variants}")
    fst = check_fraction(fst, "--fst", closed_low=False)
    admixture = check_fraction(admixture, "--admixture")
    if admixture >= (n_envs - 1) / n_envs:
        raise InputError(
            f"--admixture must be below {(n_envs - 1) / n_envs:.3f} for {n_envs} environments "
            "(at that level every environment has the same mean ancestry)"
        )
    if admixture_concentration <= 0:
        raise InputError(f"--admixture-concentration must be positive, got {admixture_concentration}")
    lam = 1 - admixture * n_envs / (n_envs - 1)
    source_fst = fst / lam**2
    if source_fst >= 1:
        raise InputError(f"--fst {fst} with --admixture {admixture} needs a source F_ST >= 1; lower either")

    rng = np.random.default_rng([seed, 0xB4])
    env_codes = np.repeat(np.arange(n_envs), n_per_env)
    ancestral, source = balding_nichols_frequencies(n_envs, n_variants, source_fst, rng)
    q = draw_ancestry(env_codes, n_envs, admixture, admixture_concentration, rng)
    genotypes = draw_genotypes(q @ source, rng)
    annotations = variant_annotations(n_variants, rng)
    labels = np.array([f"pop{k + 1}" for k in range(n_envs)], dtype=object)
    env = labels[env_codes]

    pheno = stratified_phenotypes(
        genotypes, env_codes, q, rng, theta=theta, n_causal=n_causal, h2=h2,
        ancestry_confounding=ancestry_confounding, within_confounding=within_confounding,
        within_correlation=within_correlation,
    )
    realised = pairwise_hudson_fst(genotypes, env)
    latent = {"ancestry": q, "source_frequencies": source, "ancestral_frequencies": ancestral, **pheno.latent}
    if keep_genome:
        if n_genome_variants < 1:
            raise InputError(f"n_genome_variants must be at least 1, got {n_genome_variants}")
        genome_rng = np.random.default_rng([seed, 0xB4, 0x6E])
        _, genome_source = balding_nichols_frequencies(n_envs, n_genome_variants, source_fst, genome_rng)
        latent["genome_genotypes"] = np.hstack([genotypes, draw_genotypes(q @ genome_source, genome_rng)])
    parameters = {
        "n_envs": n_envs, "n_per_env": n_per_env, "n_variants": n_variants, "fst": fst,
        "admixture": admixture, "admixture_concentration": admixture_concentration, "theta": theta,
        "n_causal": n_causal, "h2": h2, "ancestry_confounding": ancestry_confounding,
        "within_confounding": within_confounding, "within_correlation": within_correlation,
        # Only when kept, so that stored benchmark records of the plain model keep matching.
        **({"keep_genome": True, "n_genome_variants": n_genome_variants} if keep_genome else {}),
    }
    truth = {
        **pheno.truth,
        "model": "balding-nichols",
        "seed": seed,
        "parameters": parameters,
        "source_fst": source_fst,
        "hudson_fst_between_environments": {f"{a}-{b}": v for (a, b), v in realised.items()},
        "components": {
            "V": "ancestry proportions q (their distribution differs across environments; H depends on them)",
            "W": "Mendelian segregation Z - 2 P'q (independent of H given q)",
        },
        "causal_variant_ids": [str(annotations["variant_ids"][j]) for j in pheno.truth["causal_variant_index"]],
    }
    return GeneticSimulation(
        genotypes=genotypes,
        env=env,
        sample_ids=np.array([f"bn{i + 1:07d}" for i in range(len(env_codes))], dtype=object),
        exposure=pheno.exposure,
        outcome=pheno.outcome,
        covariates=pheno.covariates,
        truth=truth,
        latent=latent,
        **annotations,
    )
