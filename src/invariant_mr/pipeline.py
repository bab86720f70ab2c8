"""Compose the steps: data -> methods -> an `AnalysisResult` with provenance.

Each step is usable on its own; this module only wires them together for
`run`, `demo` and the benchmarks.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from invariant_mr.data import MRData, StreamedMRData
from invariant_mr.io.gwas_sumstats import SumstatsTable
from invariant_mr.errors import InputError
from invariant_mr.provenance import make_provenance, sha256_array
from invariant_mr.methods.registry import MethodContext, MethodSpec, registered_methods, resolve_methods
from invariant_mr.results import AnalysisResult, Estimate

def data_fingerprint(data: MRData | StreamedMRData | SumstatsTable) -> dict:
    """Hashes of the analysed arrays, so a result can be matched to its data."""
    if isinstance(data, StreamedMRData):
        return {
            "n": data.n,
            "n_instruments": data.p,
            "environments": [str(e) for e in data.env_levels],
            "genotype_source_fingerprint": data.genotypes.source.fingerprint(),
            "sha256_analysed_rows": sha256_array(np.asarray(data.genotypes.rows)),
            "sha256_exposure": sha256_array(data.exposure),
            "sha256_outcome": sha256_array(data.outcome),
            **({"n_clusters": len(set(data.clusters.tolist()))} if data.clusters is not None else {}),
        }
    if isinstance(data, SumstatsTable):
        return {
            "n_variants": data.n_variants,
            "exposures": list(data.exposures),
            "sha256_variants": sha256_array(np.array(data.variant, dtype=str)),
            "sha256_beta_exposure": sha256_array(data.beta_exposure),
            "sha256_se_exposure": sha256_array(data.se_exposure),
            "sha256_beta_outcome": sha256_array(data.beta_outcome),
            "sha256_se_outcome": sha256_array(data.se_outcome),
        }
    out = {
        "n": data.n,
        "n_instruments": data.p,
        "environments": [str(e) for e in data.env_levels],
        "sha256_instruments": sha256_array(data.Z),
        "sha256_exposure": sha256_array(data.exposure),
        "sha256_outcome": sha256_array(data.outcome),
        **({"n_clusters": len(set(data.clusters.tolist()))} if data.clusters is not None else {}),
    }
    if data.n_exposures > 1:
        out["exposures"] = list(data.exposure_names)
        out["sha256_exposure"] = sha256_array(data.exposures)
    return out


def _too_large_for_default(data, methods) -> dict[str, str]:
    """Default methods left out at this size (`MethodSpec.default_max_work`), with the reason a run reports."""
    if methods is not None or isinstance(data, SumstatsTable) or data.n_exposures > 1:
        return {}
    work = data.n * data.p**2
    return {s.name: f"not run by default on {data.n:,} x {data.p:,} (its cost grows as n x variants^2, here "
                    f"{work:.1e}, above {s.default_max_work:.0e}); name it in --methods to run it"
            for s in resolve_methods(None) if s.default_max_work is not None and work > s.default_max_work}


def methods_for(data: MRData | SumstatsTable, methods: str | Sequence[str] | None) -> list[MethodSpec]:
    """The methods to run on `data`: the named ones, checked against the input, or the defaults for it.

    Defaults: GWAS summary statistics with one exposure get every univariable
    summary-statistic method, with several exposures every multivariable
    summary-statistic method; individual-level data with several exposures
    every multivariable method; otherwise the registry's default methods.
    A named method that cannot take this input is refused, saying which can.
    """
    summary = isinstance(data, SumstatsTable)
    several = data.n_exposures > 1

    def accepts(spec: MethodSpec) -> bool:
        return (spec.summary_input or not summary) and (spec.multivariable or not several)

    if methods is None or methods == "all" or methods == ["all"]:
        if summary:  # "all" adds the summary methods that are not run by default
            return [s for s in registered_methods().values() if s.summary_input and s.multivariable == several
                    and (s.summary_default or methods is not None)]
        if several:
            return [s for s in registered_methods().values() if s.multivariable and not s.needs_truth]
        left_out = _too_large_for_default(data, methods)  # "all" runs them all
        return [s for s in resolve_methods(None) if s.name not in left_out]
    specs = resolve_methods(methods if isinstance(methods, str) else list(methods))
    refused = [s.name for s in specs if not accepts(s)]
    if refused:
        possible = ", ".join(s.name for s in registered_methods().values() if accepts(s))
        what = (
            ("summary statistics with several exposures" if several else "summary statistics")
            if summary
            else "several exposures"
        )
        hint = "; or analyse one exposure at a time" if several else ""
        raise InputError(f"--methods: {', '.join(refused)} cannot analyse {what}; methods that can: {possible}{hint}")
    return specs


def run_analysis(
    data: MRData | SumstatsTable,
    methods: str | Sequence[str] | None = None,
    ctx: MethodContext | None = None,
    *,
    command: str = "python-api",
    parameters: Mapping[str, Any] | None = None,
    inputs: list[dict] | None = None,
    truth: Mapping[str, Any] | None = None,
    extra_provenance: Mapping[str, Any] | None = None,
) -> AnalysisResult:
    """Run the selected methods (the defaults for this input when None; see `methods_for`) and collect the results.

    `data` is individual-level `MRData` or GWAS summary statistics (a `SumstatsTable`).
    """
    ctx = ctx or MethodContext()
    clusters = getattr(data, "clusters", None)
    if clusters is not None and ctx.cov_type != "cluster":
        raise InputError(f"the data carry cluster labels but cov_type is {ctx.cov_type!r}: use cov_type 'cluster'")
    if clusters is None and ctx.cov_type == "cluster":
        raise InputError("cov_type 'cluster' needs cluster labels (MRData(clusters=...), or --cluster COLUMN)")
    specs: list[MethodSpec] = methods_for(data, methods)
    streamed = isinstance(data, StreamedMRData)
    if streamed:
        data.cache["planned"] = tuple(s.name for s in specs)
    estimates, diagnostics, artifacts, timings = [], [], {}, {}
    for name, reason in _too_large_for_default(data, methods).items():
        estimates.append(Estimate.unavailable(name, "pooled", data.n, data.p, reason))
    bar = tqdm(specs, desc="methods", disable=not ctx.progress, leave=False)
    with _task_stream(data) as tasks:
        for spec in bar:
            bar.set_postfix_str(spec.name)
            start = time.perf_counter()
            out = _isolated(spec, data, ctx, streamed, tuple(s.name for s in specs))
            timings[spec.name] = round(time.perf_counter() - start, 4)
            estimates.extend(out.estimates)
            diagnostics.extend(out.diagnostics)
            if out.artifacts:
                artifacts[spec.name] = dict(out.artifacts)
    if streamed:
        extra_provenance = {**(extra_provenance or {}), "streamed_passes": _streamed_record(data, specs, tasks)}
    params = {
        "methods": [s.name for s in specs],
        "alpha": ctx.alpha,
        "cov_type": ctx.cov_type,
        "per_env": ctx.per_env,
        "options": dict(ctx.options),
        **(parameters or {}),
    }
    prov = make_provenance(
        command=command,
        parameters=params,
        seed=ctx.seed,
        inputs=inputs,
        extra={"data": data_fingerprint(data), "method_seconds": timings, **(extra_provenance or {})},
    )
    if not estimates:
        raise InputError("no method produced an estimate")
    from invariant_mr.report.verdict import verdict_payload

    result = AnalysisResult(
        estimates=tuple(estimates),
        diagnostics=tuple(diagnostics),
        provenance=prov,
        truth=truth,
        artifacts=artifacts,
    )
    # The verdict reads only the result (never `truth`), and travels with it into results.json.
    return replace(result, verdict=tuple(verdict_payload(result)))


def _isolated(spec: MethodSpec, data, ctx: MethodContext, streamed: bool, planned: tuple[str, ...] = ()):
    """Run one method; an unexpected error becomes its "failed: ..." row instead of ending the whole analysis.

    Input errors (`InputError`: the user's options or data) still stop the run with their message.
    In memory, the moment-based methods run from statistics shared by the analysis
    (`methods.streamed.from_statistics_in_memory`), the others on the rows.
    """
    from invariant_mr.methods.spec import MethodOutput

    try:
        if streamed:
            return _run_method(spec, data, ctx)
        if isinstance(data, MRData) and isinstance(spec.target, str) and spec.target.startswith("invariant_mr."):
            # Built-in methods only: a user's method registered under the same name keeps its own code.
            from invariant_mr.methods.streamed import from_statistics_in_memory

            out = from_statistics_in_memory(data, ctx, spec.name, planned)
            if out is not None:
                return out
        return spec.function(data, ctx)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - one method's bug must not take the others' results down
        return _failed_method(spec.name, data, exc)


def _failed_method(name: str, data, exc: Exception):
    """An unavailable row saying why `name` failed, with a warning so the failure is not silent."""
    import warnings

    from invariant_mr.methods.spec import MethodOutput

    message = " ".join(str(exc).split()) or "no message"
    reason = f"failed: {type(exc).__name__}: {message}"
    warnings.warn(f"{name} {reason}", RuntimeWarning, stacklevel=3)
    n = getattr(data, "n", None)
    n = int(n) if n is not None else int(getattr(data, "n_variants", 0))
    return MethodOutput((Estimate.unavailable(name, "pooled", n, getattr(data, "p", None), reason),))


def _run_method(spec: MethodSpec, data: StreamedMRData, ctx: MethodContext):
    """A method on streamed genotypes: from sufficient statistics, or on the seeded subsample."""
    from invariant_mr.methods.spec import MethodOutput
    from invariant_mr.methods.streamed import STREAMED_METHODS, run_streamed, subsample_extra

    if spec.name in STREAMED_METHODS:
        return run_streamed(data, ctx, spec.name)
    out = spec.function(data.subsample(), ctx)
    extra = subsample_extra(data, spec.name)
    return MethodOutput(tuple(replace(e, extra={**e.extra, **extra}) for e in out.estimates), out.diagnostics,
                        out.artifacts)


class _task_stream:
    """Records the Dask tasks run while it is open (which worker ran which chunk), when the data have a client."""

    def __init__(self, data):
        self.client = getattr(data, "client", None)
        self.data: list = []
        self._inner = None

    def __enter__(self):
        if self.client is not None:
            from distributed import get_task_stream

            self._inner = get_task_stream(self.client)
            self._inner.__enter__()
        return self

    def __exit__(self, *exc):
        if self._inner is not None:
            self._inner.__exit__(*exc)
            self.data = list(self._inner.data)
        return False


def _streamed_record(data: StreamedMRData, specs, tasks: _task_stream) -> dict:
    from invariant_mr.methods.streamed import STREAMED_METHODS, subsample_extra

    record = {
        "routes": {s.name: STREAMED_METHODS.get(s.name) or subsample_extra(data)["route"] for s in specs},
        "passes": list(data.cache.get("passes", [])),
    }
    if data.client is not None:
        workers: dict[str, int] = {}
        for task in tasks.data:
            key = str(task.get("key", ""))
            if "suffstats-chunk-" in key:
                workers[task.get("worker", "?")] = workers.get(task.get("worker", "?"), 0) + 1
        info = data.client.scheduler_info()
        record["dask"] = {
            "scheduler": info.get("address"),
            "workers": sorted(info.get("workers", {})),
            "chunk_tasks_per_worker": workers,
        }
    return record
