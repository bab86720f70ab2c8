"""Delimited/Parquet tables in, `MRData` out, with errors that name the file and column."""

from __future__ import annotations

import difflib
import fnmatch
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from invariant_mr.data import MAX_ABS_VALUE, MRData
from invariant_mr.errors import InputError
from invariant_mr.io.phenotypes import MISSING_CODES, check_delimiter, expand_column_range, header_names, refuse_duplicate_columns


def read_table(path: str | Path, option: str = "--table", missing_codes: Sequence[str] = MISSING_CODES) -> pd.DataFrame:
    """Read .tsv/.txt (tab), .csv (comma) or .parquet; anything else is sniffed.

    `missing_codes` (PLINK's -9 and NA by default) are read as missing, besides
    pandas' usual NA spellings. Duplicate column names are refused by name
    (pandas would silently rename the second "z2" to "z2.1").
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{option} {path}: file not found")
    suffix = "".join(path.suffixes[-2:]).lower()
    na = list(missing_codes)
    try:
        if suffix.endswith(".parquet") or suffix.endswith(".pq"):
            table = pd.read_parquet(path)
            refuse_duplicate_columns([str(c) for c in table.columns], f"{option} {path}")
            return _with_rows(table.replace({code: np.nan for code in na}), option, path)
        if suffix.endswith((".tsv", ".tsv.gz", ".txt", ".txt.gz", ".tab")):
            sep = "\t"
        elif suffix.endswith((".csv", ".csv.gz")):
            sep = ","
        else:
            sep = None
        if sep is not None:
            names = header_names(path, sep)
            check_delimiter(path, sep, names, f"{option} {path}")
            refuse_duplicate_columns(names, f"{option} {path}")
            return _with_rows(pd.read_csv(path, sep=sep, na_values=na), option, path)
        table = pd.read_csv(path, sep=None, engine="python", na_values=na)
        refuse_duplicate_columns([str(c) for c in table.columns], f"{option} {path}")
        return _with_rows(table, option, path)
    except InputError:
        raise
    except pd.errors.EmptyDataError:
        raise InputError(f"{option} {path}: the file is empty (no header line); give the table with a header row") from None
    except ImportError as exc:
        raise InputError(f"{option} {path}: reading this format needs an extra package ({exc})") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{option} {path}: cannot parse table ({str(exc).splitlines()[0]})") from None


def _with_rows(table: pd.DataFrame, option: str, path: Path) -> pd.DataFrame:
    if len(table) == 0:
        raise InputError(f"{option} {path}: the table has a header but no rows")
    return table


def unknown_column(column: str, available: Sequence[str], option: str, path: str | Path) -> InputError:
    close = difflib.get_close_matches(column, [str(c) for c in available], n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return InputError(f"{option} {column!r}: no such column in {path}{hint}")


def numeric_column(df: pd.DataFrame, column: str, option: str, path) -> np.ndarray:
    if column not in df.columns:
        raise unknown_column(column, df.columns, option, path)
    values = pd.to_numeric(df[column], errors="coerce")
    bad = values.isna() & df[column].notna()
    if bad.any():
        example = df[column][bad].iloc[0]
        raise InputError(
            f"{option} {column!r} in {path}: {int(bad.sum())} non-numeric value(s), e.g. {example!r}"
        )
    if values.isna().all():
        raise InputError(f"{option} {column!r} in {path}: all values are missing")
    if values.isna().any():
        raise InputError(f"{option} {column!r} in {path}: {int(values.isna().sum())} missing value(s)")
    out = values.to_numpy(dtype=float)
    peak = float(np.max(np.abs(out)))
    if not np.isfinite(peak) or peak > MAX_ABS_VALUE:
        raise InputError(
            f"{option} {column!r} in {path}: values up to {peak:.3g} are too large for the cross-products to stay "
            f"finite; rescale the column (e.g. to other units) below {MAX_ABS_VALUE:g}"
        )
    return out


def select_columns(df: pd.DataFrame, patterns: str | Sequence[str], option: str, path, exclude=()) -> list[str]:
    """Columns matching comma-separated names, shell globs ("PC*", in table order) or numbered
    ranges ("PC1-PC10", in range order, as PLINK's --covar-name reads them)."""
    if isinstance(patterns, str):
        patterns = [p.strip() for p in patterns.split(",") if p.strip()]
    chosen: list[str] = []
    columns = [str(c) for c in df.columns]
    for pat in patterns:
        ranged = expand_column_range(pat, columns, option, str(path))
        if ranged is not None:
            chosen.extend(h for h in ranged if h not in chosen and h not in exclude)
            continue
        hits = [c for c in df.columns if fnmatch.fnmatchcase(str(c), pat) and c not in exclude]
        if not hits:
            if any(ch in pat for ch in "*?["):
                raise InputError(f"{option} {pat!r}: matches no column in {path}")
            raise unknown_column(pat, df.columns, option, path)
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


def mrdata_from_table(df: pd.DataFrame, **kwargs) -> MRData:
    """`MRData` from a table (see `table_data`, which also reports the rows dropped for missing values)."""
    return table_data(df, **kwargs)[0]


def table_data(
    df: pd.DataFrame,
    *,
    env: str,
    exposure: str,
    outcome: str,
    instruments: str | Sequence[str],
    covariates: str | Sequence[str] | None = None,
    id_column: str | None = "iid",
    path: str | Path = "table",
    cluster: str | None = None,
) -> tuple[MRData, dict[str, int]]:
    """(data, dropped): rows missing any used value are dropped, counted per reason, as PLINK does.

    `cluster` names a column of cluster labels (e.g. family ID) for cluster-robust
    inference; rows without a label are dropped and counted like the others.
    `exposure` may be a comma-separated list (multivariable MR): the first is
    `MRData.exposure`, the others `MRData.other_exposures`.
    """
    exposures = parse_exposures(exposure)
    exposure = exposures[0]
    for col, opt in ((env, "--env"), *((e, "--exposure") for e in exposures), (outcome, "--outcome")):
        if col not in df.columns:
            raise unknown_column(col, df.columns, opt, path)
    if outcome in exposures:
        raise InputError(f"--exposure and --outcome both name column {outcome!r}: give two different traits")
    if env in (*exposures, outcome):
        raise InputError(f"--env {env!r} is also the {'outcome' if env == outcome else 'exposure'}")
    if cluster is not None:
        if cluster not in df.columns:
            raise unknown_column(cluster, df.columns, "--cluster", path)
        if cluster in (env, *exposures, outcome):
            raise InputError(f"--cluster {cluster!r} is also the --env, --exposure or --outcome column")
    roles = {env, *exposures, outcome} | ({id_column} if id_column else set()) | ({cluster} if cluster else set())
    cov_cols = select_columns(df, covariates, "--covariates", path) if covariates else []
    _refuse_roles_as_instruments(instruments, {env: "--env", **{e: "--exposure" for e in exposures}, outcome: "--outcome"})
    inst_cols = select_columns(df, instruments, "--instruments", path, exclude=roles | set(cov_cols))
    used = [(env, "environment"), *((e, "exposure") for e in exposures), (outcome, "outcome")]
    used += [(c, "covariate") for c in cov_cols] + [(c, "instrument") for c in inst_cols]
    if cluster is not None:
        used.append((cluster, "cluster"))
    keep = np.ones(len(df), dtype=bool)
    dropped: dict[str, int] = {}
    for col, role in used:
        missing = df[col].isna().to_numpy()
        if role == "cluster":
            missing = missing | (df[col].astype(str).str.strip() == "").to_numpy()
        count = int((missing & keep).sum())
        if count:
            dropped[f"missing {role} ({col})"] = count
        keep &= ~missing
    if not keep.any():
        raise InputError(f"{path}: every row misses a used value ({', '.join(dropped)})")
    df = df.loc[keep]
    Z = np.column_stack([numeric_column(df, c, "--instruments", path) for c in inst_cols])
    cov = (
        np.column_stack([numeric_column(df, c, "--covariates", path) for c in cov_cols]) if cov_cols else None
    )
    ids = df[id_column].astype(str).to_numpy(dtype=object) if id_column and id_column in df.columns else None
    if ids is not None:
        repeated = pd.Series(ids).value_counts()
        repeated = repeated[repeated > 1]
        if len(repeated):
            raise InputError(
                f"{path}: sample ID {repeated.index[0]!r} occurs {int(repeated.iloc[0])} times in column {id_column!r} "
                f"({len(repeated)} repeated ID(s)); one row per sample: remove the duplicated rows"
            )
    data = MRData(
        Z=Z,
        exposure=numeric_column(df, exposure, "--exposure", path),
        other_exposures=(
            np.column_stack([numeric_column(df, e, "--exposure", path) for e in exposures[1:]])
            if len(exposures) > 1 else None
        ),
        exposure_names=tuple(exposures) if len(exposures) > 1 else None,
        outcome=numeric_column(df, outcome, "--outcome", path),
        env=df[env].astype(str).to_numpy(dtype=object),
        covariates=cov,
        covariate_names=cov_cols or None,
        sample_ids=ids,
        instrument_names=inst_cols,
        clusters=None if cluster is None else df[cluster].astype(str).str.strip().to_numpy(dtype=object),
    )
    return data, dropped


def parse_exposures(exposure: str | Sequence[str]) -> list[str]:
    """`--exposure bmi,ldl` -> ["bmi", "ldl"]: one or more distinct exposure columns."""
    names = [e.strip() for e in exposure.split(",")] if isinstance(exposure, str) else [str(e) for e in exposure]
    names = [e for e in names if e]
    if not names:
        raise InputError("--exposure is empty")
    if len(set(names)) != len(names):
        raise InputError(f"--exposure names a column twice: {', '.join(names)}")
    return names


def _refuse_roles_as_instruments(instruments: str | Sequence[str], roles: dict[str, str]) -> None:
    """`--instruments "z*,exposure"`: say that a role column cannot be an instrument (not "no such column")."""
    patterns = [p.strip() for p in instruments.split(",")] if isinstance(instruments, str) else list(instruments)
    for pat in patterns:
        if pat in roles:
            raise InputError(f"--instruments {pat!r}: the {roles[pat].lstrip('-')} column cannot also be an instrument")


def mrdata_to_table(data: MRData, env_name: str = "environment") -> pd.DataFrame:
    """The table layout `simulate` writes and `run --table` reads."""
    cols = {
        "iid": data.sample_ids if data.sample_ids is not None else [f"s{i}" for i in range(data.n)],
        env_name: data.env,
        "exposure": data.exposure,
        "outcome": data.outcome,
    }
    if data.covariates is not None:
        cols.update({name: data.covariates[:, j] for j, name in enumerate(data.covariate_names)})
    cols.update({name: data.Z[:, j] for j, name in enumerate(data.instrument_names)})
    return pd.DataFrame(cols)
