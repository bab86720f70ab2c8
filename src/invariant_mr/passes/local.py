"""Passes over the rows in this process, and the interface every pass runner offers."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from invariant_mr.passes.rows import Block, RowVectors, iter_array_blocks


class RowPasses(Protocol):
    """Something that can run a kernel over all rows: `LocalPasses`, `dask_passes.DaskPasses`,
    or `recorded.RecordedPasses` (either of them, with a record and reuse of each pass)."""

    def run(self, kernel): ...


class LocalPasses:
    """Passes over the rows in this process: `make_blocks()` returns a fresh iterable of blocks."""

    def __init__(self, make_blocks: Callable[[], Iterable[Block]], vectors: RowVectors):
        self.make_blocks = make_blocks
        self.vectors = vectors

    @classmethod
    def from_array(cls, Z, vectors: RowVectors, block_rows: int | None = None) -> LocalPasses:
        return cls(lambda: iter_array_blocks(Z, block_rows), vectors)

    def run(self, kernel):
        acc = kernel.start()
        for rows, block in self.make_blocks():
            kernel.add(acc, rows, block, self.vectors)
        return kernel.finish(acc)


__all__ = ["LocalPasses", "RowPasses"]
