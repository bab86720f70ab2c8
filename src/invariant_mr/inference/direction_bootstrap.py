"""Bootstrap SEs for 2SLS on learned instruments that refit the instruments on every draw.

The 2SLS SE treats the instruments as fixed. But learned directions are
estimated, and their error leaks a little of the confounded component into
the instruments, which adds variance of the same order as the sampling
variance (n^-1/2 direction error times an O(1) confounded covariance). In the
coverage benchmark (linear mixing, 1000 reps per cell) the fixed-direction SE
gave Wald coverage 0.91-0.93; this SE gave 0.93-0.95, as 2SLS on the true W
does (0.92-0.95).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np
from scipy import stats

from invariant_mr.errors import InputError
from invariant_mr.estimators.iv import fit_kclass
from invariant_mr.instruments.linear import one_blas_thread
from invariant_mr.results import Estimate

#: refit(Z_rows, env_codes_rows) -> instruments of those rows, (n, k).
Refit = Callable[[np.ndarray, np.ndarray], np.ndarray]


def direction_bootstrap(
    Z: np.ndarray,
    env_codes: np.ndarray,
    outcome: np.ndarray,
    exposure: np.ndarray,
    controls: np.ndarray | None,
    refit: Refit,
    n_draws: int,
    rng: np.random.Generator,
    *,
    cov_type: str = "robust",
    clusters: np.ndarray | None = None,
) -> np.ndarray:
    """2SLS estimates on `n_draws` within-environment resamples, the instruments refitted on each.

    `refit` should keep the selection made on the full data (signal rank,
    number of components): repeating it per draw would add the variance of a
    choice the reported estimate did not make. `controls` (e.g. environment
    dummies) are resampled with the rows. A draw that cannot be computed
    (a resample with a collinear column) is NaN.

    With `clusters` (related samples, cov_type "cluster") the units drawn are
    whole clusters, within the environment of each cluster's first member, so
    the draws keep the dependence within families.
    """
    if clusters is None:
        groups = [np.flatnonzero(env_codes == e) for e in np.unique(env_codes)]
    else:
        _, cl = np.unique(np.asarray(clusters).astype(str), return_inverse=True)
        order = np.argsort(cl, kind="stable")
        members = np.split(order, np.flatnonzero(np.diff(cl[order])) + 1)
        home = np.array([env_codes[m[0]] for m in members])
        units = [[members[c] for c in np.flatnonzero(home == e)] for e in np.unique(home)]
        groups = None
    draws = np.empty(n_draws)
    with one_blas_thread():  # small products: threads cost more than they give
        for b in range(n_draws):
            if groups is not None:
                rows = np.concatenate([rng.choice(g, size=g.size, replace=True) for g in groups])
            else:
                rows = np.concatenate([u[c] for u in units for c in rng.integers(0, len(u), len(u))])
            try:
                fit = fit_kclass(
                    outcome[rows], exposure[rows], refit(Z[rows], env_codes[rows]),
                    None if controls is None else controls[rows], kappa="tsls",
                    cov_type="robust" if cov_type == "cluster" else cov_type,
                )  # fmt: skip
                draws[b] = fit.estimate
            except (InputError, np.linalg.LinAlgError):
                draws[b] = np.nan
    return draws


def with_bootstrap_se(estimate: Estimate, draws: np.ndarray, alpha: float) -> Estimate:
    """`estimate` with the SE, Wald CI and p-value from bootstrap `draws` (NaN draws dropped).

    The analytic SE and the percentile interval are kept in `extra`.
    """
    draws = np.asarray(draws, dtype=float)
    draws = draws[np.isfinite(draws)]
    if draws.size < 2:
        return replace(estimate, extra={**estimate.extra, "direction_bootstrap_error": "too few valid draws"})
    se = float(np.std(draws, ddof=1))
    z = stats.norm.ppf(1 - alpha / 2)
    lo, hi = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return replace(
        estimate,
        se=se,
        ci_low=estimate.estimate - z * se,
        ci_high=estimate.estimate + z * se,
        pvalue=float(2 * stats.norm.sf(abs(estimate.estimate) / se)) if se > 0 else None,
        extra={
            **estimate.extra,
            "se_method": f"direction bootstrap ({draws.size} draws)",
            "se_fixed_directions": estimate.se,
            "bootstrap_percentile_ci": [float(lo), float(hi)],
        },
    )
