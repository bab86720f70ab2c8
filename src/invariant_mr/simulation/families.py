"""Sibling families: related samples for cluster-robust inference.

Each family has two parents drawn at Hardy-Weinberg from per-variant allele
frequencies and `n_sibs` children who each inherit one random allele from
each parent, so siblings' dosages correlate 0.5 (identity by descent). A
family effect shared by the siblings enters the exposure and outcome
noise (shared environment: household, diet); it is independent of the
genotypes, so every variant stays a valid instrument. What breaks is the
independence of samples: both the instrument and the structural error are
correlated within families, so the sandwich that treats people as
independent (HC0) underestimates the variance of 2SLS, and a covariance that
sums the scores within families does not.

    D = Z pi + f_D + H + e_D
    Y = theta D + f_Y + H + e_Y

with family effects (f_D, f_Y) ~ N(0, family_sd^2 [[1, rho], [rho, 1]])
(rho = `family_correlation`), an individual confounder H ~ N(0, 1) and unit
noises.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from invariant_mr.errors import InputError


@dataclass(frozen=True)
class FamilyData:
    """Simulated sibling data and its truth; `family` is the cluster label of each sample."""

    Z: np.ndarray
    exposure: np.ndarray
    outcome: np.ndarray
    family: np.ndarray
    theta: float
    allele_freq: np.ndarray
    first_stage: np.ndarray


def simulate_sibling_families(
    n_families: int = 1000,
    n_variants: int = 10,
    *,
    n_sibs: int = 2,
    theta: float = 0.5,
    strength: float = 1.0,
    family_sd: float = 3.0,
    family_correlation: float = 0.8,
    seed: int | np.random.Generator = 0,
) -> FamilyData:
    """Families of `n_sibs` siblings (n = n_families * n_sibs samples), rows grouped by family.

    `strength` is each variant's first-stage coefficient per standardised
    dosage. A large `family_sd` relative to the unit individual noises makes
    the within-family correlation of the errors strong, which is where HC0
    fails.
    """
    if n_families < 2 or n_variants < 1 or n_sibs < 1:
        raise InputError("need at least 2 families, 1 variant and 1 sibling per family")
    if not -1 <= family_correlation <= 1:
        raise InputError(f"family_correlation must be in [-1, 1], got {family_correlation}")
    rng = np.random.default_rng(seed)
    freq = rng.uniform(0.1, 0.5, n_variants)
    # Parents' haplotypes: (families, 2 parents, 2 haplotypes, variants).
    parents = rng.random((n_families, 2, 2, n_variants)) < freq
    # Each child takes one haplotype of each parent, chosen per variant (free recombination).
    pick = rng.integers(0, 2, size=(n_families, n_sibs, 2, n_variants))
    fam_idx = np.arange(n_families)[:, None, None]
    var_idx = np.arange(n_variants)[None, None, :]
    from_mother = parents[fam_idx, 0, pick[:, :, 0, :], var_idx]
    from_father = parents[fam_idx, 1, pick[:, :, 1, :], var_idx]
    Z = (from_mother.astype(float) + from_father).reshape(n_families * n_sibs, n_variants)
    pi = strength / np.sqrt(2 * freq * (1 - freq))  # equal strength per standardised dosage
    cov = family_sd**2 * np.array([[1.0, family_correlation], [family_correlation, 1.0]])
    fam_effects = rng.multivariate_normal(np.zeros(2), cov, size=n_families)
    family = np.repeat(np.arange(n_families), n_sibs)
    n = n_families * n_sibs
    H = rng.standard_normal(n)
    D = Z @ pi + fam_effects[family, 0] + H + rng.standard_normal(n)
    Y = theta * D + fam_effects[family, 1] + H + rng.standard_normal(n)
    return FamilyData(
        Z=Z, exposure=D, outcome=Y, family=family, theta=float(theta), allele_freq=freq, first_stage=pi
    )


__all__ = ["FamilyData", "simulate_sibling_families"]
