"""Methods on streamed genotypes (`StreamedMRData`): sufficient statistics, never the n x p matrix.

`run --streaming on` (or auto, for large inputs) keeps the genotypes on disk.
Every method listed in `STREAMED_METHODS` then runs from per-environment
sufficient statistics accumulated over row blocks (`estimators.sufficient_stats`,
its passes run by the pass engine `invariant_mr.passes`),
with the robust (HC0) quantities from one more streamed pass; the passes run in
this process or, with a Dask client on the data, as Dask reductions over row
chunks that each worker reads from the genotype file itself.

Route of each method (recorded in every `Estimate.extra["route"]`):

* ols: no genotypes at all (exposure, outcome, controls are length-n vectors);
* tsls_all, tsls_all_env, liml_all_env: k-class fits, first-stage F and AR sets
  from the statistics, robust SEs from one shared second pass;
* invariant_linear: the directions from the first pass's per-environment
  moments, the permutation test and 2SLS on the k projected instruments
  (an n x k array, k small), MMD/HSIC diagnostics on their seeded rows;
  the direction bootstrap needs rows and is not available (auto: no draws);
* ivw, mr_egger, weighted_median, weighted_mode, mr_presso: per-variant
  associations from the statistics (no second pass: their SEs are classical);
* tsht: the vote, final 2SLS, robust SE and AR set from the statistics.

* invariant_autoencoder (and _insample): encoders trained by minibatches over
  every row (`learner_rows`: the int8 cache, or a float32 cache for dosages),
  the instruments by a streamed transform (n x k), then 2SLS on all rows as in
  memory; the MMD/HSIC/leak/structure diagnostics on their seeded rows.

Every other method runs on `data.subsample()`, an `MRData` of a seeded random
subset of `data.subsample_rows` rows (route "subsample").

Everything computed is cached on the data object, so methods of one analysis
share the first pass, and 2SLS and LIML share their second pass.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from invariant_mr.data import StreamedMRData
from invariant_mr.errors import InputError
from invariant_mr.methods.registry import MethodContext, MethodOutput
from invariant_mr.methods.streamed_passes import first_pass
from invariant_mr.passes import passes
from invariant_mr.results import Estimate

#: Methods that run on all rows of streamed data; the value describes the route.
STREAMED_METHODS = {
    "ols": "row vectors only (no genotypes)",
    "tsls_all": "sufficient statistics",
    "tsls_all_env": "sufficient statistics",
    "liml_all_env": "sufficient statistics",
    "invariant_linear": "sufficient statistics + streamed projection",
    "ivw": "per-variant statistics from sufficient statistics",
    "mr_egger": "per-variant statistics from sufficient statistics",
    "weighted_median": "per-variant statistics from sufficient statistics",
    "weighted_mode": "per-variant statistics from sufficient statistics",
    "mr_presso": "per-variant statistics from sufficient statistics",
    "tsht": "sufficient statistics",
    "invariant_autoencoder": "minibatches from the genotype source",
    "invariant_autoencoder_insample": "minibatches from the genotype source",
}
#: Learners that train by minibatches over every row (`learner_rows`), not from the statistics.
STREAMED_LEARNERS = frozenset({"invariant_autoencoder", "invariant_autoencoder_insample"})
#: The k-class methods that share one first pass and one second pass: name -> (kappa, env fixed effects).
_KCLASS = {"ols": ("ols", True), "tsls_all_env": ("tsls", True), "liml_all_env": ("liml", True),
           "tsls_all": ("tsls", False)}


#: Methods that, on in-memory data too, run from the shared statistics (`statistics_view`): their
#: numbers equal the row-based fits (tests/test_in_memory_statistics.py), at one first pass and one
#: shared second pass instead of one n x p refit each. ols needs no genotypes; invariant_linear keeps
#: its row route in memory (its direction bootstrap resamples rows).
IN_MEMORY_FROM_STATISTICS = (frozenset(STREAMED_METHODS) - {"ols", "invariant_linear"} - STREAMED_LEARNERS) | {"tsls_pcs"}


def _route_extra(data: StreamedMRData, method: str) -> dict:
    from invariant_mr.passes import ArrayRows

    if isinstance(data.genotypes, ArrayRows):
        return {"route": f"{STREAMED_METHODS.get(method, 'sufficient statistics')} (in memory)"}
    return {"route": STREAMED_METHODS[method], "streamed_on": "dask" if data.client is not None else "local"}


def _check_cov_type(ctx: MethodContext, method: str) -> None:
    if ctx.cov_type == "cluster":
        raise InputError(f"{method} from streamed genotypes has no cluster-robust SEs: use --streaming off, "
                         "or drop --cluster")


# ----------------------------------------------------------------------------- k-class
def kclass_method(data: StreamedMRData, ctx: MethodContext, method: str) -> MethodOutput:
    """ols, tsls_all, tsls_all_env, liml_all_env: every planned one shares the passes."""
    if method == "ols":
        from invariant_mr.inference.estimates import iv_estimates

        rows = iv_estimates(data, None, ctx.inference, method="ols", kappa="ols", clusters=data.clusters)
        return MethodOutput(tuple(replace(r, extra={**r.extra, **_route_extra(data, method)}) for r in rows))
    _check_cov_type(ctx, method)
    _, env_fe = _KCLASS[method]
    precision = str(ctx.option("meat_precision", "float64"))
    key = ("kclass", env_fe, ctx.alpha, ctx.cov_type, ctx.per_env, ctx.inference.ar_max_instruments, precision)
    if key not in data.cache:
        from invariant_mr.inference.from_stats import iv_estimates_from_stats

        planned = set(data.cache.get("planned", ())) | {method}
        methods = {m: kappa for m, (kappa, fe) in _KCLASS.items() if fe == env_fe and m in planned and m != "ols"}
        plan_projection(data, ctx)
        data.cache[key] = iv_estimates_from_stats(
            first_pass(data), methods, alpha=ctx.alpha, cov_type=ctx.cov_type, per_env=ctx.per_env,
            env_fixed_effects=env_fe, max_ar_instruments=ctx.inference.ar_max_instruments, passes=passes(data),
            meat_precision=precision,
        )
    rows = data.cache[key][method]
    return MethodOutput(tuple(replace(r, extra={**r.extra, **_route_extra(data, method)}) for r in rows))


# ----------------------------------------------------------------------------- invariant_linear
def project(data: StreamedMRData, weights: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Z @ weights - offset for every row (an n x k array): by the engine's passes (local or Dask),
    served without a read when an earlier pass carried it (`plan_projection`)."""
    from invariant_mr.passes import ProjectionKernel

    return passes(data).run(ProjectionKernel(weights, offset))


class _Directions(Exception):
    """Raised by the stand-in projection of `plan_projection`: the directions, before any row is read."""


def _projection_weights(learner, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w = directions / learner.scale_[:, None]
    return w, learner.mean_ @ w


def plan_projection(data: StreamedMRData, ctx: MethodContext) -> None:
    """When invariant_linear is planned on streamed rows, its one projection (every candidate direction:
    the permutation test's rows, whose leading columns are its instruments) rides on the second pass
    that is about to run (`RecordedPasses.carry`), instead of a read of its own. The directions
    come from the first pass alone; if invariant_linear later asks for other ones (other options)
    it reads the rows itself, so this changes no result."""
    from invariant_mr.instruments.linear import NoSignalError
    from invariant_mr.methods.invariant_linear import learner_from_context
    from invariant_mr.passes import ArrayRows, ProjectionKernel

    if "invariant_linear" not in data.cache.get("planned", ()) or isinstance(data.genotypes, ArrayRows):
        return
    learner = learner_from_context(ctx, "invariant_linear")

    def stand_in(directions):
        raise _Directions(directions)

    try:
        learner.fit_moments(first_pass(data).to_moments(), data.env_codes, data.env_levels, stand_in)
        directions = learner.components_
    except _Directions as wanted:
        directions = wanted.args[0]
    except (NoSignalError, InputError, np.linalg.LinAlgError):
        return
    if directions.shape[1]:
        passes(data).carry(ProjectionKernel(*_projection_weights(learner, directions)))


def invariant_linear(data: StreamedMRData, ctx: MethodContext) -> MethodOutput:
    from invariant_mr.inference.diagnostics import instrument_diagnostics
    from invariant_mr.inference.estimates import iv_estimates
    from invariant_mr.instruments.linear import NoSignalError
    from invariant_mr.methods.invariant_linear import _no_instrument_rows, learner_from_context, spectrum_summary

    option = ctx.option("direction_bootstrap", "auto")
    if option not in (None, "auto") and str(option) != "0":
        raise InputError("--direction-bootstrap refits the directions on resampled rows, which streamed genotypes "
                         "do not hold: use --direction-bootstrap 0 (or auto) or --streaming off")
    stats = first_pass(data)
    learner = learner_from_context(ctx, "invariant_linear")
    last: dict = {}

    def projection(directions):
        # The instruments are the leading columns of the permutation test's directions: their rows
        # are those columns of the rows already projected, not another read.
        if last and directions.shape[1] <= last["d"].shape[1] and np.array_equal(
                directions, last["d"][:, :directions.shape[1]]):
            return np.ascontiguousarray(last["x"][:, :directions.shape[1]])
        last["d"], last["x"] = directions, project(data, *_projection_weights(learner, directions))
        return last["x"]

    try:
        learner.fit_moments(stats.to_moments(), data.env_codes, data.env_levels, projection)
    except NoSignalError as exc:
        return MethodOutput(_no_instrument_rows(data, "invariant_linear", str(exc)))
    spectrum = spectrum_summary(learner)
    if learner.n_components_ == 0:
        return MethodOutput(_no_instrument_rows(data, "invariant_linear", "no invariant direction found"),
                            artifacts={"spectrum": spectrum})
    hw = projection(learner.components_)
    extra = {"signal_rank": learner.signal_rank_, **_route_extra(data, "invariant_linear"),
             "direction_bootstrap": "not available from streamed genotypes"}
    rows = iv_estimates(data, hw, ctx.inference, method="invariant_linear", extra=extra, clusters=data.clusters)
    diagnostics = instrument_diagnostics(data, hw, ctx.inference, method="invariant_linear", clusters=data.clusters)
    return MethodOutput(tuple(rows), tuple(diagnostics), artifacts={"instruments": hw, "spectrum": spectrum})


# ----------------------------------------------------------------------------- summary statistics
def summary_method(data: StreamedMRData, ctx: MethodContext, method: str) -> MethodOutput:
    from invariant_mr.methods import summary_level

    function = {
        "ivw": summary_level.ivw_method, "mr_egger": summary_level.mr_egger_method,
        "weighted_median": summary_level.weighted_median_method,
        "weighted_mode": summary_level.weighted_mode_method, "mr_presso": summary_level.mr_presso_method,
    }[method]
    out = function(data, ctx)
    rows = tuple(replace(r, extra={**r.extra, **_route_extra(data, method)}) for r in out.estimates)
    return MethodOutput(rows, out.diagnostics, out.artifacts)


# ----------------------------------------------------------------------------- TSHT
def tsht(data: StreamedMRData, ctx: MethodContext) -> MethodOutput:
    from invariant_mr.estimators.tsht import TwoStageHardThresholding
    from invariant_mr.inference.estimates import estimate_from_fit
    from invariant_mr.inference.tests_from_stats import anderson_rubin_from_stats
    from invariant_mr.inference.weak_iv import anderson_rubin_fields

    _check_cov_type(ctx, "tsht")
    threshold = ctx.option("tsht_threshold", None)
    threshold = None if threshold is None else float(threshold)
    stats = first_pass(data)
    names = np.array(data.instrument_names)
    scopes = [("pooled", None)] + ([(f"env:{lv}", lv) for lv in data.env_levels] if ctx.per_env else [])
    rows, diagnostics = [], ()
    for scope, level in scopes:
        wanted: dict[str, slice] = {}

        def also(final, scope=scope, wanted=wanted):
            """The final design's robust AR set (within --ar-max-instruments) and, pooled, its J test,
            accumulated in the final fit's pass."""
            from invariant_mr.estimators.sufficient_stats import _Parts
            from invariant_mr.inference.tests_from_stats import anderson_rubin_requests, j_requests

            out = []
            try:
                rank = _Parts.of(final).rank
                if 0 < rank <= ctx.inference.ar_max_instruments:
                    out += anderson_rubin_requests(final)
                    wanted["ar"] = slice(0, len(out))
                if scope == "pooled" and rank >= 2:
                    wanted["j"] = slice(len(out), len(out) + len(j_requests(final)))
                    out += j_requests(final)
            except (InputError, np.linalg.LinAlgError):
                wanted.clear()
                return []
            return out

        try:
            model = TwoStageHardThresholding(threshold=threshold, cov_type=ctx.cov_type).fit_statistics(
                stats, env=level, passes=passes(data), also=also
            )
        except (InputError, np.linalg.LinAlgError) as exc:
            if scope == "pooled":
                rows.append(Estimate.unavailable("tsht", scope, data.n, data.p, str(exc)))
            continue
        extra_meats = {key: model.also_meats_[part] for key, part in wanted.items()} if model.also_meats_ else {}
        if scope == "pooled":
            diagnostics = _tsht_overidentification(data, ctx, model, extra_meats.get("j"))
        est = estimate_from_fit(model.fit_, "tsht", scope, ctx.alpha, {
            "valid_instruments": names[model.valid_].tolist(),
            "relevant_instruments": names[model.relevant_].tolist(),
            "threshold": model.threshold_,
            "se_ignores_selection": True,
            **_route_extra(data, "tsht"),
        })
        k = est.n_instruments
        if ctx.cov_type != "unadjusted" and k is not None and k > ctx.inference.ar_max_instruments:
            est = replace(est, extra={**est.extra, "ar_set_kind": "not computed", "ar_error": (
                f"{ctx.cov_type} Anderson-Rubin set skipped: {k} instruments > --ar-max-instruments "
                f"{ctx.inference.ar_max_instruments} (raise it, or use --cov-type unadjusted for the closed-form "
                "classical set)")})
        else:
            try:
                cs = anderson_rubin_from_stats(model.design_, alpha=ctx.alpha, cov_type=ctx.cov_type,
                                               passes=passes(data), meats=extra_meats.get("ar"))
                f = anderson_rubin_fields(cs)
                est = replace(est, ar_ci_low=f["ar_ci_low"], ar_ci_high=f["ar_ci_high"],
                              extra={**est.extra, **f["extra"], "ar_cov_type": ctx.cov_type})
            except (InputError, np.linalg.LinAlgError) as exc:
                est = replace(est, extra={**est.extra, "ar_set_kind": "not computed", "ar_error": str(exc)})
        rows.append(est)
    return MethodOutput(tuple(rows), diagnostics)


def _tsht_overidentification(data: StreamedMRData, ctx: MethodContext, model, meats=None) -> tuple:
    """The pooled J row of the voted-valid instruments (as `baselines._overidentification` on the rows)."""
    from invariant_mr.inference.diagnostics import j_diagnostic
    from invariant_mr.inference.tests_from_stats import sargan_hansen_j_from_stats

    try:
        stat, p, df = sargan_hansen_j_from_stats(model.design_, cov_type=ctx.cov_type, passes=passes(data),
                                                 meats=meats)
    except (InputError, np.linalg.LinAlgError):
        return ()
    return (j_diagnostic("tsht/overidentification_j", stat, p, df, alpha=ctx.alpha, cov_type=ctx.cov_type),)


# ----------------------------------------------------------------------------- learners on minibatches
def learner_rows(data: StreamedMRData):
    """(RowSource of every analysed row, what it is) for learners that train by minibatches: a row-major
    cache of the calls (int8 for hard calls, float32 for dosages), written once per analysis into a
    temporary directory that is removed with the data's cache. Never the n x p float matrix in memory."""
    import tempfile

    from invariant_mr.io.int8_cache import training_rows

    if "learner_rows" not in data.cache:
        # The directory lives as long as the cache that holds it (its finaliser removes it).
        directory = tempfile.TemporaryDirectory(prefix="invariant-mr-rows-")
        source, what = training_rows(data.genotypes, directory.name)
        data.cache["learner_rows"] = (source, what, directory)
    source, what, _ = data.cache["learner_rows"]
    return source, what


def learner_route(data: StreamedMRData, what: str) -> dict:
    """`extra` of a learner that trained by minibatches over all `data.n` rows of `what`."""
    return {"route": f"minibatches from {what} ({data.n:,} rows)", "streamed_on": "local"}


def run_streamed(data: StreamedMRData, ctx: MethodContext, method: str) -> MethodOutput:
    """The streamed implementation of `method` (one of `STREAMED_METHODS`)."""
    if method in STREAMED_LEARNERS:
        from invariant_mr.methods import autoencoder

        rows, what = learner_rows(data)
        function = {"invariant_autoencoder": autoencoder.invariant_autoencoder_on_rows,
                    "invariant_autoencoder_insample": autoencoder.invariant_autoencoder_insample_on_rows}[method]
        return function(data, ctx, rows, learner_route(data, what))
    if method in _KCLASS:
        return kclass_method(data, ctx, method)
    if method == "invariant_linear":
        return invariant_linear(data, ctx)
    if method == "tsht":
        return tsht(data, ctx)
    return summary_method(data, ctx, method)


# ----------------------------------------------------------------------------- tsls_pcs (in memory)
def tsls_pcs_in_memory(view: StreamedMRData, data, ctx: MethodContext) -> MethodOutput:
    """tsls_pcs from the statistics: the PCs (`baselines.pcs_for`, their Gram matrix from the shared
    first pass's Z'Z) join the covariates by an O(n k m) pass over the shared first pass; one second pass for the robust SE
    and F, one for the J check."""
    from invariant_mr.estimators.sufficient_stats import _Parts, partial_out
    from invariant_mr.inference.diagnostics import j_diagnostic
    from invariant_mr.inference.from_stats import iv_estimates_from_stats
    from invariant_mr.inference.tests_from_stats import j_requests, sargan_hansen_j_from_stats
    from invariant_mr.methods.baselines import pcs_for
    from invariant_mr.methods.streamed_passes import with_extra_covariates

    # The shared first pass holds Z'Z and the column sums: the PCs need no n p^2 product of their own.
    base = first_pass(view)
    cross_products = None
    if base.z_map is None:
        q, p = base.q, base.p
        cross_products = (base.cross[:, q:q + p, q:q + p].sum(axis=0), base.sums[:, q:q + p].sum(axis=0))
    pcs, source, k = pcs_for(data, ctx, cross_products=cross_products)
    if pcs is not None:
        view = with_extra_covariates(view, pcs, tuple(f"genotype_pc{j + 1}" for j in range(k)))
    stats = first_pass(view)
    # One pooled design for the estimates and the J check: its whitening is computed once, and the
    # J test's meat (robust) rides in the estimates' second pass, on the same residualised rows.
    pooled = partial_out(stats, env_fixed_effects=True)
    also = ()
    if ctx.cov_type == "robust":
        try:
            also = tuple(j_requests(pooled)) if _Parts.of(pooled).rank >= 2 else ()
        except (InputError, np.linalg.LinAlgError, ZeroDivisionError):
            also = ()
    rows = iv_estimates_from_stats(
        stats, {"tsls_pcs": "tsls"}, alpha=ctx.alpha, cov_type=ctx.cov_type, per_env=ctx.per_env,
        env_fixed_effects=True, max_ar_instruments=ctx.inference.ar_max_instruments, passes=passes(view),
        extra={"n_pcs": k, "pcs_from": source, **_route_extra(view, "tsls_pcs")}, pooled_design=pooled, also=also,
    )["tsls_pcs"]
    try:
        stat, p, df = sargan_hansen_j_from_stats(pooled, cov_type=ctx.cov_type, passes=passes(view))
        diagnostics = (j_diagnostic("tsls_pcs/overidentification_j", stat, p, df, alpha=ctx.alpha,
                                    cov_type=ctx.cov_type),)
    except (InputError, np.linalg.LinAlgError):
        diagnostics = ()
    return MethodOutput(tuple(rows), diagnostics)


def from_statistics_in_memory(data, ctx: MethodContext, method: str, planned=()) -> MethodOutput | None:
    """`method` on in-memory `MRData` from the shared statistics, or None where the row route must run:
    a method without that route, several exposures, cluster labels or cluster-robust SEs, or
    columns the statistics route refuses (it then reports them, the row route drops them).
    `planned` names the analysis's methods, so that its k-class methods share one second pass."""
    from invariant_mr.data import MRData
    from invariant_mr.methods.streamed_passes import first_pass
    from invariant_mr.passes import statistics_view

    if (
        method not in IN_MEMORY_FROM_STATISTICS
        or not isinstance(data, MRData)
        or data.n_exposures != 1
        or data.clusters is not None
        or ctx.cov_type not in ("robust", "unadjusted")
    ):
        return None
    view = statistics_view(data)
    try:
        first_pass(view)
    except InputError:
        return None
    if method == "tsls_pcs":
        return tsls_pcs_in_memory(view, data, ctx)
    # The k-class methods of this analysis share their second pass (`kclass_method`).
    view.cache["planned"] = tuple(planned) or (method,)
    return run_streamed(view, ctx, method)


#: Why a learner still runs on the subsample of streamed genotypes (recorded as `extra["subsample_why"]`).
SUBSAMPLE_REASONS = {
    "invariant_polynomial": (
        "stage 1 is full-batch L-BFGS (variable projection: every step solves the decoder by least squares "
        "over all of its rows) and stage 2's bootstrap and the denoising encoder refit on rows, so it has no "
        "minibatch form; it learns from the seeded subsample, and its 2SLS uses those rows"
    ),
}


def subsample_extra(data: StreamedMRData, method: str | None = None) -> dict:
    m = min(data.subsample_rows, data.n)
    extra = {"route": f"subsample ({m:,} of {data.n:,} rows, seed {data.seed})", "streamed_on": "local"}
    if method in SUBSAMPLE_REASONS:
        extra.update(training_rows=m, subsample_why=SUBSAMPLE_REASONS[method])
    return extra


__all__ = ["IN_MEMORY_FROM_STATISTICS", "STREAMED_LEARNERS", "STREAMED_METHODS", "from_statistics_in_memory",
           "learner_route", "learner_rows", "project", "run_streamed", "SUBSAMPLE_REASONS", "subsample_extra"]
