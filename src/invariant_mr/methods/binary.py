"""Binary (0/1) outcomes: IV log odds ratios by two-stage residual inclusion (2SRI) and predictor substitution (2SPS).

Each method pairs one estimator (`estimators.binary_outcome.fit_binary_iv`)
with the instruments of one family:

* `tsri_all_env`, `tsps_all_env`: every instrument, environment fixed effects
  (the binary analogue of `tsls_all_env`);
* `tsri_invariant_linear`, `tsps_invariant_linear`: the closed-form invariant
  directions (the learner of `invariant_linear`, same options and seed), with
  environment fixed effects.

Estimates are log odds ratios per unit of exposure; `extra["estimand"]` says
which odds ratio (conditional for 2SRI, an attenuated one for 2SPS: see
docs/binary_outcomes.md). SEs are the stacked-estimating-equation sandwich or
a seeded bootstrap (`--binary-se`), clustered with cluster labels.
"""

from __future__ import annotations

import numpy as np

from invariant_mr.data import MRData, exogenous_controls
from invariant_mr.errors import InputError
from invariant_mr.estimators.binary_outcome import fit_binary_iv
from invariant_mr.instruments.linear import NoSignalError
from invariant_mr.methods.invariant_linear import learner_from_context
from invariant_mr.methods.registry import MethodContext, MethodOutput
from invariant_mr.results import Estimate

#: What each estimator's log odds ratio is (docs/binary_outcomes.md has the derivation and the simulation).
ESTIMAND = {
    "2sri": "log odds ratio per unit of exposure, conditional on the confounding captured by the first-stage "
            "residual (consistent for the conditional log OR under the control-function model; "
            "docs/binary_outcomes.md)",
    "2sps": "coefficient of the predicted exposure in a logistic model: attenuated towards zero relative to the "
            "conditional log OR (non-collapsibility) and not the population OR; a valid test of no effect "
            "(docs/binary_outcomes.md)",
}


def check_binary_outcome(outcome: np.ndarray) -> None:
    """The outcome must be coded 0/1 (cases 1), with both values present."""
    values = np.unique(np.asarray(outcome, dtype=float))
    if not np.all(np.isin(values, (0.0, 1.0))):
        shown = ", ".join(f"{v:g}" for v in values[:5])
        raise InputError(
            f"--outcome-type binary: the outcome must be coded 0/1 (controls 0, cases 1), found values {shown}"
            + (" ..." if values.size > 5 else "")
        )
    if values.size < 2:
        raise InputError("--outcome-type binary: the outcome has only one value: no odds ratio to estimate")


def _row(data: MRData, ctx: MethodContext, name: str, kind: str, scope: str, mask, instruments, controls,
         extra) -> Estimate | None:
    se = str(ctx.option("binary_se", "sandwich"))
    draws = int(ctx.option("binary_bootstrap", 500))
    seed = int(ctx.rng(f"{name}/{scope}/bootstrap").integers(2**31 - 1))
    try:
        fit = fit_binary_iv(
            data.outcome[mask], data.exposure[mask], instruments[mask], controls, method=kind, se=se,
            n_bootstrap=draws, seed=seed, clusters=None if data.clusters is None else data.clusters[mask],
        )
    except (InputError, np.linalg.LinAlgError) as exc:
        if scope != "pooled":
            return None
        return Estimate.unavailable(name, scope, int(mask.sum()), instruments.shape[1], str(exc))
    lo, hi = fit.ci(ctx.alpha)
    info = fit.to_dict(ctx.alpha)
    return Estimate(
        method=name, scope=scope, estimate=fit.estimate, se=fit.se, ci_low=lo, ci_high=hi, n=fit.n,
        n_instruments=fit.n_instruments, first_stage_f=fit.first_stage_f, pvalue=fit.pvalue,
        extra={
            "estimator": kind,
            "scale": "log odds ratio",
            "estimand": ESTIMAND[kind],
            "odds_ratio": info["odds_ratio"],
            "or_ci": [info["or_ci_low"], info["or_ci_high"]],
            "se_type": fit.se_type,
            "n_events": fit.n_events,
            **({"n_clusters": fit.n_clusters} if fit.n_clusters else {}),
            **({"n_bootstrap": fit.n_bootstrap, "bootstrap_failures": fit.bootstrap_failures}
               if fit.n_bootstrap else {}),
            **({"residual_coefficient": info["residual_coefficient"], "residual_se": info["residual_se"]}
               if "residual_coefficient" in info else {}),
            **extra,
        },
    )  # fmt: skip


def _rows(data: MRData, ctx: MethodContext, name: str, kind: str, instruments: np.ndarray, extra=None) -> list:
    check_binary_outcome(data.outcome)
    extra = dict(extra or {})
    instruments = np.asarray(instruments, dtype=float).reshape(data.n, -1)
    rows = [_row(data, ctx, name, kind, "pooled", np.ones(data.n, dtype=bool), instruments,
                 exogenous_controls(data, True), extra)]  # fmt: skip
    if ctx.per_env:
        codes = data.env_codes
        for i, level in enumerate(data.env_levels):
            mask = codes == i
            ctrl = None if data.covariates is None else data.covariates[mask]
            rows.append(_row(data, ctx, name, kind, f"env:{level}", mask, instruments, ctrl, extra))
    return [r for r in rows if r is not None]


def _all_env(kind: str):
    name = f"t{kind[1:]}_all_env"

    def method(data: MRData, ctx: MethodContext) -> MethodOutput:
        return MethodOutput(tuple(_rows(data, ctx, name, kind, np.asarray(data.Z))))

    method.__name__ = name
    return method


def _invariant_linear(kind: str):
    name = f"t{kind[1:]}_invariant_linear"

    def method(data: MRData, ctx: MethodContext) -> MethodOutput:
        check_binary_outcome(data.outcome)
        try:
            learner = learner_from_context(ctx, "invariant_linear").fit(data.Z, data.env)
        except NoSignalError as exc:
            return MethodOutput((Estimate.unavailable(name, "pooled", data.n, 0, str(exc)),))
        if learner.n_components_ == 0:
            return MethodOutput((Estimate.unavailable(name, "pooled", data.n, 0, "no invariant direction found"),))
        hw = learner.transform(data.Z)
        extra = {
            "signal_rank": learner.signal_rank_,
            "se_ignores_direction_estimation": True,
        }
        return MethodOutput(tuple(_rows(data, ctx, name, kind, hw, extra)), artifacts={"instruments": hw})

    method.__name__ = name
    return method


tsri_all_env = _all_env("2sri")
tsps_all_env = _all_env("2sps")
tsri_invariant_linear = _invariant_linear("2sri")
tsps_invariant_linear = _invariant_linear("2sps")

__all__ = ["ESTIMAND", "check_binary_outcome", "tsps_all_env", "tsps_invariant_linear", "tsri_all_env",
           "tsri_invariant_linear"]
