"""Per-variant associations with exposure and outcome from sufficient statistics, as
`summary.sumstats.summary_statistics` computes them from the rows: classical SEs from the
statistics alone, robust (HC0) ones from per-column moments of one second pass."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from invariant_mr.errors import InputError
from invariant_mr.estimators.sufficient_stats import (
    EnvironmentCrossProducts,
    MeatRequest,
    PartialledDesign,
    _robust_meats,
    partial_out,
)
from invariant_mr.passes.local import RowPasses


def summary_statistics_requests(design: PartialledDesign) -> list[MeatRequest]:
    """Per-variant robust SEs: the per-column moments (O(p) memory)."""
    return [MeatRequest(design, per_column=True)]


def summary_statistics_from_stats(
    stats: EnvironmentCrossProducts,
    *,
    env_fixed_effects: bool = True,
    adjust_covariates: bool = True,
    cov_type: str = "unadjusted",
    variant_names: Sequence[str] | None = None,
    passes: RowPasses | None = None,
    meats: Sequence[np.ndarray] | None = None,
    fill: np.ndarray | None = None,
):
    """Per-variant associations with exposure and outcome, as `sumstats.summary_statistics`.

    Each variant's simple regression is adjusted for the intercept, the
    environment fixed effects and the covariates; "robust" (HC0) needs the
    meats of `summary_statistics_requests(design)` for the design
    `partial_out(stats, env_fixed_effects=..., covariates=adjust_covariates, fill=fill)`.
    """
    from invariant_mr.estimators.summary.sumstats import SummaryStatistics

    design = partial_out(stats, env_fixed_effects=env_fixed_effects, covariates=adjust_covariates, fill=fill)
    k = design.k
    G = design.gram
    sxx = np.diag(G)[:k].copy()
    small = sxx <= 1e-12 * max(1.0, float(sxx.max()))
    if small.any():
        bad = np.flatnonzero(small)
        raise InputError(
            f"variant column(s) {', '.join(str(b) for b in bad[:10])} are constant after adjusting for the controls"
        )
    df = design.n - design.n_controls - 1
    out = {}
    if cov_type == "robust":
        M = _robust_meats(design, meats, passes, summary_statistics_requests, "robust per-variant SEs")[0]
    elif cov_type != "unadjusted":
        raise InputError(f"cov_type must be 'robust' or 'unadjusted', got {cov_type!r}")
    for name, col, (m2, m3) in (("exposure", k, (0, 1)), ("outcome", k + 1, (2, 3))):
        sxy = G[:k, col]
        beta = sxy / sxx
        if cov_type == "unadjusted":
            rss = G[col, col] - beta * sxy
            se = np.sqrt(np.maximum(rss, 0.0) / df / sxx)
        else:
            meat = M[m2] - 2 * beta * M[m3] + beta**2 * M[4]
            se = np.sqrt(np.maximum(meat, 0.0)) / sxx
        out[name] = (beta, se)
    names = variant_names if variant_names is not None else tuple(f"iv{j + 1}" for j in range(k))
    adjusted = ["intercept"] + (["environment"] if env_fixed_effects else [])
    if adjust_covariates:
        adjusted.extend(stats.covariate_names)
    return SummaryStatistics(
        variant=tuple(names),
        beta_exposure=out["exposure"][0],
        se_exposure=out["exposure"][1],
        beta_outcome=out["outcome"][0],
        se_outcome=out["outcome"][1],
        n=stats.n,
        adjusted_for=tuple(adjusted),
        cov_type=cov_type,
    )


__all__ = ["summary_statistics_from_stats", "summary_statistics_requests"]
