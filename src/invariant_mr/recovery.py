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
