"""Per-environment moments as sums over row blocks.

Counts, sums and cross-products add across row blocks, files and machines,
so the closed-form invariant method can run in one pass, out of core, or
distributed (merge partial `EnvironmentMoments` with `+`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Target size of one float64 row block: large enough for BLAS efficiency,
#: small enough that the block and its per-environment subsets stay ~32 MB.
BLOCK_BYTES = 32 * 2**20


def block_rows_for(p: int) -> int:
    return max(256, BLOCK_BYTES // (8 * max(p, 1)))


@dataclass(frozen=True)
class EnvironmentMoments:
    """Counts (K,), sums (K, p) and uncentred cross-products (K, p, p) per environment."""

    counts: np.ndarray
    sums: np.ndarray
    cross: np.ndarray

    @classmethod
    def from_arrays(
        cls,
        Z: np.ndarray,
        env_codes: np.ndarray,
        n_envs: int,
        *,
        shift: np.ndarray | None = None,
        block_rows: int | None = None,
    ) -> "EnvironmentMoments":
        """Accumulate moments of `Z - shift` block by block (shift improves conditioning)."""
        n, p = Z.shape
        block_rows = block_rows or block_rows_for(p)
        counts = np.zeros(n_envs, dtype=np.int64)
        sums = np.zeros((n_envs, p))
        cross = np.zeros((n_envs, p, p))
        # One reused float buffer: a fresh block per step would allocate (and page in) as much
        # memory as Z itself over the pass.
        buffer = np.empty((min(block_rows, n), p))
        for start in range(0, n, block_rows):
            raw = Z[start : start + block_rows]
            block = buffer[: raw.shape[0]]
            if shift is not None:
                np.subtract(raw, shift, out=block)
            else:
                block[...] = raw
            codes = env_codes[start : start + block_rows]
            for e in range(n_envs):
                rows = codes == e
                m = int(rows.sum())
                if m == 0:
                    continue
                sub = block if m == block.shape[0] else block[rows]
                counts[e] += m
                sums[e] += sub.sum(axis=0)
                cross[e] += sub.T @ sub
        return cls(counts, sums, cross)

    @classmethod
    def from_dask(
        cls, Z, env_codes: np.ndarray, n_envs: int, *, shift: np.ndarray | None = None
    ) -> "EnvironmentMoments":
        """Moments of a dask array, one task per row chunk, merged by a tree reduction.

        The chunks may live out of core or on a distributed cluster; only the
        (K, p, p) partial moments travel. `env_codes` is a NumPy vector
        aligned with the rows of Z.
        """
        import dask

        Z = Z.rechunk({1: -1})
        bounds = np.cumsum((0,) + Z.chunks[0])
        parts = [
            dask.delayed(cls.from_arrays)(block, env_codes[lo:hi], n_envs, shift=shift)
            for block, lo, hi in zip(Z.to_delayed().ravel(), bounds[:-1], bounds[1:])
        ]
        while len(parts) > 1:
            parts = [dask.delayed(_add)(*parts[i : i + 2]) if i + 1 < len(parts) else parts[i]
                     for i in range(0, len(parts), 2)]
        return parts[0].compute()

    def __add__(self, other: "EnvironmentMoments") -> "EnvironmentMoments":
        return EnvironmentMoments(self.counts + other.counts, self.sums + other.sums, self.cross + other.cross)

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @property
    def weights(self) -> np.ndarray:
        return self.counts / self.counts.sum()

    @property
    def means(self) -> np.ndarray:
        return self.sums / self.counts[:, None]

    @property
    def covariances(self) -> np.ndarray:
        """Per-environment maximum-likelihood covariances (K, p, p)."""
        mu = self.means
        return self.cross / self.counts[:, None, None] - mu[:, :, None] * mu[:, None, :]

    @property
    def pooled_mean(self) -> np.ndarray:
        return self.sums.sum(axis=0) / self.n

    @property
    def total_covariance(self) -> np.ndarray:
        mu = self.pooled_mean
        return self.cross.sum(axis=0) / self.n - np.outer(mu, mu)

    @property
    def within_covariance(self) -> np.ndarray:
        """Environment-size weighted average of the per-environment covariances."""
        return np.tensordot(self.weights, self.covariances, axes=1)


def _add(a: EnvironmentMoments, b: EnvironmentMoments) -> EnvironmentMoments:
    return a + b


def is_dask_array(obj) -> bool:
    return type(obj).__module__.startswith("dask.")
