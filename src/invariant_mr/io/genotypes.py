"""Genotype input: PLINK 1 binary filesets (.bed/.bim/.fam) and NumPy .npy matrices.

Both sources expose the same small interface (`sample_table`, `variant_table`,
`read(samples, variants)`) so the loader and QC never care where the dosages
came from. Reading is lazy: only the requested samples and variants are read,
a block of variants at a time, into one preallocated float32 matrix with NaN
for missing calls.

Allele coding is explicit. A PLINK dosage counts copies of the `.bim` A1
allele (column 5) by default, as PLINK 1.9's `--recode A` does; the counted
and the other allele are recorded per variant in `variant_table`
(`counted_allele`, `other_allele`) and travel into qc.tsv and provenance.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from invariant_mr.errors import InputError

#: The first three bytes of a variant-major PLINK 1 .bed file.
BED_MAGIC = bytes([0x6C, 0x1B, 0x01])

#: Variants read per block: ~4 MB of float32 per block at 30,000 samples,
#: large enough that bed-reader's per-call overhead is negligible.
DEFAULT_CHUNK_VARIANTS = 256

VARIANT_COLUMNS = ("variant_id", "chrom", "pos", "counted_allele", "other_allele")


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    return path


def resolve_bfile_prefix(prefix: str | os.PathLike) -> Path:
    """The fileset prefix, accepting `data/geno`, `data/geno.bed` (or .bim/.fam)."""
    text = str(prefix)
    for ext in (".bed", ".bim", ".fam"):
        if text.endswith(ext):
            text = text[: -len(ext)]
            break
    return Path(text)


def read_fam(path: Path) -> pd.DataFrame:
    """FID and IID (as strings, so "007" stays "007") of a .fam file, in file order."""
    try:
        fam = pd.read_csv(
            path, sep=r"\s+", header=None, dtype=str, usecols=[0, 1], names=["FID", "IID"],
            engine="c", comment=None,
        )
    except pd.errors.EmptyDataError:
        raise InputError(f"{path} is empty: a .fam file needs one line per sample") from None
    except (ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"{path} is not a valid .fam file (FID IID PAT MAT SEX PHENO): {exc}") from None
    if fam.isna().any().any():
        raise InputError(f"{path}: some lines have fewer than 2 columns (FID IID ...)")
    return fam


def read_bim(path: Path) -> pd.DataFrame:
    """Variant table of a .bim file: variant_id, chrom, pos, counted_allele (A1), other_allele (A2)."""
    try:
        bim = pd.read_csv(
            path, sep=r"\s+", header=None, dtype=str,
            names=["chrom", "variant_id", "cm", "pos", "a1", "a2"],
        )
    except pd.errors.EmptyDataError:
        raise InputError(f"{path} is empty: a .bim file needs one line per variant") from None
    except (ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"{path} is not a valid .bim file (CHR ID CM POS A1 A2): {exc}") from None
    if bim[["a1", "a2"]].isna().any().any():
        raise InputError(f"{path}: some lines have fewer than 6 columns (CHR ID CM POS A1 A2)")
    pos = pd.to_numeric(bim["pos"], errors="coerce")
    if pos.isna().any():
        row = int(np.flatnonzero(pos.isna().to_numpy())[0])
        raise InputError(f"{path}: line {row + 1} has a non-integer position {bim['pos'].iloc[row]!r}")
    return pd.DataFrame(
        {
            "variant_id": bim["variant_id"].to_numpy(),
            "chrom": bim["chrom"].to_numpy(),
            "pos": pos.astype(np.int64).to_numpy(),
            "counted_allele": bim["a1"].to_numpy(),
            "other_allele": bim["a2"].to_numpy(),
        }
    )


class PlinkGenotypes:
    """A PLINK 1 binary fileset, opened lazily with bed-reader.

    On construction the .fam and .bim are parsed and the .bed header and size
    are checked against them: a .bed whose size is not
    3 + n_variants * ceil(n_samples / 4) bytes means the .bim or .fam belongs
    to another fileset, and reading it would silently mix up genotypes.

    `count_a1=True` (default) counts the .bim A1 allele; False counts A2. The
    counted allele is recorded in `variant_table["counted_allele"]`.
    """

    source_kind = "plink1"

    def __init__(self, prefix: str | os.PathLike, *, count_a1: bool = True, num_threads: int | None = None):
        self.prefix = resolve_bfile_prefix(prefix)
        self.bed_path = _require_file(self.prefix.with_name(self.prefix.name + ".bed"), "PLINK .bed file")
        self.bim_path = _require_file(self.prefix.with_name(self.prefix.name + ".bim"), "PLINK .bim file")
        self.fam_path = _require_file(self.prefix.with_name(self.prefix.name + ".fam"), "PLINK .fam file")
        self.count_a1 = bool(count_a1)
        self.num_threads = num_threads
        self.sample_table = read_fam(self.fam_path)
        variants = read_bim(self.bim_path)
        if not self.count_a1:
            variants = variants.rename(columns={"counted_allele": "other_allele", "other_allele": "counted_allele"})
            variants = variants[list(VARIANT_COLUMNS)]
        self.variant_table = variants
        self._check_bed_size()

    @property
    def n_samples(self) -> int:
        return len(self.sample_table)

    @property
    def n_variants(self) -> int:
        return len(self.variant_table)

    def _check_bed_size(self) -> None:
        with open(self.bed_path, "rb") as fh:
            magic = fh.read(3)
        if magic != BED_MAGIC:
            if magic[:2] == BED_MAGIC[:2] and magic[2:] == b"\x00":
                raise InputError(
                    f"{self.bed_path} is sample-major (PLINK 1 'individual-major'); "
                    "convert it with `plink --bfile PREFIX --make-bed --out NEW`"
                )
            raise InputError(f"{self.bed_path} is not a PLINK 1 .bed file (wrong magic bytes {magic.hex()})")
        actual = self.bed_path.stat().st_size
        expected = 3 + self.n_variants * ((self.n_samples + 3) // 4)
        if actual != expected:
            # Say which side is plausible: the .bed implies a variant count for the .fam's sample count.
            bytes_per_variant = (self.n_samples + 3) // 4
            implied = (actual - 3) / bytes_per_variant if bytes_per_variant else float("nan")
            raise InputError(
                f"{self.bed_path} has {actual} bytes but {self.bim_path.name} ({self.n_variants} variants) and "
                f"{self.fam_path.name} ({self.n_samples} samples) imply {expected}; "
                f"the .bed holds {implied:g} variants of {self.n_samples} samples. "
                "The .bim/.fam do not belong to this .bed"
            )

    def read(self, samples: np.ndarray, variants: np.ndarray, *, chunk_variants: int = DEFAULT_CHUNK_VARIANTS) -> np.ndarray:
        """Dosages (len(samples), len(variants)) as float32, NaN where missing.

        `samples` and `variants` are integer positions into `sample_table`
        and `variant_table`; the result follows their order.
        """
        from bed_reader import open_bed

        samples = np.asarray(samples, dtype=np.intp)
        variants = np.asarray(variants, dtype=np.intp)
        out = np.empty((samples.size, variants.size), dtype=np.float32, order="F")
        # bed-reader would re-read the .fam/.bim; we already hold them, so pass the counts.
        with open_bed(
            self.bed_path,
            iid_count=self.n_samples,
            sid_count=self.n_variants,
            count_A1=self.count_a1,
            num_threads=self.num_threads,
        ) as bed:
            for start in range(0, variants.size, chunk_variants):
                block = variants[start : start + chunk_variants]
                out[:, start : start + block.size] = bed.read(
                    index=np.s_[samples, block], dtype="float32", order="F", num_threads=self.num_threads
                )
        return out

    def input_paths(self) -> list[Path]:
        return [self.bed_path, self.bim_path, self.fam_path]


class NpyGenotypes:
    """A samples x variants matrix in a .npy file (memory-mapped, so read lazily).

    Values are allele dosages (0..2, fractional imputed dosages allowed), NaN
    for missing. Optional sidecar files name the rows (`samples`: one IID per
    line, or "FID IID") and the columns (`variants`: one ID per line); without
    them rows are "row1".."rowN" and must then line up with the phenotype rows
    in order, and variants are "z1".."zp". Allele coding is unknown and recorded
    as such.
    """

    source_kind = "npy"

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        samples: str | os.PathLike | None = None,
        variants: str | os.PathLike | None = None,
    ):
        self.path = _require_file(Path(path), "genotype .npy file")
        try:
            self._matrix = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise InputError(f"{self.path} is not a readable .npy array: {exc}") from None
        if self._matrix.ndim != 2:
            raise InputError(f"{self.path} holds an array of shape {self._matrix.shape}; need samples x variants (2-D)")
        if not (np.issubdtype(self._matrix.dtype, np.number) or self._matrix.dtype == bool):
            raise InputError(f"{self.path} has non-numeric dtype {self._matrix.dtype}")
        n, p = self._matrix.shape
        self.samples_path = None if samples is None else _require_file(Path(samples), "sample ID file")
        self.variants_path = None if variants is None else _require_file(Path(variants), "variant ID file")
        self.ids_from_file = self.samples_path is not None
        if self.samples_path is not None:
            table = _read_id_lines(self.samples_path, max_fields=2)
            if len(table) != n:
                raise InputError(f"{self.samples_path} lists {len(table)} samples but {self.path} has {n} rows")
            if table.shape[1] == 1:
                table = pd.DataFrame({"FID": table[0].to_numpy(), "IID": table[0].to_numpy()})
            else:
                table.columns = ["FID", "IID"]
            self.sample_table = table
        else:
            ids = np.array([f"row{i + 1}" for i in range(n)], dtype=object)
            self.sample_table = pd.DataFrame({"FID": ids, "IID": ids})
        if self.variants_path is not None:
            names = _read_id_lines(self.variants_path, max_fields=1)[0].to_numpy()
            if len(names) != p:
                raise InputError(f"{self.variants_path} lists {len(names)} variants but {self.path} has {p} columns")
        else:
            names = np.array([f"z{j + 1}" for j in range(p)], dtype=object)
        self.variant_table = pd.DataFrame(
            {
                "variant_id": names,
                "chrom": pd.array([pd.NA] * p, dtype="string"),
                "pos": pd.array([pd.NA] * p, dtype="Int64"),
                "counted_allele": pd.array([pd.NA] * p, dtype="string"),
                "other_allele": pd.array([pd.NA] * p, dtype="string"),
            }
        )

    @property
    def n_samples(self) -> int:
        return self._matrix.shape[0]

    @property
    def n_variants(self) -> int:
        return self._matrix.shape[1]

    def read(self, samples: np.ndarray, variants: np.ndarray, *, chunk_variants: int = DEFAULT_CHUNK_VARIANTS) -> np.ndarray:
        samples = np.asarray(samples, dtype=np.intp)
        variants = np.asarray(variants, dtype=np.intp)
        out = np.empty((samples.size, variants.size), dtype=np.float32, order="F")
        for start in range(0, variants.size, chunk_variants):
            block = variants[start : start + chunk_variants]
            out[:, start : start + block.size] = self._matrix[np.ix_(samples, block)]
        bad = np.isinf(out)
        if bad.any():
            raise InputError(f"{self.path} contains {int(bad.sum())} infinite value(s); use NaN for missing")
        return out

    def input_paths(self) -> list[Path]:
        return [p for p in (self.path, self.samples_path, self.variants_path) if p is not None]


def _read_id_lines(path: Path, max_fields: int) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, sep=r"\s+", header=None, dtype=str, comment="#")
    except pd.errors.EmptyDataError:
        raise InputError(f"{path} is empty") from None
    if table.shape[1] > max_fields:
        raise InputError(f"{path} has {table.shape[1]} columns per line; expected at most {max_fields}")
    return table


def open_genotypes(
    *,
    bfile: str | os.PathLike | None = None,
    npy: str | os.PathLike | None = None,
    npy_samples: str | os.PathLike | None = None,
    npy_variants: str | os.PathLike | None = None,
    count_a1: bool = True,
) -> PlinkGenotypes | NpyGenotypes:
    """Open exactly one genotype source."""
    if (bfile is None) == (npy is None):
        raise InputError("give exactly one genotype source: --bfile PREFIX or --npy FILE")
    if bfile is not None:
        return PlinkGenotypes(bfile, count_a1=count_a1)
    return NpyGenotypes(npy, samples=npy_samples, variants=npy_variants)


# --------------------------------------------------------------- selection
_REGION = re.compile(r"^(?:chr)?([0-9A-Za-z_.]+)(?::([0-9,_]+)?-([0-9,_]+)?)?$", re.IGNORECASE)


@dataclass(frozen=True)
class Region:
    """A chromosome, optionally a base-pair interval on it (1-based, both ends inclusive, as in PLINK)."""

    chrom: str
    start: int | None = None
    end: int | None = None

    def __str__(self) -> str:
        if self.start is None and self.end is None:
            return self.chrom
        return f"{self.chrom}:{'' if self.start is None else self.start}-{'' if self.end is None else self.end}"


def parse_region(text: str) -> Region:
    """'22', 'chr22', '22:1000000-2000000', '22:1,000,000-', '22:-2000000'."""
    m = _REGION.match(text.strip())
    if not m:
        raise InputError(f"--region {text!r} is not CHROM or CHROM:START-END (e.g. 22:1000000-2000000)")
    chrom, start, end = m.group(1), m.group(2), m.group(3)
    start_i = None if start is None else int(start.replace(",", "").replace("_", ""))
    end_i = None if end is None else int(end.replace(",", "").replace("_", ""))
    if start_i is not None and end_i is not None and start_i > end_i:
        raise InputError(f"--region {text!r}: start {start_i} is after end {end_i}")
    return Region(chrom, start_i, end_i)


#: PLINK's numeric codes of the non-autosomes, so that --chr X matches a .bim that writes 23.
_CHROM_ALIASES = {"23": "x", "24": "y", "25": "xy", "26": "mt", "m": "mt"}


def _normalise_chrom(values) -> np.ndarray:
    out = [str(v).strip().lower().removeprefix("chr") for v in values]
    return np.array([_CHROM_ALIASES.get(c, c) for c in out], dtype=object)


def parse_chromosomes(text: str) -> tuple[str, ...]:
    """PLINK's --chr: '22', '1-22', '1-4,22,X', 'chrX' -> normalised chromosome names."""
    names: list[str] = []
    for token in re.split(r"[,\s]+", text.strip()):
        if not token:
            continue
        low, dash, high = token.partition("-")
        if dash:
            a, b = _normalise_chrom([low])[0], _normalise_chrom([high])[0]
            if not (a.isdigit() and b.isdigit()) or int(a) > int(b):
                raise InputError(f"--chr {text!r}: {token!r} is not a range of chromosome numbers (e.g. 1-22)")
            names.extend(_normalise_chrom(range(int(a), int(b) + 1)))
        else:
            names.append(_normalise_chrom([token])[0])
    if not names:
        raise InputError(f"--chr {text!r}: name at least one chromosome (e.g. 1-22 or 22 or X)")
    return tuple(dict.fromkeys(names))


def read_variant_id_file(path: str | os.PathLike, option: str = "--extract") -> list[str]:
    """IDs from an --extract (or --exclude) file: the first whitespace-separated field of each non-empty line."""
    path = _require_file(Path(path), f"{option} file")
    ids = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            fields = line.split()
            if fields and not fields[0].startswith("#"):
                ids.append(fields[0])
    if not ids:
        raise InputError(f"{option} file {path} lists no variant IDs")
    return ids


@dataclass(frozen=True)
class VariantSelection:
    """Which variants were asked for and how many were found."""

    indices: np.ndarray
    n_available: int
    n_requested_ids: int | None
    n_ids_not_found: int
    region: str | None
    n_excluded: int = 0
    chromosomes: tuple[str, ...] | None = None

    def to_dict(self) -> dict:
        return {
            "n_available": self.n_available,
            "n_selected": int(self.indices.size),
            "n_requested_ids": self.n_requested_ids,
            "n_ids_not_found": self.n_ids_not_found,
            "region": self.region,
            "n_excluded": self.n_excluded,
            "chromosomes": None if self.chromosomes is None else list(self.chromosomes),
        }


def select_variants(
    variant_table: pd.DataFrame,
    *,
    extract: Sequence[str] | None = None,
    region: str | Region | None = None,
    source: str = "genotypes",
    exclude: Sequence[str] | None = None,
    chromosomes: str | Sequence[str] | None = None,
) -> VariantSelection:
    """Positions of the variants to read, in file order: IDs in `extract` and/or inside `region`, on
    `chromosomes` (PLINK's --chr), less the IDs in `exclude` (PLINK's --exclude).

    Duplicate variant IDs are an error when selecting by ID, since the choice
    between them would be arbitrary.
    """
    n = len(variant_table)
    mask = np.ones(n, dtype=bool)
    n_requested = None
    n_missing = 0
    if extract is not None:
        wanted = list(dict.fromkeys(str(v) for v in extract))
        n_requested = len(wanted)
        ids = variant_table["variant_id"].astype(str).to_numpy()
        dup = pd.Index(ids)[pd.Index(ids).duplicated()]
        wanted_set = set(wanted)
        dup_wanted = sorted(set(dup) & wanted_set)
        if dup_wanted:
            raise InputError(
                f"--extract: variant ID(s) occur more than once in {source}: {', '.join(dup_wanted[:5])}"
            )
        mask &= np.isin(ids, wanted)
        n_missing = len(wanted_set - set(ids[mask]))
        if not mask.any():
            raise InputError(
                f"--extract: none of the {n_requested} listed variant IDs are in {source} "
                f"(e.g. {', '.join(wanted[:3])}; {source} has e.g. {', '.join(ids[:3])})"
            )
    region_text = None
    if region is not None:
        reg = parse_region(region) if isinstance(region, str) else region
        region_text = str(reg)
        chrom = _normalise_chrom(variant_table["chrom"].to_numpy())
        if variant_table["pos"].isna().all():
            raise InputError(f"--region needs variant positions, but {source} has none (use --extract)")
        in_region = chrom == reg.chrom.lower().removeprefix("chr")
        pos = variant_table["pos"].to_numpy(dtype=float, na_value=np.nan)
        if reg.start is not None:
            in_region &= pos >= reg.start
        if reg.end is not None:
            in_region &= pos <= reg.end
        mask &= in_region
        if not mask.any():
            chroms = ", ".join(sorted(set(variant_table["chrom"].astype(str)))[:10])
            raise InputError(
                f"--region {region_text}: no {'listed ' if extract is not None else ''}variants of {source} "
                f"fall in it (chromosomes present: {chroms})"
            )
    chrom_names = None
    if chromosomes is not None:
        chrom_names = parse_chromosomes(chromosomes) if isinstance(chromosomes, str) else tuple(_normalise_chrom(chromosomes))
        present = _normalise_chrom(variant_table["chrom"].to_numpy())
        mask &= np.isin(present, chrom_names)
        if not mask.any():
            chroms = ", ".join(sorted(set(variant_table["chrom"].astype(str)))[:10])
            raise InputError(f"--chr {','.join(chrom_names)}: no selected variants of {source} lie on it "
                             f"(chromosomes present: {chroms})")
    n_excluded = 0
    if exclude is not None:
        dropped = mask & np.isin(variant_table["variant_id"].astype(str).to_numpy(), [str(v) for v in exclude])
        n_excluded = int(dropped.sum())
        mask &= ~dropped
        if not mask.any():
            raise InputError(f"--exclude removes every selected variant of {source}: nothing is left to analyse")
    return VariantSelection(np.flatnonzero(mask), n, n_requested, n_missing, region_text, n_excluded, chrom_names)


def unique_variant_names(variant_table: pd.DataFrame) -> list[str]:
    """Instrument names: the variant ID, or CHROM:POS:COUNTED:OTHER where the ID is "." or repeated.

    Exporters write "." for unnamed variants and multi-allelic sites repeat an
    ID; instrument names must be unique to label estimates and qc.tsv rows.
    """
    ids = variant_table["variant_id"].astype(str).to_numpy()
    counts = pd.Series(ids).value_counts()
    names = []
    for i, vid in enumerate(ids):
        if vid in (".", "", "nan") or counts[vid] > 1:
            row = variant_table.iloc[i]
            vid = f"{row['chrom']}:{row['pos']}:{row['counted_allele']}:{row['other_allele']}"
        names.append(vid)
    seen: dict[str, int] = {}
    out = []
    for name in names:
        k = seen.get(name, 0)
        seen[name] = k + 1
        out.append(name if k == 0 else f"{name}#{k + 1}")
    return out
