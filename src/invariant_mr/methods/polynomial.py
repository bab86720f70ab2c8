"""`invariant_polynomial`: identify the latents with a polynomial decoder, then find the invariant ones.

Stage 1 (`PolynomialInvariantInstruments`): a linear encoder h = L z with a
polynomial decoder, degree, latent dimension and restart chosen by held-out
reconstruction; stage 2: the closed-form invariant directions of the codes.
Cross-fitted (each fold's instruments come from both stages learned on the
other folds), fold-interacted 2SLS with environment fixed effects, and a
stage-2 bootstrap SE (`inference.polynomial_bootstrap`, which explains why
stage 1 can be held fixed).
"""

from __future__ import annotations

import numpy as np

from invariant_mr.data import MRData
from invariant_mr.inference.crossfit import crossfit_estimates, crossfit_instruments
from invariant_mr.inference.diagnostics import instrument_diagnostics
from invariant_mr.inference.direction_bootstrap import with_bootstrap_se
from invariant_mr.inference.polynomial_bootstrap import stage2_bootstrap
from invariant_mr.instruments.linear import NoSignalError, one_blas_thread
from invariant_mr.instruments.polynomial import PolynomialInvariantInstruments
from invariant_mr.methods.registry import MethodContext, MethodOutput
from invariant_mr.results import Estimate

METHOD = "invariant_polynomial"


def _degrees(text) -> tuple[int, ...]:
    from invariant_mr.errors import InputError

    try:
        degrees = tuple(sorted({int(d) for d in str(text).split(",") if d.strip()}))
    except ValueError:
        raise InputError(f"--poly-degrees must be comma-separated integers, got {text!r}") from None
    if not degrees or degrees[0] < 1:
        raise InputError(f"--poly-degrees must be positive integers, got {text!r}")
    return degrees


def learner_from_context(ctx: MethodContext, fold: int) -> PolynomialInvariantInstruments:
    """The learner with the constructor arguments the options ask for; one seed stream per fold."""
    n_components = ctx.option("n_components", "auto")
    return PolynomialInvariantInstruments(
        degrees=_degrees(ctx.option("poly_degrees", "1,2,3")),
        n_restarts=int(ctx.option("poly_restarts", 4)),
        max_latent_dim=int(ctx.option("poly_max_latent_dim", 6)),
        n_components=n_components if n_components == "auto" else int(n_components),
        n_permutations=int(ctx.option("n_permutations", 199)),
        random_state=ctx.rng(f"{METHOD}/fold {fold}"),
    )


def _varying_codes(data: MRData, folds: np.ndarray, learners) -> np.ndarray | None:
    """Out-of-fold stage-2 directions that were not kept: the confounded latents, for the HSIC check.

    The default complement of `instrument_diagnostics` is a linear residual of Z,
    which under polynomial mixing still holds nonlinear functions of W (W^2 is
    a column of Z) and would make the independence test reject for valid
    instruments; the learned varying latents are the right complement, as hV is
    for the autoencoder.
    """
    widths = {lr.all_directions_.shape[1] - lr.n_components_ for lr in learners}
    if len(widths) != 1 or 0 in widths:
        return None
    Z = np.asarray(data.Z, dtype=float)
    out = np.zeros((data.n, widths.pop()))
    for f, lr in enumerate(learners):
        rows = folds == f
        out[rows] = Z[rows] @ lr.all_directions_[:, lr.n_components_:]
    return out


def _unavailable(data: MRData, reason: str) -> MethodOutput:
    return MethodOutput((Estimate.unavailable(METHOD, "pooled", data.n, 0, reason),))


def invariant_polynomial(data: MRData, ctx: MethodContext) -> MethodOutput:
    # Every step (stage 1's L-BFGS, the stage-2 bootstrap, the diagnostics' permutations) is a chain
    # of small products: on a shared machine extra BLAS threads spin instead of helping (issue 19).
    with one_blas_thread():
        return _invariant_polynomial(data, ctx)


def _invariant_polynomial(data: MRData, ctx: MethodContext) -> MethodOutput:
    n_folds = int(ctx.option("n_folds", 2))
    try:
        hw, folds, learners = crossfit_instruments(
            data, lambda f: learner_from_context(ctx, f), n_folds=n_folds, rng=ctx.rng(f"{METHOD}/folds")
        )
    except NoSignalError as exc:
        return _unavailable(data, str(exc))
    if hw.shape[1] == 0:
        return _unavailable(data, "no invariant direction found in the learned codes")
    selection = [
        {"degree": lr.degree_, "latent_dim": lr.latent_dim_, "restart": lr.restart_,
         "heldout_error": lr.heldout_error_, "n_components": lr.n_components_}
        for lr in learners
    ]  # fmt: skip
    clusters = getattr(data, "clusters", None)
    rows = crossfit_estimates(
        data, hw, folds, ctx.inference, method=METHOD, extra={"stage1": selection}, clusters=clusters
    )
    n_draws = int(ctx.option("poly_bootstrap", 200))
    if n_draws >= 2 and clusters is None:  # pooled row: the SE that includes the directions' error
        draws = stage2_bootstrap(
            np.asarray(data.Z, dtype=float), data.env_codes, data.outcome, data.exposure, folds, learners, n_draws,
            ctx.rng(f"{METHOD}/bootstrap"), covariates=data.covariates, cov_type=ctx.cov_type,
        )  # fmt: skip
        rows[0] = with_bootstrap_se(rows[0], draws, ctx.alpha)
    diagnostics = instrument_diagnostics(
        data, hw, ctx.inference, _varying_codes(data, folds, learners), method=METHOD, folds=folds, clusters=clusters
    )
    return MethodOutput(tuple(rows), tuple(diagnostics), artifacts={"instruments": hw, "folds": folds})
