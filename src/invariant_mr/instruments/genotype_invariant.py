"""Genotype-native invariant instruments: remove what shifts across environments, keep the rest.

Why not the closed form (`linear.py`)? In a genetic model (METHOD.md
notation) Z = 2 P'q + W: the confounded block V is ancestry, entering the
genotype through a few directions (the columns of P'), and the exogenous block
W is Mendelian segregation noise spread isotropically over *every* variant.
`LinearInvariantInstruments` keeps a high-variance signal subspace and looks
for invariant directions inside it; on genotypes that subspace holds only the
ancestry directions, all of which shift, so it finds nothing (abstains 20/20
on Balding-Nichols). Here the roles are turned round: the few *non-invariant*
directions are estimated and removed, and the whole remainder, the isotropic
bulk where W lives, is the instrument.

Steps of `GenotypeInvariantInstruments.fit(Z, env)`:

1. Genetics convention of per-variant scaling, per environment: each variant is
   centred and scaled to unit variance within each environment. Allele
   frequencies differ between populations, so under Hardy-Weinberg every
   variant's mean and variance 2p(1-p) differ by order F_ST; those marginal
   differences are removed here and do not count as non-invariance (the
   centring is what environment fixed effects do anyway).
2. Mean-shift directions: the between-environment differences of the variant
   means on the pooled scale, (mu_e - mu) / sd (at most K - 1 axes). These
   are the ancestry axes that separate the environments. Each kept axis u is
   removed as every environment's scaling sees it, (sd / sd_e) * u, so up to
   K (K - 1) directions: on Balding-Nichols data the pooled-scale axes alone
   left ancestry in the instruments (mean LIML error +0.021 on seeds 0-2, against
   -0.001 over seeds 0-5 with the rescaled copies; 3 x 3,000, 200 variants).
3. Covariance-shift directions: eigenvectors of
   M = sum_e w_e (C_e - C)^2, C_e the within-environment correlation matrix
   (after removing the mean-shift directions). a'Ma = 0 exactly when a'X has
   the same covariance with every variant in every environment, so its top
   eigenvectors are the directions whose within-environment covariance
   (ancestry variance, admixture LD, local structure) differs.
4. How many: parallel analysis (Horn 1965; Buja & Eyuboglu 1992) with the
   environment labels permuted (keeping their sizes): the j-th eigenvalue of
   each matrix is kept while it exceeds the (1 - alpha) quantile of the j-th
   eigenvalue under relabelling, where every direction is invariant by
   construction. Keeping a spurious direction costs one of m instruments;
   missing a real one leaves confounding, so the rule is the less
   conservative per-rank one.
5. Instruments: the per-environment standardised genotypes projected on the
   orthogonal complement of the removed directions, as an orthonormal basis
   of m - r columns.

Assumptions (METHOD.md terms): Z = A V + W with the confounded block V
entering through a low-dimensional set of directions whose mean or
within-environment covariance differs across environments (eta_e H differs,
so V shifts), and W (i) mean-independent of H and V, (ii) with the same
per-variant-standardised covariance in every environment. Confounding that
enters through directions with identical distributions in every environment
(the same assortative-mating strength everywhere, a dynastic effect of the
same size everywhere) is invisible to this and to every environment-based
method. Directions removed because their covariance shifts for reasons other
than confounding (e.g. assortative mating on the exposure itself) take their
relevance with them.

How it differs from adjusting for PCs (`tsls_pcs`): partialling k PC scores
out of Z is exactly the projection of Z on the complement of the top-k
eigenvectors of its covariance, the *top-variance* directions. This removes
the directions that *shift across environments*, chosen by a test, however
much or little variance they carry, and as many as the test finds (fine-scale
structure can need more than 10).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from invariant_mr.errors import InputError
from invariant_mr.instruments.linear import random_relabellings, symmetric_eigh


def _codes(env) -> tuple[np.ndarray, np.ndarray]:
    levels, codes = np.unique(np.asarray(env).astype(str), return_inverse=True)
    return levels, codes.astype(np.int64)


def _per_env_moments(Z: np.ndarray, codes: np.ndarray, n_envs: int):
    """Per-environment means (K, m), SDs (K, m) and correlation matrices (K, m, m)."""
    m = Z.shape[1]
    means = np.empty((n_envs, m))
    sds = np.empty((n_envs, m))
    corr = np.empty((n_envs, m, m))
    for e in range(n_envs):
        Ze = Z[codes == e]
        mu = Ze.mean(axis=0)
        Xe = Ze - mu
        sd = np.sqrt((Xe * Xe).mean(axis=0))
        safe = np.where(sd > 0, sd, 1.0)
        Xe /= safe
        means[e], sds[e] = mu, sd
        corr[e] = Xe.T @ Xe / Xe.shape[0]
    return means, sds, corr


def _orthonormal(A: np.ndarray, rtol: float = 1e-8) -> np.ndarray:
    """Orthonormal basis of the column span of A (numerically dependent columns dropped)."""
    u, sv, _ = np.linalg.svd(A, full_matrices=False)
    return u[:, sv > rtol * sv[0]] if sv.size and sv[0] > 0 else A[:, :0]


def _mean_shift_factor(means: np.ndarray, weights: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """A (K, m) with A'A the mean-shift matrix sum_e w_e dm_e dm_e' (dm_e: environment e's scaled mean shift)."""
    return np.sqrt(weights)[:, None] * ((means - weights @ means) / scale)


def _mean_shift_eigen(means: np.ndarray, weights: np.ndarray, scale: np.ndarray, k: int):
    """Top k eigenpairs of the mean-shift matrix, from its K x K twin A A' (it has rank K - 1 at most,
    so the m x m eigenproblem is never formed)."""
    A = _mean_shift_factor(means, weights, scale)
    vals, vecs = np.linalg.eigh(A @ A.T)
    vals, vecs = vals[::-1][:k], vecs[:, ::-1][:, :k]
    safe = np.sqrt(np.where(vals > 0, vals, 1.0))
    return np.maximum(vals, 0.0), A.T @ vecs / safe


def _cov_shift_matrix(corr: np.ndarray, weights: np.ndarray, U: np.ndarray | None) -> np.ndarray:
    """sum_e w_e (P D_e P)^2, D_e = C_e - pooled, P = I - U U' (U orthonormal, or None for P = I).

    P D P is formed as D - U(U'D) - (DU)U' + U(U'DU)U': O(m^2 r) instead of two m x m products."""
    pooled = np.tensordot(weights, corr, axes=1)
    M = np.zeros_like(pooled)
    for w, C in zip(weights, corr):
        D = C - pooled
        if U is not None and U.shape[1]:
            DU = D @ U
            D = D - U @ DU.T - DU @ U.T + U @ (U.T @ DU) @ U.T
        M += w * (D @ D)
    return (M + M.T) / 2


def _top_eigen(M: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    vals, vecs = symmetric_eigh(M)
    return vals[::-1][:k], vecs[:, ::-1][:, :k]


def _top_eigenvalues(M: np.ndarray, k: int) -> np.ndarray:
    """The k largest eigenvalues, descending (only these are computed: the relabelling null needs no vectors)."""
    m = M.shape[0]
    k = min(k, m)
    return scipy.linalg.eigh(M, eigvals_only=True, subset_by_index=[m - k, m - 1], driver="evr")[::-1]


def _relabelled_grams(X: np.ndarray, lab: np.ndarray, K: int, total: np.ndarray) -> np.ndarray:
    """Each relabelled group's Gram matrix / its size; the last from the total Gram minus the others
    (one m x m product fewer per relabelling).

    The relabelling null runs in single precision (X float32, `total` its Gram accumulated in float64,
    the grams returned as float32): its products are most of the method's cost, and the null is a
    Monte-Carlo quantile over a few dozen relabellings, whose sampling error is orders of magnitude
    above float32 rounding (relative 1e-7 per term). The observed statistics stay in float64."""
    grams = np.empty((K, X.shape[1], X.shape[1]), dtype=np.float32)
    rest = total.copy()
    for e in range(K - 1):
        Xe = X[lab == e]
        G = (Xe.T @ Xe).astype(np.float64)
        rest -= G
        grams[e] = G / Xe.shape[0]
    grams[K - 1] = rest / np.count_nonzero(lab == K - 1)
    return grams


def _parallel_rank(observed: np.ndarray, null: np.ndarray, alpha: float) -> int:
    """Leading eigenvalues above the (1 - alpha) quantile of the same-rank eigenvalue under relabelling."""
    cut = np.quantile(null, 1 - alpha, axis=0)
    above = observed > cut
    return int(np.argmin(above)) if not above.all() else int(above.size)


class GenotypeInvariantInstruments:
    """Remove the directions of the genotype that shift across environments: `fit(Z, env)`, `transform(Z, env)`.

    Parameters
    ----------
    n_removed : "auto" or int
        Number of covariance-shift directions to remove; "auto" uses parallel
        analysis over environment relabellings. The mean-shift directions
        (at most K - 1) are removed whenever they pass the same test.
    max_removed : int
        At most this many covariance-shift directions are tested (and removed).
    alpha : float
        Level of the parallel analysis.
    n_permutations : int
        Environment relabellings for the parallel analysis.
    random_state : int, Generator or None

    Attributes (after fit)
    ----------------------
    levels_ : environment labels (sorted)
    means_, scales_ : (K, m) per-environment means and SDs used by `transform`
    removed_ : (m, r) orthonormal removed directions (mean shifts first)
    components_ : (m, m - r) orthonormal basis of the kept complement
    n_mean_removed_, n_cov_removed_ : how many of each kind were removed
    mean_shift_eigenvalues_, cov_shift_eigenvalues_ : observed spectra (descending)
    cov_shift_null_quantiles_ : the parallel-analysis cut-offs
    """

    def __init__(self, n_removed="auto", max_removed: int = 50, alpha: float = 0.05, n_permutations: int = 49,
                 random_state=None):
        self.n_removed = n_removed
        self.max_removed = max_removed
        self.alpha = alpha
        self.n_permutations = n_permutations
        self.random_state = random_state

    def fit(self, Z, env) -> "GenotypeInvariantInstruments":
        Z = np.asarray(Z, dtype=float)
        if Z.ndim != 2 or Z.shape[1] < 2:
            raise InputError(f"genotypes must be an (n, m) matrix with m >= 2, got shape {Z.shape}")
        if not np.all(np.isfinite(Z)):
            raise InputError("genotypes contain missing or infinite values; impute or filter them first")
        levels, codes = _codes(env)
        if codes.size != Z.shape[0]:
            raise InputError(f"env has {codes.size} labels for {Z.shape[0]} rows")
        K, m = levels.size, Z.shape[1]
        if K < 2:
            raise InputError("invariant instruments need at least 2 environments")
        counts = np.bincount(codes, minlength=K)
        if counts.min() < 20:
            raise InputError(f"every environment needs at least 20 samples, the smallest has {counts.min()}")
        if not 0 < self.alpha < 1:
            raise InputError(f"alpha must be in (0, 1), got {self.alpha}")
        if int(self.n_permutations) < 19:
            raise InputError(f"n_permutations must be at least 19, got {self.n_permutations}")
        fixed = None if self.n_removed in (None, "auto") else int(self.n_removed)
        if fixed is not None and not 0 <= fixed < m - K:
            raise InputError(f"n_removed must be between 0 and {m - K - 1}, got {fixed}")
        max_cov = min(int(self.max_removed), m - K) if fixed is None else fixed
        rng = np.random.default_rng(self.random_state)

        weights = counts / counts.sum()
        pooled_sd = Z.std(axis=0)
        scale = np.where(pooled_sd > 0, pooled_sd, 1.0)
        means, sds, corr = _per_env_moments(Z, codes, K)
        k_mean = K - 1
        mean_vals, mean_vecs = _mean_shift_eigen(means, weights, scale, k_mean)

        # The relabelling null: each relabelling's spectra of both matrices, with the observed
        # mean-shift directions projected out of the covariance one exactly as in the observed fit.
        labels = random_relabellings(codes, K, int(self.n_permutations), rng)
        null_mean = np.empty((labels.shape[0], k_mean))
        for b, lab in enumerate(labels):
            mu_b = np.stack([Z[lab == e].mean(axis=0) for e in range(K)])
            null_mean[b] = _mean_shift_eigen(mu_b, weights, scale, k_mean)[0]
        n_mean = _parallel_rank(mean_vals, null_mean, self.alpha)
        U_mean = mean_vecs[:, :n_mean]
        if n_mean:
            # The instruments live in each environment's own scaling (step 1), where a shift axis u found on
            # the pooled scale reads (pooled sd / sd_e) * u: remove it as every environment sees it.
            safe_sd = np.where(sds > 0, sds, 1.0)
            U_mean = _orthonormal(np.hstack([(scale / safe_sd[e])[:, None] * U_mean for e in range(K)]))
            n_mean = U_mean.shape[1]

        cov_vals_all, cov_vecs_all = _top_eigen(_cov_shift_matrix(corr, weights, U_mean), max(max_cov, 1))
        if fixed is None:
            # The rows are relabelled *after* the per-environment standardisation: the marginal differences
            # (Hardy-Weinberg means and variances) are the nuisance this method ignores, so the null keeps
            # them removed and tests only the correlation structure. Relabelling raw genotypes instead would
            # mix populations and understate the noise of the per-environment correlation matrices (by about
            # 15% in the bulk at F_ST 0.1, which then removed 50 pure-noise directions).
            X = (Z - means[codes]) / np.where(sds > 0, sds, 1.0)[codes]
            X = X.astype(np.float32)
            total = (X.T @ X).astype(np.float64)
            w32, U32 = weights.astype(np.float32), U_mean.astype(np.float32)
            null_cov = np.empty((labels.shape[0], max(max_cov, 1)))
            for b, lab in enumerate(labels):
                corr_b = _relabelled_grams(X, lab, K, total)
                null_cov[b] = _top_eigenvalues(_cov_shift_matrix(corr_b, w32, U32), max(max_cov, 1))
            n_cov = _parallel_rank(cov_vals_all[:max_cov], null_cov[:, :max_cov], self.alpha) if max_cov else 0
            self.cov_shift_null_quantiles_ = np.quantile(null_cov, 1 - self.alpha, axis=0)
        else:
            n_cov = fixed
            self.cov_shift_null_quantiles_ = None
        U_cov = cov_vecs_all[:, :n_cov]
        if n_mean and n_cov:
            U_cov = U_cov - U_mean @ (U_mean.T @ U_cov)  # already in the complement up to rounding
        removed = np.hstack([U_mean, U_cov])
        if removed.shape[1]:
            removed, _ = np.linalg.qr(removed)
        self.levels_ = levels
        self.means_ = means
        self.scales_ = np.where(sds > 0, sds, 1.0)
        self.removed_ = removed
        self.components_ = scipy.linalg.null_space(removed.T) if removed.shape[1] else np.eye(m)
        self.n_mean_removed_ = n_mean
        self.n_cov_removed_ = n_cov
        self.mean_shift_eigenvalues_ = mean_vals
        self.cov_shift_eigenvalues_ = cov_vals_all
        return self

    def _standardised(self, Z, env) -> np.ndarray:
        if not hasattr(self, "components_"):
            raise InputError("GenotypeInvariantInstruments is not fitted; call fit(Z, env) first")
        Z = np.asarray(Z, dtype=float)
        if Z.ndim != 2 or Z.shape[1] != self.means_.shape[1]:
            raise InputError(f"expected {self.means_.shape[1]} variants, got shape {Z.shape}")
        labels = np.asarray(env).astype(str)
        idx = np.searchsorted(self.levels_, labels)
        idx = np.clip(idx, 0, self.levels_.size - 1)
        if not np.all(self.levels_[idx] == labels):
            unknown = sorted(set(labels.tolist()) - set(self.levels_.tolist()))
            raise InputError(f"environments not seen in fit: {', '.join(unknown[:5])}")
        return (Z - self.means_[idx]) / self.scales_[idx]

    def transform(self, Z, env) -> np.ndarray:
        """(n, m - r) instruments: the per-environment standardised genotypes on the kept complement."""
        return self._standardised(Z, env) @ self.components_

    def removed_scores(self, Z, env) -> np.ndarray:
        """(n, r) the removed, environment-varying component: what the diagnostics test the instruments against."""
        return self._standardised(Z, env) @ self.removed_

    def fit_transform(self, Z, env) -> np.ndarray:
        return self.fit(Z, env).transform(Z, env)


__all__ = ["GenotypeInvariantInstruments"]
