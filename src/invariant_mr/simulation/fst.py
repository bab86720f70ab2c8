"""Population differentiation of simulated genotypes: Hudson's F_ST.

Hudson's estimator in the form of Bhatia et al. (2013, Genome Research,
doi 10.1101/gr.154831.113), combined over variants as a ratio of averages
(not an average of ratios, which is dominated by rare variants):

    N_j = (p1 - p2)^2 - p1 (1 - p1) / (n1 - 1) - p2 (1 - p2) / (n2 - 1)
    D_j = p1 (1 - p2) + p2 (1 - p1)
    F_ST = sum_j N_j / sum_j D_j

with p the sample allele frequencies and n the number of haplotypes.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from invariant_mr.errors import InputError


def allele_frequencies(genotypes: np.ndarray, env: np.ndarray) -> tuple[list, np.ndarray, np.ndarray]:
    """Per-environment frequencies of the counted allele and haplotype counts."""
    env = np.asarray(env, dtype=object)
    levels = sorted(set(env.tolist()), key=str)
    freqs, n_hap = [], []
    for lv in levels:
        rows = env == lv
        freqs.append(genotypes[rows].sum(axis=0, dtype=np.int64) / (2.0 * rows.sum()))
        n_hap.append(2 * int(rows.sum()))
    return levels, np.array(freqs), np.array(n_hap)


def hudson_fst(p1: np.ndarray, p2: np.ndarray, n1: int, n2: int) -> float:
    """Hudson F_ST between two samples from allele frequencies and haplotype counts."""
    if n1 < 2 or n2 < 2:
        raise InputError("Hudson F_ST needs at least 2 haplotypes per population")
    num = (p1 - p2) ** 2 - p1 * (1 - p1) / (n1 - 1) - p2 * (1 - p2) / (n2 - 1)
    den = p1 * (1 - p2) + p2 * (1 - p1)
    total = den.sum()
    if total <= 0:
        raise InputError("Hudson F_ST is undefined: every variant is monomorphic in both populations")
    return float(num.sum() / total)


def pairwise_hudson_fst(
    genotypes: np.ndarray, env: np.ndarray, *, min_maf: float = 0.0
) -> dict[tuple[str, str], float]:
    """Hudson F_ST for every pair of environments.

    `min_maf` keeps variants whose pooled minor-allele frequency exceeds it
    ("common SNPs"); say which threshold you report, since rare variants
    lower F_ST.
    """
    levels, freqs, n_hap = allele_frequencies(genotypes, env)
    pooled = (freqs * n_hap[:, None]).sum(axis=0) / n_hap.sum()
    keep = np.minimum(pooled, 1 - pooled) > min_maf
    if not keep.any():
        raise InputError(f"no variant has pooled MAF above {min_maf}")
    out = {}
    for a, b in combinations(range(len(levels)), 2):
        out[(str(levels[a]), str(levels[b]))] = hudson_fst(
            freqs[a, keep], freqs[b, keep], n_hap[a], n_hap[b]
        )
    return out
