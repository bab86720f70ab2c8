"""`invariant_polynomial`: identify the latents with a polynomial decoder, then find the invariant ones.

Stage 1 (`PolynomialInvariantInstruments`): a linear encoder h = L z with a
polynomial decoder, degree, latent dimension and restart chosen by held-out
reconstruction; under measurement noise, when it halves the held-out error,
the denoising encoder that projects each row onto the decoder's surface
(`instruments.manifold_projection`); stage 2: the closed-form invariant
directions of the codes.
Cross-fitted (each fold's instruments come from both stages learned on the
other folds), fold-interacted 2SLS with environment fixed effects, and a
stage-2 bootstrap SE (`inference.polynomial_bootstrap`, which explains why
stage 1 can be held fixed).

How many directions each fold keeps: the exact invariance test's count, or more
while the bias their detected leak would cause stays below LEAK_TOLERANCE times
the SE (`inference.leak_bias`), and only if the estimate does not move with the
number kept, and only if they are not weak instruments (first-stage F of at least
MIN_FIRST_STAGE_F). Otherwise it abstains, saying why and what would help
(docs/polynomial_method.md, "Failures, cost and when it answers").
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from invariant_mr.data import MAX_CALL_LEVELS, MRData, genotype_calls
from invariant_mr.inference.crossfit import crossfit_estimates, crossfit_instruments
from invariant_mr.inference.diagnostics import instrument_diagnostics
from invariant_mr.inference.leak_bias import leak_bias_bounds, stability
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


def _varying_codes(data: MRData, folds: np.ndarray, learners, ks) -> np.ndarray | None:
    """Out-of-fold stage-2 directions that were not kept: the confounded latents, for the HSIC check.

    The default complement of `instrument_diagnostics` is a linear residual of Z,
    which under polynomial mixing still holds nonlinear functions of W (W^2 is
    a column of Z) and would make the independence test reject for valid
    instruments; the learned varying latents are the right complement, as hV is
    for the autoencoder.

    The folds may keep different numbers of directions (or learn different latent
    dimensions). Every fold then contributes its `m` most environment-varying
    directions, m the smallest count of any fold (the directions are ordered most
    invariant first): falling back to the residual of Z instead would test the
    instruments against W^2 and reject valid ones (issue 18: HSIC statistics of
    100+ and a purge that kept F 11 of 150 on correct poly2 fits with 2% noise).
    """
    m = min(lr.code_directions_.shape[1] - k for lr, k in zip(learners, ks))
    if m <= 0:
        return None
    Z = np.asarray(data.Z, dtype=float)
    out = np.zeros((data.n, m))
    for f, lr in enumerate(learners):
        rows = folds == f
        out[rows] = lr.directions(Z[rows])[:, -m:]
    return out


#: Held-out reconstruction error (share of Z's variance) below which stage 1 counts as exact.
EXACT_RECONSTRUCTION = 1e-6
#: The leak-bias rule keeps k directions while the bias their detected leak would cause is below this share of the
#: SE (a bias of half an SE costs a 95% Wald interval about 3 points of coverage).
LEAK_TOLERANCE = 0.5
#: Below this first-stage F the kept directions are too weak to answer with (Staiger-Stock rule of thumb).
MIN_FIRST_STAGE_F = 10.0
#: |z| above which the estimate is said to move with the number of directions (two-sided 0.1%).
STABILITY_Z = 3.29


def choose_components(data: MRData, folds: np.ndarray, learners) -> tuple[list[int], list[dict]]:
    """Per fold, how many directions to keep: the exact invariance test's count, or more when the bias the
    detected leak would cause stays below LEAK_TOLERANCE times the SE (`inference.leak_bias`).

    The bound is computed on each fold's held-out rows with that fold's directions (out of fold, so a
    direction's shift is not the one stage 2 minimised). Returns the counts and one record per fold.
    """
    Z = np.asarray(data.Z, dtype=float)
    n_folds = len(learners)
    ks, records = [], []
    for f, lr in enumerate(learners):
        rows = folds == f
        m = lr.code_directions_.shape[1]
        record = {"fold": f, "exact_test": int(lr.n_components_), "tolerance": LEAK_TOLERANCE}
        k = int(lr.n_components_)
        if m >= 2:
            A = lr.directions(Z[rows])
            res = leak_bias_bounds(A, data.env_codes[rows], data.exposure[rows], data.outcome[rows])
            # The pooled estimate averages n_folds such fits: compare with its SE, not this fold's.
            allowed = LEAK_TOLERANCE * res["se"] / np.sqrt(n_folds)
            passing = [j + 1 for j in range(m - 1) if np.isfinite(res["bound"][j]) and res["bound"][j] <= allowed[j]]
            k = max(k, max(passing, default=0))
            record.update(
                bound=[float(b) for b in res["bound"]], se=[float(x) for x in res["se"] / np.sqrt(n_folds)],
                estimate=[float(x) for x in res["estimate"]], shift=[float(x) for x in res["shift"]],
                pi=[float(x) for x in res["pi"]],
                stability_z=stability(res["estimate"], res["se"], k) if 1 <= k <= m - 1 else 0.0,
            )  # fmt: skip
        record["kept"] = k
        ks.append(k)
        records.append(record)
    return ks, records


def _abstention_reason(records: list[dict], learners) -> str:
    """Why there is no estimate, and what would help."""
    error = max(lr.heldout_error_ for lr in learners)
    unstable = [r for r in records if r["kept"] and r.get("stability_z", 0.0) > STABILITY_Z]
    encoders = sorted({lr.stage1_encoder_ for lr in learners})
    if error <= EXACT_RECONSTRUCTION:
        # Nothing is hidden: the codes carry all of Z (e.g. as many latents as columns), so the
        # data themselves show no latent direction that is the same in every environment.
        stage1 = (f"stage 1 ({' and '.join(encoders)} encoder) reconstructs Z exactly (held-out error {error:.1e}), "
                  "so the codes carry all of Z and no invariant latent is hidden from stage 2")
        helps = "more environments, or environments that differ more in the confounding, would help"
    else:
        stage1 = (
            f"stage 1 ({' and '.join(encoders)} encoder) reconstructs Z to a held-out error of {error:.1e} of its "
            f"variance (exact polynomial mixing: below {EXACT_RECONSTRUCTION:g}), so measurement noise or a mixing "
            "outside the decoder's class likely hides the latents"
        )
        helps = "less measurement noise or more samples per environment would help; more environments sharpen the check"
    if unstable:
        z = max(r["stability_z"] for r in unstable)
        return f"the estimate moves with the number of invariant directions kept (z = {z:.1f}); {stage1}; {helps}"
    bounds = [(r["bound"][0], r["se"][0]) for r in records if r.get("bound") and np.isfinite(r["bound"][0])]
    if not bounds:
        return f"no invariant direction found in the learned codes; {stage1}; {helps}"
    bound, se = max(bounds)
    return (
        f"no learned direction is invariant enough: the leak of the confounded latents detected in the most "
        f"invariant one would bias the estimate by about {bound:.2g} (SE {se:.2g}; the rule answers below "
        f"{LEAK_TOLERANCE} SE); {stage1}; {helps}"
    )


def _unavailable(data: MRData, reason: str, artifacts=None) -> MethodOutput:
    return MethodOutput((Estimate.unavailable(METHOD, "pooled", data.n, 0, reason),), artifacts=artifacts or {})


def _stage1_codes(data: MRData, folds: np.ndarray, learners) -> np.ndarray:
    """Out-of-fold stage-1 codes (n, widest code; narrower folds zero-padded): what stage 1 recovered, for
    benchmarks that know the latents (the codes are the latents up to an affine map when stage 1 identifies)."""
    Z = np.asarray(data.Z, dtype=float)
    out = np.zeros((data.n, max(lr.latent_dim_ for lr in learners)))
    for f, lr in enumerate(learners):
        rows = folds == f
        out[rows, : lr.latent_dim_] = lr.encode(Z[rows])
    return out


def invariant_polynomial(data: MRData, ctx: MethodContext) -> MethodOutput:
    # Every step (stage 1's L-BFGS, the stage-2 bootstrap, the diagnostics' permutations) is a chain
    # of small products: on a shared machine extra BLAS threads spin instead of helping (issue 19).
    with one_blas_thread():
        return _invariant_polynomial(data, ctx)


def _invariant_polynomial(data: MRData, ctx: MethodContext) -> MethodOutput:
    n_folds = int(ctx.option("n_folds", 2))
    if genotype_calls(data.Z):
        # The decoder's model is Z = polynomial(latents) + small noise. Hard calls are a smooth map of nothing:
        # each is a draw from a few levels, so the "latents" would be noise and stage 1 would search for
        # minutes (200 genotype columns: 60 CPU s per fit) before abstaining.
        return _unavailable(data, (
            f"every column takes at most {MAX_CALL_LEVELS} values (genotype calls): no polynomial map of "
            "continuous latents produces them, so there is nothing for stage 1 to identify; for genotypes other "
            "designs would help: invariant_linear, tsls_pcs with genome-wide PCs (--pcs-from), within-family MR "
            "(--family-col)"))
    try:
        hw, folds, learners = crossfit_instruments(
            data, lambda f: learner_from_context(ctx, f), n_folds=n_folds, rng=ctx.rng(f"{METHOD}/folds")
        )
    except NoSignalError as exc:
        return _unavailable(data, str(exc))
    ks, leak_records = choose_components(data, folds, learners)
    codes = {"folds": folds, "codes": _stage1_codes(data, folds, learners)}
    if max(ks) == 0 or any(r["kept"] and r.get("stability_z", 0.0) > STABILITY_Z for r in leak_records):
        out = _unavailable(data, _abstention_reason(leak_records, learners))
        return MethodOutput(
            tuple(replace(e, extra={**e.extra, "leak_bias": leak_records}) for e in out.estimates), artifacts=codes
        )
    Z = np.asarray(data.Z, dtype=float)
    hw = np.zeros((data.n, max(ks)))
    for f, (lr, k) in enumerate(zip(learners, ks)):
        rows = folds == f
        hw[rows, :k] = lr.directions(Z[rows])[:, :k]
    selection = [
        {"degree": lr.degree_, "latent_dim": lr.latent_dim_, "restart": lr.restart_, "encoder": lr.stage1_encoder_,
         "heldout_error": lr.heldout_error_, "n_components": k}
        for lr, k in zip(learners, ks)
    ]  # fmt: skip
    clusters = getattr(data, "clusters", None)
    rows = crossfit_estimates(
        data, hw, folds, ctx.inference, method=METHOD, extra={"stage1": selection, "leak_bias": leak_records}, clusters=clusters
    )
    f_stat = rows[0].first_stage_f
    if f_stat is not None and np.isfinite(f_stat) and f_stat < MIN_FIRST_STAGE_F:
        # Directions can pass the leak check because they carry almost nothing (poly3 with 10% noise: F 0.3-1.5,
        # estimates 0.79 and 1.28): 2SLS on them is pulled towards OLS and its Wald interval cannot be trusted.
        reason = (
            f"the directions that pass the leak check are weak instruments (first-stage F = {f_stat:.1f} < "
            f"{MIN_FIRST_STAGE_F:g}); more samples per environment or less measurement noise would help"
        )
        out = _unavailable(data, reason)
        return MethodOutput(
            tuple(replace(e, extra={**e.extra, "leak_bias": leak_records}) for e in out.estimates), artifacts=codes
        )
    n_draws = int(ctx.option("poly_bootstrap", 200))
    if n_draws >= 2 and clusters is None:  # pooled row: the SE that includes the directions' error
        draws = stage2_bootstrap(
            np.asarray(data.Z, dtype=float), data.env_codes, data.outcome, data.exposure, folds, learners, n_draws,
            ctx.rng(f"{METHOD}/bootstrap"), covariates=data.covariates, cov_type=ctx.cov_type, n_components=ks,
        )  # fmt: skip
        rows[0] = with_bootstrap_se(rows[0], draws, ctx.alpha)
    diagnostics = instrument_diagnostics(
        data, hw, ctx.inference, _varying_codes(data, folds, learners, ks), method=METHOD, folds=folds, clusters=clusters
    )
    return MethodOutput(tuple(rows), tuple(diagnostics), artifacts={"instruments": hw, **codes})
