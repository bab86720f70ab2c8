"""Per-environment sufficient statistics accumulated over row blocks, and the designs built from them.

Everything the linear IV methods need is a sum over samples, so it can be
accumulated block by block (out of core), chunk by chunk on several machines
(`merge` adds partial results exactly), and never needs an n x p float copy of
the genotypes.

The passes themselves run in the pass engine (`invariant_mr.passes`): this
module defines what they accumulate (`CrossProductKernel`, `MeatKernel`) and
the algebra on the results. The estimators from the statistics are
`kclass_from_stats` (k-class fits) and `sumstats_from_stats` (per-variant
associations); the tests and sets are `inference.tests_from_stats`.

First pass: `EnvironmentCrossProducts.accumulate` reads the rows once and keeps,
per environment e, the count n_e, the column sums and the uncentred
cross-products of the row vector x = [C, Z, D, Y] (C: covariates, Z: the p
instrument columns, D: exposure, Y: outcome), i.e. Z'Z, Z'D, Z'Y, Z'C, C'C,
C'D, C'Y, D'D, Y'Y and D'Y. The intercept and the environment fixed effects are
partialled out algebraically by centring (within each environment for fixed
effects), the covariates and any instruments used as controls by a Schur
complement (`partial_out`, a `PartialledDesign`). From these: OLS / 2SLS /
LIML / Fuller point estimates with classical SEs, the classical first-stage F,
the classical Anderson-Rubin set, Sargan's J and per-variant summary statistics.

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

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla

from invariant_mr.errors import InputError
from invariant_mr.passes.blocks import copy_columns, fill_missing, float_columns, scratch
from invariant_mr.passes.kernels import EnvironmentGramKernel, ExtraCovariateCrossProducts
from invariant_mr.passes.local import RowPasses
from invariant_mr.passes.rows import Block, RowVectors, frozen_copy, iter_array_blocks, row_index

#: Eigenvalues of the scaled Gram matrix of the controls below this share of the largest are
#: exact collinearity (rounding leaves them near machine epsilon), so those directions are dropped.
_CONTROL_RTOL = 1e-12
#: The same for the instruments; `iv.InstrumentProjector` trusts the Gram matrix above 1e-10.
_INSTRUMENT_RTOL = 1e-10

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
            object.__setattr__(self, "z_map", frozen_copy(self.z_map))

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

class CrossProductKernel(EnvironmentGramKernel):
    """The first pass as a kernel (picklable, for Dask): the engine's per-environment Gram
    accumulation, finished into `EnvironmentCrossProducts`."""

    def finish(self, acc: dict) -> EnvironmentCrossProducts:
        gram = super().finish(acc)
        return EnvironmentCrossProducts(
            gram.counts, gram.sums, gram.cross, self.env_levels, self.q, None, self.covariate_names
        )

    @staticmethod
    def merge(a: EnvironmentCrossProducts, b: EnvironmentCrossProducts) -> EnvironmentCrossProducts:
        return a.merge(b)


def accumulate_dask(
    chunks, vectors: RowVectors, *, client=None, fill: np.ndarray | None = None, block_rows: int | None = None
) -> EnvironmentCrossProducts:
    """`EnvironmentCrossProducts.accumulate` as a Dask reduction over row chunks (see `passes.DaskPasses`)."""
    from invariant_mr.passes.dask_passes import DaskPasses

    kernel = CrossProductKernel(vectors.env_levels, vectors.q, vectors.covariate_names, fill)
    return DaskPasses(chunks, vectors, client=client, block_rows=block_rows).run(kernel)


# ----------------------------------------------------------------------------- partialling out
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
        zf = float_columns(block, z_cols, fill, self.z_map) if z_cols.size else np.empty((rows.size, 0))
        lookup = np.full(p, -1)
        lookup[z_cols] = np.arange(z_cols.size)

        def gather(cols: np.ndarray) -> np.ndarray:
            out = np.empty((rows.size, cols.size))
            is_c, is_z = cols < q, (cols >= q) & (cols < q + p)
            if is_c.any():
                out[:, is_c] = vectors.covariates[np.ix_(rows, cols[is_c])]
            if is_z.any():
                copy_columns(out, is_z, zf, lookup[cols[is_z] - q])
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

    def centring_key(self, fill=None) -> tuple | None:
        """Designs with equal keys have the same `centred_rows` (they differ only in the rows they keep
        and in `coef`), so a second pass forms those once per block; None: not the common case."""
        p = self.means.shape[1] - self.q - 2
        if not self._all_instruments_in_order(p):
            return None
        fill = self.fill if fill is None else fill
        parts = (self.means[:, self.target_cols], self.means[:, self.control_cols], self.control_cols,
                 np.empty(0) if fill is None else np.asarray(fill, dtype=float))
        return tuple((a.shape, a.tobytes()) for a in parts)

    def centred_rows(self, rows, codes, block, vectors: RowVectors, fill, store: dict | None = None
                     ) -> tuple[np.ndarray, np.ndarray | None]:
        """(X, C): [Z, D, Y] and the covariate controls of every row of the block, centred within
        environments, before partialling (the common case, `centring_key` not None). With `store`,
        X is written into the buffer of the previous block (`passes.blocks.scratch`)."""
        p = self.means.shape[1] - self.q - 2
        fill = self.fill if fill is None else fill
        X = np.empty((rows.size, p + 2)) if store is None else scratch(store, "centred", (rows.size, p + 2))
        X[:, :p] = block
        fill_missing(X[:, :p], block, fill)
        X[:, p] = vectors.exposure[rows]
        X[:, p + 1] = vectors.outcome[rows]
        one = codes.size > 0 and bool(np.all(codes == codes[0]))
        # One environment in the block (the usual case: files are sorted by environment far more
        # often than not): subtract its means by broadcasting, without an n x m gather.
        X -= self.means[codes[0], self.target_cols] if one else self.means[:, self.target_cols][codes]
        C = None
        if self.control_cols.size:
            C = vectors.covariates[np.ix_(rows, self.control_cols)]
            C -= self.means[codes[0], self.control_cols] if one else self.means[:, self.control_cols][codes]
        return X, C

    def partialled(self, X: np.ndarray, C: np.ndarray | None, codes, store: dict | None = None) -> np.ndarray:
        """This design's residualised rows from `centred_rows` of a block: its rows, less C coef
        (into the buffer of the previous block with `store`)."""
        keep = self.envs[codes]
        if not keep.all():
            X = X[keep]
            C = None if C is None else C[keep]
        if C is None:
            return X
        if store is None:
            return X - C @ self.coef
        R = scratch(store, "partialled", X.shape)
        np.matmul(C, self.coef, out=R)
        return np.subtract(X, R, out=R)

    def _residual_rows_all(self, rows, codes, block, vectors: RowVectors, fill, p: int) -> np.ndarray:
        """`residual_rows` when the targets are [Z, D, Y] in order: the block is cast straight into
        the output (no column gathers), which halves the memory traffic of the second pass."""
        R = np.empty((rows.size, p + 2))
        R[:, :p] = block
        fill_missing(R[:, :p], block, fill)
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

    def fingerprint(self) -> str:
        """A digest of everything this request's result depends on besides the rows (what lets
        the engine reuse a result that another method of the same analysis asked for)."""
        import hashlib

        d = self.design
        h = hashlib.blake2b(digest_size=20)
        for part in (d.scope, d.n, d.n_controls, d.q, self.per_column):
            h.update(repr(part).encode())
        # What `PartialledDesign.residual_rows` reads (not the Gram matrix, which it never uses and
        # which is (k + 2)^2: hashing it cost more than the rest at large k).
        for arr in (d.instruments, d.z_controls, d.envs, d.means, d.control_cols, d.target_cols, d.coef,
                    d.z_map, d.fill, self.directions, self.residuals):
            if arr is None:
                h.update(b"none")
            else:
                a = np.ascontiguousarray(arr)
                h.update(repr((a.dtype.str, a.shape)).encode())
                h.update(a.tobytes())
        return h.hexdigest()

    @property
    def instrument_coordinates(self) -> bool:
        """Whether this is a k x k-sized meat in the instrument coordinates (`directions=None`): the
        O(n k^2) product of a second pass, and the only one `precision="float32"` changes."""
        return self.directions is None and not self.per_column

    def add(self, acc: np.ndarray, R: np.ndarray, precision: str = "float64", store: dict | None = None) -> None:
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
        if precision == "float32" and self.directions is None:
            # The block's product in single precision (SSYRK, about twice DGEMM's speed), added
            # into the float64 accumulator: rounding stays per block, never across the n rows.
            shape = (R.shape[0], V.shape[1] * U.shape[1])
            W = np.empty(shape, dtype=np.float32) if store is None else scratch(store, "w32", shape, np.float32)
            if U.shape[1] > 1:
                np.multiply(V[:, None, :], U[:, :, None], out=W.reshape(R.shape[0], U.shape[1], -1),
                            casting="same_kind")
            else:
                np.multiply(V, U, out=W, casting="same_kind")
        else:
            W = (V[:, None, :] * U[:, :, None]).reshape(R.shape[0], -1) if U.shape[1] > 1 else V * U
        acc += W.T @ W


#: The precisions of a second pass's k x k meats (`MeatKernel`, `--meat-precision`).
MEAT_PRECISIONS = ("float64", "float32")


def check_meat_precision(precision: str) -> str:
    if precision not in MEAT_PRECISIONS:
        raise InputError(f"meat precision must be one of {', '.join(MEAT_PRECISIONS)}, got {precision!r}")
    return precision


class MeatKernel:
    """The second pass as a kernel (picklable, for Dask): all requests share one read of the rows.

    `precision="float32"` forms each block's k x k meats in the instrument coordinates
    (`MeatRequest.instrument_coordinates`: what robust F, J and AR statistics use) in single
    precision and adds them into float64 accumulators; every meat in given directions (the
    robust SEs of the estimates) and the per-column moments stay float64. Its accuracy against
    float64 is measured in benchmarks/results/scale.md.
    """

    def __init__(self, requests: Sequence[MeatRequest], fill: np.ndarray | None = None,
                 precision: str = "float64"):
        self.requests = list(requests)
        self.fill = None if fill is None else np.asarray(fill, dtype=float)
        self.precision = check_meat_precision(precision)
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
        self._centring = [design.centring_key(self.fill) for design, _ in self.groups]

    def start(self) -> list:
        # The accumulators, then this accumulation's block buffers (`passes.blocks.scratch`): per
        # accumulator, not per kernel, since Dask's threaded scheduler runs one kernel object on
        # several chunks at once.
        return [req.zeros() for req in self.requests] + [{}]

    def add(self, acc: list[np.ndarray], rows, block, vectors: RowVectors) -> None:
        rows = row_index(rows)
        codes = vectors.env_codes[rows]
        block = np.asarray(block)
        # Designs that centre the rows alike (the pooled one with environment fixed effects and the
        # per-environment ones) share one float64 copy of the block, centred once; the block-sized
        # arrays reuse the previous block's memory (`passes.blocks.scratch`).
        centred: dict[tuple, tuple] = {}
        store = acc[-1]
        for (design, members), key in zip(self.groups, self._centring):
            if not design.envs[codes].any():
                continue
            if key is None:
                R = design.residual_rows(rows, block, vectors, self.fill)
            else:
                if key not in centred:
                    # One centred buffer per centring (one in the common case), so that designs of
                    # another centring never overwrite it within the block.
                    own = store.setdefault(("centred", len(centred)), {})
                    centred[key] = design.centred_rows(rows, codes, block, vectors, self.fill, own)
                R = design.partialled(*centred[key], codes, store)
            if R.shape[0] == 0:
                continue
            for i in members:
                self.requests[i].add(acc[i], R, self.precision, store)

    def finish(self, acc):
        return tuple(acc[:-1])  # the block buffers live for one accumulation

    def with_requests(self, requests: Sequence[MeatRequest]) -> MeatKernel:
        """The same pass for some of the requests (what the engine runs when it has the others)."""
        return MeatKernel(requests, self.fill, self.precision)

    def request_key(self, request: MeatRequest) -> str:
        # A single-precision meat is a different result: never served for a float64 request.
        if self.precision != "float64" and request.instrument_coordinates:
            return f"{request.fingerprint()}:{self.precision}"
        return request.fingerprint()

    @staticmethod
    def merge(a: tuple, b: tuple) -> tuple:
        return tuple(x + y for x, y in zip(a, b))


def accumulate_meats(passes: RowPasses, requests: Sequence[MeatRequest], precision: str = "float64"
                     ) -> tuple[np.ndarray, ...]:
    """One second pass for all `requests` (possibly of different designs); results in order.
    `precision`: that of the k x k meats (`MeatKernel`)."""
    if not requests:
        return ()
    return passes.run(MeatKernel(requests, precision=precision))


def _need_rows(passes, what: str):
    if passes is None:
        raise InputError(f"{what} needs a second pass over the rows (pass `passes=`) or precomputed `meats=`")
    return passes


# ----------------------------------------------------------------------------- instrument algebra
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


def _pad(k: int, tail) -> np.ndarray:
    return np.concatenate([np.zeros(k), np.asarray(tail, dtype=float)])


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


__all__ = [
    "CrossProductKernel",
    "EnvironmentCrossProducts",
    "MEAT_PRECISIONS",
    "MeatKernel",
    "MeatRequest",
    "PartialledDesign",
    "accumulate_dask",
    "accumulate_meats",
    "check_meat_precision",
    "partial_out",
]
