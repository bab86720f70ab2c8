"""Weak-instrument-robust sets, overidentification and first-stage tests from sufficient statistics.

The same tests as `weak_iv.anderson_rubin_confidence_set`, `diagnostics.sargan_hansen_j`
and `diagnostics.first_stage_strength`, computed from the per-environment cross-products
of `estimators.sufficient_stats` (and, for robust variants, the meats of one second
streamed pass), so they never need the n x p instrument matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps

from invariant_mr.errors import InputError
from invariant_mr.estimators.kclass_from_stats import first_stage_request
from invariant_mr.estimators.sufficient_stats import (
    MeatRequest,
    PartialledDesign,
    _meat_coordinates,
    _orthonormal,
    _pad,
    _Parts,
    _robust_meats,
    _whiten,
)
from invariant_mr.passes.local import RowPasses


def anderson_rubin_requests(design: PartialledDesign) -> list[MeatRequest]:
    """The robust AR blocks (Omega_yy, Omega_yd, Omega_dd of the reduced-form residuals)."""
    pr = _Parts.of(design)
    U = np.column_stack(
        [np.concatenate([-pr.inv.solve(pr.a), [0.0, 1.0]]), np.concatenate([-pr.inv.solve(pr.c), [1.0, 0.0]])]
    )
    return [MeatRequest(design, None, U)]


def _ar_problem(design: PartialledDesign, meats):
    from invariant_mr.inference.weak_iv import _ARProblem

    pr = _Parts.of(design)
    if pr.rank == 0:
        raise InputError("the instruments are collinear with the exogenous controls")
    dfd = design.n - pr.rank - design.n_controls
    if dfd <= 0:
        raise InputError(f"too few samples ({design.n}) for {pr.rank} instruments and {design.n_controls} controls")
    a, c = _orthonormal(pr)
    problem = _ARProblem(a=a, c=c, yy=pr.yy, yd=pr.dy, dd=pr.dd, Zt=None, uy=None, ud=None, k=pr.rank, dfd=dfd)
    blocks = None
    if meats is not None:
        M, k = meats[0], design.k
        blocks = (M[:k, :k], (M[:k, k:] + M[k:, :k]) / 2, M[k:, k:])
        blocks = tuple(_whiten(pr, B) for B in blocks)
    return problem, blocks


def anderson_rubin_from_stats(
    design: PartialledDesign,
    *,
    alpha: float = 0.05,
    cov_type: str = "robust",
    passes: RowPasses | None = None,
    meats: Sequence[np.ndarray] | None = None,
    n_grid: int = 4001,
):
    """The AR confidence set (`weak_iv.ConfidenceSet`), as `weak_iv.anderson_rubin_confidence_set`.

    "unadjusted" needs only the statistics; "robust" the meats of `anderson_rubin_requests`.
    """
    from invariant_mr.inference.weak_iv import ConfidenceSet, _quadratic_set, _robust_set_numeric

    if not 0 < alpha < 1:
        raise InputError(f"alpha must be in (0, 1), got {alpha}")
    if cov_type not in ("robust", "unadjusted"):
        raise InputError(f"cov_type must be 'robust' or 'unadjusted', got {cov_type!r}")
    if cov_type == "robust":
        meats = _robust_meats(design, meats, passes, anderson_rubin_requests, "the robust AR set")
    pr, blocks = _ar_problem(design, meats if cov_type == "robust" else None)
    crit = float(sps.chi2.ppf(1 - alpha, pr.k))
    if cov_type == "unadjusted":
        q = crit / pr.dfd
        cc, ac, aa = float(pr.c @ pr.c), float(pr.a @ pr.c), float(pr.a @ pr.a)
        return _quadratic_set((1 + q) * cc - q * pr.dd, -2 * ((1 + q) * ac - q * pr.yd), (1 + q) * aa - q * pr.yy, alpha)
    if pr.k == 1:
        Oyy, Oyd, Odd = (float(m[0, 0]) for m in blocks)
        a, c = float(pr.a[0]), float(pr.c[0])
        return _quadratic_set(c * c - crit * Odd, -2 * (a * c - crit * Oyd), a * a - crit * Oyy, alpha)
    if float(pr.c @ pr.c) <= 0:
        return ConfidenceSet(((-math.inf, math.inf),), alpha)
    return _robust_set_numeric(pr, blocks, crit, alpha, n_grid)


def anderson_rubin_test_from_stats(
    design: PartialledDesign,
    *,
    beta0: float = 0.0,
    cov_type: str = "robust",
    passes: RowPasses | None = None,
    meats: Sequence[np.ndarray] | None = None,
) -> tuple[float, float, int]:
    """AR test of theta = beta0: (statistic on the chi^2 scale, p-value, k), as `weak_iv.anderson_rubin_test`."""
    from invariant_mr.inference.weak_iv import _classical_stat, _robust_stat

    b = np.array([float(beta0)])
    if cov_type == "unadjusted":
        pr, _ = _ar_problem(design, None)
        stat = float(_classical_stat(pr, b)[0])
    elif cov_type == "robust":
        meats = _robust_meats(design, meats, passes, anderson_rubin_requests, "the robust AR test")
        pr, blocks = _ar_problem(design, meats)
        stat = float(_robust_stat(pr, b, blocks)[0])
    else:
        raise InputError(f"cov_type must be 'robust' or 'unadjusted', got {cov_type!r}")
    return stat, float(sps.chi2.sf(stat, pr.k)), pr.k


def _tsls(pr: _Parts) -> float:
    return pr.quad(pr.a, pr.c) / pr.quad(pr.c, pr.c)


def j_requests(design: PartialledDesign) -> list[MeatRequest]:
    """Hansen's J: the HC0 meat of the 2SLS residuals in orthonormal instrument coordinates."""
    pr = _Parts.of(design)
    b = _tsls(pr)
    return [MeatRequest(design, None, _pad(design.k, [-b, 1.0])[:, None])]


def sargan_hansen_j_from_stats(
    design: PartialledDesign,
    *,
    cov_type: str = "robust",
    passes: RowPasses | None = None,
    meats: Sequence[np.ndarray] | None = None,
) -> tuple[float, float, int]:
    """Overidentification test (J, p-value, k - 1), as `diagnostics.sargan_hansen_j`."""
    pr = _Parts.of(design)
    k = pr.rank
    if k < 2:
        raise InputError("the J test needs more instruments than endogenous regressors (overidentification)")
    a, c = _orthonormal(pr)
    b_tsls = float(a @ c / (c @ c))
    if cov_type == "unadjusted":
        g = a - b_tsls * c
        explained = float(g @ g)
        uu = pr.yy - 2 * b_tsls * pr.dy + b_tsls**2 * pr.dd
        stat = explained / ((uu - explained) / (design.n - k - design.n_controls))
    elif cov_type == "robust":
        M = _robust_meats(design, meats, passes, j_requests, "Hansen's J")[0]
        S, (c, a) = _meat_coordinates(pr, M, pr.c, pr.a)
        Sc, Sa = np.linalg.solve(S, c), np.linalg.solve(S, a)
        b_gmm = float(c @ Sa / (c @ Sc))
        g = a - b_gmm * c
        stat = float(g @ np.linalg.solve(S, g))
    else:
        raise InputError(f"cov_type must be 'robust' or 'unadjusted', got {cov_type!r}")
    return stat, float(sps.chi2.sf(stat, k - 1)), k - 1


def first_stage_from_stats(
    design: PartialledDesign,
    *,
    cov_type: str = "robust",
    passes: RowPasses | None = None,
    meats: Sequence[np.ndarray] | None = None,
) -> tuple[float, float, int]:
    """(first-stage F, p-value, k), as `diagnostics.first_stage_strength`: the partial F
    (Cragg-Donald with one endogenous regressor) or the robust Wald F (Kleibergen-Paap)."""
    pr = _Parts.of(design)
    k = pr.rank
    if k == 0:
        raise InputError("the instruments are collinear with the controls")
    c = pr.inv.T.T @ pr.c
    if cov_type == "unadjusted":
        dfd = design.n - k - design.n_controls
        f = float(c @ c) / k / ((pr.dd - float(c @ c)) / dfd)
        return f, float(sps.f.sf(f, k, dfd)), k
    if cov_type != "robust":
        raise InputError(f"cov_type must be 'robust' or 'unadjusted', got {cov_type!r}")
    M = _robust_meats(design, meats, passes, lambda d: [first_stage_request(d)], "the robust first-stage F")[0]
    S, (c,) = _meat_coordinates(pr, M, pr.c)
    wald = float(c @ np.linalg.solve(S, c))
    return wald / k, float(sps.chi2.sf(wald, k)), k


# ----------------------------------------------------------------------------- per-variant associations
