"""Compose the steps: data -> methods -> an `AnalysisResult` with provenance.

Each step is usable on its own; this module only wires them together for
`run`, `demo` and the benchmarks.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

from tqdm.auto import tqdm

from invariant_mr.data import MRData
from invariant_mr.errors import InputError
from invariant_mr.provenance import make_provenance, sha256_array
from invariant_mr.methods.registry import MethodContext, MethodSpec, resolve_methods
from invariant_mr.results import AnalysisResult

def data_fingerprint(data: MRData) -> dict:
    """Hashes of the analysed arrays, so a result can be matched to its data."""
    return {
        "n": data.n,
        "n_instruments": data.p,
        "environments": [str(e) for e in data.env_levels],
        "sha256_instruments": sha256_array(data.Z),
        "sha256_exposure": sha256_array(data.exposure),
        "sha256_outcome": sha256_array(data.outcome),
        **({"n_clusters": len(set(data.clusters.tolist()))} if data.clusters is not None else {}),
    }


def run_analysis(
    data: MRData,
    methods: str | Sequence[str] | None = None,
    ctx: MethodContext | None = None,
    *,
    command: str = "python-api",
    parameters: Mapping[str, Any] | None = None,
    inputs: list[dict] | None = None,
    truth: Mapping[str, Any] | None = None,
    extra_provenance: Mapping[str, Any] | None = None,
) -> AnalysisResult:
    """Run the selected methods (all default ones when None) and collect the results."""
    ctx = ctx or MethodContext()
    if data.clusters is not None and ctx.cov_type != "cluster":
        raise InputError(f"the data carry cluster labels but cov_type is {ctx.cov_type!r}: use cov_type 'cluster'")
    if data.clusters is None and ctx.cov_type == "cluster":
        raise InputError("cov_type 'cluster' needs cluster labels (MRData(clusters=...), or --cluster COLUMN)")
    specs: list[MethodSpec] = resolve_methods(methods if methods is None or isinstance(methods, str) else list(methods))
    estimates, diagnostics, artifacts, timings = [], [], {}, {}
    bar = tqdm(specs, desc="methods", disable=not ctx.progress, leave=False)
    for spec in bar:
        bar.set_postfix_str(spec.name)
        start = time.perf_counter()
        out = spec.function(data, ctx)
        timings[spec.name] = round(time.perf_counter() - start, 4)
        estimates.extend(out.estimates)
        diagnostics.extend(out.diagnostics)
        if out.artifacts:
            artifacts[spec.name] = dict(out.artifacts)
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
    return AnalysisResult(
        estimates=tuple(estimates),
        diagnostics=tuple(diagnostics),
        provenance=prov,
        truth=truth,
        artifacts=artifacts,
    )
