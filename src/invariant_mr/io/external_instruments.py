"""Instruments computed elsewhere (`invariant-mr apply`): read instruments.tsv and join it to a phenotype table.

`instruments.tsv` has an `IID` column and one numeric column per instrument
(`W1`, `W2`, ...). `run --instruments-from DIR` joins it to the --table or
--pheno rows by sample ID; rows without instruments are dropped and counted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from invariant_mr.errors import InputError

INSTRUMENTS_FILE = "instruments.tsv"
ALIGNMENT_FILE = "alignment.json"


def read_external_instruments(directory: str | os.PathLike) -> tuple[pd.DataFrame, list[str], dict]:
    """(table with IID first, instrument column names, the alignment report of `apply` or {})."""
    directory = Path(directory)
    path = directory / INSTRUMENTS_FILE if directory.is_dir() else directory
    if not path.is_file():
        raise InputError(f"--instruments-from {directory}: no {INSTRUMENTS_FILE} (write one with `invariant-mr apply`)")
    table = pd.read_csv(path, sep="\t", dtype={"IID": str})
    if "IID" not in table.columns:
        raise InputError(f"{path}: no IID column")
    names = [c for c in table.columns if c != "IID"]
    if not names:
        raise InputError(f"{path}: no instrument columns besides IID")
    for c in names:
        if not pd.api.types.is_numeric_dtype(table[c]):
            raise InputError(f"{path}: instrument column {c!r} is not numeric")
    if table["IID"].duplicated().any():
        raise InputError(f"{path}: sample ID {table['IID'][table['IID'].duplicated()].iloc[0]!r} appears twice")
    report = {}
    alignment = path.parent / ALIGNMENT_FILE
    if alignment.is_file():
        try:
            report = json.loads(alignment.read_text())
        except ValueError:
            report = {}
    return table, names, report


def join_external_instruments(
    table: pd.DataFrame, id_column: str, instruments: pd.DataFrame, names: list[str], source: str
) -> tuple[pd.DataFrame, int]:
    """(rows of `table` with their instruments appended, rows dropped for having none)."""
    if id_column not in table.columns:
        raise InputError(f"{source} has no sample ID column {id_column!r} to join the instruments on")
    clash = [c for c in names if c in table.columns]
    if clash:
        raise InputError(f"{source} already has column(s) {', '.join(clash)}, the names of the external instruments")
    ids = table[id_column].astype(str).str.strip()
    lookup = instruments.set_index(instruments["IID"].astype(str).str.strip())[names]
    found = ids.isin(lookup.index).to_numpy()
    if not found.any():
        raise InputError(
            f"no sample of {source} has external instruments (IDs like {', '.join(ids.head(3))}; "
            f"instruments.tsv IDs like {', '.join(lookup.index[:3])})"
        )
    out = table.loc[found].reset_index(drop=True)
    values = lookup.reindex(ids[found].to_numpy()).to_numpy(dtype=float)
    for j, name in enumerate(names):
        out[name] = values[:, j]
    return out, int((~found).sum())


__all__ = ["ALIGNMENT_FILE", "INSTRUMENTS_FILE", "join_external_instruments", "read_external_instruments"]
