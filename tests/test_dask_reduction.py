"""The sufficient-statistics passes as Dask reductions equal the local passes."""

from __future__ import annotations

import numpy as np
import pytest

from invariant_mr.errors import InputError
from invariant_mr.estimators.kclass_from_stats import kclass_from_stats, kclass_requests
from invariant_mr.estimators.sufficient_stats import (
    EnvironmentCrossProducts,
    accumulate_dask,
    accumulate_meats,
    partial_out,
)
from invariant_mr.passes import ArrayRows, DaskPasses, LocalPasses, RowChunk, RowVectors, npy_chunks
from invariant_mr.inference.tests_from_stats import (
    anderson_rubin_requests,
)
from invariant_mr.simulation.balding_nichols import simulate_balding_nichols

import dask.array as da  # noqa: E402  (a dependency: fail, do not skip, without it)


@pytest.fixture(scope="module")
def sim():
    return simulate_balding_nichols(n_envs=3, n_per_env=300, n_variants=25, seed=5)


@pytest.fixture(scope="module")
def vectors(sim):
    return RowVectors.from_mrdata(sim.to_mrdata(include_covariates=True))


@pytest.fixture(scope="module")
def local(sim, vectors):
    stats = EnvironmentCrossProducts.from_arrays(sim.genotypes, vectors)
    passes = LocalPasses.from_array(sim.genotypes, vectors)
    return stats, passes


def _assert_same(a, b):
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-10 * max(1.0, float(np.abs(y).max())))


def test_default_scheduler_dask_array(sim, vectors, local):
    stats, passes = local
    Z = da.from_array(sim.genotypes, chunks=(137, 10))  # column chunks are joined per row chunk
    got = accumulate_dask(Z, vectors, block_rows=50)
    _assert_same((got.cross, got.sums), (stats.cross, stats.sums))
    np.testing.assert_array_equal(got.counts, stats.counts)
    design = partial_out(stats)
    requests = kclass_requests(design, "liml") + anderson_rubin_requests(design)
    _assert_same(accumulate_meats(DaskPasses(Z, vectors), requests), accumulate_meats(passes, requests))


def test_chunks_must_cover_the_rows(tmp_path, sim, vectors):
    path = tmp_path / "g.npy"
    np.save(path, sim.genotypes)
    chunks = npy_chunks(str(path), 3)
    with pytest.raises(InputError, match="cover"):
        DaskPasses(chunks[:2], vectors)
    with pytest.raises(InputError, match="contiguous"):
        DaskPasses([chunks[0], chunks[2]], vectors)
    assert isinstance(chunks[0], RowChunk)


def test_local_cluster_two_worker_processes(tmp_path, sim, vectors, local):
    import distributed
    stats, passes = local
    path = tmp_path / "genotypes.npy"
    np.save(path, sim.genotypes)
    chunks = npy_chunks(str(path), 6, block_rows=64)
    with distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None, silence_logs=40
    ) as cluster, distributed.Client(cluster) as client:
        with distributed.get_task_stream(client) as ts:
            got = accumulate_dask(chunks, vectors, client=client)
            dpasses = DaskPasses(chunks, vectors, client=client)
            fit = kclass_from_stats(partial_out(got), kappa="liml", cov_type="robust", passes=dpasses)
        workers = set(client.scheduler_info()["workers"])
    ref = kclass_from_stats(partial_out(stats), kappa="liml", cov_type="robust", passes=passes)
    _assert_same((got.cross, got.sums), (stats.cross, stats.sums))
    _assert_same([[fit.estimate, fit.se, fit.first_stage_f]], [[ref.estimate, ref.se, ref.first_stage_f]])
    chunk_tasks = [t for t in ts.data if str(t["key"]).find("suffstats-chunk-") >= 0]
    assert len(chunk_tasks) == 12  # 6 chunks x (first pass + second pass)
    ran_on = {t["worker"] for t in chunk_tasks}
    assert ran_on <= workers and len(ran_on) == 2  # both worker processes did chunk work


def _local_slice_blocks(G, start, stop, block_rows):
    """Like `GenotypeSource.iter_blocks(rows=positions[start:stop])`: slices relative to `start`."""
    for lo in range(0, stop - start, block_rows):
        hi = min(stop - start, lo + block_rows)
        yield slice(lo, hi), G[start + lo : start + hi]


def test_row_chunks_with_local_slices(sim, vectors, local):
    from functools import partial

    stats, _ = local
    G = sim.genotypes
    bounds = [0, 250, 600, G.shape[0]]
    chunks = [
        RowChunk(lo, hi, partial(_local_slice_blocks, G, lo, hi, 97), local_rows=True)
        for lo, hi in zip(bounds[:-1], bounds[1:])
    ]
    got = accumulate_dask(chunks, vectors)
    _assert_same((got.cross,), (stats.cross,))
    # slices straight into the local accumulation too
    direct = EnvironmentCrossProducts.accumulate(_local_slice_blocks(G, 0, G.shape[0], 128), vectors)
    _assert_same((direct.cross,), (stats.cross,))


def test_local_cluster_for_passes_workers_setup_balance_and_repeatability(tmp_path, sim, vectors, local):
    """`local_cluster` (what `run --workers` starts): one BLAS thread in each worker, its
    dashboard profiler off;
    the preloaded modules imported before any task; the chunks of a pass spread over both workers;
    the same chunks give the same bits on every run (a fixed merge order), within 1e-12 of the local
    pass."""
    import os
    import sys

    from invariant_mr.estimators.sufficient_stats import CrossProductKernel
    from invariant_mr.passes.dask_passes import local_cluster

    stats, passes = local
    path = tmp_path / "genotypes.npy"
    np.save(path, sim.genotypes)
    chunks = npy_chunks(str(path), 8, block_rows=32)
    cluster, client = local_cluster(2, preload=("invariant_mr.estimators.sufficient_stats",))
    try:
        import dask

        seen = client.run(lambda: (os.environ.get("OPENBLAS_NUM_THREADS"),
                                   "invariant_mr.estimators.sufficient_stats" in sys.modules,
                                   dask.config.get("distributed.worker.profile.enabled")))
        assert len(seen) == 2 and set(seen.values()) == {("1", True, False)}
        assert dask.config.get("distributed.worker.profile.enabled")  # this process's config is left alone
        kernel = CrossProductKernel(vectors.env_levels, vectors.q, vectors.covariate_names)
        import distributed

        with distributed.get_task_stream(client) as ts:
            first = DaskPasses(chunks, vectors, client=client).run(kernel)
        again = DaskPasses(chunks, vectors, client=client).run(kernel)
        shared = DaskPasses.over_source(ArrayRows(sim.genotypes, block_rows=32), 8, vectors, client=client)
        from_source = shared.run(kernel)
    finally:
        client.close()
        cluster.close()
    ran_on = {t["worker"] for t in ts.data if "suffstats-chunk-" in str(t["key"])}
    assert len(ran_on) == 2
    np.testing.assert_array_equal(first.cross, again.cross)  # bit for bit
    np.testing.assert_array_equal(first.counts, stats.counts)
    scale = np.abs(stats.cross).max()
    assert np.abs(first.cross - stats.cross).max() <= 1e-12 * scale
    assert np.abs(first.sums - stats.sums).max() <= 1e-12 * np.abs(stats.sums).max()
    # the same chunk bounds and blocks from one shared source: the same bits as the per-chunk readers
    np.testing.assert_array_equal(from_source.cross, first.cross)
    keys = [str(k) for k in dict(shared.graph(kernel).__dask_graph__())]
    assert sum(k.startswith("suffstats-rows-") for k in keys) == 1  # the source once, not once per chunk
    assert sum(k.startswith("suffstats-chunk-") for k in keys) == 8
