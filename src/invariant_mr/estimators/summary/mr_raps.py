"""MR-RAPS: the robust adjusted profile score (Zhao, Wang, Hemani, Bowden & Small 2020, Ann Stat 48:1742).

Weak instruments bias IVW towards zero because it treats the exposure
associations as known. RAPS keeps their error in the model: for each
variant, `by - beta bx ~ N(0, tau2 + sy^2 + beta^2 sx^2)`, where `tau2` is the
variance of balanced pleiotropic effects (overdispersion). Estimates solve
the adjusted profile score equations; a robust loss (Huber or Tukey's
biweight) on the standardised residuals
`t = (by - beta bx) / sqrt(tau2 + sy^2 + beta^2 sx^2)` bounds the influence of
outlying (pleiotropic) variants.

The default (`version="profile"`) is current `mr.raps::mr.raps`, which TwoSampleMR
calls: the estimating equations with profile-likelihood weights and an
observed-information sandwich SE (see `mr_raps`). The first generation
(`version="mle"`, the R package's R/core.R) follows mr.raps function by function:

* no overdispersion, l2 loss (`mr.raps.simple`): beta maximises
  `-1/2 sum (by - beta bx)^2 / (sy^2 + beta^2 sx^2)`;
* overdispersion, l2 (`mr.raps.overdispersed`): from that start, alternate
  tau2 = argmax over [0, 10 q95(sy^2)] of
  `-1/2 sum sx^2 [log(v) + (by - beta bx)^2 / v]` (v = tau2 + sy^2 + beta^2 sx^2)
  and beta = argmax of `-1/2 sum (by - beta bx)^2 / v`, until the relative
  change is below `tol`;
* no overdispersion, robust (`mr.raps.simple.robust`): beta maximises `-sum rho(t)`;
* overdispersion, robust (`mr.raps.overdispersed.robust`, TwoSampleMR's
  default before mr.raps 0.4; `version="mle"` here): from the overdispersed
  l2 fit, alternate tau2 = root of
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
from scipy import integrate, optimize

from invariant_mr.errors import InputError
from invariant_mr.estimators.tail_probabilities import norm_pdf
from invariant_mr.estimators.summary.summary_mr import SummaryMRFit, _arrays, _require, _wald
from invariant_mr.estimators.summary.sumstats import SummaryStatistics

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
            integrate.quad(lambda x: f(x) * norm_pdf(x), a, b, epsabs=1e-13, epsrel=1e-12)[0]
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


def _profile_gamma(bx, sx, by, sy, beta, tau2, deriv: str = "0"):
    """The profile MLE of each variant's true exposure association given (beta, tau2), or its derivative.

    `gamma = (bx / sx^2 + beta by / s2) / (1 / sx^2 + beta^2 / s2)` with `s2 = sy^2 + tau2`. The
    derivatives are those the published sandwich formula uses (Zhao et al. 2019, arXiv:1804.07371,
    mr.raps `mr.raps.shrinkage`): the numerator's, over the same denominator.
    """
    s2 = sy**2 + tau2
    denom = 1.0 / sx**2 + beta**2 / s2
    if deriv == "0":
        return (bx / sx**2 + beta * by / s2) / denom
    if deriv == "beta":
        return (by / s2) / denom
    return -beta * by / s2**2 / denom  # d/d tau2


def _shrinkage_psi(bx, sx, by, sy, loss, k, delta, over_dispersion):
    """The estimating equations of RAPS with profile weights (`mr.raps.shrinkage`, shrinkage off)."""

    def terms(param):
        beta = float(param[0])
        tau2 = float(param[1]) if over_dispersion else 0.0
        v = beta**2 * sx**2 + sy**2 + tau2
        if np.any(v <= 0):
            return None
        t = (by - bx * beta) / np.sqrt(v)
        dpsi = rho(t, loss, k, 1)
        first = _profile_gamma(bx, sx, by, sy, beta, tau2) * dpsi / np.sqrt(v)
        return [first] if not over_dispersion else [first, (t * dpsi - delta) / v]

    def psi(param):
        parts = terms(param)
        if parts is None:
            return np.full(2 if over_dispersion else 1, 1e30)
        return np.array([np.sum(p) for p in parts])

    def solved(param) -> bool:
        """Each equation zero to rounding: below 1e-9 of the sum of its terms' magnitudes."""
        parts = terms(param)
        return parts is not None and all(abs(np.sum(p)) <= 1e-9 * np.sum(np.abs(p)) for p in parts)

    return psi, solved


def _sandwich_profile(bx, sx, by, sy, beta, tau2, loss, k, delta, c1, c2, c3, over_dispersion):
    """(SE of beta, SE of tau2): the empirical-score sandwich of `mr.raps.shrinkage`."""
    v = beta**2 * sx**2 + sy**2 + tau2
    t = (by - bx * beta) / np.sqrt(v)
    dpsi = rho(t, loss, k, 1)
    gamma = _profile_gamma(bx, sx, by, sy, beta, tau2)
    a = np.sum((_profile_gamma(bx, sx, by, sy, beta, tau2, "beta") * dpsi + gamma * delta * (-bx) / np.sqrt(v)) / np.sqrt(v))
    v1 = c1 * np.sum(gamma**2 / v)
    if not over_dispersion:
        return float(np.sqrt(v1 / a**2)), 0.0
    b = np.sum(_profile_gamma(bx, sx, by, sy, beta, tau2, "tau2") * dpsi / np.sqrt(v))
    d = (delta + c3) / 2 * np.sum(1 / v**2)
    info = np.array([[a, b], [0.0, d]])
    inv = np.linalg.inv(info)
    cov = inv @ np.diag([v1, c2 * np.sum(1 / v**2)]) @ inv.T
    return float(np.sqrt(cov[0, 0])), float(np.sqrt(cov[1, 1]))


def _profile_fit(bx, sx, by, sy, loss, k, over_dispersion, niter, tol):
    """Root of the profile-weight estimating equations closest to the `mle` estimate (see `mr_raps`).

    Returns (beta, tau2, over_dispersion actually used, the starting mle beta).
    """
    delta = 1.0 if loss == "l2" else loss_constants(loss, k)[0]
    if over_dispersion:
        l2_beta, l2_tau2, _, _ = _overdispersed_l2(bx, sx, by, sy, niter, tol)
        if loss == "l2":
            mle_beta, mle_tau2 = l2_beta, l2_tau2
        else:
            mle_beta, mle_tau2, _ = _overdispersed_robust(bx, sx, by, sy, loss, k, niter, tol)
        starts = [(l2_beta, l2_tau2), (mle_beta, mle_tau2)]
    else:
        starts = [(_simple(bx, sx, by, sy, "l2", None),), (_simple(bx, sx, by, sy, "huber", None),)]
        mle_beta = _simple(bx, sx, by, sy, loss, k)
    psi, solved = _shrinkage_psi(bx, sx, by, sy, loss, k, delta, over_dispersion)
    roots = []
    for start in starts:
        sol = optimize.root(psi, np.array(start, dtype=float), method="hybr", options={"xtol": 1e-13})
        # hybr may stop for lack of progress at a root already found to rounding: judge the equations.
        if not np.all(np.isfinite(sol.x)) or not (sol.success or solved(sol.x)):
            continue
        if over_dispersion and sol.x[1] > 10 * np.median(sy):  # as the package: a runaway overdispersion is no root
            continue
        roots.append(sol.x)
    if not roots:
        if over_dispersion:
            return _profile_fit(bx, sx, by, sy, loss, k, False, niter, tol)
        raise InputError("MR-RAPS: the estimating equations have no finite root")
    root = min(roots, key=lambda r: abs(r[0] - mle_beta))
    if over_dispersion and root[1] < 0:  # negative overdispersion: refit with tau2 = 0, as the package does
        return _profile_fit(bx, sx, by, sy, loss, k, False, niter, tol)
    return float(root[0]), float(root[1]) if over_dispersion else 0.0, over_dispersion, float(mle_beta)


#: The two RAPS generations: "profile" is current mr.raps::mr.raps (mr.raps.shrinkage, shrinkage off),
#: which TwoSampleMR calls; "mle" is the first generation (mr.raps.mle / mr.raps.overdispersed.robust).
RAPS_VERSIONS = ("profile", "mle")


def mr_raps(
    ss: SummaryStatistics,
    alpha: float = 0.05,
    *,
    over_dispersion: bool = True,
    loss: str = "huber",
    k: float | None = None,
    niter: int = 20,
    tol: float = _TOL,
    version: str = "profile",
) -> SummaryMRFit:
    """Robust adjusted profile score estimate (mr.raps), sandwich SE, normal CI.

    Defaults are current TwoSampleMR's `mr_raps`: `mr.raps::mr.raps(data, over.dispersion = TRUE,
    loss.function = "huber", shrinkage = FALSE)`, i.e. `version="profile"`: the estimating
    equations weighted by the profile MLE of each variant's exposure association,
    `sum gamma_i psi(t_i) / sqrt(v_i) = 0` and `sum (t_i psi(t_i) - delta) / v_i = 0`
    (Zhao, Chen, Wang & Small 2019), solved from the `mle` fits and the root nearest the
    `mle` estimate kept; SE from the observed-information sandwich. A negative or runaway
    overdispersion falls back to tau2 = 0, as the package does. The package's extra random
    restarts, which only serve to warn about a second root, are not run, so the fit is
    deterministic. `version="mle"` is the first-generation `mr.raps.mle` (TwoSampleMR before
    0.5.7 and `mr.raps.overdispersed.robust`): overdispersion from the `sx^2`-weighted
    equation and the plug-in Fisher-information SE.
    """
    _require(ss, 3, "MR-RAPS")
    if loss not in _LOSSES:
        raise InputError(f"--raps-loss must be one of {', '.join(_LOSSES)}, got {loss!r}")
    if version not in RAPS_VERSIONS:
        raise InputError(f"--raps-version must be one of {', '.join(RAPS_VERSIONS)}, got {version!r}")
    if k is not None and (loss == "l2" or k <= 0):
        raise InputError("the RAPS tuning constant k applies to the huber and tukey losses and must be positive")
    bx, sx, by, sy = _arrays(ss)
    if np.any(bx == 0):
        raise InputError("MR-RAPS needs non-zero exposure associations")
    k_used = None if loss == "l2" else (_DEFAULT_K[loss] if k is None else float(k))
    delta, c1, c2, c3 = (1.0, 1.0, 2.0, 1.0) if loss == "l2" else loss_constants(loss, k_used)
    convention = (
        "mr.raps::mr.raps (profile weights, shrinkage off), as current TwoSampleMR"
        if version == "profile" else "mr.raps.mle (first generation)"
    )  # fmt: skip
    extra = {"loss": loss, "k": k_used, "over_dispersion": over_dispersion, "version": version, "convention": convention}
    if version == "profile":
        beta, tau2, used, start = _profile_fit(bx, sx, by, sy, loss, k_used, over_dispersion, niter, tol)
        se, tau2_se = _sandwich_profile(bx, sx, by, sy, beta, tau2, loss, k_used, delta, c1, c2, c3, used)
        extra.update(tau2=tau2, tau2_se=tau2_se, converged=True, over_dispersion_used=used, mle_estimate=start)
    elif not over_dispersion:
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


__all__ = ["RAPS_VERSIONS", "loss_constants", "mr_raps", "rho"]
