"""Multivariable MR from summary statistics: IVW, MR-Egger and conditional F statistics.

With K exposures, each variant has a (K,) vector of exposure associations
`bx[l]` and one outcome association `by[l]`. The direct effects `theta` of
all exposures are estimated jointly, so each one is the effect of that
exposure holding the others fixed.

* `mv_ivw` (Burgess & Thompson 2015, Am J Epidemiol 181:251): weighted
  regression of `by` on `bx` without intercept, weights `sy^-2`. SEs follow
  MendelianRandomization's `mr_mvivw`: the regression SE divided by
  `min(1, residual SE)` ("random", multiplicative random effects, so
  under-dispersion is not rewarded) or by the residual SE ("fixed");
  "default" is fixed with 3 variants or fewer, random otherwise.
  Cochran's Q = (L - K) * residual SE^2 on L - K degrees of freedom.
* `mv_egger` (Rees, Wood & Burgess 2017, Stat Med 36:4705): the same with an
  intercept, after orienting every variant so that its association with
  `orientate` (default the first exposure) is positive, as `mr_mvegger`
  does; always multiplicative random effects; Q on L - K - 1 df.
* `conditional_f_statistics` (Sanderson, Davey Smith, Windmeijer & Bowden
  2019, IJE 48:713; Sanderson, Spiller & Bowden 2021, Stat Med 40:5434):
  for exposure j, `delta` from the unweighted regression (no intercept) of
  `bx[:, j]` on the other exposures' associations, then
  `Q_j = sum_l (bx_lj - bx_l,-j' delta)^2 / (sx_lj^2 + sum_k delta_k^2 sx_lk^2)`
  and F_j = Q_j / L, exactly as MVMR's `strength_mvmr` with `gencov = 0`
  (exposure associations from non-overlapping samples). Rule of thumb:
  F_j > 10 for each exposure.

* `q_a_statistic`: MVMR's Q_A, the heterogeneity test with second-order
  weights that `pleiotropy_mvmr` prints; `mv_ivw` reports it with the
  first-order Q.

Intervals and p-values are normal (TwoSampleMR, MendelianRandomization) or,
with `pvalues="t"`, t on L - K (L - K - 1 for Egger) df, as MVMR prints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from invariant_mr.errors import InputError
from invariant_mr.estimators.tail_probabilities import chi2_sf, norm_ppf, norm_sf, t_ppf, t_sf
from invariant_mr.estimators.summary.summary_mr import SummaryMRFit


def _as_arrays(bx, sx, by, sy, exposures):
    bx = np.asarray(bx, dtype=float)
    sx = np.asarray(sx, dtype=float)
    if bx.ndim == 1:
        bx, sx = bx[:, None], sx[:, None]
    by = np.asarray(by, dtype=float).ravel()
    sy = np.asarray(sy, dtype=float).ravel()
    L, K = bx.shape
    if sx.shape != bx.shape:
        raise InputError(f"exposure SEs have shape {sx.shape}, the associations {bx.shape}")
    if by.shape[0] != L or sy.shape[0] != L:
        raise InputError(f"{L} variants with exposure associations but {by.shape[0]} outcome associations")
    for name, arr in (("exposure associations", bx), ("exposure SEs", sx), ("outcome associations", by), ("outcome SEs", sy)):
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{name} have missing or infinite values")
    if np.any(sx <= 0) or np.any(sy <= 0):
        raise InputError("standard errors must be positive")
    if exposures is None:
        exposures = tuple(f"exposure_{k + 1}" for k in range(K))
    exposures = tuple(str(e) for e in exposures)
    if len(exposures) != K:
        raise InputError(f"{len(exposures)} exposure names for {K} exposure columns")
    return bx, sx, by, sy, exposures


@dataclass(frozen=True)
class MultivariableMRFit:
    """Joint direct-effect estimates of K exposures; `rows()` gives one SummaryMRFit per exposure."""

    method: str
    exposures: tuple[str, ...]
    estimate: np.ndarray
    se: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    pvalue: np.ndarray
    n_variants: int
    model: str
    residual_se: float
    cochran_q: float
    cochran_q_df: int
    cochran_q_pvalue: float
    conditional_f: np.ndarray
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        for name in ("estimate", "se", "ci_low", "ci_high", "pvalue", "conditional_f"):
            arr = np.array(getattr(self, name), dtype=float, copy=True)
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))

    def rows(self) -> tuple[SummaryMRFit, ...]:
        """One result per exposure; `extra["exposure"]` names it."""
        out = []
        for k, name in enumerate(self.exposures):
            out.append(
                SummaryMRFit(
                    self.method,
                    float(self.estimate[k]),
                    float(self.se[k]),
                    float(self.ci_low[k]),
                    float(self.ci_high[k]),
                    float(self.pvalue[k]),
                    self.n_variants,
                    {
                        "exposure": name,
                        "exposures": list(self.exposures),
                        "model": self.model,
                        "residual_se": self.residual_se,
                        "cochran_q": self.cochran_q,
                        "cochran_q_df": self.cochran_q_df,
                        "cochran_q_pvalue": self.cochran_q_pvalue,
                        "conditional_f": float(self.conditional_f[k]),
                        **self.extra,
                    },
                )
            )
        return tuple(out)

    def summary(self) -> str:
        lines = [f"{self.method} ({self.model} effects, {self.n_variants} variants)"]
        for k, name in enumerate(self.exposures):
            lines.append(
                f"  {name}: {self.estimate[k]:.4f} (SE {self.se[k]:.4f}, CI [{self.ci_low[k]:.4f}, "
                f"{self.ci_high[k]:.4f}], p={self.pvalue[k]:.3g}, conditional F {self.conditional_f[k]:.1f})"
            )
        if "intercept" in self.extra:
            lines.append(
                f"  intercept: {self.extra['intercept']:.4f} (SE {self.extra['intercept_se']:.4f}, "
                f"p={self.extra['intercept_pvalue']:.3g})"
            )
        lines.append(
            f"  residual SE {self.residual_se:.3f}; Cochran's Q {self.cochran_q:.4f} on {self.cochran_q_df} df "
            f"(p={self.cochran_q_pvalue:.3g})"
        )
        return "\n".join(lines)


def conditional_f_statistics(bx, sx) -> np.ndarray:
    """Conditional F statistic of each exposure (MVMR `strength_mvmr`, gencov = 0); see module docstring."""
    bx = np.asarray(bx, dtype=float)
    sx = np.asarray(sx, dtype=float)
    L, K = bx.shape
    if K == 1:
        return np.mean((bx / sx) ** 2, axis=0)  # reduces to the mean per-variant F
    out = np.empty(K)
    for j in range(K):
        others = [k for k in range(K) if k != j]
        X = bx[:, others]
        delta, *_ = np.linalg.lstsq(X, bx[:, j], rcond=None)
        sigma2 = sx[:, j] ** 2 + (sx[:, others] ** 2) @ (delta**2)
        out[j] = np.sum((bx[:, j] - X @ delta) ** 2 / sigma2) / L
    return out


def _wls(X: np.ndarray, y: np.ndarray, w: np.ndarray):
    """Weighted least squares: coefficients, unscaled covariance (X'WX)^-1 and residual SE."""
    sw = np.sqrt(w)
    Xw, yw = X * sw[:, None], y * sw
    q, r = np.linalg.qr(Xw)
    if np.min(np.abs(np.diag(r))) < 1e-12 * np.max(np.abs(np.diag(r))):
        raise InputError("the exposure associations are collinear: the exposures cannot be separated")
    coef = np.linalg.solve(r, q.T @ yw)
    r_inv = np.linalg.inv(r)
    cov_unscaled = r_inv @ r_inv.T
    df = X.shape[0] - X.shape[1]
    rse = float(np.sqrt(np.sum((yw - Xw @ coef) ** 2) / df))
    return coef, cov_unscaled, rse, df


def _ci(est, se, alpha, pvalues: str = "twosamplemr", df: int | None = None):
    """Interval and p-values: normal (TwoSampleMR `mv_multiple`, MendelianRandomization) or t on the
    regression's df (MVMR `ivw_mvmr`, `pvalues="t"`)."""
    if pvalues not in ("twosamplemr", "normal", "t"):
        raise InputError(f"--summary-pvalues must be one of twosamplemr, normal, t, got {pvalues!r}")
    if pvalues == "t":
        q = t_ppf(1 - alpha / 2, df)
        return est - q * se, est + q * se, 2 * t_sf(np.abs(est / se), df)
    z = norm_ppf(1 - alpha / 2)
    return est - z * se, est + z * se, 2 * norm_sf(np.abs(est / se))


#: SE models of `mv_ivw`: "lm" scales the regression SE by the residual SE whatever its size (TwoSampleMR
#: `mv_multiple` and MVMR `ivw_mvmr`, the default); "random" by max(1, residual SE) and "fixed" not at
#: all (MendelianRandomization `mr_mvivw`), whose "default" is fixed with 3 variants or fewer, else random.
MV_MODELS = ("lm", "default", "random", "fixed")


def _model(model: str, L: int) -> str:
    if model not in MV_MODELS:
        raise InputError(f"model must be one of {', '.join(MV_MODELS)}, got {model!r}")
    if model == "default":
        return "fixed" if L < 4 else "random"
    return model


def q_a_statistic(bx, sx, by, sy, theta) -> tuple[float, int, float]:
    """MVMR's Q_A (Sanderson, Spiller & Bowden 2021; `pleiotropy_mvmr`, gencov = 0): heterogeneity of
    the outcome associations around the multivariable IVW fit, each weighted by its full variance
    `sy^2 + sum_k theta_k^2 sx_k^2` (second order, not just `sy^2`), on L - K - 1 df.
    Returns (Q_A, df, p-value)."""
    bx = np.asarray(bx, dtype=float)
    sx = np.asarray(sx, dtype=float)
    theta = np.asarray(theta, dtype=float)
    sigma2 = np.asarray(sy, dtype=float) ** 2 + (sx**2) @ (theta**2)
    q = float(np.sum((np.asarray(by, dtype=float) - bx @ theta) ** 2 / sigma2))
    df = bx.shape[0] - bx.shape[1] - 1
    return q, df, float(chi2_sf(q, df)) if df > 0 else float("nan")


def mv_ivw(
    bx,
    sx,
    by,
    sy,
    *,
    exposures: Sequence[str] | None = None,
    alpha: float = 0.05,
    model: str = "lm",
    pvalues: str = "twosamplemr",
) -> MultivariableMRFit:
    """Multivariable IVW; `model` picks the SE convention (`MV_MODELS`), `pvalues` normal or t.

    `bx`, `sx`: (L, K) exposure associations and SEs; `by`, `sy`: (L,). `extra` holds MVMR's
    Q_A (`q_a`, `q_a_df`, `q_a_pvalue`) beside the first-order Cochran's Q of the fit.
    """
    bx, sx, by, sy, exposures = _as_arrays(bx, sx, by, sy, exposures)
    L, K = bx.shape
    if L <= K:
        raise InputError(f"multivariable IVW needs more variants than exposures ({L} variants, {K} exposures)")
    model = _model(model, L)
    coef, cov_u, rse, df = _wls(bx, by, sy**-2)
    scale = {"random": max(1.0, rse), "lm": rse}.get(model, 1.0)
    se = np.sqrt(np.diag(cov_u)) * scale
    lo, hi, p = _ci(coef, se, alpha, pvalues, df)
    q = df * rse**2
    q_a, q_a_df, q_a_p = q_a_statistic(bx, sx, by, sy, coef)
    return MultivariableMRFit(
        "mv_ivw", exposures, coef, se, lo, hi, p, L, model, rse, float(q), df,
        float(chi2_sf(q, df)), conditional_f_statistics(bx, sx),
        {"q_a": q_a, "q_a_df": q_a_df, "q_a_pvalue": q_a_p, "pvalue_convention": pvalues,
         "pvalue_distribution": f"t({df})" if pvalues == "t" else "normal"},
    )  # fmt: skip


def mv_egger(
    bx,
    sx,
    by,
    sy,
    *,
    exposures: Sequence[str] | None = None,
    alpha: float = 0.05,
    orientate: int = 0,
    pvalues: str = "twosamplemr",
) -> MultivariableMRFit:
    """Multivariable MR-Egger (MendelianRandomization `mr_mvegger` conventions), intercept in `extra`."""
    bx, sx, by, sy, exposures = _as_arrays(bx, sx, by, sy, exposures)
    L, K = bx.shape
    if L <= K + 1:
        raise InputError(
            f"multivariable MR-Egger needs more variants than exposures + 1 ({L} variants, {K} exposures)"
        )
    if not 0 <= orientate < K:
        raise InputError(f"orientate must index an exposure (0..{K - 1}), got {orientate}")
    sign = np.where(bx[:, orientate] < 0, -1.0, 1.0)
    X = np.column_stack([np.ones(L), bx * sign[:, None]])
    coef, cov_u, rse, df = _wls(X, by * sign, sy**-2)
    se_all = np.sqrt(np.diag(cov_u)) * max(1.0, rse)
    lo, hi, p = _ci(coef, se_all, alpha, pvalues, df)
    q = df * rse**2
    return MultivariableMRFit(
        "mv_egger", exposures, coef[1:], se_all[1:], lo[1:], hi[1:], p[1:], L, "random", rse, float(q), df,
        float(chi2_sf(q, df)), conditional_f_statistics(bx, sx),
        {
            "intercept": float(coef[0]),
            "intercept_se": float(se_all[0]),
            "intercept_ci_low": float(lo[0]),
            "intercept_ci_high": float(hi[0]),
            "intercept_pvalue": float(p[0]),
            "orientated_to": exposures[orientate],
            "pvalue_convention": pvalues,
            "pvalue_distribution": f"t({df})" if pvalues == "t" else "normal",
        },
    )  # fmt: skip


__all__ = ["MV_MODELS", "MultivariableMRFit", "conditional_f_statistics", "mv_egger", "mv_ivw", "q_a_statistic"]
