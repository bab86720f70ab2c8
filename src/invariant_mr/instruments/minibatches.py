"""Minibatches for neural training without a float copy of the genotypes.

A `RowSource` gives float32 rows on demand (`rows(indices)`): an in-memory
array (`ArrayRows`), an int8 memory-mapped genotype cache
(`io.int8_cache.Int8GenotypeCache`: 1 byte per call on disk, imputed per
batch), or any object with `n`, `p` and `rows`. `AffineRows` applies the
network's input map (centring, scaling or whitening) per batch, and
`input_moments` computes that map's mean and covariance in one streamed pass.
`SubsetRows` is a source's rows at given positions (a cross-fitting fold),
and `iter_row_blocks` walks a source in order (the streamed transform).

`PrefetchedBatches` keeps the device fed: a background thread gathers the
next batches (numpy fancy indexing and int8 -> float32 imputation release the
GIL) into a bounded queue, in pinned (page-locked) memory when the device is a
GPU, and the training loop copies each to the device with
`non_blocking=True`, so the copy overlaps the previous step's compute.

Memory: `prefetch + 1` batches of `batch x p` float32 plus the source's own
(for the int8 cache, nothing: the operating system pages the file in).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import torch

from invariant_mr.errors import InputError

#: Bytes of one float64 block of a streamed pass (the moment pass, the streamed transform): the
#: rows per block follow from the width, so a pass holds a few MiB whatever p is.
PASS_BLOCK_BYTES = 2 * 2**20


def pass_block_rows(p: int, block_bytes: int = PASS_BLOCK_BYTES) -> int:
    """Rows per block of a streamed pass over a p-column source (at least 64)."""
    return int(max(64, block_bytes // (8 * max(int(p), 1))))


class RowSource(Protocol):
    """Rows of an (n, p) matrix, gathered on demand as float32."""

    n: int
    p: int

    def rows(self, indices: np.ndarray) -> np.ndarray: ...


def is_row_source(obj) -> bool:
    return hasattr(obj, "rows") and hasattr(obj, "n") and hasattr(obj, "p") and not isinstance(obj, np.ndarray)


class ArrayRows:
    """An in-memory (n, p) array as a `RowSource` (float32 rows)."""

    def __init__(self, Z):
        self.Z = np.asarray(Z)
        if self.Z.ndim != 2:
            raise InputError(f"Z must be 2-D, got shape {self.Z.shape}")
        self.n, self.p = self.Z.shape

    def rows(self, indices) -> np.ndarray:
        return np.asarray(self.Z[np.asarray(indices)], dtype=np.float32)


class SubsetRows:
    """The rows `positions` of another source, renumbered 0..len(positions)-1 (e.g. a fold's rows)."""

    def __init__(self, source: RowSource, positions):
        self.source = source
        self.positions = np.asarray(positions, dtype=np.intp)
        if self.positions.ndim != 1:
            raise InputError("row positions must be a 1-D array")
        if self.positions.size and (self.positions.min() < 0 or self.positions.max() >= source.n):
            raise InputError(f"row positions outside 0..{source.n - 1}")
        self.n, self.p = int(self.positions.size), int(source.p)

    def rows(self, indices) -> np.ndarray:
        return self.source.rows(self.positions[np.asarray(indices, dtype=np.intp)])


def iter_row_blocks(source: RowSource, block_rows: int | None = None) -> Iterator[tuple[slice, np.ndarray]]:
    """(slice of rows, float32 block) over every row of `source` in order, one block alive at a time."""
    step = int(block_rows or pass_block_rows(source.p))
    for lo in range(0, source.n, step):
        hi = min(source.n, lo + step)
        yield slice(lo, hi), source.rows(np.arange(lo, hi))


class AffineRows:
    """((rows - mean) @ map) of another source, as float32: the network's input, batch by batch."""

    def __init__(self, source: RowSource, mean: np.ndarray, matrix: np.ndarray):
        self.source = source
        self.mean = np.asarray(mean, dtype=np.float32)
        self.matrix = np.asarray(matrix, dtype=np.float32)
        self.n, self.p = source.n, self.matrix.shape[1]

    def rows(self, indices) -> np.ndarray:
        x = self.source.rows(indices)
        x -= self.mean
        return x @ self.matrix


def input_moments(source: RowSource, block_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mean (p,), covariance (p, p), maximum likelihood) of the source's rows, in one streamed pass
    (float64 sums of rows shifted by the first row, for conditioning)."""
    n, p = source.n, source.p
    shift = source.rows(np.array([0])).astype(np.float64)[0]
    total = np.zeros(p)
    cross = np.zeros((p, p))
    for _, block in iter_row_blocks(source, block_rows):
        x = block.astype(np.float64)
        x -= shift
        total += x.sum(axis=0)
        cross += x.T @ x
    mean = total / n
    return mean + shift, cross / n - np.outer(mean, mean)


class PrefetchedBatches:
    """Iterate device tensors of `source.rows(b)` for each index array `b` of `batches`, gathered ahead.

    `prefetch` batches wait in a queue filled by one background thread; on a
    CUDA device they are pinned and copied with `non_blocking=True`. Leaving
    the loop early stops the thread. An error in the thread is raised in the
    consumer.
    """

    def __init__(self, source: RowSource, batches: Sequence[np.ndarray], device: torch.device, *,
                 prefetch: int = 2, pin_memory: bool | None = None):
        if prefetch < 1:
            raise InputError(f"prefetch must be at least 1, got {prefetch}")
        self.source = source
        self.batches = list(batches)
        self.device = torch.device(device)
        self.prefetch = int(prefetch)
        self.pin_memory = (self.device.type == "cuda") if pin_memory is None else bool(pin_memory)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[torch.Tensor]:
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        done = object()

        def produce():
            try:
                for idx in self.batches:
                    if stop.is_set():
                        return
                    t = torch.from_numpy(np.ascontiguousarray(self.source.rows(idx), dtype=np.float32))
                    if self.pin_memory:
                        t = t.pin_memory()
                    while not stop.is_set():
                        try:
                            q.put(t, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                q.put(done)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                q.put(exc)

        worker = threading.Thread(target=produce, name="minibatch-prefetch", daemon=True)
        worker.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item.to(self.device, non_blocking=self.pin_memory)
        finally:
            stop.set()
            while worker.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    worker.join(timeout=0.05)


__all__ = ["AffineRows", "ArrayRows", "PrefetchedBatches", "RowSource", "SubsetRows", "input_moments", "is_row_source",
           "iter_row_blocks", "pass_block_rows"]
