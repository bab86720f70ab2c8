"""GWAS summary statistics for two-sample MR: reading and allele harmonisation.

Two inputs are supported.

* One table that is already harmonised (what `run --sumstats-out` writes):
  `variant, beta_exposure, se_exposure, beta_outcome, se_outcome`, with
  optional `effect_allele, other_allele, eaf_exposure, eaf_outcome,
  pval_exposure, n_exposure, n_outcome, chrom, pos`. Several exposures
  (multivariable MR) come as one `beta_exposure_<name>` / `se_exposure_<name>`
  pair per exposure (optionally `pval_exposure_<name>`).
* Two GWAS tables, one for the exposure and one for the outcome, each with
  `variant, effect_allele, other_allele, beta, se` and optional
  `eaf, pval, n, chrom, pos`, aligned by `harmonise`.

The column names of TwoSampleMR, PLINK 2 `--glm` output and the GWAS-SSF
standard are recognised as they are (`GWAS_ALIASES`, `MR_ALIASES`); any
column can also be named with a mapping from the canonical name to the name
in the file (`--col`). Missing values are the empty string and `NA`/`NaN`.

`harmonise` follows TwoSampleMR's `harmonise_data` (Hemani et al. 2018,
eLife 7:e34408; its `harmonise_22` for two-allele variants):

1. keep exposure variants present in the outcome GWAS (matched on the id);
2. outcome alleles in the opposite order: negate the outcome beta, EAF -> 1 - EAF;
3. non-palindromic variants whose alleles still differ: complement the
   outcome alleles (the other strand), then step 2 again;
4. alleles that still differ: drop ("incompatible_alleles");
5. palindromic variants (A/T, C/G), whose strand cannot be read off the
   alleles: with `palindromes="infer"` (TwoSampleMR action 2) the variant is
   ambiguous when either EAF lies strictly between `maf_threshold` and
   `1 - maf_threshold` (or is missing) and is dropped; otherwise the
   outcome beta is negated when the two EAFs lie on opposite sides of 0.5.
   With `palindromes="drop"` (action 3) every palindromic variant is dropped.

The default threshold 0.42 is TwoSampleMR's: `0.5 - tolerance` with its
fixed `tolerance = 0.08`. Every exposure variant that does not reach the
analysis is listed in `HarmonisedSumstats.dropped` with a reason.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from invariant_mr.errors import InputError

#: Required columns of the one-table (already harmonised) form.
MR_REQUIRED = ("variant", "beta_exposure", "se_exposure", "beta_outcome", "se_outcome")
#: Optional columns of the one-table form.
MR_OPTIONAL = (
    "effect_allele",
    "other_allele",
    "eaf_exposure",
    "eaf_outcome",
    "pval_exposure",
    "n_exposure",
    "n_outcome",
    "chrom",
    "pos",
)
#: Required and optional columns of one GWAS table (two-file form).
GWAS_REQUIRED = ("variant", "effect_allele", "other_allele", "beta", "se")
GWAS_OPTIONAL = ("eaf", "pval", "n", "chrom", "pos")

#: Column names that users' files already carry, recognised without a rename, in order of preference:
#: TwoSampleMR (`SNP`, `beta.exposure`, ...; `format_data` defaults), PLINK 2 `--glm` output (`ID`, `A1`,
#: `BETA`, `SE`, `P`, `A1_FREQ`, `OBS_CT`, `#CHROM`, `POS`) and the GWAS-SSF standard of the GWAS Catalog
#: (`variant_id`, `effect_allele`, `other_allele`, `beta`, `standard_error`, `effect_allele_frequency`,
#: `p_value`, `n`, `chromosome`, `base_pair_location`). Matching ignores case.
GWAS_ALIASES: dict[str, tuple[str, ...]] = {
    "variant": ("variant", "SNP", "ID", "variant_id", "rsid", "rs_id", "MarkerName"),
    "effect_allele": ("effect_allele", "A1", "EA"),
    "other_allele": ("other_allele", "OMITTED", "AX", "NEA", "A2"),
    "beta": ("beta", "b"),
    "se": ("se", "standard_error", "LOG(OR)_SE", "sebeta"),
    "eaf": ("eaf", "A1_FREQ", "effect_allele_frequency", "FRQ", "freq"),
    "pval": ("pval", "P", "p_value", "pvalue"),
    "n": ("n", "OBS_CT", "samplesize", "sample_size", "N"),
    "chrom": ("chrom", "#CHROM", "CHROM", "chr", "chromosome"),
    "pos": ("pos", "POS", "base_pair_location", "BP"),
}
#: The one-table form: our names, TwoSampleMR's harmonised `dat` names, and `n` (what `run --sumstats-out`
#: writes: one sample for both traits).
MR_ALIASES: dict[str, tuple[str, ...]] = {
    "variant": ("variant", "SNP", "ID", "variant_id", "rsid"),
    "beta_exposure": ("beta_exposure", "beta.exposure"),
    "se_exposure": ("se_exposure", "se.exposure"),
    "beta_outcome": ("beta_outcome", "beta.outcome"),
    "se_outcome": ("se_outcome", "se.outcome"),
    "effect_allele": ("effect_allele", "effect_allele.exposure"),
    "other_allele": ("other_allele", "other_allele.exposure"),
    "eaf_exposure": ("eaf_exposure", "eaf.exposure"),
    "eaf_outcome": ("eaf_outcome", "eaf.outcome"),
    "pval_exposure": ("pval_exposure", "pval.exposure"),
    "n_exposure": ("n_exposure", "samplesize.exposure"),
    "n_outcome": ("n_outcome", "samplesize.outcome"),
    "chrom": ("chrom", "chr.exposure", "chr"),
    "pos": ("pos", "pos.exposure"),
}


def recognise_columns(
    columns: Sequence[str], aliases: Mapping[str, Sequence[str]], explicit: Mapping[str, str] | None = None,
    *, suffix: str | None = None,
) -> dict[str, str]:
    """canonical name -> file column: the explicit renames first, then the first alias the file has.

    With `suffix` (".exposure" or ".outcome") TwoSampleMR's per-trait names (`beta.outcome`, ...)
    are recognised too. A file column is used for one canonical name only.
    """
    explicit = dict(explicit or {})
    used = set(explicit.values())
    lower = {}
    for c in columns:
        lower.setdefault(c.lower(), c)
    out = dict(explicit)
    for canonical, names in aliases.items():
        if canonical in out:
            continue
        candidates = list(names)
        if suffix:
            stem = {"variant": "SNP", "n": "samplesize", "chrom": "chr"}.get(canonical, canonical)
            candidates = [f"{stem}{suffix}", *candidates]
        for name in candidates:
            col = lower.get(name.lower())
            if col is not None and col not in used:
                out[canonical] = col
                used.add(col)
                break
    return out


#: TwoSampleMR's palindrome ambiguity bound: 0.5 - tolerance (0.08).
DEFAULT_MAF_THRESHOLD = 0.42

_COMPLEMENT = str.maketrans("ACGTacgt", "TGCAtgca")
_MISSING = {"", "NA", "NaN", "nan", "NAN", "na", "."}


def _readonly(values, dtype=float) -> np.ndarray:
    out = np.array(values, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out


def _optional(values, dtype=float):
    return None if values is None else _readonly(values, dtype)


def complement(allele: str) -> str:
    """The allele on the other strand, base by base (TwoSampleMR's `flip_alleles`)."""
    return allele.translate(_COMPLEMENT)


def is_palindromic(a1: str, a2: str) -> bool:
    """A/T or C/G single-base variants: the two strands carry the same allele pair."""
    return len(a1) == 1 and len(a2) == 1 and complement(a1) == a2


# ----------------------------------------------------------------------------- reading
def _separator(path: Path, sep: str | None) -> str:
    if sep is not None:
        return sep
    name = path.name.lower()
    for suffix in (".gz", ".bz2", ".xz", ".zst"):
        name = name.removesuffix(suffix)
    return "," if name.endswith(".csv") else "\t"


def _read_frame(path, sep: str | None, what: str):
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path}: no such file")
    separator = _separator(path, sep)
    try:
        frame = pd.read_csv(path, sep=separator, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise InputError(f"{what} {path}: the file is empty (no header line)") from None
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} {path}: cannot be parsed as a table ({exc})") from None
    from invariant_mr.io.phenotypes import check_delimiter

    check_delimiter(path, separator, [str(c) for c in frame.columns], f"{what} {path}")
    if frame.shape[0] == 0:
        raise InputError(f"{what} {path}: no variants")
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _column_map(columns: Mapping[str, str] | None, known: Sequence[str], what: str) -> dict[str, str]:
    """canonical name -> file column; unknown canonical names are an error (typo guard)."""
    columns = dict(columns or {})
    for canonical in columns:
        if canonical not in known and not re.fullmatch(r"(beta|se|pval)_exposure_\w+", canonical):
            raise InputError(
                f"{what}: cannot rename unknown column {canonical!r}; known columns: {', '.join(known)}"
            )
    return columns


def _numeric(frame, column: str, path, what: str, *, required: bool) -> np.ndarray:
    raw = frame[column].str.strip()
    missing = raw.isin(_MISSING).to_numpy()
    values = np.full(len(raw), np.nan)
    text = raw[~missing]
    try:
        values[~missing] = text.astype(float).to_numpy()
    except ValueError:
        bad = next(i for i, v in zip(text.index, text) if not _is_float(v))
        raise InputError(
            f"{what} {path}: column {column!r} has a non-numeric value {text[bad]!r} (data row {bad + 1})"
        ) from None
    if required and missing.any():
        first = int(np.flatnonzero(missing)[0])
        raise InputError(
            f"{what} {path}: column {column!r} has {int(missing.sum())} missing value(s) (first at data row {first + 1})"
        )
    return values


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class SumstatsTable:
    """Harmonised per-variant associations with one or more exposures and one outcome.

    `beta_exposure`, `se_exposure` (and `pval_exposure` when given) are
    (L, K) arrays, one column per name in `exposures`; everything else is
    per variant. All arrays are read-only copies; absent optional columns
    are None.
    """

    variant: tuple[str, ...]
    exposures: tuple[str, ...]
    beta_exposure: np.ndarray
    se_exposure: np.ndarray
    beta_outcome: np.ndarray
    se_outcome: np.ndarray
    effect_allele: tuple[str, ...] | None = None
    other_allele: tuple[str, ...] | None = None
    eaf_exposure: np.ndarray | None = None
    eaf_outcome: np.ndarray | None = None
    pval_exposure: np.ndarray | None = None
    n_exposure: np.ndarray | None = None
    n_outcome: np.ndarray | None = None
    chrom: tuple[str, ...] | None = None
    pos: np.ndarray | None = None
    source: str = ""

    def __post_init__(self):
        L = len(self.variant)
        object.__setattr__(self, "variant", tuple(str(v) for v in self.variant))
        object.__setattr__(self, "exposures", tuple(str(e) for e in self.exposures))
        K = len(self.exposures)
        if K == 0:
            raise InputError("at least one exposure is needed")
        if len(set(self.variant)) != L:
            dup = sorted({v for v in self.variant if self.variant.count(v) > 1})[:5]
            raise InputError(f"duplicated variant id(s): {', '.join(dup)}")
        for name in ("beta_exposure", "se_exposure", "pval_exposure"):
            arr = getattr(self, name)
            if arr is None:
                continue
            arr = np.asarray(arr, dtype=float)
            arr = arr.reshape(L, -1) if L else arr.reshape(0, K)  # an empty selection keeps its K columns
            if arr.shape[1] != K:
                raise InputError(f"{name} has {arr.shape[1]} column(s) for {K} exposure(s)")
            object.__setattr__(self, name, _readonly(arr))
        for name in ("beta_outcome", "se_outcome", "eaf_exposure", "eaf_outcome", "n_exposure", "n_outcome", "pos"):
            arr = getattr(self, name)
            if arr is None:
                continue
            arr = np.asarray(arr, dtype=float).ravel()
            if arr.shape[0] != L:
                raise InputError(f"{name} has {arr.shape[0]} values for {L} variants")
            object.__setattr__(self, name, _readonly(arr))
        for name in ("effect_allele", "other_allele", "chrom"):
            vals = getattr(self, name)
            if vals is not None:
                vals = tuple(str(v) for v in vals)
                if len(vals) != L:
                    raise InputError(f"{name} has {len(vals)} values for {L} variants")
                object.__setattr__(self, name, vals)
        for name in ("beta_exposure", "se_exposure", "beta_outcome", "se_outcome"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise InputError(f"{name} has missing or infinite values")
        for name in ("se_exposure", "se_outcome"):
            if np.any(getattr(self, name) <= 0):
                raise InputError(f"{name} must be positive")
        for name in ("eaf_exposure", "eaf_outcome"):
            arr = getattr(self, name)
            if arr is not None and np.any((arr <= 0) | (arr >= 1)):
                raise InputError(f"{name} must lie strictly between 0 and 1")
        if self.pval_exposure is not None and np.any((self.pval_exposure < 0) | (self.pval_exposure > 1)):
            raise InputError("pval_exposure must lie in [0, 1]")

    @property
    def n_variants(self) -> int:
        return len(self.variant)

    @property
    def n_exposures(self) -> int:
        return len(self.exposures)

    def exposure_index(self, name: str | None) -> int:
        if name is None:
            return 0
        if name not in self.exposures:
            raise InputError(f"no exposure named {name!r}; the table has {', '.join(self.exposures)}")
        return self.exposures.index(name)

    def subset(self, keep) -> SumstatsTable:
        """The variants selected by a boolean mask or index array, in that order."""
        keep = np.asarray(keep)
        idx = np.flatnonzero(keep) if keep.dtype == bool else keep.astype(int)

        def pick(x):
            if x is None:
                return None
            if isinstance(x, tuple):
                return tuple(x[i] for i in idx)
            return x[idx]

        return SumstatsTable(
            variant=pick(self.variant),
            exposures=self.exposures,
            beta_exposure=pick(self.beta_exposure),
            se_exposure=pick(self.se_exposure),
            beta_outcome=pick(self.beta_outcome),
            se_outcome=pick(self.se_outcome),
            effect_allele=pick(self.effect_allele),
            other_allele=pick(self.other_allele),
            eaf_exposure=pick(self.eaf_exposure),
            eaf_outcome=pick(self.eaf_outcome),
            pval_exposure=pick(self.pval_exposure),
            n_exposure=pick(self.n_exposure),
            n_outcome=pick(self.n_outcome),
            chrom=pick(self.chrom),
            pos=pick(self.pos),
            source=self.source,
        )

    def with_exposures(self, names) -> SumstatsTable:
        """The table restricted to the named exposures (in that order), e.g. one of a multivariable table."""
        names = [str(n) for n in names]
        idx = [self.exposure_index(n) for n in names]
        if len(set(idx)) != len(idx):
            raise InputError(f"an exposure is named twice: {', '.join(names)}")
        return replace(
            self,
            exposures=tuple(names),
            beta_exposure=self.beta_exposure[:, idx],
            se_exposure=self.se_exposure[:, idx],
            pval_exposure=None if self.pval_exposure is None else self.pval_exposure[:, idx],
        )

    def exposure_pvalues(self) -> np.ndarray:
        """(L, K) exposure p-values: the `pval_exposure` column where given, else two-sided normal from beta/SE."""
        from scipy.special import ndtr  # scipy.stats.norm.sf(z) is ndtr(-z); scipy.stats is slow to import

        computed = 2 * ndtr(-np.abs(self.beta_exposure / self.se_exposure))
        if self.pval_exposure is None:
            return computed
        return np.where(np.isfinite(self.pval_exposure), self.pval_exposure, computed)

    def summary(self) -> str:
        f = (self.beta_exposure / self.se_exposure) ** 2
        per = ", ".join(f"{e}: median F {np.median(f[:, k]):.1f}" for k, e in enumerate(self.exposures))
        return f"{self.n_variants} variants, {self.n_exposures} exposure(s) ({per})" + (
            f" from {self.source}" if self.source else ""
        )


def read_mr_sumstats(
    path: str | os.PathLike, columns: Mapping[str, str] | None = None, *, sep: str | None = None,
    dropped: list | None = None,
) -> SumstatsTable:
    """Read the one-table form (already harmonised); `columns` maps canonical -> file names.

    A TwoSampleMR `dat` carries `mr_keep`: rows with FALSE (e.g. ambiguous palindromes) are left
    out as `mr()` leaves them out, each appended to `dropped` (when given) as a `DroppedVariant`.

    Exposures: a `beta_exposure`/`se_exposure` pair (exposure name
    "exposure"), or one `beta_exposure_<name>`/`se_exposure_<name>` pair per
    exposure (multivariable). A file with both forms is an error. The
    separator is "," for *.csv and a tab otherwise unless `sep` is given.
    """
    what = "--sumstats"
    cmap = _column_map(columns, MR_REQUIRED + MR_OPTIONAL + ("n",), what)
    frame = _read_frame(path, sep, what)
    missing_renamed = [v for v in cmap.values() if v not in frame.columns]
    if missing_renamed:
        raise InputError(
            f"{what} {path}: column(s) {', '.join(missing_renamed)} named in the column mapping are not in the file "
            f"(it has {', '.join(frame.columns)})"
        )
    if "mr_keep" in frame.columns:
        keep = ~frame["mr_keep"].str.strip().str.upper().isin(("FALSE", "F", "0"))
        if not keep.all():
            id_col = cmap.get("variant") or next((c for c in frame.columns if c.lower() in ("snp", "variant")), None)
            if dropped is not None and id_col is not None:
                dropped.extend(DroppedVariant(str(v).strip(), "mr_keep_false", "mr_keep FALSE in the TwoSampleMR table")
                               for v in frame.loc[~keep, id_col])
            frame = frame.loc[keep].reset_index(drop=True)
            if frame.shape[0] == 0:
                raise InputError(f"{what} {path}: every row has mr_keep FALSE")
    multi_cols = [c for c in frame.columns if re.fullmatch(r"(beta|se|pval)_exposure_\w+", c)]
    cmap = recognise_columns([c for c in frame.columns if c not in multi_cols], {**MR_ALIASES, "n": ("n",)}, cmap)
    # Only the recognised columns go on, under their canonical names (no second column of one name).
    frame = frame[[c for c in frame.columns if c in cmap.values() or c in multi_cols]]
    frame = frame.rename(columns={v: k for k, v in cmap.items()})
    cols = list(frame.columns)
    multi = sorted(
        {m.group(1) for c in cols if (m := re.fullmatch(r"beta_exposure_(\w+)", c))}
        | {m.group(1) for c in cols if (m := re.fullmatch(r"se_exposure_(\w+)", c))}
    )
    single = "beta_exposure" in cols or "se_exposure" in cols
    if multi and single:
        raise InputError(
            f"{what} {path}: has both beta_exposure/se_exposure and per-exposure beta_exposure_<name> columns; use one form"
        )
    if multi:
        # Keep the file's column order for the exposures (the user's order).
        order = [m.group(1) for c in cols if (m := re.fullmatch(r"beta_exposure_(\w+)", c))]
        names = tuple(dict.fromkeys(order + multi))
        for name in names:
            for stem in ("beta_exposure", "se_exposure"):
                if f"{stem}_{name}" not in cols:
                    raise InputError(f"{what} {path}: exposure {name!r} has no {stem}_{name} column")
        beta_cols = [f"beta_exposure_{n}" for n in names]
        se_cols = [f"se_exposure_{n}" for n in names]
        p_cols = [f"pval_exposure_{n}" for n in names]
    else:
        names = ("exposure",)
        beta_cols, se_cols, p_cols = ["beta_exposure"], ["se_exposure"], ["pval_exposure"]
    required = ["variant", *beta_cols, *se_cols, "beta_outcome", "se_outcome"]
    absent = [c for c in required if c not in cols]
    if absent:
        raise InputError(
            f"{what} {path}: missing column(s) {', '.join(absent)} (the file has {', '.join(cols)}; "
            "name the file's columns with --col NAME=FILECOL)"
        )

    def num(c, req=True):
        return _numeric(frame, c, path, what, required=req)

    def opt(c):
        return num(c, False) if c in cols else None

    variant = tuple(frame["variant"].str.strip())
    pvals = None
    if all(c in cols for c in p_cols):
        pvals = np.column_stack([num(c, False) for c in p_cols])
    elif multi and "pval_exposure" in cols:
        raise InputError(f"{what} {path}: use pval_exposure_<name> columns with several exposures")
    try:
        return SumstatsTable(
            variant=variant,
            exposures=names,
            beta_exposure=np.column_stack([num(c) for c in beta_cols]),
            se_exposure=np.column_stack([num(c) for c in se_cols]),
            beta_outcome=num("beta_outcome"),
            se_outcome=num("se_outcome"),
            effect_allele=tuple(frame["effect_allele"].str.strip().str.upper()) if "effect_allele" in cols else None,
            other_allele=tuple(frame["other_allele"].str.strip().str.upper()) if "other_allele" in cols else None,
            eaf_exposure=opt("eaf_exposure"),
            eaf_outcome=opt("eaf_outcome"),
            pval_exposure=pvals,
            # `n` (what `run --sumstats-out` writes): both traits measured on the same samples.
            n_exposure=opt("n_exposure") if "n_exposure" in cols else opt("n"),
            n_outcome=opt("n_outcome") if "n_outcome" in cols else opt("n"),
            chrom=tuple(frame["chrom"].str.strip()) if "chrom" in cols else None,
            pos=opt("pos"),
            source=str(path),
        )
    except InputError as exc:
        raise InputError(f"{what} {path}: {exc}") from None


@dataclass(frozen=True)
class GWASTable:
    """One GWAS: per-variant effect of `effect_allele` (vs `other_allele`) on one trait."""

    variant: tuple[str, ...]
    effect_allele: tuple[str, ...]
    other_allele: tuple[str, ...]
    beta: np.ndarray
    se: np.ndarray
    eaf: np.ndarray | None = None
    pval: np.ndarray | None = None
    n: np.ndarray | None = None
    chrom: tuple[str, ...] | None = None
    pos: np.ndarray | None = None
    source: str = ""

    def __post_init__(self):
        L = len(self.variant)
        for name in ("variant", "effect_allele", "other_allele", "chrom"):
            vals = getattr(self, name)
            if vals is None:
                continue
            vals = tuple(str(v) for v in vals)
            if name in ("effect_allele", "other_allele"):
                vals = tuple(v.upper() for v in vals)
            if len(vals) != L:
                raise InputError(f"{name} has {len(vals)} values for {L} variants")
            object.__setattr__(self, name, vals)
        for name in ("beta", "se", "eaf", "pval", "n", "pos"):
            arr = getattr(self, name)
            if arr is None:
                continue
            arr = np.asarray(arr, dtype=float).ravel()
            if arr.shape[0] != L:
                raise InputError(f"{name} has {arr.shape[0]} values for {L} variants")
            object.__setattr__(self, name, _readonly(arr))

    @property
    def n_variants(self) -> int:
        return len(self.variant)


def read_gwas(
    path: str | os.PathLike,
    columns: Mapping[str, str] | None = None,
    *,
    sep: str | None = None,
    what: str = "GWAS",
) -> GWASTable:
    """Read one GWAS table for the two-file form; `columns` maps canonical -> file names.

    Rows with a missing beta/SE are kept here (NaN) and reported as dropped
    by `harmonise`, so that the dropped-variant table is complete.
    """
    cmap = _column_map(columns, GWAS_REQUIRED + GWAS_OPTIONAL, what)
    frame = _read_frame(path, sep, what)
    missing_renamed = [v for v in cmap.values() if v not in frame.columns]
    if missing_renamed:
        raise InputError(
            f"{what} {path}: column(s) {', '.join(missing_renamed)} named in the column mapping are not in the file "
            f"(it has {', '.join(frame.columns)})"
        )
    file_cols = list(frame.columns)
    suffix = next((sfx for sfx in (".exposure", ".outcome") if any(c.endswith(sfx) for c in file_cols)), None)
    cmap = recognise_columns(file_cols, GWAS_ALIASES, cmap, suffix=suffix)
    frame = _plink2_alleles(frame, cmap, file_cols)
    if "beta" not in cmap and "se" in cmap and any(c.upper() == "OR" for c in file_cols):
        # PLINK 2 --glm logistic output: the effect is the odds ratio, its SE is on the log scale.
        or_col = next(c for c in file_cols if c.upper() == "OR")
        values = _numeric(frame, or_col, path, what, required=False)
        frame = frame.assign(**{"__log_or": [("" if not np.isfinite(v) or v <= 0 else repr(float(np.log(v)))) for v in values]})
        cmap["beta"] = "__log_or"
    frame = frame[[c for c in frame.columns if c in cmap.values()]].rename(columns={v: k for k, v in cmap.items()})
    cols = list(frame.columns)
    absent = [c for c in GWAS_REQUIRED if c not in cols]
    if absent:
        raise InputError(
            f"{what} {path}: missing column(s) {', '.join(absent)} (the file has {', '.join(file_cols)}; "
            "name the file's columns with --col NAME=FILECOL)"
        )

    def opt(c):
        return _numeric(frame, c, path, what, required=False) if c in cols else None

    return GWASTable(
        variant=tuple(frame["variant"].str.strip()),
        effect_allele=tuple(frame["effect_allele"].str.strip()),
        other_allele=tuple(frame["other_allele"].str.strip()),
        beta=_numeric(frame, "beta", path, what, required=False),
        se=_numeric(frame, "se", path, what, required=False),
        eaf=opt("eaf"),
        pval=opt("pval"),
        n=opt("n"),
        chrom=tuple(frame["chrom"].str.strip()) if "chrom" in cols else None,
        pos=opt("pos"),
        source=str(path),
    )


def _plink2_alleles(frame, cmap: dict[str, str], file_cols: list[str]):
    """PLINK 2 `--glm` files before `OMITTED` existed: the other allele is whichever of REF/ALT is not A1."""
    upper = {c.upper(): c for c in file_cols}
    if "other_allele" in cmap or "effect_allele" not in cmap or not {"REF", "ALT"} <= upper.keys():
        return frame
    a1 = frame[cmap["effect_allele"]].str.strip()
    ref, alt = frame[upper["REF"]].str.strip(), frame[upper["ALT"]].str.strip()
    cmap["other_allele"] = "__other_allele"
    return frame.assign(__other_allele=np.where(a1 == alt, ref, alt))


# ----------------------------------------------------------------------------- harmonisation
@dataclass(frozen=True)
class DroppedVariant:
    """An exposure variant left out of the analysis, with a machine-readable reason."""

    variant: str
    reason: str
    detail: str = ""


#: Reasons `harmonise` gives, in the order the checks run.
DROP_REASONS = {
    "missing_exposure_value": "beta or SE missing (or SE not positive) in the exposure GWAS",
    "duplicate_in_exposure": "variant id appears more than once in the exposure GWAS",
    "not_in_outcome": "variant id absent from the outcome GWAS",
    "duplicate_in_outcome": "variant id appears more than once in the outcome GWAS",
    "missing_outcome_value": "beta or SE missing (or SE not positive) in the outcome GWAS",
    "incompatible_alleles": "alleles differ between the GWAS even after swapping and strand flipping",
    "palindromic": "palindromic (A/T or C/G) variant, dropped by the palindromes='drop' policy",
    "palindromic_ambiguous": "palindromic variant with an allele frequency too close to 0.5 (or missing) to infer the strand",
    "mr_keep_false": "marked mr_keep FALSE in a TwoSampleMR harmonised table",
}


@dataclass(frozen=True)
class HarmonisedSumstats:
    """The harmonised table, every dropped exposure variant with its reason, and counts of each fix."""

    table: SumstatsTable
    dropped: tuple[DroppedVariant, ...]
    n_swapped: int
    n_strand_flipped: int
    n_palindromic_flipped: int
    palindromes: str
    maf_threshold: float
    counts: Mapping[str, int] = field(default_factory=dict)

    def dropped_rows(self) -> list[dict[str, str]]:
        return [{"variant": d.variant, "reason": d.reason, "detail": d.detail} for d in self.dropped]

    def dropped_tsv(self) -> str:
        lines = ["variant\treason\tdetail"]
        lines += [f"{d.variant}\t{d.reason}\t{d.detail}" for d in self.dropped]
        return "\n".join(lines) + "\n"

    def summary(self) -> str:
        by_reason: dict[str, int] = {}
        for d in self.dropped:
            by_reason[d.reason] = by_reason.get(d.reason, 0) + 1
        dropped = ", ".join(f"{k} {v}" for k, v in by_reason.items()) or "none"
        return (
            f"harmonised {self.table.n_variants} variants (alleles swapped {self.n_swapped}, strand flipped "
            f"{self.n_strand_flipped}, palindromic inferred flipped {self.n_palindromic_flipped}); "
            f"dropped: {dropped}"
        )


def _valid(beta: np.ndarray, se: np.ndarray) -> np.ndarray:
    return np.isfinite(beta) & np.isfinite(se) & (se > 0)


def harmonise(
    exposure: GWASTable,
    outcome: GWASTable,
    *,
    palindromes: str = "infer",
    maf_threshold: float = DEFAULT_MAF_THRESHOLD,
    exposure_name: str = "exposure",
) -> HarmonisedSumstats:
    """Align the outcome GWAS to the exposure GWAS's effect alleles (TwoSampleMR `harmonise_data`).

    See the module docstring for the rules. The result's variants keep the
    exposure GWAS's order; its alleles and EAFs are the exposure GWAS's.
    """
    if palindromes not in ("infer", "drop"):
        raise InputError(f"palindromes must be 'infer' or 'drop', got {palindromes!r}")
    if not 0 < maf_threshold < 0.5:
        raise InputError(f"the palindrome MAF threshold must be in (0, 0.5), got {maf_threshold}")
    dropped: list[DroppedVariant] = []

    exp_ids = exposure.variant
    counts_e: dict[str, int] = {}
    for v in exp_ids:
        counts_e[v] = counts_e.get(v, 0) + 1
    out_index: dict[str, int] = {}
    counts_o: dict[str, int] = {}
    for i, v in enumerate(outcome.variant):
        counts_o[v] = counts_o.get(v, 0) + 1
        out_index.setdefault(v, i)
    ok_e = _valid(exposure.beta, exposure.se)
    ok_o = _valid(outcome.beta, outcome.se)

    rows_e, rows_o = [], []
    reported_dup: set[str] = set()
    for i, v in enumerate(exp_ids):
        if not ok_e[i]:
            dropped.append(DroppedVariant(v, "missing_exposure_value"))
        elif counts_e[v] > 1:
            if v not in reported_dup:
                dropped.append(DroppedVariant(v, "duplicate_in_exposure", f"{counts_e[v]} rows"))
                reported_dup.add(v)
        elif v not in out_index:
            dropped.append(DroppedVariant(v, "not_in_outcome"))
        elif counts_o[v] > 1:
            dropped.append(DroppedVariant(v, "duplicate_in_outcome", f"{counts_o[v]} rows"))
        elif not ok_o[out_index[v]]:
            dropped.append(DroppedVariant(v, "missing_outcome_value"))
        else:
            rows_e.append(i)
            rows_o.append(out_index[v])
    ie, io = np.array(rows_e, dtype=int), np.array(rows_o, dtype=int)

    a1 = [exposure.effect_allele[i] for i in ie]
    a2 = [exposure.other_allele[i] for i in ie]
    b1 = [outcome.effect_allele[i] for i in io]
    b2 = [outcome.other_allele[i] for i in io]
    beta_o = outcome.beta[io].copy()
    f_e = exposure.eaf[ie] if exposure.eaf is not None else np.full(len(ie), np.nan)
    f_o = outcome.eaf[io].copy() if outcome.eaf is not None else np.full(len(io), np.nan)

    keep = np.ones(len(ie), dtype=bool)
    swapped = np.zeros(len(ie), dtype=bool)
    strand = np.zeros(len(ie), dtype=bool)
    pal_flip = np.zeros(len(ie), dtype=bool)
    palin = np.array([is_palindromic(x, y) for x, y in zip(a1, a2)], dtype=bool)
    lo, hi = maf_threshold, 1.0 - maf_threshold
    for j in range(len(ie)):
        x1, x2, y1, y2 = a1[j], a2[j], b1[j], b2[j]
        if (x1, x2) == (y2, y1):
            beta_o[j], f_o[j] = -beta_o[j], 1.0 - f_o[j]
            swapped[j] = True
            y1, y2 = y2, y1
        if (x1, x2) != (y1, y2) and not palin[j]:
            y1, y2 = complement(y1), complement(y2)
            strand[j] = True
            if (x1, x2) == (y2, y1):
                beta_o[j], f_o[j] = -beta_o[j], 1.0 - f_o[j]
                swapped[j] = True
                y1, y2 = y2, y1
        v = exposure.variant[ie[j]]
        if (x1, x2) != (y1, y2):
            keep[j] = False
            dropped.append(
                DroppedVariant(v, "incompatible_alleles", f"exposure {a1[j]}/{a2[j]}, outcome {b1[j]}/{b2[j]}")
            )
            continue
        if not palin[j]:
            continue
        if palindromes == "drop":
            keep[j] = False
            dropped.append(DroppedVariant(v, "palindromic", f"{x1}/{x2}"))
            continue
        # TwoSampleMR treats a missing EAF as 0.5, i.e. ambiguous.
        fe = 0.5 if np.isnan(f_e[j]) else f_e[j]
        fo = 0.5 if np.isnan(f_o[j]) else f_o[j]
        if lo < fe < hi or lo < fo < hi:
            keep[j] = False
            dropped.append(
                DroppedVariant(
                    v,
                    "palindromic_ambiguous",
                    f"{x1}/{x2}, EAF exposure {_fmt(f_e[j])}, outcome {_fmt(f_o[j])}; ambiguous in ({lo:g}, {hi:g})",
                )
            )
            continue
        if (fe - 0.5) * (fo - 0.5) < 0:
            beta_o[j], f_o[j] = -beta_o[j], 1.0 - f_o[j]
            pal_flip[j] = True

    ke, ko = ie[keep], io[keep]

    def pick_e(arr):
        return None if arr is None else arr[ke]

    def pick_o(arr):
        return None if arr is None else arr[ko]

    table = SumstatsTable(
        variant=tuple(exposure.variant[i] for i in ke),
        exposures=(exposure_name,),
        beta_exposure=exposure.beta[ke][:, None],
        se_exposure=exposure.se[ke][:, None],
        beta_outcome=beta_o[keep],
        se_outcome=outcome.se[ko],
        effect_allele=tuple(a1[j] for j in np.flatnonzero(keep)),
        other_allele=tuple(a2[j] for j in np.flatnonzero(keep)),
        eaf_exposure=pick_e(exposure.eaf),
        eaf_outcome=None if outcome.eaf is None else f_o[keep],
        pval_exposure=None if exposure.pval is None else exposure.pval[ke][:, None],
        n_exposure=pick_e(exposure.n),
        n_outcome=pick_o(outcome.n),
        chrom=None if exposure.chrom is None else tuple(exposure.chrom[i] for i in ke),
        pos=pick_e(exposure.pos),
        source=f"{exposure.source} + {outcome.source}",
    )
    reasons: dict[str, int] = {}
    for d in dropped:
        reasons[d.reason] = reasons.get(d.reason, 0) + 1
    return HarmonisedSumstats(
        table=table,
        dropped=tuple(dropped),
        n_swapped=int(swapped[keep].sum()),
        n_strand_flipped=int(strand[keep].sum()),
        n_palindromic_flipped=int(pal_flip[keep].sum()),
        palindromes=palindromes,
        maf_threshold=float(maf_threshold),
        counts={"exposure_variants": exposure.n_variants, "kept": table.n_variants, **reasons},
    )


def harmonise_exposures(
    exposures: Sequence[GWASTable],
    outcome: GWASTable,
    *,
    names: Sequence[str] | None = None,
    palindromes: str = "infer",
    maf_threshold: float = DEFAULT_MAF_THRESHOLD,
) -> HarmonisedSumstats:
    """Multivariable input from one GWAS file per exposure (TwoSampleMR `mv_harmonise_data` in spirit).

    The first exposure's effect alleles are the reference: the outcome is aligned to them by
    `harmonise`, and so is every other exposure (`harmonise(first, other)` treats the other
    exposure as the table to align, with the same swap, strand and palindrome rules). A variant
    is analysed when it survives every alignment; each variant that does not is listed once,
    with the first alignment that dropped it (its detail names the exposure). The instruments
    are the first exposure GWAS's rows: give each file the same variant list, e.g. the union of
    every exposure's instruments looked up in each GWAS.
    """
    if len(exposures) < 2:
        raise InputError("multivariable input needs at least two exposure GWAS files")
    names = tuple(str(n) for n in (names or [f"exposure_{k + 1}" for k in range(len(exposures))]))
    if len(names) != len(exposures):
        raise InputError(f"{len(names)} exposure names for {len(exposures)} exposure GWAS files")
    if len(set(names)) != len(names):
        raise InputError(f"exposure names must differ: {', '.join(names)}")
    first = harmonise(exposures[0], outcome, palindromes=palindromes, maf_threshold=maf_threshold,
                      exposure_name=names[0])  # fmt: skip
    dropped: dict[str, DroppedVariant] = {d.variant: d for d in first.dropped}
    aligned = []
    for name, other in zip(names[1:], exposures[1:]):
        h = harmonise(exposures[0], other, palindromes=palindromes, maf_threshold=maf_threshold)
        for d in h.dropped:
            reason = "not_in_exposure" if d.reason == "not_in_outcome" else d.reason
            dropped.setdefault(d.variant, DroppedVariant(d.variant, reason, f"exposure {name}: {d.detail}".rstrip(": ")))
        index = {v: i for i, v in enumerate(h.table.variant)}
        aligned.append((h.table, index))
    t = first.table
    # A variant the first alignment kept but another did not has that alignment's reason in `dropped`.
    keep = [i for i, v in enumerate(t.variant) if all(v in idx for _, idx in aligned)]
    rows = [[idx[t.variant[i]] for i in keep] for _, idx in aligned]
    beta = np.column_stack([t.beta_exposure[keep, 0]] + [tab.beta_outcome[r] for (tab, _), r in zip(aligned, rows)])
    se = np.column_stack([t.se_exposure[keep, 0]] + [tab.se_outcome[r] for (tab, _), r in zip(aligned, rows)])
    pvals = None
    if all(e.pval is not None for e in exposures):
        p_other = []
        for (tab, _), r, e in zip(aligned, rows, exposures[1:]):
            pos = {v: i for i, v in enumerate(e.variant)}
            p_other.append(np.array([e.pval[pos[tab.variant[j]]] for j in r]))
        pvals = np.column_stack([t.pval_exposure[keep, 0], *p_other])
    table = SumstatsTable(
        variant=tuple(t.variant[i] for i in keep), exposures=names, beta_exposure=beta, se_exposure=se,
        beta_outcome=t.beta_outcome[keep], se_outcome=t.se_outcome[keep],
        effect_allele=None if t.effect_allele is None else tuple(t.effect_allele[i] for i in keep),
        other_allele=None if t.other_allele is None else tuple(t.other_allele[i] for i in keep),
        pval_exposure=pvals, n_exposure=None if t.n_exposure is None else t.n_exposure[keep],
        n_outcome=None if t.n_outcome is None else t.n_outcome[keep],
        chrom=None if t.chrom is None else tuple(t.chrom[i] for i in keep),
        pos=None if t.pos is None else t.pos[keep],
        source=" + ".join(e.source for e in (*exposures, outcome)),
    )  # fmt: skip
    order = {v: i for i, v in enumerate(exposures[0].variant)}
    all_dropped = tuple(sorted(dropped.values(), key=lambda d: order.get(d.variant, len(order))))
    reasons: dict[str, int] = {}
    for d in all_dropped:
        reasons[d.reason] = reasons.get(d.reason, 0) + 1
    return HarmonisedSumstats(
        table=table, dropped=all_dropped, n_swapped=first.n_swapped, n_strand_flipped=first.n_strand_flipped,
        n_palindromic_flipped=first.n_palindromic_flipped, palindromes=palindromes, maf_threshold=float(maf_threshold),
        counts={"exposure_variants": exposures[0].n_variants, "kept": table.n_variants, **reasons},
    )  # fmt: skip


def explain_empty(harmonised: HarmonisedSumstats, exposure: GWASTable, outcome: GWASTable) -> str:
    """Why harmonisation kept no variant, in one line: the count of each reason, and for no overlap
    at all, an example id from each file (the usual cause: rs ids against chr:pos ids)."""
    counts: dict[str, int] = {}
    for d in harmonised.dropped:
        counts[d.reason] = counts.get(d.reason, 0) + 1
    parts = [f"{reason.replace('_', ' ')} {n}" for reason, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    line = (f"harmonisation left no variant of {exposure.n_variants} in the exposure GWAS: " + ", ".join(parts))
    if counts.get("not_in_outcome", 0) == len(harmonised.dropped) and exposure.n_variants and outcome.n_variants:
        line += (f"; no variant id is shared by the two files (e.g. {exposure.variant[0]!r} in the exposure GWAS, "
                 f"{outcome.variant[0]!r} in the outcome GWAS)")
    elif counts.get("incompatible_alleles"):
        line += "; allele mismatches usually mean the files use different builds or allele codings"
    elif counts.get("palindromic_ambiguous") or counts.get("palindromic"):
        line += "; palindromic variants need allele frequencies outside (0.42, 0.58) (or --palindromes infer)"
    return line


def _fmt(x: float) -> str:
    return "NA" if np.isnan(x) else f"{x:.3f}"


__all__ = [
    "DEFAULT_MAF_THRESHOLD",
    "DROP_REASONS",
    "GWAS_ALIASES",
    "GWAS_OPTIONAL",
    "GWAS_REQUIRED",
    "MR_ALIASES",
    "MR_OPTIONAL",
    "MR_REQUIRED",
    "DroppedVariant",
    "GWASTable",
    "HarmonisedSumstats",
    "SumstatsTable",
    "complement",
    "explain_empty",
    "harmonise",
    "harmonise_exposures",
    "is_palindromic",
    "read_gwas",
    "read_mr_sumstats",
    "recognise_columns",
]
