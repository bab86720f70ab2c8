"""The tables TwoSampleMR users exchange, as TSV text: harmonised data, single-variant and leave-one-out results,
and the results with odds ratios.

* `harmonised_data_tsv`: TwoSampleMR's `dat` (`harmonise_data`): one row per
  exposure variant, kept or not (`mr_keep`), with both GWAS's associations
  aligned to the exposure's effect allele and the reason a variant was left out.
* `single_variant_tsv`: `mr_singlesnp`: the Wald ratio of each variant
  (`b = by / bx`, `se = sy / |bx|`, normal p-value), then one "All - <method>"
  row per pooled estimate.
* `leave_one_out_tsv`: `mr_leaveoneout`: IVW (multiplicative random effects)
  without each variant, then "All".
* `odds_ratios`: `generate_odds_ratios`: `exp(b)` with `exp(b -+ 1.96 se)`
  (TwoSampleMR's fixed 1.96, whatever the run's alpha), for log-odds outcomes.

Numbers are written with 10 significant digits, missing values as `NA`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from invariant_mr.estimators.summary.summary_mr import ivw, leave_one_out
from invariant_mr.estimators.summary.sumstats import SummaryStatistics
from invariant_mr.estimators.tail_probabilities import norm_sf

#: TwoSampleMR's `generate_odds_ratios` multiplier (not qnorm(0.975) = 1.959964).
OR_Z = 1.96


def _cell(value) -> str:
    if value is None:
        return "NA"
    if isinstance(value, (bool, np.bool_)):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "NA" if not math.isfinite(float(value)) else f"{float(value):.10g}"
    return str(value).replace("\t", " ").replace("\n", " ")


def tsv(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """Tab-separated text with a header line and a final newline."""
    lines = ["\t".join(header)]
    lines += ["\t".join(_cell(v) for v in row) for row in rows]
    return "\n".join(lines) + "\n"


def odds_ratios(b: float | None, se: float | None) -> tuple[float, float, float, float, float]:
    """(lo_ci, up_ci, or, or_lci95, or_uci95) as TwoSampleMR `generate_odds_ratios` (NaN when b or se is missing)."""
    if b is None or se is None or not math.isfinite(b) or not math.isfinite(se):
        nan = float("nan")
        return nan, nan, (math.exp(b) if b is not None and math.isfinite(b) else nan), nan, nan
    lo, hi = b - OR_Z * se, b + OR_Z * se
    return lo, hi, math.exp(b), math.exp(lo), math.exp(hi)


def results_tsv(estimates, *, with_odds_ratios: bool = False) -> str:
    """TwoSampleMR's `mr()` layout of the pooled estimates: exposure, method, nsnp, b, se, pval (and odds ratios)."""
    header = ["exposure", "method", "nsnp", "b", "se", "pval"]
    if with_odds_ratios:
        header += ["lo_ci", "up_ci", "or", "or_lci95", "or_uci95"]
    rows = []
    for e in estimates:
        if e.scope != "pooled":
            continue
        row = [e.exposure or "", e.method, e.n_instruments, e.estimate, e.se, e.pvalue]
        if with_odds_ratios:
            row += list(odds_ratios(e.estimate, e.se))
        rows.append(row)
    return tsv(header, rows)


def harmonised_data_tsv(harmonised) -> str:
    """TwoSampleMR's harmonised `dat` of a two-file run (`io.gwas_sumstats.HarmonisedSumstats`).

    Kept variants carry their aligned associations and `mr_keep` TRUE; every dropped exposure
    variant follows with `mr_keep` FALSE and its reason, so the table accounts for every input row.
    """
    t = harmonised.table
    header = ["SNP", "effect_allele.exposure", "other_allele.exposure", "beta.exposure", "se.exposure",
              "eaf.exposure", "pval.exposure", "samplesize.exposure", "beta.outcome", "se.outcome", "eaf.outcome",
              "samplesize.outcome", "mr_keep", "reason"]  # fmt: skip
    L = t.n_variants

    def col(arr, k=None):
        if arr is None:
            return [None] * L
        arr = np.asarray(arr)
        return list(arr[:, k] if arr.ndim == 2 else arr)

    rows = list(zip(
        t.variant, t.effect_allele or [None] * L, t.other_allele or [None] * L, col(t.beta_exposure, 0),
        col(t.se_exposure, 0), col(t.eaf_exposure), col(t.pval_exposure, 0), col(t.n_exposure), col(t.beta_outcome),
        col(t.se_outcome), col(t.eaf_outcome), col(t.n_outcome), [True] * L, [""] * L,
    ))  # fmt: skip
    rows += [[d.variant] + [None] * 11 + [False, f"{d.reason}{': ' + d.detail if d.detail else ''}"]
             for d in harmonised.dropped]
    return tsv(header, rows)


def single_variant_tsv(ss: SummaryStatistics, estimates=(), *, exposure: str | None = None) -> str:
    """`mr_singlesnp`: each variant's Wald ratio, then "All - <method>" for each pooled estimate."""
    bx, by, sy = ss.beta_exposure, ss.beta_outcome, ss.se_outcome
    b = by / bx
    se = sy / np.abs(bx)
    p = 2 * norm_sf(np.abs(b / se))
    rows = [[v, "wald_ratio", 1, bi, si, pi] for v, bi, si, pi in zip(ss.variant, b, se, p)]
    rows += [[f"All - {e.method}", e.method, e.n_instruments, e.estimate, e.se, e.pvalue]
             for e in estimates if e.scope == "pooled" and (exposure is None or e.exposure in (None, exposure))]
    return tsv(["SNP", "method", "nsnp", "b", "se", "p"], rows)


def leave_one_out_tsv(ss: SummaryStatistics, alpha: float = 0.05) -> str:
    """`mr_leaveoneout` with IVW: the estimate without each variant, then "All" (needs 3 variants)."""
    loo = leave_one_out(ss, alpha)
    full = ivw(ss, alpha)
    p = 2 * norm_sf(np.abs(loo["estimate"] / loo["se"]))
    rows = [[v, ss.n_variants - 1, b, s, pi, lo, hi]
            for v, b, s, pi, lo, hi in zip(loo["variant"], loo["estimate"], loo["se"], p, loo["ci_low"], loo["ci_high"])]
    rows.append(["All", ss.n_variants, full.estimate, full.se, full.pvalue, full.ci_low, full.ci_high])
    return tsv(["SNP", "nsnp", "b", "se", "p", "ci_low", "ci_high"], rows)


__all__ = [
    "OR_Z", "harmonised_data_tsv", "leave_one_out_tsv", "odds_ratios", "results_tsv", "single_variant_tsv", "tsv",
]  # fmt: skip
