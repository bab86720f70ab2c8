"""From a GWAS summary-statistics table to the inputs of the summary-statistic estimators.

`io.gwas_sumstats` reads and harmonises the tables; the estimators take
`SummaryStatistics` (one exposure) or (L, K) arrays (several). These
helpers bridge the two, plus the Steiger test on the table's columns.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from invariant_mr.errors import InputError
from invariant_mr.estimators.multivariable_mr import MultivariableMRFit, mv_egger, mv_ivw
from invariant_mr.estimators.steiger import SteigerResult, steiger_test, variance_explained
from invariant_mr.io.gwas_sumstats import SumstatsTable
from invariant_mr.estimators.sumstats import SummaryStatistics


def summary_statistics_from_table(table: SumstatsTable, exposure: str | None = None) -> SummaryStatistics:
    """The univariable `SummaryStatistics` of one exposure (default: the first) of a table.

    `n` is the largest outcome sample size in the table (0 when unknown); the
    estimators do not use it, it is reported with the estimates.
    """
    k = table.exposure_index(exposure)
    n = 0
    if table.n_outcome is not None and np.any(np.isfinite(table.n_outcome)):
        n = int(np.nanmax(table.n_outcome))
    return SummaryStatistics(
        variant=table.variant,
        beta_exposure=table.beta_exposure[:, k],
        se_exposure=table.se_exposure[:, k],
        beta_outcome=table.beta_outcome,
        se_outcome=table.se_outcome,
        n=n,
        adjusted_for=(),
        cov_type="gwas",
    )


def mv_ivw_table(table: SumstatsTable, alpha: float = 0.05, model: str = "default") -> MultivariableMRFit:
    """Multivariable IVW on every exposure of the table."""
    return mv_ivw(
        table.beta_exposure, table.se_exposure, table.beta_outcome, table.se_outcome,
        exposures=table.exposures, alpha=alpha, model=model,
    )  # fmt: skip


def mv_egger_table(table: SumstatsTable, alpha: float = 0.05, orientate: str | None = None) -> MultivariableMRFit:
    """Multivariable MR-Egger on every exposure, oriented to `orientate` (default the first)."""
    return mv_egger(
        table.beta_exposure, table.se_exposure, table.beta_outcome, table.se_outcome,
        exposures=table.exposures, alpha=alpha, orientate=table.exposure_index(orientate),
    )  # fmt: skip


def steiger_from_table(
    table: SumstatsTable,
    *,
    exposure: str | None = None,
    method: str = "auto",
    pval_outcome=None,
) -> SteigerResult:
    """Steiger directionality test from the table's betas, SEs, n (and EAFs for method "eaf").

    Needs `n_exposure` and `n_outcome`. With method "pn", the exposure
    p-values come from the table and `pval_outcome` must be given (the
    one-table form has no outcome p-value column; it is computed from the
    outcome beta/SE with the normal distribution when omitted).
    """
    if table.n_exposure is None or table.n_outcome is None:
        raise InputError("the Steiger test needs n_exposure and n_outcome columns")
    k = table.exposure_index(exposure)
    bx, sx = table.beta_exposure[:, k], table.se_exposure[:, k]
    by, sy = table.beta_outcome, table.se_outcome
    px = table.pval_exposure[:, k] if table.pval_exposure is not None else 2 * stats.norm.sf(np.abs(bx / sx))
    py = np.asarray(pval_outcome, dtype=float) if pval_outcome is not None else 2 * stats.norm.sf(np.abs(by / sy))
    r2x = variance_explained(bx, se=sx, n=table.n_exposure, pval=px, eaf=table.eaf_exposure, method=method)
    r2y = variance_explained(by, se=sy, n=table.n_outcome, pval=py, eaf=table.eaf_outcome, method=method)
    return steiger_test(r2x, r2y, table.n_exposure, table.n_outcome)


__all__ = ["mv_egger_table", "mv_ivw_table", "steiger_from_table", "summary_statistics_from_table"]
