"""LIML with many instruments: Bekker (1994) standard errors.

With k instruments growing with n (k/n not negligible, e.g. 190 genotype
directions on 9,000 people), 2SLS is biased towards OLS by about k / (n F)
of the OLS bias, while LIML stays consistent (Bekker 1994; Hansen, Hausman &
Newey 2008, "Estimation with many instrumental variables", JBES). Its usual
SE, which treats the projection as fixed, is too small there; Bekker's
correction adds the variance that comes from the many first-stage
coefficients. With one endogenous regressor, everything residualised on the
controls (intercept, environment fixed effects, covariates), P the projection
on the instruments, eps = y - d b the LIML residual:

    a     = eps' P eps / eps' eps
    d~    = d - eps (eps' d) / (eps' eps)
    H     = d' P d - a d' d
    Sigma = s2 [ (1 - a)^2 d~' P d~ + a^2 d~' (I - P) d~ ],  s2 = eps' eps / (n - c - 1)
    Var(b) = Sigma / H^2

(Hansen, Hausman & Newey 2008, section 3). It assumes homoskedastic errors;
with few instruments (a -> 0) it reduces to the usual LIML SE.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from invariant_mr.errors import InputError
from invariant_mr.estimators.iv import InstrumentProjector, KClassFit, fit_kclass, independent_basis, residualize


@dataclass(frozen=True)
class BekkerLIML:
    """A LIML fit with its Bekker SE (`se`) and the conventional one (`fit.se`)."""

    fit: KClassFit
    se: float

    @property
    def estimate(self) -> float:
        return self.fit.estimate


def bekker_se(outcome, exposure, instruments, exog=None, *, estimate: float) -> float:
    """Bekker's many-instrument SE of a LIML (or k-class) `estimate` (see the module docstring)."""
    y = np.asarray(outcome, dtype=float).ravel()
    d = np.asarray(exposure, dtype=float).ravel()
    n = y.size
    cols = [np.ones((n, 1))]
    if exog is not None:
        cols.append(np.asarray(exog, dtype=float).reshape(n, -1))
    X1, basis = independent_basis(np.hstack(cols))
    Z_raw = np.asarray(instruments, dtype=float).reshape(n, -1)
    Z = residualize(Z_raw, basis)
    # Residuals at rounding level mean the controls span the instruments (a relative test: scale-free).
    if np.linalg.norm(Z) <= 1e-10 * max(np.linalg.norm(Z_raw), 1e-300):
        raise InputError("the instruments are collinear with the controls")
    yt = residualize(y[:, None], basis)[:, 0]
    dt = residualize(d[:, None], basis)[:, 0]
    proj = InstrumentProjector(Z)
    if proj.rank == 0:
        raise InputError("the instruments are collinear with the controls")
    eps = yt - estimate * dt
    ee = float(eps @ eps)
    P_eps = proj.project(eps[:, None])[:, 0]
    a = float(eps @ P_eps) / ee
    d_tilde = dt - eps * float(eps @ dt) / ee
    P_dt = proj.project(dt[:, None])[:, 0]
    P_dtilde = proj.project(d_tilde[:, None])[:, 0]
    H = float(dt @ P_dt) - a * float(dt @ dt)
    if H <= 0:
        raise InputError("the instruments do not identify the effect (d'Pd <= a d'd): too weak for LIML")
    s2 = ee / (n - X1.shape[1] - 1)
    q_in = float(d_tilde @ P_dtilde)
    q_out = float(d_tilde @ d_tilde) - q_in
    sigma = s2 * ((1 - a) ** 2 * q_in + a**2 * q_out)
    return float(np.sqrt(sigma) / H)


def fit_liml_bekker(outcome, exposure, instruments, exog=None, *, cov_type: str = "robust", clusters=None) -> BekkerLIML:
    """LIML (`fit_kclass(kappa="liml")`, with its conventional `cov_type` SE) and the Bekker SE."""
    fit = fit_kclass(outcome, exposure, instruments, exog, kappa="liml", cov_type=cov_type, clusters=clusters)
    return BekkerLIML(fit, bekker_se(outcome, exposure, instruments, exog, estimate=fit.estimate))


__all__ = ["BekkerLIML", "bekker_se", "fit_liml_bekker"]
