"""Phenotype tables: read CSV/TSV/Parquet, pick columns, join to genotyped samples by ID.

The join works in any row order and accounts for every sample: how many
matched, and how many were dropped and why (no genotypes, no phenotype row,
a missing exposure, outcome, environment or covariate). Covariates (age, sex,
PCs, ...) become exogenous controls; a text covariate such as sex coded
"M"/"F" becomes indicator columns.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from invariant_mr.data import MIN_SAMPLES_PER_ENV, describe_levels
from invariant_mr.errors import InputError

#: Strings read as missing, besides the empty field (pandas' defaults plus PLINK's ".").
NA_VALUES = ("", "NA", "N/A", "NaN", "nan", "null", "NULL", "None", ".", "#N/A")
#: `--missing-code` default: PLINK's phenotype missing code and NA.
MISSING_CODES = ("-9", "NA")


def parse_missing_codes(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """`--missing-code "-9,NA"` -> ("-9", "NA"); an empty string means none beyond the empty field."""
    if text is None:
        return MISSING_CODES
    items = text.split(",") if isinstance(text, str) else list(text)
    return tuple(dict.fromkeys(str(c).strip() for c in items if str(c).strip()))


def header_names(path: Path, sep: str) -> list[str]:
    """The header exactly as written (pandas renames duplicates to "x.1", which would hide them)."""
    import csv
    import gzip

    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rt", newline="") as fh:
        first = fh.readline().rstrip("\r\n")
    if len(sep) == 1:
        return [c.strip() for c in next(csv.reader([first], delimiter=sep))]
    import re

    return [c.strip() for c in re.split(sep, first.strip())]


_DELIMITERS = {"\t": "tab", ",": "comma", ";": "semicolon"}


def check_delimiter(path: Path, sep: str, names: Sequence[str], source: str) -> None:
    """Refuse a file whose name promises one delimiter while its header uses another.

    A CSV saved as .tsv reads as a single column named "IID,environment,...",
    and every later message ("column 'environment' not found") would blame the
    column instead of the file's format.
    """
    if len(names) != 1 or sep not in _DELIMITERS:
        return
    header = names[0]
    for other, word in _DELIMITERS.items():
        if other != sep and other in header:
            suffix = {"\t": ".tsv", ",": ".csv"}.get(other)
            rename = f"rename it to {path.stem}{suffix} or " if suffix else ""
            raise InputError(
                f"{source}: the name says {_DELIMITERS[sep]}-separated but the header is {word}-separated "
                f"({header[:60]!r}); {rename}save it {_DELIMITERS[sep]}-separated"
            )


def refuse_duplicate_columns(names: Sequence[str], source: str) -> None:
    seen, dup = set(), []
    for name in names:
        if name in seen and name not in dup:
            dup.append(name)
        seen.add(name)
    if dup:
        raise InputError(f"{source} has duplicate column name(s): {', '.join(map(repr, dup))}; rename them")

#: ID column names recognised when none is given (PLINK 2 writes "#FID"/"#IID").
IID_CANDIDATES = ("IID", "#IID", "iid", "sample_id", "sample", "ID", "id")
FID_CANDIDATES = ("FID", "#FID", "fid")

#: A text covariate with more levels than this is almost surely an ID or free text, not a factor.
MAX_COVARIATE_LEVELS = 50


def read_phenotype_table(path: str | os.PathLike, missing_codes: Sequence[str] = MISSING_CODES) -> pd.DataFrame:
    """The whole table with every column as text (Parquet keeps its types).

    Reading as text keeps IDs such as "007" intact; the chosen numeric
    columns are parsed later with an error that names any non-numeric value.
    The format follows the extension: .csv (comma), .tsv/.tab (tab),
    .parquet/.pq, anything else (e.g. .txt, PLINK .pheno) sniffed from the
    header line: tab, comma or runs of spaces. A trailing .gz is allowed.
    `missing_codes` (PLINK's -9 and NA by default) are read as missing, as
    are the empty field and the usual spellings of NA.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"phenotype file not found: {path}")
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".zst", ".xz"):
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    try:
        if ext in (".parquet", ".pq"):
            try:
                table = pd.read_parquet(path)
            except ImportError:
                raise InputError(
                    f"reading {path} needs pyarrow: pip install 'invariant-mr[parquet]'"
                ) from None
        else:
            sep = {".csv": ",", ".tsv": "\t", ".tab": "\t"}.get(ext) or _sniff_separator(path)
            names = header_names(path, sep)
            check_delimiter(path, sep, names, f"phenotype file {path}")
            refuse_duplicate_columns(names, f"phenotype file {path}")
            table = pd.read_csv(
                path, sep=sep, dtype=str, keep_default_na=False, na_values=[*NA_VALUES, *missing_codes],
                engine="c" if len(sep) == 1 else "python",
            )
    except pd.errors.EmptyDataError:
        raise InputError(f"phenotype file {path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"cannot read phenotype file {path}: {exc}") from None
    table.columns = [str(c).strip() for c in table.columns]
    if len(set(table.columns)) != len(table.columns):
        dup = sorted({c for c in table.columns if list(table.columns).count(c) > 1})
        raise InputError(f"phenotype file {path} has duplicate column name(s): {', '.join(dup)}")
    if len(table) == 0:
        raise InputError(f"phenotype file {path} has a header but no rows")
    return table


def _sniff_separator(path: Path) -> str:
    import gzip

    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        header = fh.readline()
    if "\t" in header:
        return "\t"
    if "," in header:
        return ","
    return r"\s+"


def resolve_column(table: pd.DataFrame, name: str, option: str, source: str) -> str:
    """`name` if it is a column; otherwise an InputError suggesting close matches."""
    if name in table.columns:
        return name
    columns = [str(c) for c in table.columns]
    lower = {c.lower(): c for c in columns}
    close = [lower[m] for m in difflib.get_close_matches(name.lower(), list(lower), n=3, cutoff=0.6)]
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(columns[:15]) + (f", ... ({len(columns)} columns)" if len(columns) > 15 else "")
    raise InputError(f"{option}: column {name!r} not found in {source}{hint} Columns: {shown}")


_RANGE = re.compile(r"^(?P<prefix>.*?)(?P<start>\d+)-(?P<prefix2>.*?)(?P<stop>\d+)$")


def expand_column_range(pattern: str, columns: Sequence[str], option: str = "--covar", source: str = "the table") -> list[str] | None:
    """Column names of a numbered range such as "PC1-PC10" (or "PC1-10"), as PLINK's --covar-name reads it.

    None when `pattern` is not a range, or is itself a column name (a column
    literally called "PC1-PC10" wins). Every name in the range must be a
    column: a range that runs past the PCs supplied is an InputError, not a
    silent truncation. A zero-padded start ("PC01-PC20") keeps its width.
    """
    if pattern in columns:
        return None
    m = _RANGE.match(pattern)
    if m is None or (m["prefix2"] and m["prefix2"] != m["prefix"]):
        return None
    start, stop = int(m["start"]), int(m["stop"])
    if start > stop:
        raise InputError(f"{option}: range {pattern!r} runs backwards ({start} > {stop})")
    width = len(m["start"]) if m["start"].startswith("0") and len(m["start"]) > 1 else 0
    names = [f"{m['prefix']}{i:0{width}d}" for i in range(start, stop + 1)]
    absent = [c for c in names if c not in columns]
    if absent:
        raise InputError(
            f"{option}: range {pattern!r} names {len(absent)} columns not in {source} "
            f"(e.g. {', '.join(repr(c) for c in absent[:3])})"
        )
    return names


def expand_columns(table: pd.DataFrame, patterns: Sequence[str], option: str, source: str) -> list[str]:
    """Column names from names, shell globs (e.g. "PC*") or numbered ranges ("PC1-PC10"), in the
    order given, without repeats."""
    chosen: list[str] = []
    columns = [str(c) for c in table.columns]
    for pattern in patterns:
        ranged = expand_column_range(pattern, columns, option, source)
        if ranged is not None:
            hits = ranged
        elif any(ch in pattern for ch in "*?["):
            hits = [str(c) for c in table.columns if fnmatch.fnmatchcase(str(c), pattern)]
            if not hits:
                raise InputError(f"{option}: pattern {pattern!r} matches no column in {source}")
        else:
            hits = [resolve_column(table, pattern, option, source)]
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


def _first_present(table: pd.DataFrame, candidates: Sequence[str]) -> str | None:
    for c in candidates:
        if c in table.columns:
            return c
    return None


def parse_numeric(values: pd.Series, column: str, option: str, source: str) -> np.ndarray:
    """Floats with NaN for missing; any non-missing text that is not a number is an error."""
    if pd.api.types.is_bool_dtype(values):
        return values.astype(float).to_numpy()
    numeric = pd.to_numeric(values, errors="coerce")
    bad = numeric.isna() & values.notna()
    if bad.any():
        examples = ", ".join(repr(v) for v in pd.unique(values[bad])[:3])
        raise InputError(
            f"{option}: column {column!r} in {source} is not numeric ({int(bad.sum())} value(s) such as {examples})"
        )
    out = numeric.to_numpy(dtype=float, copy=True)
    out[~np.isfinite(out)] = np.nan
    return out


@dataclass(frozen=True)
class PhenotypeColumns:
    """Which columns of the phenotype table play which role."""

    env: str
    exposure: str
    outcome: str
    covariates: tuple[str, ...] = ()
    iid: str | None = None
    fid: str | None = None
    cluster: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "covariates", tuple(self.covariates))
        roles = {"--env-col": self.env, "--exposure": self.exposure, "--outcome": self.outcome}
        if self.cluster is not None:
            roles["--cluster"] = self.cluster
        used: dict[str, str] = {}
        for option, col in list(roles.items()) + [("--covar", c) for c in self.covariates]:
            if col in used:
                raise InputError(f"column {col!r} is used both as {used[col]} and {option}")
            used[col] = option


@dataclass(frozen=True)
class SampleAccounting:
    """How many samples each step kept and dropped, and why. `dropped` keeps insertion order."""

    n_genotyped: int
    n_phenotype_rows: int
    n_matched: int
    n_analysed: int
    match_key: str
    dropped: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "dropped", MappingProxyType(dict(self.dropped)))

    def with_dropped(self, reason: str, count: int, n_analysed: int) -> "SampleAccounting":
        dropped = dict(self.dropped)
        dropped[reason] = dropped.get(reason, 0) + int(count)
        return SampleAccounting(
            self.n_genotyped, self.n_phenotype_rows, self.n_matched, int(n_analysed), self.match_key, dropped
        )

    def to_dict(self) -> dict:
        return {
            "n_genotyped": self.n_genotyped,
            "n_phenotype_rows": self.n_phenotype_rows,
            "n_matched": self.n_matched,
            "n_analysed": self.n_analysed,
            "match_key": self.match_key,
            "dropped": dict(self.dropped),
        }

    def summary(self) -> str:
        lines = [
            f"samples: {self.n_genotyped} genotyped, {self.n_phenotype_rows} phenotype rows, "
            f"{self.n_matched} matched by {self.match_key}, {self.n_analysed} analysed"
        ]
        lines += [f"  dropped {count}: {reason}" for reason, count in self.dropped.items() if count]
        return "\n".join(lines)


@dataclass(frozen=True)
class MatchedPhenotypes:
    """Phenotypes aligned to genotype rows.

    `genotype_rows` are positions into the genotype source's sample table, in
    genotype-file order; every other array is aligned with them.
    """

    genotype_rows: np.ndarray
    sample_ids: np.ndarray
    env: np.ndarray
    exposure: np.ndarray
    outcome: np.ndarray
    covariates: np.ndarray | None
    covariate_names: tuple[str, ...]
    accounting: SampleAccounting
    clusters: np.ndarray | None = None

    def subset(self, keep: np.ndarray, reason: str) -> "MatchedPhenotypes":
        """Rows where `keep` is True; the others are counted as dropped for `reason`."""
        keep = np.asarray(keep, dtype=bool)
        return MatchedPhenotypes(
            self.genotype_rows[keep],
            self.sample_ids[keep],
            self.env[keep],
            self.exposure[keep],
            self.outcome[keep],
            None if self.covariates is None else self.covariates[keep],
            self.covariate_names,
            self.accounting.with_dropped(reason, int((~keep).sum()), int(keep.sum())),
            None if self.clusters is None else self.clusters[keep],
        )


def _id_key(fid: pd.Series | None, iid: pd.Series) -> pd.Series:
    iid = iid.astype(str).str.strip()
    if fid is None:
        return iid
    # A separator that cannot occur inside whitespace-delimited PLINK IDs.
    return fid.astype(str).str.strip() + "\t" + iid


def match_phenotypes(
    genotype_samples: pd.DataFrame,
    table: pd.DataFrame,
    columns: PhenotypeColumns,
    *,
    source: str = "the phenotype table",
    id_match: str = "auto",
    min_samples_per_env: int = MIN_SAMPLES_PER_ENV,
) -> MatchedPhenotypes:
    """Align the phenotype table to the genotyped samples (FID/IID columns of `genotype_samples`).

    `id_match`: "fid_iid" joins on FID and IID, "iid" on IID only, "row_order"
    pairs row i with genotype row i (for a .npy matrix without sample IDs);
    "auto" uses FID+IID when the table has an FID column, else IID.
    """
    if id_match not in ("auto", "fid_iid", "iid", "row_order"):
        raise InputError(f"--id-match must be auto, fid_iid, iid or row_order, got {id_match!r}")
    env_col = resolve_column(table, columns.env, "--env-col", source)
    exp_col = resolve_column(table, columns.exposure, "--exposure", source)
    out_col = resolve_column(table, columns.outcome, "--outcome", source)
    cov_cols = expand_columns(table, columns.covariates, "--covar", source)
    iid_col = (
        resolve_column(table, columns.iid, "--iid-col", source)
        if columns.iid
        else _first_present(table, IID_CANDIDATES)
    )
    fid_col = (
        resolve_column(table, columns.fid, "--fid-col", source)
        if columns.fid
        else _first_present(table, FID_CANDIDATES)
    )

    # Column-level checks first: they are about the file, whatever the overlap.
    exposure_all = parse_numeric(table[exp_col], exp_col, "--exposure", source)
    outcome_all = parse_numeric(table[out_col], out_col, "--outcome", source)
    for values, col, option in ((exposure_all, exp_col, "--exposure"), (outcome_all, out_col, "--outcome")):
        if np.isnan(values).all():
            raise InputError(f"{option}: column {col!r} in {source} has no non-missing values")

    n_geno = len(genotype_samples)
    if id_match == "row_order":
        if len(table) != n_geno:
            raise InputError(
                f"genotype rows carry no sample IDs, so {source} must have one row per genotype row "
                f"in the same order: {len(table)} rows vs {n_geno} genotype rows (give a sample ID file)"
            )
        geno_pos = np.arange(n_geno)
        pheno_pos = np.arange(n_geno)
        match_key = "row order"
        ids = (table[iid_col] if iid_col else genotype_samples["IID"]).astype(str).to_numpy(dtype=object)
        n_pheno_only = n_geno_only = 0
    else:
        if iid_col is None:
            raise InputError(
                f"{source} has no sample ID column (looked for {', '.join(IID_CANDIDATES)}); name it with --iid-col"
            )
        use_fid = id_match == "fid_iid" or (id_match == "auto" and fid_col is not None)
        if use_fid and fid_col is None:
            raise InputError(f"--id-match fid_iid: {source} has no FID column (looked for {', '.join(FID_CANDIDATES)})")
        match_key = "FID+IID" if use_fid else "IID"
        pheno_key = _id_key(table[fid_col] if use_fid else None, table[iid_col])
        if table[iid_col].isna().any():
            raise InputError(f"{source}: column {iid_col!r} has {int(table[iid_col].isna().sum())} missing sample ID(s)")
        dup = pheno_key[pheno_key.duplicated()]
        if len(dup):
            shown = ", ".join(repr(d.replace("\t", " ")) for d in pd.unique(dup)[:3])
            raise InputError(f"{source}: sample ID(s) appear in more than one row ({match_key}): {shown}")
        geno_key = _id_key(genotype_samples["FID"] if use_fid else None, genotype_samples["IID"])
        if geno_key.duplicated().any():
            raise InputError(
                "genotype sample IIDs are not unique; join on FID and IID (--id-match fid_iid, with an FID column)"
            )
        lookup = pd.Series(np.arange(len(pheno_key)), index=pd.Index(pheno_key.to_numpy()))
        hit = lookup.reindex(geno_key.to_numpy())
        found = hit.notna().to_numpy()
        geno_pos = np.flatnonzero(found)
        pheno_pos = hit.to_numpy()[found].astype(np.intp)
        n_geno_only = int((~found).sum())
        n_pheno_only = len(table) - geno_pos.size
        if geno_pos.size == 0:
            hint = ""
            if use_fid:
                n_iid = int(genotype_samples["IID"].astype(str).str.strip().isin(table[iid_col].astype(str).str.strip()).sum())
                if n_iid:
                    hint = f"; {n_iid} sample(s) match on IID alone: use --id-match iid"
            raise InputError(
                f"no sample IDs overlap between the genotypes and {source} (joined on {match_key}); "
                f"genotype IDs look like {', '.join(geno_key.head(3).str.replace(chr(9), ' '))}, "
                f"phenotype IDs like {', '.join(pheno_key.head(3).str.replace(chr(9), ' '))}{hint}"
            )
        ids = table[iid_col].astype(str).to_numpy(dtype=object)[pheno_pos]

    n_matched = int(geno_pos.size)
    dropped = {
        "phenotype row without genotypes": n_pheno_only,
        "genotyped sample without phenotype row": n_geno_only,
    }
    env_text = table[env_col].to_numpy(dtype=object)[pheno_pos]
    env_missing = pd.isna(env_text)
    env = np.array([str(v).strip() if not m else None for v, m in zip(env_text, env_missing)], dtype=object)
    env_missing |= env == ""
    exposure = exposure_all[pheno_pos]
    outcome = outcome_all[pheno_pos]
    keep = np.ones(n_matched, dtype=bool)
    for reason, missing in (
        (f"missing environment ({env_col})", env_missing),
        (f"missing exposure ({exp_col})", np.isnan(exposure)),
        (f"missing outcome ({out_col})", np.isnan(outcome)),
    ):
        dropped[reason] = int((missing & keep).sum())
        keep &= ~missing

    clusters = None
    if columns.cluster is not None:
        cl_col = resolve_column(table, columns.cluster, "--cluster", source)
        cl_text = table[cl_col].to_numpy(dtype=object)[pheno_pos]
        cl_missing = pd.isna(cl_text)
        clusters = np.array([str(v).strip() if not m else "" for v, m in zip(cl_text, cl_missing)], dtype=object)
        cl_missing |= clusters == ""
        dropped[f"missing cluster ({cl_col})"] = int((cl_missing & keep).sum())
        keep &= ~cl_missing

    cov_blocks, cov_names = [], []
    for col in cov_cols:
        block, names, missing = _covariate_columns(table[col].iloc[pheno_pos], col, source, keep)
        dropped[f"missing covariate ({col})"] = int((missing & keep).sum())
        keep &= ~missing
        cov_blocks.append(block)
        cov_names.extend(names)

    n_analysed = int(keep.sum())
    accounting = SampleAccounting(n_geno, len(table), n_matched, n_analysed, match_key, dropped)
    if n_analysed == 0:
        raise InputError(
            f"no sample is left after the join with {source}: "
            + "; ".join(f"{c} dropped for {r}" for r, c in dropped.items() if c)
        )
    covariates = np.hstack(cov_blocks)[keep] if cov_blocks else None
    matched = MatchedPhenotypes(
        genotype_rows=geno_pos[keep],
        sample_ids=ids[keep],
        env=env[keep],
        exposure=exposure[keep],
        outcome=outcome[keep],
        covariates=covariates,
        covariate_names=tuple(cov_names),
        accounting=accounting,
        clusters=None if clusters is None else clusters[keep],
    )
    check_environment_sizes(matched.env, min_samples_per_env, env_col, "after joining phenotypes")
    return matched


def _covariate_columns(
    values: pd.Series, column: str, source: str, keep: np.ndarray
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(block, names, missing): a numeric column as is; a text column as indicators (first level dropped)."""
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        arr = values.astype(float).to_numpy()
        return arr[:, None], [column], ~np.isfinite(arr)
    numeric = pd.to_numeric(values, errors="coerce")
    if not (numeric.isna() & values.notna()).any():
        arr = numeric.to_numpy(dtype=float)
        return arr[:, None], [column], ~np.isfinite(arr)
    text = values.astype("string").str.strip()
    missing = text.isna().to_numpy() | (text == "").fillna(True).to_numpy()
    levels = sorted(pd.unique(text[~missing & keep]))
    if len(levels) > MAX_COVARIATE_LEVELS:
        raise InputError(
            f"--covar: column {column!r} in {source} is text with {len(levels)} distinct values; "
            f"a categorical covariate may have at most {MAX_COVARIATE_LEVELS} levels"
        )
    if len(levels) < 2:
        # A single level is constant among the analysed samples and adds nothing beyond the intercept.
        return np.zeros((len(values), 0)), [], missing
    block = np.column_stack([(text == lv).fillna(False).to_numpy(dtype=float) for lv in levels[1:]])
    return block, [f"{column}[{lv}]" for lv in levels[1:]], missing


def check_environment_sizes(env: np.ndarray, min_samples: int, column: str, stage: str) -> None:
    """At least two environments, each with at least `min_samples` samples."""
    levels, counts = np.unique(np.asarray(env, dtype=str), return_counts=True)
    if len(levels) < 2:
        raise InputError(
            f"--env-col {column!r}: need at least 2 environments {stage}, found {len(levels)} "
            f"({', '.join(levels)})"
        )
    if len(levels) > 50 or (counts < min_samples).any():
        why = describe_levels(levels, counts, min_samples, f"--env-col {column!r}", stage)
        hint = "" if len(levels) > 50 else ". Merge or drop them, or lower --min-env-samples"
        raise InputError(why + hint)
