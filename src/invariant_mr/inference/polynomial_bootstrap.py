"""Standard errors for cross-fitted two-stage polynomial instruments: a stage-2 bootstrap.

The estimator (`PolynomialInvariantInstruments`, cross-fitted): for each fold
f, both stages are learned on the other folds, and fold f's instruments are
that map applied to its rows; one 2SLS with fold-interacted instruments and
fold-by-environment fixed effects (`crossfit.crossfit_estimates`).

Why a bootstrap at all. The 2SLS SE treats the instruments as fixed. Their
directions are estimated, and the error leaks an O(n^-1/2) share of the
confounded block into the instruments: a conditional bias of the same order
as the sampling error, which cross-fitting does not remove (it only makes the
map independent of the fold it is applied to). For the linear method this
made Wald coverage 0.91-0.93 instead of 0.95 (benchmarks/results/coverage.md).

Why only stage 2 is refitted. Refitting stage 1 (restarts, degree and
dimension search) on every draw costs a full fit per draw. It is not needed
to first order:

* stage 2 is affine-equivariant: the instruments it finds on codes h and on
  codes A h + b span the same functions (it whitens the codes and keeps every
  direction: signal rank = code dimension). So the part of stage 1's error
  that is an affine reparametrisation of the latents, the only freedom the
  polynomial decoder leaves (identification up to affine maps), has no
  effect on the instruments at all;
* what remains of stage 1's error is the non-affine part, which is bounded by
  the decoder's held-out reconstruction error (reported in `selection_`;
  1e-9 to 1e-12 of Z's variance on noise-free polynomial mixing), so its
  leak of V into the instruments is negligible next to stage 2's;
* conditionally on the stage-1 encoders (each a fixed linear map of Z, fitted
  on other rows or on all rows without using D or Y), the procedure is the
  linear invariant method applied to the codes, for which resampling rows
  and refitting the directions is the bootstrap that covered (0.93-0.95).

Each draw resamples rows within fold-by-environment cells (keeping their
sizes), refits every fold's stage 2 on its resampled training rows' codes
(keeping the chosen number of components), recomputes the held-out fold's
instruments, and re-estimates the fold-interacted 2SLS. Under measurement
noise the non-affine stage-1 error is no longer negligible; the noise
benchmark reports the coverage this SE then gets.
"""

from __future__ import annotations

import numpy as np

from invariant_mr.inference.crossfit import fold_dummies, fold_interacted
from invariant_mr.errors import InputError
from invariant_mr.instruments.linear import LinearInvariantInstruments, one_blas_thread
from invariant_mr.estimators.iv import fit_kclass


def _dummies(codes: np.ndarray) -> np.ndarray:
    levels = np.unique(codes)
    return (codes[:, None] == levels[None, 1:]).astype(float)


def stage2_bootstrap(
    Z: np.ndarray,
    env_codes: np.ndarray,
    outcome: np.ndarray,
    exposure: np.ndarray,
    folds: np.ndarray,
    learners,
    n_draws: int,
    rng: np.random.Generator,
    *,
    covariates: np.ndarray | None = None,
    cov_type: str = "robust",
    kappa="tsls",
    n_components=None,
) -> np.ndarray:
    """Cross-fitted 2SLS estimates on `n_draws` resamples that refit stage 2 with stage 1 fixed.

    `folds` and `learners` are what `crossfit.crossfit_instruments` returns for
    fitted `PolynomialInvariantInstruments` (learner f was fitted on the rows
    with folds != f). `n_components` (one per learner) overrides each learner's own number of
    directions (the method's leak-bias rule may keep more than the exact invariance test did).
    Draws whose fit fails (e.g. a collinear resample) are NaN.
    """
    Z = np.asarray(Z, dtype=float)
    env_codes = np.asarray(env_codes)
    folds = np.asarray(folds)
    n = Z.shape[0]
    if not (env_codes.shape[0] == folds.shape[0] == n == len(outcome) == len(exposure)):
        raise InputError("Z, env_codes, folds, outcome and exposure must have the same number of rows")
    if len(learners) != int(folds.max()) + 1:
        raise InputError(f"{len(learners)} learners for {int(folds.max()) + 1} folds")
    if n_draws < 2:
        raise InputError(f"the bootstrap needs at least 2 draws, got {n_draws}")
    outcome, exposure = np.asarray(outcome, dtype=float), np.asarray(exposure, dtype=float)
    ks = [lr.n_components_ for lr in learners] if n_components is None else [int(k) for k in n_components]
    if len(ks) != len(learners):
        raise InputError(f"{len(ks)} component counts for {len(learners)} learners")
    codes = [lr.encode(Z) for lr in learners]  # every row's codes under each fold's encoder
    width = max(ks)
    cells = [np.flatnonzero((folds == f) & (env_codes == e)) for f in np.unique(folds) for e in np.unique(env_codes)]
    cells = [c for c in cells if c.size]
    draws = np.full(n_draws, np.nan)
    with one_blas_thread():  # small products: threads cost more than they give
        for b in range(n_draws):
            rows = np.concatenate([rng.choice(c, size=c.size, replace=True) for c in cells])
            fb, eb = folds[rows], env_codes[rows]
            inst = np.zeros((rows.size, width))
            try:
                for f, lr in enumerate(learners):
                    if ks[f] == 0:
                        continue
                    train, test = rows[fb != f], fb == f
                    stage2 = LinearInvariantInstruments(
                        n_components=ks[f], signal_rank=lr.latent_dim_, standardize=True
                    ).fit(codes[f][train], env_codes[train])
                    inst[test, : ks[f]] = stage2.transform(codes[f][rows[test]])
                controls = [_dummies(eb), fold_dummies(fb, eb)]
                if covariates is not None:
                    controls.append(np.asarray(covariates, dtype=float).reshape(n, -1)[rows])
                fit = fit_kclass(
                    outcome[rows], exposure[rows], fold_interacted(inst, fb), np.hstack(controls),
                    kappa=kappa, cov_type=cov_type,
                )  # fmt: skip
            except (InputError, np.linalg.LinAlgError):
                continue
            draws[b] = fit.estimate
    return draws


def bootstrap_se(draws: np.ndarray, alpha: float = 0.05) -> dict:
    """SE (SD of the finite draws) and percentile interval; None entries with fewer than 2 finite draws."""
    draws = np.asarray(draws, dtype=float)
    ok = draws[np.isfinite(draws)]
    if ok.size < 2:
        return {"se": None, "percentile_ci": None, "n_valid": int(ok.size)}
    lo, hi = np.quantile(ok, [alpha / 2, 1 - alpha / 2])
    return {"se": float(np.std(ok, ddof=1)), "percentile_ci": [float(lo), float(hi)], "n_valid": int(ok.size)}


__all__ = ["stage2_bootstrap", "bootstrap_se"]
