"""Row sources for the pass engine: the genotype rows as blocks, and the row-aligned vectors.

A pass reads the genotypes as (rows, block) pairs and the few length-n vectors
(environment codes, exposure, outcome, covariates) by row position. Streamed
genotypes (`io.streamed_genotypes.StreamedGenotypes`) already yield such
blocks; `ArrayRows` gives an in-memory array the same interface, and
`iter_array_blocks` cuts any array, memory-mapped or not, into blocks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from invariant_mr.errors import InputError

#: Default rows per block for in-memory arrays: about 32 MB of float64 per block.
_BLOCK_BYTES = 32 * 2**20
#: Rows per block when `ArrayRows` serves an in-memory array to the pass engine: about 8 MB of float64.
_ARRAY_BLOCK_BYTES = 8 * 2**20

Block = tuple[np.ndarray, np.ndarray]


def block_rows_for(p: int) -> int:
    """Rows per block so that one float64 block of p columns is about 32 MB."""
    return int(max(256, _BLOCK_BYTES // (8 * max(p, 1))))


def iter_array_blocks(Z, block_rows: int | None = None, start: int = 0, stop: int | None = None) -> Iterator[Block]:
    """(row indices, block) pairs over rows [start, stop) of an in-memory or memory-mapped array."""
    stop = Z.shape[0] if stop is None else stop
    block_rows = block_rows or block_rows_for(Z.shape[1])
    for lo in range(start, stop, block_rows):
        hi = min(stop, lo + block_rows)
        yield np.arange(lo, hi), Z[lo:hi]


class ArrayRows:
    """An in-memory (n, p) array served as a stream of row blocks, the interface of
    `io.streamed_genotypes.StreamedGenotypes` (`n`, `p`, `iter_blocks`, `read_rows_at`,
    `chunk_bounds`, `reader`), so that in-memory data can share the statistics engine.

    Blocks are views of the array (no copy); each kernel's working copies are a few blocks,
    so blocks are 8 MB of float64 (a quarter of a streamed block: the matrix itself is
    already in memory, and smaller blocks keep the passes' temporaries small beside it).
    """

    def __init__(self, Z: np.ndarray, block_rows: int | None = None):
        if np.asarray(Z).ndim != 2:
            raise InputError(f"the instrument matrix must be 2-D, got shape {np.shape(Z)}")
        self.Z = Z
        self.block_rows = int(block_rows or max(256, _ARRAY_BLOCK_BYTES // (8 * max(Z.shape[1], 1))))

    n = property(lambda self: int(self.Z.shape[0]))
    p = property(lambda self: int(self.Z.shape[1]))
    shape = property(lambda self: (self.n, self.p))

    def iter_blocks(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[slice, np.ndarray]]:
        stop = self.n if stop is None else int(stop)
        for lo in range(int(start), stop, self.block_rows):
            hi = min(stop, lo + self.block_rows)
            yield slice(lo, hi), self.Z[lo:hi]

    def read_rows_at(self, positions) -> np.ndarray:
        return np.array(self.Z[np.asarray(positions, dtype=np.intp)], dtype=float)

    def chunk_bounds(self, n_chunks: int) -> list[tuple[int, int]]:
        n_chunks = int(max(1, min(n_chunks, self.n)))
        bounds = np.linspace(0, self.n, n_chunks + 1).astype(int)
        return [(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]


def frozen_copy(arr, dtype=float) -> np.ndarray:
    """A read-only copy (what frozen containers hold, so no caller can change them later)."""
    out = np.array(arr, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out


@dataclass(frozen=True)
class RowVectors:
    """The row-aligned vectors every pass needs: environment codes, exposure, outcome, covariates.

    `env_codes` are integers 0..K-1 indexing `env_levels`. These are the "few
    length-n vectors" of the memory formula; the genotypes come in blocks.
    """

    env_codes: np.ndarray
    env_levels: tuple
    exposure: np.ndarray
    outcome: np.ndarray
    covariates: np.ndarray | None = None
    covariate_names: tuple[str, ...] = ()

    def __post_init__(self):
        codes = np.asarray(self.env_codes)
        if codes.ndim != 1 or codes.dtype.kind not in "iu":
            raise InputError("env_codes must be a 1-D integer vector")
        n = codes.shape[0]
        levels = tuple(self.env_levels)
        if n and (codes.min() < 0 or codes.max() >= len(levels)):
            raise InputError(f"env_codes must lie in 0..{len(levels) - 1}")
        vecs = {}
        for name in ("exposure", "outcome"):
            v = np.asarray(getattr(self, name), dtype=float).ravel()
            if v.shape[0] != n:
                raise InputError(f"{name} has {v.shape[0]} values for {n} rows")
            if not np.all(np.isfinite(v)):
                raise InputError(f"{name} has NaN/inf values")
            vecs[name] = v
        cov = self.covariates
        if cov is not None:
            cov = np.asarray(cov, dtype=float).reshape(n, -1)
            if not np.all(np.isfinite(cov)):
                raise InputError("covariates have NaN/inf values")
        names = tuple(self.covariate_names) or tuple(f"c{j + 1}" for j in range(0 if cov is None else cov.shape[1]))
        object.__setattr__(self, "env_codes", frozen_copy(codes, np.int64))
        object.__setattr__(self, "env_levels", levels)
        object.__setattr__(self, "exposure", frozen_copy(vecs["exposure"]))
        object.__setattr__(self, "outcome", frozen_copy(vecs["outcome"]))
        object.__setattr__(self, "covariates", None if cov is None else frozen_copy(cov))
        object.__setattr__(self, "covariate_names", names)

    @classmethod
    def from_mrdata(cls, data, *, covariates: bool = True) -> RowVectors:
        return cls(
            env_codes=data.env_codes,
            env_levels=data.env_levels,
            exposure=data.exposure,
            outcome=data.outcome,
            covariates=data.covariates if covariates else None,
            covariate_names=(data.covariate_names or ()) if covariates else (),
        )

    @property
    def n(self) -> int:
        return self.env_codes.shape[0]

    @property
    def q(self) -> int:
        return 0 if self.covariates is None else self.covariates.shape[1]

    def rows(self, start: int, stop: int) -> RowVectors:
        """The vectors of rows [start, stop) (what one Dask chunk needs)."""
        return RowVectors(
            self.env_codes[start:stop],
            self.env_levels,
            self.exposure[start:stop],
            self.outcome[start:stop],
            None if self.covariates is None else self.covariates[start:stop],
            self.covariate_names,
        )


def row_index(rows) -> np.ndarray:
    """Row positions of a block: an index array, or a slice (what `GenotypeSource.iter_blocks` yields)."""
    if isinstance(rows, slice):
        if rows.step not in (None, 1) or rows.start is None or rows.stop is None:
            raise InputError(f"a block's rows must be an index array or a slice start:stop, got {rows}")
        return np.arange(rows.start, rows.stop)
    return np.asarray(rows)


__all__ = ["ArrayRows", "Block", "RowVectors", "block_rows_for", "frozen_copy", "iter_array_blocks", "row_index"]
