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
int8; dosage formats would be rounded, and are refused: `Float32GenotypeCache`
holds them as float32 (4 bytes per call, on disk). `training_rows` picks the
cache a learner trains from.
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

    #: The dtype of the calls on disk, the file's name, and whether dosage sources are refused.
    dtype = np.int8
    file_name = CACHE_FILE

    def __init__(self, path: str | os.PathLike, genotypes: StreamedGenotypes):
        self.path = Path(path)
        self.env_codes = np.asarray(genotypes.env_codes)
        self.env_means = np.asarray(genotypes.env_means)
        self.center, self.scale = genotypes.center, genotypes.scale
        self._calls = np.load(self.path, mmap_mode="r")
        kind = np.dtype(self.dtype).name
        if self._calls.dtype != self.dtype or self._calls.shape != (genotypes.n, genotypes.p):
            raise InputError(f"{self.path} is not the {kind} cache of these genotypes "
                             f"({self._calls.dtype} {self._calls.shape} vs {kind} {(genotypes.n, genotypes.p)})")
        self.n, self.p = genotypes.n, genotypes.p

    @classmethod
    def build(cls, genotypes: StreamedGenotypes, directory: str | os.PathLike) -> Int8GenotypeCache:
        """Write the cache into `directory` (one streamed pass over the genotype file)."""
        kind = np.dtype(cls.dtype).name
        if kind == "int8" and genotypes.source.native_dtype != "int8":
            raise InputError(
                f"{genotypes.source.format} holds dosages: an int8 cache would round them; train from the "
                "float32 cache (`Float32GenotypeCache`) instead"
            )
        path = Path(directory) / cls.file_name
        calls = np.lib.format.open_memmap(path, mode="w+", dtype=cls.dtype, shape=(genotypes.n, genotypes.p))
        step = genotypes.raw_block_rows
        for lo in range(0, genotypes.n, step):
            hi = min(genotypes.n, lo + step)
            calls[lo:hi] = genotypes.source.read(genotypes.rows[lo:hi], genotypes.columns, dtype=kind)
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


class Float32GenotypeCache(Int8GenotypeCache):
    """The same cache for dosage sources (PLINK 2 dosages, BGEN, VCF DS): float32 calls, NaN missing,
    4 bytes per call on disk; exact, since the readers return dosages as float32."""

    dtype = np.float32
    file_name = "genotypes-float32.npy"


class GenotypeFileRows:
    """Rows of analysed genotypes that are not a genotype file (e.g. an in-memory view), as float32
    (a `RowSource` over their `read_rows_at`)."""

    def __init__(self, genotypes):
        self.genotypes = genotypes
        self.n, self.p = int(genotypes.n), int(genotypes.p)

    def rows(self, indices) -> np.ndarray:
        return np.asarray(self.genotypes.read_rows_at(np.asarray(indices, dtype=np.intp)), dtype=np.float32)


def training_rows(genotypes, directory: str | os.PathLike) -> tuple[Int8GenotypeCache | GenotypeFileRows, str]:
    """The rows a learner trains on, as a `RowSource`, with what they are: a row-major cache written
    into `directory` (int8 for hard-call files, float32 for dosage files: genotype files are
    variant-major, so a random batch read from the file itself would decode every selected variant
    for all samples), else the genotypes' own rows."""
    if isinstance(genotypes, StreamedGenotypes):
        cache = Int8GenotypeCache if genotypes.source.native_dtype == "int8" else Float32GenotypeCache
        return cache.build(genotypes, directory), f"the {np.dtype(cache.dtype).name} cache"
    return GenotypeFileRows(genotypes), "the genotype rows"


__all__ = ["CACHE_FILE", "Float32GenotypeCache", "GenotypeFileRows", "Int8GenotypeCache", "training_rows"]
