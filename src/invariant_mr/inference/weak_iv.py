"""Weak-instrument-robust inference: the Anderson-Rubin test and its confidence set.

Model: y = theta * d + C'gamma + e with one endogenous regressor d,
instruments Z and exogenous controls C (intercept, environment fixed
effects, covariates). The Anderson-Rubin (AR) test of theta = b regresses
e(b) = y - b d on Z (controls partialled out) and tests that all instrument
coefficients are zero (Anderson & Rubin 1949). Its size does not depend on
instrument strength, so inverting it gives a confidence set that stays valid
with weak instruments. Such a set need not be an interval: it can be a
bounded interval, the union of two rays, the whole line, or empty (when the
instruments reject every theta, i.e. overidentifying restrictions fail).
Unbounded sides are reported as infinite here and as None (JSON null) in an
`Estimate`.

Two variants, chosen like the Wald SEs by `cov_type`:

* "unadjusted" (classical): AR(b) = ||P e(b)||^2 / (||M e(b)||^2 / (n - k - c))
  compared with chi^2_k, exactly the statistic of `ivmodels`'
  `anderson_rubin_test(..., critical_values="chi2")`. Inverting it is a
  quadratic inequality in b, solved in closed form.
* "robust" (heteroskedasticity-robust, HC0): AR(b) = pi(b)' Omega(b)^-1 pi(b)
  with pi(b) the instrument coefficients of e(b) and Omega(b) their HC0
  covariance. As b -> +-inf it tends to the robust first-stage Wald statistic
  (k times the robust first-stage F), so the set is unbounded exactly when
  the instruments are too weak to reject a zero first stage at level alpha.
  With one instrument the inversion is again a quadratic inequality. With
  k > 1 instruments it is a ratio of degree-2k polynomials; the set is found
  by evaluating AR on a fine grid of the compactified line b = b0 + s tan(t)
  (which covers both infinities) and refining every sign change with
  Brent's method.
* "cluster" (one-way cluster-robust, e.g. families): as "robust", with
  Omega(b) summing the instrument scores within each cluster before the outer
  product (CR0, no small-sample factor, like `iv.fit_kclass`). It needs more
  clusters than instruments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from scipy import optimize, stats

from invariant_mr.data import MRData, exogenous_controls
from invariant_mr.errors import InputError
from invariant_mr.estimators.iv import Clusters, check_cov_type, independent_basis, orthonormal_basis, residualize
from invariant_mr.inference.settings import InferenceSettings
from invariant_mr.results import Estimate


# ----------------------------------------------------------------------------- sets
@dataclass(frozen=True)
class ConfidenceSet:
    """A union of disjoint closed intervals on the real line; +-inf marks an unbounded side."""

    intervals: tuple[tuple[float, float], ...]
    alpha: float = 0.05

    def __post_init__(self):
        ivs = tuple(sorted((float(lo), float(hi)) for lo, hi in self.intervals))
        object.__setattr__(self, "intervals", ivs)

    @property
    def is_empty(self) -> bool:
        return len(self.intervals) == 0

    @property
    def is_bounded(self) -> bool:
        return all(math.isfinite(lo) and math.isfinite(hi) for lo, hi in self.intervals)

    @property
    def kind(self) -> str:
        """'empty', 'interval', 'whole_line', 'two_rays', 'ray' or 'union'."""
        if self.is_empty:
            return "empty"
        if len(self.intervals) == 1:
            lo, hi = self.intervals[0]
            if math.isinf(lo) and math.isinf(hi):
                return "whole_line"
            return "interval" if self.is_bounded else "ray"
        if (
            len(self.intervals) == 2
            and math.isinf(self.intervals[0][0])
            and math.isinf(self.intervals[1][1])
            and all(math.isfinite(v) for v in (self.intervals[0][1], self.intervals[1][0]))
        ):
            return "two_rays"
        return "union"

    @property
    def hull(self) -> tuple[float, float]:
        """Smallest interval containing the set ((nan, nan) when empty)."""
        if self.is_empty:
            return float("nan"), float("nan")
        return self.intervals[0][0], self.intervals[-1][1]

    @property
    def length(self) -> float:
        return float(sum(hi - lo for lo, hi in self.intervals))

    def contains(self, value: float) -> bool:
        return any(lo <= value <= hi for lo, hi in self.intervals)

    def to_list(self) -> list[list[float | None]]:
        """JSON-ready intervals; None for an infinite endpoint."""
        return [[None if math.isinf(lo) else lo, None if math.isinf(hi) else hi] for lo, hi in self.intervals]

    def __str__(self) -> str:
        if self.is_empty:
            return "{}"

        def fmt(v):
            return "-inf" if v == -math.inf else "inf" if v == math.inf else f"{v:.4g}"

        return " U ".join(f"[{fmt(lo)}, {fmt(hi)}]" for lo, hi in self.intervals)


def _quadratic_set(A: float, B: float, C: float, alpha: float) -> ConfidenceSet:
    """{b : A b^2 + B b + C <= 0} as a `ConfidenceSet`."""
    scale = max(abs(A), abs(B), abs(C), 1e-300)
    if abs(A) <= 1e-13 * scale:
        if abs(B) <= 1e-13 * scale:
            return ConfidenceSet(((-math.inf, math.inf),) if C <= 0 else (), alpha)
        root = -C / B
        return ConfidenceSet(((-math.inf, root),) if B > 0 else ((root, math.inf),), alpha)
    disc = B * B - 4 * A * C
    if disc < 0:
        return ConfidenceSet((), alpha) if A > 0 else ConfidenceSet(((-math.inf, math.inf),), alpha)
    # Numerically stable roots (no cancellation in -B +- sqrt(disc)).
    sq = math.sqrt(disc)
    q = -0.5 * (B + math.copysign(sq, B)) if B != 0 else -0.5 * sq
    r1 = q / A
    r2 = C / q if q != 0 else -r1
    lo, hi = min(r1, r2), max(r1, r2)
    if A > 0:
        return ConfidenceSet(((lo, hi),), alpha)
    return ConfidenceSet(((-math.inf, lo), (hi, math.inf)), alpha)


# ----------------------------------------------------------------------------- moments
@dataclass(frozen=True)
class _ARProblem:
    """Everything the AR test needs, after the controls are partialled out."""

    a: np.ndarray  # Zt' y  (Zt orthonormal basis of the residualised instruments)
    c: np.ndarray  # Zt' d
    yy: float
    yd: float
    dd: float
    Zt: np.ndarray | None  # None when built from sufficient statistics
    uy: np.ndarray | None  # y residualised on controls and instruments
    ud: np.ndarray | None
    k: int
    dfd: int
    clusters: Clusters | None = None


def _prepare(outcome, exposure, instruments, exog, add_intercept: bool, clusters=None) -> _ARProblem:
    y = np.asarray(outcome, dtype=float).ravel()
    d = np.asarray(exposure, dtype=float).ravel()
    n = y.shape[0]
    if instruments is None:
        raise InputError("the Anderson-Rubin test needs at least one instrument")
    Z = np.asarray(instruments, dtype=float).reshape(n, -1)
    cols = [np.ones((n, 1))] if add_intercept else []
    if exog is not None:
        cols.append(np.asarray(exog, dtype=float).reshape(n, -1))
    _, basis_c = independent_basis(np.hstack(cols)) if cols else (None, np.empty((n, 0)))
    yt = residualize(y[:, None], basis_c)[:, 0]
    dt = residualize(d[:, None], basis_c)[:, 0]
    Zt = orthonormal_basis(residualize(Z, basis_c))
    k = Zt.shape[1]
    if k == 0:
        raise InputError("the instruments are collinear with the exogenous controls")
    a, c = Zt.T @ yt, Zt.T @ dt
    dfd = n - k - basis_c.shape[1]
    if dfd <= 0:
        raise InputError(f"too few samples ({n}) for {k} instruments and {basis_c.shape[1]} controls")
    if clusters is not None and clusters.n_clusters <= k:
        raise InputError(
            f"the cluster-robust Anderson-Rubin test needs more clusters ({clusters.n_clusters}) than "
            f"instruments ({k})"
        )
    return _ARProblem(
        a=a,
        c=c,
        yy=float(yt @ yt),
        yd=float(yt @ dt),
        dd=float(dt @ dt),
        Zt=Zt,
        uy=yt - Zt @ a,
        ud=dt - Zt @ c,
        k=k,
        dfd=dfd,
        clusters=clusters,
    )


def _robust_blocks(pr: _ARProblem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Omega(b) = Oyy - 2 b Oyd + b^2 Odd, scores summed within clusters when there are clusters."""
    Zy = pr.Zt * pr.uy[:, None]
    Zd = pr.Zt * pr.ud[:, None]
    if pr.clusters is not None:
        Zy, Zd = pr.clusters.sums(Zy), pr.clusters.sums(Zd)
    return Zy.T @ Zy, (Zy.T @ Zd + Zd.T @ Zy) / 2, Zd.T @ Zd


def _classical_stat(pr: _ARProblem, b: np.ndarray) -> np.ndarray:
    g = pr.a[None, :] - b[:, None] * pr.c[None, :]
    explained = np.sum(g * g, axis=1)
    total = pr.yy - 2 * b * pr.yd + b * b * pr.dd
    return explained / ((total - explained) / pr.dfd)


#: Upper bound on the bytes of one batch of k x k covariance matrices in `_robust_stat`.
_BATCH_BYTES = 64 * 2**20


def _robust_stat(pr: _ARProblem, b: np.ndarray, blocks=None) -> np.ndarray:
    Oyy, Oyd, Odd = blocks if blocks is not None else _robust_blocks(pr)
    b = np.atleast_1d(np.asarray(b, dtype=float))
    out = np.empty(b.shape[0])
    # Batches keep memory bounded: with hundreds of instruments a full grid of
    # k x k matrices would take gigabytes.
    step = max(1, int(_BATCH_BYTES // (8 * pr.k * pr.k)))
    # Omega(b) for a batch as one (batch x 3) @ (3 x k^2) product: each matrix written once, instead of
    # four broadcast temporaries of the batch's size (which took three quarters of the time).
    stacked = np.stack([Oyy, Oyd, Odd]).reshape(3, -1)
    for start in range(0, b.shape[0], step):
        bb = b[start : start + step]
        g = pr.a[None, :] - bb[:, None] * pr.c[None, :]
        omega = (np.column_stack([np.ones_like(bb), -2 * bb, bb * bb]) @ stacked).reshape(-1, *Oyy.shape)
        sol = np.linalg.solve(omega, g[:, :, None])[:, :, 0]
        out[start : start + step] = np.sum(g * sol, axis=1)
    return out


# ----------------------------------------------------------------------------- public API
def anderson_rubin_test(
    outcome,
    exposure,
    instruments,
    exog=None,
    *,
    beta0: float = 0.0,
    cov_type: str = "robust",
    add_intercept: bool = True,
    clusters=None,
) -> tuple[float, float, int]:
    """AR test of theta = beta0: (statistic on the chi^2 scale, p-value, degrees of freedom k).

    cov_type "cluster" takes `clusters`, one label per sample.
    """
    cov_type, groups = check_cov_type(cov_type, clusters, np.asarray(outcome).shape[0])
    pr = _prepare(outcome, exposure, instruments, exog, add_intercept, groups)
    b = np.array([float(beta0)])
    if cov_type == "unadjusted":
        stat = float(_classical_stat(pr, b)[0])
    else:
        stat = float(_robust_stat(pr, b)[0])
    return stat, float(stats.chi2.sf(stat, pr.k)), pr.k


def anderson_rubin_confidence_set(
    outcome,
    exposure,
    instruments,
    exog=None,
    *,
    alpha: float = 0.05,
    cov_type: str = "robust",
    add_intercept: bool = True,
    n_grid: int = 4001,
    clusters=None,
) -> ConfidenceSet:
    """All theta that the level-`alpha` AR test does not reject (see the module docstring)."""
    if not 0 < alpha < 1:
        raise InputError(f"alpha must be in (0, 1), got {alpha}")
    cov_type, groups = check_cov_type(cov_type, clusters, np.asarray(outcome).shape[0])
    pr = _prepare(outcome, exposure, instruments, exog, add_intercept, groups)
    crit = float(stats.chi2.ppf(1 - alpha, pr.k))
    if cov_type == "unadjusted":
        q = crit / pr.dfd
        cc, ac, aa = float(pr.c @ pr.c), float(pr.a @ pr.c), float(pr.a @ pr.a)
        A = (1 + q) * cc - q * pr.dd
        B = -2 * ((1 + q) * ac - q * pr.yd)
        C = (1 + q) * aa - q * pr.yy
        return _quadratic_set(A, B, C, alpha)
    blocks = _robust_blocks(pr)
    if pr.k == 1:
        Oyy, Oyd, Odd = (float(m[0, 0]) for m in blocks)
        a, c = float(pr.a[0]), float(pr.c[0])
        return _quadratic_set(c * c - crit * Odd, -2 * (a * c - crit * Oyd), a * a - crit * Oyy, alpha)
    return _robust_set_numeric(pr, blocks, crit, alpha, n_grid)


def _robust_set_numeric(pr: _ARProblem, blocks, crit: float, alpha: float, n_grid: int) -> ConfidenceSet:
    cc = float(pr.c @ pr.c)
    if cc <= 0:
        return ConfidenceSet(((-math.inf, math.inf),), alpha)
    b0 = float(pr.a @ pr.c) / cc  # 2SLS
    if pr.uy is not None:
        resid = pr.uy - b0 * pr.ud
        rss = float(resid @ resid)
    else:
        # From sufficient statistics (no rows): ||M (y - b0 d)||^2 in the orthonormal coordinates.
        rss = (pr.yy - pr.a @ pr.a) - 2 * b0 * (pr.yd - pr.a @ pr.c) + b0 * b0 * (pr.dd - cc)
    scale = max(float(np.sqrt(max(rss, 0.0) / max(pr.dfd, 1) / cc)), 1e-8 * max(1.0, abs(b0)))

    def f_t(t):
        t = np.atleast_1d(np.asarray(t, dtype=float))
        return _robust_stat(pr, b0 + scale * np.tan(t), blocks) - crit

    # Large k makes each evaluation O(k^3); keep the total work bounded.
    n_grid = int(max(401, min(n_grid, 4e8 // max(pr.k, 1) ** 3)))
    t = np.linspace(-np.pi / 2, np.pi / 2, n_grid)[1:-1]
    vals = f_t(t)
    # Limit at +-infinity: the robust first-stage Wald statistic.
    Odd = blocks[2]
    at_inf = float(pr.c @ np.linalg.solve(Odd, pr.c)) - crit
    t = np.concatenate([[-np.pi / 2], t, [np.pi / 2]])
    vals = np.concatenate([[at_inf], vals, [at_inf]])
    accept = vals <= 0
    if not accept.any():
        return ConfidenceSet((), alpha)
    if accept.all():
        return ConfidenceSet(((-math.inf, math.inf),), alpha)

    def to_b(tt: float) -> float:
        if tt <= -np.pi / 2:
            return -math.inf
        if tt >= np.pi / 2:
            return math.inf
        return b0 + scale * math.tan(tt)

    def boundary(i: int) -> float:
        # sign change between grid points i and i+1 (neither is an infinity unless it is)
        lo, hi = t[i], t[i + 1]
        if lo <= -np.pi / 2 or hi >= np.pi / 2:
            # the infinite end is a limit; bracket strictly inside
            lo = max(lo, -np.pi / 2 + 1e-12)
            hi = min(hi, np.pi / 2 - 1e-12)
        try:
            root = optimize.brentq(lambda x: float(f_t(x)[0]), lo, hi, xtol=1e-14, rtol=1e-13)
        except ValueError:
            root = 0.5 * (lo + hi)
        return to_b(root)

    intervals = []
    start = None
    for i in range(len(t)):
        if accept[i] and start is None:
            start = -math.inf if i == 0 else boundary(i - 1)
        if start is not None and (i == len(t) - 1 or not accept[i + 1]):
            end = math.inf if i == len(t) - 1 else boundary(i)
            intervals.append((start, end))
            start = None
    # The two ends of the compactified line are the same point (b = +-inf):
    # a run touching both ends is one set through infinity, i.e. two rays.
    return ConfidenceSet(tuple(intervals), alpha)


# ----------------------------------------------------------------------------- Estimate rows
def anderson_rubin_fields(cs: ConfidenceSet) -> dict:
    """`ar_ci_low`/`ar_ci_high` (the hull, None on an unbounded side) and the exact set for `extra`."""
    lo, hi = cs.hull
    return {
        "ar_ci_low": None if not math.isfinite(lo) else lo,
        "ar_ci_high": None if not math.isfinite(hi) else hi,
        "extra": {"ar_set": cs.to_list(), "ar_set_kind": cs.kind},
    }


def with_anderson_rubin(
    estimate: Estimate,
    outcome,
    exposure,
    instruments,
    exog=None,
    *,
    alpha: float = 0.05,
    cov_type: str = "robust",
    max_instruments: int | None = None,
    clusters=None,
) -> Estimate:
    """A copy of `estimate` with its AR confidence set (hull in ar_ci_low/high, set in extra).

    When the set cannot be computed, or is skipped because a robust inversion
    would use more than `max_instruments` instruments, `ar_ci_low/high` stay
    None and `extra` says so ("ar_set_kind": "not computed" and "ar_error"),
    so a missing set is never mistaken for an unbounded one.
    """
    k = estimate.n_instruments
    if cov_type != "unadjusted" and max_instruments is not None and k is not None and k > max_instruments:
        reason = (
            f"{cov_type} Anderson-Rubin set skipped: {k} instruments > --ar-max-instruments {max_instruments} "
            "(raise it, or use --cov-type unadjusted for the closed-form classical set)"
        )
        return replace(estimate, extra={**estimate.extra, "ar_set_kind": "not computed", "ar_error": reason})
    try:
        cs = anderson_rubin_confidence_set(
            outcome, exposure, instruments, exog, alpha=alpha, cov_type=cov_type, clusters=clusters
        )
    except (InputError, np.linalg.LinAlgError) as exc:
        return replace(estimate, extra={**estimate.extra, "ar_set_kind": "not computed", "ar_error": str(exc)})
    fields_ = anderson_rubin_fields(cs)
    return replace(
        estimate,
        ar_ci_low=fields_["ar_ci_low"],
        ar_ci_high=fields_["ar_ci_high"],
        extra={**estimate.extra, **fields_["extra"], "ar_cov_type": cov_type},
    )


def add_anderson_rubin(
    estimates: Sequence[Estimate],
    data: MRData,
    instruments: np.ndarray | None,
    settings: InferenceSettings,
    *,
    env_fixed_effects: bool = True,
    extra_controls: np.ndarray | None = None,
    clusters=None,
) -> list[Estimate]:
    """AR sets for the rows that `estimation.iv_estimates` returned, scope by scope.

    Uses the same instruments and controls as `iv_estimates`: pooled rows
    with covariates, environment fixed effects (if `env_fixed_effects`) and
    `extra_controls`; "env:<label>" rows on that environment's samples with
    covariates and `extra_controls`. Rows without instruments (OLS) are
    returned unchanged. Variant (robust/classical/cluster) and level follow
    `settings`; `clusters` (one label per sample) goes with `settings.cov_type == "cluster"`.
    """
    if instruments is None:
        return list(estimates)
    Z = np.asarray(instruments, dtype=float).reshape(data.n, -1)
    ec = None if extra_controls is None else np.asarray(extra_controls, dtype=float).reshape(data.n, -1)
    levels = {f"env:{lv}": i for i, lv in enumerate(data.env_levels)}
    codes = data.env_codes
    out = []
    for est in estimates:
        if est.scope == "pooled":
            rows = slice(None)
            ctrl = exogenous_controls(data, env_fixed_effects, ec)
        elif est.scope in levels:
            rows = codes == levels[est.scope]
            parts = [m[rows] for m in (data.covariates, ec) if m is not None]
            ctrl = np.hstack(parts) if parts else None
        else:
            out.append(est)
            continue
        out.append(
            with_anderson_rubin(
                est,
                data.outcome[rows],
                data.exposure[rows],
                Z[rows],
                ctrl,
                alpha=settings.alpha,
                cov_type=settings.cov_type,
                max_instruments=settings.ar_max_instruments,
                clusters=None if clusters is None else np.asarray(clusters)[rows],
            )
        )
    return out


__all__ = [
    "ConfidenceSet",
    "add_anderson_rubin",
    "anderson_rubin_confidence_set",
    "anderson_rubin_fields",
    "anderson_rubin_test",
    "with_anderson_rubin",
]
