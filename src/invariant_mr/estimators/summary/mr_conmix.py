"""Contamination mixture MR (Burgess, Foley, Allara, Staley & Howson 2020, Nat Commun 11:376).

Each variant's ratio estimate `by/bx` (first-order SE `sy/|bx|`) is either
valid, `N(theta, se^2)`, or invalid, `N(0, psi^2 + se^2)`. For each `theta`
on a grid, every variant is assigned to whichever component gives it the
higher likelihood, and the profile log-likelihood is the sum. The estimate
is the grid point with the largest profile likelihood; the confidence set
is every grid point whose likelihood-ratio statistic is below the
chi-square(1) quantile times `phi^2`, so it can be a union of intervals
when several groups of variants support different values.

Conventions are MendelianRandomization's `mr_conmix` exactly:

* grid `seq(CIMin, CIMax, by = CIStep)`, defaults min/max of the variant
  95% bounds `(by -+ 2 sy) / bx`, step 0.01;
* `psi` = 1.5 * SD of the ratio estimates when not given (psi <= 0);
* overdispersion `phi = max(1, sqrt(Q_valid / (n_valid - 1)))` from the
  variants valid at the estimate (1 when fewer than 2);
* p-value `pchisq(2 (max loglik - loglik(0)) * phi^2, 1, upper)`: the
  package multiplies (not divides) the statistic by phi^2, which we copy so
  that the numbers agree; the confidence set is the principled object.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from invariant_mr.errors import InputError
from invariant_mr.estimators.tail_probabilities import chi2_ppf, chi2_sf
from invariant_mr.estimators.summary.summary_mr import SummaryMRFit, _arrays, _require
from invariant_mr.estimators.summary.sumstats import SummaryStatistics


def _profile(theta: np.ndarray, ratio: np.ndarray, ratio_se: np.ndarray, psi: float):
    """Profile log-likelihood at each theta and the valid/invalid assignment at each (chunked)."""
    lik_exc = -(ratio**2) / 2 / (psi**2 + ratio_se**2) - np.log(np.sqrt(2 * np.pi * (psi**2 + ratio_se**2)))
    const_inc = -np.log(np.sqrt(2 * np.pi * ratio_se**2))
    out = np.empty(theta.size)
    best_j, best_val, best_valid = -1, -np.inf, None
    chunk = max(1, 4_000_000 // max(1, ratio.size))
    for start in range(0, theta.size, chunk):
        th = theta[start : start + chunk, None]
        lik_inc = -((th - ratio) ** 2) / 2 / ratio_se**2 + const_inc
        valid = lik_inc > lik_exc
        lik = np.where(valid, lik_inc, lik_exc).sum(axis=1)
        out[start : start + chunk] = lik
        j = int(np.argmax(lik))
        if lik[j] > best_val:  # first maximum wins, as R's which.max
            best_j, best_val, best_valid = start + j, lik[j], valid[j].copy()
    return out, best_j, best_valid


@dataclass(frozen=True)
class ConMixResult:
    """Contamination mixture estimate with its (possibly disjoint) likelihood-ratio confidence set."""

    fit: SummaryMRFit
    intervals: tuple[tuple[float, float], ...]
    psi: float
    phi: float
    valid_variants: tuple[str, ...]
    grid: tuple[float, float, float]

    def summary(self) -> str:
        ranges = " U ".join(f"[{lo:.3f}, {hi:.3f}]" for lo, hi in self.intervals)
        return (
            f"mr_conmix: {self.fit.estimate:.3f}, CI {ranges}, p={self.fit.pvalue:.3g}; psi={self.psi:.4g}, "
            f"{len(self.valid_variants)}/{self.fit.n_variants} variants valid at the estimate"
        )


def mr_conmix(
    ss: SummaryStatistics,
    alpha: float = 0.05,
    *,
    psi: float = 0.0,
    ci_min: float | None = None,
    ci_max: float | None = None,
    ci_step: float = 0.01,
) -> ConMixResult:
    """Contamination mixture estimate (MendelianRandomization `mr_conmix`); see the module docstring.

    The returned `fit` has no SE (NaN): the interval comes from the
    likelihood ratio, and `fit.ci_low`/`ci_high` are the outer bounds of
    the confidence set (`intervals` lists its pieces).
    """
    _require(ss, 3, "the contamination mixture method")
    bx, _, by, sy = _arrays(ss)
    if np.any(bx == 0):
        raise InputError("the contamination mixture method needs non-zero exposure associations")
    if not 0 < alpha < 1:
        raise InputError(f"alpha must be in (0, 1), got {alpha}")
    ratio = by / bx
    ratio_se = np.abs(sy / bx)
    lo = float(np.min((by - 2 * sy) / bx)) if ci_min is None else float(ci_min)
    hi = float(np.max((by + 2 * sy) / bx)) if ci_max is None else float(ci_max)
    if not ci_step > 0 or hi <= lo:
        raise InputError(f"the conmix grid needs min < max and a positive step (got {lo}, {hi}, {ci_step})")
    n_grid = int(np.floor((hi - lo) / ci_step + 1e-10)) + 1  # R's seq(by = ) length
    if n_grid > 5_000_000:
        raise InputError(f"the conmix grid has {n_grid} points; give a larger step or a narrower range")
    psi = float(psi)
    if psi <= 0:
        psi = 1.5 * float(np.std(ratio, ddof=1))
    theta = lo + ci_step * np.arange(n_grid)
    loglik, best, valid = _profile(theta, ratio, ratio_se, psi)

    n_valid = int(valid.sum())
    if n_valid < 2:
        phi = 1.0
    else:
        w = ratio_se[valid] ** -2
        mean = np.sum(ratio[valid] * w) / np.sum(w)
        phi = max(float(np.sqrt(np.sum((ratio[valid] - mean) ** 2 * w) / (n_valid - 1))), 1.0)

    loglik0, _, _ = _profile(np.zeros(1), ratio, ratio_se, psi)
    inside = np.flatnonzero(2 * loglik > 2 * loglik[best] - chi2_ppf(1 - alpha, 1) * phi**2)
    ci_range = lo + ci_step * inside
    breaks = np.flatnonzero(np.diff(ci_range) > 1.01 * ci_step)
    lowers = np.concatenate([[ci_range.min()], ci_range[breaks + 1]])
    uppers = np.concatenate([ci_range[breaks], [ci_range.max()]])
    estimate = lo + ci_step * best
    pvalue = float(chi2_sf(2 * (loglik[best] - loglik0[0]) * phi**2, 1))
    at_edge = bool(inside.min() == 0 or inside.max() == n_grid - 1)
    fit = SummaryMRFit(
        "mr_conmix",
        float(estimate),
        float("nan"),
        float(lowers[0]),
        float(uppers[-1]),
        pvalue,
        ss.n_variants,
        {
            "psi": psi,
            "phi": phi,
            "ci_intervals": [[float(a), float(b)] for a, b in zip(lowers, uppers)],
            "ci_is_union": len(lowers) > 1,
            "ci_reaches_grid_edge": at_edge,
            "n_valid": n_valid,
            "valid_variants": [v for v, ok in zip(ss.variant, valid) if ok],
            "grid": [lo, hi, ci_step],
            "se_note": "no standard error: the confidence set comes from the profile likelihood ratio",
        },
    )
    return ConMixResult(
        fit,
        tuple((float(a), float(b)) for a, b in zip(lowers, uppers)),
        psi,
        phi,
        tuple(v for v, ok in zip(ss.variant, valid) if ok),
        (lo, hi, ci_step),
    )


__all__ = ["ConMixResult", "mr_conmix"]
