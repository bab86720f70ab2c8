"""The analysed genotype matrix as a stream of row blocks read from the genotype file.

After QC (`streamed_qc.streamed_genotype_qc`) the matrix an analysis uses is
"the kept samples x the kept variants, missing calls imputed with the
environment's mean dosage, optionally standardised". `StreamedGenotypes`
describes that matrix without holding it: every pass reads the file again in
row blocks (int8 hard calls or float32 dosages) and yields float64 blocks of
`block_rows` rows, so a pass holds one raw block of `read_rows` rows plus one
float64 block, never an n x p float array.

It pickles (the genotype source reopens its file on each read), so a Dask
worker can read its own row chunk (`reader(start, stop)`), and it reads any set of rows
(`read_rows_at`) for the methods that need rows (a seeded subsample).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from invariant_mr.errors import InputError
from invariant_mr.io.genotype_sources import GenotypeSource, default_block_rows
from invariant_mr.io.streamed_qc import StreamedQCResult, impute_block

#: Size of one float64 block handed to the estimators (the "one block" of the memory formula).
FLOAT_BLOCK_BYTES = 32 * 2**20
#: Size of one raw block read from the file: large reads amortise the per-call cost of the
#: readers (each call re-decodes the selected variants for the requested rows).
READ_BLOCK_BYTES = 64 * 2**20


@dataclass(frozen=True, eq=False)
class StreamedGenotypes:
    """Rows `rows` (file sample positions, analysis order) x variants `columns` (positions in
    `source.variants`) of a genotype source, imputed by `env_means[env_codes[i]]` and, when
    `center`/`scale` are given, standardised: the matrix `read_qc_dosages` would return."""

    source: GenotypeSource
    rows: np.ndarray
    columns: np.ndarray
    env_codes: np.ndarray = field(repr=False)
    env_means: np.ndarray = field(repr=False)
    center: np.ndarray | None = field(default=None, repr=False)
    scale: np.ndarray | None = field(default=None, repr=False)
    block_rows: int | None = None
    read_rows: int | None = None

    @classmethod
    def from_qc(
        cls, source: GenotypeSource, rows: np.ndarray, qc: StreamedQCResult, *, block_rows: int | None = None,
        read_rows: int | None = None,
    ) -> StreamedGenotypes:
        """The analysed matrix of `streamed_genotype_qc(source, rows, ...)` that returned `qc`."""
        rows = np.asarray(rows, dtype=np.intp)[qc.rows]
        standardize = qc.report.thresholds.standardize
        return cls(
            source=source, rows=rows, columns=qc.variant_positions, env_codes=np.asarray(qc.env_codes),
            env_means=np.asarray(qc.env_means), center=qc.center if standardize else None,
            scale=qc.scale if standardize else None, block_rows=block_rows, read_rows=read_rows,
        )

    @property
    def n(self) -> int:
        return int(self.rows.size)

    @property
    def p(self) -> int:
        return int(self.columns.size)

    @property
    def shape(self) -> tuple[int, int]:
        return self.n, self.p

    @property
    def float_block_rows(self) -> int:
        return int(self.block_rows or max(64, FLOAT_BLOCK_BYTES // (8 * max(self.p, 1))))

    @property
    def raw_block_rows(self) -> int:
        if self.read_rows:
            return int(self.read_rows)
        per_read = default_block_rows(self.p, self.source.native_dtype, READ_BLOCK_BYTES)
        return int(max(self.float_block_rows, per_read))

    def select_columns(self, keep) -> StreamedGenotypes:
        """The same rows with a subset of the columns (a boolean mask or positions)."""
        keep = np.asarray(keep)
        idx = np.flatnonzero(keep) if keep.dtype == bool else keep.astype(np.intp)
        return replace(
            self, columns=self.columns[idx], env_means=self.env_means[:, idx],
            center=None if self.center is None else self.center[idx],
            scale=None if self.scale is None else self.scale[idx],
        )

    def _impute(self, raw: np.ndarray, positions: np.ndarray) -> np.ndarray:
        return impute_block(raw, self.env_means, self.env_codes[positions], center=self.center, scale=self.scale)

    def iter_blocks(self, start: int = 0, stop: int | None = None):
        """(slice of analysis rows, float64 block) over rows [start, stop), one block alive at a time."""
        stop = self.n if stop is None else int(stop)
        if not 0 <= start <= stop <= self.n:
            raise InputError(f"rows {start}:{stop} are outside 0..{self.n}")
        step = self.float_block_rows
        big = max(step, (self.raw_block_rows // step) * step)
        for lo in range(start, stop, big):
            hi = min(stop, lo + big)
            raw = self.source.read(self.rows[lo:hi], self.columns)
            for a in range(0, hi - lo, step):
                b = min(hi - lo, a + step)
                yield slice(lo + a, lo + b), self._impute(raw[a:b], np.arange(lo + a, lo + b))
            del raw

    def read_rows_at(self, positions) -> np.ndarray:
        """The float64 rows at analysis positions `positions` (e.g. a subsample), in that order."""
        positions = np.asarray(positions, dtype=np.intp)
        order = np.argsort(positions, kind="stable")
        out = np.empty((positions.size, self.p))
        step = self.raw_block_rows
        for lo in range(0, positions.size, step):
            part = positions[order[lo : lo + step]]
            out[order[lo : lo + step]] = self._impute(self.source.read(self.rows[part], self.columns), part)
        return out

    def chunk_bounds(self, n_chunks: int) -> list[tuple[int, int]]:
        """`n_chunks` contiguous, non-empty row ranges covering every row (the Dask tasks' rows)."""
        n_chunks = int(max(1, min(n_chunks, self.n)))
        bounds = np.linspace(0, self.n, n_chunks + 1).astype(int)
        return [(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]

    def describe(self) -> dict:
        return {
            "n_rows": self.n,
            "n_columns": self.p,
            "float64_block_rows": self.float_block_rows,
            "read_block_rows": self.raw_block_rows,
            "read_dtype": self.source.native_dtype,
        }


__all__ = ["FLOAT_BLOCK_BYTES", "READ_BLOCK_BYTES", "StreamedGenotypes"]
