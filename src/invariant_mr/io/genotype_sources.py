"""Genotype sources: PLINK 1, PLINK 2, BGEN v1.2 and VCF/BCF behind one interface.

A `GenotypeSource` is a lazily opened genotype file. Its tables (`samples`,
`variants`) are parsed on opening; genotypes are read on demand, as a block of
rows x variants (`read`) or as a stream of row blocks (`iter_blocks`), so a
biobank-sized file is never held in memory. Blocks come as

* ``int8`` hard calls 0/1/2 with `MISSING_INT8` (-127) for a missing call, for
  formats that store hard calls (PLINK 1, PLINK 2 read as hard calls, VCF GT);
* ``float32`` dosages in [0, 2] with NaN for a missing call, for every format.

Asking a dosage source (BGEN, PLINK 2 dosages, VCF DS) for int8 is an error
rather than a silent rounding.

Which allele is counted (the dosage is the expected number of copies of it):

==========  =================================================================
format      counted allele (`variants["counted_allele"]`)
==========  =================================================================
plink1      A1, .bim column 5 (`count_a1=False`: A2, column 6), as PLINK 1.9
            `--recode A` and bed-reader's `count_A1=True` do
plink2      the first ALT allele of the .pvar (pgenlib allele index 1); the
            other allele is REF. Multi-allelic sites count ALT1 only
bgen        the second allele of each variant (dosage = P(het) + 2 P(hom 2)),
            which is ALT for files written ref-first (PLINK 2 `ref-first`,
            qctool, UK Biobank); the other allele is the first
vcf         the first ALT allele (GT: copies of allele index 1; DS: the
            VCF DS field, which is the ALT dosage by the VCF convention)
==========  =================================================================

Variant subsets (`select_variants`: an --extract ID list, a --region
CHROM[:START-END], a `min_info` filter for imputed data) return a new view
of the same file; reads through the view see only those variants.

INFO scores: BGEN's are computed from the genotype probabilities with the
IMPUTE info measure over all samples of the file (one extra pass, run the
first time `min_info` or `info_scores()` is asked for); VCF and .pvar take the
INFO/R2 (minimac), INFO/DR2 (Beagle) or INFO/INFO (IMPUTE) field, the first
present. PLINK 1 files carry none, and `min_info` is an error there.
"""

from __future__ import annotations

import abc
import copy
import gzip
import hashlib
import os
import struct
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from invariant_mr.errors import InputError
from invariant_mr.io.genotypes import (
    BED_MAGIC,
    VariantSelection,
    read_bim,
    read_fam,
    read_variant_id_file,
    resolve_bfile_prefix,
)
from invariant_mr.io.genotypes import (
    select_variants as _select_variant_positions,
)

#: The int8 code of a missing hard call (bed-reader's convention).
MISSING_INT8 = np.int8(-127)

#: Default size of one row block in bytes: big enough that per-call overheads
#: vanish, small enough to keep the peak memory of a pass bounded. Formats
#: stored variant-major and compressed (BGEN, VCF, PLINK 2) decode every
#: selected variant once per row block, so fewer, larger blocks are cheaper.
DEFAULT_BLOCK_BYTES = 256 * 1024**2

#: Columns of every source's variant table, in order (the first five are those
#: of `invariant_mr.io.genotypes`, so its selection and naming helpers apply).
VARIANT_COLUMNS = ("variant_id", "chrom", "pos", "counted_allele", "other_allele", "info")

#: INFO fields that carry an imputation quality score, in order of preference.
INFO_FIELDS = ("R2", "DR2", "INFO")

_DTYPES = {"int8": np.int8, "float32": np.float32}


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    return path


def _check_dtype(dtype) -> str:
    name = np.dtype(dtype).name if dtype is not None and not isinstance(dtype, str) else dtype
    if name not in _DTYPES:
        raise InputError(f"genotype blocks are read as 'int8' or 'float32', got {dtype!r}")
    return name


def _sorted_unique(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Sorted unique rows and the map back to the requested order (None when already sorted and unique)."""
    if rows.size < 2 or np.all(rows[1:] > rows[:-1]):
        return rows, None
    uniq, inverse = np.unique(rows, return_inverse=True)
    return uniq, inverse


def int8_to_float32(block: np.ndarray) -> np.ndarray:
    """Hard calls (int8, -127 missing) as float32 dosages with NaN for missing."""
    out = block.astype(np.float32)
    out[block == MISSING_INT8] = np.nan
    return out


def default_block_rows(n_cols: int, dtype: str = "int8", block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    """Rows per block so that one block of `n_cols` variants takes about `block_bytes`."""
    itemsize = np.dtype(_DTYPES[_check_dtype(dtype)]).itemsize
    return max(1, int(block_bytes // max(1, n_cols * itemsize)))


def file_fingerprint(paths: Sequence[Path], edge_bytes: int = 1 << 20) -> str:
    """A cheap content key: sha256 over each file's name, size and first and last MiB.

    Hashing a 1 TB BGEN in full takes longer than the analysis; this key
    changes whenever a file is replaced or rewritten in place with a different
    size or ends, which is what caches and Dask task names need.
    """
    h = hashlib.sha256()
    for path in paths:
        size = path.stat().st_size
        h.update(f"{path.name}\0{size}\0".encode())
        with open(path, "rb") as fh:
            h.update(fh.read(edge_bytes))
            if size > 2 * edge_bytes:
                fh.seek(size - edge_bytes)
                h.update(fh.read(edge_bytes))
    return h.hexdigest()


# --------------------------------------------------------------------- base
class GenotypeSource(abc.ABC):
    """A genotype file read lazily by blocks. Subclasses implement `_read_file`.

    Attributes
    ----------
    format : "plink1", "plink2", "bgen", "vcf" or "npy".
    path : the main file (the .bed, .pgen, .bgen or .vcf).
    native_dtype : "int8" when the file holds hard calls, "float32" for dosages.
    counted_allele_rule : which allele the dosages count, in words.
    has_fid : whether the file names families; where it does not (VCF, BGEN
        without a .sample file, a .psam without FID), FID equals IID and
        samples should be matched to phenotypes by IID.
    """

    format: str = ""

    def __init__(self, *, path: Path, samples: pd.DataFrame, variants: pd.DataFrame, native_dtype: str,
                 counted_allele_rule: str, has_fid: bool):
        self.path = path
        self.native_dtype = native_dtype
        self.counted_allele_rule = counted_allele_rule
        self.has_fid = has_fid
        self._samples = samples.reset_index(drop=True)
        missing = [c for c in VARIANT_COLUMNS if c not in variants.columns]
        if missing:
            raise AssertionError(f"variant table lacks {missing}")
        self._file_variants = variants[list(VARIANT_COLUMNS)].reset_index(drop=True)
        # Positions (into the file's variants) this view exposes, in file order.
        self._variant_index = np.arange(len(self._file_variants), dtype=np.intp)
        self._variants_view: pd.DataFrame | None = None
        # What select_variants kept; on an unfiltered source, every variant.
        n_file = len(self._file_variants)
        self.selection = VariantSelection(np.arange(n_file), n_file, None, 0, None)
        self.min_info: float | None = None
        self.n_removed_by_info = 0

    # ------------------------------------------------------------ tables
    @property
    def samples(self) -> pd.DataFrame:
        """FID and IID (strings) of every sample, in file order. Do not modify."""
        return self._samples

    @property
    def variants(self) -> pd.DataFrame:
        """variant_id, chrom, pos, counted_allele, other_allele, info (NaN where unknown) of this view."""
        if self._variants_view is None:
            self._variants_view = self._file_variants.iloc[self._variant_index].reset_index(drop=True)
        return self._variants_view

    @property
    def n_samples(self) -> int:
        return len(self._samples)

    @property
    def n_variants(self) -> int:
        return int(self._variant_index.size)

    @property
    def file_variant_index(self) -> np.ndarray:
        """Positions of this view's variants in the file (read-only copy)."""
        return self._variant_index.copy()

    @property
    def has_info(self) -> bool:
        """Whether the format carries (or can compute) an imputation INFO score."""
        return False

    # --------------------------------------------------------- selection
    def select_variants(
        self,
        *,
        extract: str | os.PathLike | Sequence[str] | None = None,
        region: str | None = None,
        min_info: float | None = None,
        exclude: str | os.PathLike | Sequence[str] | None = None,
        chromosomes: str | Sequence[str] | None = None,
    ) -> GenotypeSource:
        """A view with the variants listed in `extract` (a file of IDs or a list), inside
        `region` (CHROM[:START-END], 1-based inclusive) and with INFO >= `min_info`.

        The filters combine (logical and) and apply to this view's variants.
        `selection` of the new view records the counts.
        """
        view = copy.copy(self)
        ids = None
        if extract is not None:
            ids = read_variant_id_file(extract) if isinstance(extract, (str, os.PathLike)) else list(extract)
        dropped = None
        if exclude is not None:
            dropped = (read_variant_id_file(exclude, "--exclude") if isinstance(exclude, (str, os.PathLike))
                       else list(exclude))
        table = self.variants
        if ids is not None or region is not None or dropped is not None or chromosomes is not None:
            sel = _select_variant_positions(table, extract=ids, region=region, source=str(self.path),
                                            exclude=dropped, chromosomes=chromosomes)
            keep = sel.indices
        else:
            sel = VariantSelection(np.arange(self.n_variants), self.n_variants, None, 0, None)
            keep = sel.indices
        if min_info is not None:
            if not 0.0 <= float(min_info) <= 1.0:
                raise InputError(f"--min-info must be between 0 and 1, got {min_info}")
            if not self.has_info:
                raise InputError(
                    f"--min-info: {self.path} ({self.format}) carries no imputation INFO score; "
                    "drop --min-info or use the imputed BGEN/VCF/pgen files"
                )
            info = self._info_for(self._variant_index[keep])
            good = ~(info < float(min_info))  # NaN (no score for that variant) passes, as in PLINK 2
            if not good.any():
                raise InputError(f"--min-info {min_info:g}: none of the {keep.size} selected variants pass")
            keep = keep[good]
        view._variant_index = self._variant_index[keep]
        view._variants_view = None
        view.selection = VariantSelection(
            indices=keep, n_available=self.n_variants, n_requested_ids=sel.n_requested_ids,
            n_ids_not_found=sel.n_ids_not_found, region=sel.region, n_excluded=sel.n_excluded,
            chromosomes=sel.chromosomes,
        )
        view.min_info = None if min_info is None else float(min_info)
        view.n_removed_by_info = int(sel.indices.size - keep.size)
        return view

    def _info_for(self, file_positions: np.ndarray) -> np.ndarray:
        return self._file_variants["info"].to_numpy(dtype=float)[file_positions]

    def info_scores(self) -> np.ndarray:
        """INFO score of each variant of this view (NaN where the file has none)."""
        return self._info_for(self._variant_index)

    # ------------------------------------------------------------ reading
    def _rows(self, rows) -> np.ndarray:
        if rows is None:
            return np.arange(self.n_samples, dtype=np.intp)
        if isinstance(rows, slice):
            return np.arange(self.n_samples, dtype=np.intp)[rows]
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if rows.shape != (self.n_samples,):
                raise InputError(f"row mask has shape {rows.shape}, expected ({self.n_samples},)")
            return np.flatnonzero(rows)
        rows = rows.astype(np.intp, copy=False).ravel()
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_samples):
            raise InputError(f"row positions must lie in 0..{self.n_samples - 1}")
        return rows

    def _cols(self, cols) -> np.ndarray:
        if cols is None:
            return self._variant_index
        if isinstance(cols, slice):
            return self._variant_index[cols]
        cols = np.asarray(cols)
        if cols.dtype == bool:
            if cols.shape != (self.n_variants,):
                raise InputError(f"variant mask has shape {cols.shape}, expected ({self.n_variants},)")
            return self._variant_index[cols]
        cols = cols.astype(np.intp, copy=False).ravel()
        if cols.size and (cols.min() < 0 or cols.max() >= self.n_variants):
            raise InputError(f"variant positions must lie in 0..{self.n_variants - 1}")
        return self._variant_index[cols]

    def read(self, rows=None, cols=None, dtype: str | None = None) -> np.ndarray:
        """Genotypes of `rows` (sample positions, any order, or a mask/slice) x `cols`
        (positions into this view's variants), as a C-ordered (len(rows), len(cols)) array.

        `dtype` "int8" (hard calls, -127 missing) or "float32" (dosages, NaN
        missing); default: the file's `native_dtype`.
        """
        dtype = self.native_dtype if dtype is None else _check_dtype(dtype)
        if dtype == "int8" and self.native_dtype != "int8":
            raise InputError(
                f"{self.path} holds dosages ({self.format}); read it as float32 "
                "(int8 would round imputed dosages)"
            )
        file_rows = self._rows(rows)
        file_cols = self._cols(cols)
        if file_rows.size == 0 or file_cols.size == 0:
            return np.empty((file_rows.size, file_cols.size), dtype=_DTYPES[dtype])
        block = self._read_file(file_rows, file_cols, self.native_dtype)
        if dtype == "float32" and block.dtype == np.int8:
            block = int8_to_float32(block)
        return block

    def iter_blocks(
        self,
        rows=None,
        cols=None,
        *,
        block_rows: int | None = None,
        dtype: str | None = None,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
    ) -> Iterator[tuple[slice, np.ndarray]]:
        """Stream `read(rows[s], cols, dtype)` over consecutive row blocks `s`.

        Yields `(s, block)` where `s` is a slice into `rows` (into all samples
        when `rows` is None). Only one block is alive at a time unless the
        caller keeps them. `block_rows` defaults to about `block_bytes` per block.
        """
        dtype = self.native_dtype if dtype is None else _check_dtype(dtype)
        row_pos = self._rows(rows)
        n_cols = self._cols(cols).size
        if block_rows is None:
            block_rows = default_block_rows(n_cols, dtype, block_bytes)
        if int(block_rows) < 1:
            raise InputError(f"block_rows must be at least 1, got {block_rows}")
        block_rows = int(block_rows)
        for start in range(0, row_pos.size, block_rows):
            s = slice(start, min(start + block_rows, row_pos.size))
            yield s, self.read(row_pos[s], cols, dtype=dtype)

    @abc.abstractmethod
    def _read_file(self, rows: np.ndarray, cols: np.ndarray, dtype: str) -> np.ndarray:
        """(len(rows), len(cols)) block in the native dtype; rows and cols are file positions."""

    # ---------------------------------------------------------- provenance
    @abc.abstractmethod
    def input_paths(self) -> list[Path]:
        """Every file this source reads."""

    def input_record(self, hash_inputs: bool = True) -> list[dict]:
        """Path, size and (with `hash_inputs`) sha256 of every input file."""
        from invariant_mr.provenance import input_record

        paths = self.input_paths()
        if hash_inputs:
            return input_record(paths)
        return [{"path": str(p), "bytes": p.stat().st_size} for p in paths]

    def fingerprint(self) -> str:
        """Cheap content key of the input files plus this view's variant selection."""
        h = hashlib.sha256(file_fingerprint(self.input_paths()).encode())
        h.update(self._variant_index.astype(np.int64).tobytes())
        return h.hexdigest()

    def describe(self) -> dict:
        """What was read, for provenance and the report."""
        out = {
            "format": self.format,
            "path": str(self.path),
            "n_samples": self.n_samples,
            "n_variants": self.n_variants,
            "n_variants_in_file": len(self._file_variants),
            "native_dtype": self.native_dtype,
            "counted_allele": self.counted_allele_rule,
        }
        out["variant_selection"] = self.selection.to_dict()
        if self.min_info is not None:
            out["min_info"] = self.min_info
            out["n_removed_by_info"] = self.n_removed_by_info
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, n_samples={self.n_samples}, n_variants={self.n_variants})"


# ------------------------------------------------------------------ PLINK 1
class Plink1Source(GenotypeSource):
    """A PLINK 1 .bed/.bim/.fam fileset read as int8 through bed-reader.

    Dosages count A1 (.bim column 5), or A2 with `count_a1=False`.
    """

    format = "plink1"

    def __init__(self, prefix: str | os.PathLike, *, count_a1: bool = True, num_threads: int | None = None):
        self.prefix = resolve_bfile_prefix(prefix)
        self.bed_path = _require_file(self.prefix.with_name(self.prefix.name + ".bed"), "PLINK .bed file")
        self.bim_path = _require_file(self.prefix.with_name(self.prefix.name + ".bim"), "PLINK .bim file")
        self.fam_path = _require_file(self.prefix.with_name(self.prefix.name + ".fam"), "PLINK .fam file")
        self.count_a1 = bool(count_a1)
        self.num_threads = num_threads
        samples = read_fam(self.fam_path)
        bim = read_bim(self.bim_path)
        if not self.count_a1:
            bim = bim.rename(columns={"counted_allele": "other_allele", "other_allele": "counted_allele"})
        bim["info"] = np.nan
        super().__init__(
            path=self.bed_path, samples=samples, variants=bim, native_dtype="int8",
            counted_allele_rule="A1 (.bim column 5)" if self.count_a1 else "A2 (.bim column 6)",
            has_fid=True,
        )
        self._check_bed()

    def _check_bed(self) -> None:
        with open(self.bed_path, "rb") as fh:
            magic = fh.read(3)
        if magic != BED_MAGIC:
            raise InputError(f"{self.bed_path} is not a variant-major PLINK 1 .bed file (magic bytes {magic.hex()})")
        n, p = self.n_samples, len(self._file_variants)
        expected = 3 + p * ((n + 3) // 4)
        actual = self.bed_path.stat().st_size
        if actual != expected:
            raise InputError(
                f"{self.bed_path} has {actual} bytes but {self.bim_path.name} ({p} variants) and "
                f"{self.fam_path.name} ({n} samples) imply {expected}: the .bim/.fam do not belong to this .bed"
            )

    def _read_file(self, rows, cols, dtype):
        from bed_reader import open_bed

        # bed-reader would re-read the .fam/.bim; we hold them, so pass the counts.
        with open_bed(
            self.bed_path, iid_count=self.n_samples, sid_count=len(self._file_variants),
            count_A1=self.count_a1, num_threads=self.num_threads,
        ) as bed:
            return bed.read(index=np.s_[rows, cols], dtype="int8", order="C", num_threads=self.num_threads)

    def input_paths(self):
        return [self.bed_path, self.bim_path, self.fam_path]


# ------------------------------------------------------------------ PLINK 2
def _read_pvar(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """A .pvar (or .bim-like headerless .pvar) as a variant table, and the allele count per variant."""
    opener = gzip.open if str(path).endswith(".gz") else open
    header = None
    skip = 0
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("##"):
                skip += 1
                continue
            if line.startswith("#CHROM"):
                header = line[1:].split()
                skip += 1
            break
    try:
        if header is not None:
            table = pd.read_csv(path, sep="\t", header=None, names=header, skiprows=skip, dtype=str,
                                comment=None, quoting=3)
        else:
            raw = pd.read_csv(path, sep=r"\s+", header=None, dtype=str, skiprows=skip)
            names = ["CHROM", "ID", "CM", "POS", "ALT", "REF"] if raw.shape[1] == 6 else ["CHROM", "ID", "POS", "ALT", "REF"]
            if raw.shape[1] not in (5, 6):
                raise InputError(f"{path}: a .pvar without a #CHROM header needs 5 or 6 columns, found {raw.shape[1]}")
            raw.columns = names
            table = raw
    except pd.errors.EmptyDataError:
        raise InputError(f"{path} is empty: a .pvar needs one line per variant") from None
    for col in ("CHROM", "POS", "ID", "REF", "ALT"):
        if col not in table.columns:
            raise InputError(f"{path}: the .pvar header lacks the {col} column")
    pos = pd.to_numeric(table["POS"], errors="coerce")
    if pos.isna().any():
        row = int(np.flatnonzero(pos.isna().to_numpy())[0])
        raise InputError(f"{path}: variant {row + 1} has a non-integer position {table['POS'].iloc[row]!r}")
    alt = table["ALT"].astype(str)
    n_alleles = 1 + alt.str.count(",").to_numpy()
    info = np.full(len(table), np.nan)
    if "INFO" in table.columns:
        info = _info_from_strings(table["INFO"])
    variants = pd.DataFrame({
        "variant_id": table["ID"].to_numpy(),
        "chrom": table["CHROM"].astype(str).to_numpy(),
        "pos": pos.astype(np.int64).to_numpy(),
        "counted_allele": alt.str.split(",", n=1).str[0].to_numpy(),
        "other_allele": table["REF"].to_numpy(),
        "info": info,
    })
    return variants, n_alleles


def _info_from_strings(info: pd.Series) -> np.ndarray:
    """The first of R2, DR2, INFO found in each VCF-style INFO string (NaN if none)."""
    out = np.full(len(info), np.nan)
    text = info.fillna(".").astype(str)
    for key in INFO_FIELDS:
        found = text.str.extract(rf"(?:^|;){key}=([^;,]+)", expand=False)
        value = pd.to_numeric(found, errors="coerce").to_numpy(dtype=float)
        fill = np.isnan(out) & ~np.isnan(value)
        out[fill] = value[fill]
    return out


def _read_psam(path: Path) -> tuple[pd.DataFrame, bool]:
    """FID/IID of a .psam (header '#FID IID ...' or '#IID ...') or headerless .fam-like file."""
    with open(path, encoding="utf-8") as fh:
        first = ""
        for first in fh:
            if not first.startswith("##"):
                break
    if first.startswith(("#FID", "#IID")):
        table = pd.read_csv(path, sep=r"\s+", dtype=str, comment=None, skiprows=0,
                            skip_blank_lines=True)
        table = table[~table.iloc[:, 0].astype(str).str.startswith("##")]
        table.columns = [c.lstrip("#") for c in table.columns]
        if "IID" not in table.columns:
            raise InputError(f"{path}: the .psam header lacks IID")
        has_fid = "FID" in table.columns
        fid = table["FID"] if has_fid else table["IID"]
        return pd.DataFrame({"FID": fid.to_numpy(), "IID": table["IID"].to_numpy()}), has_fid
    return read_fam(path), True


class Plink2Source(GenotypeSource):
    """A PLINK 2 .pgen/.pvar/.psam fileset read through pgenlib.

    `hardcalls=False` (default) reads dosages as float32 (hard calls where the
    file stores no dosage); `hardcalls=True` reads int8 hard calls.
    Dosages count the first ALT allele.
    """

    format = "plink2"

    def __init__(self, prefix: str | os.PathLike, *, hardcalls: bool = False):
        text = str(prefix)
        for ext in (".pgen", ".pvar", ".psam"):
            text = text.removesuffix(ext)
        self.prefix = Path(text)
        self.pgen_path = _require_file(Path(text + ".pgen"), "PLINK 2 .pgen file")
        self.pvar_path = _require_file(Path(text + ".pvar"), "PLINK 2 .pvar file")
        self.psam_path = _require_file(Path(text + ".psam"), "PLINK 2 .psam file")
        self.hardcalls = bool(hardcalls)
        samples, has_fid = _read_psam(self.psam_path)
        variants, n_alleles = _read_pvar(self.pvar_path)
        self._allele_idx_offsets = None
        if (n_alleles > 2).any():
            self._allele_idx_offsets = np.concatenate([[0], np.cumsum(n_alleles)]).astype(np.uintp)
        super().__init__(
            path=self.pgen_path, samples=samples, variants=variants,
            native_dtype="int8" if self.hardcalls else "float32",
            counted_allele_rule="ALT (first ALT allele of the .pvar)", has_fid=has_fid,
        )
        self._check_pgen()

    @property
    def has_info(self) -> bool:
        return bool(np.isfinite(self._file_variants["info"].to_numpy(dtype=float)).any())

    def _reader(self, subset: np.ndarray | None):
        try:  # LGPL-3: an optional extra, like the other GPL-family packages
            import pgenlib
        except ImportError:
            raise InputError("reading --pfile needs pgenlib: pip install 'invariant-mr[plink2]'") from None

        kwargs = {"raw_sample_ct": self.n_samples, "variant_ct": len(self._file_variants)}
        if self._allele_idx_offsets is not None:
            kwargs["allele_idx_offsets"] = self._allele_idx_offsets
        if subset is not None:
            kwargs["sample_subset"] = subset.astype(np.uint32)
        try:
            return pgenlib.PgenReader(bytes(self.pgen_path), **kwargs)
        except RuntimeError as exc:
            why = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
            raise InputError(f"{self.pgen_path}: {why.strip()} (truncated or damaged, or do the .pvar/.psam not "
                             "belong to this .pgen?)") from None

    def _check_pgen(self) -> None:
        reader = self._reader(None)
        try:
            if reader.get_raw_sample_ct() != self.n_samples or reader.get_variant_ct() != len(self._file_variants):
                raise InputError(
                    f"{self.pgen_path} holds {reader.get_raw_sample_ct()} samples x {reader.get_variant_ct()} "
                    f"variants; the .psam/.pvar list {self.n_samples} x {len(self._file_variants)}"
                )
        finally:
            reader.close()

    def _read_file(self, rows, cols, dtype):
        uniq, inverse = _sorted_unique(rows)
        subset = None if uniq.size == self.n_samples else uniq
        reader = self._reader(subset)
        idx = np.ascontiguousarray(cols, dtype=np.uint32)
        try:
            if dtype == "int8":
                out = np.empty((uniq.size, idx.size), dtype=np.int8)
                reader.read_list(idx, out, allele_idx=1, sample_maj=1)
                out[out == -9] = MISSING_INT8
            else:
                # pgenlib reads dosages variant-major only.
                tmp = np.empty((idx.size, uniq.size), dtype=np.float32)
                reader.read_dosages_list(idx, tmp, allele_idx=1)
                tmp[tmp == -9] = np.nan
                out = np.ascontiguousarray(tmp.T)
        except RuntimeError as exc:  # pgenlib's only report of a file cut short or damaged
            raise InputError(
                f"{self.pgen_path}: cannot read its genotype records ({str(exc).strip()}); the file is truncated or "
                "damaged: re-create it (plink2 --make-pgen) or re-download it"
            ) from None
        finally:
            reader.close()
        return out if inverse is None else out[inverse]

    def input_paths(self):
        return [self.pgen_path, self.pvar_path, self.psam_path]


# --------------------------------------------------------------------- BGEN
def read_oxford_sample(path: Path) -> pd.DataFrame:
    """FID (ID_1) and IID (ID_2) of an Oxford .sample file (header line, then the type line)."""
    try:
        table = pd.read_csv(path, sep=r"\s+", dtype=str)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path} is empty") from None
    cols = list(table.columns)
    if len(cols) < 2 or cols[0] != "ID_1" or cols[1] != "ID_2":
        raise InputError(f"{path} is not an Oxford .sample file (first line must start 'ID_1 ID_2')")
    if len(table) and str(table.iloc[0, 0]) == "0" and str(table.iloc[0, 1]) == "0":
        table = table.iloc[1:]
    return pd.DataFrame({"FID": table["ID_1"].to_numpy(), "IID": table["ID_2"].to_numpy()})


def _bgen_header(path: Path) -> dict:
    with open(path, "rb") as fh:
        head = fh.read(24)
    if len(head) < 24:
        raise InputError(f"{path} is too short to be a BGEN file")
    _offset, hlen, n_variants, n_samples, magic = struct.unpack("<IIII4s", head[:20])
    if magic not in (b"bgen", b"\x00\x00\x00\x00"):
        raise InputError(f"{path} is not a BGEN file (magic {magic!r})")
    with open(path, "rb") as fh:
        fh.seek(4 + hlen - 4)
        flags = struct.unpack("<I", fh.read(4))[0]
    return {
        "n_variants": n_variants, "n_samples": n_samples,
        "compression": flags & 3, "layout": (flags >> 2) & 0xF, "has_sample_ids": bool(flags >> 31),
    }


def check_bgen_complete(path: Path, header: dict) -> None:
    """Walk the variant blocks of a layout-2 BGEN (lengths only) and refuse a truncated file by name.

    cbgen trusts the lengths it reads and crashes the process (segmentation
    fault) on a file cut short, so the walk runs before cbgen sees the file:
    a few small reads per variant, done once per file when its metafile is built.
    """
    size = path.stat().st_size

    def cut(where: str) -> InputError:
        return InputError(
            f"{path}: the file ends inside {where} ({size} bytes; the header promises {header['n_variants']} variants "
            f"of {header['n_samples']} samples): it is truncated; re-create or re-download it"
        )

    with open(path, "rb", buffering=1 << 16) as fh:
        first = struct.unpack("<I", fh.read(4))[0] + 4
        hlen = struct.unpack("<I", fh.read(4))[0]
        if header["has_sample_ids"]:
            fh.seek(4 + hlen)
            raw = fh.read(4)
            if len(raw) < 4 or 4 + hlen + struct.unpack("<I", raw)[0] > size:
                raise cut("the sample identifier block")
        if first > size:
            raise cut("the header")
        fh.seek(first)

        def take(n: int, what: str) -> bytes:
            raw = fh.read(n)
            if len(raw) < n:
                raise cut(what)
            return raw

        for j in range(header["n_variants"]):
            where = f"variant {j + 1}"
            for _ in range(3):  # variant ID, rsID, chromosome: 2-byte length, then the text
                fh.seek(struct.unpack("<H", take(2, where))[0], 1)
            take(4, where)  # position
            for _ in range(struct.unpack("<H", take(2, where))[0]):  # alleles: 4-byte length, then the text
                fh.seek(struct.unpack("<I", take(4, where))[0], 1)
            block = struct.unpack("<I", take(4, where))[0]
            fh.seek(block, 1)
            if fh.tell() > size:
                raise cut(where)


def _bgen_metafile_path(bgen: Path) -> Path:
    beside = Path(str(bgen) + ".metafile")
    if beside.is_file() and beside.stat().st_mtime >= bgen.stat().st_mtime:
        return beside
    stat = bgen.stat()
    key = hashlib.sha256(f"{bgen.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:24]
    cache = Path(os.environ.get("INVARIANT_MR_CACHE", Path(tempfile.gettempdir()) / "invariant_mr_cache")) / "bgen"
    return cache / f"{bgen.name}.{key}.metafile"


class BgenSource(GenotypeSource):
    """A BGEN v1.2 file (layout 2, any compression) read as float32 dosages through cbgen.

    The dosage counts the second allele: P(het) + 2 P(hom second) for
    unphased diploid calls, the sum of the two haplotypes' second-allele
    probabilities for phased ones. Sample IDs come from `sample` (an Oxford
    .sample file) or else from the IDs stored in the BGEN.

    cbgen locates variants through a metafile: an existing `<file>.metafile`
    newer than the BGEN is used, else one is built once in a cache folder
    ($INVARIANT_MR_CACHE or the temp folder).
    """

    format = "bgen"

    def __init__(self, path: str | os.PathLike, *, sample: str | os.PathLike | None = None,
                 metafile: str | os.PathLike | None = None):
        self.bgen_path = _require_file(Path(path), "BGEN file")
        self.sample_path = None if sample is None else _require_file(Path(sample), "BGEN .sample file")
        header = _bgen_header(self.bgen_path)
        if header["layout"] != 2:
            raise InputError(f"{self.bgen_path} uses BGEN layout {header['layout']}; only layout 2 (v1.2+) is read")
        self.metafile_path = Path(metafile) if metafile is not None else _bgen_metafile_path(self.bgen_path)
        if not self.metafile_path.is_file():  # a new or changed file: check it is whole before cbgen reads it
            check_bgen_complete(self.bgen_path, header)
        import cbgen

        with cbgen.bgen_file(self.bgen_path) as bgen:
            if self.sample_path is not None:
                samples = read_oxford_sample(self.sample_path)
                has_fid = True
                if len(samples) != bgen.nsamples:
                    raise InputError(
                        f"{self.sample_path} lists {len(samples)} samples but {self.bgen_path} holds {bgen.nsamples}"
                    )
            elif bgen.contain_samples:
                ids = np.array([s.decode() if isinstance(s, bytes) else str(s) for s in bgen.read_samples()], dtype=object)
                samples = pd.DataFrame({"FID": ids, "IID": ids})
                has_fid = False
            else:
                raise InputError(f"{self.bgen_path} stores no sample IDs: give the .sample file (--sample)")
            if not self.metafile_path.is_file():
                self.metafile_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.metafile_path.with_name(self.metafile_path.name + f".{os.getpid()}.tmp")
                bgen.create_metafile(tmp)
                os.replace(tmp, self.metafile_path)
        variants, offsets, n_alleles = self._read_metafile()
        self._offsets = offsets
        self._n_alleles = n_alleles
        # Computed once on demand and shared by every view of this file.
        self._info_cache: dict[str, np.ndarray] = {}
        super().__init__(
            path=self.bgen_path, samples=samples, variants=variants, native_dtype="float32",
            counted_allele_rule="second allele of each BGEN variant (ALT in ref-first files)",
            has_fid=has_fid,
        )

    def _read_metafile(self):
        import cbgen

        parts = []
        with cbgen.bgen_metafile(self.metafile_path) as mf:
            for i in range(mf.npartitions):
                parts.append(mf.read_partition(i).variants)

        def cat(name):
            return np.concatenate([getattr(v, name) for v in parts]) if parts else np.array([])

        rsid = np.char.decode(cat("rsid").astype(bytes), "utf-8").astype(object)
        vid = np.char.decode(cat("id").astype(bytes), "utf-8").astype(object)
        chrom = np.char.decode(cat("chromosome").astype(bytes), "utf-8").astype(object)
        alleles = np.char.decode(cat("allele_ids").astype(bytes), "utf-8")
        split = [a.split(",") for a in alleles]
        variant_id = np.where(np.isin(rsid, ["", "."]), vid, rsid)
        table = pd.DataFrame({
            "variant_id": variant_id,
            "chrom": chrom,
            "pos": cat("position").astype(np.int64),
            "counted_allele": [s[1] if len(s) > 1 else "" for s in split],
            "other_allele": [s[0] for s in split],
            "info": np.nan,
        })
        return table, cat("offset").astype(np.uint64), cat("nalleles").astype(np.int64)

    @property
    def has_info(self) -> bool:
        return True

    def _dosage(self, bgen, j: int, samples: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Dosage (float32) and E[g^2] (for INFO) of file variant j, over `samples` (None: all)."""
        if self._n_alleles[j] != 2:
            raise InputError(
                f"{self.bgen_path}: variant {self._file_variants['variant_id'].iloc[j]} has "
                f"{self._n_alleles[j]} alleles; only biallelic variants are read (split them first)"
            )
        g = bgen.read_genotype(int(self._offsets[j]), precision=32)
        probs = g.probability if samples is None else g.probability[samples]
        ploidy = g.ploidy if samples is None else g.ploidy[samples]
        if (ploidy != 2).any():
            raise InputError(
                f"{self.bgen_path}: variant {self._file_variants['variant_id'].iloc[j]} has non-diploid samples"
            )
        if g.phased:
            h1, h2 = probs[:, 1], probs[:, 3]
            dosage = h1 + h2
            second = dosage + 2 * h1 * h2  # E[g^2] with independent haplotypes
        else:
            dosage = probs[:, 1] + 2 * probs[:, 2]
            second = probs[:, 1] + 4 * probs[:, 2]
        return dosage.astype(np.float32, copy=False), second

    def _read_file(self, rows, cols, dtype):
        import cbgen

        out = np.empty((rows.size, cols.size), dtype=np.float32)
        # Index rows only when a subset is asked for: the full variant is decoded anyway.
        sub = None if (rows.size == self.n_samples and np.array_equal(rows, np.arange(self.n_samples))) else rows
        with cbgen.bgen_file(self.bgen_path) as bgen:
            for k, j in enumerate(cols):
                out[:, k] = self._dosage(bgen, int(j), sub)[0]
        return out

    def _info_for(self, file_positions):
        if "info" not in self._info_cache:
            self._info_cache["info"] = self._compute_info()
        return self._info_cache["info"][file_positions]

    def _compute_info(self) -> np.ndarray:
        """IMPUTE info = 1 - sum_i Var(g_i) / (2 n f (1 - f)) over non-missing samples, f = sum E[g] / 2n.

        1 for a variant with no uncertainty; a monomorphic variant (f in {0, 1}) gets 1, as in IMPUTE2/qctool.
        """
        import cbgen

        p = len(self._file_variants)
        info = np.full(p, np.nan)
        with cbgen.bgen_file(self.bgen_path) as bgen:
            for j in range(p):
                if self._n_alleles[j] != 2:
                    continue
                dosage, second = self._dosage(bgen, j, None)
                ok = ~np.isnan(dosage)
                n = int(ok.sum())
                if n == 0:
                    continue
                d = dosage[ok].astype(np.float64)
                f = d.sum() / (2 * n)
                if f <= 0.0 or f >= 1.0:
                    info[j] = 1.0
                    continue
                var = (second[ok].astype(np.float64) - d**2).sum()
                info[j] = 1.0 - var / (2 * n * f * (1 - f))
        return info

    def input_paths(self):
        return [p for p in (self.bgen_path, self.sample_path) if p is not None]


# ---------------------------------------------------------------------- VCF
class _HtslibMessages:
    """Iterate VCF records while htslib's own stderr lines are caught, so a damaged file gives one message.

    htslib writes its diagnosis ("[E::vcf_parse_format] Number of columns ... does not match") straight to
    file descriptor 2 before cyvcf2 raises a bare Exception; the caught text goes into the InputError, and
    warnings of a file that reads to the end are passed on to stderr unchanged.
    """

    def __init__(self):
        self.text = ""

    def open(self, path: Path, **kwargs):
        """cyvcf2.VCF(path), with htslib's complaint about a damaged header caught into the InputError."""
        from cyvcf2 import VCF

        try:
            return next(self._caught(lambda: iter([VCF(str(path), **kwargs)])))
        except Exception as exc:  # noqa: BLE001 - cyvcf2 raises OSError or a bare Exception
            why = (self.text.strip().splitlines() or [str(exc)])[-1]
            raise InputError(f"{path} is not a readable VCF/BCF file ({why}); if it is compressed, it may be "
                             "truncated: re-create or re-download it") from None

    def records(self, vcf):
        yield from self._caught(lambda: vcf)

    def _caught(self, make):
        import sys

        sys.stderr.flush()
        with tempfile.TemporaryFile(mode="w+b") as sink:
            saved = os.dup(2)
            os.dup2(sink.fileno(), 2)
            failed = False
            try:
                yield from make()
            except BaseException:
                failed = True
                raise
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                self.text = sink.read().decode("utf-8", "replace")
                if self.text and not failed:
                    sys.stderr.write(self.text)


class VcfSource(GenotypeSource):
    """A VCF or BCF file (plain, bgzipped or BCF) read through cyvcf2.

    `dosage_field=None` reads GT as int8 hard calls (copies of the first ALT
    allele, any ploidy; a call with any missing allele is missing);
    `dosage_field="DS"` reads that FORMAT field (ALT1 dosage) as float32.
    The variant table is built with one pass over the file at opening; each
    read parses the file again, restricted to the requested samples.
    """

    format = "vcf"

    def __init__(self, path: str | os.PathLike, *, dosage_field: str | None = None):
        self.vcf_path = _require_file(Path(path), "VCF/BCF file")
        self.dosage_field = dosage_field
        vcf = _HtslibMessages().open(self.vcf_path, lazy=True)
        names = np.array(vcf.samples, dtype=object)
        if len(names) == 0:
            vcf.close()
            raise InputError(f"{self.vcf_path} has no sample columns")
        dup = pd.Index(names)[pd.Index(names).duplicated()]
        if len(dup):
            vcf.close()
            raise InputError(f"{self.vcf_path}: sample name(s) occur more than once: {', '.join(map(str, dup[:5]))}")
        if dosage_field is not None and not self._has_format(vcf, dosage_field):
            vcf.close()
            raise InputError(f"{self.vcf_path} declares no FORMAT/{dosage_field} field in its header")
        info_key = next((k for k in INFO_FIELDS if self._has_info(vcf, k)), None)
        chrom, pos, ids, ref, alt, info, n_alt = [], [], [], [], [], [], []
        htslib = _HtslibMessages()
        try:
            for rec in htslib.records(vcf):
                chrom.append(rec.CHROM)
                pos.append(rec.POS)
                ids.append(rec.ID if rec.ID is not None else ".")
                ref.append(rec.REF)
                alt.append(rec.ALT[0] if rec.ALT else ".")
                n_alt.append(len(rec.ALT))
                if info_key is not None:
                    value = rec.INFO.get(info_key)
                    if isinstance(value, tuple):
                        value = value[0] if value else None
                    info.append(np.nan if value is None else float(value))
        except Exception as exc:  # noqa: BLE001 - htslib reports a damaged record as a bare Exception
            raise self._damaged(len(chrom), htslib.text or str(exc)) from None
        finally:
            vcf.close()
        self._n_alt = np.array(n_alt, dtype=np.int64)
        self.info_field = info_key
        variants = pd.DataFrame({
            "variant_id": np.array(ids, dtype=object),
            "chrom": np.array(chrom, dtype=object),
            "pos": np.array(pos, dtype=np.int64),
            "counted_allele": np.array(alt, dtype=object),
            "other_allele": np.array(ref, dtype=object),
            "info": np.array(info, dtype=float) if info_key is not None else np.nan,
        })
        super().__init__(
            path=self.vcf_path, samples=pd.DataFrame({"FID": names, "IID": names.copy()}), variants=variants,
            native_dtype="int8" if dosage_field is None else "float32",
            counted_allele_rule="ALT (first ALT allele)" + ("" if dosage_field is None else f", FORMAT/{dosage_field}"),
            has_fid=False,
        )

    def _damaged(self, n_read: int, why: str) -> InputError:
        why = why.strip().splitlines()[-1] if why.strip() else "unreadable record"
        return InputError(
            f"{self.vcf_path}: cannot read record {n_read + 1} ({why}); the file is truncated or damaged: "
            "re-create or re-download it (check with `bcftools view`)"
        )

    def _refuse_multiallelic(self, cols: np.ndarray) -> None:
        """Dosages count the first ALT allele, which is meaningless for a record with several: refuse by name."""
        multi = cols[self._n_alt[cols] > 1]
        if multi.size:
            v = self._file_variants.iloc[int(multi[0])]
            raise InputError(
                f"{self.vcf_path}: {multi.size} multiallelic record(s) among the variants read, e.g. {v['variant_id']} "
                f"({v['chrom']}:{v['pos']}, {self._n_alt[multi[0]]} ALT alleles); split them into biallelic records "
                "(bcftools norm -m -any) or leave them out (--extract, --exclude, --region)"
            )

    @staticmethod
    def _has_format(vcf, key: str) -> bool:
        try:
            return vcf.get_header_type(key) is not None and any(
                h.type == "FORMAT" and h.info().get("ID") == key for h in vcf.header_iter()
            )
        except KeyError:
            return False

    @staticmethod
    def _has_info(vcf, key: str) -> bool:
        return any(h.type == "INFO" and h.info().get("ID") == key for h in vcf.header_iter())

    @property
    def has_info(self) -> bool:
        return self.info_field is not None

    def _read_file(self, rows, cols, dtype):
        from cyvcf2 import VCF

        self._refuse_multiallelic(cols)
        uniq, inverse = _sorted_unique(rows)
        all_rows = uniq.size == self.n_samples
        names = None if all_rows else [str(s) for s in self._samples["IID"].to_numpy()[uniq]]
        out = np.empty((uniq.size, cols.size), dtype=np.int8 if dtype == "int8" else np.float32)
        order = np.argsort(cols, kind="stable")
        wanted = cols[order]
        vcf = VCF(str(self.vcf_path), lazy=True, samples=names, gts012=True)
        try:
            k = 0
            last = int(wanted[-1])
            i = -1
            htslib = _HtslibMessages()
            for i, rec in enumerate(htslib.records(vcf)):
                if i > last:
                    break
                while k < wanted.size and wanted[k] == i:
                    out[:, order[k]] = self._record_values(rec, dtype)
                    k += 1
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - htslib reports a damaged record as a bare Exception
            raise self._damaged(i + 1, htslib.text or str(exc)) from None
        finally:
            vcf.close()
        if k != wanted.size:
            raise InputError(f"{self.vcf_path} changed since it was opened: fewer records than indexed")
        return out if inverse is None else out[inverse]

    def _record_values(self, rec, dtype):
        gt = rec.genotype.array()[:, :-1] if rec.genotype is not None else None  # drop the phasing column
        if gt is not None:
            # A haploid call (chrX in males, chrY, MT) ends its allele list early (-2), or the whole record has
            # one allele per call: counted on a 0..1 scale it would mix with the diploid 0..2 dosages, so it is
            # refused rather than silently rescaled.
            haploid = (gt[:, 0] >= 0) & ((gt.shape[1] == 1) | (gt[:, 1:] == -2).all(axis=1))
            if haploid.any():
                who = self._samples["IID"].to_numpy()[np.flatnonzero(haploid)[0]] if len(self._samples) == gt.shape[0] else "a sample"
                raise InputError(
                    f"{self.vcf_path}: record {rec.ID or '.'} ({rec.CHROM}:{rec.POS}) has {int(haploid.sum())} haploid "
                    f"call(s) (e.g. {who}); dosages here are diploid: leave out chrX/Y/MT (--chr, --region) or make "
                    "the calls diploid first (bcftools +fixploidy)"
                )
        if dtype == "int8":
            missing = (gt == -1).any(axis=1)
            values = (gt == 1).sum(axis=1).astype(np.int8)
            values[missing] = MISSING_INT8
            return values
        ds = rec.format(self.dosage_field)
        if ds is None:
            return np.full(len(rec.gt_types), np.nan, dtype=np.float32)
        values = np.asarray(ds, dtype=np.float32)[:, 0].copy()
        # cyvcf2 gives the BCF "missing" and "vector end" floats as NaN already; guard the int sentinel.
        values[values < -1e30] = np.nan
        return values

    def input_paths(self):
        return [self.vcf_path]


# ---------------------------------------------------------------------- npy
class NpySource(GenotypeSource):
    """A samples x variants dosage matrix in a .npy file (memory-mapped), for tests and
    preprocessed data; see `invariant_mr.io.genotypes.NpyGenotypes` for the sidecar files."""

    format = "npy"

    def __init__(self, path, *, samples=None, variants=None):
        from invariant_mr.io.genotypes import NpyGenotypes

        self._npy = NpyGenotypes(path, samples=samples, variants=variants)
        table = self._npy.variant_table.copy()
        table["info"] = np.nan
        super().__init__(
            path=self._npy.path, samples=self._npy.sample_table, variants=table, native_dtype="float32",
            counted_allele_rule="as stored in the .npy matrix", has_fid=self._npy.ids_from_file,
        )
        self.ids_from_file = self._npy.ids_from_file

    def _read_file(self, rows, cols, dtype):
        return np.ascontiguousarray(self._npy.read(rows, cols))

    def input_paths(self):
        return self._npy.input_paths()


# ------------------------------------------------------------------ factory
def open_genotypes(
    *,
    bfile: str | os.PathLike | None = None,
    pfile: str | os.PathLike | None = None,
    bgen: str | os.PathLike | None = None,
    sample: str | os.PathLike | None = None,
    vcf: str | os.PathLike | None = None,
    npy: str | os.PathLike | None = None,
    npy_samples: str | os.PathLike | None = None,
    npy_variants: str | os.PathLike | None = None,
    count_a1: bool = True,
    pfile_hardcalls: bool = False,
    vcf_dosage: str | None = None,
    bgen_metafile: str | os.PathLike | None = None,
    extract: str | os.PathLike | Sequence[str] | None = None,
    region: str | None = None,
    min_info: float | None = None,
    exclude: str | os.PathLike | Sequence[str] | None = None,
    chromosomes: str | Sequence[str] | None = None,
) -> GenotypeSource:
    """Open exactly one genotype source and apply the variant filters.

    `--bfile PREFIX`, `--pfile PREFIX`, `--bgen FILE [--sample FILE]`,
    `--vcf FILE [--vcf-dosage DS]` or `--npy FILE`; `extract`, `region` and
    `min_info` as in `GenotypeSource.select_variants`.
    """
    given = {name: value for name, value in
             (("--bfile", bfile), ("--pfile", pfile), ("--bgen", bgen), ("--vcf", vcf), ("--npy", npy))
             if value is not None}
    if len(given) != 1:
        which = ", ".join(given) if given else "none"
        raise InputError(f"give exactly one genotype source (--bfile, --pfile, --bgen, --vcf or --npy); got {which}")
    if sample is not None and bgen is None:
        raise InputError("--sample names the samples of a --bgen file; it has no meaning with " + next(iter(given)))
    if vcf_dosage is not None and vcf is None:
        raise InputError("--vcf-dosage applies to --vcf only")
    if (npy_samples is not None or npy_variants is not None) and npy is None:
        raise InputError("--npy-samples/--npy-variants apply to --npy only")
    if not count_a1 and bfile is None:
        raise InputError("counting A2 (--dosage-of A2) applies to --bfile only")
    if bfile is not None:
        source: GenotypeSource = Plink1Source(bfile, count_a1=count_a1)
    elif pfile is not None:
        source = Plink2Source(pfile, hardcalls=pfile_hardcalls)
    elif bgen is not None:
        source = BgenSource(bgen, sample=sample, metafile=bgen_metafile)
    elif vcf is not None:
        source = VcfSource(vcf, dosage_field=vcf_dosage)
    else:
        source = NpySource(npy, samples=npy_samples, variants=npy_variants)
    if any(v is not None for v in (extract, region, min_info, exclude, chromosomes)):
        source = source.select_variants(extract=extract, region=region, min_info=min_info, exclude=exclude,
                                        chromosomes=chromosomes)
    return source


__all__ = [
    "DEFAULT_BLOCK_BYTES",
    "MISSING_INT8",
    "VARIANT_COLUMNS",
    "BgenSource",
    "GenotypeSource",
    "NpySource",
    "Plink1Source",
    "Plink2Source",
    "VcfSource",
    "default_block_rows",
    "file_fingerprint",
    "int8_to_float32",
    "open_genotypes",
    "read_oxford_sample",
]
