"""Summary-statistic Mendelian randomization: the estimators MR users already trust.

All estimators take a `SummaryStatistics` (per-variant beta/SE with the
exposure, `bx`/`sx`, and with the outcome, `by`/`sy`) and return an immutable
`SummaryMRFit`. Conventions follow the MendelianRandomization R package
(Yavorska & Burgess 2017) and TwoSampleMR (Hemani et al. 2018):

* IVW, multiplicative random effects: the fixed-effect slope of `by` on `bx`
  through the origin with weights `sy^-2`; its SE is the fixed-effect SE
  times `max(1, sqrt(phi))`, `phi` = residual variance = Cochran's Q / (L-1).
  (Burgess, Butterworth & Thompson 2013, Genet Epidemiol 37:658; Bowden et
  al. 2017, Stat Med 36:1783.)
* MR-Egger: the same regression with an intercept, variants oriented so that
  `bx > 0`; SEs scaled by `max(1, residual SE)`; the intercept is the
  directional-pleiotropy test; I^2_GX (Bowden et al. 2016, IJE 45:1961)
  measures the NOME violation that dilutes the Egger slope.
* Weighted median (Bowden et al. 2016, Genet Epidemiol 40:304) with
  second-order weights (TwoSampleMR; `weights="first_order"`, `bx^2 / sy^2`,
  is MendelianRandomization's), a parametric bootstrap SE; the simple and
  penalised weighted medians; the fixed-effect IVW as a row of its own.
* Weighted mode (Hartwig, Davey Smith & Bowden 2017, IJE 46:1985): the mode
  of a weighted Gaussian kernel density of the ratio estimates with the
  modified Silverman bandwidth and second-order weights; SE = 1.4826 * MAD of
  a parametric bootstrap (as TwoSampleMR).
* MR-PRESSO (Verbanck et al. 2018, Nat Genet 50:693): leave-one-out residual
  sum of squares, its null distribution simulated (vectorised over all
  draws at once), Bonferroni-corrected per-variant outlier tests, the
  IVW estimate without the outliers, and the distortion test of whether
  removing them changed the estimate more than removing as many random
  variants would.

Where the two R packages differ the default follows current TwoSampleMR, and
every fit says which convention it used (`extra`). p-values follow
`pvalues` (`PVALUE_CONVENTIONS`): by default TwoSampleMR's, t for MR-Egger
and the mode estimators, normal elsewhere; intervals are normal unless
`pvalues="t"`. Every bootstrap or simulation takes a `numpy.random.Generator`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

from invariant_mr.errors import InputError
from invariant_mr.estimators.tail_probabilities import chi2_sf, norm_ppf, norm_sf, t_ppf, t_sf
from invariant_mr.estimators.summary.sumstats import SummaryStatistics

#: MAD to SD for the normal distribution (R's `mad` default constant).
_MAD_SCALE = 1.4826


@dataclass(frozen=True)
class SummaryMRFit:
    """One summary-statistic MR estimate with its Wald CI, p-value and extras."""

    method: str
    estimate: float
    se: float
    ci_low: float
    ci_high: float
    pvalue: float
    n_variants: int
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))

    def summary(self) -> str:
        return (
            f"{self.method}: {self.estimate:.4f} (SE {self.se:.4f}, "
            f"CI [{self.ci_low:.4f}, {self.ci_high:.4f}], p={self.pvalue:.3g}, L={self.n_variants})"
        )


#: How p-values (and intervals) are computed: "twosamplemr" follows current TwoSampleMR per method
#: (t for MR-Egger on L-2 df and the mode estimators on L-1 df, with normal intervals; normal
#: elsewhere), "normal" is MendelianRandomization's default everywhere, "t" uses the t distribution
#: for both p-values and intervals (MendelianRandomization `distribution = "t-dist"`).
PVALUE_CONVENTIONS = ("twosamplemr", "normal", "t")


def _check_pvalues(pvalues: str) -> None:
    if pvalues not in PVALUE_CONVENTIONS:
        raise InputError(f"--summary-pvalues must be one of {', '.join(PVALUE_CONVENTIONS)}, got {pvalues!r}")


def _wald(
    method: str, est: float, se: float, n_variants: int, alpha: float, extra: dict,
    *, pvalues: str = "normal", df: int | None = None, t_by_default: bool = False,
) -> SummaryMRFit:
    """The fit with its interval and p-value under the `pvalues` convention (`PVALUE_CONVENTIONS`).

    `df` is the method's residual degrees of freedom for the t distribution; `t_by_default` says
    whether current TwoSampleMR reports a t p-value for this method.
    """
    _check_pvalues(pvalues)
    use_t_p = df is not None and df > 0 and (pvalues == "t" or (pvalues == "twosamplemr" and t_by_default))
    use_t_ci = df is not None and df > 0 and pvalues == "t"
    q = t_ppf(1 - alpha / 2, df) if use_t_ci else norm_ppf(1 - alpha / 2)
    if se > 0 and np.isfinite(se):
        z = abs(est / se)
        p = float(2 * (t_sf(z, df) if use_t_p else norm_sf(z)))
    else:
        p = float("nan")
    extra = {**extra, "pvalue_distribution": f"t({df})" if use_t_p else "normal",
             "ci_distribution": f"t({df})" if use_t_ci else "normal", "pvalue_convention": pvalues}
    return SummaryMRFit(method, float(est), float(se), float(est - q * se), float(est + q * se), p, n_variants, extra)


def _arrays(ss: SummaryStatistics):
    return ss.beta_exposure, ss.se_exposure, ss.beta_outcome, ss.se_outcome


def _require(ss: SummaryStatistics, minimum: int, method: str) -> None:
    if ss.n_variants < minimum:
        raise InputError(f"{method} needs at least {minimum} variants, got {ss.n_variants}")


# ----------------------------------------------------------------------------- IVW
def cochran_q(ss: SummaryStatistics) -> tuple[float, int, float]:
    """Cochran's Q of the ratio estimates around the IVW estimate (first-order weights).

    Returns (Q, degrees of freedom L-1, p-value of the chi^2(L-1) test of no
    heterogeneity). Heterogeneity beyond chance signals invalid instruments
    (pleiotropy) or effect heterogeneity.
    """
    _require(ss, 2, "Cochran's Q")
    bx, _, by, sy = _arrays(ss)
    w = sy**-2
    theta = np.sum(w * bx * by) / np.sum(w * bx**2)
    q = float(np.sum(w * (by - theta * bx) ** 2))
    df = ss.n_variants - 1
    return q, df, float(chi2_sf(q, df))


def ivw(ss: SummaryStatistics, alpha: float = 0.05, *, pvalues: str = "twosamplemr") -> SummaryMRFit:
    """Inverse-variance weighted estimate, multiplicative random effects.

    With one variant this is the Wald ratio with its first-order SE. `extra` holds Cochran's Q,
    `residual_se` (what MendelianRandomization prints as the residual standard error), its
    square `phi`, and I^2 = (Q - df) / Q (truncated at 0), the share of the ratio estimates'
    variation beyond chance.
    """
    _require(ss, 1, "IVW")
    bx, _, by, sy = _arrays(ss)
    w = sy**-2
    sxx = float(np.sum(w * bx**2))
    theta = float(np.sum(w * bx * by) / sxx)
    se_fixed = 1.0 / np.sqrt(sxx)
    L = ss.n_variants
    if L == 1:
        return _wald("ivw", theta, se_fixed, L, alpha, {"model": "wald_ratio"}, pvalues=pvalues)
    q, df, q_p = cochran_q(ss)
    phi = q / df
    se = se_fixed * max(1.0, np.sqrt(phi))
    return _wald(
        "ivw",
        theta,
        se,
        L,
        alpha,
        {
            "model": "multiplicative_random_effects",
            "se_fixed_effect": float(se_fixed),
            "residual_se": float(np.sqrt(phi)),
            "phi": float(phi),
            "cochran_q": q,
            "cochran_q_df": df,
            "cochran_q_pvalue": q_p,
            "i_squared": float(max(0.0, (q - df) / q)) if q > 0 else 0.0,
        },
        pvalues=pvalues,
        df=L - 1,
    )


def ivw_fixed(ss: SummaryStatistics, alpha: float = 0.05, *, pvalues: str = "twosamplemr") -> SummaryMRFit:
    """IVW with fixed-effect SE `1 / sqrt(sum bx^2 / sy^2)` (TwoSampleMR `mr_ivw_fe`), a row of its own."""
    fit = ivw(ss, alpha, pvalues=pvalues)
    if ss.n_variants == 1:
        return replace(fit, method="ivw_fixed")
    extra = {k: v for k, v in fit.extra.items() if not k.endswith("distribution") and k != "pvalue_convention"}
    extra["model"] = "fixed_effect"
    return _wald("ivw_fixed", fit.estimate, fit.extra["se_fixed_effect"], ss.n_variants, alpha, extra,
                 pvalues=pvalues, df=ss.n_variants - 1)  # fmt: skip


def leave_one_out(ss: SummaryStatistics, alpha: float = 0.05) -> dict[str, np.ndarray]:
    """IVW (random effects) leaving out each variant in turn, vectorised.

    Returns arrays `variant`, `estimate`, `se`, `ci_low`, `ci_high`, each of
    length L. An estimate that moves a lot when one variant is dropped points
    to that variant as influential (possibly pleiotropic).
    """
    _require(ss, 3, "leave-one-out")
    bx, _, by, sy = _arrays(ss)
    w = sy**-2
    wxx, wxy, wyy = w * bx**2, w * bx * by, w * by**2
    sxx, sxy, syy = wxx.sum() - wxx, wxy.sum() - wxy, wyy.sum() - wyy
    theta = sxy / sxx
    df = ss.n_variants - 2
    q = syy - theta * sxy  # sum w (by - theta bx)^2 over the kept variants
    se = np.sqrt(1.0 / sxx) * np.maximum(1.0, np.sqrt(np.maximum(q, 0) / df))
    z = norm_ppf(1 - alpha / 2)
    return {
        "variant": np.array(ss.variant, dtype=object),
        "estimate": theta,
        "se": se,
        "ci_low": theta - z * se,
        "ci_high": theta + z * se,
    }


# ----------------------------------------------------------------------------- Egger
def i_squared_gx(ss: SummaryStatistics) -> float:
    """I^2_GX of Bowden et al. (2016): near 1 means MR-Egger's NOME assumption is tenable.

    Computed on `bx / sy` with weights `(sx / sy)^-2`, as the
    MendelianRandomization package does.
    """
    bx, sx, _, sy = _arrays(ss)
    bx = np.abs(bx)
    g = bx / sy
    w = (sx / sy) ** -2
    q = float(np.sum(w * (g - np.average(g, weights=w)) ** 2))
    return float(max(0.0, (q - (ss.n_variants - 1)) / q)) if q > 0 else 0.0


def mr_egger(ss: SummaryStatistics, alpha: float = 0.05, *, pvalues: str = "twosamplemr") -> SummaryMRFit:
    """MR-Egger regression: slope (causal estimate) and intercept (pleiotropy test).

    p-values of slope and intercept follow `pvalues`: TwoSampleMR uses t on L-2 df for both.
    """
    _require(ss, 3, "MR-Egger")
    _check_pvalues(pvalues)
    bx, _, by, sy = _arrays(ss)
    # Orientation: each variant coded so its exposure association is positive.
    sign = np.where(bx < 0, -1.0, 1.0)
    x, y = np.abs(bx), by * sign
    w = sy**-2
    X = np.column_stack([np.ones_like(x), x])
    XtW = X.T * w
    xtwx_inv = np.linalg.inv(XtW @ X)
    coef = xtwx_inv @ (XtW @ y)
    resid = y - X @ coef
    L = ss.n_variants
    df = L - 2
    rse = float(np.sqrt(np.sum(w * resid**2) / df))
    scale = max(1.0, rse)
    se_int, se_slope = np.sqrt(np.diag(xtwx_inv)) * scale
    t_p = pvalues in ("t", "twosamplemr")
    intercept_p = float(2 * (t_sf(abs(coef[0] / se_int), df) if t_p else norm_sf(abs(coef[0] / se_int))))
    z = t_ppf(1 - alpha / 2, df) if pvalues == "t" else norm_ppf(1 - alpha / 2)
    rucker_q = rse**2 * df
    return _wald(
        "mr_egger",
        coef[1],
        se_slope,
        L,
        alpha,
        {
            "intercept": float(coef[0]),
            "intercept_se": float(se_int),
            "intercept_ci_low": float(coef[0] - z * se_int),
            "intercept_ci_high": float(coef[0] + z * se_int),
            "intercept_pvalue": intercept_p,
            "residual_se": rse,
            "rucker_q": float(rucker_q),
            "rucker_q_df": df,
            "rucker_q_pvalue": float(chi2_sf(rucker_q, df)),
            "i_squared_gx": i_squared_gx(ss),
        },
        pvalues=pvalues,
        df=df,
        t_by_default=True,
    )


# ----------------------------------------------------------------------------- median
def weighted_median_rows(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted median of each row of `values` (B, L) with per-row weights (B, L) or (L,).

    The interpolated definition of Bowden et al. (2016): the ordered values
    are placed at the cumulative weight minus half their own weight, and the
    median is read off by linear interpolation at 0.5.
    """
    values = np.atleast_2d(np.asarray(values, dtype=float))
    B, L = values.shape
    weights = np.broadcast_to(np.asarray(weights, dtype=float), (B, L))
    order = np.argsort(values, axis=1, kind="stable")
    v = np.take_along_axis(values, order, axis=1)
    w = np.take_along_axis(weights, order, axis=1)
    w = w / w.sum(axis=1, keepdims=True)
    cum = np.cumsum(w, axis=1) - 0.5 * w
    k = np.clip((cum < 0.5).sum(axis=1), 1, L - 1)  # first position with cum >= 0.5
    rows = np.arange(B)
    lo_c, hi_c = cum[rows, k - 1], cum[rows, k]
    lo_v, hi_v = v[rows, k - 1], v[rows, k]
    return lo_v + (hi_v - lo_v) * (0.5 - lo_c) / (hi_c - lo_c)


#: Weights of the median estimators: the inverse variance of each ratio estimate, from the delta
#: method's second-order term (TwoSampleMR's `mr_weighted_median`) or first-order only `sy / |bx|`
#: (MendelianRandomization's `mr_median`), or equal weights (the simple median).
MEDIAN_WEIGHTS = ("second_order", "first_order")


def _ratio_variances(ss: SummaryStatistics, order: str) -> np.ndarray:
    bx, sx, by, sy = _arrays(ss)
    if order == "second_order":
        return sy**2 / bx**2 + by**2 * sx**2 / bx**4
    if order == "first_order":
        return sy**2 / bx**2
    raise InputError(f"--median-weights must be one of {', '.join(MEDIAN_WEIGHTS)}, got {order!r}")


def _median_bootstrap_se(ss: SummaryStatistics, weights: np.ndarray, n_bootstrap: int, rng) -> float:
    """SD of the weighted median over a parametric bootstrap of both associations (Bowden et al. 2016),
    the weights held fixed as TwoSampleMR and MendelianRandomization hold them; all draws at once."""
    bx, sx, by, sy = _arrays(ss)
    bx_b = rng.normal(bx, sx, size=(n_bootstrap, ss.n_variants))
    by_b = rng.normal(by, sy, size=(n_bootstrap, ss.n_variants))
    return float(np.std(weighted_median_rows(by_b / bx_b, weights), ddof=1))


def weighted_median(
    ss: SummaryStatistics,
    alpha: float = 0.05,
    *,
    n_bootstrap: int = 1000,
    rng: np.random.Generator | int = 0,
    weights: str = "second_order",
    pvalues: str = "twosamplemr",
) -> SummaryMRFit:
    """Weighted median of the ratio estimates, bootstrap SE (all draws at once).

    `weights="second_order"` (default, current TwoSampleMR) or `"first_order"` (MendelianRandomization).
    """
    _require(ss, 3, "weighted median")
    if n_bootstrap < 2:
        raise InputError(f"--n-bootstrap must be at least 2, got {n_bootstrap}")
    rng = np.random.default_rng(rng)
    bx, _, by, _ = _arrays(ss)
    w = 1.0 / _ratio_variances(ss, weights)
    est = float(weighted_median_rows(by / bx, w)[0])
    se = _median_bootstrap_se(ss, w, n_bootstrap, rng)
    return _wald("weighted_median", est, se, ss.n_variants, alpha, {"n_bootstrap": n_bootstrap, "weights": weights},
                 pvalues=pvalues, df=ss.n_variants - 1)  # fmt: skip


def simple_median(
    ss: SummaryStatistics, alpha: float = 0.05, *, n_bootstrap: int = 1000, rng: np.random.Generator | int = 0,
    pvalues: str = "twosamplemr",
) -> SummaryMRFit:
    """Median of the ratio estimates, every variant weighted equally (TwoSampleMR `mr_simple_median`)."""
    _require(ss, 3, "simple median")
    if n_bootstrap < 2:
        raise InputError(f"--n-bootstrap must be at least 2, got {n_bootstrap}")
    rng = np.random.default_rng(rng)
    bx, _, by, _ = _arrays(ss)
    w = np.full(ss.n_variants, 1.0 / ss.n_variants)
    est = float(weighted_median_rows(by / bx, w)[0])
    se = _median_bootstrap_se(ss, w, n_bootstrap, rng)
    return _wald("simple_median", est, se, ss.n_variants, alpha, {"n_bootstrap": n_bootstrap, "weights": "equal"},
                 pvalues=pvalues, df=ss.n_variants - 1)  # fmt: skip


def penalised_weighted_median(
    ss: SummaryStatistics, alpha: float = 0.05, *, n_bootstrap: int = 1000, rng: np.random.Generator | int = 0,
    penk: float = 20.0, weights: str = "second_order", pvalues: str = "twosamplemr",
) -> SummaryMRFit:
    """Penalised weighted median (Burgess et al. 2016, Epidemiology 27:e40; TwoSampleMR `mr_penalised_weighted_median`).

    Each variant's weight is multiplied by `min(1, penk * p_j)`, p_j the chi^2(1) p-value of
    `w_j (ratio_j - weighted median)^2`: variants whose ratio estimate is far from the weighted
    median in units of its own SE lose weight. The point estimate's weighted median, the
    penalised weighted median and its bootstrap use one generator in that order.
    """
    _require(ss, 3, "penalised weighted median")
    if n_bootstrap < 2:
        raise InputError(f"--n-bootstrap must be at least 2, got {n_bootstrap}")
    if penk <= 0:
        raise InputError(f"the penalisation constant must be positive, got {penk}")
    rng = np.random.default_rng(rng)
    bx, _, by, _ = _arrays(ss)
    ratio = by / bx
    w = 1.0 / _ratio_variances(ss, weights)
    wm = float(weighted_median_rows(ratio, w)[0])
    penalty = chi2_sf(w * (ratio - wm) ** 2, df=1)
    pen_w = w * np.minimum(1.0, penalty * penk)
    est = float(weighted_median_rows(ratio, pen_w)[0])
    se = _median_bootstrap_se(ss, pen_w, n_bootstrap, rng)
    return _wald(
        "penalised_weighted_median", est, se, ss.n_variants, alpha,
        {"n_bootstrap": n_bootstrap, "weights": weights, "penk": penk, "weighted_median": wm,
         "n_downweighted": int(np.sum(penalty * penk < 1))},
        pvalues=pvalues, df=ss.n_variants - 1,
    )  # fmt: skip


# ----------------------------------------------------------------------------- mode
def _mad_rows(x: np.ndarray) -> np.ndarray:
    med = np.median(x, axis=1, keepdims=True)
    return _MAD_SCALE * np.median(np.abs(x - med), axis=1)


#: Kernel support used by `kde_mode_rows`, in bandwidths: a value farther than this from a grid
#: point adds less than exp(-72) ~ 5e-32 of its weight there, below rounding of any density value
#: that can be the mode (rows whose largest density is under `_KDE_EXACT_BELOW` are done exactly).
_KDE_CUTOFF = 12.0
_KDE_EXACT_BELOW = 1e-18
#: Above this share of (value, grid point) pairs inside the support, the dense evaluation is cheaper.
_KDE_SPARSE_MAX_SHARE = 0.25
#: Entries of the kernel tensor (dense) or of the pair list (sparse) evaluated at once.
_KDE_CHUNK = 16_000_000


def _kde_dense(grid: np.ndarray, values: np.ndarray, h: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted Gaussian kernel sums on each row's grid, every (grid point, value) pair."""
    u = (grid[:, :, None] - values[:, None, :]) / h[:, None, None]
    return np.einsum("bgl,bl->bg", np.exp(-0.5 * u * u), w)


def _kde_sparse(
    lo: np.ndarray, step: np.ndarray, values: np.ndarray, h: np.ndarray, w: np.ndarray,
    first: np.ndarray, counts: np.ndarray, n_grid: int,
) -> np.ndarray:
    """The same sums from only the pairs within `_KDE_CUTOFF` bandwidths (one flat list of pairs).

    Grid points and scaled distances are formed exactly as in `_kde_dense`, so every kernel
    value is bit-identical; only the order of the additions differs.
    """
    B, L = values.shape
    flat_counts = counts.ravel()
    total = int(flat_counts.sum())
    pair = np.repeat(np.arange(B * L), flat_counts)
    offsets = np.arange(total) - np.repeat(np.cumsum(flat_counts) - flat_counts, flat_counts)
    row = pair // L
    g = first.ravel()[pair] + offsets
    grid = lo[row] + step[row] * g
    u = (grid - values.ravel()[pair]) / h[row]
    contrib = np.exp(-0.5 * u * u) * w.ravel()[pair]
    return np.bincount(row * n_grid + g, weights=contrib, minlength=B * n_grid).reshape(B, n_grid)


def kde_mode_rows(
    values: np.ndarray, weights: np.ndarray, phi: float = 1.0, n_grid: int = 512
) -> np.ndarray:
    """Mode of a weighted Gaussian KDE of each row of `values` (B, L).

    Bandwidth: `phi * 0.9 * min(sd, mad) / L^(1/5)` (Bickel's modified
    Silverman rule, as Hartwig et al. 2017). The density is evaluated on an
    `n_grid` grid over [min - 3h, max + 3h] (R's `density` range) and the
    maximum refined by a parabola through the grid maximum and its
    neighbours, so the mode is not limited to the grid resolution.

    Ratio estimates of weak variants spread over a range hundreds of
    bandwidths wide, so most (grid point, value) pairs add nothing: only the
    pairs within `_KDE_CUTOFF` bandwidths are evaluated (the same kernel values,
    summed in another order), which makes a 1000-draw bootstrap of 1000
    variants about a hundred times cheaper. Narrow ranges use the dense sum.
    """
    values = np.atleast_2d(np.asarray(values, dtype=float))
    B, L = values.shape
    w = np.broadcast_to(np.asarray(weights, dtype=float), (B, L))
    w = w / w.sum(axis=1, keepdims=True)
    s = 0.9 * np.minimum(np.std(values, axis=1, ddof=1), _mad_rows(values)) / L**0.2
    h = np.maximum(s * phi, 1e-8)
    lo = values.min(axis=1) - 3 * h
    hi = values.max(axis=1) + 3 * h
    step = (hi - lo) / (n_grid - 1)
    reach = _KDE_CUTOFF * h[:, None]
    first = np.clip(np.ceil((values - reach - lo[:, None]) / step[:, None]), 0, n_grid - 1).astype(np.int64)
    last = np.clip(np.floor((values + reach - lo[:, None]) / step[:, None]), 0, n_grid - 1).astype(np.int64)
    counts = np.maximum(last - first + 1, 0)
    sparse = counts.sum() <= _KDE_SPARSE_MAX_SHARE * B * L * n_grid
    per_row = counts.sum(axis=1) if sparse else np.full(B, n_grid * L)
    out = np.empty(B)
    gidx = np.arange(n_grid)
    start = 0
    while start < B:
        # Rows whose pairs (or kernel entries) fit in one chunk, at least one row.
        stop = start + max(1, int(np.searchsorted(np.cumsum(per_row[start:]), _KDE_CHUNK, side="right")))
        sl = slice(start, min(B, stop))
        grid = lo[sl, None] + step[sl, None] * gidx[None, :]
        if sparse:
            dens = _kde_sparse(lo[sl], step[sl], values[sl], h[sl], w[sl], first[sl], counts[sl], n_grid)
            faint = np.flatnonzero(dens.max(axis=1) < _KDE_EXACT_BELOW)
            if faint.size:  # no value near any grid point: truncation error could matter there
                rows = np.arange(B)[sl][faint]
                dens[faint] = _kde_dense(grid[faint], values[rows], h[rows], w[rows])
        else:
            dens = _kde_dense(grid, values[sl], h[sl], w[sl])
        k = np.clip(np.argmax(dens, axis=1), 1, n_grid - 2)
        rows = np.arange(dens.shape[0])
        f0, f1, f2 = dens[rows, k - 1], dens[rows, k], dens[rows, k + 1]
        denom = f0 - 2 * f1 + f2
        offset = np.where(denom < 0, 0.5 * (f0 - f2) / np.where(denom < 0, denom, -1.0), 0.0)
        out[sl] = grid[rows, k] + np.clip(offset, -1, 1) * step[sl]
        start = sl.stop
    return out


#: How the mode of the ratio density is located: "r_density" reproduces R's `density()` (linear binning
#: on 512 points, FFT convolution, the maximum of its 512-point output grid), as TwoSampleMR's `mr_mode`
#: and MendelianRandomization's `mr_mbe` read it; "exact" evaluates the kernel sum itself and refines the
#: maximum between grid points (`kde_mode_rows`).
MODE_DENSITIES = ("r_density", "exact")


def _bandwidths(values: np.ndarray, phi: float) -> np.ndarray:
    L = values.shape[1]
    s = 0.9 * np.minimum(np.std(values, axis=1, ddof=1), _mad_rows(values)) / L**0.2
    return np.maximum(s * phi, 1e-8)


def r_density_mode_rows(values: np.ndarray, weights: np.ndarray, phi: float = 1.0, n: int = 512) -> np.ndarray:
    """The mode of each row's weighted Gaussian density exactly as R's `density(x, weights, bw)` gives it.

    R bins the values linearly onto 2n points over [min - 7 bw, max + 7 bw] (`BinDist`), convolves with
    the Gaussian kernel by FFT, keeps the first n points, interpolates them linearly onto the n output
    points from min - 3 bw to max + 3 bw, and `mr_mode` returns the output point with the largest density.
    Every row at once; bandwidth `phi * 0.9 * min(sd, mad) / L^(1/5)` as `kde_mode_rows`.
    """
    values = np.atleast_2d(np.asarray(values, dtype=float))
    B, L = values.shape
    w = np.broadcast_to(np.asarray(weights, dtype=float), (B, L))
    w = w / w.sum(axis=1, keepdims=True)
    bw = _bandwidths(values, phi)
    lo_out = values.min(axis=1) - 3 * bw
    hi_out = values.max(axis=1) + 3 * bw
    lo, up = lo_out - 4 * bw, hi_out + 4 * bw
    delta = (up - lo) / (n - 1)
    pos = (values - lo[:, None]) / delta[:, None]
    ix = np.floor(pos).astype(np.int64)
    fx = pos - ix
    grid = np.zeros((B, 2 * n))
    rows = np.repeat(np.arange(B), L).reshape(B, L)
    inside = (ix >= 0) & (ix <= n - 2)
    np.add.at(grid, (rows[inside], ix[inside]), (w * (1 - fx))[inside])
    np.add.at(grid, (rows[inside], ix[inside] + 1), (w * fx)[inside])
    below = ix == -1
    np.add.at(grid, (rows[below], np.zeros(int(below.sum()), dtype=np.int64)), (w * fx)[below])
    above = ix == n - 1
    np.add.at(grid, (rows[above], ix[above]), (w * (1 - fx))[above])
    kords = np.linspace(0, 1, 2 * n)[None, :] * (2 * (up - lo))[:, None]
    kords[:, n + 1:] = -kords[:, n - 1:0:-1]
    kern = np.exp(-0.5 * (kords / bw[:, None]) ** 2) / (np.sqrt(2 * np.pi) * bw[:, None])
    conv = np.fft.ifft(np.fft.fft(grid, axis=1) * np.conj(np.fft.fft(kern, axis=1)), axis=1)
    dens = np.maximum(0.0, conv.real[:, :n])  # numpy's ifft already divides by 2n, as R does after fft(inverse = TRUE)
    xords = lo[:, None] + delta[:, None] * np.arange(n)[None, :]
    xout = lo_out[:, None] + ((hi_out - lo_out) / (n - 1))[:, None] * np.arange(n)[None, :]
    # approx(xords, dens, xout): xout lies inside [lo, up], 4 bandwidths from either end.
    j = np.clip(np.floor((xout - lo[:, None]) / delta[:, None]).astype(np.int64), 0, n - 2)
    x0 = np.take_along_axis(xords, j, axis=1)
    y0, y1 = np.take_along_axis(dens, j, axis=1), np.take_along_axis(dens, j + 1, axis=1)
    yout = y0 + (y1 - y0) * (xout - x0) / delta[:, None]
    return xout[np.arange(B), np.argmax(yout, axis=1)]


def _mode_rows(values, weights, phi, density: str) -> np.ndarray:
    if density == "r_density":
        return r_density_mode_rows(values, weights, phi)
    if density == "exact":
        return kde_mode_rows(values, weights, phi)
    raise InputError(f"--mode-density must be one of {', '.join(MODE_DENSITIES)}, got {density!r}")


def weighted_mode(
    ss: SummaryStatistics,
    alpha: float = 0.05,
    *,
    phi: float = 1.0,
    n_bootstrap: int = 1000,
    rng: np.random.Generator | int = 0,
    pvalues: str = "twosamplemr",
    density: str = "r_density",
) -> SummaryMRFit:
    """Weighted mode-based estimate (Hartwig et al. 2017), bootstrap SE.

    The mode is read off R's `density()` grid as TwoSampleMR does (`density="r_density"`), or
    from the exact kernel sum (`"exact"`, `kde_mode_rows`).

    Weights are the inverse squared second-order (delta-method) SEs of the
    ratio estimates, without the NOME assumption (TwoSampleMR's default
    "Weighted mode").
    """
    return _mode_estimate("weighted_mode", ss, alpha, weighted=True, phi=phi, n_bootstrap=n_bootstrap, rng=rng,
                          pvalues=pvalues, density=density)


def simple_mode(
    ss: SummaryStatistics,
    alpha: float = 0.05,
    *,
    phi: float = 1.0,
    n_bootstrap: int = 1000,
    rng: np.random.Generator | int = 0,
    pvalues: str = "twosamplemr",
    density: str = "r_density",
) -> SummaryMRFit:
    """Simple mode-based estimate (Hartwig et al. 2017; TwoSampleMR `mr_simple_mode`): the mode of an
    unweighted kernel density of the ratio estimates; SE = 1.4826 MAD of a parametric bootstrap of
    the ratios with their second-order SEs; p-value on t(L-1) as TwoSampleMR."""
    return _mode_estimate("simple_mode", ss, alpha, weighted=False, phi=phi, n_bootstrap=n_bootstrap, rng=rng,
                          pvalues=pvalues, density=density)


def simple_mode_nome(ss: SummaryStatistics, alpha: float = 0.05, *, phi: float = 1.0, n_bootstrap: int = 1000,
                     rng: np.random.Generator | int = 0, pvalues: str = "twosamplemr",
                     density: str = "r_density") -> SummaryMRFit:  # fmt: skip
    """Simple mode assuming NOME (TwoSampleMR `mr_simple_mode_nome`): the simple mode's estimate, with
    the bootstrap drawing each ratio from its first-order SE `sy / |bx|` instead of the second-order one."""
    return _mode_estimate("simple_mode_nome", ss, alpha, weighted=False, phi=phi, n_bootstrap=n_bootstrap, rng=rng,
                          pvalues=pvalues, density=density, se_order="first_order")


def weighted_mode_nome(ss: SummaryStatistics, alpha: float = 0.05, *, phi: float = 1.0, n_bootstrap: int = 1000,
                       rng: np.random.Generator | int = 0, pvalues: str = "twosamplemr",
                       density: str = "r_density") -> SummaryMRFit:  # fmt: skip
    """Weighted mode assuming NOME (TwoSampleMR `mr_weighted_mode_nome`): weights and bootstrap both use
    the first-order SEs `sy / |bx|` of the ratio estimates (no measurement error in `bx`)."""
    return _mode_estimate("weighted_mode_nome", ss, alpha, weighted=True, phi=phi, n_bootstrap=n_bootstrap, rng=rng,
                          pvalues=pvalues, density=density, se_order="first_order")


def _mode_estimate(name, ss, alpha, *, weighted, phi, n_bootstrap, rng, pvalues, density,
                   se_order: str = "second_order") -> SummaryMRFit:  # fmt: skip
    """The mode of a kernel density of the ratio estimates, weighted by their inverse squared SEs or not;
    SE = 1.4826 MAD of a parametric bootstrap of the ratios; p-value on t(L-1) (TwoSampleMR). The ratio
    SEs are second-order (TwoSampleMR's default modes) or first-order (`se_order="first_order"`, its
    NOME variants)."""
    _require(ss, 3, name.replace("_", " "))
    if n_bootstrap < 2:
        raise InputError(f"--n-bootstrap must be at least 2, got {n_bootstrap}")
    rng = np.random.default_rng(rng)
    bx, _, by, _ = _arrays(ss)
    ratio = by / bx
    se_ratio = np.sqrt(_ratio_variances(ss, se_order))
    weights = se_ratio**-2 if weighted else np.ones(ss.n_variants)
    est = float(_mode_rows(ratio, weights, phi, density)[0])
    boot = _mode_rows(rng.normal(ratio, se_ratio, size=(n_bootstrap, ss.n_variants)), weights, phi, density)
    se = float(_MAD_SCALE * np.median(np.abs(boot - np.median(boot))))
    extra = {"n_bootstrap": n_bootstrap, "phi": phi, "density": density, "ratio_se": se_order}
    if se_order == "first_order":  # TwoSampleMR's names for its NOME rows
        extra["twosamplemr_obj"] = "mr_weighted_mode_nome" if weighted else "mr_simple_mode_nome"
        extra["twosamplemr_method"] = "Weighted mode (NOME)" if weighted else "Simple mode (NOME)"
    return _wald(name, est, se, ss.n_variants, alpha, extra,
                 pvalues=pvalues, df=ss.n_variants - 1, t_by_default=True)  # fmt: skip


# ----------------------------------------------------------------------------- MR-PRESSO
def _loo_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Leave-one-out least-squares slopes through the origin; x, y are (..., L)."""
    sxx = np.sum(x * x, axis=-1, keepdims=True) - x * x
    sxy = np.sum(x * y, axis=-1, keepdims=True) - x * y
    return sxy / sxx


@dataclass(frozen=True)
class PressoResult:
    """MR-PRESSO global test, per-variant outlier tests and the outlier-corrected IVW."""

    rss_observed: float
    global_pvalue: float
    outlier_pvalues: np.ndarray | None
    outliers: tuple[str, ...]
    raw: SummaryMRFit
    corrected: SummaryMRFit | None
    n_distribution: int
    distortion_coefficient: float | None = None
    distortion_pvalue: float | None = None

    def summary(self) -> str:
        lines = [
            f"MR-PRESSO global test: RSS={self.rss_observed:.4g}, p={self.global_pvalue:.3g} "
            f"({self.n_distribution} simulated data sets)",
            "  raw " + self.raw.summary(),
        ]
        if self.corrected is not None:
            lines.append(f"  outliers: {', '.join(self.outliers)}")
            lines.append("  corrected " + self.corrected.summary())
        if self.distortion_pvalue is not None:
            lines.append(
                f"  distortion test: estimate changed by {self.distortion_coefficient:.1f}% "
                f"when the outliers were removed, p={self.distortion_pvalue:.3g}"
            )
        return "\n".join(lines)


def presso_distortion_test(
    ss: SummaryStatistics, outliers: np.ndarray, n_distribution: int, rng: np.random.Generator
) -> tuple[float, float]:
    """MR-PRESSO distortion test: (distortion coefficient in %, p-value).

    As the MRPRESSO R package: with theta_all the weighted (sy^-2) slope
    through the origin on all variants and theta_kept the slope without the
    outliers, the observed bias is (theta_all - theta_kept) / |theta_kept|.
    Its null distribution re-fits the slope on the outliers plus as many
    variants drawn with replacement from the non-outliers as there are
    non-outliers; the p-value is the share of |expected bias| above
    |observed bias|. All draws are scored at once.
    """
    bx, _, by, sy = _arrays(ss)
    w = sy**-2
    out = np.asarray(outliers, dtype=bool)
    kept = np.flatnonzero(~out)
    wxx, wxy = w * bx * bx, w * bx * by
    theta_all = wxy.sum() / wxx.sum()
    theta_kept = wxy[kept].sum() / wxx[kept].sum()
    draws = kept[rng.integers(0, kept.size, size=(n_distribution, kept.size))]
    theta_rand = (wxy[out].sum() + wxy[draws].sum(axis=1)) / (wxx[out].sum() + wxx[draws].sum(axis=1))
    bias_obs = (theta_all - theta_kept) / abs(theta_kept)
    bias_exp = (theta_all - theta_rand) / np.abs(theta_rand)
    return float(100 * bias_obs), float(np.mean(np.abs(bias_exp) > abs(bias_obs)))


def mr_presso(
    ss: SummaryStatistics,
    alpha: float = 0.05,
    *,
    n_distribution: int = 1000,
    significance: float = 0.05,
    rng: np.random.Generator | int = 0,
    distortion: bool = True,
) -> PressoResult:
    """MR-PRESSO (Verbanck et al. 2018) with a vectorised null distribution.

    Observed statistic: RSS = sum_i (y_i - b_(-i) x_i)^2 on `x = bx/sy`,
    `y = by/sy`, where b_(-i) is the IVW slope without variant i. Null data:
    `bx* ~ N(bx, sx)`, `by*_i ~ N(b_(-i) bx_i, sy_i)`; the p-value is the
    share of simulated RSS above the observed one. When the global test
    rejects at `significance`, each variant's outlier p-value is the share
    of simulated `|by*_i - b_(-i) bx*_i|` above the observed
    `|by_i - b_(-i) bx_i|`, times L (Bonferroni), capped at 1; variants
    below `significance` are removed and IVW (multiplicative random effects)
    is refitted on the rest. All `n_distribution` data sets are simulated
    and scored as one (n_distribution, L) array. When outliers were
    removed and `distortion` is set, `presso_distortion_test` runs on
    `n_distribution` further draws from the same generator.
    """
    _require(ss, 3, "MR-PRESSO")
    L = ss.n_variants
    if n_distribution <= L:
        raise InputError(
            f"--n-distribution ({n_distribution}) must exceed the number of variants ({L}) for MR-PRESSO's empirical p-values"
        )
    rng = np.random.default_rng(rng)
    bx, sx, by, sy = _arrays(ss)
    sw = 1.0 / sy
    x, y = bx * sw, by * sw
    slopes = _loo_slopes(x, y)
    rss_obs = float(np.sum((y - slopes * x) ** 2))

    bx_r = rng.normal(bx, sx, size=(n_distribution, L))
    by_r = rng.normal(slopes * bx, sy, size=(n_distribution, L))
    xr, yr = bx_r * sw, by_r * sw
    rss_exp = np.sum((yr - _loo_slopes(xr, yr) * xr) ** 2, axis=1)
    global_p = float(np.mean(rss_exp > rss_obs))

    raw = ivw(ss, alpha)
    outlier_p = None
    outliers: tuple[str, ...] = ()
    corrected = None
    distortion_coef = distortion_p = None
    if global_p < significance:
        dif = np.abs(by - bx * slopes)
        exp = np.abs(by_r - bx_r * slopes)
        outlier_p = np.minimum(np.mean(exp > dif, axis=0) * L, 1.0)
        is_out = outlier_p < significance
        outliers = tuple(v for v, o in zip(ss.variant, is_out) if o)
        if 0 < is_out.sum() < L - 1:
            fit = ivw(ss.subset(~is_out), alpha)
            corrected = SummaryMRFit(
                "mr_presso",
                fit.estimate,
                fit.se,
                fit.ci_low,
                fit.ci_high,
                fit.pvalue,
                fit.n_variants,
                {**fit.extra, "outliers": list(outliers)},
            )
            if distortion:
                distortion_coef, distortion_p = presso_distortion_test(ss, is_out, n_distribution, rng)
    return PressoResult(
        rss_obs, global_p, outlier_p, outliers, raw, corrected, n_distribution, distortion_coef, distortion_p
    )


__all__ = [
    "MEDIAN_WEIGHTS",
    "MODE_DENSITIES",
    "PVALUE_CONVENTIONS",
    "PressoResult",
    "SummaryMRFit",
    "cochran_q",
    "i_squared_gx",
    "ivw",
    "ivw_fixed",
    "kde_mode_rows",
    "leave_one_out",
    "mr_egger",
    "mr_presso",
    "penalised_weighted_median",
    "presso_distortion_test",
    "r_density_mode_rows",
    "simple_median",
    "simple_mode",
    "simple_mode_nome",
    "weighted_median",
    "weighted_median_rows",
    "weighted_mode",
    "weighted_mode_nome",
]
