"""From GWAS summary statistics to the inputs of the summary-statistic estimators.

`io.gwas_sumstats` reads and harmonises the tables; the estimators take
`SummaryStatistics` (one exposure) or (L, K) arrays (several). These
helpers bridge the two, run the Steiger test on the table's columns, and
choose the instruments (`select_instruments`: p-value selection, in the
table itself or in an independent GWAS, then LD clumping on a reference
panel), recording every variant left out and why.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from invariant_mr.errors import InputError
from invariant_mr.estimators.tail_probabilities import norm_sf
from invariant_mr.estimators.summary.clumping import ld_clump, select_by_independent_gwas
from invariant_mr.io.gwas_sumstats import DroppedVariant, GWASTable
from invariant_mr.estimators.summary.multivariable_mr import MultivariableMRFit, mv_egger, mv_ivw
from invariant_mr.estimators.summary.steiger import SteigerResult, steiger_test, variance_explained
from invariant_mr.io.gwas_sumstats import SumstatsTable
from invariant_mr.estimators.summary.sumstats import SummaryStatistics


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


def mv_ivw_table(table: SumstatsTable, alpha: float = 0.05, model: str = "lm") -> MultivariableMRFit:
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
    px = table.pval_exposure[:, k] if table.pval_exposure is not None else 2 * norm_sf(np.abs(bx / sx))
    py = np.asarray(pval_outcome, dtype=float) if pval_outcome is not None else 2 * norm_sf(np.abs(by / sy))
    r2x = variance_explained(bx, se=sx, n=table.n_exposure, pval=px, eaf=table.eaf_exposure, method=method)
    r2y = variance_explained(by, se=sy, n=table.n_outcome, pval=py, eaf=table.eaf_outcome, method=method)
    return steiger_test(r2x, r2y, table.n_exposure, table.n_outcome)


# ----------------------------------------------------------------------------- instrument selection
@dataclass(frozen=True)
class SelectedInstruments:
    """The analysed table, every variant dropped (with the step that dropped it) and a line per step."""

    table: SumstatsTable
    dropped: tuple[tuple[str, DroppedVariant], ...]
    steps: tuple[str, ...]

    def dropped_tsv(self) -> str:
        lines = ["variant\tstep\treason\tdetail"]
        lines += [f"{d.variant}\t{step}\t{d.reason}\t{d.detail}" for step, d in self.dropped]
        return "\n".join(lines) + "\n"

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, d in self.dropped:
            out[d.reason] = out.get(d.reason, 0) + 1
        return out


def ld_reference(bfile: str | os.PathLike, variants) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dosages samples x L, chrom, pos) of `variants` in a PLINK 1 reference panel (bed-reader).

    Variants absent from the panel get an all-missing column (clumping then
    drops them as "not_in_ld_reference"), chromosome "" and position 0.
    """
    from invariant_mr.io.genotypes import PlinkGenotypes

    panel = PlinkGenotypes(bfile)
    table = panel.variant_table
    index: dict[str, int] = {}
    for i, v in enumerate(table["variant_id"].astype(str)):
        index.setdefault(v, i)
    where = np.array([index.get(str(v), -1) for v in variants])
    found = where >= 0
    G = np.full((panel.n_samples, len(where)), np.nan)
    if found.any():
        G[:, found] = panel.read(np.arange(panel.n_samples), where[found])
    chrom = np.array([str(table["chrom"].iloc[i]) if i >= 0 else "" for i in where])
    pos = np.array([float(table["pos"].iloc[i]) if i >= 0 else 0.0 for i in where])
    return G, chrom, pos


HARMONISE_HINT = (": check that both GWAS name variants the same way (rsID vs CHR:POS; rename a column with --col) "
                  "and report alleles on the same strand")


def select_instruments(
    table: SumstatsTable,
    *,
    select_p: float | None = None,
    selection_gwas: GWASTable | None = None,
    clump_bfile: str | os.PathLike | None = None,
    clump_r2: float = 0.001,
    clump_kb: float = 10_000,
    clump_p: float = 1.0,
    min_variants: int = 3,
    earlier: Sequence[tuple[str, DroppedVariant]] = (),
) -> SelectedInstruments:
    """p-value selection, then LD clumping; each step's dropped variants are recorded.

    Selection: with `selection_gwas`, variants with p < `select_p` (default
    5e-8) there (no winner's curse); otherwise, when `select_p` is given, on
    the table's own exposure p-values (the smallest over exposures, so a
    multivariable analysis keeps variants associated with any exposure).
    Clumping (with `clump_bfile`, a PLINK 1 reference panel): PLINK's greedy
    `--clump` ordered by the selection p-values, positions from the table's
    chrom/pos columns or else from the panel's .bim. `earlier` (step,
    variant) pairs, e.g. from harmonisation, head the dropped list.
    """
    dropped: list[tuple[str, DroppedVariant]] = list(earlier)
    steps: list[str] = []
    # An exposure beta of exactly 0 (common in GWAS files rounded to a few decimals) has no Wald ratio and no
    # weight: it would only give infinite ratios to the median, mode and plots, so it is left out by name.
    zero = np.all(np.asarray(table.beta_exposure, dtype=float).reshape(table.n_variants, len(table.exposures)) == 0, axis=1)
    if zero.any():
        dropped += [("select", DroppedVariant(v, "zero_exposure_beta", "exposure beta is 0 (rounded?): no ratio "
                                              "estimate and no weight")) for v, z in zip(table.variant, zero) if z]
        steps.append(f"left out {int(zero.sum())} variant(s) whose exposure beta is 0 (no ratio estimate)")
        table = table.subset(~zero)
    order_p = table.exposure_pvalues().min(axis=1)
    if selection_gwas is not None:
        sel = select_by_independent_gwas(table.variant, selection_gwas, 5e-8 if select_p is None else select_p)
        dropped += [("select", d) for d in sel.dropped]
        steps.append(sel.summary())
        order_p = sel.selection_pvalue[sel.keep]
        table = table.subset(sel.keep)
    elif select_p is not None:
        if not 0 < select_p <= 1:
            raise InputError(f"--select-p must be in (0, 1], got {select_p}")
        keep = order_p < select_p
        dropped += [
            ("select", DroppedVariant(v, "exposure_p_threshold", f"smallest exposure p {pv:.3g} >= {select_p:g}"))
            for v, pv, k in zip(table.variant, order_p, keep) if not k
        ]  # fmt: skip
        steps.append(f"selected {int(keep.sum())} of {keep.size} variants at exposure p < {select_p:g} (same GWAS)")
        table, order_p = table.subset(keep), order_p[keep]
    if clump_bfile is not None and table.n_variants > 0:
        G, chrom, pos = ld_reference(clump_bfile, table.variant)
        if table.chrom is not None and table.pos is not None and np.all(np.isfinite(table.pos)):
            chrom, pos = np.array(table.chrom), np.asarray(table.pos, dtype=float)
        res = ld_clump(order_p, chrom, pos, G, variant=table.variant, r2=clump_r2, kb=clump_kb, p=clump_p)
        dropped += [("clump", d) for d in res.dropped]
        steps.append(res.summary())
        # Keep the table's order (the index variants come in p-value order).
        table = table.subset(res.keep)
    if table.n_variants < min_variants:
        # Name the step that emptied the table: a harmonisation failure (no shared IDs, other alleles) is not a
        # selection threshold, and the fix differs.
        counts: dict[str, int] = {}
        for step, d in dropped:
            counts[f"{step}: {d.reason}"] = counts.get(f"{step}: {d.reason}", 0) + 1
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        harmonised_away = any(step == "harmonise" for step, _ in dropped) and not steps
        raise InputError(
            f"{table.n_variants} variant(s) left after {'harmonisation' if harmonised_away else 'instrument selection'}"
            f"; at least {min_variants} are needed"
            + (f"; dropped: {why}" if why else "")
            + (f" ({'; '.join(steps)})" if steps else "")
            + (HARMONISE_HINT if harmonised_away else "")
        )
    return SelectedInstruments(table, tuple(dropped), tuple(steps))


__all__ = [
    "SelectedInstruments",
    "ld_reference",
    "mv_egger_table",
    "mv_ivw_table",
    "select_instruments",
    "steiger_from_table",
    "summary_statistics_from_table",
]
