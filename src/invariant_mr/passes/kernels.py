"""The kernel protocol, and the kernels that need nothing but the rows.

A kernel is what one pass computes: `start()` makes an empty accumulator,
`add(acc, rows, block, vectors)` folds in one block, `finish(acc)` turns the
accumulator into the result, and `merge(a, b)` adds the results of two
disjoint sets of rows (what lets Dask run one kernel per row chunk and add the
partials). Kernels are picklable: Dask sends them to its workers.

`EnvironmentGramKernel` (per-environment counts, sums and cross-products of
the row vector [C, Z, D, Y]) and `ExtraCovariateKernel` (the cross-products of
new covariates with that vector) are generic; the statistics built on them
(`estimators.sufficient_stats`) add their own `finish`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from invariant_mr.errors import InputError
from invariant_mr.passes.blocks import by_environment, row_matrix
from invariant_mr.passes.rows import RowVectors, row_index


class Kernel(Protocol):
    """What a pass computes: an accumulator over blocks, finished into a result that merges exactly."""

    def start(self) -> Any: ...

    def add(self, acc: Any, rows, block, vectors: RowVectors) -> None: ...

    def finish(self, acc: Any) -> Any: ...

    def merge(self, a: Any, b: Any) -> Any: ...


class RequestKernel(Kernel, Protocol):
    """A kernel serving independent requests, its result one array per request, in order.

    `request_key(request)` fingerprints everything a request's result depends on
    besides the rows, and `with_requests(requests)` is the same kernel for a subset:
    with both, a runner can serve a request it has already accumulated without
    reading the rows again (`recorded.RecordedPasses`).
    """

    requests: list

    def request_key(self, request) -> str: ...

    def with_requests(self, requests) -> RequestKernel: ...


@dataclass(frozen=True)
class EnvironmentGram:
    """Per environment: row counts (K,), column sums (K, m) and uncentred cross-products (K, m, m)
    of the row vector [C, Z, D, Y]."""

    counts: np.ndarray
    sums: np.ndarray
    cross: np.ndarray


class EnvironmentGramKernel:
    """The first pass: per-environment counts, sums and cross-products of [C, Z, D, Y]
    (q covariates C, the block's p columns Z, exposure D, outcome Y)."""

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
        x = row_matrix(block, rows, vectors, q, self.fill, acc.setdefault("scratch", {}))
        for e, sub in by_environment(x, vectors.env_codes[rows], K):
            acc["counts"][e] += sub.shape[0]
            acc["sums"][e] += sub.sum(axis=0)
            acc["cross"][e] += sub.T @ sub

    def finish(self, acc: dict) -> EnvironmentGram:
        if acc["cross"] is None:
            raise InputError("no genotype blocks were read")
        return EnvironmentGram(acc["counts"], acc["sums"], acc["cross"])

    @staticmethod
    def merge(a: EnvironmentGram, b: EnvironmentGram) -> EnvironmentGram:
        return EnvironmentGram(a.counts + b.counts, a.sums + b.sums, a.cross + b.cross)


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
        x = row_matrix(block, rows, vectors, q2, self.fill)
        for e, sub in by_environment(x, vectors.env_codes[rows], K):
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


class ProjectionKernel:
    """Z @ weights - offset for every row (an n x r array, r small): the one kernel whose result
    has a row per row, for a method that needs its instruments row by row (invariant_linear).

    Its result for a run over rows [a, b) is those rows in order, so `merge(a, b)` stacks them: both
    runners merge in row order (`LocalPasses` runs once over all rows; `DaskPasses` merges chunk
    results sorted by their first row). `result_key()` fingerprints weights and offset, so that a
    runner that carried this kernel on an earlier pass serves it without a read
    (`recorded.RecordedPasses.carry`).
    """

    def __init__(self, weights: np.ndarray, offset: np.ndarray):
        self.weights = np.ascontiguousarray(weights, dtype=float)
        if self.weights.ndim != 2:
            raise InputError(f"projection weights must be 2-D (p, r), got shape {self.weights.shape}")
        self.offset = np.asarray(offset, dtype=float).reshape(self.weights.shape[1])

    def start(self) -> dict:
        return {"out": None}

    def add(self, acc: dict, rows, block, vectors: RowVectors) -> None:
        if acc["out"] is None:
            acc["out"] = np.empty((vectors.n, self.weights.shape[1]))
        acc["out"][row_index(rows)] = np.asarray(block) @ self.weights - self.offset

    def finish(self, acc: dict) -> np.ndarray:
        return np.empty((0, self.weights.shape[1])) if acc["out"] is None else acc["out"]

    @staticmethod
    def merge(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.vstack([a, b])

    def result_key(self) -> str:
        import hashlib

        h = hashlib.blake2b(digest_size=20)
        for arr in (self.weights, self.offset):
            h.update(repr(arr.shape).encode())
            h.update(arr.tobytes())
        return "projection:" + h.hexdigest()


class Together:
    """Several kernels on one read of the rows: the result is theirs, in order."""

    def __init__(self, kernels: Sequence):
        self.kernels = tuple(kernels)

    def start(self) -> list:
        return [k.start() for k in self.kernels]

    def add(self, acc: list, rows, block, vectors: RowVectors) -> None:
        for k, a in zip(self.kernels, acc):
            k.add(a, rows, block, vectors)

    def finish(self, acc: list) -> tuple:
        return tuple(k.finish(a) for k, a in zip(self.kernels, acc))

    def merge(self, a: tuple, b: tuple) -> tuple:
        return tuple(k.merge(x, y) for k, x, y in zip(self.kernels, a, b))


__all__ = [
    "EnvironmentGram",
    "EnvironmentGramKernel",
    "ExtraCovariateCrossProducts",
    "ExtraCovariateKernel",
    "Kernel",
    "ProjectionKernel",
    "RequestKernel",
    "Together",
]
