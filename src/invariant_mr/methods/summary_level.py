"""Summary-statistic MR methods, on individual-level data (`run`) or GWAS summary statistics (`mr`).

A method's `data` is either an `MRData` or a `SumstatsTable`
(`io.gwas_sumstats`, one exposure). From `MRData` the per-variant
associations are computed (`sumstats.summary_statistics`, adjusted for the
environment fixed effects and covariates unless `--sumstats-env-adjust` is
off), with per-environment rows on that environment's samples (adjusted for
covariates only). A `SumstatsTable` is used as given: one "pooled" scope.
`sumstats_by_scope` is the one place that tells the two apart.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from invariant_mr.data import MRData, StreamedMRData
from invariant_mr.errors import InputError
from invariant_mr.estimators.tail_probabilities import norm_sf
from invariant_mr.methods.registry import MethodContext, MethodOutput
from invariant_mr.results import Diagnostic, Estimate
from invariant_mr.estimators.summary.steiger import r2_from_bsen, steiger_test
from invariant_mr.estimators.summary.two_sample import steiger_from_table, summary_statistics_from_table
from invariant_mr.io.gwas_sumstats import SumstatsTable
from invariant_mr.estimators.summary.summary_mr import (
    SummaryMRFit,
    ivw,
    ivw_fixed,
    leave_one_out,
    mr_egger,
    mr_presso,
    penalised_weighted_median,
    simple_median,
    simple_mode,
    simple_mode_nome,
    weighted_median,
    weighted_mode,
    weighted_mode_nome,
)
from invariant_mr.estimators.summary.summary_extra import (
    egger_bootstrap,
    ivw_mre,
    mr_grip,
    sign_concordance,
    two_sample_ml,
    unweighted_regression,
)
from invariant_mr.estimators.summary.sumstats import SummaryStatistics, per_column_regression, summary_statistics

# ----------------------------------------------------------------------------- helpers
def _env_sumstats(data: MRData, mask: np.ndarray) -> SummaryStatistics:
    n = int(mask.sum())
    controls = [np.ones((n, 1))]
    if data.covariates is not None:
        controls.append(data.covariates[mask])
    C = np.hstack(controls)
    bx, sx, _ = per_column_regression(data.Z[mask], data.exposure[mask], C)
    by, sy, _ = per_column_regression(data.Z[mask], data.outcome[mask], C)
    return SummaryStatistics(data.instrument_names, bx, sx, by, sy, n, ("intercept", *(data.covariate_names or ())))


def sumstats_env_adjusted(ctx: MethodContext) -> bool:
    """The `--sumstats-env-adjust` setting: adjust per-variant associations for environment effects."""
    return bool(ctx.option("sumstats_env_adjust", True))


class TooFewVariantsError(InputError):
    """Fewer variants than a summary-statistic method needs pass the p-value selection."""


def selected_variants(pooled: SummaryStatistics, threshold: float | None) -> np.ndarray:
    """Mask of the variants whose exposure association has a two-sided p-value below `threshold`.

    Selection uses the pooled associations, so every scope analyses the same
    variants. Selecting on the exposure in the same sample (one-sample MR)
    favours variants whose association was overestimated (winner's curse),
    which biases towards the confounded estimate; the usual price of
    dropping the weak variants that make the mode and median unstable.
    """
    if threshold is None:
        return np.ones(pooled.n_variants, dtype=bool)
    if not 0 < threshold <= 1:
        raise InputError(f"--sumstats-p-threshold must be in (0, 1], got {threshold}")
    p = 2 * norm_sf(np.abs(pooled.beta_exposure / pooled.se_exposure))
    keep = p < threshold
    if keep.sum() < 3:
        raise TooFewVariantsError(
            f"--sumstats-p-threshold {threshold:g}: only {int(keep.sum())} variant(s) pass "
            f"(smallest exposure p-value {p.min():.3g}); the summary-statistic methods need at least 3"
        )
    return keep


def sumstats_by_scope(data: MRData | SumstatsTable, ctx: MethodContext) -> list[tuple[str, SummaryStatistics]]:
    """("pooled", stats) then ("env:<label>", stats) per environment when `ctx.per_env`.

    A `SumstatsTable` (two-sample MR) has one scope, "pooled", and is used as
    given: its variants were selected before (`mr --select-p`, clumping).
    """
    if isinstance(data, SumstatsTable):
        if data.n_exposures != 1:
            raise InputError(
                f"univariable summary-statistic methods take one exposure; the table has {', '.join(data.exposures)}"
            )
        return [("pooled", summary_statistics_from_table(data))]
    if isinstance(data, StreamedMRData):  # from sufficient statistics: the genotypes stay on disk
        return _streamed_sumstats_by_scope(data, ctx)
    if data.n_exposures > 1:
        raise InputError("univariable summary-statistic methods take one exposure; use mv_ivw or mv_egger")
    pooled = summary_statistics(data, env_fixed_effects=sumstats_env_adjusted(ctx))
    keep = selected_variants(pooled, ctx.option("sumstats_p_threshold", None))
    out = [("pooled", pooled.subset(keep))]
    if ctx.per_env:
        codes = data.env_codes
        for i, level in enumerate(data.env_levels):
            try:
                out.append((f"env:{level}", _env_sumstats(data, codes == i).subset(keep)))
            except InputError:
                continue  # e.g. a variant constant within this environment
    return out


def _streamed_sumstats_by_scope(data: StreamedMRData, ctx: MethodContext) -> list[tuple[str, SummaryStatistics]]:
    """The per-variant associations `summary_level.sumstats_by_scope` computes, from the statistics."""
    from invariant_mr.estimators.sumstats_from_stats import summary_statistics_from_stats
    from invariant_mr.methods.streamed_passes import first_pass

    stats = first_pass(data)
    names = data.instrument_names
    pooled = summary_statistics_from_stats(stats, env_fixed_effects=sumstats_env_adjusted(ctx), variant_names=names)
    keep = selected_variants(pooled, ctx.option("sumstats_p_threshold", None))
    out = [("pooled", pooled.subset(keep))]
    if ctx.per_env:
        for level in data.env_levels:
            try:
                ss = summary_statistics_from_stats(stats.environment(level), env_fixed_effects=False,
                                                   variant_names=names)
            except InputError:
                continue
            out.append((f"env:{level}", ss.subset(keep)))
    return out


def _mean_f(ss: SummaryStatistics) -> float:
    """Mean per-variant F statistic (bx/sx)^2, the strength summary MR papers report."""
    return float(np.mean((ss.beta_exposure / ss.se_exposure) ** 2))


def exposure_label(data) -> str | None:
    """The exposure an `Estimate` row is about: the table's exposure name (two-sample runs), else None."""
    return data.exposures[0] if isinstance(data, SumstatsTable) else None


def _estimate(
    fit: SummaryMRFit, scope: str, ss: SummaryStatistics, method: str | None = None, exposure: str | None = None
) -> Estimate:
    return Estimate(
        method=method or fit.method,
        scope=scope,
        estimate=fit.estimate,
        se=fit.se,
        ci_low=fit.ci_low,
        ci_high=fit.ci_high,
        n=ss.n,
        n_instruments=fit.n_variants,
        first_stage_f=_mean_f(ss),
        pvalue=fit.pvalue,
        extra={**fit.extra, "first_stage_f_kind": "mean per-variant F", "adjusted_for": list(ss.adjusted_for)},
        exposure=exposure,
    )


def run_summary_method(
    data: MRData | SumstatsTable, ctx: MethodContext, method: str, estimator: Callable[[SummaryStatistics, str], tuple]
) -> MethodOutput:
    """Apply `estimator(stats, scope) -> (Estimate, diagnostics)` to every scope; a failed scope gives an unavailable row."""
    rows, diags = [], []
    exposure = exposure_label(data)
    try:
        scopes = sumstats_by_scope(data, ctx)
    except TooFewVariantsError as exc:  # this method has no estimate; the run's other methods stand
        return MethodOutput((Estimate.unavailable(method, "pooled", data.n, 0, str(exc)),))
    for scope, ss in scopes:
        try:
            est, dgs = estimator(ss, scope)
        except InputError as exc:
            if scope != "pooled":
                continue
            rows.append(Estimate.unavailable(method, scope, ss.n, ss.n_variants, str(exc), exposure=exposure))
            continue
        rows.append(replace(est, exposure=exposure) if exposure is not None else est)
        diags.extend(dgs)
    if getattr(data, "clusters", None) is not None:  # per-variant associations use HC0 SEs; say so rather than imply otherwise
        note = ("the per-variant association SEs are HC0 and ignore the clusters (--cluster), so this SE "
                "is too small when relatives share errors")
        rows = [replace(r, extra={**r.extra, "se_ignores_clustering": note}) for r in rows]
    return MethodOutput(tuple(rows), tuple(diags))



def pvalue_convention(ctx: MethodContext) -> str:
    """The `--summary-pvalues` setting (see `estimators.summary_mr.PVALUE_CONVENTIONS`)."""
    return str(ctx.option("summary_pvalues", "twosamplemr"))


def _p_flag(p: float, alpha: float, bad: str, good: str) -> str:
    return bad if p < alpha else good


# ----------------------------------------------------------------------------- summary MR
def ivw_method(data: MRData, ctx: MethodContext) -> MethodOutput:
    pvalues = pvalue_convention(ctx)

    def one(ss: SummaryStatistics, scope: str):
        fit = ivw(ss, ctx.alpha, pvalues=pvalues)
        diags = []
        if ss.n_variants >= 2:
            q, df, p = fit.extra["cochran_q"], fit.extra["cochran_q_df"], fit.extra["cochran_q_pvalue"]
            diags.append(
                Diagnostic(
                    "cochran_q",
                    scope,
                    q,
                    p,
                    _p_flag(
                        p,
                        ctx.alpha,
                        "heterogeneous ratio estimates: some variants may be invalid (pleiotropy)",
                        "no evidence of heterogeneity between variants",
                    ),
                    {"df": df, "method": "ivw", "i_squared": fit.extra["i_squared"],
                     "residual_se": fit.extra["residual_se"]},
                )
            )
        if scope == "pooled" and ss.n_variants >= 3:
            loo = leave_one_out(ss, ctx.alpha)
            shift = np.abs(loo["estimate"] - fit.estimate) / fit.se
            worst = int(np.argmax(shift))
            diags.append(
                Diagnostic(
                    "leave_one_out",
                    scope,
                    float(shift[worst]),
                    None,
                    (
                        f"dropping {ss.variant[worst]} moves the IVW estimate by {shift[worst]:.2f} SE: influential variant"
                        if shift[worst] > 1
                        else "no single variant moves the IVW estimate by more than 1 SE"
                    ),
                    {
                        "statistic": "max |theta_(-i) - theta| / SE(theta)",
                        "variant": list(ss.variant),
                        "estimate": loo["estimate"].tolist(),
                        "se": loo["se"].tolist(),
                    },
                )
            )
        if scope == "pooled":
            diags.append(steiger_diagnostic(data, ss, ctx.alpha))
        return _estimate(fit, scope, ss), diags

    return run_summary_method(data, ctx, "ivw", one)


def steiger_diagnostic(data: MRData | SumstatsTable, ss: SummaryStatistics, alpha: float) -> Diagnostic:
    """Steiger directionality: do the variants explain more of the exposure than of the outcome?

    Two-sample: r^2 from each GWAS's beta, SE and n (TwoSampleMR `mr_steiger`),
    which needs `n_exposure` and `n_outcome` columns; without them the
    diagnostic says so. Individual-level data: both traits measured on the
    same n samples.
    """
    try:
        if isinstance(data, SumstatsTable):
            res = steiger_from_table(data)
        else:
            n = np.full(ss.n_variants, float(ss.n))
            res = steiger_test(
                r2_from_bsen(ss.beta_exposure, ss.se_exposure, n), r2_from_bsen(ss.beta_outcome, ss.se_outcome, n), n, n
            )
    except InputError as exc:
        return Diagnostic("steiger_direction", "pooled", None, None, f"not computed: {exc}", {})
    if not res.correct_direction:
        flag = "the variants explain more of the outcome than of the exposure: reverse causation or pleiotropy"
    elif res.pvalue < alpha:
        flag = "direction exposure -> outcome supported (Steiger)"
    else:
        flag = "direction exposure -> outcome not clearly supported (Steiger p above alpha)"
    return Diagnostic("steiger_direction", "pooled", res.z, res.pvalue, flag, res.to_dict())


def ivw_fixed_method(data: MRData, ctx: MethodContext) -> MethodOutput:
    pvalues = pvalue_convention(ctx)
    return run_summary_method(data, ctx, "ivw_fixed", lambda ss, scope: (_estimate(ivw_fixed(ss, ctx.alpha, pvalues=pvalues), scope, ss), []))


def mr_egger_method(data: MRData, ctx: MethodContext) -> MethodOutput:
    pvalues = pvalue_convention(ctx)

    def one(ss: SummaryStatistics, scope: str):
        fit = mr_egger(ss, ctx.alpha, pvalues=pvalues)
        p = fit.extra["intercept_pvalue"]
        i2 = fit.extra["i_squared_gx"]
        diags = [
            Diagnostic(
                "egger_intercept",
                scope,
                fit.extra["intercept"] / fit.extra["intercept_se"],
                p,
                _p_flag(
                    p,
                    ctx.alpha,
                    "Egger intercept differs from zero: directional pleiotropy",
                    "no evidence of directional pleiotropy (Egger intercept)",
                ),
                {"intercept": fit.extra["intercept"], "intercept_se": fit.extra["intercept_se"]},
            ),
            Diagnostic(
                "i_squared_gx",
                scope,
                i2,
                None,
                "I^2_GX below 0.9: MR-Egger slope diluted towards zero (NOME violated)"
                if i2 < 0.9
                else "I^2_GX >= 0.9: MR-Egger dilution small",
                {},
            ),
        ]
        return _estimate(fit, scope, ss), diags

    return run_summary_method(data, ctx, "mr_egger", one)


def weighted_median_method(data: MRData, ctx: MethodContext) -> MethodOutput:
    n_boot = int(ctx.option("n_bootstrap", 1000))
    weights = str(ctx.option("median_weights", "second_order"))
    pvalues = pvalue_convention(ctx)

    def one(ss: SummaryStatistics, scope: str):
        fit = weighted_median(ss, ctx.alpha, n_bootstrap=n_boot, rng=ctx.rng(f"weighted_median/{scope}"),
                              weights=weights, pvalues=pvalues)  # fmt: skip
        return _estimate(fit, scope, ss), []

    return run_summary_method(data, ctx, "weighted_median", one)


def simple_median_method(data: MRData, ctx: MethodContext) -> MethodOutput:
    n_boot = int(ctx.option("n_bootstrap", 1000))
    pvalues = pvalue_convention(ctx)

    def one(ss: SummaryStatistics, scope: str):
        fit = simple_median(ss, ctx.alpha, n_bootstrap=n_boot, rng=ctx.rng(f"simple_median/{scope}"), pvalues=pvalues)
        return _estimate(fit, scope, ss), []

    return run_summary_method(data, ctx, "simple_median", one)


def penalised_weighted_median_method(data: MRData, ctx: MethodContext) -> MethodOutput:
    n_boot = int(ctx.option("n_bootstrap", 1000))
    weights = str(ctx.option("median_weights", "second_order"))
    penk = float(ctx.option("penalty_k", 20.0))
    pvalues = pvalue_convention(ctx)

    def one(ss: SummaryStatistics, scope: str):
        fit = penalised_weighted_median(
            ss, ctx.alpha, n_bootstrap=n_boot, rng=ctx.rng(f"penalised_weighted_median/{scope}"),
            penk=penk, weights=weights, pvalues=pvalues,
        )  # fmt: skip
        return _estimate(fit, scope, ss), []

    return run_summary_method(data, ctx, "penalised_weighted_median", one)


def _mode_method(data, ctx: MethodContext, name: str, estimator) -> MethodOutput:
    """The four mode estimators (simple/weighted, with or without NOME SEs) share their options."""
    n_boot = int(ctx.option("n_bootstrap", 1000))
    phi = float(ctx.option("mode_phi", 1.0))
    pvalues = pvalue_convention(ctx)

    def one(ss: SummaryStatistics, scope: str):
        fit = estimator(ss, ctx.alpha, phi=phi, n_bootstrap=n_boot, rng=ctx.rng(f"{name}/{scope}"), pvalues=pvalues,
                        density=str(ctx.option("mode_density", "r_density")))
        return _estimate(fit, scope, ss), []

    return run_summary_method(data, ctx, name, one)


def weighted_mode_method(data: MRData, ctx: MethodContext) -> MethodOutput:
    return _mode_method(data, ctx, "weighted_mode", weighted_mode)


def simple_mode_method(data: MRData, ctx: MethodContext) -> MethodOutput:
    return _mode_method(data, ctx, "simple_mode", simple_mode)


def simple_mode_nome_method(data: MRData, ctx: MethodContext) -> MethodOutput:
    return _mode_method(data, ctx, "simple_mode_nome", simple_mode_nome)


def weighted_mode_nome_method(data: MRData, ctx: MethodContext) -> MethodOutput:
    return _mode_method(data, ctx, "weighted_mode_nome", weighted_mode_nome)


def _no_se_estimate(fit: SummaryMRFit, scope: str, ss: SummaryStatistics) -> Estimate:
    """A row for a test without an SE or interval (the sign concordance test): None, not NaN."""
    est = _estimate(fit, scope, ss)
    return replace(est, se=None, ci_low=None, ci_high=None)


def mr_sign_method(data: MRData, ctx: MethodContext) -> MethodOutput:
    return run_summary_method(data, ctx, "mr_sign",
                              lambda ss, scope: (_no_se_estimate(sign_concordance(ss, ctx.alpha), scope, ss), []))


def mr_uwr_method(data: MRData, ctx: MethodContext) -> MethodOutput:
    return run_summary_method(data, ctx, "mr_uwr",
                              lambda ss, scope: (_estimate(unweighted_regression(ss, ctx.alpha), scope, ss), []))


def ivw_mre_method(data: MRData, ctx: MethodContext) -> MethodOutput:
    return run_summary_method(data, ctx, "ivw_mre", lambda ss, scope: (_estimate(ivw_mre(ss, ctx.alpha), scope, ss), []))


def mr_two_sample_ml_method(data: MRData, ctx: MethodContext) -> MethodOutput:
    return run_summary_method(data, ctx, "mr_two_sample_ml",
                              lambda ss, scope: (_estimate(two_sample_ml(ss, ctx.alpha), scope, ss), []))


def mr_grip_method(data: MRData, ctx: MethodContext) -> MethodOutput:
    return run_summary_method(data, ctx, "mr_grip", lambda ss, scope: (_estimate(mr_grip(ss, ctx.alpha), scope, ss), []))


def mr_egger_bootstrap_method(data: MRData, ctx: MethodContext) -> MethodOutput:
    n_boot = int(ctx.option("n_bootstrap", 1000))

    def one(ss: SummaryStatistics, scope: str):
        fit = egger_bootstrap(ss, ctx.alpha, n_bootstrap=n_boot, rng=ctx.rng(f"mr_egger_bootstrap/{scope}"))
        return _estimate(fit, scope, ss), []

    return run_summary_method(data, ctx, "mr_egger_bootstrap", one)


def mr_presso_method(data: MRData, ctx: MethodContext) -> MethodOutput:
    draws = int(ctx.option("presso_n_distribution", 1000))
    level = float(ctx.option("presso_significance", 0.05))

    def one(ss: SummaryStatistics, scope: str):
        res = mr_presso(ss, ctx.alpha, n_distribution=draws, significance=level, rng=ctx.rng(f"mr_presso/{scope}"))
        fit = res.corrected if res.corrected is not None else res.raw
        est = _estimate(fit, scope, ss, method="mr_presso")
        est = replace(
            est,
            extra={
                **est.extra,
                "global_pvalue": res.global_pvalue,
                "rss_observed": res.rss_observed,
                "outliers": list(res.outliers),
                "outlier_corrected": res.corrected is not None,
                "n_distribution": draws,
                "distortion_coefficient_percent": res.distortion_coefficient,
                "distortion_pvalue": res.distortion_pvalue,
            },
        )
        flag = (
            f"pleiotropy detected; {len(res.outliers)} outlier variant(s) removed"
            if res.global_pvalue < level and res.corrected is not None
            else "pleiotropy detected but no outlier could be removed"
            if res.global_pvalue < level
            else "no evidence of horizontal pleiotropy"
        )
        diag = Diagnostic(
            "mr_presso_global",
            scope,
            res.rss_observed,
            res.global_pvalue,
            flag,
            {
                "n_distribution": draws,
                "outliers": list(res.outliers),
                "outlier_pvalues": None if res.outlier_pvalues is None else res.outlier_pvalues.tolist(),
            },
        )
        diags = [diag]
        if res.distortion_pvalue is not None:
            diags.append(
                Diagnostic(
                    "mr_presso_distortion",
                    scope,
                    res.distortion_coefficient,
                    res.distortion_pvalue,
                    f"removing the outliers changes the estimate by {res.distortion_coefficient:.1f}% "
                    + ("(significant distortion)" if res.distortion_pvalue < level else "(no significant distortion)"),
                    {"statistic": "distortion coefficient, % of the corrected estimate", "outliers": list(res.outliers)},
                )
            )
        return est, diags

    return run_summary_method(data, ctx, "mr_presso", one)


def ivw_radial_method(data: MRData, ctx: MethodContext) -> MethodOutput:
    """Radial IVW (RadialMR `ivw_radial`): four rows per scope, "ivw_radial", "_iterative", "_exact_fe", "_exact_re"."""
    from invariant_mr.estimators.summary.radial_mr import ivw_radial

    n_boot = int(ctx.option("n_bootstrap", 1000))
    weights = str(ctx.option("radial_weights", "modified_second_order"))
    exposure = exposure_label(data)
    rows, diags = [], []
    try:
        scopes = sumstats_by_scope(data, ctx)
    except TooFewVariantsError as exc:
        return MethodOutput((Estimate.unavailable("ivw_radial", "pooled", data.n, 0, str(exc)),))
    for scope, ss in scopes:
        try:
            res = ivw_radial(ss, ctx.alpha, weights=weights, n_bootstrap=n_boot, rng=ctx.rng(f"ivw_radial/{scope}"))
        except InputError as exc:
            if scope == "pooled":
                rows.append(Estimate.unavailable("ivw_radial", scope, ss.n, ss.n_variants, str(exc), exposure=exposure))
            continue
        rows.extend(_estimate(f, scope, ss, exposure=exposure) for f in res.fits())
        diags.append(
            Diagnostic(
                "radial_q", scope, res.q, res.q_pvalue,
                f"{len(res.outliers)} variant(s) with a significant Q contribution (radial outliers)" if res.outliers
                else "no radial outlier", {"df": res.q_df, "outliers": list(res.outliers)},
            )
        )  # fmt: skip
    return MethodOutput(tuple(rows), tuple(diags))


__all__ = [
    "exposure_label",
    "ivw_mre_method",
    "mr_egger_bootstrap_method",
    "mr_grip_method",
    "mr_sign_method",
    "mr_two_sample_ml_method",
    "mr_uwr_method",
    "simple_mode_nome_method",
    "weighted_mode_nome_method",
    "ivw_radial_method",
    "ivw_fixed_method",
    "ivw_method",
    "mr_egger_method",
    "mr_presso_method",
    "penalised_weighted_median_method",
    "pvalue_convention",
    "run_summary_method",
    "simple_median_method",
    "simple_mode_method",
    "steiger_diagnostic",
    "sumstats_by_scope",
    "weighted_median_method",
    "weighted_mode_method",
]
