"""Coalescent genotypes from published human demographic models (msprime + stdpopsim).

Offline by design (see SIMULATION-NOTES.md):

* no genetic map (any named map triggers a download): each chunk gets the
  chromosome's mean recombination rate, flat;
* the demographic model's own mutation rate (e.g. 2.35e-8 for
  OutOfAfrica_3G09), not the species default;
* several independent short chunks instead of one long segment (msprime's
  cost grows faster than linearly in length), each placed on its own
  autosome at chromosome coordinates;
* neutral variation only; biallelic sites above a pooled MAF cut-off;
  dosage = sum of each diploid individual's two sample nodes, built by
  looping over `ts.variants()` (never the dense `genotype_matrix()`).

msprime and stdpopsim are GPL-3, so they are an optional extra
(`pip install invariant-mr[popgen]`) and imported only inside functions.

Phenotypes follow `phenotypes.stratified_phenotypes` with per-individual
ancestry coordinates estimated in a supervised way: each individual's
centred genotypes regressed on the centred population allele frequencies.
In METHOD.md notation, V is the ancestry component of the genotype (the
projection onto the between-population frequency differences: the
population means, plus admixture and chance genome sharing within a
population), confounded because H depends on it; W is the rest of the
genotype (segregation and drift within the population), independent of H.
For AmericanAdmixture_4B18 the ADMIX population has genuine between-person
variation in African/European/Asian ancestry, the classic setting for
stratification within a population.
"""

from __future__ import annotations

import math

import numpy as np

from invariant_mr.errors import InputError
from invariant_mr.simulation.genetic_dataset import GeneticSimulation
from invariant_mr.simulation.phenotypes import stratified_phenotypes

#: Demographic models known to work offline with the msprime engine.
SUPPORTED_DEMOGRAPHIES = ("OutOfAfrica_3G09", "AmericanAdmixture_4B18")

#: Hudson F_ST for common SNPs (MAF > 0.05) under OutOfAfrica_3G09 (SIMULATION-NOTES.md).
EXPECTED_FST_OOA = {("YRI", "CEU"): 0.17, ("YRI", "CHB"): 0.20, ("CEU", "CHB"): 0.11}

#: Populations formed by admixture, left out of the ancestry reference panel.
ADMIXED_POPULATIONS = {"AmericanAdmixture_4B18": ("ADMIX",)}


def _import_popgen():
    try:
        import msprime
        import stdpopsim
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InputError(
            "the coalescent model needs msprime and stdpopsim (GPL-3, optional): "
            "pip install 'invariant-mr[popgen]'"
        ) from exc
    return msprime, stdpopsim


def _demographic_model(stdpopsim, name: str):
    species = stdpopsim.get_species("HomSap")
    known = [m.id for m in species.demographic_models]
    if name not in known:
        raise InputError(
            f"--demography {name!r} is not a stdpopsim HomSap model; tested offline: "
            f"{', '.join(SUPPORTED_DEMOGRAPHIES)}"
        )
    return species, species.get_demographic_model(name)


def _chunk_genotypes(ts, min_maf: float) -> tuple[np.ndarray, np.ndarray, list, list]:
    """Dosages (n_individuals, n_sites) of the derived allele at common biallelic sites."""
    sample_index = {int(node): i for i, node in enumerate(ts.samples())}
    pairs = np.array([[sample_index[int(u)] for u in ind.nodes] for ind in ts.individuals()])
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise InputError("coalescent samples are not diploid individuals")
    n_hap = ts.num_samples
    cols, positions, ancestral, derived = [], [], [], []
    for var in ts.variants():
        if var.num_alleles != 2:
            continue  # multiallelic (about 1% of sites) or monomorphic after recurrent mutation
        hap = var.genotypes
        freq = np.count_nonzero(hap) / n_hap
        if min(freq, 1 - freq) <= min_maf:
            continue
        cols.append((hap[pairs[:, 0]] + hap[pairs[:, 1]]).astype(np.int8))
        positions.append(int(var.site.position))
        ancestral.append(var.alleles[0])
        derived.append(var.alleles[1])
    if not cols:
        return np.zeros((len(pairs), 0), dtype=np.int8), np.zeros(0, dtype=np.int64), [], []
    return np.column_stack(cols), np.array(positions, dtype=np.int64), ancestral, derived


def supervised_ancestry(genotypes: np.ndarray, env_codes: np.ndarray, reference: list[int]) -> np.ndarray:
    """Ancestry proportions (n, R) on the R reference (unadmixed) populations, by least squares.

    Solves Z_i / 2 - f_1 = sum_{k>1} q_ik (f_k - f_1) with sum_k q_ik = 1, where
    f_k are the reference populations' sample allele frequencies (supervised
    ADMIXTURE without the [0, 1] constraint). q_i is near the indicator of i's
    population; its spread within a population reflects admixture (ADMIX in
    AmericanAdmixture_4B18) and chance genome sharing.
    """
    freqs = np.stack([genotypes[env_codes == k].mean(axis=0) / 2 for k in reference])
    basis = (freqs[1:] - freqs[0]).T  # (m, R - 1)
    centred = genotypes.astype(np.float64) / 2 - freqs[0]
    coef, *_ = np.linalg.lstsq(basis, centred.T, rcond=None)
    return np.column_stack([1 - coef.sum(axis=0), coef.T])


def simulate_coalescent_genotypes(
    *,
    demography: str = "OutOfAfrica_3G09",
    n_per_env: int = 1000,
    length_mb: float = 5.0,
    chunk_mb: float = 1.0,
    min_maf: float = 0.05,
    populations: tuple[str, ...] | None = None,
    expected_populations: int | None = None,
    seed: int = 0,
) -> dict:
    """Common biallelic genotypes for `n_per_env` individuals of every sampled population.

    Returns a dict with `genotypes` (n, m) int8 derived-allele dosages,
    `env_codes`, `population_names`, `chrom`, `pos`, `allele_1` (derived,
    counted), `allele_2` (ancestral), `n_chunks`, `recombination_rate`,
    `mutation_rate`.
    """
    msprime, stdpopsim = _import_popgen()
    if n_per_env < 2:
        raise InputError(f"--n-per-env must be at least 2, got {n_per_env}")
    if not (length_mb > 0 and chunk_mb > 0):
        raise InputError("--length-mb and the chunk size must be positive")
    if not 0 <= min_maf < 0.5:
        raise InputError(f"MAF cut-off must be in [0, 0.5), got {min_maf}")
    species, model = _demographic_model(stdpopsim, demography)
    sampled = [p.name for p in model.populations if p.allow_samples]
    if populations is not None:
        unknown = [p for p in populations if p not in sampled]
        if unknown:
            raise InputError(f"population(s) {', '.join(unknown)} not in {demography} ({', '.join(sampled)})")
        sampled = list(populations)
    if expected_populations is not None and expected_populations != len(sampled):
        raise InputError(
            f"--envs {expected_populations}: {demography} samples {len(sampled)} populations "
            f"({', '.join(sampled)}); leave --envs out"
        )
    n_chunks = max(1, math.ceil(length_mb / chunk_mb - 1e-9))
    chunk_bp = int(round(length_mb * 1e6 / n_chunks))
    rng = np.random.default_rng([seed, 0xC0A1])
    blocks, chroms, positions, a1, a2 = [], [], [], [], []
    rates = []
    for c in range(n_chunks):
        chrom = species.genome.get_chromosome(str(1 + c % 22))
        rates.append(chrom.recombination_rate)
        anc_seed, mut_seed = (int(s) for s in rng.integers(1, 2**31 - 1, size=2))
        ts = msprime.sim_ancestry(
            samples={name: n_per_env for name in sampled},
            demography=model.model,
            sequence_length=chunk_bp,
            recombination_rate=chrom.recombination_rate,
            ploidy=2,
            random_seed=anc_seed,
        )
        ts = msprime.sim_mutations(ts, rate=model.mutation_rate, random_seed=mut_seed)
        G, pos, anc, der = _chunk_genotypes(ts, min_maf)
        # Place the chunk at chromosome coordinates, 10 Mb in and 20 Mb apart per reuse of a chromosome.
        offset = 10_000_000 + (c // 22) * 20_000_000
        blocks.append(G)
        chroms.extend([chrom.id] * G.shape[1])
        positions.append(pos + offset)
        a1.extend(der)
        a2.extend(anc)
    genotypes = np.concatenate(blocks, axis=1)
    if genotypes.shape[1] == 0:
        raise InputError(f"no biallelic site with MAF > {min_maf}; increase --length-mb")
    # Samples come out population by population, in the order of `sampled`.
    pop_of_ind = _population_of_individuals(ts, model, sampled)
    return {
        "genotypes": genotypes,
        "env_codes": pop_of_ind,
        "population_names": sampled,
        "chrom": np.array(chroms, dtype=object),
        "pos": np.concatenate(positions),
        "allele_1": np.array(a1, dtype=object),
        "allele_2": np.array(a2, dtype=object),
        "n_chunks": n_chunks,
        "chunk_bp": chunk_bp,
        "recombination_rate": float(np.mean(rates)),
        "mutation_rate": float(model.mutation_rate),
    }


def _first_of_identical_columns(G: np.ndarray) -> np.ndarray:
    seen: set[bytes] = set()
    keep = []
    for j in range(G.shape[1]):
        key = G[:, j].tobytes()
        if key not in seen:
            seen.add(key)
            keep.append(j)
    return np.array(keep, dtype=np.int64)


def _population_of_individuals(ts, model, sampled: list[str]) -> np.ndarray:
    names = [p.name for p in model.model.populations]
    codes = np.empty(ts.num_individuals, dtype=np.int64)
    for i, ind in enumerate(ts.individuals()):
        pop_name = names[ts.node(ind.nodes[0]).population]
        codes[i] = sampled.index(pop_name)
    return codes


def simulate_coalescent(
    *,
    demography: str = "OutOfAfrica_3G09",
    n_per_env: int = 1000,
    n_envs: int | None = None,
    length_mb: float = 5.0,
    chunk_mb: float = 1.0,
    n_variants: int | None = None,
    min_maf: float = 0.05,
    theta: float = 1.0,
    n_causal: int | None = None,
    h2: float = 0.3,
    ancestry_confounding: float = 0.5,
    within_confounding: float = 0.5,
    within_correlation: float = 0.6,
    ancestry_snps: str = "instruments",
    keep_genome: bool = False,
    seed: int = 0,
) -> GeneticSimulation:
    """Coalescent genotypes (one environment per sampled population) with stratified phenotypes.

    `ancestry_snps`: the SNPs whose supervised ancestry estimate the
    confounder follows: "instruments" (the `n_variants` kept, the original
    scenario: H then also tracks those SNPs' chance genome sharing, which
    genome-wide PCs cannot see) or "genome" (every distinct common SNP
    simulated: H follows ancestry itself, as in a real study).
    `keep_genome` keeps every distinct common SNP in `latent["genome_genotypes"]`
    (the genome-wide fileset `--pcs-from` would read); the data are the same.

    `n_variants` thins the common SNPs to that many, chosen at random (all
    kept when None); thinning also lowers the LD between neighbours.
    `n_envs`, when given, must equal the number of populations the
    demography samples. See the module docstring for V and W.
    """
    geno = simulate_coalescent_genotypes(
        demography=demography, n_per_env=n_per_env, length_mb=length_mb, chunk_mb=chunk_mb,
        min_maf=min_maf, seed=seed, expected_populations=n_envs,
    )
    G = geno["genotypes"]
    rng = np.random.default_rng([seed, 0xC0A2])
    # Sites in perfect LD in the sample carry the same dosages; keep one of each, as LD pruning would.
    distinct = _first_of_identical_columns(G)
    available = len(distinct)
    if n_variants is not None:
        if n_variants > available:
            raise InputError(
                f"--n-variants {n_variants} exceeds the {available} common SNPs simulated in "
                f"{length_mb:g} Mb; increase --length-mb (about 2,000 common SNPs per Mb)"
            )
        keep = distinct[np.sort(rng.choice(available, size=n_variants, replace=False))]
    else:
        keep = distinct
    if ancestry_snps not in ("instruments", "genome"):
        raise InputError(f"ancestry_snps must be 'instruments' or 'genome', got {ancestry_snps!r}")
    genome = np.ascontiguousarray(G[:, distinct]) if (keep_genome or ancestry_snps == "genome") else None
    G = np.ascontiguousarray(G[:, keep])
    env_codes = geno["env_codes"]
    admixed = ADMIXED_POPULATIONS.get(demography, ())
    reference = [k for k, name in enumerate(geno["population_names"]) if name not in admixed]
    ancestry = supervised_ancestry(G if ancestry_snps == "instruments" else genome, env_codes, reference)
    pheno = stratified_phenotypes(
        G, env_codes, ancestry, rng, theta=theta, n_causal=n_causal, h2=h2,
        ancestry_confounding=ancestry_confounding, within_confounding=within_confounding,
        within_correlation=within_correlation,
    )
    from invariant_mr.simulation.fst import pairwise_hudson_fst

    labels = np.array(geno["population_names"], dtype=object)
    env = labels[env_codes]
    fst = pairwise_hudson_fst(G, env, min_maf=min_maf)
    chrom, pos = geno["chrom"][keep], geno["pos"][keep]
    variant_ids = np.array([f"{c}:{p}" for c, p in zip(chrom, pos)], dtype=object)
    # Two sites of different chunks never share chromosome and position; within a
    # chunk msprime's discrete genome can still stack two sites, so disambiguate.
    if len(set(variant_ids.tolist())) != len(variant_ids):
        seen: dict[str, int] = {}
        for j, v in enumerate(variant_ids):
            seen[v] = seen.get(v, 0) + 1
            if seen[v] > 1:
                variant_ids[j] = f"{v}_{seen[v]}"
    parameters = {
        "demography": demography, "n_per_env": n_per_env, "length_mb": length_mb, "chunk_mb": chunk_mb,
        "n_variants": n_variants, "min_maf": min_maf, "theta": theta, "n_causal": n_causal, "h2": h2,
        "ancestry_confounding": ancestry_confounding, "within_confounding": within_confounding,
        "within_correlation": within_correlation,
        **({"ancestry_snps": ancestry_snps} if ancestry_snps != "instruments" else {}),
    }
    truth = {
        **pheno.truth,
        "model": "coalescent",
        "seed": seed,
        "parameters": parameters,
        "demography": demography,
        "populations": list(geno["population_names"]),
        "n_chunks": geno["n_chunks"],
        "recombination_rate_flat": geno["recombination_rate"],
        "mutation_rate": geno["mutation_rate"],
        "common_snps_simulated": int(available),
        "ancestry_reference_populations": [geno["population_names"][k] for k in reference],
        "hudson_fst_common_snps": {f"{a}-{b}": v for (a, b), v in fst.items()},
        "components": {
            "V": "ancestry coordinates (projection on population frequency differences); H depends on them",
            "W": "genotype variation within a population orthogonal to the ancestry axes",
        },
        "causal_variant_ids": [str(variant_ids[j]) for j in pheno.truth["causal_variant_index"]],
    }
    n = G.shape[0]
    return GeneticSimulation(
        genotypes=G,
        env=env,
        sample_ids=np.array([f"{labels[env_codes[i]]}_{i + 1:06d}" for i in range(n)], dtype=object),
        variant_ids=variant_ids,
        chrom=chrom,
        pos=pos,
        allele_1=geno["allele_1"][keep],
        allele_2=geno["allele_2"][keep],
        exposure=pheno.exposure,
        outcome=pheno.outcome,
        covariates=pheno.covariates,
        truth=truth,
        latent={"ancestry": ancestry, **pheno.latent,
                **({"genome_genotypes": genome} if keep_genome else {})},
    )
