"""The pass engine on its own: the generic kernels against direct sums, exact merges, the runner's
choice of local or Dask, and the recorded runner's reuse of request results."""

from __future__ import annotations

import numpy as np
import pytest

from invariant_mr.data import StreamedMRData
from invariant_mr.errors import InputError
from invariant_mr.passes import (
    ArrayRows,
    EnvironmentGramKernel,
    ExtraCovariateKernel,
    LocalPasses,
    RowVectors,
    iter_array_blocks,
    passes,
    row_passes,
)


@pytest.fixture(scope="module")
def rows():
    """int8 genotypes with missing calls (-1), three environments of unequal size, two covariates."""
    rng = np.random.default_rng(11)
    n, p = 700, 9
    Z = rng.integers(0, 3, size=(n, p)).astype(np.int8)
    Z[rng.random((n, p)) < 0.02] = -1
    codes = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    C = rng.normal(size=(n, 2))
    vec = RowVectors(codes, ("a", "b", "c"), rng.normal(size=n), rng.normal(size=n), C, ("age", "sex"))
    fill = rng.uniform(0.5, 1.5, size=p)
    return Z, vec, fill


def _direct(Z, vec, fill):
    """Per-environment counts, sums and cross-products of [C, Z, D, Y], formed from the whole matrix."""
    Zf = Z.astype(float)
    r, c = np.nonzero(Z < 0)
    Zf[r, c] = fill[c]
    X = np.column_stack([vec.covariates, Zf, vec.exposure, vec.outcome])
    groups = [X[vec.env_codes == e] for e in range(3)]
    return (np.array([g.shape[0] for g in groups]), np.array([g.sum(axis=0) for g in groups]),
            np.array([g.T @ g for g in groups]))


def test_gram_kernel_equals_the_direct_sums(rows):
    Z, vec, fill = rows
    got = LocalPasses.from_array(Z, vec, block_rows=64).run(EnvironmentGramKernel(vec.env_levels, vec.q, fill=fill))
    counts, sums, cross = _direct(Z, vec, fill)
    np.testing.assert_array_equal(got.counts, counts)
    np.testing.assert_allclose(got.sums, sums, rtol=1e-12)
    np.testing.assert_allclose(got.cross, cross, rtol=1e-12)


def test_merging_two_halves_gives_the_whole(rows):
    """What a Dask reduction does: the kernel on disjoint row ranges, merged, equals one pass."""
    Z, vec, fill = rows
    kernel = EnvironmentGramKernel(vec.env_levels, vec.q, fill=fill)
    halves = []
    for lo, hi in ((0, 333), (333, Z.shape[0])):
        acc = kernel.start()
        for idx, block in iter_array_blocks(Z, 50, lo, hi):
            kernel.add(acc, idx, block, vec)
        halves.append(kernel.finish(acc))
    merged = kernel.merge(*halves)
    whole = LocalPasses.from_array(Z, vec).run(kernel)
    np.testing.assert_array_equal(merged.counts, whole.counts)
    np.testing.assert_allclose(merged.cross, whole.cross, rtol=1e-12)


def test_extra_covariate_kernel_is_the_rows_of_the_grown_gram(rows):
    """The k new covariates' rows of the cross-products equal those of a full pass with them appended."""
    Z, vec, fill = rows
    extra = np.random.default_rng(2).normal(size=(vec.n, 2))
    grown = RowVectors(vec.env_codes, vec.env_levels, vec.exposure, vec.outcome,
                       np.hstack([vec.covariates, extra]), ("age", "sex", "pc1", "pc2"))
    got = LocalPasses.from_array(Z, grown).run(ExtraCovariateKernel(vec.env_levels, vec.q, ("pc1", "pc2"), fill))
    full = LocalPasses.from_array(Z, grown).run(EnvironmentGramKernel(vec.env_levels, grown.q, fill=fill))
    np.testing.assert_allclose(got.cross, full.cross[:, 2:4, :], rtol=1e-12)
    np.testing.assert_allclose(got.sums, full.sums[:, 2:4], rtol=1e-12)
    np.testing.assert_array_equal(got.counts, full.counts)


def test_missing_calls_without_fill_are_refused(rows):
    Z, vec, _ = rows
    with pytest.raises(InputError, match="missing values"):
        LocalPasses.from_array(Z, vec).run(EnvironmentGramKernel(vec.env_levels, vec.q))


def test_local_without_a_client():
    Z = np.zeros((10, 2))
    vec = RowVectors(np.zeros(10, dtype=int), ("e",), np.arange(10.0), np.arange(10.0))
    runner, where = row_passes(ArrayRows(Z), vec)
    assert isinstance(runner, LocalPasses) and where == "local"


class _WeightedSums:
    """A toy request kernel: request w gives sum_i (Z_i . w) Z_i; counts its reads of the rows."""

    reads = 0

    def __init__(self, requests):
        self.requests = list(requests)

    def start(self):
        _WeightedSums.reads += 1
        return [np.zeros(len(w)) for w in self.requests]

    def add(self, acc, rows, block, vectors):
        block = np.asarray(block, dtype=float)
        for a, w in zip(acc, self.requests):
            a += block.T @ (block @ w)

    def finish(self, acc):
        return tuple(acc)

    @staticmethod
    def merge(a, b):
        return tuple(x + y for x, y in zip(a, b))

    @staticmethod
    def request_key(w):
        return np.asarray(w, dtype=float).tobytes().hex()

    def with_requests(self, requests):
        return _WeightedSums(requests)


def test_recorded_runner_reuses_request_results():
    """A request already accumulated in this analysis is served without a pass, bit for bit, and
    only the new ones are read; every pass is recorded."""
    rng = np.random.default_rng(4)
    Z = rng.normal(size=(200, 4))
    data = StreamedMRData(genotypes=ArrayRows(Z), exposure=rng.normal(size=200), outcome=rng.normal(size=200),
                          env=np.repeat(["a", "b"], 100))
    runner = passes(data)
    assert passes(data) is runner  # one runner per analysis
    w1, w2 = np.array([1.0, 0, 0, 0]), np.array([0, 1.0, 2.0, 0])
    _WeightedSums.reads = 0
    (first,) = runner.run(_WeightedSums([w1]))
    both = runner.run(_WeightedSums([w2, w1]))
    assert _WeightedSums.reads == 2
    assert both[1] is first  # served from the first pass, not recomputed
    np.testing.assert_allclose(both[0], Z.T @ (Z @ w2), rtol=1e-12)
    again = runner.run(_WeightedSums([w1, w2]))
    assert _WeightedSums.reads == 2  # nothing new: no pass at all
    assert again[0] is first and again[1] is both[0]
    records = data.cache["passes"]
    assert [r["kind"] for r in records] == ["_WeightedSums", "_WeightedSums"]
    assert records[1]["requests_reused"] == 1 and all(r["where"] == "local" for r in records)
