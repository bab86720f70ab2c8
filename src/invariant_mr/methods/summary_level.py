"""`run` methods for the MR baselines: summary-statistic MR, 2SLS with genotype PCs, and TSHT.

Summary-statistic methods compute per-variant associations from the
individual-level data (`sumstats.summary_statistics`, adjusted for the
environment fixed effects and covariates unless `--sumstats-env-adjust` is
off), then apply the estimator. Per-environment rows use that environment's
samples (adjusted for covariates only). 2SLS-type rows carry
Anderson-Rubin confidence sets (attached by `estimation.iv_estimates`; TSHT
on its selected instruments via `weak_iv.with_anderson_rubin`).
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Callable

import numpy as np
import scipy.linalg
from scipy import stats

from .data import MRData
from .errors import InputError
from .estimation import estimate_from_fit, exogenous_controls, iv_estimates
from .registry import MethodContext, MethodOption, MethodOutput, register_method
from .results import Diagnostic, Estimate
from .robust_iv import TwoStageHardThresholding
from .summary_mr import (
    SummaryMRFit,
    ivw,
    leave_one_out,
    mr_egger,
    mr_presso,
    weighted_median,
    weighted_mode,
)
from .sumstats import SummaryStatistics, per_column_regression, summary_statistics
from .weak_iv import AR_MAX_INSTRUMENTS, ar_max_instruments, with_anderson_rubin

N_BOOTSTRAP = MethodOption("n_bootstrap", int, 1000, "bootstrap draws for the weighted median and weighted mode SEs")
ENV_ADJUST = MethodOption(
    "sumstats_env_adjust", bool, True, "adjust per-variant associations for environment fixed effects"
)
MODE_PHI = MethodOption("mode_phi", float, 1.0, "bandwidth multiplier of the weighted mode estimator")
PRESSO_DRAWS = MethodOption(
    "presso_n_distribution", int, 1000, "simulated data sets for the MR-PRESSO null distribution"
)
PRESSO_SIGNIFICANCE = MethodOption(
    "presso_significance", float, 0.05, "MR-PRESSO level for the global and outlier tests"
)
N_PCS = MethodOption(
    "n_pcs", int, 10, "genotype principal components adjusted for by tsls_pcs (at most #instruments - 1)"
)
TSHT_THRESHOLD = MethodOption(
    "tsht_threshold", float, None, "TSHT thresholding multiplier (default sqrt(log n))"
)

P_THRESHOLD = MethodOption(
    "sumstats_p_threshold", float, None,
    "summary-statistic methods: keep only variants whose pooled exposure association has p below this "
    "(e.g. 5e-8, the usual genome-wide selection; default: every variant)",
)  # fmt: skip

_SUMMARY_OPTIONS = (ENV_ADJUST, P_THRESHOLD)


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
    p = 2 * stats.norm.sf(np.abs(pooled.beta_exposure / pooled.se_exposure))
    keep = p < threshold
    if keep.sum() < 3:
        raise TooFewVariantsError(
            f"--sumstats-p-threshold {threshold:g}: only {int(keep.sum())} variant(s) pass "
            f"(smallest exposure p-value {p.min():.3g}); the summary-statistic methods need at least 3"
        )
    return keep


def sumstats_by_scope(data: MRData, ctx: MethodContext) -> list[tuple[str, SummaryStatistics]]:
    """("pooled", stats) then ("env:<label>", stats) per environment when `ctx.per_env`."""
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


def _mean_f(ss: SummaryStatistics) -> float:
    """Mean per-variant F statistic (bx/sx)^2, the strength summary MR papers report."""
    return float(np.mean((ss.beta_exposure / ss.se_exposure) ** 2))


def _estimate(fit: SummaryMRFit, scope: str, ss: SummaryStatistics, method: str | None = None) -> Estimate:
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
    )


def _failed(method: str, scope: str, ss: SummaryStatistics, reason: str) -> Estimate:
    return Estimate.unavailable(method, scope, ss.n, ss.n_variants, reason)


def _run_summary(
    data: MRData, ctx: MethodContext, method: str, estimator: Callable[[SummaryStatistics, str], tuple]
) -> MethodOutput:
    rows, diags = [], []
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
            rows.append(_failed(method, scope, ss, str(exc)))
            continue
        rows.append(est)
        diags.extend(dgs)
    return MethodOutput(tuple(rows), tuple(diags))


def _p_flag(p: float, alpha: float, bad: str, good: str) -> str:
    return bad if p < alpha else good


# ----------------------------------------------------------------------------- summary MR
@register_method(
    "ivw",
    description="Inverse-variance weighted MR on per-variant associations (multiplicative random effects)",
    options=_SUMMARY_OPTIONS,
)
def ivw_method(data: MRData, ctx: MethodContext) -> MethodOutput:
    def one(ss: SummaryStatistics, scope: str):
        fit = ivw(ss, ctx.alpha)
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
                    {"df": df, "method": "ivw"},
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
        return _estimate(fit, scope, ss), diags

    return _run_summary(data, ctx, "ivw", one)


@register_method(
    "mr_egger",
    description="MR-Egger regression on per-variant associations, with intercept test and I^2_GX",
    options=_SUMMARY_OPTIONS,
)
def mr_egger_method(data: MRData, ctx: MethodContext) -> MethodOutput:
    def one(ss: SummaryStatistics, scope: str):
        fit = mr_egger(ss, ctx.alpha)
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

    return _run_summary(data, ctx, "mr_egger", one)


@register_method(
    "weighted_median",
    description="Weighted median MR on per-variant associations (bootstrap SE)",
    options=(*_SUMMARY_OPTIONS, N_BOOTSTRAP),
)
def weighted_median_method(data: MRData, ctx: MethodContext) -> MethodOutput:
    n_boot = int(ctx.option("n_bootstrap", 1000))

    def one(ss: SummaryStatistics, scope: str):
        fit = weighted_median(ss, ctx.alpha, n_bootstrap=n_boot, rng=ctx.rng(f"weighted_median/{scope}"))
        return _estimate(fit, scope, ss), []

    return _run_summary(data, ctx, "weighted_median", one)


@register_method(
    "weighted_mode",
    description="Weighted mode MR (Hartwig 2017) on per-variant associations (bootstrap SE)",
    options=(*_SUMMARY_OPTIONS, N_BOOTSTRAP, MODE_PHI),
)
def weighted_mode_method(data: MRData, ctx: MethodContext) -> MethodOutput:
    n_boot = int(ctx.option("n_bootstrap", 1000))
    phi = float(ctx.option("mode_phi", 1.0))

    def one(ss: SummaryStatistics, scope: str):
        fit = weighted_mode(ss, ctx.alpha, phi=phi, n_bootstrap=n_boot, rng=ctx.rng(f"weighted_mode/{scope}"))
        return _estimate(fit, scope, ss), []

    return _run_summary(data, ctx, "weighted_mode", one)


@register_method(
    "mr_presso",
    description="MR-PRESSO: global pleiotropy test and outlier-corrected IVW",
    options=(*_SUMMARY_OPTIONS, PRESSO_DRAWS, PRESSO_SIGNIFICANCE),
)
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
        return est, [diag]

    return _run_summary(data, ctx, "mr_presso", one)


# ----------------------------------------------------------------------------- 2SLS with PCs
_PC_NAME = re.compile(r"^(pc|PC|Pc)_?\d+$")


def genotype_pcs(Z: np.ndarray, k: int) -> np.ndarray:
    """Top-k principal component scores (U s of the SVD) of the standardised genotype matrix.

    From the top-k eigenvectors of the smaller Gram matrix rather than a full
    SVD: at 30,000 x 1,000 that is about 1 s instead of 20 s, and the scores
    span the same space (only their signs are arbitrary, which adjustment
    does not see).
    """
    Zs = (Z - Z.mean(axis=0)) / np.where(Z.std(axis=0) > 0, Z.std(axis=0), 1.0)
    n, p = Zs.shape
    k = min(k, n, p)
    if n >= p:
        _, vecs = scipy.linalg.eigh(Zs.T @ Zs, subset_by_index=[p - k, p - 1])
        return Zs @ vecs[:, ::-1]
    vals, vecs = scipy.linalg.eigh(Zs @ Zs.T, subset_by_index=[n - k, n - 1])
    return vecs[:, ::-1] * np.sqrt(np.clip(vals[::-1], 0, None))


@register_method(
    "tsls_pcs",
    description="2SLS with every instrument, adjusting for top-k genotype PCs and environment fixed effects",
    options=(N_PCS, AR_MAX_INSTRUMENTS),
)
def tsls_pcs(data: MRData, ctx: MethodContext) -> MethodOutput:
    supplied = [j for j, name in enumerate(data.covariate_names or ()) if _PC_NAME.match(name)]
    if supplied:
        # PCs are among the covariates already, which every method adjusts for.
        pcs, source, k = None, "covariates " + ", ".join(data.covariate_names[j] for j in supplied), len(supplied)
    else:
        requested = int(ctx.option("n_pcs", 10))
        if requested < 1:
            raise InputError(f"--n-pcs must be at least 1, got {requested}")
        # PCs of the instruments span part of the instruments themselves; at least one
        # instrument direction must remain for identification.
        k = min(requested, data.p - 1)
        if k < 1:
            raise InputError("tsls_pcs needs at least 2 instruments when PCs are computed from them")
        pcs, source = genotype_pcs(data.Z, k), "instruments"
    # iv_estimates attaches the Anderson-Rubin sets (same instruments and PC controls).
    rows = iv_estimates(
        data, data.Z, ctx, method="tsls_pcs", extra_controls=pcs, extra={"n_pcs": k, "pcs_from": source}
    )
    return MethodOutput(tuple(rows))


# ----------------------------------------------------------------------------- TSHT
@register_method(
    "tsht",
    description="Two-stage hard thresholding (Guo et al. 2018): 2SLS on instruments voted valid",
    options=(TSHT_THRESHOLD, AR_MAX_INSTRUMENTS),
)
def tsht_method(data: MRData, ctx: MethodContext) -> MethodOutput:
    threshold = ctx.option("tsht_threshold", None)
    threshold = None if threshold is None else float(threshold)
    scopes = [("pooled", np.ones(data.n, dtype=bool), exogenous_controls(data, True))]
    if ctx.per_env:
        codes = data.env_codes
        for i, level in enumerate(data.env_levels):
            mask = codes == i
            scopes.append((f"env:{level}", mask, None if data.covariates is None else data.covariates[mask]))
    rows = []
    for scope, mask, controls in scopes:
        Z = data.Z[mask]
        try:
            model = TwoStageHardThresholding(threshold=threshold, cov_type=ctx.cov_type).fit(
                data.outcome[mask], data.exposure[mask], Z, controls
            )
        except (InputError, np.linalg.LinAlgError) as exc:
            if scope == "pooled":
                rows.append(Estimate.unavailable("tsht", scope, int(mask.sum()), data.p, str(exc)))
            continue
        names = np.array(data.instrument_names)
        est = estimate_from_fit(
            model.fit_, "tsht", scope, ctx.alpha,
            {
                "valid_instruments": names[model.valid_].tolist(),
                "relevant_instruments": names[model.relevant_].tolist(),
                "threshold": model.threshold_,
                "se_ignores_selection": True,
            },
        )  # fmt: skip
        rows.append(
            with_anderson_rubin(
                est,
                data.outcome[mask],
                data.exposure[mask],
                Z[:, model.valid_],
                model.exogenous_controls(Z, controls),
                alpha=ctx.alpha,
                cov_type=ctx.cov_type,
                max_instruments=ar_max_instruments(ctx),
            )
        )
    return MethodOutput(tuple(rows))


__all__ = [
    "genotype_pcs",
    "ivw_method",
    "mr_egger_method",
    "mr_presso_method",
    "sumstats_by_scope",
    "tsht_method",
    "tsls_pcs",
    "weighted_median_method",
    "weighted_mode_method",
]
