"""MR-Lasso (Rees, Wood, Dudbridge & Burgess 2019, Stat Med 38:1331), as MendelianRandomization's `mr_lasso`.

Each variant gets its own pleiotropic intercept `a_j` in `By_j = theta Bx_j + a_j + e_j`
(variants oriented so that `Bx > 0`); the intercepts are penalised with the lasso after
profiling out theta, i.e. the lasso of `ylas = (I - P) S^(1/2) By` on `xlas = (I - P) S^(1/2)`,
with `S = diag(sy^-2)` and `P` the projection on `S^(1/2) Bx`. Variants whose intercept is
zero are "valid"; the estimate is the IVW estimate on them (SE divided by min(1, residual SE)).

The tuning parameter follows the package's heterogeneity stopping rule on glmnet's path
(100 values from lambda_max down to 1e-4 lambda_max, log-spaced): walking from the smallest
lambda up, the first lambda after which the valid set's residual SE exceeds 1 and grows by more
than chi^2_{0.95}(1) / (number of valid variants) is kept (the largest lambda if none), but
never one with fewer than two valid variants.

The path reproduces glmnet's defaults (`intercept = FALSE`, `standardize = TRUE`): columns
scaled by their (centred, 1/n) standard deviation but not centred, the response likewise,
coordinate descent, and glmnet's early exits (after the fifth lambda, when
the explained deviance grows by less than 1e-5 of itself or exceeds 0.999). Each lasso is solved
to a far tighter tolerance than glmnet's, so the zero pattern is the exact lasso's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from invariant_mr.errors import InputError
from invariant_mr.estimators.tail_probabilities import chi2_ppf
from invariant_mr.estimators.summary.summary_mr import SummaryMRFit, _arrays, _require, _wald
from invariant_mr.estimators.summary.sumstats import SummaryStatistics

#: glmnet.control defaults.
_FDEV, _DEVMAX, _MNLAM = 1e-5, 0.999, 5


def glmnet_lasso_path(X: np.ndarray, y: np.ndarray, *, n_lambda: int = 100, lambda_min_ratio: float | None = None,
                      tol: float = 1e-16, max_sweeps: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """(lambdas, coefficients (len(lambdas), p)) of glmnet(X, y, intercept = FALSE), see the module docstring.

    Coefficients are on the original scale; lambdas on glmnet's reported scale (times the
    response's scale).
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    n, p = X.shape
    if lambda_min_ratio is None:
        lambda_min_ratio = 0.01 if n < p else 1e-4
    v = np.sqrt(1.0 / n)
    xv_raw = np.sum(X**2, axis=0) / n
    xbar2 = (np.sum(X, axis=0) / n) ** 2
    xs = np.sqrt(np.maximum(xv_raw - xbar2, 0.0))
    xs[xs == 0] = 1.0
    Xs = v * X / xs
    xv = np.sum(Xs**2, axis=0)  # 1 + mean^2 / variance: the columns are not centred
    # glmnet >= 4 (glmnet5dpclean.m, `standard1` with intr = 0): y is scaled, not centred, by its centred SD.
    ys = float(np.sqrt(max(np.sum(y**2) / n - (np.sum(y) / n) ** 2, 0.0)))
    if ys == 0:
        raise InputError("MR-Lasso: the outcome associations are all zero")
    ytil = v * y / ys
    g = Xs.T @ ytil
    lam_max = float(np.max(np.abs(g)))
    lambdas = lam_max * lambda_min_ratio ** (np.arange(n_lambda) / (n_lambda - 1))
    # Covariance updates (glmnet's `type.gaussian = "covariance"` idea): the gradient X~'r is kept up to
    # date through the Gram matrix, so a coordinate that stays put costs a lookup instead of a dot
    # product with the residual; the fixed point (every coordinate's lasso condition to `tol`) is the same.
    gram = Xs.T @ Xs
    grad = Xs.T @ ytil  # X~'r with r = y~ - X~ beta, beta = 0 to start
    xv_list = xv.tolist()
    beta = [0.0] * p
    yy = float(ytil @ ytil)
    out, rsq_prev = [], 0.0

    def sweep(columns, lam: float) -> float:
        """One coordinate-descent pass over `columns`; the largest weighted squared change."""
        nonlocal grad
        biggest = 0.0
        for j in columns:
            old = beta[j]
            z = float(grad[j]) + xv_list[j] * old
            new = math.copysign(max(abs(z) - lam, 0.0), z) / xv_list[j] if z != 0 else 0.0
            if new != old:
                delta = new - old
                beta[j] = new
                grad -= gram[j] * delta  # the Gram matrix is symmetric: row j is column j
                biggest = max(biggest, xv_list[j] * delta**2)
        return biggest

    every = range(p)
    for m, lam in enumerate(lambdas):
        # glmnet fits its first point with an infinite penalty: exactly zero, not zero up to rounding.
        for _ in range(max_sweeps if m else 0):
            if sweep(every, lam) < tol:
                break
            # glmnet's active-set iteration: converge on the nonzero coefficients, then check them all
            # again; the fixed point (every coordinate's lasso condition to `tol`) is the same.
            active = [j for j in every if beta[j] != 0.0]
            for _ in range(max_sweeps):
                if sweep(active, lam) < tol:
                    break
        out.append(np.array(beta))
        r = ytil - Xs @ out[-1]
        rsq = yy - float(r @ r)  # glmnet's running rsq: the explained part of ||y~||^2
        if m + 1 >= _MNLAM and (rsq - rsq_prev < _FDEV * rsq or rsq > _DEVMAX):
            break
        rsq_prev = rsq
    coef = np.array(out) * ys / xs
    return lambdas[: len(out)] * ys, coef


@dataclass(frozen=True)
class LassoResult:
    """The post-lasso estimate, the lasso's own estimate of theta, the valid variants and lambda."""

    fit: SummaryMRFit
    regression_estimate: float
    intercepts: np.ndarray
    valid: tuple[str, ...]
    lam: float

    def summary(self) -> str:
        return (f"{self.fit.summary()}; {len(self.valid)} valid variants, lambda = {self.lam:.4g}, "
                f"lasso estimate {self.regression_estimate:.4f}")


def mr_lasso(ss: SummaryStatistics, alpha: float = 0.05, *, lam: float | None = None,
             pvalues: str = "normal") -> LassoResult:
    """MR-Lasso with the heterogeneity stopping rule (or a given `lam`); normal or t(valid - 1) inference."""
    _require(ss, 3, "MR-Lasso")
    if pvalues not in ("normal", "t", "twosamplemr"):
        raise InputError(f"--summary-pvalues must be one of twosamplemr, normal, t, got {pvalues!r}")
    bx, _, by, sy = _arrays(ss)
    sign = np.where(bx < 0, -1.0, 1.0)
    Bx, By = np.abs(bx), by * sign
    L = ss.n_variants
    s_half = 1.0 / sy
    b = s_half * Bx
    proj = np.eye(L) - np.outer(b, b) / (b @ b)
    xlas = proj * s_half[None, :]
    ylas = proj @ (s_half * By)
    if lam is not None:
        if lam <= 0:
            raise InputError(f"the MR-Lasso lambda must be positive, got {lam}")
        # A user lambda: that one lasso on glmnet's reported scale.
        a, chosen = _single_lambda(xlas, ylas, lam)[1], lam
    else:
        lambdas, coefs = glmnet_lasso_path(xlas, ylas)
        order = np.argsort(lambdas)  # ascending, as the package sorts them
        lamseq = lambdas[order]
        path = coefs[order]
        rse = np.empty(len(lamseq))
        n_valid = np.empty(len(lamseq), dtype=int)
        for j, a_j in enumerate(path):
            av = a_j == 0
            n_valid[j] = int(av.sum())
            if n_valid[j] >= 2:
                xw, yw = s_half[av] * Bx[av], s_half[av] * By[av]
                slope = (xw @ yw) / (xw @ xw)
                rse[j] = np.sqrt(np.sum((yw - slope * xw) ** 2) / (n_valid[j] - 1))
            elif n_valid[j] == 1:
                rse[j] = np.nan  # lm on one point has no residual df (R gives NaN)
            else:
                rse[j] = np.nan
        inc = rse[1:] - rse[:-1]
        with np.errstate(invalid="ignore", divide="ignore"):
            het = np.flatnonzero((rse[1:] > 1) & (inc > chi2_ppf(0.95, 1) / n_valid[1:]))
        pos = int(het[0]) if het.size else len(lamseq) - 1
        enough = np.flatnonzero(n_valid > 1)
        if enough.size == 0:
            raise InputError("MR-Lasso: no lambda leaves two valid variants")
        pos = max(pos, int(enough[0]))
        a, chosen = path[pos], float(lamseq[pos])
    e = By - a
    w = sy**-2
    reg_est = float(np.sum(Bx * w * e) / np.sum(Bx * w * Bx))
    valid = a == 0
    if valid.sum() < 2:
        raise InputError("MR-Lasso: fewer than two valid variants at this lambda; the post-lasso estimate needs two")
    xv_, yv_, wv = Bx[valid], By[valid], w[valid]
    est = float(np.sum(wv * xv_ * yv_) / np.sum(wv * xv_**2))
    df = int(valid.sum()) - 1
    sigma = float(np.sqrt(np.sum(wv * (yv_ - est * xv_) ** 2) / df)) if df > 0 else 1.0
    se = float(1.0 / np.sqrt(np.sum(wv * xv_**2)) * sigma / min(sigma, 1.0))
    names = tuple(v for v, k in zip(ss.variant, valid) if k)
    fit = _wald("mr_lasso", est, se, L, alpha,
                {"n_valid": int(valid.sum()), "lambda": chosen, "regression_estimate": reg_est, "valid": list(names),
                 "convention": "MendelianRandomization mr_lasso (heterogeneity stopping rule)"},
                pvalues="t" if pvalues == "t" else "normal", df=df)  # fmt: skip
    return LassoResult(fit, reg_est, a, names, chosen)


def _single_lambda(X, y, lam):
    """The lasso at one lambda on glmnet's reported scale: the path down to it, then that point."""
    lambdas, coefs = glmnet_lasso_path(X, y, n_lambda=2, lambda_min_ratio=1e-12)
    lam_max = lambdas[0]
    if lam >= lam_max:
        return np.array([lam]), np.zeros(X.shape[1])
    ratio = lam / lam_max
    lambdas, coefs = glmnet_lasso_path(X, y, n_lambda=2, lambda_min_ratio=ratio)
    return lambdas[-1], coefs[-1]


__all__ = ["LassoResult", "glmnet_lasso_path", "mr_lasso"]
