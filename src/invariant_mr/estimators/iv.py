"""k-class instrumental-variable estimation (OLS, 2SLS, LIML, Fuller) with inference.

One estimator, one knob (`kappa`), as in ivmodels. The exposure is the single
endogenous regressor; exogenous controls (intercept, environment fixed
effects, covariates) enter both stages. Covariances follow linearmodels'
conventions (HC0 "robust", homoskedastic "unadjusted", or one-way
cluster-robust "cluster" for related samples such as families; no small-sample
correction unless `debiased`) so that the two agree to rounding error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.linalg as sla
import scipy.sparse as sp
from scipy import stats

from invariant_mr.errors import InputError

_FULLER = re.compile(r"^fuller\(\s*([0-9.]+)\s*\)$")


#: Tall matrices with at least this many columns try the Gram route first.
_GRAM_MIN_COLUMNS = 32
#: Directions of the scaled Gram matrix kept by the Gram route have eigenvalues above this share of
#: the largest, so the basis deviates from orthonormal by about eps / 1e-6 = 1e-10.
_GRAM_KEEP_RTOL = 1e-6
#: Eigenvalues below this share of the largest are numerically zero (exactly collinear directions,
#: e.g. instruments residualised on their own principal components).
_GRAM_ZERO_RTOL = 1e-12


def _gram_spectrum(M: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(A, column scales, eigenvalues, eigenvectors) of the column-scaled A'A, where A spans the same
    space as M, for tall M with enough columns for the Gram route to pay; None otherwise.

    When M holds a constant column (the intercept), the other columns are centred first: the span
    is unchanged, and uncentred genotype dosages next to an intercept are so collinear that the
    Gram matrix would look rank-deficient and send every call to the QR.
    """
    n, p = M.shape
    if p < _GRAM_MIN_COLUMNS or n < 4 * p:
        return None
    constant = np.ptp(M, axis=0) == 0
    A = M
    if constant.any() and np.abs(M[0, constant]).max() > 0:
        A = np.where(constant, M, M - M.mean(axis=0))
    G = A.T @ A
    scale = np.sqrt(np.diag(G))
    if scale.min() <= 0:
        return None
    vals, vecs = sla.eigh(G / np.outer(scale, scale))
    return A, scale, vals, vecs


def orthonormal_basis(M: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """Orthonormal basis of the column space of M.

    Tall M with hundreds of columns (genotype instruments): from the
    eigendecomposition of the column-scaled Gram matrix, one n p^2 product
    and a p x p eigenproblem, several times cheaper than a pivoted QR (TSHT,
    tsls_pcs and the Anderson-Rubin sets spent most of their time in QR at
    30,000 x 1,000). It is used when the spectrum separates cleanly into kept
    directions and numerically zero ones; otherwise the rank-revealing pivoted
    QR decides. Every use is a projection or a rotation-invariant statistic,
    so the two bases are interchangeable.
    """
    if M.shape[1] == 0:
        return M
    spectrum = _gram_spectrum(M)
    if spectrum is not None:
        A, scale, vals, vecs = spectrum
        keep = vals > _GRAM_KEEP_RTOL * vals[-1]
        if np.all(keep | (vals < _GRAM_ZERO_RTOL * vals[-1])):
            return (A / scale) @ (vecs[:, keep] / np.sqrt(vals[keep]))
    Q, _, rank = _pivoted_qr(M, rtol)
    return Q[:, :rank]


def _pivoted_qr(M: np.ndarray, rtol: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(Q, column pivots, numerical rank) of the rank-revealing pivoted QR of M."""
    Q, R, piv = sla.qr(M, mode="economic", pivoting=True)
    diag = np.abs(np.diag(R))
    rank = int((diag > rtol * diag[0]).sum()) if diag.size and diag[0] > 0 else 0
    return Q, piv, rank


def _full_rank_spectrum(M: np.ndarray):
    """M's Gram spectrum (see `_gram_spectrum`) when M is tall and clearly of full column rank,
    so no column is to be dropped; None when the pivoted QR has to decide."""
    spectrum = _gram_spectrum(M)
    if spectrum is None or spectrum[2][0] <= _GRAM_KEEP_RTOL * spectrum[2][-1]:
        return None
    return spectrum


def independent_basis(M: np.ndarray, rtol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """(independent columns of M, orthonormal basis of their span) from one factorisation.

    For controls that are both kept as regressors and projected out: calling
    `independent_columns` and then `orthonormal_basis` factorised M twice.
    """
    if M.shape[1] == 0:
        return M, M
    spectrum = _full_rank_spectrum(M)
    if spectrum is not None:
        A, scale, vals, vecs = spectrum
        return M, (A / scale) @ (vecs / np.sqrt(vals))
    Q, piv, rank = _pivoted_qr(M, rtol)
    return M[:, np.sort(piv[:rank])], Q[:, :rank]


def independent_columns(M: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """The columns of M that span its column space (redundant controls dropped, order kept)."""
    if M.shape[1] == 0 or _full_rank_spectrum(M) is not None:
        return M  # full column rank: nothing to drop, no QR needed
    _, piv, rank = _pivoted_qr(M, rtol)
    return M[:, np.sort(piv[:rank])]


def residualize(M: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """M minus its projection onto the span of the orthonormal `basis`."""
    if basis.shape[1] == 0:
        return M
    return M - basis @ (basis.T @ M)


# ----------------------------------------------------------------------------- covariance types
#: The covariance types of every Wald, AR, J and first-stage statistic in the package.
COV_TYPES = ("robust", "unadjusted", "cluster")


@dataclass(frozen=True)
class Clusters:
    """Integer cluster codes 0..n_clusters-1 of n samples (e.g. family IDs), validated once."""

    codes: np.ndarray
    n_clusters: int

    def sums(self, A: np.ndarray) -> np.ndarray:
        """(n_clusters, m) sums of the rows of A (n, m) within each cluster."""
        n = self.codes.shape[0]
        S = sp.csr_matrix((np.ones(n), (self.codes, np.arange(n))), shape=(self.n_clusters, n))
        return np.asarray(S @ A)


def cluster_codes(clusters, n: int) -> Clusters:
    """Validate a cluster label per sample (any hashable labels) and code them 0..G-1.

    A missing label cannot be assigned to a cluster, and one cluster gives no
    between-cluster variation to estimate a covariance from: both are input errors.
    """
    if isinstance(clusters, Clusters):
        if clusters.codes.shape[0] != n:
            raise InputError(f"clusters has {clusters.codes.shape[0]} labels for {n} samples")
        return clusters
    labels = np.asarray(clusters)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise InputError(f"clusters must hold one label per sample ({n}), got shape {labels.shape}")
    codes, uniques = pd.factorize(labels, use_na_sentinel=True)
    if (codes < 0).any():
        raise InputError(f"clusters has {int((codes < 0).sum())} missing labels; every sample needs a cluster")
    if len(uniques) < 2:
        raise InputError("a cluster-robust covariance needs at least two clusters")
    return Clusters(codes=codes.astype(np.int64), n_clusters=len(uniques))


def check_cov_type(cov_type: str, clusters, n: int) -> tuple[str, Clusters | None]:
    """(cov_type, validated clusters) with "clustered" (linearmodels' name) read as "cluster".

    Clusters without cov_type "cluster", or the reverse, is an input error rather
    than silently ignored.
    """
    if cov_type == "clustered":
        cov_type = "cluster"
    if cov_type not in COV_TYPES:
        raise InputError(f"cov_type must be one of {', '.join(COV_TYPES)}, got {cov_type!r}")
    if cov_type == "cluster":
        if clusters is None:
            raise InputError("cov_type 'cluster' needs a cluster label per sample (clusters=...)")
        return cov_type, cluster_codes(clusters, n)
    if clusters is not None:
        raise InputError(f"clusters were given but cov_type is {cov_type!r}; use cov_type='cluster'")
    return cov_type, None


def score_outer(A: np.ndarray, clusters: Clusters | None) -> np.ndarray:
    """Sum over independent units of the outer product of the scores A (n, m).

    Units are samples (A'A, the HC0 meat) or, with clusters, whole clusters
    (C'C with C the within-cluster sums): scores of relatives may be
    correlated, scores of different families are not.
    """
    C = A if clusters is None else clusters.sums(A)
    return C.T @ C


class WaldInference:
    """Normal-theory interval and p-value from `estimate` and `se`, for every fitted-effect result."""

    estimate: float
    se: float

    def ci(self, alpha: float = 0.05) -> tuple[float, float]:
        z = stats.norm.ppf(1 - alpha / 2)
        return self.estimate - z * self.se, self.estimate + z * self.se

    @property
    def pvalue(self) -> float:
        """Two-sided Wald p-value for a zero effect."""
        return float(2 * stats.norm.sf(abs(self.estimate / self.se))) if self.se > 0 else float("nan")


@dataclass(frozen=True)
class KClassFit(WaldInference):
    """A fitted k-class IV regression; `estimate` is the exposure's coefficient."""

    estimate: float
    se: float
    params: np.ndarray
    cov: np.ndarray
    kappa: float
    n: int
    n_instruments: int
    first_stage_f: float | None
    cov_type: str
    residuals: np.ndarray
    n_clusters: int | None = None
    #: Which k-class estimator ("ols", "tsls", "liml", "fuller", "fixed"): weak-instrument thresholds depend on it.
    estimator: str | None = None


def parse_kappa(kappa) -> tuple[str, float | None]:
    """('ols'|'tsls'|'liml'|'fuller'|'fixed', value) from a user-facing kappa spec."""
    if isinstance(kappa, (int, float)) and not isinstance(kappa, bool):
        return "fixed", float(kappa)
    if kappa in ("ols", "tsls", "liml"):
        return kappa, None
    m = _FULLER.match(str(kappa))
    if m:
        return "fuller", float(m.group(1))
    raise InputError(f"kappa must be 'ols', 'tsls', 'liml', 'fuller(a)' or a number, got {kappa!r}")


class InstrumentProjector:
    """Projection onto the span of instruments already residualised on the controls.

    With well-conditioned instruments it uses a Cholesky factor of the p x p
    Gram matrix: one n p^2 product, about 7x cheaper than a pivoted QR of the
    n x p matrix at biobank sizes. Nearly collinear instruments fall back to
    the rank-revealing QR, which drops redundant directions.
    """

    #: Smallest eigenvalue of the scaled Gram matrix, relative to the largest,
    #: below which the Cholesky route is not trusted.
    CONDITION_RTOL = 1e-10

    def __init__(self, Zr: np.ndarray):
        G = Zr.T @ Zr
        scale = np.sqrt(np.diag(G))
        self._cho = None
        if scale.size and scale.min() > 0:
            eig = sla.eigvalsh(G / np.outer(scale, scale))
            if eig[0] > self.CONDITION_RTOL * eig[-1]:
                self._cho = sla.cho_factor(G)
        self.basis = Zr if self._cho is not None else orthonormal_basis(Zr)
        self.rank = self.basis.shape[1]

    def coefficients(self, V: np.ndarray) -> np.ndarray:
        """Least-squares coefficients of V on the basis."""
        BtV = self.basis.T @ V
        return sla.cho_solve(self._cho, BtV) if self._cho is not None else BtV

    def project(self, V: np.ndarray) -> np.ndarray:
        return self.basis @ self.coefficients(V)


def fit_kclass(
    outcome: np.ndarray,
    exposure: np.ndarray,
    instruments: np.ndarray | None,
    exog: np.ndarray | None = None,
    *,
    kappa="tsls",
    cov_type: str = "robust",
    add_intercept: bool = True,
    clusters=None,
    debiased: bool = False,
) -> KClassFit:
    """Fit y = theta * d + exog' gamma + e by k-class IV with `instruments` for d.

    kappa: "ols" (instruments ignored), "tsls", "liml", "fuller(a)" or a number.
    cov_type: "robust" (HC0), "unadjusted", or "cluster" with `clusters`, one
    label per sample (e.g. family ID): the one-way cluster-robust (CR0)
    sandwich, equal to linearmodels' `fit(cov_type="clustered", clusters=...)`.
    debiased: linearmodels' small-sample adjustment, which scales the
    covariance by n / (n - k) ("unadjusted", "robust") or by
    G / (G - 1) * (n - 1) / (n - k) ("cluster", G clusters), k the columns of
    [controls, exposure]. Off by default, as in linearmodels; intervals and
    p-values stay normal-based either way.
    First-stage F: the homoskedastic partial F (Cragg-Donald with one
    endogenous regressor) under `cov_type="unadjusted"`, the robust Wald F
    (Kleibergen-Paap with one endogenous regressor) under "robust", its
    cluster-robust version under "cluster" (nan when there are no more
    clusters than instruments, where the cluster covariance is singular).
    """
    y = np.asarray(outcome, dtype=float).ravel()
    d = np.asarray(exposure, dtype=float).ravel()
    n = y.shape[0]
    cov_type, groups = check_cov_type(cov_type, clusters, n)
    kind, value = parse_kappa(kappa)
    cols = [np.ones((n, 1))] if add_intercept else []
    if exog is not None:
        exog = np.asarray(exog, dtype=float)
        cols.append(exog.reshape(n, -1))
    # Redundant controls (e.g. fold dummies inside one environment) are dropped, not fatal.
    X1, basis_x1 = independent_basis(np.hstack(cols)) if cols else (np.empty((n, 0)), np.empty((n, 0)))
    X = np.hstack([X1, d[:, None]])

    if kind == "ols" or instruments is None:
        if kind != "ols":
            raise InputError("instrumental-variable estimation needs at least one instrument")
        PzX, Pzy, k_val, n_instr, f_stat = X, y, 0.0, 0, None
    else:
        Zi = np.asarray(instruments, dtype=float).reshape(n, -1)
        proj = InstrumentProjector(residualize(Zi, basis_x1))
        n_instr = proj.rank
        if n_instr == 0:
            raise InputError("the instruments are collinear with the exogenous controls")
        f_stat = _first_stage_f(residualize(d[:, None], basis_x1)[:, 0], proj, n - X1.shape[1], cov_type, groups)
        if debiased and cov_type != "unadjusted":
            # The first-stage regression's own small-sample scale (its k: controls plus instruments),
            # as linearmodels applies it; the unadjusted F already uses n - k degrees of freedom.
            f_stat = f_stat / _debias_scale(n, X1.shape[1] + n_instr, groups)
        if kind == "tsls":
            k_val = 1.0
        elif kind == "fixed":
            k_val = value
        else:
            k_val = _liml_kappa(np.column_stack([y, d]), basis_x1, proj)
            if kind == "fuller":
                k_val -= value / (n - X1.shape[1] - n_instr)
        # [X1, Z] spans the same space as [X1, Z residualised on X1]: the two projections add.
        Pz_dy = basis_x1 @ (basis_x1.T @ np.column_stack([d, y])) + proj.project(np.column_stack([d, y]))
        PzX = np.hstack([X1, Pz_dy[:, :1]])
        Pzy = Pz_dy[:, 1]

    A = (1 - k_val) * (X.T @ X) + k_val * (X.T @ PzX)
    b = (1 - k_val) * (X.T @ y) + k_val * (X.T @ Pzy)
    params = np.linalg.solve(A, b)
    eps = y - X @ params
    V_inv = np.linalg.inv(A / n)
    k_cols = X.shape[1]
    if cov_type == "unadjusted":
        cov = (eps @ eps / n) * V_inv / n
    else:
        S = score_outer(PzX * eps[:, None], groups) / n
        cov = V_inv @ S @ V_inv / n
    if debiased:
        cov = cov * _debias_scale(n, k_cols, groups)
    cov = (cov + cov.T) / 2
    return KClassFit(
        estimate=float(params[-1]),
        se=float(np.sqrt(cov[-1, -1])),
        params=params,
        cov=cov,
        kappa=float(k_val),
        n=n,
        n_instruments=n_instr,
        first_stage_f=None if f_stat is None else float(f_stat),
        cov_type=cov_type,
        residuals=eps,
        n_clusters=None if groups is None else groups.n_clusters,
        estimator=kind,
    )


def _debias_scale(n: int, k: int, clusters: Clusters | None) -> float:
    """linearmodels' small-sample factor: n / (n - k), or G / (G - 1) * (n - 1) / (n - k) with G clusters."""
    if n <= k:
        raise InputError(f"the debiased covariance needs more samples ({n}) than regressors ({k})")
    if clusters is None:
        return n / (n - k)
    G = clusters.n_clusters
    return G / (G - 1) * (n - 1) / (n - k)


def _liml_kappa(e: np.ndarray, basis_x1: np.ndarray, proj: InstrumentProjector) -> float:
    """Smallest root of det(E'M_X1 E - k E'M_Z E) = 0 with E = [y, d]."""
    ex1 = residualize(e, basis_x1)
    ez = ex1 - proj.project(ex1)
    return float(sla.eigh(ex1.T @ ex1, ez.T @ ez, eigvals_only=True).min())


def _first_stage_f(
    d_tilde: np.ndarray, proj: InstrumentProjector, df_resid: int, cov_type: str, clusters: Clusters | None = None
) -> float:
    """Partial first-stage F of the residualised instruments (basis-invariant Wald form)."""
    m = proj.rank
    t = proj.basis.T @ d_tilde
    u = d_tilde - proj.basis @ proj.coefficients(d_tilde)
    explained = float(t @ proj.coefficients(d_tilde))  # d' P d
    if cov_type in ("robust", "cluster"):
        if clusters is not None and clusters.n_clusters <= m:
            return float("nan")  # the cluster meat has rank < m: no Wald statistic
        meat = score_outer(proj.basis * u[:, None], clusters)
        return float(t @ np.linalg.solve(meat, t)) / m
    rss = float(u @ u)
    return explained / m / (rss / max(df_resid - m, 1))
