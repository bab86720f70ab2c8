"""Per-variant summary statistics from individual-level data.

Summary-statistic MR methods (IVW, MR-Egger, median and mode estimators,
MR-PRESSO) take one association of each variant with the exposure and one
with the outcome, as a GWAS would report them. Here they are computed from
the individual-level data, adjusted for the same exogenous controls that the
IV methods use (intercept, environment fixed effects, covariates).

Every variant gets its own simple regression on the controls, as in a GWAS.
That is vectorised: the controls are partialled out of all columns once
(Frisch-Waugh-Lovell), after which each variant's slope and standard error
have closed forms in a few column sums.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from invariant_mr.data import MRData
from invariant_mr.errors import InputError
from invariant_mr.io.output import atomic_write_text

#: Columns of the summary-statistics TSV, in order.
SUMSTATS_COLUMNS = ("variant", "beta_exposure", "se_exposure", "beta_outcome", "se_outcome", "n")


def _readonly(arr) -> np.ndarray:
    out = np.array(arr, dtype=float, copy=True)
    out.setflags(write=False)
    return out


@dataclass(frozen=True)
class SummaryStatistics:
    """Per-variant associations (beta, SE) with the exposure and the outcome.

    Arrays are read-only copies. `adjusted_for` names the controls that were
    partialled out; `cov_type` says whether the SEs are homoskedastic
    ("unadjusted", the GWAS convention) or HC0 "robust".
    """

    variant: tuple[str, ...]
    beta_exposure: np.ndarray
    se_exposure: np.ndarray
    beta_outcome: np.ndarray
    se_outcome: np.ndarray
    n: int
    adjusted_for: tuple[str, ...] = ()
    cov_type: str = "unadjusted"

    def __post_init__(self):
        m = len(self.variant)
        arrays = {}
        for name in ("beta_exposure", "se_exposure", "beta_outcome", "se_outcome"):
            arr = np.asarray(getattr(self, name), dtype=float).ravel()
            if arr.shape[0] != m:
                raise InputError(f"{name} has {arr.shape[0]} values for {m} variants")
            if not np.all(np.isfinite(arr)):
                raise InputError(f"{name} has NaN/inf values")
            arrays[name] = arr
        for name in ("se_exposure", "se_outcome"):
            if np.any(arrays[name] <= 0):
                raise InputError(f"{name} must be positive")
        for name, arr in arrays.items():
            object.__setattr__(self, name, _readonly(arr))
        object.__setattr__(self, "variant", tuple(str(v) for v in self.variant))
        object.__setattr__(self, "adjusted_for", tuple(self.adjusted_for))

    @property
    def n_variants(self) -> int:
        return len(self.variant)

    def subset(self, keep) -> "SummaryStatistics":
        """The variants selected by a boolean mask or index array."""
        keep = np.asarray(keep)
        if keep.dtype == bool:
            keep = np.flatnonzero(keep)
        return SummaryStatistics(
            variant=tuple(self.variant[i] for i in keep),
            beta_exposure=self.beta_exposure[keep],
            se_exposure=self.se_exposure[keep],
            beta_outcome=self.beta_outcome[keep],
            se_outcome=self.se_outcome[keep],
            n=self.n,
            adjusted_for=self.adjusted_for,
            cov_type=self.cov_type,
        )

    def to_tsv_string(self, extra_columns: Mapping[str, Sequence] | None = None) -> str:
        """The table as TSV; `extra_columns` (name -> one value per variant, e.g. the counted allele)
        are written after the variant column (readers ignore them)."""
        extra = dict(extra_columns or {})
        for name, values in extra.items():
            if len(values) != len(self.variant):
                raise InputError(f"column {name} has {len(values)} values for {len(self.variant)} variants")
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
        writer.writerow([SUMSTATS_COLUMNS[0], *extra, *SUMSTATS_COLUMNS[1:]])
        for j, name in enumerate(self.variant):
            # repr keeps every digit, so a round trip through the file is exact.
            writer.writerow(
                [
                    name,
                    *("NA" if v[j] is None or (isinstance(v[j], float) and v[j] != v[j]) else v[j]
                      for v in extra.values()),
                    repr(float(self.beta_exposure[j])),
                    repr(float(self.se_exposure[j])),
                    repr(float(self.beta_outcome[j])),
                    repr(float(self.se_outcome[j])),
                    self.n,
                ]
            )
        return buf.getvalue()

    def to_tsv(self, path: str | os.PathLike, extra_columns: Mapping[str, Sequence] | None = None) -> None:
        """Write the table atomically (temporary file, then rename)."""
        parent = Path(path).resolve().parent
        if not parent.is_dir():
            raise InputError(f"--sumstats-out {path}: directory {parent} does not exist")
        atomic_write_text(path, self.to_tsv_string(extra_columns))

    def summary(self) -> str:
        f_stat = (self.beta_exposure / self.se_exposure) ** 2
        return (
            f"{self.n_variants} variants, n={self.n}, adjusted for "
            f"{', '.join(self.adjusted_for) or 'nothing'}; per-variant F: median "
            f"{np.median(f_stat):.1f}, min {f_stat.min():.1f}"
        )


def read_summary_statistics(path: str | os.PathLike) -> SummaryStatistics:
    """Read a table written by `SummaryStatistics.to_tsv`."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        missing = [c for c in SUMSTATS_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
        rows = list(reader)
    if not rows:
        raise InputError(f"{path}: no variants")
    col = {c: [r[c] for r in rows] for c in SUMSTATS_COLUMNS}
    try:
        values = {c: np.array(col[c], dtype=float) for c in SUMSTATS_COLUMNS[1:]}
    except ValueError as exc:
        raise InputError(f"{path}: non-numeric value ({exc})") from None
    return SummaryStatistics(
        variant=tuple(col["variant"]),
        beta_exposure=values["beta_exposure"],
        se_exposure=values["se_exposure"],
        beta_outcome=values["beta_outcome"],
        se_outcome=values["se_outcome"],
        n=int(values["n"].max()),
    )


def per_column_regression(
    X: np.ndarray, y: np.ndarray, controls: np.ndarray | None, cov_type: str = "unadjusted"
) -> tuple[np.ndarray, np.ndarray, int]:
    """Slope and SE of y on each column of X separately, every fit adjusted for `controls`.

    `controls` should include the intercept column if one is wanted. Returns
    (beta, se, residual degrees of freedom). Homoskedastic SEs use the
    residual variance on n - rank(controls) - 1 degrees of freedom (what
    `statsmodels.OLS` reports); "robust" is HC0, as linearmodels reports it.
    """
    # Imported here: estimators.iv loads pandas and scipy.stats, which summary-statistic MR never needs.
    from invariant_mr.estimators.iv import orthonormal_basis, residualize

    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float).ravel()
    n = y.shape[0]
    if controls is None or controls.shape[1] == 0:
        basis = np.empty((n, 0))
    else:
        basis = orthonormal_basis(np.asarray(controls, dtype=float))
    Xt = residualize(X, basis)
    yt = residualize(y[:, None], basis)[:, 0]
    sxx = np.einsum("ij,ij->j", Xt, Xt)
    if np.any(sxx <= 1e-12 * max(1.0, float(np.max(sxx)))):
        bad = np.flatnonzero(sxx <= 1e-12 * max(1.0, float(np.max(sxx))))
        raise InputError(
            f"variant column(s) {', '.join(str(b) for b in bad[:10])} are constant after adjusting for the controls"
        )
    sxy = Xt.T @ yt
    beta = sxy / sxx
    df = n - basis.shape[1] - 1
    if cov_type == "unadjusted":
        rss = float(yt @ yt) - beta * sxy  # yt'yt - beta^2 sxx
        se = np.sqrt(np.maximum(rss, 0.0) / df / sxx)
    elif cov_type == "robust":
        # sum_i x_i^2 (y_i - b x_i)^2 expanded so that no (n, p) residual matrix is formed.
        X2 = Xt * Xt
        meat = X2.T @ (yt * yt) - 2 * beta * ((X2 * Xt).T @ yt) + beta**2 * np.einsum("ij,ij->j", X2, X2)
        se = np.sqrt(np.maximum(meat, 0.0)) / sxx
    else:
        raise InputError(f"cov_type must be 'robust' or 'unadjusted', got {cov_type!r}")
    return beta, se, df


def summary_statistics(
    data: MRData,
    *,
    env_fixed_effects: bool = True,
    adjust_covariates: bool = True,
    cov_type: str = "unadjusted",
    instruments: np.ndarray | None = None,
    variant_names=None,
) -> SummaryStatistics:
    """Per-variant associations of `data.Z` (or `instruments`) with exposure and outcome.

    Each association is adjusted for an intercept, the environment fixed
    effects (`env_fixed_effects`) and the covariates (`adjust_covariates`).
    """
    from invariant_mr.estimators.iv import independent_columns

    Z = data.Z if instruments is None else np.asarray(instruments, dtype=float).reshape(data.n, -1)
    names = data.instrument_names if variant_names is None and instruments is None else variant_names
    if names is None:
        names = tuple(f"iv{j + 1}" for j in range(Z.shape[1]))
    cols = [np.ones((data.n, 1))]
    adjusted = ["intercept"]
    if env_fixed_effects:
        cols.append(data.env_dummies(drop_first=True))
        adjusted.append("environment")
    if adjust_covariates and data.covariates is not None:
        cols.append(data.covariates)
        adjusted.extend(data.covariate_names or ())
    controls = independent_columns(np.hstack(cols))
    bx, sx, _ = per_column_regression(Z, data.exposure, controls, cov_type)
    by, sy, _ = per_column_regression(Z, data.outcome, controls, cov_type)
    return SummaryStatistics(
        variant=tuple(names),
        beta_exposure=bx,
        se_exposure=sx,
        beta_outcome=by,
        se_outcome=sy,
        n=data.n,
        adjusted_for=tuple(adjusted),
        cov_type=cov_type,
    )


__all__ = [
    "SUMSTATS_COLUMNS",
    "SummaryStatistics",
    "per_column_regression",
    "read_summary_statistics",
    "summary_statistics",
]
