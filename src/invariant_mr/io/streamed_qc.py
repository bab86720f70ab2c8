"""Genotype QC in bounded memory: counts streamed over row blocks of a `GenotypeSource`.

Applies exactly the rules of `invariant_mr.io.qc` (same steps, same order, same
`QCThresholds` and `QCReport`) without an n x p float array: each row block is
reduced to per-variant, per-environment counts and dropped. Memory: one block
plus O(k p) counts plus two length-n vectors (environment codes, per-sample
missing counts).

Passes over the file:

1. every requested row x every variant: missing calls per variant and per
   sample, and per environment the observed calls, their dosage sum and sum of
   squares (int8 sources: the count of each genotype 0/1/2, which gives all of
   these), and the smallest and largest dosage;
2. only if some variant fails --geno: those variants again, to count each
   sample's missing calls over the variants that pass (PLINK's --mind is
   computed after --geno);
3. only if --mind removes samples: int8 sources read just the removed rows and
   subtract their counts (exact); dosage sources recount over the kept rows,
   since a minimum or maximum cannot be subtracted.

On hard calls the result equals `run_genotype_qc` on the same matrix exactly
(every sum is an integer); on fractional dosages to rounding (sums in another order).

`BlockCounts` is a plain sum over blocks, so a Dask reduction can compute it
per chunk and add the chunks (`+`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from invariant_mr.errors import InputError
from invariant_mr.io.genotype_sources import (
    DEFAULT_BLOCK_BYTES,
    MISSING_INT8,
    GenotypeSource,
)
from invariant_mr.io.qc import QCReport, QCThresholds, decide_variants

#: Size of the float64 temporaries made while summing a float32 block.
_FLOAT64_CHUNK_BYTES = 16 * 1024**2


def _missing(block: np.ndarray) -> np.ndarray:
    return block == MISSING_INT8 if block.dtype == np.int8 else np.isnan(block)


@dataclass
class BlockCounts:
    """Per-environment sufficient counts of a set of rows, for every variant; add two with `+`.

    int8 blocks: `genotype_counts` (k, 3, p) of calls equal to 0, 1, 2.
    Float blocks: `obs`, `total`, `total_sq` (k, p) and `lo`, `hi` (p,).
    """

    k: int
    p: int
    hardcalls: bool
    missing_per_variant: np.ndarray
    genotype_counts: np.ndarray | None = None
    obs: np.ndarray | None = None
    total: np.ndarray | None = None
    total_sq: np.ndarray | None = None
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None

    @classmethod
    def empty(cls, k: int, p: int, hardcalls: bool) -> BlockCounts:
        if hardcalls:
            return cls(k, p, True, np.zeros(p, np.int64), genotype_counts=np.zeros((k, 3, p), np.int64))
        return cls(
            k, p, False, np.zeros(p, np.int64), obs=np.zeros((k, p), np.int64), total=np.zeros((k, p)),
            total_sq=np.zeros((k, p)), lo=np.full(p, np.nan), hi=np.full(p, np.nan),
        )

    @classmethod
    def from_block(cls, block: np.ndarray, codes: np.ndarray, k: int) -> BlockCounts:
        """Counts of one (rows, p) block; `codes` (rows,) are environment codes 0..k-1."""
        p = block.shape[1]
        miss = _missing(block)
        out = cls.empty(k, p, block.dtype == np.int8)
        out.missing_per_variant = miss.sum(axis=0, dtype=np.int64)
        for e in range(k):
            rows = codes == e
            if not rows.any():
                continue
            sub = block[rows]
            if out.hardcalls:
                for g in range(3):
                    out.genotype_counts[e, g] = (sub == g).sum(axis=0, dtype=np.int64)
            else:
                ok = ~miss[rows]
                out.obs[e] = ok.sum(axis=0, dtype=np.int64)
                # float64 sums, in column chunks so the float64 temporaries stay small beside the block.
                step = max(1, _FLOAT64_CHUNK_BYTES // (8 * max(1, sub.shape[0])))
                for c in range(0, p, step):
                    filled = np.where(ok[:, c : c + step], sub[:, c : c + step], 0.0).astype(np.float64)
                    out.total[e, c : c + step] = filled.sum(axis=0)
                    filled *= filled
                    out.total_sq[e, c : c + step] = filled.sum(axis=0)
        if not out.hardcalls and block.shape[0]:
            out.lo = np.fmin.reduce(block, axis=0).astype(np.float64)
            out.hi = np.fmax.reduce(block, axis=0).astype(np.float64)
        if out.hardcalls:
            bad = ~(miss | (block == 0) | (block == 1) | (block == 2))
            if bad.any():
                raise InputError(f"int8 genotype block holds values other than 0, 1, 2 and {MISSING_INT8}")
        return out

    def __add__(self, other: BlockCounts) -> BlockCounts:
        if (self.k, self.p, self.hardcalls) != (other.k, other.p, other.hardcalls):
            raise ValueError("cannot add counts of different shapes")
        if self.hardcalls:
            return BlockCounts(self.k, self.p, True, self.missing_per_variant + other.missing_per_variant,
                               genotype_counts=self.genotype_counts + other.genotype_counts)
        return BlockCounts(
            self.k, self.p, False, self.missing_per_variant + other.missing_per_variant,
            obs=self.obs + other.obs, total=self.total + other.total, total_sq=self.total_sq + other.total_sq,
            lo=np.fmin(self.lo, other.lo), hi=np.fmax(self.hi, other.hi),
        )

    def __sub__(self, other: BlockCounts) -> BlockCounts:
        if not (self.hardcalls and other.hardcalls):
            raise ValueError("only hard-call counts can be subtracted (a minimum cannot)")
        return BlockCounts(self.k, self.p, True, self.missing_per_variant - other.missing_per_variant,
                           genotype_counts=self.genotype_counts - other.genotype_counts)

    # Derived per-environment moments.
    def env_obs(self) -> np.ndarray:
        return self.genotype_counts.sum(axis=1) if self.hardcalls else self.obs

    def env_sum(self) -> np.ndarray:
        if self.hardcalls:
            c = self.genotype_counts
            return (c[:, 1] + 2 * c[:, 2]).astype(np.float64)
        return self.total

    def env_sum_sq(self) -> np.ndarray:
        if self.hardcalls:
            c = self.genotype_counts
            return (c[:, 1] + 4 * c[:, 2]).astype(np.float64)
        return self.total_sq

    def range(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.hardcalls:
            return self.lo, self.hi
        present = self.genotype_counts.sum(axis=0) > 0  # (3, p)
        any_ = present.any(axis=0)
        lo = np.where(any_, np.argmax(present, axis=0), np.nan).astype(np.float64)
        hi = np.where(any_, 2 - np.argmax(present[::-1], axis=0), np.nan).astype(np.float64)
        return lo, hi


@dataclass(frozen=True)
class StreamedQCResult:
    """What streamed QC kept, and what the later passes need to impute and scale on the fly.

    rows : positions (into the `rows` given to `streamed_genotype_qc`) of the kept samples.
    sample_mask : (len(rows),) bool, the same as `run_genotype_qc`'s.
    variant_mask : (source.n_variants,) bool over the source's variants.
    env_levels / env_codes : environments of the kept samples (sorted labels) and each kept row's code.
    env_means : (k, p_kept) mean observed dosage per environment: the value imputed for a missing call.
    center / scale : pooled mean and SD of the imputed dosages of each kept variant,
        used when `thresholds.standardize` (else 0 and 1).
    report : the `QCReport`, as from `run_genotype_qc`.
    """

    rows: np.ndarray
    sample_mask: np.ndarray
    variant_mask: np.ndarray
    env_levels: tuple[str, ...]
    env_codes: np.ndarray = field(repr=False)
    env_means: np.ndarray = field(repr=False)
    center: np.ndarray = field(repr=False)
    scale: np.ndarray = field(repr=False)
    report: QCReport = field(repr=False)

    @property
    def variant_positions(self) -> np.ndarray:
        return np.flatnonzero(self.variant_mask)

    def impute(self, block: np.ndarray, block_rows: slice | np.ndarray, *, dtype=np.float64) -> np.ndarray:
        """Imputed (and, if asked, standardised) dosages of a block of kept rows x kept variants.

        `block_rows` locates the block's rows among the kept rows (a slice or positions).
        """
        codes = self.env_codes[block_rows]
        if not self.report.thresholds.standardize:
            return impute_block(block, self.env_means, codes, dtype=dtype)
        return impute_block(block, self.env_means, codes, center=self.center, scale=self.scale, dtype=dtype)


def impute_block(
    block: np.ndarray,
    means: np.ndarray,
    env_codes: np.ndarray | None = None,
    *,
    center: np.ndarray | None = None,
    scale: np.ndarray | None = None,
    dtype=np.float64,
) -> np.ndarray:
    """A float copy of a genotype block with each missing call replaced by its variant's mean.

    `block` (rows, p): int8 hard calls (-127 missing) or float dosages (NaN
    missing). `means`: (p,) per-variant means, or (k, p) per-environment
    means with `env_codes` (rows,) picking the row of each sample. Then
    `(x - center) / scale` when given. Memory: one output block.
    """
    out = np.array(block, dtype=dtype)
    miss = _missing(block)
    if miss.any():
        r, c = np.nonzero(miss)
        means = np.asarray(means)
        if means.ndim == 1:
            out[r, c] = means[c]
        else:
            if env_codes is None:
                raise ValueError("per-environment means need env_codes")
            out[r, c] = means[np.asarray(env_codes)[r], c]
    if center is not None:
        out -= np.asarray(center, dtype=dtype)
    if scale is not None:
        out /= np.asarray(scale, dtype=dtype)
    return out


def streamed_genotype_qc(
    source: GenotypeSource,
    rows: np.ndarray | None,
    env: np.ndarray,
    thresholds: QCThresholds | None = None,
    *,
    variant_table: pd.DataFrame | None = None,
    block_rows: int | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> StreamedQCResult:
    """QC of `source` restricted to `rows` (sample positions; None: all), streamed by row blocks.

    `env` (len(rows),) labels each row's environment. `variant_table` labels
    the rows of the report (default: `source.variants`). Raises `InputError`
    when QC removes every sample or every variant, as `run_genotype_qc` does.
    """
    t = thresholds or QCThresholds()
    row_pos = np.arange(source.n_samples) if rows is None else np.asarray(rows, dtype=np.intp)
    n, p = row_pos.size, source.n_variants
    env = np.asarray(env, dtype=object)
    if env.shape != (n,):
        raise InputError(f"environment labels have shape {env.shape}, expected ({n},)")
    table = source.variants if variant_table is None else variant_table
    if len(table) != p:
        raise InputError(f"variant table has {len(table)} rows for {p} genotype columns")
    hardcalls = source.native_dtype == "int8"
    labels = env.astype(str)
    all_levels, codes = np.unique(labels, return_inverse=True)
    k_all = all_levels.size

    # Pass 1.
    counts = BlockCounts.empty(k_all, p, hardcalls)
    sample_missing = np.zeros(n, dtype=np.int64)
    for s, block in source.iter_blocks(row_pos, block_rows=block_rows, block_bytes=block_bytes):
        counts = counts + BlockCounts.from_block(block, codes[s], k_all)
        sample_missing[s] = _missing(block).sum(axis=1)
        del block

    variant_missing_rate = counts.missing_per_variant / n if n else np.zeros(p)
    reason = np.full(p, "", dtype=object)
    failing = variant_missing_rate > t.max_variant_missing
    reason[failing] = "variant_missingness"
    n_pass = int((~failing).sum())

    # Pass 2: --mind counts only the variants that pass --geno.
    if failing.any() and n_pass:
        fail_cols = np.flatnonzero(failing)
        for s, block in source.iter_blocks(row_pos, fail_cols, block_rows=block_rows, block_bytes=block_bytes):
            sample_missing[s] -= _missing(block).sum(axis=1)
    sample_missing_rate = sample_missing / n_pass if n_pass else np.zeros(n)
    sample_mask = sample_missing_rate <= t.max_sample_missing
    if not sample_mask.any():
        raise InputError(
            f"QC removed all {n} samples: every sample has a missing rate above {t.max_sample_missing:g} "
            "(--mind); raise --mind or check the genotype file"
        )
    n_removed = int((~sample_mask).sum())

    # Pass 3: counts over the kept samples only.
    if n_removed:
        if hardcalls:
            gone = np.flatnonzero(~sample_mask)
            for s, block in source.iter_blocks(row_pos[gone], block_rows=block_rows, block_bytes=block_bytes):
                counts = counts - BlockCounts.from_block(block, codes[gone][s], k_all)
        else:
            kept = np.flatnonzero(sample_mask)
            counts = BlockCounts.empty(k_all, p, hardcalls)
            for s, block in source.iter_blocks(row_pos[kept], block_rows=block_rows, block_bytes=block_bytes):
                counts = counts + BlockCounts.from_block(block, codes[kept][s], k_all)

    # Environments are those of the kept samples (one emptied by --mind is the caller's to report).
    present = np.unique(codes[sample_mask])
    levels = [str(lv) for lv in all_levels[present]]
    recode = np.full(k_all, -1)
    recode[present] = np.arange(present.size)
    env_obs = counts.env_obs()[present].astype(np.float64)
    env_sum = counts.env_sum()[present]
    lo, hi = counts.range()
    decision = decide_variants(
        table, t, reason, variant_missing_rate, levels, env_obs, env_sum, lo, hi, n_kept=int(sample_mask.sum())
    )
    mask = decision.variant_mask
    env_means = decision.env_mean[:, mask]

    # Pooled moments of the imputed dosages: observed sums plus the imputed means.
    n_kept = int(sample_mask.sum())
    miss_e = env_obs[:, mask]
    miss_e = np.bincount(codes[sample_mask], minlength=k_all)[present][:, None] - miss_e
    if t.standardize:
        s1 = (env_sum[:, mask] + miss_e * env_means).sum(axis=0)
        s2 = (counts.env_sum_sq()[present][:, mask] + miss_e * env_means**2).sum(axis=0)
        center = s1 / n_kept
        scale = np.sqrt(np.maximum(s2 / n_kept - center**2, 0.0))
    else:
        center = np.zeros(int(mask.sum()))
        scale = np.ones(int(mask.sum()))
    report = decision.report(n_samples_in=n, n_samples_removed=n_removed)
    return StreamedQCResult(
        rows=np.flatnonzero(sample_mask),
        sample_mask=sample_mask,
        variant_mask=mask,
        env_levels=tuple(levels),
        env_codes=recode[codes[sample_mask]],
        env_means=env_means,
        center=center,
        scale=scale,
        report=report,
    )


def iter_qc_blocks(
    source: GenotypeSource,
    rows: np.ndarray | None,
    qc: StreamedQCResult,
    *,
    dtype=np.float64,
    block_rows: int | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
):
    """Stream the analysed dosages (QC-kept samples x kept variants, imputed, standardised if asked).

    `rows` are the sample positions given to `streamed_genotype_qc`. Yields
    `(s, block)` with `s` a slice into the kept samples (`qc.rows`), so
    `qc.env_codes[s]` and any per-sample vectors of the kept samples line up
    with the block. The passes that accumulate sufficient statistics run on this.
    """
    row_pos = np.arange(source.n_samples) if rows is None else np.asarray(rows, dtype=np.intp)
    kept = row_pos[qc.rows]
    for s, block in source.iter_blocks(kept, qc.variant_positions, block_rows=block_rows, block_bytes=block_bytes):
        yield s, qc.impute(block, s, dtype=dtype)


def read_qc_dosages(
    source: GenotypeSource,
    rows: np.ndarray | None,
    qc: StreamedQCResult,
    *,
    dtype=np.float64,
    block_rows: int | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> np.ndarray:
    """The whole analysed matrix, filled block by block into one preallocated array: what
    `run_genotype_qc(...).dosages` holds, for estimators that still need Z in memory."""
    out = np.empty((qc.rows.size, qc.variant_positions.size), dtype=dtype)
    for s, block in iter_qc_blocks(source, rows, qc, dtype=dtype, block_rows=block_rows, block_bytes=block_bytes):
        out[s] = block
    return out


__all__ = [
    "BlockCounts",
    "StreamedQCResult",
    "impute_block",
    "iter_qc_blocks",
    "read_qc_dosages",
    "streamed_genotype_qc",
]
