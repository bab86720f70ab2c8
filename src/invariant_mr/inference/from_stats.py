"""`Estimate` and `Diagnostic` rows from sufficient statistics, with at most one second pass.

`iv_estimates_from_stats`: the k-class rows of several methods.
`strength_diagnostics_from_stats`: the J and first-stage F rows of `diagnostics.instrument_diagnostics`.

The statistics counterpart of `estimation.iv_estimates`: the pooled row (with
environment fixed effects) and one row per environment (intercept and
covariates), each with its Anderson-Rubin set, for every method in `methods`
(name -> kappa). Designs and AR sets are shared between methods, and every
robust quantity of every method and scope comes from ONE streamed second pass
over the genotype blocks (`sufficient_stats.accumulate_meats`, run by the pass
engine `invariant_mr.passes`); with `cov_type="unadjusted"` no pass is needed at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from invariant_mr.inference.diagnostics import first_stage_diagnostic, j_diagnostic
from invariant_mr.errors import InputError
from invariant_mr.inference.estimates import estimate_from_fit, too_few_samples
from invariant_mr.estimators.kclass_from_stats import first_stage_request, kclass_from_stats, kclass_requests
from invariant_mr.estimators.sufficient_stats import (
    EnvironmentCrossProducts,
    MeatRequest,
    PartialledDesign,
    _Parts,
    accumulate_meats,
    partial_out,
)
from invariant_mr.passes.local import RowPasses
from invariant_mr.inference.tests_from_stats import (
    anderson_rubin_from_stats,
    anderson_rubin_requests,
    first_stage_from_stats,
    j_requests,
    sargan_hansen_j_from_stats,
)
from invariant_mr.estimators.iv import parse_kappa
from invariant_mr.results import Diagnostic, Estimate
from invariant_mr.inference.weak_iv import anderson_rubin_fields


def iv_estimates_from_stats(
    stats: EnvironmentCrossProducts,
    methods: Mapping[str, Any],
    *,
    alpha: float = 0.05,
    cov_type: str = "robust",
    per_env: bool = True,
    env_fixed_effects: bool = True,
    max_ar_instruments: int | None = None,
    passes: RowPasses | None = None,
    extra: Mapping[str, Any] | None = None,
    pooled_design: PartialledDesign | None = None,
    also: Sequence[MeatRequest] = (),
    meat_precision: str = "float64",
) -> dict[str, list[Estimate]]:
    """{method: [pooled row, env rows...]} as `estimation.iv_estimates` would give for each.

    `methods` maps a method name to its kappa ("ols", "tsls", "liml",
    "fuller(a)" or a number). `max_ar_instruments` skips robust AR sets above
    that many instruments, as `weak_iv.with_anderson_rubin` does. An
    environment where a fit cannot be computed is skipped.

    `pooled_design`, the caller's own `partial_out(stats, env_fixed_effects=...)`, is used as the
    pooled design, so that its instrument algebra (a k^3 whitening) is shared with the caller's
    later tests on it. `also` are more robust `MeatRequest`s (e.g. `j_requests(pooled_design)`)
    accumulated in the same second pass, whose rows they share; a `passes` that keeps its
    results (`passes.recorded`) then serves them without a pass of their own.

    `meat_precision` ("float64" or "float32"): that of the second pass's k x k meats (robust
    first-stage F and AR sets; `sufficient_stats.MeatKernel`); the SEs' meats stay float64.
    """
    if cov_type not in ("robust", "unadjusted"):
        raise InputError(f"cov_type must be 'robust' or 'unadjusted', got {cov_type!r}")
    kinds = {m: parse_kappa(k)[0] for m, k in methods.items()}
    designs = {"pooled": pooled_design if pooled_design is not None
               else partial_out(stats, env_fixed_effects=env_fixed_effects)}
    if per_env:
        for level in stats.env_levels:
            try:
                designs[f"env:{level}"] = partial_out(stats, env=level)
            except InputError:
                continue
    ols_designs = {
        scope: partial_out(stats, env_fixed_effects=env_fixed_effects, instruments=[])
        if scope == "pooled"
        else partial_out(stats, env=scope[4:], instruments=[])
        for scope in designs
    } if any(k == "ols" for k in kinds.values()) else {}

    def design_for(method: str, scope: str):
        return ols_designs[scope] if kinds[method] == "ols" else designs[scope]

    ranks: dict[str, int] = {}
    for scope, d in designs.items():
        try:
            ranks[scope] = _Parts.of(d).rank
        except (InputError, np.linalg.LinAlgError):
            ranks[scope] = 0
    want_ar = {
        scope: any(k != "ols" for k in kinds.values())
        and ranks[scope] > 0
        and not (cov_type == "robust" and max_ar_instruments is not None and ranks[scope] > max_ar_instruments)
        for scope in designs
    }

    requests, where = [], {}
    if cov_type == "robust":
        for scope in designs:
            # The first-stage meat (robust F) does not depend on kappa: one per scope for all methods.
            f_index = None
            for method, kappa in methods.items():
                try:
                    reqs = kclass_requests(design_for(method, scope), kappa)
                except (InputError, np.linalg.LinAlgError, ZeroDivisionError):
                    continue
                if len(reqs) == 1:  # OLS: the SE only
                    where[(method, scope)] = [len(requests)]
                    requests += reqs
                    continue
                if f_index is None:
                    f_index = len(requests)
                    requests.append(reqs[1])
                where[(method, scope)] = [len(requests), f_index]
                requests.append(reqs[0])
            if want_ar[scope]:
                try:
                    reqs = anderson_rubin_requests(designs[scope])
                except (InputError, np.linalg.LinAlgError):
                    want_ar[scope] = False
                    continue
                where[("ar", scope)] = list(range(len(requests), len(requests) + len(reqs)))
                requests += reqs
        if requests and passes is None:
            raise InputError("robust estimates from statistics need a second pass over the rows (passes=)")
        # `also` rides along at the end (their results are for the caller, through the passes' reuse).
        meats = (accumulate_meats(passes, [*requests, *also], precision=meat_precision)[: len(requests)]
                 if requests else ())

    def meats_of(key):
        if cov_type != "robust":
            return None
        return None if key not in where else tuple(meats[i] for i in where[key])

    ar_fields: dict[str, dict] = {}
    for scope, d in designs.items():
        if not any(k != "ols" for k in kinds.values()):
            break
        k = ranks[scope]
        if cov_type == "robust" and max_ar_instruments is not None and k > max_ar_instruments:
            ar_fields[scope] = {"extra": {
                "ar_set_kind": "not computed",
                "ar_error": (
                    f"robust Anderson-Rubin set skipped: {k} instruments > --ar-max-instruments "
                    f"{max_ar_instruments} (raise it, or use --cov-type unadjusted for the closed-form classical set)"
                ),
            }}
            continue
        try:
            if cov_type == "robust" and ("ar", scope) not in where:
                raise InputError("the instruments are collinear with the exogenous controls")
            cs = anderson_rubin_from_stats(d, alpha=alpha, cov_type=cov_type, meats=meats_of(("ar", scope)))
        except (InputError, np.linalg.LinAlgError) as exc:
            ar_fields[scope] = {"extra": {"ar_set_kind": "not computed", "ar_error": str(exc)}}
            continue
        f = anderson_rubin_fields(cs)
        ar_fields[scope] = {"ar_ci_low": f["ar_ci_low"], "ar_ci_high": f["ar_ci_high"],
                            "extra": {**f["extra"], "ar_cov_type": cov_type}}

    out: dict[str, list[Estimate]] = {}
    for method, kappa in methods.items():
        rows = []
        for scope in designs:
            if kinds[method] != "ols":  # the rule of `estimates.iv_estimates`, on the same counts
                d = designs[scope]
                why = too_few_samples(int(d.n), int(np.size(d.instruments)), max(int(d.n_controls) - 1, 0))
                if why is not None:
                    rows.append(Estimate.unavailable(method, scope, int(d.n), int(np.size(d.instruments)), why))
                    continue
            try:
                if cov_type == "robust" and (method, scope) not in where:
                    raise InputError("the fit cannot be computed")
                fit = kclass_from_stats(
                    design_for(method, scope), kappa=kappa, cov_type=cov_type, meats=meats_of((method, scope))
                )
            except (InputError, np.linalg.LinAlgError):
                if scope == "pooled":
                    raise
                continue
            est = estimate_from_fit(fit, method, scope, alpha, extra)
            if kinds[method] != "ols" and scope in ar_fields:
                f = ar_fields[scope]
                est = replace(
                    est,
                    ar_ci_low=f.get("ar_ci_low", est.ar_ci_low),
                    ar_ci_high=f.get("ar_ci_high", est.ar_ci_high),
                    extra={**est.extra, **f["extra"]},
                )
            rows.append(est)
        out[method] = rows
    return out


def strength_diagnostics_from_stats(
    stats: EnvironmentCrossProducts,
    *,
    alpha: float = 0.05,
    cov_type: str = "robust",
    env_fixed_effects: bool = True,
    method: str | None = None,
    passes: RowPasses | None = None,
) -> list[Diagnostic]:
    """The overidentification J (pooled) and first-stage F (pooled and per environment) rows.

    Names, flags and details are those of `diagnostics.instrument_diagnostics`
    (controls as in `estimation.iv_estimates`); robust statistics share one
    second pass. A check that cannot be computed is reported with its reason.
    """
    from invariant_mr.inference.diagnostics import _invalid

    prefix = f"{method}/" if method else ""
    designs = [("pooled", None)] + [(f"env:{lv}", lv) for lv in stats.env_levels]
    built, requests, where = {}, [], {}
    for scope, level in designs:
        try:
            d = partial_out(stats, env=level, env_fixed_effects=env_fixed_effects)
            built[scope] = d
            if cov_type == "robust":
                reqs = ([("j", r) for r in j_requests(d)] if scope == "pooled" and d.k >= 2 else [])
                reqs.append(("f", first_stage_request(d)))
                for kind, r in reqs:
                    where[(kind, scope)] = len(requests)
                    requests.append(r)
        except (InputError, np.linalg.LinAlgError) as exc:
            built[scope] = exc
    if requests and passes is None:
        raise InputError("robust diagnostics from statistics need a second pass over the rows (passes=)")
    meats = accumulate_meats(passes, requests) if requests else ()

    def meat(kind, scope):
        return None if cov_type != "robust" or (kind, scope) not in where else meats[where[(kind, scope)] : where[(kind, scope)] + 1]

    out: list[Diagnostic] = []
    name = prefix + "overidentification_j"
    d = built["pooled"]
    try:
        if isinstance(d, Exception):
            raise d
        if cov_type == "robust" and ("j", "pooled") not in where:
            sargan_hansen_j_from_stats(d, cov_type="unadjusted")  # raises the reason (too few instruments)
        stat, p, df = sargan_hansen_j_from_stats(d, cov_type=cov_type, meats=meat("j", "pooled"))
        out.append(j_diagnostic(name, stat, p, df, alpha=alpha, cov_type=cov_type))
    except (InputError, np.linalg.LinAlgError) as exc:
        out.append(_invalid(name, "pooled", str(exc)))
    name = prefix + "first_stage_f"
    for scope, _ in designs:
        d = built[scope]
        try:
            if isinstance(d, Exception):
                raise d
            f, p, k = first_stage_from_stats(d, cov_type=cov_type, meats=meat("f", scope))
        except (InputError, np.linalg.LinAlgError) as exc:
            out.append(_invalid(name, scope, str(exc)))
            continue
        out.append(first_stage_diagnostic(name, scope, f, p, k, cov_type=cov_type))
    return out


__all__ = ["iv_estimates_from_stats", "strength_diagnostics_from_stats"]
