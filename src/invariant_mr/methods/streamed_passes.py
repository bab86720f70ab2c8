"""The first-pass statistics of an analysis, cached on its data: the engine's runner
(`passes.passes(data)`) with the statistics' kernels.

This is the seam between the pass engine (`invariant_mr.passes`, which knows
rows and kernels but no statistic) and the statistics (`estimators`, which
never drive a pass themselves): `first_pass(data)` runs the first pass once
per analysis and refuses what the methods cannot use, naming the command-line
remedy, and `with_extra_covariates` extends it by genotype PCs.
"""

from __future__ import annotations

import numpy as np

from invariant_mr.data import StreamedMRData
from invariant_mr.errors import InputError
from invariant_mr.estimators.sufficient_stats import CrossProductKernel, EnvironmentCrossProducts
from invariant_mr.passes import ExtraCovariateKernel, passes, row_vectors


def first_pass(data: StreamedMRData) -> EnvironmentCrossProducts:
    """The per-environment cross-products of [C, Z, D, Y] (one streamed pass, cached)."""
    if "stats" not in data.cache:
        vec = row_vectors(data)
        data.cache["stats"] = passes(data).run(CrossProductKernel(vec.env_levels, vec.q, vec.covariate_names))
        _check_degenerate(data, data.cache["stats"])
    return data.cache["stats"]


def _check_degenerate(data: StreamedMRData, stats: EnvironmentCrossProducts) -> None:
    """Refuse constant and duplicate instrument columns, which `MRData` would drop (QC removes
    monomorphic variants, so these are rare: duplicates are variants in perfect LD)."""
    zz = stats.zz.sum(axis=0)
    s = stats.z_sums.sum(axis=0)
    n = stats.n
    var = np.diag(zz) - s * s / n
    tol = 1e-12 * np.maximum(np.diag(zz), 1.0)
    names = data.instrument_names
    constant = np.flatnonzero(var <= tol)
    dist = np.diag(zz)[:, None] + np.diag(zz)[None, :] - 2 * zz
    close = np.triu(np.abs(dist) <= tol[:, None], 1) & (np.abs(s[:, None] - s[None, :]) <= 1e-12 * n)
    pairs = np.argwhere(close)
    if constant.size or pairs.size:
        what = [f"{names[j]} (constant)" for j in constant[:5]] + [
            f"{names[b]} (duplicate of {names[a]})" for a, b in pairs[:5]
        ]
        raise InputError(
            "streamed genotypes: constant or duplicate instrument column(s): " + ", ".join(what)
            + "; remove them with --extract (or run with --streaming off, which drops them)"
        )


def with_extra_covariates(data: StreamedMRData, extra: np.ndarray, names) -> StreamedMRData:
    """`data` with `extra` (n x k, e.g. genotype PCs) appended to its covariates; its first-pass
    statistics extend `first_pass(data)` by one O(n k m) pass instead of a new O(n m^2) one."""
    from dataclasses import replace

    extra = np.asarray(extra, dtype=float).reshape(data.n, -1)
    stats = first_pass(data)
    covariates = extra if data.covariates is None else np.hstack([data.covariates, extra])
    out = replace(data, covariates=covariates, covariate_names=(*(data.covariate_names or ()), *names), cache={})
    vec = row_vectors(out)
    added = passes(out).run(ExtraCovariateKernel(vec.env_levels, stats.q, tuple(names)))
    out.cache["stats"] = stats.with_covariates(added)
    return out


__all__ = ["first_pass", "with_extra_covariates"]
