"""`invariant_linear` and `invariant_linear_crossfit`: closed-form invariant directions -> 2SLS -> bootstrap -> diagnostics.

The learner is `instruments.linear.LinearInvariantInstruments`; this module
only maps the command-line options onto its constructor and wires its
instruments into the inference layer.
"""

from __future__ import annotations

import numpy as np

from invariant_mr.data import MRData, exogenous_controls
from invariant_mr.errors import InputError
from invariant_mr.inference.crossfit import crossfit_estimates, crossfit_instruments
from invariant_mr.inference.diagnostics import instrument_diagnostics
from invariant_mr.inference.direction_bootstrap import direction_bootstrap, with_bootstrap_se
from invariant_mr.inference.estimates import iv_estimates
from invariant_mr.instruments.linear import LinearInvariantInstruments, NoSignalError
from invariant_mr.instruments.moments import is_dask_array
from invariant_mr.methods.registry import MethodContext, MethodOutput
from invariant_mr.results import Estimate


#: "auto" bootstraps when one refit costs at most this many n * p^2 multiply-adds (about 0.05 s
#: on one core, so 200 draws add at most about 10 s to a run).
_BOOTSTRAP_AUTO_MAX_WORK = 2e8
_BOOTSTRAP_AUTO_DRAWS = 200


def _int_or_auto(value, name: str):
    if value in (None, "auto"):
        return "auto"
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InputError(f"--{name.replace('_', '-')} must be 'auto' or an integer, got {value!r}") from None


def learner_from_context(ctx: MethodContext, salt: str) -> LinearInvariantInstruments:
    return LinearInvariantInstruments(
        n_components=_int_or_auto(ctx.option("n_components"), "n_components"),
        signal_rank=_int_or_auto(ctx.option("signal_rank"), "signal_rank"),
        standardize=bool(ctx.option("standardize", True)),
        n_permutations=int(ctx.option("n_permutations", 199)),
        random_state=ctx.rng(salt),
    )


def bootstrap_draws(option, data: MRData) -> int:
    """Number of direction-refitting bootstrap draws that `--direction-bootstrap` asks for."""
    if option in (None, "auto"):
        cheap = not is_dask_array(data.Z) and data.n * data.p**2 <= _BOOTSTRAP_AUTO_MAX_WORK
        return _BOOTSTRAP_AUTO_DRAWS if cheap else 0
    draws = _int_or_auto(option, "direction_bootstrap")
    if draws < 0 or draws == 1:
        raise InputError(f"--direction-bootstrap must be 0, at least 2, or 'auto', got {option!r}")
    return draws


def with_direction_bootstrap(
    estimate: Estimate, data: MRData, learner: LinearInvariantInstruments, ctx: MethodContext, n_draws: int
) -> Estimate:
    """`estimate` with an SE and Wald CI that include the error of the estimated directions.

    Each draw resamples rows within environments (keeping their sizes; with
    cluster labels, whole clusters within environments),
    refits the directions with the signal rank and number of components
    chosen on the full data, and re-estimates; the SE is the SD of the draws
    (`inference.direction_bootstrap`).
    """

    draws = direction_bootstrap(
        np.asarray(data.Z), data.env_codes, data.outcome, data.exposure, exogenous_controls(data, True),
        lambda Z, env: learner.with_fixed_selection().fit_transform(Z, env),
        n_draws, ctx.rng("invariant_linear/direction bootstrap"), cov_type=ctx.cov_type,
        clusters=data.clusters,
    )  # fmt: skip
    return with_bootstrap_se(estimate, draws, ctx.alpha)


def spectrum_summary(learner: LinearInvariantInstruments) -> dict:
    """The fitted spectra and choices, for the report (the signal spectrum cut at 50 values)."""
    return {
        "signal_rank": learner.signal_rank_,
        "n_components": learner.n_components_,
        "invariance_eigenvalues": learner.invariance_eigenvalues_.tolist(),
        "signal_eigenvalues": learner.signal_eigenvalues_[: min(50, learner.signal_eigenvalues_.size)].tolist(),
        "pvalues": None if learner.pvalues_ is None else learner.pvalues_.tolist(),
    }


def _no_instrument_rows(data: MRData, method: str, reason: str) -> tuple[Estimate, ...]:
    return (Estimate.unavailable(method, "pooled", data.n, 0, reason),)


def invariant_linear(data: MRData, ctx: MethodContext) -> MethodOutput:
    try:
        learner = learner_from_context(ctx, "invariant_linear").fit(data.Z, data.env)
    except NoSignalError as exc:  # the other methods' results stay valid
        return MethodOutput(_no_instrument_rows(data, "invariant_linear", str(exc)))
    spectrum = spectrum_summary(learner)
    if learner.n_components_ == 0:
        return MethodOutput(
            _no_instrument_rows(data, "invariant_linear", "no invariant direction found"),
            artifacts={"spectrum": spectrum},
        )
    hw = learner.transform(data.Z)
    rows = iv_estimates(
        data, hw, ctx.inference, method="invariant_linear",
        extra={"signal_rank": learner.signal_rank_}, clusters=data.clusters,
    )
    n_draws = bootstrap_draws(ctx.option("direction_bootstrap", "auto"), data)
    if n_draws:  # pooled row only: per-environment rows keep the fixed-direction SE
        rows[0] = with_direction_bootstrap(rows[0], data, learner, ctx, n_draws)
    diagnostics = instrument_diagnostics(data, hw, ctx.inference, method="invariant_linear", clusters=data.clusters)
    return MethodOutput(tuple(rows), tuple(diagnostics), artifacts={"instruments": hw, "spectrum": spectrum})


def invariant_linear_crossfit(data: MRData, ctx: MethodContext) -> MethodOutput:
    n_folds = int(ctx.option("n_folds", 2))
    try:
        hw, folds, learners = crossfit_instruments(
            data,
            lambda f: learner_from_context(ctx, f"invariant_linear_crossfit/{f}"),
            n_folds=n_folds,
            rng=ctx.rng("invariant_linear_crossfit/folds"),
        )
    except NoSignalError as exc:
        return MethodOutput(_no_instrument_rows(data, "invariant_linear_crossfit", str(exc)))
    if hw.shape[1] == 0:
        return MethodOutput(_no_instrument_rows(data, "invariant_linear_crossfit", "no invariant direction found"))
    rows = crossfit_estimates(
        data, hw, folds, ctx.inference, method="invariant_linear_crossfit",
        extra={"components_per_fold": [lr.n_components_ for lr in learners]}, clusters=data.clusters,
    )
    diagnostics = instrument_diagnostics(
        data, hw, ctx.inference, method="invariant_linear_crossfit", folds=folds, clusters=data.clusters
    )
    return MethodOutput(tuple(rows), tuple(diagnostics), artifacts={"instruments": hw, "folds": folds})


__all__ = ["bootstrap_draws", "invariant_linear", "invariant_linear_crossfit", "learner_from_context"]
