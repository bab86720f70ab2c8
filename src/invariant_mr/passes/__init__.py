"""The pass engine: every read of the genotype rows, local or on Dask, goes through here.

A statistic that needs the rows hands a kernel to a runner and gets the
kernel's result back; it never iterates over blocks itself.

* `rows`: the row sources (`ArrayRows`, `iter_array_blocks`, `block_rows_for`)
  and the row-aligned vectors (`RowVectors`);
* `blocks`: one block as float64 rows (missing calls filled, columns gathered,
  rows split by environment), the same in every kernel;
* `kernels`: the kernel protocol (`Kernel`, `RequestKernel`), the generic
  kernels (`EnvironmentGramKernel`, `ExtraCovariateKernel`, `ProjectionKernel`)
  and `Together` (several kernels on one read);
* `local`: the runner interface (`RowPasses`, one method: `run(kernel)`) and
  `LocalPasses`; `dask_passes`: `DaskPasses`, the same kernels as Dask
  reductions over row chunks;
* `recorded`: the runner of one analysis (`passes(data)`), local or Dask
  chosen in one place (`row_passes`), every pass recorded for the provenance,
  request results reused across methods, and kernels planned ahead carried on
  the next pass (`RecordedPasses.carry`); `statistics_view` serves in-memory
  data to the same engine.

Layer: beside `io/`, below everything that computes. It imports only `io`,
`data` and `errors`; `estimators`, `inference` and `methods` import it, and it
imports none of them (tests/test_architecture.py). That rule decides where a
kernel lives: a kernel whose result is a statistic with behaviour of its own
stays with that statistic. `CrossProductKernel` (whose result is an
`EnvironmentCrossProducts`, with its views, projections and partialling out)
extends `EnvironmentGramKernel` in `estimators.sufficient_stats`, and
`MeatKernel` (built from `MeatRequest`s of a `PartialledDesign`) lives there
too: moving them here would make the engine import the estimators. The engine
reuses a `MeatKernel`'s results through the `RequestKernel` protocol, without
knowing what a meat is.
"""

from invariant_mr.passes.dask_passes import DaskPasses, NpyRows, RowChunk, npy_chunks
from invariant_mr.passes.kernels import (
    EnvironmentGram,
    EnvironmentGramKernel,
    ExtraCovariateCrossProducts,
    ExtraCovariateKernel,
    Kernel,
    ProjectionKernel,
    RequestKernel,
    Together,
)
from invariant_mr.passes.local import LocalPasses, RowPasses
from invariant_mr.passes.recorded import RecordedPasses, passes, row_passes, row_vectors, statistics_view
from invariant_mr.passes.rows import ArrayRows, Block, RowVectors, block_rows_for, iter_array_blocks, row_index

__all__ = [
    "ArrayRows",
    "Block",
    "DaskPasses",
    "EnvironmentGram",
    "EnvironmentGramKernel",
    "ExtraCovariateCrossProducts",
    "ExtraCovariateKernel",
    "Kernel",
    "LocalPasses",
    "NpyRows",
    "ProjectionKernel",
    "RecordedPasses",
    "RequestKernel",
    "RowChunk",
    "RowPasses",
    "RowVectors",
    "block_rows_for",
    "iter_array_blocks",
    "npy_chunks",
    "passes",
    "row_index",
    "row_passes",
    "row_vectors",
    "statistics_view",
    "Together",
]
