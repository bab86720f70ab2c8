"""k-class instrumental-variable estimation (OLS, 2SLS, LIML, Fuller) with inference.

One estimator, one knob (`kappa`), as in ivmodels. The exposure is the single
endogenous regressor; exogenous controls (intercept, environment fixed
effects, covariates) enter both stages. Covariances follow linearmodels'
conventions (HC0 "robust" or homoskedastic "unadjusted", no small-sample
correction) so that the two agree to rounding error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
from scipy import stats

from .errors import InputError

_FULLER = re.compile(r"^fuller\(\s*([0-9.]+)\s*\)$")


def orthonormal_basis(M: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """Orthonormal basis of the column space of M (rank-revealing pivoted QR)."""
    if M.shape[1] == 0:
        return M
    Q, R, _ = sla.qr(M, mode="economic", pivoting=True)
    diag = np.abs(np.diag(R))
    rank = int((diag > rtol * diag[0]).sum()) if diag.size and diag[0] > 0 else 0
    return Q[:, :rank]


def independent_columns(M: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """The columns of M that span its column space (redundant controls dropped, order kept)."""
    if M.shape[1] == 0:
        return M
    _, R, piv = sla.qr(M, mode="economic", pivoting=True)
    diag = np.abs(np.diag(R))
    rank = int((diag > rtol * diag[0]).sum()) if diag.size and diag[0] > 0 else 0
    return M[:, np.sort(piv[:rank])]


def residualize(M: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """M minus its projection onto the span of the orthonormal `basis`."""
    if basis.shape[1] == 0:
        return M
    return M - basis @ (basis.T @ M)


@dataclass(frozen=True)
class KClassFit:
    """A fitted k-class IV regression; `estimate` is the exposure's coefficient."""

    estimate: float
    se: float
    params: np.ndarray
    cov: np.ndarray
    kappa: float
    n: int
    n_instruments: int
    first_stage_f: float | None
    cov_type: str
    residuals: np.ndarray

    def ci(self, alpha: float = 0.05) -> tuple[float, float]:
        z = stats.norm.ppf(1 - alpha / 2)
        return self.estimate - z * self.se, self.estimate + z * self.se

    @property
    def pvalue(self) -> float:
        """Two-sided Wald p-value for a zero effect."""
        return float(2 * stats.norm.sf(abs(self.estimate / self.se))) if self.se > 0 else float("nan")


def parse_kappa(kappa) -> tuple[str, float | None]:
    """('ols'|'tsls'|'liml'|'fuller'|'fixed', value) from a user-facing kappa spec."""
    if isinstance(kappa, (int, float)) and not isinstance(kappa, bool):
        return "fixed", float(kappa)
    if kappa in ("ols", "tsls", "liml"):
        return kappa, None
    m = _FULLER.match(str(kappa))
    if m:
        return "fuller", float(m.group(1))
    raise InputError(f"kappa must be 'ols', 'tsls', 'liml', 'fuller(a)' or a number, got {kappa!r}")


def fit_kclass(
    outcome: np.ndarray,
    exposure: np.ndarray,
    instruments: np.ndarray | None,
    exog: np.ndarray | None = None,
    *,
    kappa="tsls",
    cov_type: str = "robust",
    add_intercept: bool = True,
) -> KClassFit:
    """Fit y = theta * d + exog' gamma + e by k-class IV with `instruments` for d.

    kappa: "ols" (instruments ignored), "tsls", "liml", "fuller(a)" or a number.
    First-stage F: the homoskedastic partial F (Cragg-Donald with one
    endogenous regressor) under `cov_type="unadjusted"`, the robust Wald F
    (Kleibergen-Paap with one endogenous regressor) under "robust".
    """
    y = np.asarray(outcome, dtype=float).ravel()
    d = np.asarray(exposure, dtype=float).ravel()
    n = y.shape[0]
    kind, value = parse_kappa(kappa)
    cols = [np.ones((n, 1))] if add_intercept else []
    if exog is not None:
        exog = np.asarray(exog, dtype=float)
        cols.append(exog.reshape(n, -1))
    # Redundant controls (e.g. fold dummies inside one environment) are dropped, not fatal.
    X1 = independent_columns(np.hstack(cols)) if cols else np.empty((n, 0))
    X = np.hstack([X1, d[:, None]])

    if kind == "ols" or instruments is None:
        if kind != "ols":
            raise InputError("instrumental-variable estimation needs at least one instrument")
        Zfull, k_val, n_instr, f_stat = X, 0.0, 0, None
    else:
        Zi = np.asarray(instruments, dtype=float).reshape(n, -1)
        Zfull = np.hstack([X1, Zi])
        basis_x1 = orthonormal_basis(X1)
        Zt = orthonormal_basis(residualize(Zi, basis_x1))
        n_instr = Zt.shape[1]
        if n_instr == 0:
            raise InputError("the instruments are collinear with the exogenous controls")
        f_stat = _first_stage_f(residualize(d[:, None], basis_x1)[:, 0], Zt, n - X1.shape[1], cov_type)
        if kind == "tsls":
            k_val = 1.0
        elif kind == "fixed":
            k_val = value
        else:
            k_val = _liml_kappa(np.column_stack([y, d]), basis_x1, Zt)
            if kind == "fuller":
                k_val -= value / (n - Zfull.shape[1])

    basis_z = orthonormal_basis(Zfull)
    PzX = basis_z @ (basis_z.T @ X)
    Pzy = basis_z @ (basis_z.T @ y)
    A = (1 - k_val) * (X.T @ X) + k_val * (X.T @ PzX)
    b = (1 - k_val) * (X.T @ y) + k_val * (X.T @ Pzy)
    params = np.linalg.solve(A, b)
    eps = y - X @ params
    V_inv = np.linalg.inv(A / n)
    if cov_type == "robust":
        xe = PzX * eps[:, None]
        S = xe.T @ xe / n
        cov = V_inv @ S @ V_inv / n
    elif cov_type == "unadjusted":
        cov = (eps @ eps / n) * V_inv / n
    else:
        raise InputError(f"cov_type must be 'robust' or 'unadjusted', got {cov_type!r}")
    cov = (cov + cov.T) / 2
    return KClassFit(
        estimate=float(params[-1]),
        se=float(np.sqrt(cov[-1, -1])),
        params=params,
        cov=cov,
        kappa=float(k_val),
        n=n,
        n_instruments=n_instr,
        first_stage_f=None if f_stat is None else float(f_stat),
        cov_type=cov_type,
        residuals=eps,
    )


def _liml_kappa(e: np.ndarray, basis_x1: np.ndarray, Zt: np.ndarray) -> float:
    """Smallest root of det(E'M_X1 E - k E'M_Z E) = 0 with E = [y, d]."""
    ex1 = residualize(e, basis_x1)
    ez = ex1 - Zt @ (Zt.T @ ex1)
    return float(sla.eigh(ex1.T @ ex1, ez.T @ ez, eigvals_only=True).min())


def _first_stage_f(d_tilde: np.ndarray, Zt: np.ndarray, df_resid: int, cov_type: str) -> float:
    """Partial first-stage F of the (orthonormalised, residualised) instruments."""
    m = Zt.shape[1]
    pi = Zt.T @ d_tilde  # Zt is orthonormal, so Zt'Zt = I
    u = d_tilde - Zt @ pi
    if cov_type == "robust":
        zu = Zt * u[:, None]
        meat = zu.T @ zu
        wald = float(pi @ np.linalg.solve(meat, pi))
        return wald / m
    rss = float(u @ u)
    return float((pi @ pi) / m / (rss / max(df_resid - m, 1)))
