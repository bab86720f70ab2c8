"""Steiger directionality: do the instruments explain more of the exposure than of the outcome?

If the variants act on the outcome through the exposure, they explain more
variance of the exposure than of the outcome. Hemani, Tilling & Davey Smith
(2017, PLoS Genet 13:e1007081) compare the two with Steiger's test of two
independent correlations. Conventions are TwoSampleMR's:

* Variance explained per variant (`variance_explained`):
  - "bsen" (`get_r_from_bsen`): F = (b/se)^2, r^2 = F / (n - 2 + F): exact
    for a simple regression, so valid for any trait scale;
  - "pn" (`get_r_from_pn`): F = qf(p, 1, n - 1, upper) and
    r^2 = F / (n - 2 + F), for when only p-values and n are known; p-values
    too small for the F quantile are inverted on the log scale instead
    (TwoSampleMR runs a Nelder-Mead search on -log10 p there);
  - "eaf" (`add_rsq` for traits in SD units): r^2 = 2 eaf (1 - eaf) b^2.
  "auto" picks bsen when SEs and n are known, else pn.
* Test (`mr_steiger` / `directionality_test`): r_exp = sqrt(sum of the
  per-variant r^2 of the exposure), likewise r_out; psych::r.test for two
  independent correlations with n = mean exposure n, n2 = mean outcome n:
  z = (atanh r_exp - atanh r_out) / sqrt(1/(n - 3) + 1/(n2 - 3)), two-sided p.
  `steiger_filtering` applies the same test per variant.
Binary traits need r^2 on the liability scale (`get_r_from_lor`, with case
and control counts and prevalence); that is not implemented: pass r^2
computed elsewhere to `steiger_test`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from invariant_mr.errors import InputError
from invariant_mr.estimators.tail_probabilities import norm_sf


def r2_from_bsen(beta, se, n) -> np.ndarray:
    """Per-variant r^2 from effect, SE and sample size (TwoSampleMR `get_r_from_bsen`, squared)."""
    beta, se, n = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (beta, se, n)))
    f = (beta / se) ** 2
    return f / (n - 2 + f)


def _r2_from_p_log(p: float, n: float) -> float:
    """r^2 whose F(1, n-1) upper-tail p-value is p, matched on the log scale (for p beyond qf's range)."""
    # Imported here: only p-values beyond qf's range need them, and both are slow to import.
    from scipy import optimize, stats

    target = np.log(p)

    def gap(r2):
        fval = r2 * (n - 2) / (1 - r2)
        return stats.f.logsf(fval, 1, n - 1) - target

    return float(optimize.brentq(gap, 1e-300, 1 - 1e-15, xtol=1e-300, rtol=1e-14))


def r2_from_pn(pval, n) -> np.ndarray:
    """Per-variant r^2 from the p-value and sample size (TwoSampleMR `get_r_from_pn`, squared)."""
    pval, n = np.broadcast_arrays(np.asarray(pval, dtype=float), np.asarray(n, dtype=float))
    if np.any((pval <= 0) | (pval > 1)):
        raise InputError("p-values must be in (0, 1] to convert them to variance explained")
    from scipy import stats  # imported when p-values are converted, not on every Steiger test

    fval = np.atleast_1d(stats.f.isf(pval, 1, n - 1))
    with np.errstate(invalid="ignore"):
        r2 = fval / (np.atleast_1d(n) - 2 + fval)
    for i in np.flatnonzero(~np.isfinite(r2)):
        r2[i] = _r2_from_p_log(float(pval.flat[i]), float(n.flat[i]))
    return r2.reshape(pval.shape)


def r2_from_eaf(beta, eaf) -> np.ndarray:
    """Per-variant r^2 = 2 eaf (1 - eaf) beta^2, for a trait in SD units (TwoSampleMR `add_rsq`)."""
    beta, eaf = np.broadcast_arrays(np.asarray(beta, dtype=float), np.asarray(eaf, dtype=float))
    return 2 * eaf * (1 - eaf) * beta**2


def variance_explained(beta, *, se=None, n=None, pval=None, eaf=None, method: str = "auto") -> np.ndarray:
    """Per-variant variance explained by the method named (see the module docstring)."""
    if method == "auto":
        if se is not None and n is not None:
            method = "bsen"
        elif pval is not None and n is not None:
            method = "pn"
        else:
            raise InputError("variance explained needs the sample size n with either SEs or p-values")
    if method == "bsen":
        if se is None or n is None:
            raise InputError("r^2 from beta, SE and n needs SEs and the sample size")
        return r2_from_bsen(beta, se, n)
    if method == "pn":
        if pval is None or n is None:
            raise InputError("r^2 from p-values needs p-values and the sample size")
        return r2_from_pn(pval, n)
    if method == "eaf":
        if eaf is None:
            raise InputError("r^2 for SD-unit traits needs effect allele frequencies")
        return r2_from_eaf(beta, eaf)
    raise InputError(f"variance-explained method must be auto, bsen, pn or eaf, got {method!r}")


def _r_test(r1, r2, n1, n2):
    """psych::r.test for two independent correlations: z and two-sided p."""
    r1 = np.minimum(np.asarray(r1, dtype=float), 1 - 1e-15)
    r2 = np.minimum(np.asarray(r2, dtype=float), 1 - 1e-15)
    z = (np.arctanh(r1) - np.arctanh(r2)) / np.sqrt(1 / (np.asarray(n1) - 3) + 1 / (np.asarray(n2) - 3))
    return z, 2 * norm_sf(np.abs(z))


@dataclass(frozen=True)
class SteigerResult:
    """Total variance explained in each trait and Steiger's test of their difference."""

    r2_exposure: float
    r2_outcome: float
    correct_direction: bool
    z: float
    pvalue: float
    n_exposure: float
    n_outcome: float
    n_variants: int

    def summary(self) -> str:
        direction = "exposure -> outcome" if self.correct_direction else "outcome -> exposure (reverse)"
        return (
            f"Steiger: r^2 exposure {self.r2_exposure:.4g}, outcome {self.r2_outcome:.4g}; "
            f"direction {direction}, p={self.pvalue:.3g} ({self.n_variants} variants)"
        )

    def to_dict(self) -> dict:
        return {
            "r2_exposure": self.r2_exposure,
            "r2_outcome": self.r2_outcome,
            "correct_causal_direction": self.correct_direction,
            "z": self.z,
            "steiger_pvalue": self.pvalue,
            "n_exposure": self.n_exposure,
            "n_outcome": self.n_outcome,
            "n_variants": self.n_variants,
        }


def steiger_test(r2_exposure, r2_outcome, n_exposure, n_outcome) -> SteigerResult:
    """TwoSampleMR `mr_steiger`: per-variant r^2 of each trait summed, r.test at the mean sample sizes."""
    r2e = np.atleast_1d(np.asarray(r2_exposure, dtype=float))
    r2o = np.atleast_1d(np.asarray(r2_outcome, dtype=float))
    if r2e.shape != r2o.shape:
        raise InputError(f"{r2e.size} exposure r^2 values but {r2o.size} outcome r^2 values")
    if not (np.all(np.isfinite(r2e)) and np.all(np.isfinite(r2o))):
        raise InputError("variance explained has missing values (check n, SE or p-value columns)")
    ne = float(np.mean(n_exposure))
    no = float(np.mean(n_outcome))
    if ne <= 3 or no <= 3:
        raise InputError("the Steiger test needs sample sizes above 3")
    re, ro = np.sqrt(r2e.sum()), np.sqrt(r2o.sum())
    z, p = _r_test(re, ro, ne, no)
    return SteigerResult(float(re**2), float(ro**2), bool(re > ro), float(z), float(p), ne, no, int(r2e.size))


def steiger_filtering(r2_exposure, r2_outcome, n_exposure, n_outcome) -> dict[str, np.ndarray]:
    """Per-variant Steiger test (TwoSampleMR `steiger_filtering`): direction and p-value per variant.

    A variant that explains more of the outcome than of the exposure
    (`steiger_dir` False, small `steiger_pval`) may act on the outcome
    directly or through reverse causation.
    """
    r2e, r2o, ne, no = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (r2_exposure, r2_outcome, n_exposure, n_outcome)))
    z, p = _r_test(np.sqrt(r2e), np.sqrt(r2o), ne, no)
    return {"steiger_dir": r2e > r2o, "z": z, "steiger_pval": p}


__all__ = [
    "SteigerResult",
    "r2_from_bsen",
    "r2_from_eaf",
    "r2_from_pn",
    "steiger_filtering",
    "steiger_test",
    "variance_explained",
]
