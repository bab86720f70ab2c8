"""The multi-environment individual-level data container.

`MRData` is immutable: every array is copied on construction and marked
read-only, so a result computed from it can never be invalidated later.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Hashable, Sequence

import numpy as np

from invariant_mr.errors import InputError

#: Smallest per-environment sample size accepted by default. Below this,
#: per-environment moments (and per-environment IV fits) are meaningless.
MIN_SAMPLES_PER_ENV = 20


def _as_float_vector(values, name: str, n: int | None) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise InputError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise InputError(f"{name} has {arr.shape[0]} rows but the instruments have {n}")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise InputError(f"{name} has {int(bad.sum())} NaN/inf value(s)")
    _check_magnitude(arr[:, None], name, (name,))
    return arr


#: Values beyond this overflow float64 once squared and summed over a biobank (1e154^2 ~ 1e308).
MAX_ABS_VALUE = 1e100


def _check_magnitude(mat: np.ndarray, what: str, names: Sequence[str]) -> None:
    """Refuse values whose squares and cross-products would overflow, naming the columns."""
    if mat.size == 0:
        return
    peak = np.max(np.abs(mat), axis=0)
    big = np.flatnonzero(peak > MAX_ABS_VALUE)
    if big.size:
        cols = ", ".join(f"{names[j]} (|value| up to {peak[j]:.3g})" for j in big[:5])
        raise InputError(
            f"{what}: values too large for the cross-products to stay finite in column(s) {cols}; "
            f"rescale them (e.g. to other units) below {MAX_ABS_VALUE:g}"
        )


def _check_varies(arr: np.ndarray, name: str) -> None:
    if arr.size and np.all(arr == arr[0]):
        raise InputError(f"{name} is constant (every value is {arr[0]:g}): there is nothing to estimate")


def describe_levels(levels: Sequence, counts: Sequence[int], min_samples: int, column: str, stage: str = "") -> str:
    """Why these environments are unusable, in one line however many levels there are."""
    stage = f" {stage}" if stage else ""
    small = [(lv, c) for lv, c in zip(levels, counts) if c < min_samples]
    if len(levels) > 50:
        examples = ", ".join(str(lv) for lv in list(levels)[:3])
        return (
            f"{column} has {len(levels)} distinct values{stage} (e.g. {examples}), {len(small)} of them with fewer "
            f"than {min_samples} samples: environments must be a few labels (ancestry group, cohort, site), "
            "not a continuous column"
        )
    listed = ", ".join(f"{str(lv)!r} (n={c})" for lv, c in small[:10])
    more = f" and {len(small) - 10} more" if len(small) > 10 else ""
    return f"{column}: environment(s) with fewer than {min_samples} samples{stage}: {listed}{more}"


def _check_finite_matrix(mat: np.ndarray, what: str, names: Sequence[str]) -> None:
    bad = ~np.isfinite(mat)
    if bad.any():
        counts = bad.sum(axis=0)
        cols = [f"{names[j]} ({int(counts[j])})" for j in np.flatnonzero(counts)[:10]]
        more = "" if (counts > 0).sum() <= 10 else f" and {(counts > 0).sum() - 10} more"
        raise InputError(f"{what} contain NaN/inf values in column(s): {', '.join(cols)}{more}")
    _check_magnitude(mat, what, names)


#: Columns with at most this many distinct values are calls (genotype dosages 0/1/2), not a smooth map of latents.
MAX_CALL_LEVELS = 3
#: Rows read to count a column's distinct values (a call column shows its levels long before this).
LEVEL_ROWS = 5000
#: Columns examined (evenly spaced) when there are more.
LEVEL_COLUMNS = 500
#: Share of a column's entries its `MAX_CALL_LEVELS` commonest values must cover: the rest are missing calls
#: imputed by a mean, which add values of their own.
CALL_SHARE = 0.9


def genotype_calls(Z: np.ndarray) -> bool:
    """Every column is calls: its `MAX_CALL_LEVELS` commonest values cover at least `CALL_SHARE` of the first
    `LEVEL_ROWS` rows (the rest may be imputed missing calls); at most `LEVEL_COLUMNS` columns are read."""
    Z = np.asarray(Z[:LEVEL_ROWS], dtype=float)
    if Z.ndim != 2 or Z.size == 0:
        return False
    columns = np.unique(np.linspace(0, Z.shape[1] - 1, min(Z.shape[1], LEVEL_COLUMNS)).astype(int))
    for j in columns:
        counts = np.unique(Z[:, j], return_counts=True)[1]
        if np.sort(counts)[::-1][:MAX_CALL_LEVELS].sum() < CALL_SHARE * Z.shape[0]:
            return False
    return True


def _readonly(arr: np.ndarray) -> np.ndarray:
    arr = np.array(arr, copy=True)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True)
class MRData:
    """Instruments, exposure, outcome and environment labels for n samples.

    Parameters
    ----------
    Z : (n, p) array of instruments (e.g. genotype dosages).
    exposure, outcome : (n,) arrays.
    env : (n,) environment labels, any hashable values (strings, ints).
    covariates : optional (n, q) exogenous controls (age, sex, PCs, ...).
    sample_ids, instrument_names, covariate_names : optional labels.
    clusters : optional (n,) cluster labels of related samples (e.g. family IDs), for
        cluster-robust inference (`cov_type="cluster"`); at least two clusters, none missing.
    other_exposures : optional (n, K-1) further exposures for multivariable
        MR; `exposure` is the first. `exposure_names` names all K.

    Constant and duplicate instrument columns are dropped with a warning that
    names them (`drop_degenerate=True`, the default) or raise `InputError`.
    """

    Z: np.ndarray
    exposure: np.ndarray
    outcome: np.ndarray
    env: np.ndarray
    covariates: np.ndarray | None = None
    sample_ids: np.ndarray | None = None
    instrument_names: tuple[str, ...] | None = None
    covariate_names: tuple[str, ...] | None = None
    min_samples_per_env: int = MIN_SAMPLES_PER_ENV
    drop_degenerate: bool = True
    dropped_instruments: tuple[str, ...] = field(default=(), compare=False)
    clusters: np.ndarray | None = field(default=None, compare=False)
    other_exposures: np.ndarray | None = None
    exposure_names: tuple[str, ...] | None = None

    def __post_init__(self):
        Z = np.asarray(self.Z, dtype=float)
        if Z.ndim == 1:
            Z = Z[:, None]
        if Z.ndim != 2:
            raise InputError(f"instruments must be a 2-D matrix, got shape {Z.shape}")
        n, p = Z.shape
        if n == 0 or p == 0:
            raise InputError(f"instrument matrix is empty (shape {Z.shape})")
        names = (
            tuple(str(s) for s in self.instrument_names)
            if self.instrument_names is not None
            else tuple(f"z{j + 1}" for j in range(p))
        )
        if len(names) != p:
            raise InputError(f"{len(names)} instrument names given for {p} instrument columns")
        if len(set(names)) != p:
            raise InputError("instrument names are not unique")
        _check_finite_matrix(Z, "instruments", names)
        exposure = _as_float_vector(self.exposure, "exposure", n)
        outcome = _as_float_vector(self.outcome, "outcome", n)
        _check_varies(exposure, "the exposure")
        _check_varies(outcome, "the outcome")
        if np.array_equal(exposure, outcome):
            raise InputError("the exposure and the outcome are the same values: give two different traits")

        env = np.asarray(self.env, dtype=object)
        if env.ndim != 1 or env.shape[0] != n:
            raise InputError(f"environment labels have shape {env.shape}, expected ({n},)")
        if any(e is None or (isinstance(e, float) and np.isnan(e)) for e in env):
            raise InputError("environment labels contain missing values")
        levels, counts = np.unique(env.astype(str), return_counts=True)
        if len(levels) < 2:
            raise InputError(
                f"need at least 2 environments, found {len(levels)} ({', '.join(levels)})"
            )
        if len(levels) > 50 or (counts < self.min_samples_per_env).any():
            raise InputError(describe_levels(levels, counts, self.min_samples_per_env, "environment labels"))

        cov = self.covariates
        cov_names = self.covariate_names
        if cov is not None:
            cov = np.asarray(cov, dtype=float)
            if cov.ndim == 1:
                cov = cov[:, None]
            if cov.shape[0] != n:
                raise InputError(f"covariates have {cov.shape[0]} rows but the instruments have {n}")
            cov_names = (
                tuple(str(s) for s in cov_names)
                if cov_names is not None
                else tuple(f"c{j + 1}" for j in range(cov.shape[1]))
            )
            if len(cov_names) != cov.shape[1]:
                raise InputError(f"{len(cov_names)} covariate names for {cov.shape[1]} columns")
            _check_finite_matrix(cov, "covariates", cov_names)

        others = self.other_exposures
        if others is not None:
            others = np.asarray(others, dtype=float)
            others = others[:, None] if others.ndim == 1 else others
            if others.shape[0] != n or others.shape[1] == 0:
                raise InputError(f"other_exposures have shape {others.shape}, expected ({n}, K-1)")
        k_exposures = 1 + (0 if others is None else others.shape[1])
        exposure_names = None if self.exposure_names is None else tuple(str(e) for e in self.exposure_names)
        if exposure_names is not None and (len(exposure_names) != k_exposures or len(set(exposure_names)) != k_exposures):
            raise InputError(f"exposure_names must be {k_exposures} distinct names, got {exposure_names}")
        if others is not None:
            names_k = exposure_names or tuple(f"exposure_{j + 1}" for j in range(k_exposures))
            for j in range(others.shape[1]):
                col = _as_float_vector(others[:, j], names_k[j + 1], n)
                _check_varies(col, f"the exposure {names_k[j + 1]}")
            exposure_names = names_k

        ids = self.sample_ids
        if ids is not None:
            ids = np.asarray(ids, dtype=object)
            if ids.shape != (n,):
                raise InputError(f"sample_ids have shape {ids.shape}, expected ({n},)")

        clusters = self.clusters
        if clusters is not None:
            clusters = _cluster_labels(clusters, n)

        keep, dropped = _degenerate_columns(Z, names)
        if dropped:
            msg = "dropped constant or duplicate instrument column(s): " + ", ".join(dropped[:20])
            if len(dropped) > 20:
                msg += f" and {len(dropped) - 20} more"
            if not self.drop_degenerate:
                raise InputError(msg.replace("dropped", "found"))
            if len(keep) == 0:
                raise InputError("every instrument column is constant")
            warnings.warn(msg, UserWarning, stacklevel=3)
            Z = Z[:, keep]
            names = tuple(names[j] for j in keep)

        object.__setattr__(self, "Z", _readonly(Z))
        object.__setattr__(self, "exposure", _readonly(exposure))
        object.__setattr__(self, "other_exposures", None if others is None else _readonly(others))
        object.__setattr__(self, "exposure_names", exposure_names)
        object.__setattr__(self, "outcome", _readonly(outcome))
        object.__setattr__(self, "env", _readonly(env))
        object.__setattr__(self, "covariates", None if cov is None else _readonly(cov))
        object.__setattr__(self, "covariate_names", cov_names)
        object.__setattr__(self, "sample_ids", None if ids is None else _readonly(ids))
        object.__setattr__(self, "clusters", None if clusters is None else _readonly(clusters))
        object.__setattr__(self, "instrument_names", names)
        object.__setattr__(self, "dropped_instruments", tuple(self.dropped_instruments) + tuple(dropped))

    # ------------------------------------------------------------------ views
    @property
    def n(self) -> int:
        return self.Z.shape[0]

    @property
    def p(self) -> int:
        return self.Z.shape[1]

    @property
    def n_exposures(self) -> int:
        return 1 if self.other_exposures is None else 1 + self.other_exposures.shape[1]

    @property
    def exposures(self) -> np.ndarray:
        """(n, K): every exposure, `exposure` first (multivariable MR)."""
        if self.other_exposures is None:
            return self.exposure[:, None]
        return np.column_stack([self.exposure, self.other_exposures])

    @property
    def env_levels(self) -> tuple[Hashable, ...]:
        """Environment labels in sorted (string) order: the order of `env_codes`."""
        return tuple(sorted(set(self.env.tolist()), key=str))

    @property
    def env_codes(self) -> np.ndarray:
        lookup = {lv: i for i, lv in enumerate(self.env_levels)}
        return np.fromiter((lookup[e] for e in self.env), dtype=np.int64, count=self.n)

    def env_dummies(self, drop_first: bool = True) -> np.ndarray:
        """Environment indicator columns (the first level dropped by default)."""
        codes = self.env_codes
        k = len(self.env_levels)
        dummies = (codes[:, None] == np.arange(k)[None, :]).astype(float)
        return dummies[:, 1:] if drop_first else dummies

    def subset(self, rows) -> "MRData":
        """A new `MRData` on a subset of rows (boolean mask or indices)."""
        rows = np.asarray(rows)
        return replace(
            self,
            Z=self.Z[rows],
            exposure=self.exposure[rows],
            outcome=self.outcome[rows],
            env=self.env[rows],
            covariates=None if self.covariates is None else self.covariates[rows],
            sample_ids=None if self.sample_ids is None else self.sample_ids[rows],
            clusters=None if self.clusters is None else self.clusters[rows],
            other_exposures=None if self.other_exposures is None else self.other_exposures[rows],
            dropped_instruments=(),
        )

    def instrument_rows(self, rows) -> np.ndarray:
        """The instrument rows at positions `rows` (what streamed data reads from its file)."""
        return self.Z[np.asarray(rows)]

    def instrument_abs_max(self) -> float:
        """Largest |instrument value|, the scale of tolerances on instruments."""
        return float(np.abs(self.Z).max())

    def env_subset(self, level) -> "MRData":
        """Rows of one environment. Environment checks do not apply to the result."""
        mask = self.env == level
        return _SingleEnvView(self, mask)


class _SingleEnvView:
    """Rows of a single environment, for per-environment estimation.

    Not an `MRData`, because `MRData` requires at least two environments.
    """

    def __init__(self, data: MRData, mask: np.ndarray):
        self.Z = data.Z[mask]
        self.exposure = data.exposure[mask]
        self.outcome = data.outcome[mask]
        self.covariates = None if data.covariates is None else data.covariates[mask]
        self.clusters = None if data.clusters is None else data.clusters[mask]
        self.n = int(mask.sum())


def _cluster_labels(values, n: int) -> np.ndarray:
    """Cluster labels as an object array of n non-missing values with at least two distinct labels."""
    labels = np.asarray(values, dtype=object)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise InputError(f"clusters have shape {labels.shape}, expected ({n},): one label per sample")
    missing = sum(1 for v in labels if v is None or (isinstance(v, float) and np.isnan(v)))
    if missing:
        raise InputError(f"clusters: {missing} sample(s) have no cluster label")
    if len(set(labels.tolist())) < 2:
        raise InputError("clusters: every sample is in one cluster; cluster-robust SEs need at least two")
    return labels


def _degenerate_columns(Z: np.ndarray, names: Sequence[str]) -> tuple[list[int], list[str]]:
    """Indices of columns to keep, and names of constant or duplicate ones."""
    const = np.ptp(Z, axis=0) == 0
    keep: list[int] = []
    dropped: list[str] = []
    seen: dict[bytes, int] = {}
    for j in range(Z.shape[1]):
        if const[j]:
            dropped.append(f"{names[j]} (constant)")
            continue
        key = np.ascontiguousarray(Z[:, j]).tobytes()
        if key in seen:
            dropped.append(f"{names[j]} (duplicate of {names[seen[key]]})")
            continue
        seen[key] = j
        keep.append(j)
    return keep, dropped


def exogenous_controls(data: MRData, env_fixed_effects: bool, extra: np.ndarray | None = None) -> np.ndarray | None:
    """Covariates, environment dummies and `extra` columns (the intercept is added by `fit_kclass`)."""
    cols = []
    if data.covariates is not None:
        cols.append(data.covariates)
    if env_fixed_effects:
        cols.append(data.env_dummies(drop_first=True))
    if extra is not None:
        cols.append(np.asarray(extra, dtype=float).reshape(data.n, -1))
    return np.hstack(cols) if cols else None


@dataclass(frozen=True, eq=False)
class StreamedMRData:
    """`MRData` whose instrument matrix stays on disk: Z comes in row blocks, never whole.

    `genotypes` is the analysed matrix as a stream (`io.streamed_genotypes.StreamedGenotypes`:
    `n`, `p`, `iter_blocks()`, `read_rows_at(positions)`, `chunk_bounds(k)`, `reader(start, stop)`);
    the other fields are those of `MRData`, aligned with its rows. Methods that work from
    sufficient statistics stream the blocks; the others get `subsample()`, an `MRData` of a
    seeded random subset of `subsample_rows` rows. `client` is a `distributed.Client` that runs
    the block passes as Dask reductions (None: in this process). Built by
    `io.genetic_input.load_genetic_data(streaming=...)`.
    """

    genotypes: object
    exposure: np.ndarray
    outcome: np.ndarray
    env: np.ndarray
    covariates: np.ndarray | None = None
    sample_ids: np.ndarray | None = None
    instrument_names: tuple[str, ...] | None = None
    covariate_names: tuple[str, ...] | None = None
    min_samples_per_env: int = MIN_SAMPLES_PER_ENV
    dropped_instruments: tuple[str, ...] = ()
    clusters: np.ndarray | None = None
    subsample_rows: int = 20_000
    seed: int = 0
    client: object = field(default=None, repr=False)
    n_chunks: int | None = None
    #: What the passes computed, shared by the methods of one analysis (first-pass statistics, ...).
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    other_exposures = None
    exposure_names = None
    n_exposures = 1

    def __post_init__(self):
        n, p = int(self.genotypes.n), int(self.genotypes.p)
        if n == 0 or p == 0:
            raise InputError(f"instrument matrix is empty (shape ({n}, {p}))")
        names = tuple(str(s) for s in self.instrument_names) if self.instrument_names is not None else tuple(
            f"z{j + 1}" for j in range(p)
        )
        if len(names) != p or len(set(names)) != p:
            raise InputError(f"{len(names)} instrument names (unique: {len(set(names))}) for {p} instrument columns")
        exposure = _as_float_vector(self.exposure, "exposure", n)
        outcome = _as_float_vector(self.outcome, "outcome", n)
        _check_varies(exposure, "the exposure")
        _check_varies(outcome, "the outcome")
        env = np.asarray(self.env, dtype=object)
        if env.shape != (n,):
            raise InputError(f"environment labels have shape {env.shape}, expected ({n},)")
        levels, counts = np.unique(env.astype(str), return_counts=True)
        if len(levels) < 2:
            raise InputError(f"need at least 2 environments, found {len(levels)} ({', '.join(levels)})")
        if len(levels) > 50 or (counts < self.min_samples_per_env).any():
            raise InputError(describe_levels(levels, counts, self.min_samples_per_env, "environment labels"))
        cov, cov_names = self.covariates, self.covariate_names
        if cov is not None:
            cov = np.asarray(cov, dtype=float).reshape(n, -1)
            cov_names = tuple(cov_names) if cov_names is not None else tuple(f"c{j + 1}" for j in range(cov.shape[1]))
            _check_finite_matrix(cov, "covariates", cov_names)
        if int(self.subsample_rows) < 2:
            raise InputError(f"--subsample-rows must be at least 2, got {self.subsample_rows}")
        object.__setattr__(self, "exposure", _readonly(exposure))
        object.__setattr__(self, "outcome", _readonly(outcome))
        object.__setattr__(self, "env", _readonly(env))
        object.__setattr__(self, "covariates", None if cov is None else _readonly(cov))
        object.__setattr__(self, "covariate_names", cov_names)
        object.__setattr__(self, "instrument_names", names)
        object.__setattr__(self, "dropped_instruments", tuple(self.dropped_instruments))
        if self.sample_ids is not None:
            object.__setattr__(self, "sample_ids", _readonly(np.asarray(self.sample_ids, dtype=object)))
        if self.clusters is not None:
            object.__setattr__(self, "clusters", _readonly(_cluster_labels(self.clusters, n)))

    n = property(lambda self: int(self.genotypes.n))
    p = property(lambda self: int(self.genotypes.p))
    env_levels = MRData.env_levels
    env_codes = MRData.env_codes
    env_dummies = MRData.env_dummies
    exposures = property(lambda self: self.exposure[:, None])

    @property
    def Z(self):
        raise InputError(
            "the genotypes are streamed (--streaming on): this step needs the n x p matrix in memory; "
            "use --streaming off, or a method that runs from sufficient statistics"
        )

    def with_client(self, client) -> "StreamedMRData":
        """The same data with the block passes run as Dask reductions by `client` (a `distributed.Client`)."""
        return replace(self, client=client, cache={})

    def instrument_rows(self, rows) -> np.ndarray:
        """The imputed instrument rows at positions `rows`, read from the genotype file."""
        out = self.genotypes.read_rows_at(np.asarray(rows))
        if out.size:
            self.cache["abs_max"] = max(self.cache.get("abs_max", 0.0), float(np.abs(out).max()))
        return out

    def instrument_abs_max(self) -> float:
        """Largest |instrument value| among the rows read so far (`instrument_rows`), the scale of
        tolerances on instruments; 2 (the dosage ceiling) before any were read."""
        return float(self.cache.get("abs_max", 2.0))

    def subsample_positions(self) -> np.ndarray:
        """The rows of `subsample()`: `subsample_rows` of them drawn without replacement (seeded), sorted."""
        m = min(int(self.subsample_rows), self.n)
        if m == self.n:
            return np.arange(self.n)
        rng = np.random.default_rng([int(self.seed), *b"streaming subsample"])
        return np.sort(rng.choice(self.n, size=m, replace=False))

    def subsample(self) -> MRData:
        """An `MRData` of the seeded subsample (all rows when n <= `subsample_rows`), read from the file."""
        key = "subsample"
        if key not in self.cache:
            rows = self.subsample_positions()
            self.cache[key] = MRData(
                Z=self.genotypes.read_rows_at(rows), exposure=self.exposure[rows], outcome=self.outcome[rows],
                env=self.env[rows], covariates=None if self.covariates is None else self.covariates[rows],
                sample_ids=None if self.sample_ids is None else self.sample_ids[rows],
                instrument_names=self.instrument_names, covariate_names=self.covariate_names,
                min_samples_per_env=2, clusters=None if self.clusters is None else self.clusters[rows],
            )
        return self.cache[key]
