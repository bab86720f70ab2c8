"""Identify first, then select what is invariant (METHOD.md section 6).

If Z = M · monomials_d(V, W) with M invertible, then (V, W) is a *linear*
function of Z. So:

Stage 1 (identify). A linear encoder h = L z and a polynomial decoder
Z ≈ monomials_d(h) C. For a given L the best C is a ridge least-squares
solution, solved inside the loss (variable projection), so only L is
optimised (L-BFGS, several restarts: one PCA start, the rest random).
Polynomial decoders identify latents up to an affine map (Ahuja, Mahajan,
Wang & Bengio, ICML 2023), so the codes h are (V, W) up to an affine map
when the decoder class contains the truth. The degree, the latent dimension
and the restart are chosen by reconstruction error on a seeded held-out
split; no ground truth is used.

Stage 2 (select). `LinearInvariantInstruments` on the codes, with its signal
rank fixed to the code dimension (the codes are whitened, so their spectrum
is flat and carries no rank information). On affine latents this is the
linear case, where the closed form finds exactly the W block.

Measurement noise. Real measurements are never an exact polynomial, and
whitening all of Z divides by the square root of eigenvalues as small as
1e-7 of the largest (poly3), which turns 1% noise into codes that are all
noise. So stage 1 reconstructs in the noise-aware metric of the linear method
(columns divided by their noise SD from `noise_whitened_spectrum`: a Gaussian
likelihood under heteroskedastic column noise, and invariant to rescaling a
column), not in the whitened one: a near-null direction where noise
dominates costs what its variance is, almost nothing. The directions are not
cut by the rank rule: under polynomial mixing the smallest-variance
directions are the degree-1 monomials, the very latents stage 1 must read,
and without noise they can look like an isotropic bulk. (Only for more than
`max_target_dim` columns, e.g. genotype panels, is Z cut to its signal
subspace.) The encoder's input is whitened, which changes nothing but the
conditioning, since L absorbs any invertible map of its input. Measured
(docs/polynomial_method.md): poly2 with 1% noise stays at the oracle; at 5%
(poly2) or 1% (poly3) the latents are no longer a linear function of noisy Z
to any useful precision, and stage 2 then finds no invariant direction.

Model choice. The most flexible degree is fitted at latent dimensions 1, 2,
... (up to `max_latent_dim`; stopping early once reconstruction is exact);
the lower degrees are then fitted at the dimension chosen for it, from the
PCA start and the top degree's encoder (exact for them when the truth has the
lower degree). Held-out reconstruction error falls whenever a latent is
added, even a pure-noise one (the encoder reads the held-out row's noise and
the decoder echoes it back), so the rule is not "lowest held-out error": the
chosen model is the simplest (fewest monomials, then lowest degree) that no
more complex model improves on by a factor of `min_gain` (0.25: cutting its
held-out error to a quarter). A missing true latent or degree leaves a large
error that the right model removes (noise-free: 1e-2 down to 1e-12); latents
that only read noise shave off a part each (1% noise on poly2: 1.1e-3 with
the true 4 latents, 6.1e-4 with 5, 3.6e-4 with 6).

Denoising stage 1 (issue 19). A linear encoder cannot read latents that
noise swamps in Z's smallest-variance directions, however good the decoder.
When the chosen linear encoder does not reconstruct exactly, the projection
encoder of `manifold_projection` is tried: training rows' codes fitted jointly
with the decoder, every row encoded by projecting it onto the decoder's
surface. It replaces the linear encoder only when it cuts the held-out
reconstruction error to `denoise_gain` (0.5) of the linear one's, so
noise-free polynomial data (held-out error below `rtol`) keep the linear
encoder, its accuracy and its cost.

With the linear encoder everything downstream is linear in Z:
`transform(Z) = Z @ components_ + intercept_`. With the projection encoder
it is not, and `directions(Z)` / `transform(Z)` go through the codes.
"""

from __future__ import annotations

from typing import Hashable, Iterable

import numpy as np
from scipy import optimize

from invariant_mr.errors import InputError
from invariant_mr.instruments.manifold_projection import DecoderProjection, fit_decoder_projection
from invariant_mr.instruments.polynomial_decoder import (
    _derivative_terms,
    _monomial_rows,
    _monomials_np,
    _Stage1Problem,
    monomial_index,
    n_monomials,
)
from invariant_mr.instruments.linear import (
    LinearInvariantInstruments,
    NoSignalError,
    noise_whitened_spectrum,
    one_blas_thread,
)

#: A higher decoder degree for the projection encoder must reconstruct more held-out rows better (sign test z) ...
DEGREE_Z = 3.0
#: ... and to at most this share of the lower degree's.
DEGREE_GAIN = 0.9
#: The projection's latent search adds latents while each cuts the best held-out error so far below this share.
DIM_CONTINUE = 0.6
#: Directions of Z with a smaller share of the largest (noise-whitened) eigenvalue are numerically absent.
_PRESENT_RTOL = 1e-12


def _fit_decoder(X: np.ndarray, T: np.ndarray, L: np.ndarray, index, ridge: float):
    """(code mean, code whitening R, decoder C) for encoder L on rows (X, T)."""
    h = X @ L
    mean = h.mean(0)
    hc = h - mean
    R = np.linalg.cholesky(hc.T @ hc / h.shape[0])
    P = _monomials_np(np.linalg.solve(R, hc.T).T, index)
    C = np.linalg.solve(P.T @ P + ridge * h.shape[0] * np.eye(P.shape[1]), P.T @ T)
    return mean, R, C


def _reconstruction_error(X, T, L, mean, R, C, index) -> float:
    """Relative squared reconstruction error of rows (X, T) under a fitted encoder/decoder."""
    h = np.linalg.solve(R, (X @ L - mean).T).T
    resid = T - _monomials_np(h, index) @ C
    return float((resid * resid).sum() / (T * T).sum())


class PolynomialInvariantInstruments:
    """Two-stage invariant instruments for polynomial mixing: `fit(Z, env)` then `transform(Z)`.

    Parameters
    ----------
    degrees : iterable of int
        Decoder degrees to try (1 = linear: a rank-k PCA, no optimisation).
    latent_dims : "auto", int or iterable of int
        Latent dimensions to try; "auto" tries 1, 2, ... up to `max_latent_dim`
        (and the dimension of Z), stopping early only at an exact reconstruction.
    max_latent_dim : int
    n_restarts : int
        Starts per (degree, dimension) at the top degree: one PCA start and n_restarts - 1 random
        ones (lower degrees: the PCA start and the top degree's encoder).
    ridge : float
        Ridge of the decoder solve, relative to n (the codes are whitened, so monomials are O(1)).
    holdout : float
        Share of rows held out for choosing degree, dimension and restart.
    min_gain : float
        A model is good enough when no more complex one (more monomials) has a held-out error
        below min_gain times its own; the simplest good-enough model is chosen.
    rtol : float
        Held-out relative error counted as exact reconstruction (always good enough).
    scan_iter, max_iter : int
        L-BFGS iterations per start, and in all for the best start of each (degree, dimension). The loss is badly conditioned near the truth (poly3 needs
        directions of Z with 1e-9 of the largest variance): starts that look stuck in different
        local minima after 400 iterations all reach the global one after 500-1100.
    rescue_below : float
        When k latents reconstruct exactly and k - 1 reach a held-out error below this, k - 1 is
        refitted from projections of the k-latent encoder (a rescue from a shared local minimum).
    scan_rows : int or None
        Training rows used while searching degree, dimension and restart (None: all); the chosen
        encoder is then refined on all rows.
    max_target_dim : int
        Directions of Z that stage 1 reads and reconstructs: all numerically present ones up to
        this many; beyond it (genotype panels), the signal subspace of the rank rule.
    denoise : bool
        Try the denoising projection encoder (`manifold_projection`) when the chosen linear encoder does
        not reconstruct exactly: every training row's code is fitted jointly with the decoder, and
        rows are encoded by projecting them onto the decoder's surface. Tried at the chosen latent
        dimension for every degree above 1; a higher degree is kept when it clearly beats a lower one on the same held-out rows.
    denoise_iter : int
        L-BFGS iterations of the joint fit of codes and decoder.
    denoise_gain : float
        The projection encoder replaces the linear one only if its held-out error is below this share
        of the linear encoder's (both scored on the same held-out rows).
    n_components, alpha, n_permutations : passed to stage 2 (`LinearInvariantInstruments`).
    random_state : int, Generator or None

    Attributes (after fit)
    ----------------------
    degree_, latent_dim_, restart_ : the chosen stage-1 model
    selection_ : list of dicts, one per (degree, latent_dim, restart) tried, with training and
        held-out relative reconstruction errors and which one was chosen
    heldout_error_ : held-out relative error of the chosen model
    signal_rank_ : signal rank of Z by the noise-aware rule (used only when Z has more than max_target_dim columns)
    target_dim_ : directions of Z that stage 1 reads and reconstructs
    noise_variances_ : per-column noise variances of Z (stage-1 metric)
    stage1_encoder_ : "linear" or "projection" (the denoising encoder, `manifold_projection`)
    encoder_, encoder_offset_ : linear codes Z @ encoder_ + encoder_offset_; with the linear encoder these are
        the codes (whitened: mean 0, covariance I), with the projection encoder its starting point
    projection_ : the fitted `DecoderProjection` (None with the linear encoder)
    decoder_ : (monomials, target_dim_) coefficients reconstructing the signal coordinates
    stage2_ : the fitted `LinearInvariantInstruments` on the codes
    n_components_, invariance_eigenvalues_, pvalues_ : from stage 2
    components_, intercept_ : instruments = Z @ components_ + intercept_
    code_directions_, code_intercept_ : every stage-2 direction on the codes, most invariant first:
        `directions(Z)` = encode(Z) @ code_directions_ + code_intercept_
    all_directions_, all_intercept_ : the same in Z coordinates, Z @ all_directions_ + all_intercept_ (components_
        and intercept_ are its first n_components_); None with the projection encoder, which is not linear in Z
    levels_, n_features_in_
    """

    def __init__(
        self,
        degrees: Iterable[int] = (1, 2, 3),
        latent_dims="auto",
        max_latent_dim: int = 6,
        n_restarts: int = 4,
        ridge: float = 1e-8,
        holdout: float = 0.2,
        min_gain: float = 0.25,
        rtol: float = 1e-6,
        max_iter: int = 1500,
        scan_iter: int = 300,
        rescue_below: float = 1e-2,
        scan_rows: int | None = 2000,
        max_target_dim: int = 200,
        denoise: bool = True,
        denoise_iter: int = 1000,
        denoise_gain: float = 0.5,
        n_components="auto",
        alpha: float = 0.05,
        n_permutations: int = 199,
        random_state=None,
    ):
        self.degrees = degrees
        self.latent_dims = latent_dims
        self.max_latent_dim = max_latent_dim
        self.n_restarts = n_restarts
        self.ridge = ridge
        self.holdout = holdout
        self.min_gain = min_gain
        self.rtol = rtol
        self.max_iter = max_iter
        self.scan_iter = scan_iter
        self.rescue_below = rescue_below
        self.scan_rows = scan_rows
        self.max_target_dim = max_target_dim
        self.denoise = denoise
        self.denoise_iter = denoise_iter
        self.denoise_gain = denoise_gain
        self.n_components = n_components
        self.alpha = alpha
        self.n_permutations = n_permutations
        self.random_state = random_state

    # ------------------------------------------------------------ validation
    def _check_params(self) -> tuple[list[int], list[int] | None]:
        try:
            degrees = sorted({int(d) for d in self.degrees})
        except (TypeError, ValueError):
            raise InputError(f"degrees must be integers, got {self.degrees!r}") from None
        if not degrees or degrees[0] < 1:
            raise InputError(f"degrees must be positive integers, got {self.degrees!r}")
        if self.latent_dims == "auto":
            dims = None
        else:
            raw = [self.latent_dims] if np.isscalar(self.latent_dims) else list(self.latent_dims)
            try:
                dims = sorted({int(k) for k in raw})
            except (TypeError, ValueError):
                raise InputError(f"latent_dims must be 'auto' or integers, got {self.latent_dims!r}") from None
            if not dims or dims[0] < 1:
                raise InputError(f"latent_dims must be positive, got {self.latent_dims!r}")
        if int(self.max_latent_dim) < 1:
            raise InputError(f"max_latent_dim must be at least 1, got {self.max_latent_dim}")
        if int(self.n_restarts) < 1:
            raise InputError(f"n_restarts must be at least 1, got {self.n_restarts}")
        if not 0 < self.holdout < 1:
            raise InputError(f"holdout must be in (0, 1), got {self.holdout}")
        if not self.ridge >= 0:
            raise InputError(f"ridge must be non-negative, got {self.ridge}")
        if not 0 < self.alpha < 1:
            raise InputError(f"alpha must be in (0, 1), got {self.alpha}")
        return degrees, dims

    # ------------------------------------------------------------------ fit
    def fit(self, Z, env, exposure=None) -> "PolynomialInvariantInstruments":
        """Learn codes (stage 1) and their invariant directions (stage 2). `exposure` is ignored.

        On one BLAS thread: stage 1 is thousands of L-BFGS steps, each a chain of small products
        ((rows x 34) by (34 x k)), where a second BLAS thread only adds hand-offs. On a busy machine
        the waiting threads spin: one fold of poly3 K = 2 (3,000 rows) took 7.5 s of CPU on one
        thread and did not finish in 300 s on OpenBLAS's default two (issue 19: the 1,325 s run).
        """
        with one_blas_thread():
            return self._fit(Z, env)

    def _fit(self, Z, env) -> "PolynomialInvariantInstruments":
        degrees, dims = self._check_params()
        try:
            Z = np.asarray(Z, dtype=float)
        except (TypeError, ValueError):
            raise InputError("Z must be a numeric matrix") from None
        if Z.ndim != 2:
            raise InputError(f"Z must be a 2-D matrix, got shape {Z.shape}")
        if not np.isfinite(Z).all():
            raise InputError("Z has missing or infinite values")
        env = np.asarray(env, dtype=object)
        if env.ndim != 1 or env.shape[0] != Z.shape[0]:
            raise InputError(f"env has {env.shape[0]} labels for {Z.shape[0]} rows of Z")
        levels: tuple[Hashable, ...] = tuple(sorted(set(env.tolist()), key=str))
        if len(levels) < 2:
            raise InputError("the invariant method needs at least 2 environments")
        n, p = Z.shape
        if n < 20:
            raise InputError(f"too few rows ({n}) for a held-out split")
        rng = (
            self.random_state
            if isinstance(self.random_state, np.random.Generator)
            else np.random.default_rng(self.random_state)
        )

        # Signal subspace in the noise-aware metric (module docstring).
        mean = Z.mean(0)
        Zc = Z - mean
        cov = Zc.T @ Zc / n
        if np.any(np.diag(cov) <= 0):
            raise InputError("Z has a constant column; drop it first")
        rank, evals, evecs, noise = noise_whitened_spectrum(cov, n)
        if rank == 0:
            raise NoSignalError("Z shows no signal above the noise bulk")
        # Under polynomial mixing the smallest-variance directions are the degree-1 monomials,
        # the very latents stage 1 must read, and without noise they can look like an isotropic
        # bulk to the rank rule. So every numerically present direction stays in the encoder's
        # input and the decoder's target (up to `max_target_dim`); the noise-aware metric, not a
        # cut, keeps noise-dominated directions from dominating the loss.
        present = int((evals > _PRESENT_RTOL * evals[0]).sum())
        dim = present if present <= int(self.max_target_dim) else max(1, min(rank, int(self.max_target_dim)))
        evals_r = evals[:dim]
        to_target = evecs[:, :dim] / np.sqrt(noise)[:, None]  # (p, dim): T = Zc @ to_target
        to_input = to_target / np.sqrt(evals_r)  # X = Zc @ to_input: unit variance (conditioning only)
        X, T = Zc @ to_input, Zc @ to_target

        order = rng.permutation(n)
        n_val = max(2, int(round(self.holdout * n)))
        val, train = order[:n_val], order[n_val:]
        if self.scan_rows is not None and train.size > int(self.scan_rows):
            scan = train[: int(self.scan_rows)]  # model search on a subsample; the chosen one is refined on all rows
        else:
            scan = train
        max_dim = min(int(self.max_latent_dim), dim)
        candidates = dims if dims is not None else list(range(1, max_dim + 1))
        candidates = [k for k in candidates if k <= dim]
        if not candidates:
            raise InputError(f"every latent dimension asked for exceeds the dimension of Z's signal ({dim})")

        # The most flexible decoder finds the latent dimension; lower degrees are then tried at it.
        table: list[dict] = []
        best_L: dict[tuple[int, int], np.ndarray] = {}
        errors: dict[tuple[int, int], float] = {}

        def run(degree, k, warm=None, extra_starts=(), random_starts=True, full=False):
            rows, L = self._fit_one(X, T, scan, val, k, degree, rng, warm, extra_starts, random_starts, full)
            table.extend(rows)
            err = min(r["heldout_error"] for r in rows)
            if (degree, k) not in errors or err < errors[(degree, k)]:
                best_L[(degree, k)], errors[(degree, k)] = L, err
            return err

        top = degrees[-1]
        for k in candidates:
            if run(top, k) <= self.rtol and dims is None:
                break  # exact reconstruction: more latents cannot help
        def good_enough(key) -> bool:
            """No more complex model (more monomials) cuts this one's held-out error by `min_gain`."""
            err = errors[key]
            size = n_monomials(key[1], key[0])
            return err <= self.rtol or all(
                e >= self.min_gain * err for other, e in errors.items() if n_monomials(other[1], other[0]) > size
            )

        def simplest_good(keys):
            keys = [key for key in keys if good_enough(key)]
            return min(keys, key=lambda key: (n_monomials(key[1], key[0]), key[0], key[1]))

        def top_choice() -> int:
            return simplest_good([key for key in errors if key[0] == top])[1]

        # Rescue pass: all starts at the true dimension can fall into one local minimum, and one
        # more latent then fits exactly. An exact encoder with one latent too many contains the
        # latents, and projections of it onto one code fewer, run to `max_iter`, reach the global
        # minimum where random starts mostly do not (poly3-normal, K = 3, seed 1: 3 of 4 against
        # 1 of 6). Tried only when k latents are exact and k - 1 come close (below
        # `rescue_below`): a missing true latent costs far more than that.
        rescued: set[int] = set()
        while dims is None:
            k = top_choice()
            if (top, k - 1) not in errors or k in rescued or errors[(top, k)] > self.rtol:
                break
            if errors[(top, k - 1)] > self.rescue_below:
                break
            rescued.add(k)
            L_k = best_L[(top, k)]
            # random projections and each code left out in turn
            projections = [L_k @ rng.standard_normal((k, k - 1)) for _ in range(int(self.n_restarts))]
            projections += [np.delete(L_k, j, axis=1) for j in range(k)]
            run(top, k - 1, extra_starts=projections, random_starts=False, full=True)
            if top_choice() == k:
                break
        k_top = top_choice()
        for degree in degrees[:-1]:
            # From the PCA start and the top degree's encoder: when the truth has the lower degree,
            # that encoder is already exact for it, and degree-2 losses have local minima.
            run(degree, k_top, warm=best_L[(top, k_top)], random_starts=False)

        degree, k = simplest_good(list(errors))
        chosen = min(
            (r for r in table if (r["degree"], r["latent_dim"]) == (degree, k)), key=lambda r: r["heldout_error"]
        )
        for r in table:
            r["chosen"] = r is chosen
            r.setdefault("encoder", "linear")
        projection = self._denoise(X, T, train, val, k, degrees, best_L, errors[(degree, k)], table)
        if projection is not None:
            degree, k = projection[0].degree, projection[1]["latent_dim"]
            chosen["chosen"] = False
            chosen = projection[1]
            chosen["chosen"] = True
        L = best_L[(degree, k)] if projection is None else projection[2]

        self.mean_ = mean
        self._to_target = to_target
        if projection is None:
            # Refine the chosen encoder on all rows (warm start: a few iterations).
            if degree > 1:
                L = self._optimise(X, T, L, k, degree, max_iter=max(20, int(self.max_iter) // 4))
            index = monomial_index(k, degree)
            code_mean, R, C = _fit_decoder(X, T, L, index, self.ridge)
            # h = (X L - code_mean) R^-T with X = (Z - mean) @ to_input: one affine map of Z.
            encoder = to_input @ L @ np.linalg.inv(R).T
            self.encoder_ = encoder
            self.encoder_offset_ = -mean @ encoder - code_mean @ np.linalg.inv(R).T
            self.decoder_ = C
            self.projection_ = None
        else:
            # The projection's start map was fitted on the raw linear codes X L (h_lin below).
            self.encoder_ = to_input @ L
            self.encoder_offset_ = -mean @ self.encoder_
            self.projection_ = projection[0]
            self.decoder_ = projection[0].decoder
        self.stage1_encoder_ = "linear" if projection is None else "projection"
        self.degree_, self.latent_dim_, self.restart_ = degree, k, chosen["restart"]
        self.selection_ = table
        self.heldout_error_ = chosen["heldout_error"]
        self.signal_rank_ = rank
        self.target_dim_ = dim
        self.noise_variances_ = noise
        self.signal_eigenvalues_ = evals
        self.n_features_in_ = p
        self.levels_ = levels

        codes = self._codes(Z)
        stage2 = LinearInvariantInstruments(
            n_components=self.n_components,
            signal_rank=k,
            standardize=True,
            alpha=self.alpha,
            n_permutations=self.n_permutations,
            random_state=rng,
        ).fit(codes, env)
        self.stage2_ = stage2
        self.n_components_ = stage2.n_components_
        self.invariance_eigenvalues_ = stage2.invariance_eigenvalues_
        self.pvalues_ = stage2.pvalues_
        weights = stage2.all_directions_ / stage2.scale_[:, None]
        self.code_directions_ = weights
        self.code_intercept_ = -stage2.mean_ @ weights
        if projection is None:
            self.all_directions_ = self.encoder_ @ weights
            self.components_ = self.all_directions_[:, : self.n_components_]
            # transform = (codes - stage2.mean_) @ weights, with codes = Z @ encoder + offset.
            self.all_intercept_ = (self.encoder_offset_ - stage2.mean_) @ weights
            self.intercept_ = self.all_intercept_[: self.n_components_]
        else:  # not a linear map of Z: only code_directions_ describe the instruments
            self.all_directions_ = self.all_intercept_ = self.components_ = self.intercept_ = None
        return self

    def _denoise(self, X, T, train, val, k_linear, degrees, best_L, linear_error, table):
        """(projection, its selection row, its linear start encoder L) when the denoising encoder clearly beats the linear one, else None.

        Skipped when the linear encoder reconstructs exactly (noise-free polynomial mixing keeps its
        accuracy and its cost) or denoising is off. Under noise the linear search can miss a latent
        (poly3, 2% noise, 1,500 rows: 3 latents chosen, held-out error 3.8e-2 where 4 projected
        latents reach 6.7e-4), so the latent dimension is searched again with the projection at the
        top degree, forward from one below the linear choice while each latent cuts the error below
        DIM_CONTINUE of the best so far, and chosen by the `min_gain` rule (an extra latent that only
        reads noise shaves 20-45% off, a missing one costs 50-100 times). Lower
        degrees are then tried at that dimension; a higher degree is kept only when it clearly
        reconstructs the same held-out rows better (DEGREE_Z, DEGREE_GAIN). The result must cut the
        linear encoder's held-out error to `denoise_gain`.
        """
        top = degrees[-1]
        if not self.denoise or linear_error <= self.rtol or top < 2:
            return None
        fits: dict[tuple[int, int], tuple] = {}

        def fit(degree, k):
            L = best_L.get((degree, k), best_L.get((top, k)))
            try:
                fitted, train_err, val_rows = fit_decoder_projection(
                    X @ L, T, train, val, degree, ridge=self.ridge, max_iter=int(self.denoise_iter)
                )
            except np.linalg.LinAlgError:  # collapsed codes: this projection failed
                return None
            if not np.all(np.isfinite(val_rows)):
                return None
            row = {
                "degree": degree, "latent_dim": k, "restart": 0, "n_monomials": n_monomials(k, degree),
                "train_error": train_err, "heldout_error": float(val_rows.mean()), "polished": False,
                "encoder": "projection", "chosen": False,
            }  # fmt: skip
            table.append(row)
            fits[(degree, k)] = (fitted, row, val_rows, L)
            return row["heldout_error"]

        available = sorted(k for (d, k) in best_L if d == top)
        best_err = None
        for k in [k for k in available if k >= k_linear - 1]:
            err = fit(top, k)
            if err is None:
                continue
            if best_err is not None and k > k_linear and err > DIM_CONTINUE * best_err:
                break  # the error has stopped falling fast: more latents only read noise
            best_err = err if best_err is None else min(best_err, err)
        errs = {k: fits[(top, k)][1]["heldout_error"] for (d, k) in fits if d == top}
        if not errs:
            return None
        # The simplest dimension that no larger one cuts to `min_gain`: a missing pair of latents can
        # look like a small gain for the first of them (0.040 -> 0.020 -> 0.0006 for 2, 3, 4 latents).
        current = min(k for k, e in errs.items() if all(e2 >= self.min_gain * e for k2, e2 in errs.items() if k2 > k))
        k = current
        for degree in degrees[:-1]:
            if degree >= 2:
                fit(degree, k)
        # Degree: a higher one must beat the current choice on the same held-out rows, on more rows than
        # chance allows (sign test, z above DEGREE_Z) and in total by DEGREE_GAIN. Not `min_gain`: under noise every model's error has the noise floor in
        # it, so the right degree cannot cut the wrong one's to a quarter (poly3 with 5% noise: 2.6e-3
        # against 8.3e-3), while a needless degree gains nothing on held-out rows.
        order = sorted(d for (d, kk) in fits if kk == k)
        best = order[0]
        for degree in order[1:]:
            # Sign test: per-row errors are heavy-tailed (a few rows far off the surface), which swamps a mean's z.
            diff = fits[(best, k)][2] - fits[(degree, k)][2]
            z = (2.0 * (diff > 0).sum() - diff.size) / np.sqrt(diff.size)
            if z > DEGREE_Z and fits[(degree, k)][1]["heldout_error"] < DEGREE_GAIN * fits[(best, k)][1]["heldout_error"]:
                best = degree
        fitted, row, _, L = fits[(best, k)]
        return (fitted, row, L) if row["heldout_error"] < float(self.denoise_gain) * linear_error else None

    def _fit_one(
        self, X, T, train, val, k, degree, rng, warm=None, extra_starts=(), random_starts=True, full=False
    ) -> tuple[list[dict], np.ndarray]:
        """Every start of one (degree, k): rows of the selection table and the best encoder.

        Starts: the PCA start (the k leading signal directions), `warm` and `extra_starts` if given,
        then n_restarts - 1 random ones (unless `random_starts` is False). Each runs `scan_iter`
        (`max_iter` if `full`)
        L-BFGS iterations; the start with the lowest held-out error is then run on to `max_iter`
        (the loss is badly conditioned near the truth, so the last stretch is slow, and paying it
        once per (degree, k) instead of once per start halves the cost).
        """
        index = monomial_index(k, degree)
        r = X.shape[1]
        starts = [np.eye(r, k)]
        if degree > 1:
            starts += ([warm] if warm is not None else []) + list(extra_starts)
            if random_starts:
                starts += [rng.standard_normal((r, k)) for _ in range(int(self.n_restarts) - 1)]
        scan_iter = int(self.max_iter) if full else min(int(self.scan_iter), int(self.max_iter))
        results = []
        for L0 in starts:
            L = L0 if degree == 1 else self._optimise(X[train], T[train], L0, k, degree, scan_iter)
            results.append((L, *self._errors(X, T, train, val, L, index)))
        best = int(np.argmin([val_err for _, _, val_err in results]))
        if degree > 1 and int(self.max_iter) > scan_iter:
            L = self._optimise(X[train], T[train], results[best][0], k, degree, int(self.max_iter) - scan_iter)
            polished = (L, *self._errors(X, T, train, val, L, index))
            if polished[2] <= results[best][2]:
                results[best] = polished
        rows = [{
            "degree": degree, "latent_dim": k, "restart": i, "n_monomials": len(index),
            "train_error": train_err, "heldout_error": val_err, "polished": i == best and degree > 1,
        } for i, (_, train_err, val_err) in enumerate(results)]  # fmt: skip
        return rows, results[best][0]

    def _errors(self, X, T, train, val, L, index) -> tuple[float, float]:
        """(training, held-out) relative reconstruction errors of encoder L with its decoder fitted on `train`."""
        try:
            mean, R, C = _fit_decoder(X[train], T[train], L, index, self.ridge)
            return (
                _reconstruction_error(X[train], T[train], L, mean, R, C, index),
                _reconstruction_error(X[val], T[val], L, mean, R, C, index),
            )
        except np.linalg.LinAlgError:  # a collapsed encoder: this start failed
            return np.inf, np.inf

    def _optimise(self, X, T, L0, k, degree, max_iter) -> np.ndarray:
        problem = _Stage1Problem(X, T, k, degree, self.ridge)
        res = optimize.minimize(
            problem.value_and_grad, L0.ravel(), jac=True, method="L-BFGS-B",
            options={"maxiter": max_iter, "ftol": 1e-13, "gtol": 1e-9},
        )  # fmt: skip
        return res.x.reshape(-1, k)

    # ------------------------------------------------------------ transform
    def _check_fitted_input(self, Z) -> np.ndarray:
        if not hasattr(self, "stage2_"):
            raise RuntimeError("PolynomialInvariantInstruments is not fitted yet; call fit first")
        Z = np.asarray(Z, dtype=float)
        if Z.ndim != 2 or Z.shape[1] != self.n_features_in_:
            raise InputError(f"Z must have {self.n_features_in_} columns, got shape {Z.shape}")
        return Z

    def _codes(self, Z: np.ndarray) -> np.ndarray:
        h_lin = Z @ self.encoder_ + self.encoder_offset_
        if self.projection_ is None:
            return h_lin
        return self.projection_.codes(h_lin, (Z - self.mean_) @ self._to_target)

    def encode(self, Z) -> np.ndarray:
        """Stage-1 codes h (n, latent_dim_): the latents up to an affine map when the decoder class fits."""
        return self._codes(self._check_fitted_input(Z))

    def reconstruction_error(self, Z) -> float:
        """Relative squared error of the decoder on Z's signal coordinates (a held-out check on new rows)."""
        Z = self._check_fitted_input(Z)
        T = (Z - self.mean_) @ self._to_target
        resid = T - _monomials_np(self._codes(Z), monomial_index(self.latent_dim_, self.degree_)) @ self.decoder_
        return float((resid * resid).sum() / (T * T).sum())

    def directions(self, Z) -> np.ndarray:
        """Every stage-2 direction (n, latent_dim_), most invariant first; `transform` is its first n_components_."""
        Z = self._check_fitted_input(Z)
        if self.projection_ is None:
            return Z @ self.all_directions_ + self.all_intercept_
        return self._codes(Z) @ self.code_directions_ + self.code_intercept_

    def transform(self, Z) -> np.ndarray:
        """Invariant instruments (n, n_components_)."""
        Z = self._check_fitted_input(Z)
        if self.projection_ is None:
            return Z @ self.components_ + self.intercept_
        return self.directions(Z)[:, : self.n_components_]

    def fit_transform(self, Z, env, exposure=None) -> np.ndarray:
        return self.fit(Z, env, exposure).transform(Z)


__all__ = ["PolynomialInvariantInstruments", "monomial_index", "n_monomials"]
