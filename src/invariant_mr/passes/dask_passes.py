"""Passes as Dask reductions over row chunks.

Each row chunk becomes one task that reads its rows block by block (on the
worker, from the genotype file or a Dask array chunk) and returns a partial
result; the partials are merged by a tree of `merge` tasks. Only the partial
statistics travel (K m^2 floats for the first pass, the meats for the second),
never genotype rows, when the chunks read from storage the workers can see.

Works with any Dask scheduler: the default one (threads) when no client is
active, a `distributed.LocalCluster` (`--workers N`) or a running cluster
(`distributed.Client("tcp://scheduler:8786")`, `--scheduler ADDRESS`): pass the
client, or leave `client=None` to use whichever client is the default.
Nothing here distributes work by itself; Dask does.

Task keys start with `suffstats-chunk-` and `suffstats-merge-`, so a task
stream shows which worker ran which chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from invariant_mr.errors import InputError
from invariant_mr.passes.rows import Block, RowVectors, iter_array_blocks, row_index

#: Partials merged per reduction task (a binary tree keeps each merge to two K m^2 arrays).
SPLIT_EVERY = 2

#: Row chunks per worker by default: several, so that a worker slowed by other work on its core
#: leaves its remaining chunks to the others, and the first partials merge while the last chunks
#: are read. (Each chunk costs one partial result, K m^2 floats, and one merge.)
CHUNKS_PER_WORKER = 4


@dataclass(frozen=True)
class RowChunk:
    """Rows [start, stop) of a genotype source and how to read them on a worker.

    `read()` returns an iterable of (global row indices, block) pairs covering
    exactly these rows (global row positions unless `local_rows`); it is pickled to the worker, so it should be a
    top-level function or a `functools.partial` of a picklable source method
    (e.g. `partial(source.iter_blocks, start=..., stop=...)`), not a lambda.
    """

    start: int
    stop: int
    #: None: rows [start, stop) of the source a `DaskPasses.over_source` reads (sent once, not per chunk).
    read: Callable[[], Iterable[Block]] | None
    #: True when `read()` yields rows relative to `start` (e.g. `iter_blocks(rows=positions[start:stop])`
    #: of a `GenotypeSource`, whose slices index the rows it was given).
    local_rows: bool = False


@dataclass(frozen=True)
class NpyRows:
    """Reads rows [start, stop) of a `.npy` genotype matrix through a memory map (picklable)."""

    path: str
    start: int
    stop: int
    block_rows: int | None = None

    def __call__(self) -> Iterable[Block]:
        Z = np.load(self.path, mmap_mode="r")
        return iter_array_blocks(Z, self.block_rows, self.start, self.stop)


def npy_chunks(path: str, n_chunks: int, block_rows: int | None = None) -> list[RowChunk]:
    """`n_chunks` row chunks of a `.npy` file for `DaskPasses`."""
    n = np.load(path, mmap_mode="r").shape[0]
    bounds = np.linspace(0, n, int(n_chunks) + 1).astype(int)
    return [RowChunk(int(lo), int(hi), NpyRows(str(path), int(lo), int(hi), block_rows)) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]


def _run_chunk(kernel, source, start: int, stop: int, vectors: RowVectors, block_rows: int | None, local_rows: bool,
               rows=None):
    """One task: the kernel over rows [start, stop), with row indices local to the chunk. `source`: the
    chunk's reader, or None to read rows [start, stop) of `rows` (the runner's shared row source)."""
    local = vectors.rows(start, stop)
    acc = kernel.start()
    if isinstance(source, np.ndarray):  # a materialised Dask array chunk
        blocks = iter_array_blocks(source, block_rows)
        offset = 0
    elif source is None:
        blocks = rows.iter_blocks(start, stop)
        offset = start
    else:
        blocks = source()
        offset = 0 if local_rows else start
    for rows, block in blocks:
        kernel.add(acc, row_index(rows) - offset, block, local)
    return kernel.finish(acc)


def _merge(kernel, *parts):
    out = parts[0]
    for part in parts[1:]:
        out = kernel.merge(out, part)
    return out


class DaskPasses:
    """Runs kernels over row chunks with Dask (a `RowPasses`).

    chunks: a Dask array (n, p) whose row chunks become tasks, or a sequence of
    `RowChunk`s covering rows 0..n-1. `client`: a `distributed.Client`, or None
    for the default scheduler.
    """

    def __init__(self, chunks, vectors: RowVectors, *, client=None, block_rows: int | None = None):
        self.vectors = vectors
        self.client = client
        self.block_rows = block_rows
        self.rows = None  # the shared row source of `over_source`
        if hasattr(chunks, "to_delayed") and hasattr(chunks, "chunks"):
            if chunks.ndim != 2 or chunks.shape[0] != vectors.n:
                raise InputError(f"the Dask array must be (n={vectors.n}, p), got {chunks.shape}")
            arr = chunks.rechunk({1: -1})
            bounds = np.cumsum((0,) + arr.chunks[0])
            self._parts = [
                (blk, int(lo), int(hi), False)
                for blk, lo, hi in zip(arr.to_delayed().ravel(), bounds[:-1], bounds[1:])
            ]
        else:
            chunks = sorted(chunks, key=lambda c: c.start)
            covered = 0
            for c in chunks:
                if c.start != covered or c.stop <= c.start:
                    raise InputError("row chunks must be contiguous, non-empty and start at row 0")
                covered = c.stop
            if covered != vectors.n:
                raise InputError(f"row chunks cover {covered} rows, the vectors {vectors.n}")
            self._parts = [(c.read, c.start, c.stop, c.local_rows) for c in chunks]
        if not self._parts:
            raise InputError("no row chunks")

    @property
    def n_chunks(self) -> int:
        return len(self._parts)

    @classmethod
    def over_source(cls, rows, n_chunks: int, vectors: RowVectors, *, client=None) -> DaskPasses:
        """Passes over `n_chunks` row chunks of `rows`, a row source (`iter_blocks(start, stop)` yielding
        global row positions, `chunk_bounds(n)`: streamed genotypes, `ArrayRows`). The source goes to the
        workers once per pass, not inside every chunk's task: it holds the sample table and n-length
        row maps (3 MB pickled at n = 60,000), which per-chunk readers copied into the graph once per chunk."""
        out = cls([RowChunk(lo, hi, None) for lo, hi in rows.chunk_bounds(n_chunks)], vectors, client=client)
        out.rows = rows
        return out

    def graph(self, kernel, *, kernel_data=None, vectors_data=None, rows_data=None):
        """The Delayed result of the reduction (not computed). `kernel_data`/`vectors_data`/`rows_data`:
        the kernel, the vectors and the shared row source already on the workers (futures of
        `Client.scatter`) instead of in the graph."""
        import uuid

        import dask

        token = uuid.uuid4().hex[:12]
        kernel_d = dask.delayed(kernel, name=f"suffstats-kernel-{token}") if kernel_data is None else kernel_data
        vectors_d = (dask.delayed(self.vectors, name=f"suffstats-vectors-{token}") if vectors_data is None
                     else vectors_data)
        rows_d = rows_data
        if rows_d is None and self.rows is not None:
            rows_d = dask.delayed(self.rows, name=f"suffstats-rows-{token}")
        parts = [
            dask.delayed(_run_chunk, pure=True)(
                kernel_d, src, lo, hi, vectors_d, self.block_rows, local, rows_d,
                dask_key_name=f"suffstats-chunk-{token}-{i}",
            )
            for i, (src, lo, hi, local) in enumerate(self._parts)
        ]
        # Adjacent pairs, level by level: a fixed order of additions (the same bits on every run with
        # the same chunks), and row order for the kernels whose merge stacks rows.
        level = 0
        while len(parts) > 1:
            parts = [
                dask.delayed(_merge, pure=True)(
                    kernel_d, *parts[i : i + SPLIT_EVERY], dask_key_name=f"suffstats-merge-{token}-{level}-{i}"
                )
                if i + 1 < len(parts)
                else parts[i]
                for i in range(0, len(parts), SPLIT_EVERY)
            ]
            level += 1
        return parts[0]

    def run(self, kernel) -> Any:
        if self.client is None:
            return self.graph(kernel).compute()
        # The kernel (tens of MB for a second pass: its designs) and the vectors go to every worker
        # once, before the chunks. Inside the graph they would be computed on one worker, which the
        # scheduler then favours for every chunk (their data are there), so that the other worker
        # idled until work stealing moved chunks over.
        # The shared row source likewise. (Their futures are released on return, which frees the
        # workers' copies.)
        shared = [kernel, self.vectors] + ([] if self.rows is None else [self.rows])
        kernel_f, vectors_f, *rows_f = self.client.scatter(shared, broadcast=True, hash=False)
        future = self.client.compute(self.graph(kernel, kernel_data=kernel_f, vectors_data=vectors_f,
                                                rows_data=rows_f[0] if rows_f else None))
        return _aligned(future.result())


def local_cluster(n_workers: int, preload: Sequence[str] = ()):
    """(cluster, client): a `distributed.LocalCluster` of `n_workers` single-threaded worker processes
    set up for passes, and its client. Close both (client first) when done.

    The workers keep Dask's pre-spawn environment: one BLAS thread each, and its
    `MALLOC_TRIM_THRESHOLD_=65536`, which turns off glibc's dynamic mmap threshold and so doubles
    a worker's page faults; giving the workers the local run's thresholds instead (mmap above
    32 MiB, trim above 64 MiB) was measured (benchmarks/results/dask_workers.md) and saved no
    measurable CPU while it raised the peak RSS of 2 workers by 40-120 MiB, so it is not done.

    `preload`: modules each worker imports as it starts (those that unpickling the kernels and row
    sources needs), so that the first pass does not wait for them. Partials are small beside a
    worker's memory, so the memory limits stay Dask's defaults.

    The dashboard's instruments are off or slowed (there is no dashboard): each worker's sampling
    profiler (every 10 ms), the system monitors and the event-loop tick cost an idle cluster of two
    workers about 0.12 CPU-seconds a second, 0.02 without them (measured on this project's 2-core
    machine), CPU the passes then lack on a shared machine.
    """
    import dask
    from distributed import Client, LocalCluster

    quiet = {"distributed.worker.profile.enabled": False, "distributed.admin.system-monitor.interval": "2s",
             "distributed.admin.tick.interval": "500ms"}
    # Read as the scheduler and each Nanny are made; a Nanny hands its config to its worker process.
    with dask.config.set(quiet):
        cluster = LocalCluster(n_workers=int(n_workers), threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=40, preload=list(preload))
    try:
        return cluster, Client(cluster)
    except BaseException:
        cluster.close()
        raise


def _aligned(result):
    """`result` with its arrays (at the top or in tuples and lists) memory-aligned: arrays that
    distributed deserialises from a worker's message can be unaligned and read-only, which
    scipy.linalg refuses ("Expected a real or complex array")."""
    if isinstance(result, np.ndarray):
        return result if result.flags.aligned else result.copy()
    if isinstance(result, (tuple, list)):
        return type(result)(_aligned(x) for x in result)
    return result


__all__ = ["CHUNKS_PER_WORKER", "DaskPasses", "NpyRows", "RowChunk", "local_cluster", "npy_chunks"]
