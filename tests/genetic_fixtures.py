"""Small PLINK 1 filesets and phenotype tables written with bed_reader.to_bed, for the genotype-input tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from bed_reader import to_bed


@dataclass
class Study:
    prefix: Path
    pheno: Path
    genotypes: np.ndarray  # (n, p) float, NaN where missing, fam order
    env: np.ndarray
    exposure: np.ndarray
    outcome: np.ndarray
    iid: np.ndarray
    fid: np.ndarray
    variant_ids: list
    pheno_table: pd.DataFrame


def simulate_study(n_per_env=(150, 150, 150), p=12, missing_rate=0.0, theta=0.5, seed=0):
    """Genotypes with environment-specific allele frequencies; a confounded exposure and outcome."""
    rng = np.random.default_rng(seed)
    envs = [f"pop{k + 1}" for k in range(len(n_per_env))]
    env = np.repeat(envs, n_per_env).astype(object)
    n = env.size
    base = rng.uniform(0.15, 0.5, size=p)
    G = np.empty((n, p))
    for k, e in enumerate(envs):
        rows = env == e
        # The first half of the variants shift in frequency across environments, the rest do not,
        # so invariant directions exist.
        shift = np.where(np.arange(p) < p // 2, rng.normal(0, 0.08, p), 0.0)
        freq = np.clip(base + shift, 0.05, 0.95)
        G[rows] = rng.binomial(2, freq, size=(rows.sum(), p))
    H = rng.normal(size=n) + np.array([envs.index(e) for e in env]) * 0.5
    beta = rng.normal(0.3, 0.1, size=p)
    exposure = (G - G.mean(0)) @ beta + H + rng.normal(size=n)
    outcome = theta * exposure + H + rng.normal(size=n)
    if missing_rate:
        G[rng.random(G.shape) < missing_rate] = np.nan
    return G, env, exposure, outcome


def write_study(directory, n_per_env=(150, 150, 150), p=12, missing_rate=0.0, seed=0, shuffle=True,
                covariates=True, chrom=None, pos=None) -> Study:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    G, env, exposure, outcome = simulate_study(n_per_env, p, missing_rate, seed=seed)
    n = G.shape[0]
    rng = np.random.default_rng(seed + 1)
    iid = np.array([f"id{i:05d}" for i in range(n)], dtype=object)
    fid = np.array([f"fam{i:05d}" for i in range(n)], dtype=object)
    variant_ids = [f"rs{1000 + j}" for j in range(p)]
    prefix = directory / "geno"
    to_bed(
        prefix.with_suffix(".bed"), G.astype(np.float32),
        properties={
            "fid": fid, "iid": iid, "sid": variant_ids,
            "chromosome": chrom if chrom is not None else ["1"] * p,
            "bp_position": pos if pos is not None else [10_000 * (j + 1) for j in range(p)],
            "allele_1": ["A"] * p, "allele_2": ["G"] * p,
        },
    )
    table = pd.DataFrame({"FID": fid, "IID": iid, "environment": env, "exposure": exposure, "outcome": outcome})
    if covariates:
        table["age"] = np.round(rng.uniform(40, 70, n), 1)
        table["sex"] = rng.choice(["F", "M"], n)
        table["PC1"] = rng.normal(size=n)
    if shuffle:
        table = table.iloc[rng.permutation(n)].reset_index(drop=True)
    pheno = directory / "pheno.tsv"
    table.to_csv(pheno, sep="\t", index=False, float_format="%.17g")
    return Study(prefix, pheno, G, env, exposure, outcome, iid, fid, variant_ids, table)
