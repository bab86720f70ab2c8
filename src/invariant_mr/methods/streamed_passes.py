"""The streamed passes over `StreamedMRData`'s genotype blocks, shared by the methods of one analysis.

`passes(data)` runs a `sufficient_stats` kernel over every row, in this process
or (when the data carry a Dask client) as a Dask reduction over row chunks
that each worker reads from the genotype file; every pass is recorded (kind,
seconds, where) in `data.cache["passes"]` for the provenance. `first_pass(data)`
is the per-environment cross-products, computed once per analysis.

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
from invariant_mr.errors import InputError
from invariant_mr.estimators.sufficient_stats import ArrayRows, EnvironmentCrossProducts, LocalPasses, RowVectors

#: The statistics views of in-memory data, by id of the `MRData` (dropped when it is collected).
_VIEWS: dict[int, StreamedMRData] = {}


class _RecordedPasses:
    """Runs kernels locally or on Dask, and records each pass (kind, seconds, where) in the data's cache."""

    def __init__(self, data: StreamedMRData, vectors: RowVectors):
        self.data = data
        if data.client is None:
            self.inner = LocalPasses(data.genotypes.iter_blocks, vectors)
            self.where = "local"
        else:
            from invariant_mr.estimators.dask_reduction import DaskPasses, RowChunk

            n_chunks = data.n_chunks or max(2, 2 * _n_workers(data.client))
            chunks = [RowChunk(lo, hi, data.genotypes.reader(lo, hi))
                      for lo, hi in data.genotypes.chunk_bounds(n_chunks)]
            self.inner = DaskPasses(chunks, vectors, client=data.client)
            self.where = f"dask ({len(chunks)} row chunks)"

    def run(self, kernel):
        from invariant_mr.estimators.sufficient_stats import MeatKernel

        if isinstance(kernel, MeatKernel):
            return self._run_meats(kernel)
        return self._run(kernel)

    def _run(self, kernel, reused: int = 0):
        start = time.perf_counter()
        out = self.inner.run(kernel)
        record = {"kind": type(kernel).__name__, "seconds": round(time.perf_counter() - start, 3), "where": self.where}
        if reused:
            record["requests_reused"] = reused
        self.data.cache.setdefault("passes", []).append(record)
        return out

    def _run_meats(self, kernel):
        """A second pass for the requests not already accumulated by an earlier pass of this analysis.

        Methods ask for the same meats independently (the per-environment designs of tsls_all and
        tsls_all_env are the same regressions, with the same residuals), so each result is kept under
        a fingerprint of its request (design arrays, directions, residual coefficients) and reused
        bit for bit; results above `_MEAT_CACHE_BYTES` in all are not kept.
        """
        from invariant_mr.estimators.sufficient_stats import MeatKernel

        cache = self.data.cache.setdefault("meats", {})
        keys = [_request_key(r) for r in kernel.requests]
        missing = [i for i, key in enumerate(keys) if key not in cache]
        found: dict[int, np.ndarray] = {i: cache[key] for i, key in enumerate(keys) if key in cache}
        if missing:
            fresh = self._run(MeatKernel([kernel.requests[i] for i in missing], kernel.fill),
                              reused=len(keys) - len(missing))
            used = sum(a.nbytes for a in cache.values())
            for i, arr in zip(missing, fresh):
                found[i] = arr
                if used + arr.nbytes <= _MEAT_CACHE_BYTES:
                    arr.setflags(write=False)
                    cache[keys[i]] = arr
                    used += arr.nbytes
        return tuple(found[i] for i in range(len(keys)))


#: Upper bound on the second-pass results kept for reuse within one analysis (p x p meats: 8 MB at p = 1,000).
_MEAT_CACHE_BYTES = 128 * 2**20


def _request_key(request) -> str:
    """A fingerprint of everything a `MeatRequest`'s result depends on (the rows are the data's own)."""
    import hashlib

    d = request.design
    h = hashlib.blake2b(digest_size=20)
    for part in (d.scope, d.n, d.n_controls, d.q, request.per_column):
        h.update(repr(part).encode())
    # What `PartialledDesign.residual_rows` reads (not the Gram matrix, which it never uses and
    # which is (k + 2)^2: hashing it cost more than the rest at large k).
    for arr in (d.instruments, d.z_controls, d.envs, d.means, d.control_cols, d.target_cols, d.coef,
                d.z_map, d.fill, request.directions, request.residuals):
        if arr is None:
            h.update(b"none")
        else:
            a = np.ascontiguousarray(arr)
            h.update(repr((a.dtype.str, a.shape)).encode())
            h.update(a.tobytes())
    return h.hexdigest()


def _n_workers(client) -> int:
    try:
        return max(1, len(client.scheduler_info().get("workers", {})))
    except Exception:  # noqa: BLE001 - an unreachable scheduler fails later with its own message
        return 1


def row_vectors(data: StreamedMRData) -> RowVectors:
    if "vectors" not in data.cache:
        data.cache["vectors"] = RowVectors(
            env_codes=data.env_codes, env_levels=data.env_levels, exposure=data.exposure, outcome=data.outcome,
            covariates=data.covariates, covariate_names=data.covariate_names or (),
        )
    return data.cache["vectors"]


def passes(data: StreamedMRData) -> _RecordedPasses:
    if "passes_runner" not in data.cache:
        data.cache["passes_runner"] = _RecordedPasses(data, row_vectors(data))
    return data.cache["passes_runner"]


def first_pass(data: StreamedMRData) -> EnvironmentCrossProducts:
    """The per-environment cross-products of [C, Z, D, Y] (one streamed pass, cached)."""
    if "stats" not in data.cache:
        from invariant_mr.estimators.sufficient_stats import CrossProductKernel

        vec = row_vectors(data)
        data.cache["stats"] = passes(data).run(CrossProductKernel(vec.env_levels, vec.q, vec.covariate_names))
        _check_degenerate(data, data.cache["stats"])
    return data.cache["stats"]


def _check_degenerate(data: StreamedMRData, stats: EnvironmentCrossProducts) -> None:
    """Refuse constant and duplicate instrument columns, which `MRData` would drop (QC removes
    monomorphic variants, so these are rare: duplicates are variants in perfect LD)."""
    zz = stats.zz.sum(axis=0)
    s = stats.z_sums.sum(axis=0)
    n = stats.n
    var = np.diag(zz) - s * s / n
    tol = 1e-12 * np.maximum(np.diag(zz), 1.0)
    names = data.instrument_names
    constant = np.flatnonzero(var <= tol)
    dist = np.diag(zz)[:, None] + np.diag(zz)[None, :] - 2 * zz
    close = np.triu(np.abs(dist) <= tol[:, None], 1) & (np.abs(s[:, None] - s[None, :]) <= 1e-12 * n)
    pairs = np.argwhere(close)
    if constant.size or pairs.size:
        what = [f"{names[j]} (constant)" for j in constant[:5]] + [
            f"{names[b]} (duplicate of {names[a]})" for a, b in pairs[:5]
        ]
        raise InputError(
            "streamed genotypes: constant or duplicate instrument column(s): " + ", ".join(what)
            + "; remove them with --extract (or run with --streaming off, which drops them)"
        )


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


def with_extra_covariates(data: StreamedMRData, extra: np.ndarray, names) -> StreamedMRData:
    """`data` with `extra` (n x k, e.g. genotype PCs) appended to its covariates; its first-pass
    statistics extend `first_pass(data)` by one O(n k m) pass instead of a new O(n m^2) one."""
    from dataclasses import replace

    from invariant_mr.estimators.sufficient_stats import ExtraCovariateKernel

    extra = np.asarray(extra, dtype=float).reshape(data.n, -1)
    stats = first_pass(data)
    covariates = extra if data.covariates is None else np.hstack([data.covariates, extra])
    out = replace(data, covariates=covariates, covariate_names=(*(data.covariate_names or ()), *names), cache={})
    vec = row_vectors(out)
    added = passes(out).run(ExtraCovariateKernel(vec.env_levels, stats.q, tuple(names)))
    out.cache["stats"] = stats.with_covariates(added)
    return out


__all__ = ["first_pass", "passes", "row_vectors", "statistics_view", "with_extra_covariates"]
