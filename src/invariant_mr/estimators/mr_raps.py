"""MR-RAPS: the robust adjusted profile score (Zhao, Wang, Hemani, Bowden & Small 2020, Ann Stat 48:1742).

Weak instruments bias IVW towards zero because it treats the exposure
associations as known. RAPS keeps their error in the model: for each
variant, `by - beta bx ~ N(0, tau2 + sy^2 + beta^2 sx^2)`, where `tau2` is the
variance of balanced pleiotropic effects (overdispersion). Estimates solve
the adjusted profile score equations; a robust loss (Huber or Tukey's
biweight) on the standardised residuals
`t = (by - beta bx) / sqrt(tau2 + sy^2 + beta^2 sx^2)` bounds the influence of
outlying (pleiotropic) variants.

This follows the reference implementation, the R package mr.raps
(github.com/qingyuanzhao/mr.raps, R/core.R), function by function:

* no overdispersion, l2 loss (`mr.raps.simple`): beta maximises
  `-1/2 sum (by - beta bx)^2 / (sy^2 + beta^2 sx^2)`;
* overdispersion, l2 (`mr.raps.overdispersed`): from that start, alternate
  tau2 = argmax over [0, 10 q95(sy^2)] of
  `-1/2 sum sx^2 [log(v) + (by - beta bx)^2 / v]` (v = tau2 + sy^2 + beta^2 sx^2)
  and beta = argmax of `-1/2 sum (by - beta bx)^2 / v`, until the relative
  change is below `tol`;
* no overdispersion, robust (`mr.raps.simple.robust`): beta maximises `-sum rho(t)`;
* overdispersion, robust (`mr.raps.overdispersed.robust`, the TwoSampleMR
  default): from the overdispersed l2 fit, alternate tau2 = root of
  `sum sx^2 (t psi(t) - delta) / v` and beta = local maximiser of
  `-1/2 sum rho(t)` from the previous beta.
SEs are the package's sandwich formulas, with the constants
`delta = E[Z psi(Z)]`, `c1 = E[psi(Z)^2]`, `c2 = E[Z^2 psi(Z)^2] - delta^2`,
`c3 = E[Z^2 psi'(Z)]` for standard normal Z (1, 1, 2, 1 for l2). Tuning:
k = 1.345 (Huber), 4.685 (Tukey). The one difference is numerical: the
one-dimensional searches are solved to a tighter tolerance than R's
`optimize` default, which moves estimates by far less than their SE.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import pairwise

import numpy as np
from scipy import integrate, optimize, stats

from invariant_mr.errors import InputError
from invariant_mr.estimators.summary_mr import SummaryMRFit, _arrays, _require, _wald
from invariant_mr.estimators.sumstats import SummaryStatistics

_LOSSES = ("l2", "huber", "tukey")
_DEFAULT_K = {"huber": 1.345, "tukey": 4.685}
_TOL = float(np.sqrt(np.finfo(float).eps))  # R's .Machine$double.eps^0.5


def rho(r: np.ndarray, loss: str, k: float | None = None, deriv: int = 0) -> np.ndarray:
    """The loss (deriv 0), its derivative psi (1) and second derivative (2): mr.raps `rho.huber`/`rho.tukey`."""
    r = np.asarray(r, dtype=float)
    if loss == "l2":
        return [0.5 * r**2, r, np.ones_like(r)][deriv]
    if loss == "huber":
        k = _DEFAULT_K["huber"] if k is None else k
        inside = np.abs(r) <= k
        if deriv == 0:
            return np.where(inside, r**2 / 2, k * (np.abs(r) - k / 2))
        if deriv == 1:
            return np.where(inside, r, k * np.sign(r))
        return inside.astype(float)
    if loss == "tukey":
        k = _DEFAULT_K["tukey"] if k is None else k
        if deriv == 0:
            return np.minimum(1 - (1 - (r / k) ** 2) ** 3, 1.0)
        if deriv == 1:
            return r * (1 - (r / k) ** 2) ** 2 * (np.abs(r) <= k)
        t = (r / k) ** 2
        return np.where(t < 1, (1 - t) * (1 - 5 * t), 0.0)
    raise InputError(f"loss must be one of {', '.join(_LOSSES)}, got {loss!r}")


@lru_cache(maxsize=16)
def loss_constants(loss: str, k: float | None = None) -> tuple[float, float, float, float]:
    """(delta, c1, c2, c3) of the loss under the standard normal (see the module docstring)."""

    def expect(f):
        # The robust psi has kinks at +-k: split the integral there for accuracy.
        kk = k if k is not None else _DEFAULT_K.get(loss, 1.0)
        pts = [-np.inf, -kk, kk, np.inf]
        return sum(
            integrate.quad(lambda x: f(x) * stats.norm.pdf(x), a, b, epsabs=1e-13, epsrel=1e-12)[0]
            for a, b in pairwise(pts)
        )

    psi = lambda x: float(rho(x, loss, k, 1))
    dpsi = lambda x: float(rho(x, loss, k, 2))
    delta = expect(lambda x: x * psi(x))
    c1 = expect(lambda x: psi(x) ** 2)
    c2 = expect(lambda x: x**2 * psi(x) ** 2) - delta**2
    c3 = expect(lambda x: x**2 * dpsi(x))
    return delta, c1, c2, c3


def _maximise(f, bound: float) -> float:
    """argmax of f on [-bound, bound], doubling the bound while the maximiser sits near its edge (as mr.raps)."""
    for _ in range(60):
        res = optimize.minimize_scalar(lambda b: -f(b), bounds=(-bound, bound), method="bounded", options={"xatol": 1e-12 * max(1.0, bound)})
        if abs(res.x) <= 0.95 * bound:
            return float(res.x)
        bound *= 2
    raise InputError("MR-RAPS: the causal estimate diverges (no maximum of the profile score)")


def _quantile95(x):
    return float(np.quantile(x, 0.95))  # numpy's default is R's type 7


def _simple(bx, sx, by, sy, loss, k):
    def objective(beta):
        v = sy**2 + sx**2 * beta**2
        return -np.sum(rho((by - bx * beta) / np.sqrt(v), loss, k))

    return _maximise(objective, 2 * _quantile95(np.abs(by / bx)))


def _changed(b_old, b, t_old, t, tol):
    return abs(b_old - b) / abs(b + 1e-10) + abs(t_old - t) / abs(t + 1e-10) > tol


def _overdispersed_l2(bx, sx, by, sy, niter, tol):
    beta = _simple(bx, sx, by, sy, "l2", None)
    tau2 = 0.0
    bound_beta = 10 * _quantile95(np.abs(by / bx))
    bound_tau2 = 10 * _quantile95(sy**2)
    converged = False
    for _ in range(niter):
        b_old, t_old = beta, tau2

        def fix_beta(t2, b=beta):
            v = t2 + sy**2 + sx**2 * b**2
            return -0.5 * np.sum(sx**2 * np.log(v)) - 0.5 * np.sum(sx**2 * (by - bx * b) ** 2 / v)

        tau2 = float(
            optimize.minimize_scalar(lambda t2: -fix_beta(t2), bounds=(0.0, bound_tau2), method="bounded", options={"xatol": 1e-14 * bound_tau2}).x
        )

        def fix_tau(b, t2=tau2):
            return -0.5 * np.sum((by - bx * b) ** 2 / (t2 + sy**2 + sx**2 * b**2))

        beta = _maximise(fix_tau, bound_beta)
        if not _changed(b_old, beta, t_old, tau2, tol):
            converged = True
            break
    return beta, tau2, converged, bound_tau2


def _tau2_root(f, bound):
    """Root of f on [0, bound], extending the bracket upwards if needed (R `uniroot(extendInt = "yes")`)."""
    lo, hi = 0.0, bound
    f_lo = f(lo)
    if f_lo <= 0:
        return 0.0  # the estimating function is negative at 0: no positive overdispersion
    for _ in range(60):
        if f(hi) < 0:
            return float(optimize.brentq(f, lo, hi, xtol=1e-15 * bound, rtol=1e-14))
        lo, hi = hi, 2 * hi
    raise InputError("MR-RAPS: no solution for the overdispersion tau2")


def _overdispersed_robust(bx, sx, by, sy, loss, k, niter, tol):
    delta = loss_constants(loss, k)[0]
    beta, tau2, _, _ = _overdispersed_l2(bx, sx, by, sy, niter, tol)
    bound_beta = 10 * _quantile95(np.abs(by / bx))
    bound_tau2 = 10 * _quantile95(sy**2)
    converged = False
    for _ in range(niter):
        b_old, t_old = beta, tau2

        def robust_e(t2, b=beta):
            v = t2 + sy**2 + sx**2 * b**2
            t = (by - b * bx) / np.sqrt(v)
            return float(np.sum(sx**2 * (t * rho(t, loss, k, 1) - delta) / v))

        tau2 = max(0.0, _tau2_root(robust_e, bound_tau2))

        def neg_loglike(b, t2=tau2):
            b = float(np.atleast_1d(b)[0])
            return 0.5 * np.sum(rho((by - bx * b) / np.sqrt(t2 + sy**2 + sx**2 * b**2), loss, k))

        # A local search from the previous beta, as mr.raps (L-BFGS-B): Tukey's loss is not convex.
        res = optimize.minimize(neg_loglike, x0=[beta], method="L-BFGS-B", bounds=[(-bound_beta, bound_beta)], options={"ftol": 1e-15, "gtol": 1e-12})
        beta = float(res.x[0])
        if abs(beta) > 0.95 * bound_beta:
            beta = _maximise(lambda b: -neg_loglike(b), 2 * bound_beta)
        if not _changed(b_old, beta, t_old, tau2, tol):
            converged = True
            break
    return beta, tau2, converged


def _sandwich_simple(bx, sx, by, sy, beta, c1, delta):
    v2 = (sy**2 + beta**2 * sx**2) ** 2
    score_var = c1 * np.sum(((bx**2 - sx**2) * sy**2 + (by**2 - sy**2) * sx**2 + sx**2 * sy**2) / v2)
    info = delta * np.sum(((bx**2 - sx**2) * sy**2 + (by**2 - sy**2) * sx**2) / v2)
    return float(np.sqrt(score_var / info**2))


def _sandwich_overdispersed(bx, sx, by, sy, beta, tau2, delta, c1, c2, c3):
    s2 = tau2 + sy**2
    v2 = (s2 + sx**2 * beta**2) ** 2
    score_var = np.diag(
        [
            c1 * np.sum(((bx**2 - sx**2) * s2 + (by**2 - s2) * sx**2 + sx**2 * s2) / v2),
            (c2 / 2) * np.sum(2 * sx**4 / v2),
        ]
    )
    info = np.array(
        [
            [-delta * np.sum(((bx**2 - sx**2) * s2 + (by**2 - s2) * sx**2) / v2), -delta * np.sum(sx**2 * beta / v2)],
            [0.0, -(delta + c3) / 2 * np.sum(sx**2 / v2)],
        ]
    )
    inv = np.linalg.inv(info)
    cov = inv @ score_var @ inv.T
    return float(np.sqrt(cov[0, 0])), float(np.sqrt(cov[1, 1]))


def mr_raps(
    ss: SummaryStatistics,
    alpha: float = 0.05,
    *,
    over_dispersion: bool = True,
    loss: str = "huber",
    k: float | None = None,
    niter: int = 20,
    tol: float = _TOL,
) -> SummaryMRFit:
    """Robust adjusted profile score estimate (mr.raps), sandwich SE, normal CI.

    Defaults are TwoSampleMR's `mr_raps` (overdispersion, Huber loss);
    `over_dispersion=False, loss="l2"` is mr.raps's own default.
    """
    _require(ss, 3, "MR-RAPS")
    if loss not in _LOSSES:
        raise InputError(f"--raps-loss must be one of {', '.join(_LOSSES)}, got {loss!r}")
    if k is not None and (loss == "l2" or k <= 0):
        raise InputError("the RAPS tuning constant k applies to the huber and tukey losses and must be positive")
    bx, sx, by, sy = _arrays(ss)
    if np.any(bx == 0):
        raise InputError("MR-RAPS needs non-zero exposure associations")
    k_used = None if loss == "l2" else (_DEFAULT_K[loss] if k is None else float(k))
    delta, c1, c2, c3 = (1.0, 1.0, 2.0, 1.0) if loss == "l2" else loss_constants(loss, k_used)
    extra = {"loss": loss, "k": k_used, "over_dispersion": over_dispersion}
    if not over_dispersion:
        beta = _simple(bx, sx, by, sy, loss, k_used)
        se = _sandwich_simple(bx, sx, by, sy, beta, c1, delta)
        extra.update(tau2=0.0, converged=True)
    else:
        if loss == "l2":
            beta, tau2, converged, _ = _overdispersed_l2(bx, sx, by, sy, niter, tol)
        else:
            beta, tau2, converged = _overdispersed_robust(bx, sx, by, sy, loss, k_used, niter, tol)
        se, tau2_se = _sandwich_overdispersed(bx, sx, by, sy, beta, tau2, delta, c1, c2, c3)
        extra.update(tau2=tau2, tau2_se=tau2_se, converged=converged)
    v = extra["tau2"] + sy**2 + beta**2 * sx**2
    extra["standardised_residuals"] = ((by - beta * bx) / np.sqrt(v)).tolist()
    return _wald("mr_raps", beta, se, ss.n_variants, alpha, extra)


__all__ = ["loss_constants", "mr_raps", "rho"]
