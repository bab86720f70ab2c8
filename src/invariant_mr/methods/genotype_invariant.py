"""`invariant_genotype`: remove the genotype directions that shift across environments -> LIML -> diagnostics.

The learner is `instruments.genotype_invariant.GenotypeInvariantInstruments`
(see its docstring for the model and the assumptions). The kept complement
has m - r instruments, close to m; with that many, 2SLS is pulled towards OLS
by about k / (n F) of the OLS bias, so the estimate is LIML with Bekker's
many-instrument SE (`estimators.many_instruments`), the conventional SE kept
in `extra`. The diagnostics test the instruments against the removed,
environment-varying component.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from scipy import stats

from invariant_mr.data import MRData, exogenous_controls
from invariant_mr.errors import InputError
from invariant_mr.estimators.many_instruments import bekker_se
from invariant_mr.inference.diagnostics import instrument_diagnostics
from invariant_mr.inference.estimates import iv_estimates
from invariant_mr.instruments.genotype_invariant import GenotypeInvariantInstruments
from invariant_mr.methods.registry import MethodContext, MethodOutput
from invariant_mr.results import Estimate

NAME = "invariant_genotype"
#: Default most instruments for the robust Anderson-Rubin set here (see `invariant_genotype`).
AR_MAX_MANY = 50


def learner_from_context(ctx: MethodContext) -> GenotypeInvariantInstruments:
    n_removed = ctx.option("gi_n_removed", "auto")
    if n_removed != "auto":
        try:
            n_removed = int(n_removed)
        except (TypeError, ValueError):
            raise InputError(f"--gi-n-removed must be 'auto' or an integer, got {n_removed!r}") from None
    return GenotypeInvariantInstruments(
        n_removed=n_removed, n_permutations=int(ctx.option("gi_permutations", 49)), random_state=ctx.rng(NAME),
    )


def _with_bekker(row: Estimate, y, d, Z, controls, alpha: float) -> Estimate:
    """The row with Bekker's SE and Wald interval (the conventional ones kept in `extra`)."""
    if row.se is None or not math.isfinite(row.estimate):
        return row
    se = bekker_se(y, d, Z, controls, estimate=row.estimate)
    kind = "Bekker (many instruments, homoskedastic)"
    if row.extra.get("cov_type") == "cluster" and row.se > se:
        # Bekker's SE assumes independent rows; with clusters (families) the cluster-robust SE can be the
        # larger, and then it is used: neither corrects for both, the larger errs on the safe side.
        se, kind = float(row.se), "cluster-robust (larger than Bekker's, which ignores the clusters)"
    z = stats.norm.ppf(1 - alpha / 2)
    return replace(
        row, se=se, ci_low=row.estimate - z * se, ci_high=row.estimate + z * se,
        pvalue=float(2 * stats.norm.sf(abs(row.estimate / se))),
        extra={**row.extra, "se_kind": kind, "conventional_se": row.se,
               "conventional_ci": [row.ci_low, row.ci_high]},
    )


def invariant_genotype(data: MRData, ctx: MethodContext) -> MethodOutput:
    learner = learner_from_context(ctx).fit(data.Z, data.env)
    hw = learner.transform(data.Z, data.env)
    extra = {
        "n_removed": int(learner.removed_.shape[1]), "n_mean_shift_removed": learner.n_mean_removed_,
        "n_cov_shift_removed": learner.n_cov_removed_, "scaling": "per variant, within each environment",
    }
    settings = ctx.inference
    if ctx.option("ar_max_instruments") is None:
        # The robust AR statistic refers a k-dimensional score to chi2(k); with k in the hundreds its
        # estimated k x k covariance is too small and the set comes out empty for valid instruments
        # (Anatolyev & Gospodinov 2011). Unless asked for, it is left out above this many instruments.
        settings = replace(settings, ar_max_instruments=AR_MAX_MANY)
    try:
        rows = iv_estimates(data, hw, settings, method=NAME, kappa="liml", extra=extra, clusters=data.clusters)
    except (InputError, np.linalg.LinAlgError) as exc:
        # e.g. few, non-genotype columns: removing the shifting directions leaves instruments spanned by
        # the environment effects. The data cannot support this design; the other methods' results stand.
        reason = f"no usable instruments after removing {extra['n_removed']} shifting directions: {exc}"
        return MethodOutput(tuple(Estimate.unavailable(NAME, scope, int(mask.sum()), hw.shape[1], reason)
                                  for scope, mask in [("pooled", np.ones(data.n, dtype=bool))]))
    codes = data.env_codes
    scopes = {"pooled": (np.ones(data.n, dtype=bool), exogenous_controls(data, True))}
    for i, level in enumerate(data.env_levels):
        scopes[f"env:{level}"] = (codes == i, None if data.covariates is None else data.covariates[codes == i])
    out = []
    for row in rows:
        mask, controls = scopes[row.scope]
        try:
            # `controls` are already the scope's rows (the pooled scope has every row).
            out.append(_with_bekker(row, data.outcome[mask], data.exposure[mask], hw[mask], controls, ctx.alpha))
        except (InputError, np.linalg.LinAlgError) as exc:
            out.append(Estimate.unavailable(NAME, row.scope, int(mask.sum()), hw.shape[1], str(exc)))
    removed = learner.removed_scores(data.Z, data.env) if learner.removed_.shape[1] else None
    diagnostics = instrument_diagnostics(data, hw, ctx.inference, complement=removed, method=NAME,
                                         clusters=data.clusters, kappa="liml")
    spectrum = {
        "mean_shift_eigenvalues": learner.mean_shift_eigenvalues_.tolist(),
        "cov_shift_eigenvalues": learner.cov_shift_eigenvalues_[:50].tolist(),
        "cov_shift_null_quantiles": None if learner.cov_shift_null_quantiles_ is None
        else learner.cov_shift_null_quantiles_[:50].tolist(),
    }
    return MethodOutput(tuple(out), tuple(diagnostics), artifacts={"instruments": hw, "spectrum": spectrum})


__all__ = ["invariant_genotype", "learner_from_context"]
