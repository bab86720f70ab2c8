"""Closed-form linear invariant instruments (METHOD.md section 5).

With linear mixing, or polynomial mixing with an invertible weight matrix,
every linear function of Z whose mean and covariance with Z are the same in
all environments is a function of the exogenous block W alone. Those
directions solve an eigenproblem built from per-environment moments, so they
need no training and one pass over the data.

Steps of `LinearInvariantInstruments.fit`:

1. Per-environment counts, sums and cross-products (`EnvironmentMoments`).
2. Signal subspace: eigenvectors of the total covariance whose eigenvalues
   stand out of a noise bulk. Pure-noise directions are trivially invariant
   but useless as instruments, so they are removed first. The covariance is
   first whitened by per-column noise variances, estimated iteratively
   (`noise_whitened_spectrum`), so that heteroskedastic noise (genotypes,
   standardised columns) forms one isotropic bulk. The rank rule then finds
   the largest set of trailing eigenvalues consistent with isotropic noise:
   the largest of them stays below the Tracy-Widom 99% quantile of the
   largest noise eigenvalue (Johnstone 2001), with the noise variance
   estimated by their mean. A matrix without a noise bulk keeps every
   direction.
3. Whitening by the pooled within-environment covariance in that subspace,
   so that every direction has unit within-environment variance.
4. Invariance matrix M = sum_e w_e [m_e m_e' + (S_e - I)(S_e - I)], with m_e
   the environment's whitened mean shift and S_e its whitened covariance;
   a'Ma = 0 exactly when a'Z has the same mean and the same covariance with
   every direction of Z in every environment. Its eigenvalues (ascending)
   are the invariance spectrum.
5. Number of components: sequential permutation test. For k = 1, 2, ... the
   statistic T_k (sum of the k smallest eigenvalues: the discrepancy of the
   k most invariant directions) is compared with the discrepancy of the same
   fixed directions when environment labels are permuted (every direction is
   then invariant); k grows while the test does not reject at level `alpha`.
   Holding the directions fixed ignores that they were chosen to look
   invariant, which errs towards keeping a direction; re-optimising them
   under each permutation errs the other way (it searches all r directions
   where the truth has fewer null ones) and dropped valid instruments, even
   all of them, about alpha of the time.
"""

from __future__ import annotations

import math
from typing import Hashable

import numpy as np
import scipy.linalg
from threadpoolctl import ThreadpoolController

from invariant_mr.errors import InputError
from invariant_mr.instruments.moments import EnvironmentMoments, block_rows_for, is_dask_array

class NoSignalError(InputError):
    """The instruments' covariance has no eigenvalue above the noise bulk."""


#: Relative eigenvalue below which a direction of Z is numerically absent.
_NUMERICAL_RANK_RTOL = 1e-10
#: Tracy-Widom (beta = 1) 99% quantile.
_TW1_Q99 = 2.0234


def tracy_widom_edge(n: int, m: int, q: float = _TW1_Q99) -> float:
    """Upper bound (mean + q SD, Johnstone 2001) of the largest eigenvalue of a
    sample covariance of m independent unit-variance noise variables from n rows."""
    a, b = np.sqrt(n - 0.5), np.sqrt(m - 0.5)
    mu = (a + b) ** 2
    sd = (a + b) * (1 / a + 1 / b) ** (1 / 3)
    return (mu + q * sd) / n


def signal_rank(eigenvalues_desc: np.ndarray, n: int) -> int:
    """Number of eigenvalues above the noise bulk (see the module docstring)."""
    lam = np.asarray(eigenvalues_desc, dtype=float)
    if lam.size == 0 or lam[0] <= 0:
        return 0
    lam = lam[lam > _NUMERICAL_RANK_RTOL * lam[0]]
    p = lam.size
    for m in range(p, 1, -1):  # size of the candidate noise set, largest first
        tail = lam[p - m :]
        if tail[0] <= tail.mean() * tracy_widom_edge(n, m):
            return p - m
    return p


_THREADPOOLS: ThreadpoolController | None = None
#: Below this size LAPACK runs on one thread anyway, and limiting costs more than the decomposition.
_SINGLE_THREAD_MIN_SIZE = 64


def one_blas_thread():
    """Context manager limiting BLAS to one thread.

    The controller is built once: `threadpool_limits()` rescans the loaded
    libraries on every call (about 1.5 ms, which dominated a bootstrap of
    small refits).
    """
    global _THREADPOOLS
    if _THREADPOOLS is None:
        _THREADPOOLS = ThreadpoolController()
    return _THREADPOOLS.limit(limits=1, user_api="blas")


def symmetric_eigh(S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of a symmetric matrix, on one BLAS thread.

    LAPACK's tridiagonal reduction is a chain of small level-2 BLAS calls;
    multithreaded BLAS slows it down (at p = 1000 on a busy 2-core machine:
    0.3 s on one thread against 0.9-6 s on two).
    """
    if S.shape[0] < _SINGLE_THREAD_MIN_SIZE:
        return scipy.linalg.eigh(S, driver="evd")
    with one_blas_thread():
        return scipy.linalg.eigh(S, driver="evd")


def noise_whitened_spectrum(C: np.ndarray, n: int, max_iter: int = 10):
    """Signal rank of a covariance with heteroskedastic noise.

    Genotype columns (and standardised mixtures) have a different noise
    variance per column, which smears the noise bulk and defeats an isotropic
    rank rule. So, as in heteroskedastic factor analysis, alternate between
    the rank rule on the noise-whitened covariance D^-1/2 C D^-1/2 and
    re-estimating the per-column noise variances D as the diagonal of C minus
    its low-rank signal part, until the rank is stable.

    Returns (rank, eigenvalues of the whitened covariance (descending),
    eigenvectors, noise variances D).
    """
    diag = np.clip(np.diag(C), 1e-300, None)
    noise = diag.copy()
    if diag.size < 2:
        # One column has no bulk to separate signal from noise in: it is its own signal
        # direction (the rank rule and the eigenvalue ratio below need two eigenvalues).
        d = 1 / np.sqrt(noise)
        evals, evecs = symmetric_eigh(C * np.outer(d, d))
        return int(evals[0] > 0), evals[::-1], evecs[:, ::-1], noise
    previous = None
    for iteration in range(max_iter):
        d = 1 / np.sqrt(noise)
        evals, evecs = symmetric_eigh(C * np.outer(d, d))
        evals, evecs = evals[::-1], evecs[:, ::-1]
        rank = signal_rank(evals, n)
        # A first rank of "everything" is what a smeared bulk gives too (at 150,000 x 1,000 genotypes
        # of three populations the raw rule kept all 1,000 directions): only stop on it after the
        # noise variances have been re-estimated once.
        if (rank >= evals.size and iteration > 0) or rank == previous:
            break
        if iteration == 0:
            # A smeared bulk makes the first rank far too large; start instead
            # from the eigenvalue-ratio estimate (Ahn & Horenstein 2013).
            kmax = max(1, min(rank, evals.size // 2))
            pos = evals[: kmax + 1] > 0
            ratios = evals[:kmax] / np.where(pos[1:], evals[1 : kmax + 1], np.inf)
            rank = int(np.argmax(ratios)) + 1
        previous = rank
        sigma2 = float(evals[rank:].mean())
        lowrank_w = (evecs[:, :rank] * (evals[:rank] - sigma2)) @ evecs[:, :rank].T
        signal_diag = np.diag(lowrank_w) * noise  # back to the original scale
        noise = np.clip(diag - signal_diag, 1e-3 * diag, None)
    return rank, evals, evecs, noise


def _sym_inv_sqrt(S: np.ndarray) -> np.ndarray:
    vals, vecs = symmetric_eigh(S)
    return (vecs / np.sqrt(vals)) @ vecs.T


def _invariance_matrix(means: np.ndarray, covs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum_e w_e [dm_e dm_e' + (S_e - S)(S_e - S)] for whitened per-env moments."""
    pooled_mean = weights @ means
    pooled_cov = np.tensordot(weights, covs, axes=1)
    M = np.zeros_like(pooled_cov)
    for w, m, S in zip(weights, means, covs):
        dm = m - pooled_mean
        dS = S - pooled_cov
        M += w * (np.outer(dm, dm) + dS @ dS)
    return (M + M.T) / 2


def permuted_invariance_discrepancies(
    X: np.ndarray, codes: np.ndarray, n_envs: int, n_permutations: int, rng: np.random.Generator
) -> np.ndarray:
    """Diagonal of the invariance matrix of X's columns under random relabellings of the environments.

    Returns (n_permutations, r): for each relabelling, the discrepancy a'Ma of
    each fixed direction (column of X).

    All permutations are evaluated together: per row block, one matrix product
    of the permutations' environment indicators with the rows' features
    [1, x, upper triangle of x x'] gives every permutation's per-environment
    counts, sums and cross-products. Many tiny products would otherwise be
    dominated by call overhead and BLAS thread start-up.
    """
    return relabelled_discrepancies(X, random_relabellings(codes, n_envs, n_permutations, rng), n_envs)


def random_relabellings(codes: np.ndarray, n_envs: int, n_permutations: int, rng: np.random.Generator) -> np.ndarray:
    """(n_permutations, n) uniformly random relabellings of `codes` that keep every environment's size.

    A relabelling is a random ordered subset of the rows cut into the first
    K-1 environments (the last gets the rest). `choice` draws that subset
    several times faster than a full permutation, and int8 labels keep the
    table small.
    """
    n = codes.size
    env_counts = np.bincount(codes, minlength=n_envs)
    cuts = np.concatenate([[0], np.cumsum(env_counts[:-1])])
    label_type = np.int8 if n_envs <= np.iinfo(np.int8).max else np.int16
    labels = np.full((n_permutations, n), n_envs - 1, dtype=label_type)
    for b in range(n_permutations):
        chosen = rng.choice(n, size=int(cuts[-1]), replace=False)
        for e in range(n_envs - 1):
            labels[b, chosen[cuts[e] : cuts[e + 1]]] = e
    return labels


def relabelled_discrepancies(X: np.ndarray, labels: np.ndarray, n_envs: int) -> np.ndarray:
    """(P, r): diagonal of the invariance matrix of X's columns under each row of `labels` (P, n)."""
    n_permutations, n = labels.shape
    r = X.shape[1]
    iu = np.triu_indices(r)
    n_feat = 1 + r + iu[0].size
    # Only the first K-1 environments' sums are accumulated; the last is the total minus them.
    head = n_envs - 1
    totals = np.zeros((n_permutations * head, n_feat))
    grand = np.zeros(n_feat)
    step = max(256, min(n, 2_000_000 // max(n_permutations * head, n_feat)))
    env_ids = np.arange(head, dtype=labels.dtype)
    for start in range(0, n, step):
        xb = X[start : start + step]
        feats = np.hstack([np.ones((xb.shape[0], 1)), xb, xb[:, iu[0]] * xb[:, iu[1]]])
        onehot = (labels[:, None, start : start + step] == env_ids[None, :, None]).reshape(-1, xb.shape[0])
        totals += onehot.astype(float) @ feats
        grand += feats.sum(axis=0)
    totals = totals.reshape(n_permutations, head, n_feat)
    totals = np.concatenate([totals, (grand - totals.sum(axis=1))[:, None, :]], axis=1)
    counts = totals[:, :, 0]
    means = totals[:, :, 1 : 1 + r] / counts[:, :, None]
    cross = np.zeros((n_permutations, n_envs, r, r))
    cross[:, :, iu[0], iu[1]] = totals[:, :, 1 + r :]
    cross[:, :, iu[1], iu[0]] = totals[:, :, 1 + r :]
    covs = cross / counts[:, :, None, None] - means[:, :, :, None] * means[:, :, None, :]
    weights = counts / counts.sum(axis=1, keepdims=True)
    pooled_mean = np.einsum("be,ber->br", weights, means)
    pooled_cov = np.einsum("be,beij->bij", weights, covs)
    dm = means - pooled_mean[:, None, :]
    dS = covs - pooled_cov[:, None, :, :]
    return np.einsum("be,bei->bi", weights, dm**2) + np.einsum("be,beik->bi", weights, dS**2)


class LinearInvariantInstruments:
    """Closed-form invariant linear instruments: `fit(Z, env)` then `transform(Z)`.

    Parameters
    ----------
    n_components : "auto" or int
        Number of invariant directions; "auto" uses the permutation test.
    signal_rank : "auto" or int
        Dimension of the signal subspace; "auto" uses the Tracy-Widom rule.
    standardize : bool
        Scale columns to unit pooled variance first (the genetics convention:
        every variant weighs the same).
    alpha : float
        Level of each sequential permutation test.
    n_permutations : int
    random_state : int, Generator or None

    Attributes (after fit)
    ----------------------
    components_ : (p, k) projection; transform(Z) = ((Z - mean_) / scale_) @ components_
    invariance_eigenvalues_ : the invariance spectrum (ascending), a diagnostic
    signal_eigenvalues_ : total-covariance spectrum (descending) of the scaled Z
    signal_rank_, n_components_, pvalues_ (per k), levels_
    """

    def __init__(
        self,
        n_components="auto",
        signal_rank="auto",
        standardize: bool = True,
        alpha: float = 0.05,
        n_permutations: int = 199,
        random_state=None,
    ):
        self.n_components = n_components
        self.signal_rank = signal_rank
        self.standardize = standardize
        self.alpha = alpha
        self.n_permutations = n_permutations
        self.random_state = random_state

    # ------------------------------------------------------------------ fit
    def fit(self, Z, env, exposure=None) -> "LinearInvariantInstruments":
        """Learn the invariant directions. `exposure` is accepted and ignored (no relevance step).

        `Z` may be a NumPy array or a dask array (out of core / distributed):
        the only full pass over it accumulates per-environment moments.
        """
        lazy = is_dask_array(Z)
        Z = Z if lazy else np.asarray(Z)
        if Z.ndim != 2:
            raise InputError(f"Z must be a 2-D matrix, got shape {Z.shape}")
        env = np.asarray(env, dtype=object)
        if env.shape[0] != Z.shape[0]:
            raise InputError(f"env has {env.shape[0]} labels for {Z.shape[0]} rows of Z")
        levels = tuple(sorted(set(env.tolist()), key=str))
        self._check_settings(levels)
        lookup: dict[Hashable, int] = {lv: i for i, lv in enumerate(levels)}
        codes = np.fromiter((lookup[e] for e in env), dtype=np.int64, count=env.shape[0])

        # A rough shift (the first row) keeps the uncentred cross-products well conditioned.
        shift = np.asarray(Z[0], dtype=float)
        if lazy:
            moments = EnvironmentMoments.from_dask(Z, codes, len(levels), shift=shift)
        else:
            moments = EnvironmentMoments.from_arrays(Z, codes, len(levels), shift=shift)
        return self._fit_moments(moments, codes, levels, lambda directions: self._project(Z, directions), shift)

    def _check_settings(self, levels) -> None:
        """What `fit` and `fit_moments` both need before any work: environments, level, permutations."""
        if len(levels) < 2:
            raise InputError("the invariant method needs at least 2 environments")
        if not 0 < self.alpha < 1:
            raise InputError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.n_components == "auto" and int(self.n_permutations) < math.ceil(1 / self.alpha) - 1:
            # The smallest permutation p-value is 1 / (B + 1): with fewer draws the test can never
            # reject, and every direction of the signal subspace would be kept as "invariant".
            raise InputError(
                f"n_permutations must be at least {math.ceil(1 / self.alpha) - 1} at alpha={self.alpha} "
                f"for the permutation test to be able to reject, got {self.n_permutations}"
            )

    def fit_moments(self, moments: EnvironmentMoments, env_codes, levels, project) -> "LinearInvariantInstruments":
        """Learn the directions from per-environment moments already accumulated (one pass elsewhere).

        `moments` are those of the rows of Z (e.g. `EnvironmentCrossProducts.to_moments()` of a
        streamed first pass), `env_codes` (n,) index `levels`, and `project(directions)` returns
        `transform`'s ((Z - mean_) / scale_) @ directions for every row, in order (e.g. by a
        streamed pass); it is called once, for the permutation test of `n_components="auto"`.
        Gives the same fit as `fit(Z, env)` up to rounding.
        """
        levels = tuple(levels)
        self._check_settings(levels)
        return self._fit_moments(moments, np.asarray(env_codes, dtype=np.int64), levels, project, None)

    def _fit_moments(self, moments, codes, levels, project, shift) -> "LinearInvariantInstruments":
        rng = np.random.default_rng(self.random_state) if not isinstance(
            self.random_state, np.random.Generator
        ) else self.random_state
        self.mean_ = moments.pooled_mean + (0.0 if shift is None else shift)
        total = moments.total_covariance
        scale = np.sqrt(np.clip(np.diag(total), 0, None)) if self.standardize else np.ones(total.shape[0])
        scale[scale == 0] = 1.0
        self.scale_ = scale
        total = total / np.outer(scale, scale)
        within = moments.within_covariance / np.outer(scale, scale)

        rank, evals, evecs, noise = noise_whitened_spectrum(total, moments.n)
        if self.signal_rank != "auto":
            rank = int(self.signal_rank)
        elif rank == 0:
            raise NoSignalError(
                "the instruments show no signal above the noise (every eigenvalue of their covariance "
                "lies in the noise bulk); set signal_rank to force a dimension"
            )
        if not 1 <= rank <= evals.size:
            raise InputError(f"signal_rank must be between 1 and {evals.size}, got {self.signal_rank}")
        self.signal_eigenvalues_ = evals
        self.noise_variances_ = noise
        self.signal_rank_ = rank
        U = evecs[:, :rank] / np.sqrt(noise)[:, None]  # signal directions in the scaled coordinates
        whiten = U @ _sym_inv_sqrt(U.T @ within @ U)  # (p, r): unit within-env variance

        means = (moments.means - moments.pooled_mean) / scale @ whiten
        covs = np.einsum("pi,kpq,qj->kij", whiten, moments.covariances / np.outer(scale, scale), whiten)
        M = _invariance_matrix(means, covs, moments.weights)
        inv_vals, inv_vecs = symmetric_eigh(M)
        self.invariance_eigenvalues_ = inv_vals
        directions = whiten @ inv_vecs  # (p, r), most invariant first

        if self.n_components == "auto":
            X = project(directions)
            self.pvalues_ = self._permutation_pvalues(X, codes, len(levels), inv_vals, rng)
            rejected = np.flatnonzero(self.pvalues_ <= self.alpha)
            k = int(rejected[0]) if rejected.size else rank
        else:
            k = int(self.n_components)
            if not 0 <= k <= rank:
                raise InputError(f"n_components must be between 0 and the signal rank {rank}, got {k}")
            self.pvalues_ = None
        self.n_components_ = k
        self.components_ = directions[:, :k]
        self.all_directions_ = directions
        self.levels_ = levels
        self.n_features_in_ = directions.shape[0]
        return self

    def _project(self, Z: np.ndarray, directions: np.ndarray) -> np.ndarray:
        """((Z - mean) / scale) @ directions, by row blocks so Z is never copied whole."""
        weights = directions / self.scale_[:, None]
        offset = self.mean_ @ weights
        if is_dask_array(Z):
            return np.asarray((Z.astype(float) @ weights - offset).compute())
        out = np.empty((Z.shape[0], directions.shape[1]))
        step = block_rows_for(Z.shape[1])
        for start in range(0, Z.shape[0], step):
            out[start : start + step] = np.asarray(Z[start : start + step], dtype=float) @ weights - offset
        return out

    def _permutation_pvalues(self, X, codes, n_envs, observed_eigs, rng) -> np.ndarray:
        """p-value for each k of the cumulative statistic T_k (see module docstring).

        X is already expressed in the invariant eigenbasis, so the permuted
        statistic uses the same whitening as the observed one.
        """
        observed = np.cumsum(observed_eigs)
        null = permuted_invariance_discrepancies(X, codes, n_envs, self.n_permutations, rng)
        exceed = (np.cumsum(null, axis=1) >= observed[None, :]).sum(axis=0)
        return (1 + exceed) / (1 + self.n_permutations)

    # ------------------------------------------------------------ transform
    def transform(self, Z) -> np.ndarray:
        if not hasattr(self, "components_"):
            raise RuntimeError("LinearInvariantInstruments is not fitted yet; call fit first")
        Z = Z if is_dask_array(Z) else np.asarray(Z)
        if Z.ndim != 2 or Z.shape[1] != self.n_features_in_:
            raise InputError(f"Z must have {self.n_features_in_} columns, got shape {Z.shape}")
        return self._project(Z, self.components_)

    def with_fixed_selection(self) -> "LinearInvariantInstruments":
        """An unfitted copy whose signal rank and number of components are the ones this fit chose.

        Resampling schemes refit with it: repeating the selection on every
        draw would add the variance of a choice the reported estimate did not make.
        """
        return LinearInvariantInstruments(
            n_components=self.n_components_, signal_rank=self.signal_rank_, standardize=self.standardize,
            alpha=self.alpha, n_permutations=self.n_permutations,
        )  # fmt: skip

    def fit_transform(self, Z, env, exposure=None) -> np.ndarray:
        return self.fit(Z, env, exposure).transform(Z)


__all__ = ["LinearInvariantInstruments", "NoSignalError", "signal_rank", "tracy_widom_edge"]
