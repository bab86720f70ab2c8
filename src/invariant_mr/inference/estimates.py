"""From instruments to `Estimate` rows: pooled (with environment fixed effects) and per environment."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

import numpy as np

from invariant_mr.data import MRData, exogenous_controls
from invariant_mr.errors import InputError
from invariant_mr.estimators.iv import KClassFit, fit_kclass
from invariant_mr.inference.settings import InferenceSettings
from invariant_mr.results import Estimate
from invariant_mr.inference.weak_iv import with_anderson_rubin


#: Fewest samples per first-stage parameter (instruments, controls, intercept) for an IV row to be reported.
#: With fewer, the first stage nearly interpolates the exposure: 2SLS collapses onto OLS and the first-stage
#: F explodes (30 samples and 100 variants gave F = 7e30), so the row is withheld with this reason instead.
MIN_SAMPLES_PER_INSTRUMENT = 3


def too_few_samples(n: int, n_instruments: int, n_controls: int) -> str | None:
    """Why an IV fit on `n` samples with these instruments and controls means nothing, or None when it can."""
    parameters = n_instruments + n_controls + 1
    if n >= MIN_SAMPLES_PER_INSTRUMENT * parameters:
        return None
    return (f"withheld: {n} samples for {n_instruments} instrument(s) and {n_controls + 1} control(s), fewer than "
            f"{MIN_SAMPLES_PER_INSTRUMENT} per parameter; the first stage would fit the exposure (almost) exactly, "
            "so the IV estimate would only repeat OLS")


def estimate_from_fit(
    fit: KClassFit, method: str, scope: str, alpha: float, extra: Mapping[str, Any] | None = None
) -> Estimate:
    lo, hi = fit.ci(alpha)
    return Estimate(
        method=method,
        scope=scope,
        estimate=fit.estimate,
        se=fit.se,
        ci_low=lo,
        ci_high=hi,
        n=fit.n,
        n_instruments=fit.n_instruments,
        first_stage_f=fit.first_stage_f,
        pvalue=fit.pvalue,
        # The estimator travels with the row: the verdict's weak-instrument threshold depends on it.
        extra={"kappa": fit.kappa, "cov_type": fit.cov_type,
               **({"estimator": fit.estimator} if getattr(fit, "estimator", None) else {}), **(extra or {})},
    )


def iv_estimates(
    data: MRData,
    instruments: np.ndarray | None,
    settings: InferenceSettings,
    *,
    method: str,
    kappa="tsls",
    env_fixed_effects: bool = True,
    extra_controls: np.ndarray | None = None,
    extra: Mapping[str, Any] | None = None,
    clusters: np.ndarray | None = None,
) -> list[Estimate]:
    """The pooled estimate, then one per environment when `settings.per_env`.

    Per-environment fits use the intercept and covariates only (the fixed
    effects are constant within an environment). An environment where the fit
    cannot be computed (e.g. instruments constant there) is skipped rather
    than failing the whole analysis; the reason is kept in `extra`.

    Every IV row (not OLS) carries its Anderson-Rubin confidence set, computed
    with the same instruments, controls, level and covariance type: the hull
    in `ar_ci_low`/`ar_ci_high` (None on an unbounded side), the exact set and
    its kind ("empty", "two_rays", ...) in `extra`. Doing it here gives every
    2SLS-type method, learned instruments included, the same weak-instrument-
    robust inference without per-method code. With more instruments than
    `settings.ar_max_instruments` the robust set is skipped (its cost
    grows as k^3 per grid point) and `extra` says so.

    `clusters` (one label per sample, e.g. family ID) goes with
    `settings.cov_type == "cluster"`: Wald SEs, first-stage F and AR sets are then
    cluster-robust, per environment on that environment's clusters.
    """

    clusters = None if clusters is None else np.asarray(clusters)
    def row(fit: KClassFit, scope: str, y, d, Z, ctrl, cl) -> Estimate:
        est = estimate_from_fit(fit, method, scope, settings.alpha, extra)
        if fit.n_clusters is not None:
            est = replace(est, extra={**est.extra, "n_clusters": fit.n_clusters})
        if Z is None or kappa == "ols":
            return est
        return with_anderson_rubin(
            est, y, d, Z, ctrl, alpha=settings.alpha, cov_type=settings.cov_type, max_instruments=settings.ar_max_instruments, clusters=cl
        )

    def withheld(n, Z, ctrl, scope) -> Estimate | None:
        if Z is None or kappa == "ols":
            return None
        k = int(np.asarray(Z).reshape(n, -1).shape[1])
        c = 0 if ctrl is None else int(np.asarray(ctrl).reshape(n, -1).shape[1])
        why = too_few_samples(n, k, c)
        return None if why is None else Estimate.unavailable(method, scope, n, k, why)

    controls = exogenous_controls(data, env_fixed_effects, extra_controls)
    pooled = withheld(data.n, instruments, controls, "pooled")
    if pooled is not None:
        rows = [pooled]
    else:
        fit = fit_kclass(
            data.outcome, data.exposure, instruments, controls, kappa=kappa, cov_type=settings.cov_type,
            clusters=clusters,
        )
        rows = [row(fit, "pooled", data.outcome, data.exposure, instruments, controls, clusters)]
    if not settings.per_env:
        return rows
    codes = data.env_codes
    for i, level in enumerate(data.env_levels):
        mask = codes == i
        ctrl = None if data.covariates is None else data.covariates[mask]
        if extra_controls is not None:
            ec = np.asarray(extra_controls, dtype=float).reshape(data.n, -1)[mask]
            ctrl = ec if ctrl is None else np.hstack([ctrl, ec])
        Zi = None if instruments is None else np.asarray(instruments).reshape(data.n, -1)[mask]
        cl = None if clusters is None else clusters[mask]
        skipped = withheld(int(mask.sum()), Zi, ctrl, f"env:{level}")
        if skipped is not None:
            rows.append(skipped)
            continue
        try:
            fit_e = fit_kclass(
                data.outcome[mask], data.exposure[mask], Zi, ctrl, kappa=kappa, cov_type=settings.cov_type, clusters=cl
            )
        except (InputError, np.linalg.LinAlgError):
            continue
        rows.append(row(fit_e, f"env:{level}", data.outcome[mask], data.exposure[mask], Zi, ctrl, cl))
    return rows
