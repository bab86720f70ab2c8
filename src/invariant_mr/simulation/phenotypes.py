"""Exposure and outcome models on top of simulated genotypes.

Two models, both in the notation of METHOD.md (`Z = g(V, W)`, hidden
confounder `H`, `D = beta'[V, W] + alpha1 H + e_D`, `Y = theta D + alpha2 H + e_Y`):

* `stratified_phenotypes`: population stratification. The confounder tracks
  ancestry, both between populations and within them.
* `family_phenotypes`: confounding through the parents' phenotypes, for the
  assortative-mating simulator.

Shared conventions
------------------
* The exposure's genetic score `G = sum_j b_j Z_j` over `n_causal` causal
  variants (raw dosages, so populations with different allele frequencies
  have different mean scores, as in real data). It is scaled to unit average
  within-environment variance, and `h2` sets its weight against the
  idiosyncratic noise: `D = sqrt(h2) G + sqrt(1 - h2) e_D + alpha1 H + covariates`.
  So `h2` is the heritability the exposure would have without confounding.
* The outcome has no direct genetic effect in `stratified_phenotypes`
  (exclusion restriction holds given `H`); every bias in 2SLS comes from
  instruments being correlated with `H`.
* Exogenous covariates: `age` (uniform 40-70 years) and `sex` (1 = male,
  2 = female, PLINK coding). Both shift exposure and outcome a little and are
  independent of genotypes and `H`; adjusting for them only adds precision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from invariant_mr.errors import InputError

#: Effects of the exogenous covariates (per 10 years of age, female vs male).
AGE_EFFECT_EXPOSURE, AGE_EFFECT_OUTCOME = 0.10, 0.10
SEX_EFFECT_EXPOSURE, SEX_EFFECT_OUTCOME = 0.20, -0.10


@dataclass(frozen=True)
class PhenotypeDraw:
    """Simulated exposure, outcome and covariates, with the truth behind them."""

    exposure: np.ndarray
    outcome: np.ndarray
    covariates: Mapping[str, np.ndarray]
    truth: Mapping[str, Any]
    latent: Mapping[str, np.ndarray] = field(default_factory=dict)


def check_fraction(value: float, name: str, *, closed_low: bool = True, closed_high: bool = False) -> float:
    value = float(value)
    low_ok = value >= 0 if closed_low else value > 0
    high_ok = value <= 1 if closed_high else value < 1
    if not (low_ok and high_ok and np.isfinite(value)):
        lo = "[" if closed_low else "("
        hi = "]" if closed_high else ")"
        raise InputError(f"{name} must be in {lo}0, 1{hi}, got {value}")
    return value


def default_n_causal(n_variants: int) -> int:
    """50 causal variants, or a tenth of the variants when there are fewer than 500."""
    return int(min(50, max(1, n_variants // 10)))


def causal_counts(n_variants: int, n_causal: int | None, n_causal_outcome: int | None) -> tuple[int, int]:
    """(variants acting on the exposure, variants acting on the outcome directly), checked against n_variants.

    Defaults: `default_n_causal` exposure variants, and as many outcome variants.
    """
    n_causal = default_n_causal(n_variants) if n_causal is None else int(n_causal)
    n_causal_outcome = n_causal if n_causal_outcome is None else int(n_causal_outcome)
    if n_causal < 1 or n_causal_outcome < 0 or n_causal + n_causal_outcome > n_variants:
        raise InputError(
            f"need 1 <= --n-causal and n_causal + n_causal_outcome <= --n-variants ({n_variants}); "
            f"got {n_causal} + {n_causal_outcome}"
        )
    return n_causal, n_causal_outcome


def draw_causal_effects(
    n_variants: int, n_causal: int, rng: np.random.Generator, candidates: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Causal variant indices (sorted) and N(0, 1) effect sizes."""
    pool = np.arange(n_variants) if candidates is None else np.asarray(candidates)
    if not 1 <= n_causal <= len(pool):
        raise InputError(f"--n-causal must be between 1 and {len(pool)}, got {n_causal}")
    idx = np.sort(rng.choice(pool, size=n_causal, replace=False))
    return idx, rng.standard_normal(n_causal)


def genetic_score(genotypes: np.ndarray, idx: np.ndarray, effects: np.ndarray, env_codes: np.ndarray) -> np.ndarray:
    """sum_j b_j Z_j, centred on the pooled mean and scaled to unit mean within-environment variance."""
    score = genotypes[:, idx].astype(np.float64) @ effects
    within = np.mean([score[env_codes == k].var() for k in np.unique(env_codes)])
    if within <= 0:
        raise InputError("the causal variants do not vary within environments; use more causal variants")
    return (score - score.mean()) / np.sqrt(within)


def standardise(values: np.ndarray) -> np.ndarray:
    """Mean 0, SD 1 (a constant stays centred, not divided by zero)."""
    sd = values.std()
    return (values - values.mean()) / (sd if sd > 0 else 1.0)


def within_env_zscore(values: np.ndarray, env_codes: np.ndarray) -> np.ndarray:
    out = np.empty_like(values, dtype=float)
    for k in np.unique(env_codes):
        rows = env_codes == k
        out[rows] = standardise(values[rows])
    return out


def demographic_covariates(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Age in years (uniform 40-70, one decimal) and sex (1 male, 2 female)."""
    return {
        "age": np.round(rng.uniform(40.0, 70.0, size=n), 1),
        "sex": rng.integers(1, 3, size=n).astype(np.int64),
    }


def _covariate_effects(cov: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    age10 = (cov["age"] - 55.0) / 10.0
    female = (cov["sex"] == 2).astype(float)
    on_exposure = AGE_EFFECT_EXPOSURE * age10 + SEX_EFFECT_EXPOSURE * female
    on_outcome = AGE_EFFECT_OUTCOME * age10 + SEX_EFFECT_OUTCOME * female
    return on_exposure, on_outcome


def _exposure_genetics(genotypes: np.ndarray, env_codes: np.ndarray, n_causal: int | None, rng):
    """(n_causal, causal variant indices, their effects, the standardised genetic score G) of the exposure."""
    n_causal = default_n_causal(genotypes.shape[1]) if n_causal is None else int(n_causal)
    causal, effects = draw_causal_effects(genotypes.shape[1], n_causal, rng)
    return n_causal, causal, effects, genetic_score(genotypes, causal, effects, env_codes)


def _exposure_and_outcome(G: np.ndarray, H: np.ndarray, rng, *, theta: float, h2: float, alpha_exposure: float,
                          alpha_outcome: float):
    """(D, Y, covariates) given the genetic score G and the confounder H, in this draw order:
    covariates, exposure noise, outcome noise.

        D = sqrt(h2) G + sqrt(1 - h2) e_D + alpha_exposure H + age/sex
        Y = theta D + alpha_outcome H + age/sex + e_Y
    """
    n = G.shape[0]
    cov = demographic_covariates(n, rng)
    cov_d, cov_y = _covariate_effects(cov)
    D = np.sqrt(h2) * G + np.sqrt(1 - h2) * rng.standard_normal(n) + alpha_exposure * H + cov_d
    Y = theta * D + alpha_outcome * H + cov_y + rng.standard_normal(n)
    return D, Y, cov


def stratified_phenotypes(
    genotypes: np.ndarray,
    env_codes: np.ndarray,
    ancestry: np.ndarray,
    rng: np.random.Generator,
    *,
    theta: float = 1.0,
    n_causal: int | None = None,
    h2: float = 0.3,
    ancestry_confounding: float = 0.5,
    within_confounding: float = 0.5,
    within_correlation: float = 0.6,
    alpha_exposure: float = 1.0,
    alpha_outcome: float = 1.0,
) -> PhenotypeDraw:
    """Exposure and outcome confounded through ancestry (population stratification).

    `ancestry` holds each individual's ancestry coordinates (n, a): admixture
    proportions for Balding-Nichols, supervised ancestry estimates for the
    coalescent model. A random axis `s = ancestry @ c` carries the confounding:

        H_anc = standardised s                       (between and within populations)
        H_env = r * z_e(s) + sqrt(1 - r^2) * N(0, 1)  (an environment component
                correlated with ancestry within each population; z_e is the
                within-environment z-score, r = within_correlation)
        H     = ancestry_confounding * H_anc + within_confounding * H_env
        D     = sqrt(h2) G + sqrt(1 - h2) e_D + alpha_exposure H + age/sex
        Y     = theta D + alpha_outcome H + age/sex + e_Y

    In METHOD.md notation: V is the ancestry component of the genotype,
    E[Z | ancestry], which shifts across environments and is correlated with H
    within them; W is the Mendelian-segregation component Z - E[Z | ancestry],
    independent of H given ancestry and with (nearly) the same first two
    moments in every environment. Environment fixed effects remove the
    between-population part of H_anc only; the within-population part and
    H_env bias 2SLS that uses variants tracking ancestry.
    """
    n = genotypes.shape[0]
    h2 = check_fraction(h2, "h2", closed_low=False)
    within_correlation = check_fraction(within_correlation, "within_correlation", closed_high=True)
    ancestry = np.asarray(ancestry, dtype=float)
    if ancestry.ndim == 1:
        ancestry = ancestry[:, None]
    if ancestry.shape[0] != n:
        raise InputError(f"ancestry has {ancestry.shape[0]} rows for {n} individuals")

    n_causal, causal, effects, G = _exposure_genetics(genotypes, env_codes, n_causal, rng)

    axis = rng.standard_normal(ancestry.shape[1])
    s = ancestry @ axis
    H_anc = standardise(s)
    r = within_correlation
    H_env = r * within_env_zscore(s, env_codes) + np.sqrt(1 - r * r) * rng.standard_normal(n)
    H = ancestry_confounding * H_anc + within_confounding * H_env

    D, Y, cov = _exposure_and_outcome(G, H, rng, theta=theta, h2=h2, alpha_exposure=alpha_exposure,
                                      alpha_outcome=alpha_outcome)
    truth = {
        "theta": float(theta),
        "phenotype_model": "stratified",
        "n_causal": int(n_causal),
        "h2": h2,
        "ancestry_confounding": float(ancestry_confounding),
        "within_confounding": float(within_confounding),
        "within_correlation": r,
        "alpha_exposure": float(alpha_exposure),
        "alpha_outcome": float(alpha_outcome),
        "causal_variant_index": causal.tolist(),
        "causal_effects": effects.tolist(),
        "covariate_effects": {
            "exposure": {"age_per_10y": AGE_EFFECT_EXPOSURE, "female": SEX_EFFECT_EXPOSURE},
            "outcome": {"age_per_10y": AGE_EFFECT_OUTCOME, "female": SEX_EFFECT_OUTCOME},
        },
    }
    latent = {"H": H, "H_ancestry": H_anc, "H_environment": H_env, "genetic_score": G}
    return PhenotypeDraw(exposure=D, outcome=Y, covariates=cov, truth=truth, latent=latent)


def confounded_phenotypes(
    genotypes: np.ndarray,
    env_codes: np.ndarray,
    H: np.ndarray,
    rng: np.random.Generator,
    *,
    theta: float = 1.0,
    n_causal: int | None = None,
    h2: float = 0.3,
    alpha_exposure: float = 1.0,
    alpha_outcome: float = 1.0,
) -> PhenotypeDraw:
    """Exposure and outcome for a confounder H the caller built (local or nonlinear confounding).

    The same model as `stratified_phenotypes` after its H step:
    D = sqrt(h2) G + sqrt(1 - h2) e_D + alpha_exposure H + age/sex, Y = theta D + alpha_outcome H + age/sex + e_Y.
    """
    n = genotypes.shape[0]
    h2 = check_fraction(h2, "h2", closed_low=False)
    H = np.asarray(H, dtype=float).ravel()
    if H.shape != (n,):
        raise InputError(f"H has shape {H.shape}, expected ({n},)")
    n_causal, causal, effects, G = _exposure_genetics(genotypes, env_codes, n_causal, rng)
    D, Y, cov = _exposure_and_outcome(G, H, rng, theta=theta, h2=h2, alpha_exposure=alpha_exposure,
                                      alpha_outcome=alpha_outcome)
    truth = {
        "theta": float(theta), "n_causal": int(n_causal), "h2": h2,
        "alpha_exposure": float(alpha_exposure), "alpha_outcome": float(alpha_outcome),
        "causal_variant_index": causal.tolist(), "causal_effects": effects.tolist(),
    }
    return PhenotypeDraw(exposure=D, outcome=Y, covariates=cov, truth=truth, latent={"H": H, "genetic_score": G})


@dataclass(frozen=True)
class FamilyTraitModel:
    """Genetic architecture of the assortative-mating model (fixed across generations).

    Scores are standardised with the linkage-equilibrium moments of the base
    generation, so that the variance inflation assortative mating causes
    stays visible in later generations.
    """

    exposure_index: np.ndarray
    exposure_effects: np.ndarray
    outcome_index: np.ndarray
    outcome_effects: np.ndarray
    base_frequencies: np.ndarray
    theta: float
    h2_exposure: float
    h2_outcome: float
    family_effect: float

    def score(self, genotypes: np.ndarray, which: str) -> np.ndarray:
        idx, eff = (
            (self.exposure_index, self.exposure_effects) if which == "exposure"
            else (self.outcome_index, self.outcome_effects)
        )
        p = self.base_frequencies[idx]
        mean = 2 * p @ eff
        sd = np.sqrt(np.sum(eff**2 * 2 * p * (1 - p)))
        return (genotypes[:, idx].astype(np.float64) @ eff - mean) / sd


def family_phenotypes(
    genotypes: np.ndarray,
    family_environment: np.ndarray,
    model: FamilyTraitModel,
    rng: np.random.Generator,
    covariates: Mapping[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Exposure and outcome of one generation, confounded through the parents' phenotypes.

        G_D, G_Y  standardised exposure and outcome genetic scores (disjoint variants)
        F         family environment: standardised mean exposure of the two parents
        D = sqrt(h2_D) G_D + sqrt(1 - h2_D) e_D + f F (+ age/sex)
        Y = theta D + sqrt(h2_Y) G_Y + f F + e_Y      (+ age/sex)

    In METHOD.md notation H = (G_Y, F): the outcome's own genetic score and the
    family environment. Both are instrument-outcome confounders for a variant
    set that contains the outcome variants or variants correlated with them or
    with the parents' genotypes. V is the part of the genotype that carries H:
    the outcome-score direction, and the exposure-variant components that
    assortative mating and transmission from the parents correlate with H.
    W is what is left: under random mating, the exposure variants
    (independent of G_Y; correlated with F only through the transmitted half
    of the parental score) and null variants. Assortative mating of different
    strength per environment makes the V directions' covariance differ across
    environments, while allele frequencies (first moments) stay the same.
    """
    n = genotypes.shape[0]
    G_D = model.score(genotypes, "exposure")
    G_Y = model.score(genotypes, "outcome")
    D = (
        np.sqrt(model.h2_exposure) * G_D + np.sqrt(1 - model.h2_exposure) * rng.standard_normal(n)
        + model.family_effect * family_environment
    )
    Y = model.theta * D + np.sqrt(model.h2_outcome) * G_Y + model.family_effect * family_environment
    Y = Y + rng.standard_normal(n)
    if covariates is not None:
        cov_d, cov_y = _covariate_effects(covariates)
        D = D + cov_d
        Y = Y + model.theta * cov_d + cov_y
    return D, Y, {"G_exposure": G_D, "G_outcome": G_Y, "F": family_environment}
