"""IV estimation from per-environment sufficient statistics accumulated over row blocks.

Everything the linear IV methods need is a sum over samples, so it can be
accumulated block by block (out of core), chunk by chunk on several machines
(`merge` adds partial results exactly), and never needs an n x p float copy of
the genotypes.

First pass: `EnvironmentCrossProducts.accumulate` reads the rows once and keeps,
per environment e, the count n_e, the column sums and the uncentred
cross-products of the row vector x = [C, Z, D, Y] (C: covariates, Z: the p
instrument columns, D: exposure, Y: outcome), i.e. Z'Z, Z'D, Z'Y, Z'C, C'C,
C'D, C'Y, D'D, Y'Y and D'Y. The intercept and the environment fixed effects are
partialled out algebraically by centring (within each environment for fixed
effects), the covariates and any instruments used as controls by a Schur
complement (`partial_out`). From these: OLS / 2SLS / LIML / Fuller point
estimates with classical SEs, the classical first-stage F, the classical
Anderson-Rubin set, Sargan's J and per-variant summary statistics.

Second pass: heteroskedasticity-robust (HC0) quantities need per-row residuals.
With the first-pass estimates fixed, every residual is a known linear function
of the residualised row [z~, d~, y~] (`PartialledDesign.residual_rows`), so a
second streamed pass accumulates the weighted Gram matrices
sum_i u_i u'_i v_i v_i' ("meats", `MeatRequest`) that the robust SE, the
Kleibergen-Paap F, Hansen's J and the robust AR set need. The robust 2SLS SE
needs only v_i = z~_i' pi (one number per row); the others need the p x p
matrix. Many requests, for several designs and estimators, share one pass
(`accumulate_meats`).

Peak memory (bytes), with n samples, p instrument columns, q covariates,
m = q + p + 2, K environments and b rows per block:

    first pass:   B_in + 16 b m + 8 (K + 2) m^2                      + 8 n (q + 4)
    second pass:  B_in + 8 b (4 (k + 2) + 2 max_r s_r j_r) + 8 sum_r (s_r j_r)^2 + 8 n (q + 4) + S

B_in is the caller's block (b p bytes as int8, 4 b p as float32); 16 b m the
float64 copy of the block with C, D, Y appended plus its per-environment
subset; 8 (K + 2) m^2 the K accumulators, one block product and its sum;
8 n (q + 4) the row-aligned vectors (environment codes, exposure, outcome,
covariates). In the second pass k is the design's instruments: 4 b (k + 2) for
the block's float instrument columns and the residualised rows being formed,
2 b s j for the projected rows of a request with s directions and j residuals,
(s j)^2 for its accumulator (s = 1 for a robust 2SLS SE, s = k for the robust
F, J and AR), and S the designs' own arrays (8 (k + 2) (k + 2 + c) for the
Gram matrix and the coefficients on c controls, 8 K m for the means).
No term is n x p. `tests/test_sufficient_stats.py` checks both bounds with
tracemalloc.

Conventions (degrees of freedom, HC0 without small-sample correction, which
statistic the F and J are) follow `iv.fit_kclass`, `weak_iv`, `diagnostics`
and `sumstats`, and the tests check agreement with them to 1e-10.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import scipy.linalg as sla

from invariant_mr.errors import InputError
from invariant_mr.estimators.iv import WaldInference, parse_kappa

#: Eigenvalues of the scaled Gram matrix of the controls below this share of the largest are
#: exact collinearity (rounding leaves them near machine epsilon), so those directions are dropped.
_CONTROL_RTOL = 1e-12
#: The same for the instruments; `iv.InstrumentProjector` trusts the Gram matrix above 1e-10.
_INSTRUMENT_RTOL = 1e-10
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

    def reader(self, start: int, stop: int):
        return lambda: self.iter_blocks(start, stop)


# ----------------------------------------------------------------------------- row vectors
def _readonly(arr, dtype=float) -> np.ndarray:
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
        object.__setattr__(self, "env_codes", _readonly(codes, np.int64))
        object.__setattr__(self, "env_levels", levels)
        object.__setattr__(self, "exposure", _readonly(vecs["exposure"]))
        object.__setattr__(self, "outcome", _readonly(vecs["outcome"]))
        object.__setattr__(self, "covariates", None if cov is None else _readonly(cov))
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


def _fill_missing(target: np.ndarray, raw: np.ndarray, fill: np.ndarray | None) -> None:
    """Replace missing genotypes (negative int8 codes, NaN floats) in `target` by `fill`."""
    missing = raw < 0 if raw.dtype.kind in "iu" else np.isnan(target)
    if missing.any():
        if fill is None:
            raise InputError("the genotype block has missing values and no imputation values were given (fill=)")
        r, c = np.nonzero(missing)
        target[r, c] = fill[c]


def _float_columns(block: np.ndarray, cols, fill: np.ndarray | None, z_map: np.ndarray | None) -> np.ndarray:
    """Float64 columns `cols` of the (possibly mapped) instrument block, missing values filled."""
    if z_map is not None:
        full = np.asarray(block, dtype=float)
        if full is block or np.shares_memory(full, block):
            full = full.copy()
        _fill_missing(full, np.asarray(block), fill)
        return full @ z_map[:, cols]
    block = np.asarray(block)
    if block.dtype == np.float64 and cols.size == block.shape[1] and np.array_equal(cols, np.arange(cols.size)):
        # Every column of an already float64 block (e.g. imputed dosages): read it in place.
        if not np.isnan(block).any():
            return block
    raw = block[:, cols]
    out = raw.astype(float)
    _fill_missing(out, raw, None if fill is None else fill[cols])
    return out


def _copy_columns(out: np.ndarray, where: np.ndarray, source: np.ndarray, columns: np.ndarray) -> None:
    """out[:, where] = source[:, columns], as one slice copy when both are contiguous runs."""
    at = np.flatnonzero(where)
    if at.size and at[-1] - at[0] + 1 == at.size and columns[-1] - columns[0] + 1 == columns.size and np.all(
        np.diff(columns) == 1
    ):
        out[:, at[0] : at[-1] + 1] = source[:, columns[0] : columns[-1] + 1]
    else:
        out[:, where] = source[:, columns]


# ----------------------------------------------------------------------------- first pass
@dataclass(frozen=True)
class EnvironmentCrossProducts:
    """Per-environment counts, sums and uncentred cross-products of x = [C, Z, D, Y].

    counts (K,), sums (K, m), cross (K, m, m) with m = q + p + 2 (q covariates,
    p instrument columns). `z_map` (p_source, p) records a linear map applied to
    the source columns (`project`/`select`), so that a second pass over the
    source blocks reproduces the same instruments; None means the identity.
    Named views (`zz`, `zd`, `zc`, `cc`, `dd`, ...) are per environment;
    `pooled()` and `environment(level)` give one-environment statistics.
    """

    counts: np.ndarray
    sums: np.ndarray
    cross: np.ndarray
    env_levels: tuple
    n_covariates: int = 0
    z_map: np.ndarray | None = None
    covariate_names: tuple[str, ...] = ()

    def __post_init__(self):
        counts = np.asarray(self.counts, dtype=np.int64)
        K = counts.shape[0]
        sums = np.asarray(self.sums, dtype=float)
        cross = np.asarray(self.cross, dtype=float)
        m = sums.shape[1]
        if sums.shape != (K, m) or cross.shape != (K, m, m) or len(self.env_levels) != K:
            raise InputError("counts, sums, cross and env_levels have inconsistent shapes")
        if m < self.n_covariates + 3:
            raise InputError("the statistics hold no instrument column")
        # The arrays are taken over, not copied (a copy would double the K m^2 peak), and frozen.
        for name, arr in (("counts", counts), ("sums", sums), ("cross", cross)):
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "env_levels", tuple(self.env_levels))
        if self.z_map is not None:
            object.__setattr__(self, "z_map", _readonly(self.z_map))

    # -------------------------------------------------------------- building
    @classmethod
    def accumulate(
        cls, blocks: Iterable[Block], vectors: RowVectors, *, fill: np.ndarray | None = None
    ) -> EnvironmentCrossProducts:
        """One pass over `blocks`, an iterable of (rows, genotype block) pairs.

        Rows (an index array, or a slice as `GenotypeSource.iter_blocks`
        yields) index `vectors`; blocks may be int8 (negative = missing),
        float32 or float64 (NaN = missing), and every missing value is replaced
        by `fill[j]` (e.g. twice the allele frequency from the QC pass).
        """
        kernel = CrossProductKernel(vectors.env_levels, vectors.q, vectors.covariate_names, fill)
        acc = kernel.start()
        for rows, block in blocks:
            kernel.add(acc, rows, block, vectors)
        return kernel.finish(acc)

    @classmethod
    def from_arrays(
        cls, Z, vectors: RowVectors, *, block_rows: int | None = None, fill: np.ndarray | None = None
    ) -> EnvironmentCrossProducts:
        """`accumulate` over row blocks of an in-memory or memory-mapped (n, p) array."""
        if Z.shape[0] != vectors.n:
            raise InputError(f"the genotypes have {Z.shape[0]} rows and the vectors {vectors.n}")
        return cls.accumulate(iter_array_blocks(Z, block_rows), vectors, fill=fill)

    def merge(self, other: EnvironmentCrossProducts) -> EnvironmentCrossProducts:
        """Statistics of the union of two disjoint sets of rows (exact: sums add)."""
        if (
            self.env_levels != other.env_levels
            or self.n_covariates != other.n_covariates
            or self.sums.shape != other.sums.shape
        ):
            raise InputError("cannot merge statistics of different environments, covariates or instruments")
        if (self.z_map is None) != (other.z_map is None) or (
            self.z_map is not None and not np.array_equal(self.z_map, other.z_map)
        ):
            raise InputError("cannot merge statistics of differently mapped instruments")
        return EnvironmentCrossProducts(
            self.counts + other.counts,
            self.sums + other.sums,
            self.cross + other.cross,
            self.env_levels,
            self.n_covariates,
            self.z_map,
            self.covariate_names,
        )

    __add__ = merge

    # -------------------------------------------------------------- shapes and views
    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @property
    def q(self) -> int:
        return self.n_covariates

    @property
    def p(self) -> int:
        return self.sums.shape[1] - self.q - 2

    @property
    def m(self) -> int:
        return self.sums.shape[1]

    @property
    def _c(self) -> slice:
        return slice(0, self.q)

    @property
    def _z(self) -> slice:
        return slice(self.q, self.q + self.p)

    @property
    def _d(self) -> int:
        return self.q + self.p

    @property
    def _y(self) -> int:
        return self.q + self.p + 1

    zz = property(lambda s: s.cross[:, s._z, s._z], doc="Z'Z per environment (K, p, p)")
    zd = property(lambda s: s.cross[:, s._z, s._d], doc="Z'D (K, p)")
    zy = property(lambda s: s.cross[:, s._z, s._y], doc="Z'Y (K, p)")
    zc = property(lambda s: s.cross[:, s._z, s._c], doc="Z'C (K, p, q)")
    cc = property(lambda s: s.cross[:, s._c, s._c], doc="C'C (K, q, q)")
    cd = property(lambda s: s.cross[:, s._c, s._d], doc="C'D (K, q)")
    cy = property(lambda s: s.cross[:, s._c, s._y], doc="C'Y (K, q)")
    dd = property(lambda s: s.cross[:, s._d, s._d], doc="D'D (K,)")
    yy = property(lambda s: s.cross[:, s._y, s._y], doc="Y'Y (K,)")
    dy = property(lambda s: s.cross[:, s._d, s._y], doc="D'Y (K,)")
    z_sums = property(lambda s: s.sums[:, s._z], doc="column sums of Z (K, p)")

    def environment(self, level: Hashable) -> EnvironmentCrossProducts:
        """The statistics of one environment (a one-environment object)."""
        e = self.env_index(level)
        return EnvironmentCrossProducts(
            self.counts[e : e + 1], self.sums[e : e + 1], self.cross[e : e + 1], (self.env_levels[e],),
            self.q, self.z_map, self.covariate_names,
        )

    def pooled(self) -> EnvironmentCrossProducts:
        """All rows as one environment (no environment fixed effects)."""
        return EnvironmentCrossProducts(
            self.counts.sum(keepdims=True), self.sums.sum(axis=0, keepdims=True),
            self.cross.sum(axis=0, keepdims=True), ("pooled",), self.q, self.z_map, self.covariate_names,
        )

    def with_covariates(self, extra_cross: ExtraCovariateCrossProducts) -> EnvironmentCrossProducts:
        """These statistics with the covariates of `extra_cross` appended after the existing ones
        (e.g. genotype PCs): only the k new rows of the cross-products come from a pass (O(n k m),
        `ExtraCovariateKernel`), the rest is taken from these (no second n m^2 pass)."""
        e = extra_cross
        q, k, K = self.q, e.sums.shape[1], len(self.env_levels)
        if e.cross.shape != (K, k, self.m + k) or not np.array_equal(e.counts, self.counts):
            raise InputError("the extra covariates' cross-products do not match these statistics")
        m2 = self.m + k
        old = np.r_[0:q, q + k : m2]  # positions of the old columns in the new row vector
        sums = np.empty((K, m2))
        sums[:, old] = self.sums
        sums[:, q : q + k] = e.sums
        cross = np.empty((K, m2, m2))
        cross[np.ix_(range(K), old, old)] = self.cross
        cross[:, q : q + k, :] = e.cross
        cross[:, :, q : q + k] = np.swapaxes(e.cross, 1, 2)
        return EnvironmentCrossProducts(self.counts.copy(), sums, cross, self.env_levels, q + k, self.z_map,
                                        (*self.covariate_names, *e.names))

    def to_moments(self):
        """The instruments' `moments.EnvironmentMoments` (counts, sums, Z'Z): the closed-form
        invariant directions can learn from the same first pass."""
        from invariant_mr.instruments.moments import EnvironmentMoments

        return EnvironmentMoments(self.counts.copy(), self.z_sums.copy(), self.zz.copy())

    def env_index(self, level: Hashable) -> int:
        for i, lv in enumerate(self.env_levels):
            if lv == level or str(lv) == str(level):
                return i
        raise InputError(f"unknown environment {level!r}; levels are {', '.join(map(str, self.env_levels))}")

    def project(self, W: np.ndarray) -> EnvironmentCrossProducts:
        """Statistics of the instruments Z W (p, r), e.g. learned linear directions, with no new pass."""
        W = np.asarray(W, dtype=float)
        if W.ndim != 2 or W.shape[0] != self.p:
            raise InputError(f"the map must have {self.p} rows, got shape {W.shape}")
        T = sla.block_diag(np.eye(self.q), W, np.eye(2))
        cross = np.einsum("ai,kab,bj->kij", T, self.cross, T, optimize=True)
        z_map = W if self.z_map is None else self.z_map @ W
        return EnvironmentCrossProducts(
            self.counts, self.sums @ T, cross, self.env_levels, self.q, z_map, self.covariate_names
        )

    def select(self, columns) -> EnvironmentCrossProducts:
        """Statistics of a subset of the instrument columns (indices or a boolean mask)."""
        idx = _indices(columns, self.p)
        keep = np.concatenate([np.arange(self.q), self.q + idx, [self._d, self._y]])
        if self.z_map is None:
            z_map = np.zeros((self.p, idx.size))
            z_map[idx, np.arange(idx.size)] = 1.0
        else:
            z_map = self.z_map[:, idx]
        return EnvironmentCrossProducts(
            self.counts, self.sums[:, keep], self.cross[:, keep][:, :, keep], self.env_levels, self.q, z_map,
            self.covariate_names,
        )


def _indices(columns, p: int) -> np.ndarray:
    idx = np.asarray(columns)
    if idx.dtype == bool:
        if idx.shape != (p,):
            raise InputError(f"a column mask must have {p} entries")
        return np.flatnonzero(idx)
    idx = idx.astype(np.int64).ravel()
    if idx.size and (idx.min() < 0 or idx.max() >= p):
        raise InputError(f"column indices must lie in 0..{p - 1}")
    return idx


def _row_vectors(block: np.ndarray, rows: np.ndarray, vectors: RowVectors, q: int, fill) -> np.ndarray:
    """The block's rows as [C, Z, D, Y] (b, q + p + 2), float64, missing calls filled; C = the q covariates."""
    b, p = block.shape
    x = np.empty((b, q + p + 2))
    x[:, q : q + p] = block
    _fill_missing(x[:, q : q + p], block, fill)
    if q:
        x[:, :q] = vectors.covariates[rows]
    x[:, q + p] = vectors.exposure[rows]
    x[:, q + p + 1] = vectors.outcome[rows]
    return x


def _by_environment(x: np.ndarray, codes: np.ndarray, n_envs: int):
    """(e, the rows of x in environment e) for every environment with rows in this block (no copy for one)."""
    for e in range(n_envs):
        in_e = codes == e
        size = int(in_e.sum())
        if size:
            yield e, (x if size == x.shape[0] else x[in_e])


class CrossProductKernel:
    """The first pass as a kernel: `start`, `add` each block, `finish` (picklable, for Dask)."""

    def __init__(self, env_levels, q: int, covariate_names=(), fill: np.ndarray | None = None):
        self.env_levels = tuple(env_levels)
        self.q = q
        self.covariate_names = tuple(covariate_names)
        self.fill = None if fill is None else np.asarray(fill, dtype=float)

    def start(self) -> dict:
        return {"counts": None, "sums": None, "cross": None}

    def add(self, acc: dict, rows, block, vectors: RowVectors) -> None:
        block = np.asarray(block)
        if block.ndim != 2:
            raise InputError(f"a genotype block must be 2-D, got shape {block.shape}")
        rows = row_index(rows)
        b, p = block.shape
        if rows.shape[0] != b:
            raise InputError(f"a block has {b} rows but {rows.shape[0]} row indices")
        q, K = self.q, len(self.env_levels)
        m = q + p + 2
        if acc["cross"] is None:
            acc["counts"] = np.zeros(K, dtype=np.int64)
            acc["sums"] = np.zeros((K, m))
            acc["cross"] = np.zeros((K, m, m))
        elif acc["sums"].shape[1] != m:
            raise InputError(f"blocks have different numbers of columns ({p} vs {acc['sums'].shape[1] - q - 2})")
        # One float64 copy of the block with C, D and Y appended: every cross-product of the
        # row vector then comes from one symmetric product per environment.
        x = _row_vectors(block, rows, vectors, q, self.fill)
        for e, sub in _by_environment(x, vectors.env_codes[rows], K):
            acc["counts"][e] += sub.shape[0]
            acc["sums"][e] += sub.sum(axis=0)
            acc["cross"][e] += sub.T @ sub

    def finish(self, acc: dict) -> EnvironmentCrossProducts:
        if acc["cross"] is None:
            raise InputError("no genotype blocks were read")
        return EnvironmentCrossProducts(
            acc["counts"], acc["sums"], acc["cross"], self.env_levels, self.q, None, self.covariate_names
        )

    @staticmethod
    def merge(a: EnvironmentCrossProducts, b: EnvironmentCrossProducts) -> EnvironmentCrossProducts:
        return a.merge(b)


# ----------------------------------------------------------------------------- partialling out
@dataclass(frozen=True)
class ExtraCovariateCrossProducts:
    """Per environment, the sums of k new covariates E and their cross-products with the row
    vector [C, E, Z, D, Y] (K, k, q + k + p + 2): what `EnvironmentCrossProducts.with_covariates` needs."""

    counts: np.ndarray
    sums: np.ndarray
    cross: np.ndarray
    names: tuple[str, ...]


class ExtraCovariateKernel:
    """A pass that appends covariates to a first pass's statistics: per block, E' [C, E, Z, D, Y]
    for the k new covariates E (the last k columns of `vectors.covariates`); O(k m) per row.

    `q` is the number of covariates before the new ones; `vectors` must hold q + k covariates.
    """

    def __init__(self, env_levels, q: int, names: Sequence[str], fill: np.ndarray | None = None):
        self.env_levels = tuple(env_levels)
        self.q = int(q)
        self.names = tuple(names)
        self.fill = None if fill is None else np.asarray(fill, dtype=float)

    def start(self) -> dict:
        return {"counts": None, "sums": None, "cross": None}

    def add(self, acc: dict, rows, block, vectors: RowVectors) -> None:
        rows = row_index(rows)
        block = np.asarray(block)
        p = block.shape[1]
        k, K = len(self.names), len(self.env_levels)
        q2 = self.q + k
        if vectors.q != q2:
            raise InputError(f"the row vectors hold {vectors.q} covariates, expected {q2}")
        m2 = q2 + p + 2
        if acc["cross"] is None:
            acc["counts"] = np.zeros(K, dtype=np.int64)
            acc["sums"] = np.zeros((K, k))
            acc["cross"] = np.zeros((K, k, m2))
        x = _row_vectors(block, rows, vectors, q2, self.fill)
        for e, sub in _by_environment(x, vectors.env_codes[rows], K):
            E = sub[:, self.q : q2]
            acc["counts"][e] += sub.shape[0]
            acc["sums"][e] += E.sum(axis=0)
            acc["cross"][e] += E.T @ sub

    def finish(self, acc: dict) -> ExtraCovariateCrossProducts:
        if acc["cross"] is None:
            raise InputError("no genotype blocks were read")
        return ExtraCovariateCrossProducts(acc["counts"], acc["sums"], acc["cross"], self.names)

    @staticmethod
    def merge(a: ExtraCovariateCrossProducts, b: ExtraCovariateCrossProducts) -> ExtraCovariateCrossProducts:
        return ExtraCovariateCrossProducts(a.counts + b.counts, a.sums + b.sums, a.cross + b.cross, a.names)


#: Below this many columns the eigendecomposition is cheap and always used; above it a Cholesky
#: factor whitens a well-conditioned matrix at about a tenth of the cost (p^3 / 3 + p^3 / 3 flops
#: instead of about 9 p^3), which is what dominates the algebra at large p.
_CHOLESKY_MIN_K = 64


def _cholesky_whitening(Gs: np.ndarray, rtol: float) -> np.ndarray | None:
    """T with T' Gs T = I from the Cholesky factor of a unit-diagonal PSD matrix, or None when the
    eigendecomposition must decide the rank.

    Any whitening gives the same quadratic forms, solves and whitened meats. It is used only when
    every eigenvalue provably exceeds `rtol` times the largest, so the eigenvalue rule would keep
    every direction too: lambda_min >= 1 / trace(Gs^-1) = 1 / ||L^-1||_F^2 and
    lambda_max <= trace(Gs) = k; a factor 10 keeps rounding away from the boundary.
    """
    k = Gs.shape[0]
    if k < _CHOLESKY_MIN_K:
        return None
    try:
        L = np.linalg.cholesky(Gs)
    except np.linalg.LinAlgError:
        return None
    L_inv = sla.solve_triangular(L, np.eye(k), lower=True, check_finite=False)
    trace_inv = float(np.einsum("ij,ij->", L_inv, L_inv))
    if not np.isfinite(trace_inv) or 1.0 / trace_inv <= 10.0 * rtol * k:
        return None
    return L_inv.T


class _SymmetricInverse:
    """Pseudo-inverse and whitening of a symmetric PSD matrix from one scaled eigendecomposition.

    `T` (k, rank) satisfies T' G T = I on the kept directions, so for a
    residualised instrument matrix Zt with Gram G, Zt T is an orthonormal
    basis of its column space (the coordinates `weak_iv` and `diagnostics` use).
    """

    def __init__(self, G: np.ndarray, rtol: float):
        k = G.shape[0]
        diag = np.diag(G).copy()
        top = float(diag.max()) if k else 0.0
        live = diag > rtol * max(top, 1e-300)
        T = np.zeros((k, 0))
        if live.any():
            scale = np.sqrt(diag[live])
            Gs = G[np.ix_(live, live)] / np.outer(scale, scale)
            W = _cholesky_whitening(Gs, rtol)
            if W is None:
                vals, vecs = np.linalg.eigh(Gs)
                keep = vals > rtol * vals[-1]
                W = vecs[:, keep] / np.sqrt(vals[keep])
            T = np.zeros((k, W.shape[1]))
            T[live] = W / scale[:, None]
        self.T = T
        self.rank = T.shape[1]

    def solve(self, b: np.ndarray) -> np.ndarray:
        return self.T @ (self.T.T @ b)


@dataclass(frozen=True, eq=False)
class PartialledDesign:
    """One regression's statistics with its exogenous controls partialled out.

    `gram` is [Zt, d~, y~]' [Zt, d~, y~] for the k selected instruments Zt,
    exposure d~ and outcome y~, each residualised on the controls: intercept
    (or environment fixed effects), covariates and `z_controls` instrument
    columns. `n_controls` is the rank of those controls. `residual_rows` turns
    raw rows into [Zt, d~, y~] rows for the second pass.
    """

    scope: str
    n: int
    n_controls: int
    instruments: np.ndarray
    z_controls: np.ndarray
    gram: np.ndarray
    envs: np.ndarray  # (K,) bool: environments whose rows belong to this regression
    means: np.ndarray  # (K, m) per-environment centring of the row vector
    control_cols: np.ndarray  # columns of the row vector used as (centred) controls
    target_cols: np.ndarray  # columns of [Z_I, D, Y]
    coef: np.ndarray  # (len(control_cols), k + 2): regression of the targets on the controls
    q: int
    z_map: np.ndarray | None
    fill: np.ndarray | None = None

    @property
    def k(self) -> int:
        return self.instruments.size

    def residual_rows(self, rows, block, vectors: RowVectors, fill=None) -> np.ndarray:
        """[Zt, d~, y~] for the rows of one block that belong to this regression."""
        rows = row_index(rows)
        codes = vectors.env_codes[rows]
        keep = self.envs[codes]
        block = np.asarray(block)
        if not keep.all():
            rows, codes, block = rows[keep], codes[keep], block[keep]
        fill = self.fill if fill is None else fill
        q, p = self.q, self.means.shape[1] - self.q - 2
        if self._all_instruments_in_order(p):
            return self._residual_rows_all(rows, codes, block, vectors, fill, p)
        z_cols = np.concatenate([self.target_cols, self.control_cols])
        z_cols = np.unique(z_cols[(z_cols >= q) & (z_cols < q + p)]) - q
        zf = _float_columns(block, z_cols, fill, self.z_map) if z_cols.size else np.empty((rows.size, 0))
        lookup = np.full(p, -1)
        lookup[z_cols] = np.arange(z_cols.size)

        def gather(cols: np.ndarray) -> np.ndarray:
            out = np.empty((rows.size, cols.size))
            is_c, is_z = cols < q, (cols >= q) & (cols < q + p)
            if is_c.any():
                out[:, is_c] = vectors.covariates[np.ix_(rows, cols[is_c])]
            if is_z.any():
                _copy_columns(out, is_z, zf, lookup[cols[is_z] - q])
            for col, vec in ((q + p, vectors.exposure), (q + p + 1, vectors.outcome)):
                at = cols == col
                if at.any():
                    out[:, at] = vec[rows][:, None]
            if codes.size and np.all(codes == codes[0]):  # one environment: no per-row gather
                out -= self.means[codes[0], cols]
            else:
                out -= self.means[:, cols][codes]
            return out

        R = gather(self.target_cols)
        if self.control_cols.size:
            R -= gather(self.control_cols) @ self.coef
        return R

    def _all_instruments_in_order(self, p: int) -> bool:
        """Every source column is an instrument, in order, and none is a control (the common case)."""
        return (
            self.z_map is None
            and self.z_controls.size == 0
            and self.instruments.size == p
            and bool(np.array_equal(self.instruments, np.arange(p)))
        )

    def _residual_rows_all(self, rows, codes, block, vectors: RowVectors, fill, p: int) -> np.ndarray:
        """`residual_rows` when the targets are [Z, D, Y] in order: the block is cast straight into
        the output (no column gathers), which halves the memory traffic of the second pass."""
        R = np.empty((rows.size, p + 2))
        R[:, :p] = block
        _fill_missing(R[:, :p], block, fill)
        R[:, p] = vectors.exposure[rows]
        R[:, p + 1] = vectors.outcome[rows]
        R -= self.means[:, self.target_cols][codes]
        if self.control_cols.size:  # covariates only (no instrument controls on this path)
            C = vectors.covariates[np.ix_(rows, self.control_cols)] - self.means[:, self.control_cols][codes]
            R -= C @ self.coef
        return R


def partial_out(
    stats: EnvironmentCrossProducts,
    *,
    env: Hashable | None = None,
    env_fixed_effects: bool = True,
    covariates: bool = True,
    instruments=None,
    z_controls=None,
    fill: np.ndarray | None = None,
) -> PartialledDesign:
    """The design of one regression: pooled (`env=None`) or in one environment.

    Pooled with `env_fixed_effects`: intercept and environment dummies, i.e.
    centring within environments; pooled without: an intercept; in one
    environment: an intercept. `covariates` adds the covariates and
    `z_controls` (indices) instrument columns as exogenous controls;
    `instruments` (indices, default all not in `z_controls`) are the
    instruments. `fill` is the missing-genotype imputation the second pass
    should use.
    """
    K = len(stats.env_levels)
    q, p = stats.q, stats.p
    zc = _indices([] if z_controls is None else z_controls, p)
    if instruments is None:
        zi = np.setdiff1d(np.arange(p), zc)
    else:
        zi = _indices(instruments, p)
    envs = np.zeros(K, dtype=bool)
    if env is None:
        envs[:] = stats.counts > 0
        scope = "pooled"
    else:
        e = stats.env_index(env)
        envs[e] = True
        scope = f"env:{stats.env_levels[e]}"
    counts = stats.counts[envs]
    if counts.sum() == 0:
        raise InputError(f"no rows in scope {scope}")
    safe = np.maximum(stats.counts, 1)[:, None]
    if env is None and not env_fixed_effects:
        n = int(counts.sum())
        total = stats.sums[envs].sum(axis=0)
        S = stats.cross[envs].sum(axis=0) - np.outer(total, total) / n
        means = np.broadcast_to(total / n, stats.sums.shape).copy()
        absorbed = 1
    else:
        means = stats.sums / safe
        S = np.zeros((stats.m, stats.m))
        for e in np.flatnonzero(envs):
            S += stats.cross[e] - np.outer(stats.sums[e], stats.sums[e]) / stats.counts[e]
        n = int(counts.sum())
        absorbed = int(envs.sum())
    S = (S + S.T) / 2
    control_cols = np.concatenate([np.arange(q) if covariates else np.arange(0), q + zc]).astype(np.int64)
    target_cols = np.concatenate([q + zi, [q + p, q + p + 1]]).astype(np.int64)
    S_tt = S[np.ix_(target_cols, target_cols)]
    if control_cols.size:
        S_cc = S[np.ix_(control_cols, control_cols)]
        S_ct = S[np.ix_(control_cols, target_cols)]
        inv = _SymmetricInverse(S_cc, _CONTROL_RTOL)
        coef = inv.solve(S_ct)
        gram = S_tt - S_ct.T @ coef
        rank_c = inv.rank
    else:
        coef = np.zeros((0, target_cols.size))
        gram = S_tt
        rank_c = 0
    return PartialledDesign(
        scope=scope,
        n=n,
        n_controls=absorbed + rank_c,
        instruments=zi,
        z_controls=zc,
        gram=(gram + gram.T) / 2,
        envs=envs,
        means=means,
        control_cols=control_cols,
        target_cols=target_cols,
        coef=coef,
        q=q,
        z_map=stats.z_map,
        fill=None if fill is None else np.asarray(fill, dtype=float),
    )


# ----------------------------------------------------------------------------- second pass
@dataclass(frozen=True, eq=False)
class MeatRequest:
    """A weighted Gram matrix over the rows of `design`, for robust covariances.

    With R the residualised rows [Zt, d~, y~] (n, k + 2), directions V (k + 2, s)
    and residual coefficients U (k + 2, j), the result is the (j s, j s) Gram
    matrix of [R V * (R U)_1, ..., R V * (R U)_j]: block (a, b) is
    sum_i u_ia u_ib v_i v_i'. `directions=None` means the instrument columns
    themselves (s = k, no n k^2 product to form R V; change coordinates after
    the pass, which costs k^3 instead). With `per_column=True` (s = k, V the instrument
    columns, U = [d~, y~]) it is instead the (5, k) per-column moments
    sum z~^2 d~^2, sum z~^3 d~, sum z~^2 y~^2, sum z~^3 y~, sum z~^4 that
    robust per-variant SEs need, in O(k) memory.
    """

    design: PartialledDesign
    directions: np.ndarray | None = None
    residuals: np.ndarray | None = None
    per_column: bool = False

    def zeros(self) -> np.ndarray:
        if self.per_column:
            return np.zeros((5, self.design.k))
        s = self.design.k if self.directions is None else self.directions.shape[1]
        size = s * self.residuals.shape[1]
        return np.zeros((size, size))

    def add(self, acc: np.ndarray, R: np.ndarray) -> None:
        if self.per_column:
            k = self.design.k
            Z, d, y = R[:, :k], R[:, k], R[:, k + 1]
            Z2 = Z * Z
            acc[0] += Z2.T @ (d * d)
            acc[2] += Z2.T @ (y * y)
            Z2 *= Z
            acc[1] += Z2.T @ d
            acc[3] += Z2.T @ y
            Z2 *= Z
            acc[4] += Z2.sum(axis=0)
            return
        V = R[:, : self.design.k] if self.directions is None else R @ self.directions
        U = R @ self.residuals
        W = (V[:, None, :] * U[:, :, None]).reshape(R.shape[0], -1) if U.shape[1] > 1 else V * U
        acc += W.T @ W


class MeatKernel:
    """The second pass as a kernel (picklable, for Dask): all requests share one read of the rows."""

    def __init__(self, requests: Sequence[MeatRequest], fill: np.ndarray | None = None):
        self.requests = list(requests)
        self.fill = None if fill is None else np.asarray(fill, dtype=float)
        designs: list[PartialledDesign] = []
        self.groups: list[tuple[PartialledDesign, list[int]]] = []
        for i, req in enumerate(self.requests):
            for design, members in self.groups:
                if design is req.design:
                    members.append(i)
                    break
            else:
                designs.append(req.design)
                self.groups.append((req.design, [i]))

    def start(self) -> list[np.ndarray]:
        return [req.zeros() for req in self.requests]

    def add(self, acc: list[np.ndarray], rows, block, vectors: RowVectors) -> None:
        for design, members in self.groups:
            R = design.residual_rows(rows, block, vectors, self.fill)
            if R.shape[0] == 0:
                continue
            for i in members:
                self.requests[i].add(acc[i], R)

    def finish(self, acc):
        return tuple(acc)

    @staticmethod
    def merge(a: tuple, b: tuple) -> tuple:
        return tuple(x + y for x, y in zip(a, b))


class RowPasses(Protocol):
    """Something that can run a kernel over all rows: `LocalPasses` or `dask_passes.DaskPasses`."""

    def run(self, kernel): ...


class LocalPasses:
    """Passes over the rows in this process: `make_blocks()` returns a fresh iterable of blocks."""

    def __init__(self, make_blocks: Callable[[], Iterable[Block]], vectors: RowVectors):
        self.make_blocks = make_blocks
        self.vectors = vectors

    @classmethod
    def from_array(cls, Z, vectors: RowVectors, block_rows: int | None = None) -> LocalPasses:
        return cls(lambda: iter_array_blocks(Z, block_rows), vectors)

    def run(self, kernel):
        acc = kernel.start()
        for rows, block in self.make_blocks():
            kernel.add(acc, rows, block, self.vectors)
        return kernel.finish(acc)


def accumulate_meats(passes: RowPasses, requests: Sequence[MeatRequest]) -> tuple[np.ndarray, ...]:
    """One second pass for all `requests` (possibly of different designs); results in order."""
    if not requests:
        return ()
    return passes.run(MeatKernel(requests))


def _need_rows(passes, what: str):
    if passes is None:
        raise InputError(f"{what} needs a second pass over the rows (pass `passes=`) or precomputed `meats=`")
    return passes


# ----------------------------------------------------------------------------- k-class
@dataclass(frozen=True)
class StatsKClassFit(WaldInference):
    """A k-class fit from sufficient statistics: the exposure's coefficient and its inference.

    Field names follow `iv.KClassFit`, so `estimation.estimate_from_fit` accepts it.
    """

    estimate: float
    se: float
    kappa: float
    n: int
    n_instruments: int
    first_stage_f: float | None
    cov_type: str
    scope: str = "pooled"
    n_controls: int = 0
    estimator: str | None = None

    def summary(self) -> str:
        lo, hi = self.ci()
        f = "" if self.first_stage_f is None else f", F={self.first_stage_f:.1f}"
        return (
            f"{self.scope}: {self.estimate:.4f} (SE {self.se:.4f}, 95% CI [{lo:.4f}, {hi:.4f}], "
            f"kappa={self.kappa:.4f}, n={self.n}, k={self.n_instruments}{f}, {self.cov_type})"
        )


@dataclass(frozen=True)
class _Parts:
    """Instrument algebra of a design: Gram inverse and the d~, y~ projections."""

    inv: _SymmetricInverse
    a: np.ndarray  # Zt' y~
    c: np.ndarray  # Zt' d~
    yy: float
    dd: float
    dy: float
    k: int

    @classmethod
    def of(cls, design: PartialledDesign) -> _Parts:
        """The design's instrument algebra, computed once per design (a k^3 eigendecomposition)."""
        cached = design.__dict__.get("_parts")
        if cached is None:
            cached = cls._compute(design)
            object.__setattr__(design, "_parts", cached)
        return cached

    @classmethod
    def _compute(cls, design: PartialledDesign) -> _Parts:
        k = design.k
        G = design.gram
        inv = _SymmetricInverse(G[:k, :k], _INSTRUMENT_RTOL)
        return cls(inv, G[:k, k + 1], G[:k, k], float(G[k + 1, k + 1]), float(G[k, k]), float(G[k, k + 1]), k)

    @property
    def rank(self) -> int:
        return self.inv.rank

    def quad(self, u, v) -> float:
        return float((self.inv.T.T @ u) @ (self.inv.T.T @ v))


def _kclass_point(design: PartialledDesign, kind: str, value):
    """(theta, kappa, s = the exposure's pivot, parts)."""
    if kind == "ols":
        pr = _Parts.of(design) if design.k else None
        dd = float(design.gram[design.k, design.k])
        return float(design.gram[design.k, design.k + 1]) / dd, 0.0, dd, pr
    pr = _Parts.of(design)
    if pr.rank == 0:
        raise InputError("the instruments are collinear with the exogenous controls")
    cgc, agc, aga = pr.quad(pr.c, pr.c), pr.quad(pr.a, pr.c), pr.quad(pr.a, pr.a)
    if kind == "tsls":
        kap = 1.0
    elif kind == "fixed":
        kap = value
    else:
        W1 = np.array([[pr.yy, pr.dy], [pr.dy, pr.dd]])
        W2 = W1 - np.array([[aga, agc], [agc, cgc]])
        kap = float(sla.eigh(W1, W2, eigvals_only=True).min())
        if kind == "fuller":
            kap -= value / (design.n - design.n_controls - pr.rank)
    s = (1 - kap) * pr.dd + kap * cgc
    theta = ((1 - kap) * pr.dy + kap * agc) / s
    return float(theta), float(kap), float(s), pr


def _pad(k: int, tail) -> np.ndarray:
    return np.concatenate([np.zeros(k), np.asarray(tail, dtype=float)])


def kclass_requests(design: PartialledDesign, kappa="tsls") -> list[MeatRequest]:
    """Second-pass requests for a robust k-class fit: [SE] for OLS, [SE, robust first-stage F] for IV."""
    kind, value = parse_kappa(kappa)
    theta, _, _, pr = _kclass_point(design, kind, value)
    k = design.k
    resid = _pad(k, [-theta, 1.0])[:, None]
    if kind == "ols":
        return [MeatRequest(design, _pad(k, [1.0, 0.0])[:, None], resid)]
    pi = pr.inv.solve(pr.c)
    se_req = MeatRequest(design, np.concatenate([pi, [0.0, 0.0]])[:, None], resid)
    return [se_req, first_stage_request(design, pr)]


def first_stage_request(design: PartialledDesign, pr: _Parts | None = None) -> MeatRequest:
    """The HC0 meat of the first stage in instrument coordinates (`_whiten` turns it orthonormal)."""
    pr = pr or _Parts.of(design)
    U = np.concatenate([-pr.inv.solve(pr.c), [1.0, 0.0]])[:, None]
    return MeatRequest(design, None, U)


def _robust_first_stage_f(design: PartialledDesign, pr: _Parts, meat: np.ndarray) -> float:
    """The robust (Kleibergen-Paap) first-stage F from the first-stage meat, computed once per design
    and meat: every k-class method of a design shares it (a k^3 solve at large k)."""
    cached = design.__dict__.get("_robust_f")
    if cached is not None and cached[0] is meat:
        return cached[1]
    S, (t,) = _meat_coordinates(pr, meat, pr.c)
    try:  # the meat is positive definite unless degenerate: Cholesky halves the solve
        x = sla.solve(S, t, assume_a="pos", check_finite=False)
    except (np.linalg.LinAlgError, ValueError):
        x = np.linalg.solve(S, t)
    f = float(t @ x) / pr.rank
    object.__setattr__(design, "_robust_f", (meat, f))
    return f


def kclass_from_stats(
    design: PartialledDesign,
    *,
    kappa="tsls",
    cov_type: str = "robust",
    passes: RowPasses | None = None,
    meats: Sequence[np.ndarray] | None = None,
) -> StatsKClassFit:
    """k-class estimate of y = theta d + controls, as `iv.fit_kclass` computes it.

    "unadjusted" needs only the statistics. "robust" (HC0 SE, robust
    first-stage F) needs the meats of `kclass_requests(design, kappa)`: pass
    them (from a shared `accumulate_meats`), or `passes` to run one pass here.
    """
    if cov_type not in ("robust", "unadjusted"):
        raise InputError(f"cov_type must be 'robust' or 'unadjusted', got {cov_type!r}")
    kind, value = parse_kappa(kappa)
    if kind != "ols" and design.k == 0:
        raise InputError("instrumental-variable estimation needs at least one instrument")
    theta, kap, s, pr = _kclass_point(design, kind, value)
    n = design.n
    if cov_type == "robust" and meats is None:
        meats = accumulate_meats(_need_rows(passes, "a robust k-class fit"), kclass_requests(design, kappa))
    f_stat = None
    if kind == "ols":
        n_instr = 0
    else:
        n_instr = pr.rank
        cgc = pr.quad(pr.c, pr.c)
        if cov_type == "unadjusted":
            df = max(n - design.n_controls - n_instr, 1)
            f_stat = cgc / n_instr / ((pr.dd - cgc) / df)
        else:
            f_stat = _robust_first_stage_f(design, pr, meats[1])
    gram = design.gram
    k = design.k
    if cov_type == "unadjusted":
        ee = float(gram[k + 1, k + 1] - 2 * theta * gram[k, k + 1] + theta**2 * gram[k, k])
        var = ee / n / s
    else:
        var = float(meats[0][0, 0]) / s**2
    return StatsKClassFit(
        estimate=theta,
        se=float(np.sqrt(max(var, 0.0))),
        kappa=kap,
        n=n,
        n_instruments=n_instr,
        first_stage_f=None if f_stat is None else float(f_stat),
        cov_type=cov_type,
        scope=design.scope,
        n_controls=design.n_controls,
        estimator=kind,
    )



# ----------------------------------------------------------------------------- AR, J, F
def _orthonormal(pr: _Parts) -> tuple[np.ndarray, np.ndarray]:
    """(Q' y~, Q' d~) for the orthonormal basis Q = Zt T of the instruments."""
    return pr.inv.T.T @ pr.a, pr.inv.T.T @ pr.c


def _whiten(pr: _Parts, M: np.ndarray) -> np.ndarray:
    """A meat accumulated in instrument coordinates, in the orthonormal ones: T' M T."""
    return pr.inv.T.T @ M @ pr.inv.T


def _meat_coordinates(pr: _Parts, M: np.ndarray, *vectors: np.ndarray):
    """(meat, vectors) in coordinates where quadratic forms v' M^-1 v are those of the
    orthonormal basis: the instrument coordinates themselves when the instruments have full
    rank (the forms are invariant to an invertible change of basis; this skips two k^3
    products), the orthonormal ones otherwise."""
    if pr.rank == pr.k:
        return M, vectors
    return _whiten(pr, M), tuple(pr.inv.T.T @ v for v in vectors)


def _robust_meats(design, meats, passes, requests_of, what):
    if meats is None:
        meats = accumulate_meats(_need_rows(passes, what), requests_of(design))
    return meats


def summary_statistics_requests(design: PartialledDesign) -> list[MeatRequest]:
    """Per-variant robust SEs: the per-column moments (O(p) memory)."""
    return [MeatRequest(design, per_column=True)]


def summary_statistics_from_stats(
    stats: EnvironmentCrossProducts,
    *,
    env_fixed_effects: bool = True,
    adjust_covariates: bool = True,
    cov_type: str = "unadjusted",
    variant_names: Sequence[str] | None = None,
    passes: RowPasses | None = None,
    meats: Sequence[np.ndarray] | None = None,
    fill: np.ndarray | None = None,
):
    """Per-variant associations with exposure and outcome, as `sumstats.summary_statistics`.

    Each variant's simple regression is adjusted for the intercept, the
    environment fixed effects and the covariates; "robust" (HC0) needs the
    meats of `summary_statistics_requests(design)` for the design
    `partial_out(stats, env_fixed_effects=..., covariates=adjust_covariates, fill=fill)`.
    """
    from invariant_mr.estimators.summary.sumstats import SummaryStatistics

    design = partial_out(stats, env_fixed_effects=env_fixed_effects, covariates=adjust_covariates, fill=fill)
    k = design.k
    G = design.gram
    sxx = np.diag(G)[:k].copy()
    small = sxx <= 1e-12 * max(1.0, float(sxx.max()))
    if small.any():
        bad = np.flatnonzero(small)
        raise InputError(
            f"variant column(s) {', '.join(str(b) for b in bad[:10])} are constant after adjusting for the controls"
        )
    df = design.n - design.n_controls - 1
    out = {}
    if cov_type == "robust":
        M = _robust_meats(design, meats, passes, summary_statistics_requests, "robust per-variant SEs")[0]
    elif cov_type != "unadjusted":
        raise InputError(f"cov_type must be 'robust' or 'unadjusted', got {cov_type!r}")
    for name, col, (m2, m3) in (("exposure", k, (0, 1)), ("outcome", k + 1, (2, 3))):
        sxy = G[:k, col]
        beta = sxy / sxx
        if cov_type == "unadjusted":
            rss = G[col, col] - beta * sxy
            se = np.sqrt(np.maximum(rss, 0.0) / df / sxx)
        else:
            meat = M[m2] - 2 * beta * M[m3] + beta**2 * M[4]
            se = np.sqrt(np.maximum(meat, 0.0)) / sxx
        out[name] = (beta, se)
    names = variant_names if variant_names is not None else tuple(f"iv{j + 1}" for j in range(k))
    adjusted = ["intercept"] + (["environment"] if env_fixed_effects else [])
    if adjust_covariates:
        adjusted.extend(stats.covariate_names)
    return SummaryStatistics(
        variant=tuple(names),
        beta_exposure=out["exposure"][0],
        se_exposure=out["exposure"][1],
        beta_outcome=out["outcome"][0],
        se_outcome=out["outcome"][1],
        n=stats.n,
        adjusted_for=tuple(adjusted),
        cov_type=cov_type,
    )

__all__ = [
    "ArrayRows",
    "EnvironmentCrossProducts",
    "ExtraCovariateCrossProducts",
    "ExtraCovariateKernel",
    "LocalPasses",
    "MeatRequest",
    "PartialledDesign",
    "RowVectors",
    "StatsKClassFit",
    "accumulate_meats",
    "block_rows_for",
    "first_stage_request",
    "iter_array_blocks",
    "kclass_from_stats",
    "kclass_requests",
    "partial_out",
    "summary_statistics_from_stats",
    "summary_statistics_requests",
]
