"""The passes of one analysis: local or Dask, chosen in one place, each recorded, results reused.

`passes(data)` is the runner every statistic of an analysis of `data` (a
`StreamedMRData`) asks for its passes: in this process, or, when the data carry
a Dask client, as a Dask reduction over row chunks that each worker reads from
the genotype file (`row_passes` makes that choice). Every pass is recorded
(kernel, seconds, where) in `data.cache["passes"]` for the provenance, and a
`RequestKernel`'s results are kept by request fingerprint, so that a request
asked for again (by another method of the same analysis) is served without a
pass.

`statistics_view(data)` serves an in-memory `MRData` through the same engine
(its array as row blocks), so that in memory too the moment-based methods
share one first pass and one second pass instead of each refitting on the
n x p matrix.
"""

from __future__ import annotations

import time
import weakref

import numpy as np

from invariant_mr.data import MRData, StreamedMRData
from invariant_mr.passes.local import LocalPasses, RowPasses
from invariant_mr.passes.rows import ArrayRows, RowVectors

#: The statistics views of in-memory data, by id of the `MRData` (dropped when it is collected).
_VIEWS: dict[int, StreamedMRData] = {}

#: Upper bound on the request results kept for reuse within one analysis (p x p meats: 8 MB at p = 1,000).
_REUSE_BYTES = 128 * 2**20


def row_passes(genotypes, vectors: RowVectors, *, client=None, n_chunks: int | None = None) -> tuple[RowPasses, str]:
    """(the runner, where it runs) for passes over `genotypes` (a streamed source or `ArrayRows`):
    local without a Dask client; with one, a Dask reduction over `n_chunks` row chunks (default
    `dask_passes.CHUNKS_PER_WORKER` per worker), each read by its worker from the source."""
    if client is None:
        return LocalPasses(genotypes.iter_blocks, vectors), "local"
    from invariant_mr.passes.dask_passes import CHUNKS_PER_WORKER, DaskPasses

    n_chunks = n_chunks or max(2, CHUNKS_PER_WORKER * _n_workers(client))
    runner = DaskPasses.over_source(genotypes, n_chunks, vectors, client=client)
    return runner, f"dask ({runner.n_chunks} row chunks)"


class RecordedPasses:
    """Runs kernels over the rows of `data` (see `row_passes`), records each pass (kind, seconds,
    where) in the data's cache, and reuses the results of requests already accumulated."""

    def __init__(self, data: StreamedMRData, vectors: RowVectors):
        self.data = data
        self.inner, self.where = row_passes(data.genotypes, vectors, client=data.client, n_chunks=data.n_chunks)
        self._carried: list = []

    def carry(self, kernel) -> None:
        """Run `kernel` (one with a `result_key()`) on the next pass, whatever that pass is for, and
        keep its result until `run` asks for it: how a method that knows, before a pass, what another
        method will ask for later saves that method a read of its own."""
        kept = self.data.cache.setdefault("carried_results", {})
        key = kernel.result_key()
        if key not in kept and all(k.result_key() != key for k in self._carried):
            self._carried.append(kernel)

    def run(self, kernel):
        if hasattr(kernel, "result_key"):
            kept = self.data.cache.setdefault("carried_results", {})
            key = kernel.result_key()
            if key in kept:  # carried on an earlier pass: served once, then dropped (n-length results)
                return kept.pop(key)
            self._carried = [k for k in self._carried if k.result_key() != key]
        if hasattr(kernel, "request_key") and hasattr(kernel, "with_requests"):
            return self._run_requests(kernel)
        return self._run(kernel)

    def _run(self, kernel, reused: int = 0):
        carried, self._carried = self._carried, []
        start = time.perf_counter()
        if carried:
            from invariant_mr.passes.kernels import Together

            out, *more = self.inner.run(Together([kernel, *carried]))
            kept = self.data.cache.setdefault("carried_results", {})
            for k, result in zip(carried, more):
                kept[k.result_key()] = result
        else:
            out = self.inner.run(kernel)
        record = {"kind": type(kernel).__name__, "seconds": round(time.perf_counter() - start, 3), "where": self.where}
        if reused:
            record["requests_reused"] = reused
        if carried:
            record["carried"] = [type(k).__name__ for k in carried]
        self.data.cache.setdefault("passes", []).append(record)
        return out

    def _run_requests(self, kernel):
        """A pass for the requests not already accumulated by an earlier pass of this analysis.

        Methods ask for the same results independently (the per-environment designs of tsls_all
        and tsls_all_env are the same regressions, with the same residuals), so each result is
        kept under its request's fingerprint (`kernel.request_key`) and reused bit for bit;
        results above `_REUSE_BYTES` in all are not kept.
        """
        cache = self.data.cache.setdefault("request_results", {})
        keys = [kernel.request_key(r) for r in kernel.requests]
        missing = [i for i, key in enumerate(keys) if key not in cache]
        found: dict[int, np.ndarray] = {i: cache[key] for i, key in enumerate(keys) if key in cache}
        if missing:
            fresh = self._run(kernel.with_requests([kernel.requests[i] for i in missing]),
                              reused=len(keys) - len(missing))
            used = sum(a.nbytes for a in cache.values())
            for i, arr in zip(missing, fresh):
                found[i] = arr
                if used + arr.nbytes <= _REUSE_BYTES:
                    arr.setflags(write=False)
                    cache[keys[i]] = arr
                    used += arr.nbytes
        return tuple(found[i] for i in range(len(keys)))


def _n_workers(client) -> int:
    try:
        return max(1, len(client.scheduler_info().get("workers", {})))
    except Exception:  # noqa: BLE001 - an unreachable scheduler fails later with its own message
        return 1


def row_vectors(data: StreamedMRData) -> RowVectors:
    """The data's row-aligned vectors (cached on the data)."""
    if "vectors" not in data.cache:
        data.cache["vectors"] = RowVectors(
            env_codes=data.env_codes, env_levels=data.env_levels, exposure=data.exposure, outcome=data.outcome,
            covariates=data.covariates, covariate_names=data.covariate_names or (),
        )
    return data.cache["vectors"]


def passes(data: StreamedMRData) -> RecordedPasses:
    """The one runner of the passes over `data` (cached on the data, so the analysis shares it)."""
    if "passes_runner" not in data.cache:
        data.cache["passes_runner"] = RecordedPasses(data, row_vectors(data))
    return data.cache["passes_runner"]


def statistics_view(data: MRData) -> StreamedMRData:
    """`data` as a `StreamedMRData` over its own in-memory array (no copy), cached per `data` object
    so that the methods of one analysis share its passes; the rows are `data`'s, so every
    statistic equals the one computed from the rows."""
    key = id(data)
    view = _VIEWS.get(key)
    if view is None or view.genotypes.Z is not data.Z:
        view = StreamedMRData(
            genotypes=ArrayRows(data.Z), exposure=data.exposure, outcome=data.outcome, env=data.env,
            covariates=data.covariates, sample_ids=data.sample_ids, instrument_names=data.instrument_names,
            covariate_names=data.covariate_names, min_samples_per_env=data.min_samples_per_env,
            dropped_instruments=data.dropped_instruments, clusters=data.clusters,
        )
        _VIEWS[key] = view
        weakref.finalize(data, _VIEWS.pop, key, None)
    return view


__all__ = ["RecordedPasses", "passes", "row_passes", "row_vectors", "statistics_view"]
