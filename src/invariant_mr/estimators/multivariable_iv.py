"""Multivariable two-stage least squares: the direct effects of several exposures on one outcome.

`fit_kclass` instruments one endogenous regressor. With K exposures the
model is y = X theta + W gamma + e, X the (n, K) exposures and W the
exogenous controls (intercept, environment fixed effects, covariates), all
K exposures instrumented by the same p >= K instruments. 2SLS:
theta = (X' P X)^-1 X' P y with P the projection onto the instruments after
partialling W out (Frisch-Waugh-Lovell: the partialled fit gives the same
theta and residuals as the full regression on [W, X] with instruments [W, Z]).

Covariance: "robust" is the HC0 sandwich
(X'PX)^-1 (sum_i e_i^2 xhat_i xhat_i') (X'PX)^-1, "unadjusted" is
sigma^2 (X'PX)^-1 with sigma^2 = e'e / n, both exactly linearmodels'
`IV2SLS(...).fit(cov_type="robust" | "unadjusted")` with `debiased=False`.

Instrument strength per exposure is the conditional F of Sanderson &
Windmeijer (2016, J Econometrics 190:212), homoskedastic form: exposure j
is regressed by 2SLS on the other exposures, and its residual's projection
on the instruments is tested with p - (K - 1) numerator degrees of freedom.
With one exposure it is the usual first-stage F.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from invariant_mr.errors import InputError
from invariant_mr.estimators.iv import InstrumentProjector, independent_basis, residualize


@dataclass(frozen=True)
class MultivariableIVFit:
    """Direct effects `estimate` (K,) of the exposures `exposures`, their covariance and conditional F."""

    exposures: tuple[str, ...]
    estimate: np.ndarray
    cov: np.ndarray
    n: int
    n_instruments: int
    conditional_f: np.ndarray
    cov_type: str
    residuals: np.ndarray

    @property
    def se(self) -> np.ndarray:
        return np.sqrt(np.diag(self.cov))

    def ci(self, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
        z = stats.norm.ppf(1 - alpha / 2)
        return self.estimate - z * self.se, self.estimate + z * self.se

    @property
    def pvalue(self) -> np.ndarray:
        return 2 * stats.norm.sf(np.abs(self.estimate / self.se))

    def summary(self) -> str:
        lo, hi = self.ci()
        lines = [f"multivariable 2SLS ({self.cov_type} SEs, {self.n} samples, {self.n_instruments} instruments)"]
        for k, name in enumerate(self.exposures):
            lines.append(
                f"  {name}: {self.estimate[k]:.4f} (SE {self.se[k]:.4f}, 95% CI [{lo[k]:.4f}, {hi[k]:.4f}], "
                f"conditional F {self.conditional_f[k]:.1f})"
            )
        return "\n".join(lines)


def fit_multivariable_tsls(
    outcome,
    exposures,
    instruments,
    exog=None,
    *,
    exposure_names: Sequence[str] | None = None,
    cov_type: str = "robust",
    add_intercept: bool = True,
) -> MultivariableIVFit:
    """2SLS of `outcome` on the (n, K) `exposures` with `instruments`, controlling for `exog`."""
    y = np.asarray(outcome, dtype=float).ravel()
    n = y.shape[0]
    X = np.asarray(exposures, dtype=float).reshape(n, -1)
    K = X.shape[1]
    names = tuple(str(e) for e in exposure_names) if exposure_names is not None else tuple(f"exposure_{k + 1}" for k in range(K))
    if len(names) != K:
        raise InputError(f"{len(names)} exposure names for {K} exposures")
    if cov_type not in ("robust", "unadjusted"):
        raise InputError(f"multivariable 2SLS supports cov_type 'robust' or 'unadjusted', got {cov_type!r}")
    cols = [np.ones((n, 1))] if add_intercept else []
    if exog is not None:
        cols.append(np.asarray(exog, dtype=float).reshape(n, -1))
    basis_w = independent_basis(np.hstack(cols))[1] if cols else np.empty((n, 0))
    Z = np.asarray(instruments, dtype=float).reshape(n, -1)
    proj = InstrumentProjector(residualize(Z, basis_w))
    p = proj.rank
    if p < K:
        raise InputError(
            f"multivariable 2SLS needs at least as many instruments as exposures ({p} independent instrument(s), {K} exposures)"
        )
    yr = residualize(y[:, None], basis_w)[:, 0]
    Xr = residualize(X, basis_w)
    Xhat = proj.project(Xr)
    A = Xhat.T @ Xr
    try:
        A_inv = np.linalg.inv(A)
    except np.linalg.LinAlgError:
        raise InputError("the instruments do not separate the exposures (singular first stage)") from None
    theta = A_inv @ (Xhat.T @ yr)
    e = yr - Xr @ theta
    if cov_type == "robust":
        S = (Xhat * e[:, None]).T @ (Xhat * e[:, None])
        cov = A_inv @ S @ A_inv.T
    else:
        cov = (e @ e / n) * A_inv
    cov = (cov + cov.T) / 2
    df_resid = n - basis_w.shape[1] - p
    return MultivariableIVFit(
        exposures=names,
        estimate=theta,
        cov=cov,
        n=n,
        n_instruments=p,
        conditional_f=_conditional_f(Xr, proj, df_resid),
        cov_type=cov_type,
        residuals=e,
    )


def _conditional_f(Xr: np.ndarray, proj: InstrumentProjector, df_resid: int) -> np.ndarray:
    """Sanderson-Windmeijer conditional F of each exposure (controls already partialled out)."""
    n, K = Xr.shape
    p = proj.rank
    out = np.empty(K)
    for j in range(K):
        xj = Xr[:, j]
        others = np.delete(Xr, j, axis=1)
        if others.shape[1]:
            oh = proj.project(others)
            delta = np.linalg.lstsq(oh.T @ others, oh.T @ xj, rcond=None)[0]
            resid = xj - others @ delta
        else:
            resid = xj
        fitted = proj.project(resid[:, None])[:, 0]
        explained = float(fitted @ fitted)
        rss = float((resid - fitted) @ (resid - fitted))
        out[j] = (explained / (p - (K - 1))) / (rss / max(df_resid, 1))
    return out


__all__ = ["MultivariableIVFit", "fit_multivariable_tsls"]
