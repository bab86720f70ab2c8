"""How well learned instruments recover the truth of a simulation.

Recovery: R^2 of the true W regressed on the learned instruments (with an
intercept), averaged over the columns of W: 1 means W is a linear function of
the instruments. Leakage: the same with the true V: 0 means the instruments
carry no linear trace of the confounded block.
"""

from __future__ import annotations

import numpy as np


def r_squared(target: np.ndarray, predictors: np.ndarray) -> float:
    """Mean over the columns of `target` of the OLS R^2 on `predictors` plus an intercept."""
    y = np.asarray(target, dtype=float).reshape(target.shape[0], -1)
    x = np.asarray(predictors, dtype=float).reshape(y.shape[0], -1)
    design = np.column_stack([np.ones(y.shape[0]), x])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    yc = y - y.mean(0)
    tss = (yc * yc).sum(0)
    r2 = 1.0 - (resid * resid).sum(0) / np.where(tss > 0, tss, np.nan)
    return float(np.nanmean(r2))


def recovery_scores(instruments: np.ndarray, W: np.ndarray, V: np.ndarray) -> dict[str, float]:
    """{"r2_w": recovery of W, "r2_v": leakage of V} for one set of learned instruments."""
    return {"r2_w": r_squared(W, instruments), "r2_v": r_squared(V, instruments)}


def _within(x: np.ndarray, env_codes: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=float).reshape(env_codes.shape[0], -1).copy()
    for code in np.unique(env_codes):
        rows = env_codes == code
        x[rows] -= x[rows].mean(0)
    return x


def nonlinear_leakage(instruments: np.ndarray, V: np.ndarray, env_codes: np.ndarray, degree: int = 3) -> float:
    """Mean R^2 of the instruments on all monomials of V up to `degree`, within environment.

    The linear leakage R^2 misses instruments built from V1^2, V1 V2, ...
    (under polynomial mixing those are linear in Z); such instruments are
    correlated with the confounder inside each environment and bias 2SLS.
    Both sides are centred within environment, as the 2SLS with fixed effects sees them.
    """
    from invariant_mr.simulation.paper import monomials

    features = monomials(np.asarray(V, dtype=float), degree)[:, 1:]
    return r_squared(_within(instruments, env_codes), _within(features, env_codes))
