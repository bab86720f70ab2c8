"""TwoSampleMR's less common summary-statistic methods, each as `mr()` defines it.

* `sign_concordance` (`mr_sign`): an exact binomial test of how often the exposure and outcome
  associations share their sign; the "estimate" is 2 (proportion concordant - 0.5), in [-1, 1],
  not an effect size, and it has no SE.
* `unweighted_regression` (`mr_uwr`): least squares of `by` on `bx` through the origin, no weights,
  SE divided by `min(1, residual SE)` as `mr_ivw` does.
* `ivw_mre` (`mr_ivw_mre`): IVW whose SE is the weighted regression's own, scaled by the residual
  SE even when it is below 1 (no floor for under-dispersion).
* `two_sample_ml` (`mr_two_sample_ml`, Burgess, Butterworth & Thompson 2013): maximum likelihood
  with the true exposure associations as nuisance parameters; solved on the profile likelihood,
  SE from the inverse of the full Hessian, Q = twice the minimised negative log-likelihood.
* `mr_grip` (`mr_grip`, Dudbridge, Bowden et al. 2025): MR-Egger made invariant to allele coding by
  multiplying each term by `bx`: `by bx` on `bx^2` with an intercept, weights `1 / (bx^2 sy^2)`.
* `egger_bootstrap` (`mr_egger_regression_bootstrap`): MR-Egger refitted on parametric bootstrap
  draws of both associations; estimate = mean, SE = SD over draws, p = share of draws of the
  other sign.

Every number here is a port of the published definition (TwoSampleMR R/mr.R), never of its code;
the tests check each against a reference library or the formula worked by hand.
"""

from __future__ import annotations

import numpy as np

from invariant_mr.errors import InputError
from invariant_mr.estimators.summary.summary_mr import SummaryMRFit, _arrays, _require, _wald
from invariant_mr.estimators.summary.sumstats import SummaryStatistics
from invariant_mr.estimators.tail_probabilities import chi2_sf

#: Our method name -> (TwoSampleMR's function, the name `mr()` prints in its `method` column), from
#: `mr_method_list()` (TwoSampleMR R/mr.R). The methods of this module carry both in `extra`
#: (`twosamplemr_obj`, `twosamplemr_method`); the older rows are listed so tables can be relabelled.
TWOSAMPLEMR_METHODS = {
    "ivw": ("mr_ivw", "Inverse variance weighted"),
    "ivw_fixed": ("mr_ivw_fe", "Inverse variance weighted (fixed effects)"),
    "ivw_radial": ("mr_ivw_radial", "IVW radial"),  # its first row: RadialMR ivw_radial(weights = 3)'s "effect"
    "ivw_mre": ("mr_ivw_mre", "Inverse variance weighted (multiplicative random effects)"),
    "mr_egger": ("mr_egger_regression", "MR Egger"),
    "mr_egger_bootstrap": ("mr_egger_regression_bootstrap", "MR Egger (bootstrap)"),
    "weighted_median": ("mr_weighted_median", "Weighted median"),
    "simple_median": ("mr_simple_median", "Simple median"),
    "penalised_weighted_median": ("mr_penalised_weighted_median", "Penalised weighted median"),
    "simple_mode": ("mr_simple_mode", "Simple mode"),
    "weighted_mode": ("mr_weighted_mode", "Weighted mode"),
    "simple_mode_nome": ("mr_simple_mode_nome", "Simple mode (NOME)"),
    "weighted_mode_nome": ("mr_weighted_mode_nome", "Weighted mode (NOME)"),
    "mr_raps": ("mr_raps", "Robust adjusted profile score (RAPS)"),
    "mr_sign": ("mr_sign", "Sign concordance test"),
    "mr_uwr": ("mr_uwr", "Unweighted regression"),
    "mr_two_sample_ml": ("mr_two_sample_ml", "Maximum likelihood"),
    "mr_grip": ("mr_grip", "MR GRIP"),
}


def _convention(method: str) -> dict:
    obj, name = TWOSAMPLEMR_METHODS[method]
    return {"twosamplemr_obj": obj, "twosamplemr_method": name}


# ----------------------------------------------------------------------------- sign concordance
def binomial_two_sided_p_half(successes: int, trials: int) -> float:
    """R's `binom.test(x, n, p = 0.5)$p.value`: with p = 1/2 the distribution is symmetric, so the
    outcomes no more likely than the observed one are the two tails beyond min(x, n - x)."""
    from scipy.special import bdtr

    if trials < 1 or not 0 <= successes <= trials:
        raise InputError(f"binomial test needs 0 <= successes <= trials and trials >= 1, got {successes}/{trials}")
    if 2 * successes == trials:
        return 1.0
    k = min(successes, trials - successes)
    return float(min(1.0, 2 * bdtr(k, trials, 0.5)))


def sign_concordance(ss: SummaryStatistics, alpha: float = 0.05) -> SummaryMRFit:
    """Sign concordance test (TwoSampleMR `mr_sign`).

    Variants with an exposure or outcome association of exactly 0 are left out (their sign is
    undefined), and at least 6 must remain, as TwoSampleMR requires. The estimate is
    `2 (x / n - 1/2)`, +1 when every sign agrees; the p-value is the exact two-sided binomial test
    of a concordance probability of 1/2. There is no SE or interval.
    """
    bx, _, by, _ = _arrays(ss)
    usable = (bx != 0) & (by != 0) & np.isfinite(bx) & np.isfinite(by)
    n = int(usable.sum())
    if n < 6:
        raise InputError(f"the sign concordance test needs at least 6 variants with non-zero associations, got {n}")
    x = int(np.sum(np.sign(bx[usable]) == np.sign(by[usable])))
    nan = float("nan")
    extra = {**_convention("mr_sign"), "n_concordant": x, "n_tested": n,
             "statistic": "2 (proportion of concordant signs - 0.5)", "pvalue_distribution": "exact binomial(n, 0.5)"}
    return SummaryMRFit("mr_sign", 2 * (x / n - 0.5), nan, nan, nan, binomial_two_sided_p_half(x, n), n, extra)


# ----------------------------------------------------------------------------- unweighted regression, IVW (MRE)
def unweighted_regression(ss: SummaryStatistics, alpha: float = 0.05) -> SummaryMRFit:
    """Unweighted regression (TwoSampleMR `mr_uwr`): `lm(by ~ -1 + bx)`, SE / min(1, residual SE).

    Because the residual SE of outcome associations is usually far below 1, the SE is usually
    `1 / sqrt(sum bx^2)`: the package's definition, kept as it is. Q = sigma^2 (L - 1).
    """
    _require(ss, 2, "unweighted regression")
    bx, _, by, _ = _arrays(ss)
    sxx = float(np.sum(bx * bx))
    b = float(np.sum(bx * by) / sxx)
    df = ss.n_variants - 1
    sigma = float(np.sqrt(np.sum((by - b * bx) ** 2) / df))
    se = sigma / np.sqrt(sxx) / min(1.0, sigma)
    q = sigma**2 * df
    extra = {**_convention("mr_uwr"), "residual_se": sigma, "q": q, "q_df": df, "q_pvalue": float(chi2_sf(q, df))}
    return _wald("mr_uwr", b, se, ss.n_variants, alpha, extra)


def ivw_mre(ss: SummaryStatistics, alpha: float = 0.05) -> SummaryMRFit:
    """IVW, multiplicative random effects without the under-dispersion floor (TwoSampleMR `mr_ivw_mre`):
    the SE is the weighted regression's own, `sigma / sqrt(sum bx^2 / sy^2)`, also when sigma < 1."""
    _require(ss, 2, "IVW (multiplicative random effects)")
    bx, _, by, sy = _arrays(ss)
    w = sy**-2
    sxx = float(np.sum(w * bx * bx))
    b = float(np.sum(w * bx * by) / sxx)
    df = ss.n_variants - 1
    q = float(np.sum(w * (by - b * bx) ** 2))
    sigma = float(np.sqrt(q / df))
    extra = {**_convention("ivw_mre"), "residual_se": sigma, "q": q, "q_df": df, "q_pvalue": float(chi2_sf(q, df))}
    return _wald("ivw_mre", b, sigma / np.sqrt(sxx), ss.n_variants, alpha, extra)


# ----------------------------------------------------------------------------- maximum likelihood
def _ml_profile(beta: np.ndarray, bx, sx, by, sy) -> np.ndarray:
    """Twice the negative log-likelihood with each true exposure association profiled out:
    sum (by - beta bx)^2 / (sy^2 + beta^2 sx^2), for every beta in `beta` at once."""
    beta = np.asarray(beta, dtype=float)[..., None]
    return np.sum((by - beta * bx) ** 2 / (sy**2 + beta**2 * sx**2), axis=-1)


def two_sample_ml(ss: SummaryStatistics, alpha: float = 0.05, *, search_width: float = 10.0) -> SummaryMRFit:
    """Maximum-likelihood MR (Burgess, Butterworth & Thompson 2013; TwoSampleMR `mr_two_sample_ml`).

    The model: `bx_j ~ N(g_j, sx_j^2)`, `by_j ~ N(beta g_j, sy_j^2)`, with the true exposure
    associations g_j unknown. For fixed beta the g_j have a closed form, which leaves the profile
    `sum (by - beta bx)^2 / (sy^2 + beta^2 sx^2)` in beta alone. TwoSampleMR minimises the full
    (L + 1)-parameter likelihood with Nelder-Mead from `(bx, IVW)`, which stops near, not at, the
    minimum; we find the minimum exactly: the lowest point of a grid over IVW +- `search_width`
    random-effects SEs, then Brent's method between the neighbours of the best grid point.
    The SE is `sqrt([H^-1]_beta,beta)` for the full Hessian H at the optimum, as the package's
    `solve(opt$hessian)`; H is an arrowhead matrix, so that element is
    `1 / (H_bb - sum_j H_jb^2 / H_jj)`. Q = twice the minimum, on L - 1 df; p normal.
    """
    from scipy.optimize import minimize_scalar

    _require(ss, 2, "maximum likelihood")
    bx, sx, by, sy = _arrays(ss)
    w = sy**-2
    ivw_b = float(np.sum(w * bx * by) / np.sum(w * bx * bx))
    q_ivw = float(np.sum(w * (by - ivw_b * bx) ** 2))
    se_re = max(1.0, np.sqrt(q_ivw / (ss.n_variants - 1))) / np.sqrt(np.sum(w * bx * bx))
    grid = ivw_b + np.linspace(-search_width, search_width, 4001) * se_re
    prof = _ml_profile(grid, bx, sx, by, sy)
    if np.argmin(prof) in (0, grid.size - 1):
        raise InputError(
            f"maximum likelihood: the likelihood keeps rising beyond {search_width:g} SEs of the IVW estimate; no optimum found"
        )
    k = int(np.argmin(prof))
    opt = minimize_scalar(lambda b: float(_ml_profile(b, bx, sx, by, sy)), bounds=(grid[k - 1], grid[k + 1]),
                          method="bounded", options={"xatol": 1e-14 * max(1.0, abs(grid[k]))})  # fmt: skip
    b = float(opt.x)
    g = (bx / sx**2 + b * by / sy**2) / (1 / sx**2 + b**2 / sy**2)  # the profiled exposure associations
    h_jj = 1 / sx**2 + b**2 / sy**2
    h_jb = (2 * b * g - by) / sy**2
    h_bb = float(np.sum(g**2 / sy**2))
    schur = h_bb - float(np.sum(h_jb**2 / h_jj))
    if not schur > 0:
        raise InputError("maximum likelihood: the Hessian at the optimum is not positive definite")
    q = float(_ml_profile(b, bx, sx, by, sy))
    df = ss.n_variants - 1
    extra = {**_convention("mr_two_sample_ml"), "q": q, "q_df": df, "q_pvalue": float(chi2_sf(q, df)),
             "solver": "profile likelihood, grid + bounded Brent, exact Hessian"}
    return _wald("mr_two_sample_ml", b, 1 / np.sqrt(schur), ss.n_variants, alpha, extra)


# ----------------------------------------------------------------------------- MR-GRIP
def mr_grip(ss: SummaryStatistics, alpha: float = 0.05) -> SummaryMRFit:
    """MR-GRIP (TwoSampleMR `mr_grip`): the Genotype Recoding Invariant MR-Egger.

    The weighted regression of `by bx` on `bx^2` with an intercept and weights `1 / (bx^2 sy^2)`:
    every term is unchanged when a variant's alleles are swapped, so no orientation step is needed,
    and without the intercept it is IVW. SE the regression's own (residual-SE scaled, no floor);
    p on t(L - 2), as the package. `extra` holds the intercept and its SE.
    """
    _require(ss, 3, "MR-GRIP")
    bx, _, by, sy = _arrays(ss)
    y, x = by * bx, bx * bx
    w = 1.0 / (x * sy**2)
    X = np.column_stack([np.ones_like(x), x])
    XtW = X.T * w
    xtwx_inv = np.linalg.inv(XtW @ X)
    coef = xtwx_inv @ (XtW @ y)
    df = ss.n_variants - 2
    sigma2 = float(np.sum(w * (y - X @ coef) ** 2) / df)
    se_int, se_slope = np.sqrt(np.diag(xtwx_inv) * sigma2)
    extra = {**_convention("mr_grip"), "intercept": float(coef[0]), "intercept_se": float(se_int),
             "residual_se": float(np.sqrt(sigma2))}
    return _wald("mr_grip", coef[1], se_slope, ss.n_variants, alpha, extra, pvalues="twosamplemr", df=df,
                 t_by_default=True)


# ----------------------------------------------------------------------------- Egger bootstrap
def egger_bootstrap(
    ss: SummaryStatistics, alpha: float = 0.05, *, n_bootstrap: int = 1000, rng: np.random.Generator | int = 0
) -> SummaryMRFit:
    """MR-Egger by parametric bootstrap (TwoSampleMR `mr_egger_regression_bootstrap`).

    Each draw resamples `bx ~ N(bx, sx)`, `by ~ N(by, sy)`, orients the draw so that `bx > 0`, and
    fits the package's slope `cov(w x, w y) / var(w x)` with `w = 1 / sy^2` and intercept
    `mean(y) - mean(x) slope` (its own weighting, not weighted least squares). Estimate = mean of
    the slopes, SE = their SD, p = the share of draws whose slope has the other sign than the
    mean (a one-sided bootstrap share, as the package reports); the intercept likewise. All draws
    at once.
    """
    _require(ss, 3, "MR-Egger (bootstrap)")
    if n_bootstrap < 2:
        raise InputError(f"--n-bootstrap must be at least 2, got {n_bootstrap}")
    rng = np.random.default_rng(rng)
    bx, sx, by, sy = _arrays(ss)
    L = ss.n_variants
    xs = rng.normal(bx, sx, size=(n_bootstrap, L))
    ys = rng.normal(by, sy, size=(n_bootstrap, L))
    ys = ys * np.sign(xs)
    xs = np.abs(xs)
    w = sy**-2
    xw, yw = xs * w, ys * w
    xc = xw - xw.mean(axis=1, keepdims=True)
    slope = np.sum(xc * (yw - yw.mean(axis=1, keepdims=True)), axis=1) / np.sum(xc * xc, axis=1)
    intercept = ys.mean(axis=1) - xs.mean(axis=1) * slope
    b, b_i = float(slope.mean()), float(intercept.mean())
    se, se_i = float(np.std(slope, ddof=1)), float(np.std(intercept, ddof=1))
    p = float(np.sum(np.sign(b) * slope < 0) / n_bootstrap)
    p_i = float(np.sum(np.sign(b_i) * intercept < 0) / n_bootstrap)
    fit = _wald("mr_egger_bootstrap", b, se, L, alpha,
                {**_convention("mr_egger_bootstrap"), "n_bootstrap": n_bootstrap, "intercept": b_i,
                 "intercept_se": se_i, "intercept_pvalue": p_i})  # fmt: skip
    extra = {**fit.extra, "pvalue_distribution": "bootstrap share of draws with the other sign"}
    return SummaryMRFit(fit.method, fit.estimate, fit.se, fit.ci_low, fit.ci_high, p, L, extra)


__all__ = [
    "TWOSAMPLEMR_METHODS",
    "binomial_two_sided_p_half",
    "egger_bootstrap",
    "ivw_mre",
    "mr_grip",
    "sign_concordance",
    "two_sample_ml",
    "unweighted_regression",
]
