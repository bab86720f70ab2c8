"""A genotype block as float64 rows: missing calls filled, columns gathered, rows split by environment.

Every kernel turns the block it is given (int8 with negative codes for missing
calls, or float32/float64 with NaN) into float64 the same way, so that the
first pass, the extra-covariate pass and the second pass all see the same
numbers for the same rows.
"""

from __future__ import annotations

import numpy as np

from invariant_mr.errors import InputError
from invariant_mr.passes.rows import RowVectors

def fill_missing(target: np.ndarray, raw: np.ndarray, fill: np.ndarray | None) -> None:
    """Replace missing genotypes (negative int8 codes, NaN floats) in `target` by `fill`."""
    missing = raw < 0 if raw.dtype.kind in "iu" else np.isnan(target)
    if missing.any():
        if fill is None:
            raise InputError("the genotype block has missing values and no imputation values were given (fill=)")
        r, c = np.nonzero(missing)
        target[r, c] = fill[c]


def float_columns(block: np.ndarray, cols, fill: np.ndarray | None, z_map: np.ndarray | None) -> np.ndarray:
    """Float64 columns `cols` of the (possibly mapped) instrument block, missing values filled."""
    if z_map is not None:
        full = np.asarray(block, dtype=float)
        if full is block or np.shares_memory(full, block):
            full = full.copy()
        fill_missing(full, np.asarray(block), fill)
        return full @ z_map[:, cols]
    block = np.asarray(block)
    if block.dtype == np.float64 and cols.size == block.shape[1] and np.array_equal(cols, np.arange(cols.size)):
        # Every column of an already float64 block (e.g. imputed dosages): read it in place.
        if not np.isnan(block).any():
            return block
    raw = block[:, cols]
    out = raw.astype(float)
    fill_missing(out, raw, None if fill is None else fill[cols])
    return out


def copy_columns(out: np.ndarray, where: np.ndarray, source: np.ndarray, columns: np.ndarray) -> None:
    """out[:, where] = source[:, columns], as one slice copy when both are contiguous runs."""
    at = np.flatnonzero(where)
    if at.size and at[-1] - at[0] + 1 == at.size and columns[-1] - columns[0] + 1 == columns.size and np.all(
        np.diff(columns) == 1
    ):
        out[:, at[0] : at[-1] + 1] = source[:, columns[0] : columns[-1] + 1]
    else:
        out[:, where] = source[:, columns]


def scratch(store: dict, name: str, shape: tuple, dtype=np.float64) -> np.ndarray:
    """An uninitialised array of `shape`, reusing `store[name]`'s memory from the previous block.

    A float64 block of the default size (32 MiB) is above glibc's largest mmap threshold, so a fresh
    array per block is a fresh mapping whose every page faults on first write: reusing one buffer per
    pass keeps those faults to the first block. The rows of a C-ordered buffer are contiguous, so a
    shorter (last) block is a view of its first rows.
    """
    buf = store.get(name)
    if buf is None or buf.dtype != dtype or buf.shape[1:] != shape[1:] or buf.shape[0] < shape[0]:
        buf = store[name] = np.empty(shape, dtype=dtype)
    return buf[: shape[0]]


def row_matrix(block: np.ndarray, rows: np.ndarray, vectors: RowVectors, q: int, fill,
               store: dict | None = None) -> np.ndarray:
    """The block's rows as [C, Z, D, Y] (b, q + p + 2), float64, missing calls filled; C = the q covariates.
    With `store` (a `scratch` store), written into the buffer of the previous block."""
    b, p = block.shape
    x = np.empty((b, q + p + 2)) if store is None else scratch(store, "row_matrix", (b, q + p + 2))
    x[:, q : q + p] = block
    fill_missing(x[:, q : q + p], block, fill)
    if q:
        x[:, :q] = vectors.covariates[rows]
    x[:, q + p] = vectors.exposure[rows]
    x[:, q + p + 1] = vectors.outcome[rows]
    return x


def by_environment(x: np.ndarray, codes: np.ndarray, n_envs: int):
    """(e, the rows of x in environment e) for every environment with rows in this block (no copy for one)."""
    for e in range(n_envs):
        in_e = codes == e
        size = int(in_e.sum())
        if size:
            yield e, (x if size == x.shape[0] else x[in_e])


__all__ = ["by_environment", "copy_columns", "fill_missing", "float_columns", "row_matrix", "scratch"]
