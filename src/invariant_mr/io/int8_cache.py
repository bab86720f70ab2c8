"""An int8 memory-mapped copy of the analysed genotypes, for minibatch training on large cohorts.

Neural training draws random rows every step. Genotype files are stored
variant-major (every variant's calls for all samples together), so a random
set of rows costs a pass over every selected variant; `Int8GenotypeCache`
writes the analysed rows x variants once, row-major, as int8 hard calls
(1 byte per call, -127 missing) in a `.npy` file, and `rows(indices)` returns
them imputed (environment mean) and, if QC standardised, scaled, as float32:
one batch at a time, with the file paged in by the operating system. A
500,000 x 1,000 cohort is a 0.5 GB file instead of 2 GB (float32) or 4 GB
(float64) in memory.

Only hard-call sources (PLINK 1, PLINK 2 hard calls, VCF GT) can be cached as
int8; dosage formats would be rounded, and are refused: `training_rows` then
gives `GenotypeFileRows`, batches read from the genotype file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from invariant_mr.errors import InputError
from invariant_mr.io.streamed_genotypes import StreamedGenotypes
from invariant_mr.io.streamed_qc import impute_block

CACHE_FILE = "genotypes-int8.npy"


class Int8GenotypeCache:
    """The rows x columns of `StreamedGenotypes` as a row-major int8 `.npy` memory map (a `RowSource`)."""

    def __init__(self, path: str | os.PathLike, genotypes: StreamedGenotypes):
        self.path = Path(path)
        self.env_codes = np.asarray(genotypes.env_codes)
        self.env_means = np.asarray(genotypes.env_means)
        self.center, self.scale = genotypes.center, genotypes.scale
        self._calls = np.load(self.path, mmap_mode="r")
        if self._calls.dtype != np.int8 or self._calls.shape != (genotypes.n, genotypes.p):
            raise InputError(f"{self.path} is not the int8 cache of these genotypes "
                             f"({self._calls.dtype} {self._calls.shape} vs int8 {(genotypes.n, genotypes.p)})")
        self.n, self.p = genotypes.n, genotypes.p

    @classmethod
    def build(cls, genotypes: StreamedGenotypes, directory: str | os.PathLike) -> Int8GenotypeCache:
        """Write the cache into `directory` (one streamed pass over the genotype file)."""
        if genotypes.source.native_dtype != "int8":
            raise InputError(
                f"{genotypes.source.format} holds dosages: an int8 cache would round them; train from the "
                "source (streamed minibatches) instead"
            )
        path = Path(directory) / CACHE_FILE
        calls = np.lib.format.open_memmap(path, mode="w+", dtype=np.int8, shape=(genotypes.n, genotypes.p))
        step = genotypes.raw_block_rows
        for lo in range(0, genotypes.n, step):
            hi = min(genotypes.n, lo + step)
            calls[lo:hi] = genotypes.source.read(genotypes.rows[lo:hi], genotypes.columns, dtype="int8")
        calls.flush()
        del calls
        return cls(path, genotypes)

    def rows(self, indices) -> np.ndarray:
        """float32 imputed (and standardised, if QC did) rows at analysis positions `indices`."""
        idx = np.asarray(indices, dtype=np.intp)
        raw = self._calls[idx]
        return impute_block(raw, self.env_means, self.env_codes[idx], center=self.center, scale=self.scale,
                            dtype=np.float32)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_calls"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._calls = np.load(self.path, mmap_mode="r")


class GenotypeFileRows:
    """Rows of the analysed genotypes read from the genotype file itself, as float32 (a `RowSource`).

    For sources the int8 cache refuses (dosages): every batch is a read of the
    selected rows over all kept variants, so it is slower than the cache but
    holds only the batch.
    """

    def __init__(self, genotypes):
        self.genotypes = genotypes
        self.n, self.p = int(genotypes.n), int(genotypes.p)

    def rows(self, indices) -> np.ndarray:
        return np.asarray(self.genotypes.read_rows_at(np.asarray(indices, dtype=np.intp)), dtype=np.float32)


def training_rows(genotypes, directory: str | os.PathLike) -> tuple[Int8GenotypeCache | GenotypeFileRows, str]:
    """The rows a learner trains on, as a `RowSource`, with what they are: the int8 cache written
    into `directory` for hard-call files, else reads from the genotype file (dosages, or
    genotypes that are not a file)."""
    source = getattr(genotypes, "source", None)
    if isinstance(genotypes, StreamedGenotypes) and getattr(source, "native_dtype", None) == "int8":
        return Int8GenotypeCache.build(genotypes, directory), "the int8 cache"
    return GenotypeFileRows(genotypes), ("the genotype file" if isinstance(genotypes, StreamedGenotypes)
                                         else "the genotype rows")


__all__ = ["CACHE_FILE", "GenotypeFileRows", "Int8GenotypeCache", "training_rows"]
