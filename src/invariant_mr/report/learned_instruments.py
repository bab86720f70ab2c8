"""The learned instruments of each method, per sample: for instruments.tsv and the report.

Methods that learn instruments return them as `artifacts[method]["instruments"]`,
an (n, k) array aligned with the analysed samples.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from invariant_mr.results import AnalysisResult


def learned_instruments(result: AnalysisResult, n: int) -> dict[str, np.ndarray]:
    """method -> (n, k) float array, for every method whose instruments have one row per sample."""
    out = {}
    for method, artifacts in result.artifacts.items():
        values = artifacts.get("instruments") if hasattr(artifacts, "get") else None
        if values is None:
            continue
        arr = np.asarray(values, dtype=float)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim == 2 and arr.shape[0] == n and arr.shape[1] > 0:
            out[method] = arr
    return out


def instrument_count_label(result: AnalysisResult, method: str, k: int) -> str:
    """How many instruments `method` learned, in the words the estimates table agrees with.

    Cross-fitted methods interact each learned instrument with its fold
    indicator (each fold's columns come from a different map), so the
    estimate's `n_instruments` is k x folds.
    """
    artifacts = result.artifacts.get(method, {})
    folds = artifacts.get("folds") if hasattr(artifacts, "get") else None
    noun = "learned instrument" if k == 1 else "learned instruments"
    if folds is None:
        return f"{k} {noun}"
    n_folds = int(np.unique(np.asarray(folds)).size)
    return f"{k} {noun} x {n_folds} folds = {k * n_folds} fold-interacted instruments"


def missing_instruments(result: AnalysisResult, n: int) -> dict[str, str]:
    """method -> why it has no column in instruments.tsv, for methods that abstained or left odd-shaped output.

    A method that found no instrument has no estimate either; its reason
    (`Estimate.unavailable`) is the reason here.
    """
    found = learned_instruments(result, n)
    out = {}
    for method, artifacts in result.artifacts.items():
        values = artifacts.get("instruments") if hasattr(artifacts, "get") else None
        if values is not None and method not in found:
            out[method] = f"its instruments are not one row per analysed sample (shape {np.shape(values)})"
    for e in result.select(scope="pooled"):
        if not e.available and e.method not in found:
            out.setdefault(e.method, f"no instruments: {e.reason}")
    return out


def instruments_note(result: AnalysisResult, n: int) -> str | None:
    """One line for the terminal and the report about what instruments.tsv leaves out, or None."""
    missing = missing_instruments(result, n)
    if not missing:
        return None
    why = "; ".join(f"{m}: {reason}" for m, reason in missing.items())
    if not learned_instruments(result, n):
        return f"instruments.tsv not written: no method learned instruments ({why})"
    return f"instruments.tsv has no columns for {why}"


def instruments_table(result: AnalysisResult, env: np.ndarray, sample_ids: np.ndarray | None = None) -> pd.DataFrame:
    """One row per analysed sample: IID, environment, then `<method>_<k>` for each learned instrument."""
    env = np.asarray(env)
    n = env.shape[0]
    columns = {
        "IID": np.asarray(sample_ids, dtype=object) if sample_ids is not None else [f"row{i + 1}" for i in range(n)],
        "environment": env,
    }
    for method, arr in learned_instruments(result, n).items():
        for j in range(arr.shape[1]):
            columns[f"{method}_{j + 1}"] = arr[:, j]
    return pd.DataFrame(columns)


def instruments_tsv(result: AnalysisResult, env: np.ndarray, sample_ids: np.ndarray | None = None) -> str | None:
    """instruments.tsv text, or None when no method learned instruments."""
    table = instruments_table(result, env, sample_ids)
    if table.shape[1] <= 2:
        return None
    return table.to_csv(sep="\t", index=False, float_format="%.10g", lineterminator="\n")
