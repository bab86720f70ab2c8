"""Robust and multivariable summary-statistic MR: MR-RAPS, contamination mixture, MV-IVW, MV-Egger, multivariable 2SLS.

Like `summary_level`, each method takes an `MRData` (per-variant
associations computed from the individual data, per scope) or a
`SumstatsTable` (GWAS summary statistics, `invariant-mr mr`). The
multivariable methods return one `Estimate` per exposure, each with its
`exposure` field set.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from invariant_mr.data import MRData, exogenous_controls
from invariant_mr.errors import InputError
from invariant_mr.estimators.tail_probabilities import norm_sf
from invariant_mr.estimators.summary.mr_conmix import mr_conmix
from invariant_mr.estimators.summary.mr_raps import mr_raps
from invariant_mr.estimators.summary.multivariable_mr import MultivariableMRFit, mv_egger, mv_ivw
from invariant_mr.estimators.summary.sumstats import per_column_regression
from invariant_mr.io.gwas_sumstats import SumstatsTable
from invariant_mr.methods.registry import MethodContext, MethodOutput
from invariant_mr.methods.summary_level import _estimate, pvalue_convention, run_summary_method, sumstats_env_adjusted
from invariant_mr.results import Diagnostic, Estimate


# ----------------------------------------------------------------------------- robust univariable
def mr_raps_method(data: MRData | SumstatsTable, ctx: MethodContext) -> MethodOutput:
    loss = str(ctx.option("raps_loss", "huber"))
    over = bool(ctx.option("raps_overdispersion", True))
    version = str(ctx.option("raps_version", "profile"))

    def one(ss, scope):
        est = _estimate(mr_raps(ss, ctx.alpha, over_dispersion=over, loss=loss, version=version), scope, ss)
        # One residual per variant is too long for a results row.
        return replace(est, extra={k: v for k, v in est.extra.items() if k != "standardised_residuals"}), []

    return run_summary_method(data, ctx, "mr_raps", one)


def mr_lasso_method(data: MRData | SumstatsTable, ctx: MethodContext) -> MethodOutput:
    from invariant_mr.estimators.summary.mr_lasso import mr_lasso

    pvalues = pvalue_convention(ctx)

    def one(ss, scope):
        return _estimate(mr_lasso(ss, ctx.alpha, pvalues=pvalues).fit, scope, ss), []

    return run_summary_method(data, ctx, "mr_lasso", one)


def mr_conmix_method(data: MRData | SumstatsTable, ctx: MethodContext) -> MethodOutput:
    psi = float(ctx.option("conmix_psi", 0.0))
    step = float(ctx.option("conmix_step", 0.01))

    def one(ss, scope):
        res = mr_conmix(ss, ctx.alpha, psi=psi, ci_step=step)
        est = _estimate(res.fit, scope, ss)
        # The package reports no SE: the interval is the likelihood-ratio set.
        return replace(est, se=None), []

    return run_summary_method(data, ctx, "mr_conmix", one)


# ----------------------------------------------------------------------------- multivariable
def _selected(bx: np.ndarray, sx: np.ndarray, threshold) -> np.ndarray:
    """Variants associated (p < threshold) with at least one exposure: the usual MVMR instrument set."""
    if threshold is None:
        return np.ones(bx.shape[0], dtype=bool)
    p = 2 * norm_sf(np.abs(bx / sx))
    keep = (p < float(threshold)).any(axis=1)
    if keep.sum() <= bx.shape[1] + 1:
        raise InputError(
            f"--sumstats-p-threshold {threshold:g}: only {int(keep.sum())} variant(s) pass for {bx.shape[1]} exposures"
        )
    return keep


def _per_variant(Z, X, y, controls):
    """(bx (L, K), sx, by, sy): each variant's association with each exposure and the outcome."""
    cols = [per_column_regression(Z, X[:, k], controls) for k in range(X.shape[1])]
    by, sy, _ = per_column_regression(Z, y, controls)
    return np.column_stack([c[0] for c in cols]), np.column_stack([c[1] for c in cols]), by, sy


def multivariable_scopes(data: MRData | SumstatsTable, ctx: MethodContext):
    """[(scope, bx, sx, by, sy, exposures, n)]: pooled, then per environment (individual data, `ctx.per_env`)."""
    if isinstance(data, SumstatsTable):
        n = 0 if data.n_outcome is None or not np.any(np.isfinite(data.n_outcome)) else int(np.nanmax(data.n_outcome))
        return [("pooled", data.beta_exposure, data.se_exposure, data.beta_outcome, data.se_outcome, data.exposures, n)]
    names = data.exposure_names or ("exposure",)
    X = data.exposures
    controls = [np.ones((data.n, 1))]
    if sumstats_env_adjusted(ctx):
        controls.append(data.env_dummies(drop_first=True))
    if data.covariates is not None:
        controls.append(data.covariates)
    bx, sx, by, sy = _per_variant(data.Z, X, data.outcome, np.hstack(controls))
    keep = _selected(bx, sx, ctx.option("sumstats_p_threshold", None))
    out = [("pooled", bx[keep], sx[keep], by[keep], sy[keep], names, data.n)]
    if ctx.per_env:
        codes = data.env_codes
        for i, level in enumerate(data.env_levels):
            mask = codes == i
            ctrl = [np.ones((int(mask.sum()), 1))] + ([] if data.covariates is None else [data.covariates[mask]])
            try:
                b = _per_variant(data.Z[mask], X[mask], data.outcome[mask], np.hstack(ctrl))
            except InputError:
                continue
            out.append((f"env:{level}", b[0][keep], b[1][keep], b[2][keep], b[3][keep], names, int(mask.sum())))
    return out


def _mv_rows(fit: MultivariableMRFit, scope: str, n: int) -> list[Estimate]:
    rows = []
    for k, r in enumerate(fit.rows()):
        rows.append(
            Estimate(
                method=r.method, scope=scope, estimate=r.estimate, se=r.se, ci_low=r.ci_low, ci_high=r.ci_high,
                n=n, n_instruments=r.n_variants, first_stage_f=float(fit.conditional_f[k]), pvalue=r.pvalue,
                extra={**r.extra, "first_stage_f_kind": "conditional F (Sanderson et al. 2019, strength_mvmr)"},
                exposure=fit.exposures[k],
            )
        )  # fmt: skip
    return rows


def _run_multivariable(data, ctx: MethodContext, method: str, fit_one) -> MethodOutput:
    rows, diags = [], []
    for scope, bx, sx, by, sy, names, n in multivariable_scopes(data, ctx):
        try:
            fit = fit_one(bx, sx, by, sy, names)
        except InputError as exc:
            if scope == "pooled":
                rows.extend(Estimate.unavailable(method, scope, n, bx.shape[0], str(exc), exposure=e) for e in names)
            continue
        rows.extend(_mv_rows(fit, scope, n))
        if scope == "pooled":
            weak = [e for e, f in zip(names, fit.conditional_f) if f < 10]
            diags.append(
                Diagnostic(
                    f"{method}_conditional_f", scope, float(np.min(fit.conditional_f)), None,
                    f"weak conditional instruments for {', '.join(weak)} (conditional F < 10)" if weak
                    else "every exposure has conditional F >= 10",
                    {"exposures": list(names), "conditional_f": fit.conditional_f.tolist()},
                )
            )  # fmt: skip
            # MVMR's Q_A (second-order weights) where the fit has it, else the first-order Q.
            q_a = "q_a" in fit.extra and np.isfinite(fit.extra["q_a_pvalue"])
            q, q_p, q_df = ((fit.extra["q_a"], fit.extra["q_a_pvalue"], fit.extra["q_a_df"]) if q_a
                            else (fit.cochran_q, fit.cochran_q_pvalue, fit.cochran_q_df))  # fmt: skip
            diags.append(
                Diagnostic(
                    f"{method}_heterogeneity", scope, q, q_p,
                    "heterogeneity beyond the modelled direct effects: some variants may be invalid"
                    if q_p < ctx.alpha else "no evidence of heterogeneity",
                    {"df": q_df, "statistic": "Q_A (MVMR pleiotropy_mvmr, gencov = 0)" if q_a else "Cochran's Q",
                     "cochran_q": fit.cochran_q, "cochran_q_df": fit.cochran_q_df, "cochran_q_pvalue": fit.cochran_q_pvalue,
                     "residual_se": fit.residual_se},
                )
            )  # fmt: skip
            if "intercept" in fit.extra:
                p = fit.extra["intercept_pvalue"]
                diags.append(
                    Diagnostic(
                        "mv_egger_intercept", scope, fit.extra["intercept"] / fit.extra["intercept_se"], p,
                        "MV-Egger intercept differs from zero: directional pleiotropy" if p < ctx.alpha
                        else "no evidence of directional pleiotropy (MV-Egger intercept)",
                        {"intercept": fit.extra["intercept"], "intercept_se": fit.extra["intercept_se"],
                         "orientated_to": fit.extra["orientated_to"]},
                    )
                )  # fmt: skip
    return MethodOutput(tuple(rows), tuple(diags))


def mv_ivw_method(data: MRData | SumstatsTable, ctx: MethodContext) -> MethodOutput:
    model = str(ctx.option("mv_model", "lm"))
    pvalues = pvalue_convention(ctx)
    return _run_multivariable(
        data, ctx, "mv_ivw",
        lambda bx, sx, by, sy, names: mv_ivw(bx, sx, by, sy, exposures=names, alpha=ctx.alpha, model=model,
                                             pvalues=pvalues),
    )  # fmt: skip


def mv_egger_method(data: MRData | SumstatsTable, ctx: MethodContext) -> MethodOutput:
    orientate = ctx.option("mv_egger_orientate", None)

    def fit_one(bx, sx, by, sy, names):
        if orientate is not None and orientate not in names:
            raise InputError(f"--mv-egger-orientate {orientate!r} is not an exposure ({', '.join(names)})")
        k = 0 if orientate is None else list(names).index(orientate)
        return mv_egger(bx, sx, by, sy, exposures=names, alpha=ctx.alpha, orientate=k, pvalues=pvalue_convention(ctx))

    return _run_multivariable(data, ctx, "mv_egger", fit_one)


# ----------------------------------------------------------------------------- multivariable 2SLS
def multivariable_tsls_estimates(data: MRData, ctx: MethodContext, method: str) -> MethodOutput:
    """2SLS with every instrument and environment fixed effects, all exposures instrumented jointly."""
    if ctx.cov_type not in ("robust", "unadjusted"):
        raise InputError(f"multivariable 2SLS supports --cov-type robust or unadjusted, not {ctx.cov_type}")
    names = data.exposure_names
    scopes = [("pooled", np.ones(data.n, dtype=bool), exogenous_controls(data, True))]
    if ctx.per_env:
        codes = data.env_codes
        for i, level in enumerate(data.env_levels):
            mask = codes == i
            scopes.append((f"env:{level}", mask, None if data.covariates is None else data.covariates[mask]))
    # Imported here: it loads pandas and scipy.stats, which the summary-statistic methods of this module never need.
    from invariant_mr.estimators.multivariable_iv import fit_multivariable_tsls

    rows = []
    for scope, mask, controls in scopes:
        try:
            fit = fit_multivariable_tsls(
                data.outcome[mask], data.exposures[mask], data.Z[mask], controls,
                exposure_names=names, cov_type=ctx.cov_type,
            )  # fmt: skip
        except (InputError, np.linalg.LinAlgError) as exc:
            if scope == "pooled":
                rows.extend(Estimate.unavailable(method, scope, int(mask.sum()), data.p, str(exc), exposure=e) for e in names)
            continue
        lo, hi = fit.ci(ctx.alpha)
        for k, name in enumerate(names):
            rows.append(
                Estimate(
                    method=method, scope=scope, estimate=float(fit.estimate[k]), se=float(fit.se[k]),
                    ci_low=float(lo[k]), ci_high=float(hi[k]), n=fit.n, n_instruments=fit.n_instruments,
                    first_stage_f=float(fit.conditional_f[k]), pvalue=float(fit.pvalue[k]),
                    extra={"kappa": 1.0, "cov_type": fit.cov_type, "exposures": list(names),
                           "first_stage_f_kind": "Sanderson-Windmeijer conditional F",
                           "covariance": fit.cov.tolist()},
                    exposure=name,
                )
            )  # fmt: skip
    return MethodOutput(tuple(rows))


__all__ = [
    "mr_conmix_method",
    "mr_lasso_method",
    "mr_raps_method",
    "multivariable_scopes",
    "multivariable_tsls_estimates",
    "mv_egger_method",
    "mv_ivw_method",
]
