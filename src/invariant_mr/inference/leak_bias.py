"""How much bias would the leak that an invariance check detects cause? A bound, per number of directions.

Learned instrument directions are never exactly invariant under measurement
noise or a mixing the decoder cannot represent: a share of the confounded
latents leaks into them. With thousands of rows an exact invariance test
rejects leaks far too small to matter, so "abstain when exact invariance is
rejected" gives up where the estimate would have been right (issue 19). What
matters is the bias the leak causes next to the estimate's SE.

The bound. Columns of `directions` are stage-2 directions, most invariant first,
the last the most varying one, `v`: under the model it is (nearly) pure
confounded latent, whose environment shift is the confounders' (V = V0 + eta_e H).
A linear leak c v in direction s_j moves s_j's environment means by c times v's,
so |c| ≈ shift_j / shift_v (each shift net of its sampling noise; covariances with the
other directions shift by c times v's too, and count alongside the means) (within-environment SD units), and adds c cov(v, u) to
cov(s_j, u), u the structural error. v's own IV bias is b_v = cov(v, u) / cov(v, D),
so direction j alone would be biased by about

    B_j = (shift_j / shift_v) |b_v| |pi_v| / |pi_j|,       pi = within-environment cov with D,

and 2SLS on the first k (within-environment uncorrelated) directions by the
pi^2-weighted mean of the B_j, Q |b_v| (Q the weighted mean of the ratios). b_v is
estimated from theta_v - theta_k, theta_k the 2SLS estimate on the first k
directions, which carries the leak's bias too: at worst theta_v - theta_k =
b_v (1 - Q), so the bound is Q |theta_v - theta_k| / (1 - Q) (infinite for Q >= 1). Every quantity comes from the rows
given; nothing uses the truth. The bound is rough (a leak that is not linear in
v is only seen through its shift), so it is compared with a fraction of the SE,
and `stability` adds a check that the estimate does not move with k.
"""

from __future__ import annotations

import numpy as np


def _within(x: np.ndarray, env_codes: np.ndarray) -> np.ndarray:
    out = np.array(x, dtype=float, copy=True)
    for e in np.unique(env_codes):
        rows = env_codes == e
        out[rows] -= out[rows].mean(axis=0)
    return out


def _tsls(S: np.ndarray, D: np.ndarray, Y: np.ndarray) -> tuple[float, float]:
    """(estimate, homoskedastic SE) of 2SLS of Y on D with instruments S (all within-environment centred)."""
    coef, *_ = np.linalg.lstsq(S, D, rcond=None)
    fitted = S @ coef
    denom = float(fitted @ D)
    if not np.isfinite(denom) or abs(denom) < 1e-300:
        return float("nan"), float("inf")
    theta = float(fitted @ Y) / denom
    resid = Y - theta * D
    dof = max(1, Y.size - S.shape[1] - 1)
    return theta, float(np.sqrt(resid @ resid / dof * (fitted @ fitted)) / abs(denom))


def leak_bias_bounds(directions: np.ndarray, env_codes: np.ndarray, exposure: np.ndarray, outcome: np.ndarray) -> dict:
    """Bias bound, estimate and SE of 2SLS on the first k directions, k = 1 .. m - 1 (see the module docstring).

    Returns a dict of arrays indexed by k - 1: "bound", "estimate", "se", and the
    per-direction "shift" (m,) and "pi" (m,); "bound" is NaN when the most varying
    direction does not shift across environments (nothing to calibrate the leak with).
    """
    A = np.asarray(directions, dtype=float)
    env_codes = np.asarray(env_codes)
    m = A.shape[1]
    Aw = _within(A, env_codes)
    sd = Aw.std(axis=0)
    sd[sd == 0] = 1.0
    A, Aw = A / sd, Aw / sd
    D, Y = _within(exposure, env_codes), _within(outcome, env_codes)
    levels, counts = np.unique(env_codes, return_counts=True)
    weights = counts / counts.sum()
    noise = (levels.size - 1) / env_codes.size  # E[shift^2] of one exactly invariant unit-variance moment
    means = np.array([A[env_codes == e].mean(axis=0) for e in levels])  # (K, m)
    covs = np.array([Aw[env_codes == e].T @ Aw[env_codes == e] / c for e, c in zip(levels, counts)])  # (K, m, m)
    dmean2 = weights @ (means - weights @ means) ** 2  # (m,)
    dcov2 = np.einsum("e,eij->ij", weights, (covs - np.einsum("e,eij->ij", weights, covs)) ** 2)  # (m, m)
    # Leak share of direction j: its moment shifts (mean, covariances with every other direction l != j)
    # over v's (mean, covariances with the same l, its own variance included). A mean-only check misses
    # a confounded latent whose environments differ only in spread (K = 2: V = V0 + eta_e H shifts one
    # direction's mean and the other's variance).
    shift = np.zeros(m)
    ratio_shift = np.full(m, np.nan)
    for j in range(m):
        others = np.arange(m) != j
        own = dmean2[j] + dcov2[j, others].sum() - noise * m
        ref = dmean2[-1] + dcov2[-1, others].sum() - noise * (m + (1 if j != m - 1 else 0))
        shift[j] = np.sqrt(max(own, 0.0))
        ratio_shift[j] = np.sqrt(max(own, 0.0)) / np.sqrt(ref) if ref > 0 else np.nan
    pi = Aw.T @ D / D.size
    theta_v, _ = _tsls(Aw[:, [-1]], D, Y)
    bounds, estimates, ses = np.full(m - 1, np.nan), np.full(m - 1, np.nan), np.full(m - 1, np.nan)
    for k in range(1, m):
        estimates[k - 1], ses[k - 1] = _tsls(Aw[:, :k], D, Y)
        if np.all(np.isfinite(ratio_shift[:k])) and np.all(pi[:k] != 0):
            # Q: the set's bias as a share of v's; theta_k carries that bias too, so
            # theta_v - theta_k = b_v (1 - Q) at worst, and bias = Q b_v = Q |theta_v - theta_k| / (1 - Q).
            ratios = ratio_shift[:k] * abs(pi[-1]) / np.abs(pi[:k])
            Q = float((pi[:k] ** 2) @ ratios / (pi[:k] ** 2).sum())
            bounds[k - 1] = Q * abs(theta_v - estimates[k - 1]) / (1 - Q) if Q < 1 else np.inf
    return {"bound": bounds, "estimate": estimates, "se": ses, "shift": shift, "pi": pi}


def stability(estimates: np.ndarray, ses: np.ndarray, k: int) -> float:
    """z statistic of the move from 1 direction to k: |theta_k - theta_1| / SD of the difference.

    The first direction's instruments are nested in the first k's, so under a
    common target the difference has variance SE_1^2 - SE_k^2 (Hausman); it is
    floored at (SE_k / 2)^2 so that nearly equal SEs do not make any move significant.
    """
    if k <= 1:
        return 0.0
    var = max(ses[0] ** 2 - ses[k - 1] ** 2, (ses[k - 1] / 2) ** 2)
    return float(abs(estimates[k - 1] - estimates[0]) / np.sqrt(var))


__all__ = ["leak_bias_bounds", "stability"]
