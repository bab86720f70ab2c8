"""Within-family MR methods: family fixed effects on individual data, and the within-sibship summary form.

The family labels are the data's cluster labels (`run --family-col FID`, or
`MRData(clusters=family_ids)`): the same labels make every other method's SEs
cluster-robust by family. Families are nested in environments, so the family
fixed effects absorb the environment fixed effects; per-environment rows use
that environment's families.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from invariant_mr.data import MRData
from invariant_mr.errors import InputError
from invariant_mr.estimators.summary.summary_mr import ivw, mr_egger
from invariant_mr.estimators.within_family import (
    fit_within_family,
    fit_within_family_crossfit,
    within_family_associations,
)
from invariant_mr.inference.estimates import estimate_from_fit
from invariant_mr.methods.registry import MethodContext, MethodOutput
from invariant_mr.results import Estimate

_NEEDS_FAMILIES = ("needs family IDs: give --family-col FID (the .fam FID or a phenotype column), "
                   "or MRData(clusters=family_ids)")


def _scopes(data: MRData, ctx: MethodContext):
    if data.clusters is None:
        raise InputError(f"within-family MR {_NEEDS_FAMILIES}")
    yield "pooled", np.ones(data.n, dtype=bool)
    if ctx.per_env:
        codes = data.env_codes
        for i, level in enumerate(data.env_levels):
            yield f"env:{level}", codes == i


def within_family(data: MRData, ctx: MethodContext) -> MethodOutput:
    """IV with family fixed effects: a cross-fitted within-family score (default) or every variant."""
    first_stage = ctx.option("wf_first_stage", "crossfit")
    rows = []
    for scope, mask in _scopes(data, ctx):
        cov = None if data.covariates is None else data.covariates[mask]
        args = (data.outcome[mask], data.exposure[mask], data.instrument_rows(np.flatnonzero(mask)), data.clusters[mask], cov)
        try:
            if first_stage == "crossfit":
                wf = fit_within_family_crossfit(
                    *args, n_folds=int(ctx.option("wf_folds", 5)), se=ctx.option("wf_se", "jackknife"),
                    seed=ctx.rng(f"within_family:{scope}"),
                )
            else:
                wf = fit_within_family(*args, kappa=first_stage)
        except (InputError, np.linalg.LinAlgError) as exc:
            if scope == "pooled":
                rows.append(Estimate.unavailable("within_family", scope, int(mask.sum()), data.p, str(exc)))
            continue
        extra = {
            "first_stage": wf.first_stage, "n_families": wf.n_families,
            "n_singletons_dropped": wf.n_singletons_dropped, "n_samples_used": wf.n_samples_used,
            "n_variants": data.p, "fixed_effects": "family (absorbs environment)",
            **({"n_folds": wf.n_folds, "cluster_se": wf.cluster_se} if wf.n_folds else {}),
        }
        rows.append(estimate_from_fit(wf.fit, "within_family", scope, ctx.alpha, extra))
    return MethodOutput(tuple(rows))


def _summary_method(name: str, estimator: Callable, minimum: int) -> Callable[[MRData, MethodContext], MethodOutput]:
    def method(data: MRData, ctx: MethodContext) -> MethodOutput:
        rows = []
        for scope, mask in _scopes(data, ctx):
            try:
                ss = within_family_associations(
                    data.instrument_rows(np.flatnonzero(mask)), data.exposure[mask], data.outcome[mask], data.clusters[mask],
                    None if data.covariates is None else data.covariates[mask],
                    variant_names=data.instrument_names,
                )
                if ss.n_variants < minimum:
                    raise InputError(f"{name} needs at least {minimum} variants, got {ss.n_variants}")
                fit = estimator(ss, ctx.alpha)
            except (InputError, np.linalg.LinAlgError) as exc:
                if scope == "pooled":
                    rows.append(Estimate.unavailable(name, scope, int(mask.sum()), data.p, str(exc)))
                continue
            rows.append(Estimate(
                method=name, scope=scope, estimate=fit.estimate, se=fit.se, ci_low=fit.ci_low, ci_high=fit.ci_high,
                n=ss.n, n_instruments=fit.n_variants,
                first_stage_f=float(np.mean((ss.beta_exposure / ss.se_exposure) ** 2)), pvalue=fit.pvalue,
                extra={**fit.extra, "first_stage_f_kind": "mean per-variant F",
                       "associations": "within-family (family fixed effects), SEs clustered by family",
                       "one_sample": "exposure and outcome associations from the same samples: weak variants "
                                     "pull the estimate towards the within-family OLS"},
            ))
        return MethodOutput(tuple(rows))

    method.__name__ = name
    method.__doc__ = f"{estimator.__name__} on within-family per-variant associations."
    return method


within_family_ivw = _summary_method("within_family_ivw", ivw, 2)
within_family_egger = _summary_method("within_family_egger", mr_egger, 3)
