"""`invariant_autoencoder` (cross-fitted) and `invariant_autoencoder_insample` (the paper's variant).

* `invariant_autoencoder`: encoder learned on k-1 folds, 2SLS on out-of-fold
  instruments with fold-interacted first stages, environment fixed effects.
  Valid SEs even though the instruments are learned.
* `invariant_autoencoder_insample`: learn and estimate on the same rows. Point
  estimates as in the paper; SEs ignore the learning step.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from invariant_mr.data import MRData
from invariant_mr.errors import InputError
from invariant_mr.inference.crossfit import crossfit_estimates, crossfit_instruments, rows_at
from invariant_mr.inference.diagnostics import DIAGNOSTIC_MAX_ROWS, instrument_diagnostics
from invariant_mr.inference.estimates import iv_estimates
from invariant_mr.inference.heldout_invariance import heldout_invariance_test
from invariant_mr.instruments.autoencoder import PRESETS, InvariantAutoencoder, paper_recipe_params
from invariant_mr.methods.options import AUTOENCODER_ARGUMENT, AUTOENCODER_METHOD_ONLY, AUTOENCODER_OPTIONS
from invariant_mr.methods.registry import MethodContext, MethodOutput
from invariant_mr.results import Diagnostic


def estimator_params(options: Mapping[str, Any]) -> dict[str, Any]:
    """`InvariantAutoencoder` constructor arguments from method options (None = not given).

    Without a preset, an option not given takes its declared default (the
    constructor's). With `preset="paper"`, an option not given takes the
    value of `paper_recipe_params(decoder_degree, decoder)`; options given
    explicitly override the preset.
    """
    preset = options.get("preset") or "none"
    if preset not in PRESETS:
        raise InputError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    base: dict[str, Any] = {}
    if preset == "paper":
        base = paper_recipe_params(
            decoder_degree=options.get("decoder_degree") or 3, decoder=options.get("decoder") or "poly"
        )
    params: dict[str, Any] = dict(base)
    for opt in AUTOENCODER_OPTIONS:
        if opt.name in AUTOENCODER_METHOD_ONLY:
            continue
        arg = AUTOENCODER_ARGUMENT.get(opt.name, opt.name)
        value = options.get(opt.name)
        params[arg] = value if value is not None else base.get(arg, opt.default)
    return params


def estimator_from_context(ctx: MethodContext, seed: int) -> InvariantAutoencoder:
    """An `InvariantAutoencoder` with the constructor arguments the options (and `--preset`) ask for."""
    return InvariantAutoencoder(**estimator_params(ctx.options), seed=seed, progress=ctx.progress)


#: What the diagnostics of a streamed route read (`instrument_diagnostics`' seeded rows).
_DIAGNOSTICS_ROWS = (f"MMD/HSIC/leak/structure checks on a seeded subset of at most {DIAGNOSTIC_MAX_ROWS:,} rows; "
                     "J and F on all rows")


def _history_rows(history: list[dict], **tags) -> list[dict]:
    return [{**tags, **row} for row in history]


def invariant_autoencoder(data: MRData, ctx: MethodContext) -> MethodOutput:
    return invariant_autoencoder_on_rows(data, ctx)


def invariant_autoencoder_on_rows(data, ctx: MethodContext, rows=None, route: dict | None = None) -> MethodOutput:
    """`invariant_autoencoder` on `data.Z` (rows=None) or, for streamed genotypes, with every fold's
    encoder trained by minibatches over `rows` (a `RowSource` of all analysed rows, e.g. the int8
    cache) and its instruments from a streamed transform; `route` joins each estimate's `extra`."""
    n_folds = int(ctx.option("n_folds", 2))
    if n_folds < 2:
        raise InputError(f"--n-folds must be at least 2 for cross-fitting, got {n_folds}")
    use_exposure = float(estimator_params(ctx.options)["lam_rel"]) > 0
    base_seed = int(ctx.rng("invariant_autoencoder seed").integers(2**31 - 1))
    instruments, folds, learners = crossfit_instruments(
        data,
        lambda fold: estimator_from_context(ctx, base_seed + fold),
        n_folds=n_folds,
        rng=ctx.rng("invariant_autoencoder folds"),
        use_exposure=use_exposure,
        rows=rows,
    )
    # Out-of-fold hV of each fold's encoder: the environment-varying component the HSIC check tests against.
    source = data.Z if rows is None else rows
    hv = np.zeros((data.n, learners[0].dim_v))
    for f, model in enumerate(learners):
        hv[folds == f] = model.transform_all(rows_at(source, folds == f))[0]
    history = [row for f, m in enumerate(learners) for row in _history_rows(m.history_, fold=f)]
    summaries = [m.training_summary_ for m in learners]
    extra = {"training": summaries}
    if route is not None:
        # Every row trained an encoder (the one of each fold it is not in); per encoder, its rows split
        # into gradient rows and validation rows (training summaries).
        extra.update(route, training_rows=data.n, diagnostics_rows=_DIAGNOSTICS_ROWS)
    estimates = crossfit_estimates(
        data, instruments, folds, ctx.inference, method="invariant_autoencoder",
        extra=extra, clusters=data.clusters,
    )  # fmt: skip
    diagnostics = tuple(
        instrument_diagnostics(
            data, instruments, ctx.inference, hv, method="invariant_autoencoder", folds=folds, clusters=data.clusters
        )
    )
    n_perm = int(ctx.option("invariance_permutations", 99))
    if n_perm > 0:
        stat, pvalue = heldout_invariance_test(
            instruments, data.env_codes, folds, ctx.rng("invariant_autoencoder invariance test"), n_perm
        )
        diagnostics += (
            Diagnostic(
                name="heldout_invariance",
                scope="invariant_autoencoder",
                statistic=stat,
                pvalue=pvalue,
                flag="instruments differ across environments on held-out folds"
                if pvalue <= ctx.alpha
                else "no evidence against invariance on held-out folds",
                detail={
                    "test": "RBF MMD^2 permutation (within folds)", "n_permutations": n_perm,
                    **({"clusters": "ignored: samples, not whole clusters, are permuted, so with related "
                                    "samples the p-value is too small"} if data.clusters is not None else {}),
                },
            ),
        )
    return MethodOutput(
        tuple(estimates), diagnostics, artifacts={"instruments": instruments, "folds": folds, "history": history}
    )


def invariant_autoencoder_insample(data: MRData, ctx: MethodContext) -> MethodOutput:
    return invariant_autoencoder_insample_on_rows(data, ctx)


def invariant_autoencoder_insample_on_rows(data, ctx: MethodContext, rows=None,
                                           route: dict | None = None) -> MethodOutput:
    """`invariant_autoencoder_insample` on `data.Z` (rows=None) or trained by minibatches over `rows`
    (a `RowSource` of every analysed row) with a streamed transform; `route` joins each estimate's `extra`."""
    seed = int(ctx.rng("invariant_autoencoder_insample seed").integers(2**31 - 1))
    model = estimator_from_context(ctx, seed)
    use_exposure = float(estimator_params(ctx.options)["lam_rel"]) > 0
    if rows is not None and int(rows.n) != data.n:
        raise InputError(f"the training rows hold {rows.n} rows, the data {data.n}")
    Z = data.Z if rows is None else rows
    model.fit(Z, data.env, exposure=data.exposure if use_exposure else None)
    hv, instruments = model.transform_all(Z)  # one encoder pass for the instruments and the HSIC check
    extra = {"training": model.training_summary_, "in_sample": True}
    if route is not None:
        extra.update(route, training_rows=data.n, diagnostics_rows=_DIAGNOSTICS_ROWS)
    estimates = iv_estimates(
        data, instruments, ctx.inference, method="invariant_autoencoder_insample",
        extra=extra, clusters=data.clusters,
    )  # fmt: skip
    diagnostics = instrument_diagnostics(
        data, instruments, ctx.inference, hv, method="invariant_autoencoder_insample", clusters=data.clusters
    )
    return MethodOutput(
        tuple(estimates), tuple(diagnostics), artifacts={"instruments": instruments, "history": model.history_}
    )


__all__ = ["estimator_from_context", "estimator_params", "invariant_autoencoder", "invariant_autoencoder_insample",
           "invariant_autoencoder_insample_on_rows", "invariant_autoencoder_on_rows"]
