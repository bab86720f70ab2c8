"""Assumption diagnostics for a set of instruments (learned or not).

Each check returns an `invariant_mr.results.Diagnostic` with a statistic, a
p-value and a plain-language flag:

* `invariance_mmd`: are the instruments identically distributed in every
  environment? Permutation test of the maximum mean discrepancy (MMD)
  between environments. A valid instrument W has the same distribution in
  every environment; the confounded part of the genotype does not.
* `independence_hsic`: are the instruments independent of the
  environment-varying component? Permutation test of the Hilbert-Schmidt
  independence criterion (HSIC). The *environment-varying component* is
  whatever the caller passes as `complement` (e.g. the learned hV of the
  neural method); by default it is the genotype projected off the
  instruments, i.e. the residual of a linear regression of Z on the
  instruments. When the instruments recover the invariant block W of a
  linear mixing Z = A [V, W], that residual is A_V (V - mean), which is
  independent of W exactly when the instruments are valid.
* `overidentification_j`: Sargan (homoskedastic) or Hansen (robust) J test
  that all instruments give the same causal effect.
* `first_stage_f`: instrument strength per scope (pooled and each
  environment), flagged below the usual F = 10.

Kernels are used through explicit finite feature maps so that the
permutation null is cheap: the default polynomial kernel (x'y + 1)^2 (the
MMD/HSIC default of the method) has an exact feature map of dimension
O(d^2); for wide inputs a Gaussian kernel is approximated by seeded random
Fourier features with the median-heuristic bandwidth. With features F, the
(biased) MMD^2 between two environments is ||mean F_e - mean F_e'||^2 and
HSIC is ||cov(F, G)||_F^2, so each permutation costs one pass over the data.
All p-values are (1 + #{null >= observed}) / (1 + n_permutations).

Related samples (`clusters`, e.g. family IDs): J and F use cluster-robust
covariances (cov_type "cluster"), and the permutation tests permute whole
clusters (see `_cluster_blocks`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy import linalg as sla
from scipy import stats

from invariant_mr.data import MRData, exogenous_controls, genotype_calls
from invariant_mr.errors import InputError
from invariant_mr.estimators.genotype_pcs import genotype_pcs
from invariant_mr.estimators.iv import Clusters, check_cov_type, cluster_codes, independent_basis, orthonormal_basis, residualize, score_outer
from invariant_mr.inference.settings import InferenceSettings
from invariant_mr.results import Diagnostic

#: Above this many polynomial features, switch to random Fourier features.
MAX_POLY_FEATURES = 300
#: Random Fourier features for the Gaussian kernel.
N_RANDOM_FEATURES = 128
#: The conventional weak-instrument threshold (Staiger & Stock 1997).
WEAK_F = 10.0
#: The MMD and HSIC permutation tests use a seeded random subset of at most this many samples
#: (each permutation costs a pass over the rows; 10,000 rows keep the power and bound the time).
DIAGNOSTIC_MAX_ROWS = 10_000


# ----------------------------------------------------------------------------- features
def _standardize(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=float)
    X = X.reshape(X.shape[0], -1)
    sd = X.std(axis=0)
    return (X - X.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def poly2_features(X: np.ndarray) -> np.ndarray:
    """Exact feature map of the kernel (x'y + 1)^2, without its constant feature."""
    n, d = X.shape
    iu = np.triu_indices(d, k=1)
    cross = (X[:, iu[0]] * X[:, iu[1]]) * np.sqrt(2.0)
    return np.hstack([np.sqrt(2.0) * X, X * X, cross])


def rbf_features(X: np.ndarray, rng: np.random.Generator, n_features: int = N_RANDOM_FEATURES) -> np.ndarray:
    """Random Fourier features of a Gaussian kernel, bandwidth = median pairwise distance."""
    n = X.shape[0]
    sub = X[rng.choice(n, size=min(n, 500), replace=False)]
    # Gram form of the squared distances: the broadcast difference would take 500^2 x d memory.
    sq = np.sum(sub * sub, axis=1)
    d2 = np.clip(sq[:, None] + sq[None, :] - 2.0 * (sub @ sub.T), 0.0, None)
    bw = float(np.sqrt(np.median(d2[np.triu_indices(sub.shape[0], 1)]))) or 1.0
    W = rng.standard_normal((X.shape[1], n_features)) / bw
    b = rng.uniform(0, 2 * np.pi, n_features)
    return np.sqrt(2.0 / n_features) * np.cos(X @ W + b)


def kernel_features(X: np.ndarray, kernel: str, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """(features, kernel actually used) for standardised X."""
    X = _standardize(X)
    d = X.shape[1]
    if kernel == "poly2":
        if d + d * (d + 1) // 2 <= MAX_POLY_FEATURES:
            return poly2_features(X), "poly2"
        kernel = "rbf"
    if kernel == "rbf":
        return rbf_features(X, rng), "rbf (random Fourier features)"
    raise InputError(f"kernel must be 'poly2' or 'rbf', got {kernel!r}")


# ----------------------------------------------------------------------------- tests
def _perm_pvalue(observed: float, null: np.ndarray) -> float:
    return float((1 + np.sum(null >= observed)) / (1 + null.size))


def _check_permutations(n_permutations: int) -> int:
    n_permutations = int(n_permutations)
    if n_permutations < 1:
        raise InputError(f"--diagnostic-permutations must be at least 1, got {n_permutations}")
    return n_permutations


def _strata_groups(strata: np.ndarray | None) -> list[np.ndarray] | None:
    if strata is None:
        return None
    _, codes = np.unique(np.asarray(strata), return_inverse=True)
    return [np.flatnonzero(codes == k) for k in range(codes.max() + 1)]


def _permuted_rows(n: int, groups, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of range(n), within each group when `groups` is given.

    `groups` is a list of index arrays (rows exchangeable within each), or the
    `_ClusterBlocks` of related samples (whole clusters exchanged).
    """
    if groups is None:
        return rng.permutation(n)
    if isinstance(groups, _ClusterBlocks):
        return groups.permuted_rows(rng)
    idx = np.arange(n)
    for g in groups:
        idx[g] = rng.permutation(g)
    return idx


class _ClusterBlocks:
    """Permutations that move whole clusters (families) onto other clusters of the same size.

    Why whole clusters and not permutations within clusters: the unit that is
    exchangeable under the null is the family, not the person. Relatives share
    genotype and environment, so permuting individuals treats a sibling pair
    as two independent draws and makes the null distribution too narrow
    (anti-conservative). Permuting within clusters keeps the family structure
    but has no power: environments are constant within a family (MMD), and
    swapping siblings' rows leaves almost all of the dependence between X and
    Y in place (HSIC). Exchanging whole clusters keeps each family's internal
    dependence on both sides and breaks only what the null says is absent.
    A cluster of size s can only go to another cluster of size s (rows map by
    their order within the cluster); with `strata` (cross-fitting folds), only
    within its stratum, so every cluster must lie inside one stratum.
    """

    def __init__(self, clusters: Clusters, strata: np.ndarray | None):
        codes = clusters.codes
        order = np.argsort(codes, kind="stable")
        bounds = np.flatnonzero(np.r_[True, codes[order][1:] != codes[order][:-1], True])
        members = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        if strata is not None:
            _, scodes = np.unique(np.asarray(strata), return_inverse=True)
            stratum = []
            for m in members:
                if np.any(scodes[m] != scodes[m[0]]):
                    raise InputError(
                        "a cluster spans two cross-fitting folds; assign folds by cluster so that whole "
                        "clusters can be permuted"
                    )
                stratum.append(int(scodes[m[0]]))
        else:
            stratum = [0] * len(members)
        # Exchangeable sets: clusters of equal size in the same stratum.
        keyed: dict[tuple[int, int], list[np.ndarray]] = {}
        for m, st in zip(members, stratum):
            keyed.setdefault((st, m.size), []).append(m)
        self._sets = [np.stack(ms) for ms in keyed.values()]  # each (clusters, size)
        self.n = codes.shape[0]
        self.n_exchangeable = int(sum(s.shape[0] for s in self._sets if s.shape[0] > 1))

    def permuted_rows(self, rng: np.random.Generator) -> np.ndarray:
        idx = np.arange(self.n)
        for rows in self._sets:
            if rows.shape[0] > 1:
                idx[rows] = rows[rng.permutation(rows.shape[0])]
        return idx


def _permutation_groups(n: int, strata, clusters):
    """What `_permuted_rows` permutes within: strata, whole clusters, or everything (None)."""
    if clusters is None:
        return _strata_groups(strata)
    blocks = _ClusterBlocks(cluster_codes(clusters, n), strata)
    if blocks.n_exchangeable < 2:
        raise InputError("no two clusters of the same size to exchange: the cluster permutation test is undefined")
    return blocks


def _pairwise_mmd(means: np.ndarray) -> np.ndarray:
    """Sum over environment pairs of squared distances between mean embeddings; means (..., K, m)."""
    K = means.shape[-2]
    total = 0.0
    for a in range(K):
        for b in range(a + 1, K):
            diff = means[..., a, :] - means[..., b, :]
            total = total + np.sum(diff * diff, axis=-1)
    return total


def mmd_permutation_test(
    X: np.ndarray,
    env_codes: np.ndarray,
    *,
    kernel: str = "poly2",
    n_permutations: int = 1000,
    rng: np.random.Generator | int = 0,
    strata: np.ndarray | None = None,
    clusters: np.ndarray | None = None,
) -> tuple[float, float, str]:
    """(MMD^2 summed over environment pairs, permutation p-value, kernel used).

    Null: X has the same distribution in every environment. Environment
    labels are permuted (within `strata`, e.g. cross-fitting folds whose
    instruments come from different maps, when given; by whole `clusters`,
    e.g. families, when given, see `_ClusterBlocks`); all permutations are
    scored with one sparse (permutations x environments, samples) by
    (samples, features) product.
    """
    rng = np.random.default_rng(rng)
    n_permutations = _check_permutations(n_permutations)
    codes = np.asarray(env_codes)
    _, codes = np.unique(codes, return_inverse=True)
    K = int(codes.max()) + 1
    if K < 2:
        raise InputError("the MMD test needs at least two environments")
    F, used = kernel_features(X, kernel, rng)
    counts = np.bincount(codes, minlength=K).astype(float)
    means = np.stack([F[codes == k].mean(axis=0) for k in range(K)])
    observed = float(_pairwise_mmd(means))
    null = np.empty(n_permutations)
    n = codes.size
    chunk = max(1, int(2_000_000 // max(n, 1)))
    groups = _permutation_groups(n, strata, clusters)
    for start in range(0, n_permutations, chunk):
        B = min(chunk, n_permutations - start)
        perm_codes = np.stack([codes[_permuted_rows(n, groups, rng)] for _ in range(B)])  # (B, n)
        rows = (np.arange(B)[:, None] * K + perm_codes).ravel()
        cols = np.tile(np.arange(n), B)
        S = sp.csr_matrix((np.ones(B * n), (rows, cols)), shape=(B * K, n))
        sums = np.asarray(S @ F).reshape(B, K, -1)
        null[start : start + B] = _pairwise_mmd(sums / counts[None, :, None])
    return observed, _perm_pvalue(observed, null), used


def hsic_permutation_test(
    X: np.ndarray,
    Y: np.ndarray,
    *,
    kernel: str = "poly2",
    n_permutations: int = 1000,
    rng: np.random.Generator | int = 0,
    strata: np.ndarray | None = None,
    clusters: np.ndarray | None = None,
) -> tuple[float, float, str]:
    """(HSIC, permutation p-value, kernel used) for independence of X and Y.

    HSIC = ||(1/n) Fc' Gc||_F^2 with centred feature maps. Rows of Y are
    permuted (within `strata`, e.g. environments, when given: a test of
    independence conditional on the stratum; as whole `clusters`, e.g.
    families, when given, see `_ClusterBlocks`).
    """
    rng = np.random.default_rng(rng)
    n_permutations = _check_permutations(n_permutations)
    F, used = kernel_features(X, kernel, rng)
    G, _ = kernel_features(Y, kernel, rng)
    F = F - F.mean(axis=0)
    G = G - G.mean(axis=0)
    n = F.shape[0]
    observed = float(np.sum((F.T @ G / n) ** 2))
    groups = _permutation_groups(n, strata, clusters)

    # F' G[perm] = F[perm^-1]' G: permute whichever side has fewer columns (the same null
    # statistics, less memory traffic), and score a batch of permutations with one matrix product.
    permute_f = F.shape[1] < G.shape[1]
    small, other = (F, G) if permute_f else (G, F)
    null = np.empty(n_permutations)
    chunk = max(1, int(4_000_000 // max(n * small.shape[1], 1)))
    for start in range(0, n_permutations, chunk):
        B = min(chunk, n_permutations - start)
        perms = [_permuted_rows(n, groups, rng) for _ in range(B)]
        if permute_f:
            perms = [np.argsort(p) for p in perms]
        stacked = np.concatenate([small[p].T for p in perms])  # (B * m_small, n)
        cross = (stacked @ other) / n
        null[start : start + B] = np.sum((cross * cross).reshape(B, -1), axis=1)
    return observed, _perm_pvalue(observed, null), used


def sargan_hansen_j(
    outcome, exposure, instruments, exog=None, *, cov_type: str = "robust", clusters=None
) -> tuple[float, float, int]:
    """Overidentification test: (J statistic, p-value, degrees of freedom k - 1).

    "unadjusted": Sargan's statistic on the 2SLS residuals u,
    ||P u||^2 / (||M u||^2 / (n - k - c)), the form of `ivmodels.tests.j_test`
    with the 2SLS estimator. "robust": Hansen's J at the two-step efficient
    GMM estimate, weight matrix from the 2SLS residuals (HC0). "cluster":
    the same with the weight matrix summing the moments within `clusters`
    (needs more clusters than instruments).
    """
    y = np.asarray(outcome, dtype=float).ravel()
    d = np.asarray(exposure, dtype=float).ravel()
    n = y.shape[0]
    cov_type, groups = check_cov_type(cov_type, clusters, n)
    cols = [np.ones((n, 1))]
    if exog is not None:
        cols.append(np.asarray(exog, dtype=float).reshape(n, -1))
    _, basis_c = independent_basis(np.hstack(cols))
    Zt = orthonormal_basis(residualize(np.asarray(instruments, dtype=float).reshape(n, -1), basis_c))
    k = Zt.shape[1]
    if k < 2:
        raise InputError("the J test needs more instruments than endogenous regressors (overidentification)")
    yt = residualize(y[:, None], basis_c)[:, 0]
    dt = residualize(d[:, None], basis_c)[:, 0]
    a, c = Zt.T @ yt, Zt.T @ dt
    b_tsls = float(a @ c / (c @ c))
    u = yt - b_tsls * dt
    df = k - 1
    if cov_type == "unadjusted":
        g = Zt.T @ u
        explained = float(g @ g)
        stat = explained / ((float(u @ u) - explained) / (n - k - basis_c.shape[1]))
    else:
        if groups is not None and groups.n_clusters <= k:
            raise InputError(f"the cluster-robust J test needs more clusters ({groups.n_clusters}) than instruments ({k})")
        S = score_outer(Zt * u[:, None], groups)
        Sc, Sa = np.linalg.solve(S, c), np.linalg.solve(S, a)
        b_gmm = float(c @ Sa / (c @ Sc))
        g = a - b_gmm * c
        stat = float(g @ np.linalg.solve(S, g))
    return stat, float(stats.chi2.sf(stat, df)), df


def first_stage_strength(
    exposure, instruments, exog=None, *, cov_type: str = "robust", clusters=None
) -> tuple[float, float, int]:
    """(first-stage F, p-value of a zero first stage, number of instruments k).

    "unadjusted": the partial F with an F(k, n - k - c) p-value; "robust": the
    HC0 Wald statistic divided by k with a chi^2_k p-value; "cluster": the
    same with scores summed within `clusters` (the cluster-robust
    Kleibergen-Paap F with one endogenous regressor). All agree with
    `iv.fit_kclass(...).first_stage_f`.
    """
    d = np.asarray(exposure, dtype=float).ravel()
    n = d.shape[0]
    cov_type, groups = check_cov_type(cov_type, clusters, n)
    cols = [np.ones((n, 1))]
    if exog is not None:
        cols.append(np.asarray(exog, dtype=float).reshape(n, -1))
    _, basis_c = independent_basis(np.hstack(cols))
    Zt = orthonormal_basis(residualize(np.asarray(instruments, dtype=float).reshape(n, -1), basis_c))
    k = Zt.shape[1]
    if k == 0:
        raise InputError("the instruments are collinear with the controls")
    dt = residualize(d[:, None], basis_c)[:, 0]
    pi = Zt.T @ dt
    u = dt - Zt @ pi
    if cov_type == "unadjusted":
        dfd = n - k - basis_c.shape[1]
        f = float(pi @ pi) / k / (float(u @ u) / dfd)
        return f, float(stats.f.sf(f, k, dfd)), k
    if groups is not None and groups.n_clusters <= k:
        raise InputError(f"the cluster-robust first-stage F needs more clusters ({groups.n_clusters}) than instruments ({k})")
    wald = float(pi @ np.linalg.solve(score_outer(Zt * u[:, None], groups), pi))
    return wald / k, float(stats.chi2.sf(wald, k)), k


# ----------------------------------------------------------------------------- one call
def environment_varying_component(Z: np.ndarray, instruments: np.ndarray) -> np.ndarray:
    """The genotype projected off the instruments: residual of Z on [1, instruments]."""
    n = Z.shape[0]
    basis = orthonormal_basis(np.hstack([np.ones((n, 1)), np.asarray(instruments, dtype=float).reshape(n, -1)]))
    return residualize(np.asarray(Z, dtype=float), basis)


#: The most directions of the environment-varying component whose degree-2 features the leak check purges.
LEAK_MAX_DIRECTIONS = 8


def _leak_features(complement: np.ndarray, env_codes: np.ndarray) -> np.ndarray:
    """What a leak can be a function of: degree-2 features of the top directions of the complement,
    and the complement's linear part interacted with the environment (its link to the confounder may
    differ between environments, as V = V0 + eta_e H does)."""
    Y = _standardize(complement)
    if Y.shape[1] > LEAK_MAX_DIRECTIONS:
        _, _, vt = np.linalg.svd(Y - Y.mean(axis=0), full_matrices=False)
        Y = _standardize(Y @ vt[:LEAK_MAX_DIRECTIONS].T)
    env = (env_codes[:, None] == np.unique(env_codes)[None, 1:]).astype(float)
    interactions = (env[:, :, None] * Y[:, None, :]).reshape(Y.shape[0], -1)
    return np.hstack([poly2_features(Y), env, interactions])


def _purge_fit(X, features, groups):
    """(fitted part of X, purge design [1, features], group labels) of the least-squares fit of X on
    [1, features] within each group (cross-fitting fold); X minus the fitted part is the purged X."""
    design = np.hstack([np.ones((X.shape[0], 1)), features])
    labels = np.zeros(X.shape[0], dtype=int) if groups is None else np.asarray(groups)
    fitted = np.empty_like(X)
    for g in np.unique(labels):
        m = labels == g
        coef, *_ = np.linalg.lstsq(design[m], X[m], rcond=None)
        fitted[m] = design[m] @ coef
    return fitted, design, labels


def leak_shift_test(outcome, exposure, instruments, features, controls=None, *, groups=None, clusters=None,
                    kappa: str = "tsls") -> tuple[float, float, float, float]:
    """How much the 2SLS (or, with `kappa="liml"`, LIML) estimate moves when the instruments are purged of their leak.

    `instruments` (n, m) are purged of their least-squares fit on [1,
    `features`] (within each of `groups`, the cross-fitting folds; then both
    instrument sets enter fold-interacted, as the cross-fitted estimate does).
    Returns (shift, se, p, first-stage F of the purged instruments). shift =
    theta(instruments) - theta(purged), both 2SLS with the same controls. Its
    SE comes from the difference of the two estimators' influence functions
    (HC0, or summed within clusters), so it accounts for their correlation;
    the purged estimator's influence function includes the estimation of the
    purge, which is first order when the features are correlated with the
    outcome's error (they describe the confounded, environment-varying part).
    A leak that shifts the estimate by less than this SE cannot be told from
    sampling noise, and one that shifts it by several SEs biases it.

    With hundreds of instruments of modest strength, 2SLS is pulled towards
    OLS by about k / (n F) of the OLS bias; the purge lowers F, so two 2SLS
    fits would differ by that pull even without a leak. A method that
    estimates by LIML (median-unbiased under many instruments) is therefore
    checked with LIML on both sets (`kappa="liml"`): each is the k-class
    estimator with its own LIML kappa, whose influence function (kappa held
    fixed, as in the usual first-order theory) is that of an IV estimator
    with instrument kappa * dhat + (1 - kappa) * d.
    """
    from invariant_mr.inference.crossfit import fold_interacted

    if kappa not in ("tsls", "liml"):
        raise InputError(f"the leak shift is computed by 2SLS or LIML, not {kappa!r}")

    y = np.asarray(outcome, dtype=float).ravel()
    d = np.asarray(exposure, dtype=float).ravel()
    n = y.shape[0]
    X = np.asarray(instruments, dtype=float).reshape(n, -1)
    fitted, design, labels = _purge_fit(X, np.asarray(features, dtype=float).reshape(n, -1), groups)
    purged = X - fitted
    sets = (X, purged) if groups is None else (fold_interacted(X, labels), fold_interacted(purged, labels))
    _, cl = check_cov_type("cluster" if clusters is not None else "robust", clusters, n)
    cols = [np.ones((n, 1))] + ([] if controls is None else [np.asarray(controls, dtype=float).reshape(n, -1)])
    _, basis = independent_basis(np.hstack(cols))
    yt, dt = residualize(y[:, None], basis)[:, 0], residualize(d[:, None], basis)[:, 0]
    as_controls = None
    if kappa == "liml":
        # LIML's purged fit takes the features as controls (out of y and d too), not out of the instruments
        # alone. For 2SLS the two are the same estimator (Frisch-Waugh: d'P_{M_F Z} y either way). LIML's
        # kappa is not: purged instruments next to y and d that still hold the features' (confounded)
        # variation put that variation in LIML's residual matrix and move kappa, and so the estimate. On
        # Balding-Nichols genotypes with 500 variants, where `invariant_genotype` is unbiased, that moved it
        # by about -0.05 and rejected 18 of 20 right answers (benchmarks/results/leak_shift_genotypes.md).
        purge_design = design if groups is None else fold_interacted(design, labels)
        _, as_controls = independent_basis(np.hstack(cols + [purge_design]))
    influence, thetas = [], []
    for which, Z in enumerate(sets):
        if which == 1 and as_controls is not None:
            Z = sets[0]
            Zt = residualize(Z, as_controls)
            yt, dt = residualize(y[:, None], as_controls)[:, 0], residualize(d[:, None], as_controls)[:, 0]
        else:
            Zt = residualize(Z, basis)
        coef, *_ = np.linalg.lstsq(Zt, np.column_stack([dt, yt]), rcond=None)
        pi = coef[:, 0]
        fitted_dy = Zt @ coef
        dhat = fitted_dy[:, 0]
        if not np.any(dhat):
            raise InputError("the purged instruments are empty: the leak features span them")
        k_val = 1.0
        if kappa == "liml":
            # Smallest root of det(E'E - k E'M_Z E) = 0, E = [y, d] net of the controls.
            E = np.column_stack([yt, dt])
            Ez = E - fitted_dy[:, ::-1]
            k_val = float(sla.eigh(E.T @ E, Ez.T @ Ez, eigvals_only=True).min())
        w = k_val * dhat + (1.0 - k_val) * dt
        theta = float(w @ yt / (w @ dt))
        u = yt - theta * dt
        score = w * u
        if which == 1 and as_controls is None:
            # The purge's coefficients were estimated: their error moves the numerator by
            # -g' M^-1 mean(D s) within each group, g = mean(D u), M = mean(D D'), s = purged @ pi.
            # (With the features as controls the residual u is net of them, so the fit's influence function
            # is already w u: no such term.)
            s_raw = Z @ pi
            for g_label in np.unique(labels):
                m = labels == g_label
                D = design[m]
                g = D.T @ u[m] / n
                M = D.T @ D / n
                score[m] = score[m] - k_val * (D @ np.linalg.lstsq(M, g, rcond=None)[0]) * s_raw[m]
        thetas.append(theta)
        influence.append(score / (w @ dt / n))
    diff = (influence[0] - influence[1])[:, None]
    se = float(np.sqrt(score_outer(diff, cl)[0, 0])) / n
    shift = thetas[0] - thetas[1]
    p = float(2 * stats.norm.sf(abs(shift) / se)) if se > 0 else (1.0 if shift == 0 else 0.0)
    f_purged, _, _ = first_stage_strength(d, sets[1], controls, cov_type="robust" if clusters is None else "cluster",
                                          clusters=clusters)
    return shift, se, p, float(f_purged)


#: Top genotype principal components per environment that the structure check purges.
STRUCTURE_PCS = 10
#: Fewest variants for the structure check: population structure is a few axes among many variants; with
#: fewer than this, 10 PCs are a large share of the genotype space and purging them removes signal, not structure.
STRUCTURE_MIN_VARIANTS = 5 * STRUCTURE_PCS


def within_environment_structure(Z: np.ndarray, env_codes: np.ndarray, n_pcs: int = STRUCTURE_PCS) -> np.ndarray:
    """The top `n_pcs` principal components of the genotypes within each environment (standardised
    variants), each block nonzero on its own environment's rows: (rows, K * n_pcs).

    They describe population structure *inside* an environment (demes within a region, admixture
    within a cohort), which is the same in every environment when each has it, so invariance tests
    cannot see it, and which stratification can confound. `estimators.genotype_pcs` per environment
    (from the smaller Gram matrix), scaled to unit length: only their span enters the purge."""
    Z = np.asarray(Z, dtype=float)
    blocks = []
    for e in np.unique(env_codes):
        rows = env_codes == e
        varying = int(np.count_nonzero(Z[rows].std(axis=0) > 0))
        k = min(n_pcs, min(int(rows.sum()), varying) - 1)
        block = np.zeros((Z.shape[0], max(k, 0)))
        if k > 0:
            scores = genotype_pcs(Z[rows], k)
            block[rows] = scores / np.maximum(np.linalg.norm(scores, axis=0), 1e-300)
        blocks.append(block)
    return np.hstack(blocks)


def _shift_on_rows(data, X, feats, rows, strata, controls, clusters, kappa) -> tuple[tuple, dict]:
    """`leak_shift_test` on the tested rows, and the detail a purge diagnostic records."""
    ctrl = None if controls is None else controls[rows]
    # Cross-fitted: X is standardised within folds and enters fold-interacted, which spans what
    # the estimate's fold-interacted instruments span (fold effects are among the controls).
    shift, se, p, f_purged = leak_shift_test(
        data.outcome[rows], data.exposure[rows], X[rows], feats, ctrl, groups=strata,
        clusters=None if clusters is None else clusters[rows], kappa=kappa,
    )
    detail = {"shift": shift, "se": se, "purged_first_stage_f": f_purged, "features": int(feats.shape[1]),
              "rows": int(rows.size), "estimator": kappa}
    return (shift, se, p, f_purged), detail


def _structure_diagnostic(name, data, X, Zr, rows, strata, controls, clusters, kappa) -> Diagnostic:
    """The structure check on the tested rows (`Zr`, the genotypes of `rows`): the estimate's shift when the
    instruments are purged of the top genotype PCs within each environment (`within_environment_structure`)."""
    try:
        feats = within_environment_structure(Zr, data.env_codes[rows])
        (shift, se, p, f_purged), detail = _shift_on_rows(data, X, feats, rows, strata, controls, clusters, kappa)
    except (InputError, np.linalg.LinAlgError) as exc:
        return _invalid(name, "pooled", str(exc))
    flag = (f"purging the instruments of the top {STRUCTURE_PCS} genotype PCs within each environment moves the "
            f"estimate by {shift:+.4f} (SE {se:.4f}) and leaves F = {f_purged:.1f}")
    return Diagnostic(name, "pooled", shift, p, flag, {**detail, "pcs_per_environment": STRUCTURE_PCS})


def _invalid(name: str, scope: str, reason: str) -> Diagnostic:
    return Diagnostic(name, scope, None, None, f"not computed: {reason}", {"reason": reason})


def instrument_diagnostics(
    data: MRData,
    instruments: np.ndarray,
    settings: InferenceSettings,
    complement: np.ndarray | None = None,
    *,
    method: str | None = None,
    env_fixed_effects: bool = True,
    extra_controls: np.ndarray | None = None,
    kernel: str = "poly2",
    folds: np.ndarray | None = None,
    max_rows: int = DIAGNOSTIC_MAX_ROWS,
    clusters: np.ndarray | None = None,
    kappa: str = "tsls",
) -> list[Diagnostic]:
    """All four checks for `instruments` (n, k) of `data`.

    `complement` is the environment-varying component to test independence
    against (e.g. the learned hV); None uses `environment_varying_component`.
    `method` prefixes the diagnostic names ("<method>/invariance_mmd").
    Permutations: `settings.diagnostic_permutations`, seeded by
    `settings.rng`. Controls for J and F follow `estimation.iv_estimates`.
    A check that cannot be computed is reported with statistic and p-value
    None and the reason, never raised. The MMD and HSIC tests run on a seeded
    random subset of `max_rows` samples when there are more (J and F use all).

    `folds` marks cross-fitted instruments (each fold's rows come from a map
    learned on the other folds, so columns mean different things in different
    folds). Then MMD and HSIC standardise and permute within folds (tests
    given the fold), the default complement is computed fold by fold, and J
    and F use the fold-interacted instruments with fold-by-environment
    effects, exactly as `crossfit.crossfit_estimates` estimates.

    `clusters` (one label per sample, e.g. family ID; goes with
    `settings.cov_type == "cluster"`): J and F are cluster-robust, and MMD and HSIC
    permute whole clusters (a subsample keeps whatever members of each
    cluster it draws).

    `kappa` is the estimator the method reports ("tsls" or "liml"); the leak
    shift compares two fits of that estimator (see `leak_shift_test`).
    """
    from invariant_mr.inference.crossfit import fold_dummies, fold_interacted

    prefix = f"{method}/" if method else ""
    n_perm = int(settings.diagnostic_permutations)
    X = np.asarray(instruments, dtype=float).reshape(data.n, -1)
    alpha = settings.alpha
    out: list[Diagnostic] = []
    X_iv = X
    if folds is not None:
        folds = np.asarray(folds)
        X = X.copy()
        for f in np.unique(folds):
            X[folds == f] = _standardize(X[folds == f])
        X_iv = fold_interacted(np.asarray(instruments, dtype=float).reshape(data.n, -1), folds)
        fd = fold_dummies(folds, data.env_codes)
        extra_controls = fd if extra_controls is None else np.hstack(
            [np.asarray(extra_controls, dtype=float).reshape(data.n, -1), fd]
        )

    rows = np.arange(data.n)
    if data.n > max_rows:
        rows = np.sort(settings.rng(prefix + "diagnostic rows").choice(data.n, size=max_rows, replace=False))
    strata = None if folds is None else folds[rows]
    clusters = None if clusters is None else np.asarray(clusters)
    perm_clusters = None if clusters is None else clusters[rows]

    name = prefix + "invariance_mmd"
    try:
        stat, p, used = mmd_permutation_test(
            X[rows], data.env_codes[rows], kernel=kernel, n_permutations=n_perm, rng=settings.rng(name), strata=strata,
            clusters=perm_clusters,
        )
        flag = (
            "instruments are distributed differently across environments: not invariant, possibly confounded"
            if p < alpha
            else "no evidence that the instruments' distribution differs across environments"
        )
        detail = {
            "kernel": used, "n_permutations": n_perm, "permuted_within_folds": folds is not None, "rows": rows.size,
            "permuted_whole_clusters": clusters is not None,
        }
        out.append(Diagnostic(name, "pooled", stat, p, flag, detail))
    except (InputError, np.linalg.LinAlgError) as exc:
        out.append(_invalid(name, "pooled", str(exc)))

    name = prefix + "independence_hsic"
    # Only the tested rows are needed (the projection is fitted on them too). The genotypes of those rows are
    # read once, for the default complement and the structure check (streamed data reads them from the file).
    Xr = X[rows]
    Zr = data.instrument_rows(rows) if complement is None or data.p >= STRUCTURE_MIN_VARIANTS else None
    if complement is not None:
        Y = np.asarray(complement, dtype=float).reshape(data.n, -1)[rows]
    else:
        if folds is None:
            Y = environment_varying_component(Zr, Xr)
        else:
            Y = np.empty((rows.size, Zr.shape[1]))
            for f in np.unique(strata):
                Y[strata == f] = environment_varying_component(Zr[strata == f], Xr[strata == f])
    source = "Z projected off the instruments" if complement is None else "supplied complement"
    if np.all(Y.std(axis=0) <= 1e-8 * max(1.0, data.instrument_abs_max())):
        out.append(
            _invalid(
                name,
                "pooled",
                "the instruments span the genotype, so there is no environment-varying component left "
                "to test against; pass one (e.g. the learned hV)",
            )
        )
    else:
        try:
            stat, p, used = hsic_permutation_test(
                Xr, Y, kernel=kernel, n_permutations=n_perm, rng=settings.rng(name), strata=strata,
                clusters=perm_clusters,
            )
            flag = (
                "instruments depend on the environment-varying component: likely confounded"
                if p < alpha
                else "no evidence of dependence between instruments and the environment-varying component"
            )
            out.append(
                Diagnostic(
                    name,
                    "pooled",
                    stat,
                    p,
                    flag,
                    {"kernel": used, "n_permutations": n_perm, "complement": source, "rows": rows.size},
                )
            )
        except (InputError, np.linalg.LinAlgError) as exc:
            out.append(_invalid(name, "pooled", str(exc)))

    controls = exogenous_controls(data, env_fixed_effects, extra_controls)
    if not np.all(Y.std(axis=0) <= 1e-8 * max(1.0, data.instrument_abs_max())):
        out.append(_leak_diagnostic(prefix + "leak_shift", data, X, Y, rows, strata, controls, clusters, alpha,
                                    kappa))
    if Zr is not None and data.p >= STRUCTURE_MIN_VARIANTS and genotype_calls(Zr):
        # Genotype calls: population structure within environments is a threat the invariance tests
        # cannot see (docs/verdict.md, the structure check).
        out.append(_structure_diagnostic(prefix + "structure_shift", data, X, Zr, rows, strata, controls,
                                         clusters, kappa))
    name = prefix + "overidentification_j"
    try:
        stat, p, df = sargan_hansen_j(
            data.outcome, data.exposure, X_iv, controls, cov_type=settings.cov_type, clusters=clusters
        )
        out.append(j_diagnostic(name, stat, p, df, alpha=alpha, cov_type=settings.cov_type))
    except (InputError, np.linalg.LinAlgError) as exc:
        out.append(_invalid(name, "pooled", str(exc)))

    name = prefix + "first_stage_f"
    scopes = [("pooled", np.ones(data.n, dtype=bool), controls)]
    ec = None if extra_controls is None else np.asarray(extra_controls, dtype=float).reshape(data.n, -1)
    codes = data.env_codes
    for i, level in enumerate(data.env_levels):
        mask = codes == i
        parts = [m[mask] for m in (data.covariates, ec) if m is not None]
        scopes.append((f"env:{level}", mask, np.hstack(parts) if parts else None))
    for scope, mask, ctrl in scopes:
        try:
            f, p, k = first_stage_strength(
                data.exposure[mask], X_iv[mask], ctrl, cov_type=settings.cov_type,
                clusters=None if clusters is None else clusters[mask],
            )
        except (InputError, np.linalg.LinAlgError) as exc:
            out.append(_invalid(name, scope, str(exc)))
            continue
        out.append(first_stage_diagnostic(name, scope, f, p, k, cov_type=settings.cov_type))
    return out


def _leak_diagnostic(name, data, X, Y, rows, strata, controls, clusters, alpha, kappa="tsls") -> Diagnostic:
    """The leak check on the tested rows: the estimate's shift when the instruments lose what the
    environment-varying component (Y) predicts of them. MMD and HSIC say whether a leak exists; this
    says whether it matters for the estimate (docs/verdict.md). The purged instruments' strength is
    recorded too: a purge that leaves weak instruments makes the check powerless."""
    try:
        feats = _leak_features(Y, data.env_codes[rows])
        (shift, se, p, _), detail = _shift_on_rows(data, X, feats, rows, strata, controls, clusters, kappa)
    except (InputError, np.linalg.LinAlgError) as exc:
        return _invalid(name, "pooled", str(exc))
    flag = (
        f"purging the instruments of the environment-varying component moves the estimate by {shift:+.4f} "
        f"(SE {se:.4f}): a leak that biases it"
        if p < alpha
        else f"purging the instruments of the environment-varying component moves the estimate by {shift:+.4f} "
        f"(SE {se:.4f}): no detectable bias from a leak"
    )
    return Diagnostic(name, "pooled", shift, p, flag, detail)


def j_diagnostic(name: str, stat: float, p: float, df: int, *, alpha: float, cov_type: str) -> Diagnostic:
    """The overidentification row of `instrument_diagnostics` (also built from sufficient statistics)."""
    flag = (
        "instruments disagree about the effect: at least one is invalid"
        if p < alpha
        else "no evidence against the overidentifying restrictions"
    )
    test = "sargan" if cov_type == "unadjusted" else "hansen"
    return Diagnostic(name, "pooled", stat, p, flag, {"df": df, "test": test, "cov_type": cov_type})


def first_stage_diagnostic(name: str, scope: str, f: float, p: float, k: int, *, cov_type: str) -> Diagnostic:
    """A first-stage strength row of `instrument_diagnostics` (also built from sufficient statistics)."""
    flag = (
        f"weak instruments (F = {f:.1f} < {WEAK_F:.0f}): Wald intervals unreliable, use the AR set"
        if f < WEAK_F
        else f"instruments strong enough (F = {f:.1f})"
    )
    return Diagnostic(name, scope, f, p, flag, {"n_instruments": k, "cov_type": cov_type})


__all__ = [
    "environment_varying_component",
    "first_stage_diagnostic",
    "first_stage_strength",
    "hsic_permutation_test",
    "instrument_diagnostics",
    "j_diagnostic",
    "kernel_features",
    "leak_shift_test",
    "mmd_permutation_test",
    "poly2_features",
    "rbf_features",
    "sargan_hansen_j",
]
