"""k-class estimates (OLS, 2SLS, LIML, Fuller) from sufficient statistics, as `iv.fit_kclass` computes them.

The point estimate and the classical SE and first-stage F come from a
`PartialledDesign` alone; the robust (HC0) SE and the Kleibergen-Paap F from the
meats of `kclass_requests`, accumulated in a second pass that several fits can
share (`sufficient_stats.accumulate_meats`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla

from invariant_mr.errors import InputError
from invariant_mr.estimators.iv import WaldInference, parse_kappa
from invariant_mr.estimators.sufficient_stats import (
    MeatRequest,
    PartialledDesign,
    _meat_coordinates,
    _need_rows,
    _pad,
    _Parts,
    accumulate_meats,
)
from invariant_mr.passes.local import RowPasses


@dataclass(frozen=True)
class StatsKClassFit(WaldInference):
    """A k-class fit from sufficient statistics: the exposure's coefficient and its inference.

    Field names follow `iv.KClassFit`, so `estimation.estimate_from_fit` accepts it.
    """

    estimate: float
    se: float
    kappa: float
    n: int
    n_instruments: int
    first_stage_f: float | None
    cov_type: str
    scope: str = "pooled"
    n_controls: int = 0
    estimator: str | None = None

    def summary(self) -> str:
        lo, hi = self.ci()
        f = "" if self.first_stage_f is None else f", F={self.first_stage_f:.1f}"
        return (
            f"{self.scope}: {self.estimate:.4f} (SE {self.se:.4f}, 95% CI [{lo:.4f}, {hi:.4f}], "
            f"kappa={self.kappa:.4f}, n={self.n}, k={self.n_instruments}{f}, {self.cov_type})"
        )


def _kclass_point(design: PartialledDesign, kind: str, value):
    """(theta, kappa, s = the exposure's pivot, parts)."""
    if kind == "ols":
        pr = _Parts.of(design) if design.k else None
        dd = float(design.gram[design.k, design.k])
        return float(design.gram[design.k, design.k + 1]) / dd, 0.0, dd, pr
    pr = _Parts.of(design)
    if pr.rank == 0:
        raise InputError("the instruments are collinear with the exogenous controls")
    cgc, agc, aga = pr.quad(pr.c, pr.c), pr.quad(pr.a, pr.c), pr.quad(pr.a, pr.a)
    if kind == "tsls":
        kap = 1.0
    elif kind == "fixed":
        kap = value
    else:
        W1 = np.array([[pr.yy, pr.dy], [pr.dy, pr.dd]])
        W2 = W1 - np.array([[aga, agc], [agc, cgc]])
        kap = float(sla.eigh(W1, W2, eigvals_only=True).min())
        if kind == "fuller":
            kap -= value / (design.n - design.n_controls - pr.rank)
    s = (1 - kap) * pr.dd + kap * cgc
    theta = ((1 - kap) * pr.dy + kap * agc) / s
    return float(theta), float(kap), float(s), pr


def kclass_requests(design: PartialledDesign, kappa="tsls") -> list[MeatRequest]:
    """Second-pass requests for a robust k-class fit: [SE] for OLS, [SE, robust first-stage F] for IV."""
    kind, value = parse_kappa(kappa)
    theta, _, _, pr = _kclass_point(design, kind, value)
    k = design.k
    resid = _pad(k, [-theta, 1.0])[:, None]
    if kind == "ols":
        return [MeatRequest(design, _pad(k, [1.0, 0.0])[:, None], resid)]
    pi = pr.inv.solve(pr.c)
    se_req = MeatRequest(design, np.concatenate([pi, [0.0, 0.0]])[:, None], resid)
    return [se_req, first_stage_request(design, pr)]


def first_stage_request(design: PartialledDesign, pr: _Parts | None = None) -> MeatRequest:
    """The HC0 meat of the first stage in instrument coordinates (`_whiten` turns it orthonormal)."""
    pr = pr or _Parts.of(design)
    U = np.concatenate([-pr.inv.solve(pr.c), [1.0, 0.0]])[:, None]
    return MeatRequest(design, None, U)


def _robust_first_stage_f(design: PartialledDesign, pr: _Parts, meat: np.ndarray) -> float:
    """The robust (Kleibergen-Paap) first-stage F from the first-stage meat, computed once per design
    and meat: every k-class method of a design shares it (a k^3 solve at large k)."""
    cached = design.__dict__.get("_robust_f")
    if cached is not None and cached[0] is meat:
        return cached[1]
    S, (t,) = _meat_coordinates(pr, meat, pr.c)
    try:  # the meat is positive definite unless degenerate: Cholesky halves the solve
        x = sla.solve(S, t, assume_a="pos", check_finite=False)
    except (np.linalg.LinAlgError, ValueError):
        x = np.linalg.solve(S, t)
    f = float(t @ x) / pr.rank
    object.__setattr__(design, "_robust_f", (meat, f))
    return f


def kclass_from_stats(
    design: PartialledDesign,
    *,
    kappa="tsls",
    cov_type: str = "robust",
    passes: RowPasses | None = None,
    meats: Sequence[np.ndarray] | None = None,
) -> StatsKClassFit:
    """k-class estimate of y = theta d + controls, as `iv.fit_kclass` computes it.

    "unadjusted" needs only the statistics. "robust" (HC0 SE, robust
    first-stage F) needs the meats of `kclass_requests(design, kappa)`: pass
    them (from a shared `accumulate_meats`), or `passes` to run one pass here.
    """
    if cov_type not in ("robust", "unadjusted"):
        raise InputError(f"cov_type must be 'robust' or 'unadjusted', got {cov_type!r}")
    kind, value = parse_kappa(kappa)
    if kind != "ols" and design.k == 0:
        raise InputError("instrumental-variable estimation needs at least one instrument")
    theta, kap, s, pr = _kclass_point(design, kind, value)
    n = design.n
    if cov_type == "robust" and meats is None:
        meats = accumulate_meats(_need_rows(passes, "a robust k-class fit"), kclass_requests(design, kappa))
    f_stat = None
    if kind == "ols":
        n_instr = 0
    else:
        n_instr = pr.rank
        cgc = pr.quad(pr.c, pr.c)
        if cov_type == "unadjusted":
            df = max(n - design.n_controls - n_instr, 1)
            f_stat = cgc / n_instr / ((pr.dd - cgc) / df)
        else:
            f_stat = _robust_first_stage_f(design, pr, meats[1])
    gram = design.gram
    k = design.k
    if cov_type == "unadjusted":
        ee = float(gram[k + 1, k + 1] - 2 * theta * gram[k, k + 1] + theta**2 * gram[k, k])
        var = ee / n / s
    else:
        var = float(meats[0][0, 0]) / s**2
    return StatsKClassFit(
        estimate=theta,
        se=float(np.sqrt(max(var, 0.0))),
        kappa=kap,
        n=n,
        n_instruments=n_instr,
        first_stage_f=None if f_stat is None else float(f_stat),
        cov_type=cov_type,
        scope=design.scope,
        n_controls=design.n_controls,
        estimator=kind,
    )


__all__ = ["StatsKClassFit", "first_stage_request", "kclass_from_stats", "kclass_requests"]
