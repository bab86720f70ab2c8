"""Instrument selection for summary-statistic MR: LD clumping and selection in an independent GWAS.

MR methods that treat variants as independent need one variant per
association signal. `ld_clump` is the greedy clumping of PLINK's `--clump`
(which TwoSampleMR's `clump_data` / ieugwasr's `ld_clump` call):

1. candidate index variants are those with exposure p-value <= `p`
   (`--clump-p1`), taken in order of increasing p-value (file order breaks ties);
2. the first remaining candidate becomes an index variant, and every
   remaining variant on the same chromosome within `kb` kilobases whose
   squared correlation with it exceeds `r2` (`--clump-r2`) and whose
   p-value is <= `p2` (`--clump-p2`, default `p`) joins its clump and is
   no longer a candidate;
3. repeat until no candidate remains. The index variants are the instruments.

LD is the squared Pearson correlation of allele dosages in `genotypes`
(the cohort's own or a reference panel, samples x variants, aligned with
the variants; missing calls, NaN, are mean-imputed per variant). Variants
with no genotype data in the panel are dropped ("not_in_ld_reference"), as
ieugwasr does. Defaults r2 = 0.001, kb = 10,000, p = 1 are TwoSampleMR's
`clump_data` defaults apart from p (TwoSampleMR assumes the variants were
already selected at 5e-8).

Selecting variants by their exposure p-value in the same GWAS that
estimates their effects favours overestimated effects (winner's curse).
`select_by_independent_gwas` selects on a third, independent GWAS of the
exposure instead, so the estimates used downstream are unbiased for the
selected set (Zhao et al. 2019, the "three-sample" design of mr.raps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from invariant_mr.errors import InputError
from invariant_mr.estimators.tail_probabilities import norm_sf
from invariant_mr.io.gwas_sumstats import DroppedVariant, GWASTable


@dataclass(frozen=True)
class ClumpResult:
    """Index variants (in p-value order), the clump each variant joined, and every dropped variant."""

    variant: tuple[str, ...]
    index: np.ndarray
    clump_of: np.ndarray
    dropped: tuple[DroppedVariant, ...]
    r2: float
    kb: float
    p: float
    p2: float

    @property
    def keep(self) -> np.ndarray:
        """Boolean mask over the input variants: True for index variants."""
        mask = np.zeros(len(self.variant), dtype=bool)
        mask[self.index] = True
        return mask

    def summary(self) -> str:
        return (
            f"clumping (r2 > {self.r2:g} within {self.kb:g} kb, p <= {self.p:g}): "
            f"{self.index.size} index variants of {len(self.variant)}"
        )


def _standardise(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns centred and scaled to unit norm (missing -> column mean); mask of usable columns."""
    g = np.array(g, dtype=float, copy=True)
    missing = np.isnan(g)
    counts = (~missing).sum(axis=0)
    usable = counts >= 2
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(usable, np.nansum(g, axis=0) / np.maximum(counts, 1), 0.0)
    g[missing] = np.broadcast_to(means, g.shape)[missing]
    g -= means
    norms = np.sqrt(np.einsum("ij,ij->j", g, g))
    usable &= norms > 0
    g[:, usable] /= norms[usable]
    return g, usable


def ld_clump(
    pvalues,
    chrom,
    pos,
    genotypes,
    *,
    variant=None,
    r2: float = 0.001,
    kb: float = 10_000,
    p: float = 1.0,
    p2: float | None = None,
) -> ClumpResult:
    """Greedy LD clumping (PLINK `--clump` semantics; see the module docstring)."""
    pvalues = np.asarray(pvalues, dtype=float).ravel()
    L = pvalues.size
    chrom = np.asarray([str(c) for c in chrom])
    pos = np.asarray(pos, dtype=float).ravel()
    if chrom.size != L or pos.size != L:
        raise InputError(f"clumping needs a chromosome and position for each of the {L} variants")
    G = np.asarray(genotypes, dtype=float)
    if G.ndim != 2 or G.shape[1] != L:
        raise InputError(f"the LD genotype matrix must be samples x {L} variants, got shape {G.shape}")
    variant = tuple(str(v) for v in (variant if variant is not None else (f"v{i + 1}" for i in range(L))))
    if not 0 <= r2 < 1:
        raise InputError(f"--clump-r2 must be in [0, 1), got {r2}")
    if kb <= 0:
        raise InputError(f"--clump-kb must be positive, got {kb}")
    p2 = p if p2 is None else p2
    for name, val in (("--clump-p", p), ("--clump-p2", p2)):
        if not 0 < val <= 1:
            raise InputError(f"{name} must be in (0, 1], got {val}")
    if np.any(~np.isfinite(pvalues)) or np.any((pvalues < 0) | (pvalues > 1)):
        raise InputError("clumping needs an exposure p-value in [0, 1] for every variant")
    if np.any(~np.isfinite(pos)):
        raise InputError("clumping needs a finite position for every variant")

    Z, usable = _standardise(G)
    dropped: list[DroppedVariant] = [DroppedVariant(variant[i], "not_in_ld_reference") for i in np.flatnonzero(~usable)]
    clump_of = np.full(L, -1, dtype=int)
    remaining = usable.copy()
    order = np.argsort(pvalues, kind="stable")
    window = kb * 1000.0
    index = []
    for i in order:
        if not remaining[i]:
            continue
        if pvalues[i] > p:
            break  # sorted: no later variant qualifies as an index variant
        remaining[i] = False
        index.append(i)
        clump_of[i] = i
        cand = np.flatnonzero(remaining & (chrom == chrom[i]) & (np.abs(pos - pos[i]) <= window) & (pvalues <= p2))
        if cand.size:
            r2_vals = (Z[:, cand].T @ Z[:, i]) ** 2
            joined = cand[r2_vals > r2]
            remaining[joined] = False
            clump_of[joined] = i
            dropped.extend(
                DroppedVariant(variant[j], "clumped", f"LD r2 {rv:.3g} with index variant {variant[i]}")
                for j, rv in zip(joined, r2_vals[r2_vals > r2])
            )
    for j in np.flatnonzero(remaining):
        dropped.append(DroppedVariant(variant[j], "clump_p_threshold", f"exposure p {pvalues[j]:.3g} > {p:g}"))
    return ClumpResult(variant, np.array(index, dtype=int), clump_of, tuple(dropped), float(r2), float(kb), float(p), float(p2))


@dataclass(frozen=True)
class SelectionResult:
    """Variants selected in an independent exposure GWAS, with that GWAS's p-values and the dropped list."""

    keep: np.ndarray
    selection_pvalue: np.ndarray
    dropped: tuple[DroppedVariant, ...]
    p_threshold: float

    def summary(self) -> str:
        return f"selected {int(self.keep.sum())} of {self.keep.size} variants at p < {self.p_threshold:g} in the independent GWAS"


def select_by_independent_gwas(variants, selection: GWASTable, p_threshold: float = 5e-8) -> SelectionResult:
    """Keep the variants whose association in an independent exposure GWAS has p < `p_threshold`.

    The selection GWAS's p-value column is used when present, else the
    two-sided normal p-value of beta/SE. `selection_pvalue` (NaN where the
    variant is absent) can order `ld_clump`, so the clumping too is
    free of the winner's curse. Matched on the variant id only: the sign of
    the selection effect is not used.
    """
    if not 0 < p_threshold <= 1:
        raise InputError(f"--select-p must be in (0, 1], got {p_threshold}")
    variants = [str(v) for v in variants]
    if selection.pval is not None:
        psel = np.array(selection.pval, dtype=float)
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            psel = 2 * norm_sf(np.abs(selection.beta / selection.se))
    lookup: dict[str, float] = {}
    for v, pv in zip(selection.variant, psel):
        if v in lookup:
            raise InputError(f"--select-from: variant {v} appears more than once")
        lookup[v] = pv
    pv = np.array([lookup.get(v, np.nan) for v in variants])
    keep = np.isfinite(pv) & (pv < p_threshold)
    dropped = []
    for v, val, k in zip(variants, pv, keep):
        if k:
            continue
        if v not in lookup:
            dropped.append(DroppedVariant(v, "not_in_selection_gwas"))
        elif not np.isfinite(val):
            dropped.append(DroppedVariant(v, "missing_selection_value"))
        else:
            dropped.append(DroppedVariant(v, "selection_p_threshold", f"p {val:.3g} >= {p_threshold:g} in the selection GWAS"))
    return SelectionResult(keep, pv, tuple(dropped), float(p_threshold))


__all__ = ["ClumpResult", "SelectionResult", "ld_clump", "select_by_independent_gwas"]
