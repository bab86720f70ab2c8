"""Within-family MR: IV with family fixed effects, clustered by family, and its summary-statistic form.

Siblings share their parents, so the difference between a child's genotype
and its family's mean genotype is the Mendelian lottery: independent of
ancestry, of the parents' genotypes and phenotypes (dynastic effects), of
assortative mating and of the household, which are all constant within a
family (Brumpton et al. 2020, Nat Commun 11:3519; Howe et al. 2022, Nat
Genet 54:581). Family fixed effects remove everything siblings share; by
Frisch-Waugh-Lovell the fixed-effects fit is the fit on within-family
demeaned data, which is how it is computed here (no n x G dummy matrix).
SEs are cluster-robust by family: the fixed effects are nested in the
clusters, so the CR0 sandwich needs no degrees-of-freedom correction for them.

Families of one (no sibling in the analysis) carry no within-family
variation and are dropped (counted in the fit).

Two first stages:

* `fit_within_family`: k-class IV on every instrument (2SLS or LIML), the
  textbook fixed-effects IV. With many instruments that are weak within
  families (a genotype's within-family variance is half its population
  variance) 2SLS is pulled towards the within-family OLS.
* `fit_within_family_crossfit`: the families are split into folds; each
  fold's instrument is the within-family polygenic score whose weights were
  fitted on the other folds (a split-sample score). A score fitted elsewhere
  is a fixed function of the genotype for the rows it scores, so it is a
  valid single instrument whatever the number of variants, and the IV
  estimate has no many-instrument bias. This is the default of the
  `within_family` method.

`within_family_associations` is the summary-statistic form: per-variant
within-family associations with exposure and outcome (a within-sibship
GWAS), which IVW, MR-Egger and the median/mode estimators take unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from invariant_mr.errors import InputError
from invariant_mr.estimators.iv import Clusters, KClassFit, fit_kclass, orthonormal_basis, residualize
from invariant_mr.estimators.summary.sumstats import SummaryStatistics


@dataclass(frozen=True)
class Families:
    """Family codes 0..G-1 of the rows that have at least one sibling in the data."""

    codes: np.ndarray  # (n_kept,) family code of each kept row
    rows: np.ndarray  # (n_kept,) positions of the kept rows in the input
    n_families: int
    n_singletons: int

    @property
    def clusters(self) -> Clusters:
        return Clusters(codes=self.codes, n_clusters=self.n_families)

    def demean(self, M: np.ndarray) -> np.ndarray:
        """M[rows] minus its family means (columns of M)."""
        A = np.asarray(M, dtype=float)[self.rows]
        A2 = A.reshape(A.shape[0], -1)
        sums = self.clusters.sums(A2)
        counts = np.bincount(self.codes, minlength=self.n_families).astype(float)
        return (A2 - (sums / counts[:, None])[self.codes]).reshape(A.shape)


def family_structure(families, n: int) -> Families:
    """Validate family labels (one per sample) and drop the families of one."""
    labels = np.asarray(families, dtype=object)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise InputError(f"families must hold one label per sample ({n}), got shape {labels.shape}")
    codes, _ = pd.factorize(labels, use_na_sentinel=True)
    if (codes < 0).any():
        raise InputError(f"{int((codes < 0).sum())} sample(s) have no family ID; every sample needs one")
    sizes = np.bincount(codes)
    keep = sizes[codes] >= 2
    if not keep.any():
        raise InputError("no family has two members in the data: a within-family design needs siblings")
    rows = np.flatnonzero(keep)
    kept_codes, uniques = pd.factorize(codes[rows])
    n_families = len(uniques)
    if n_families < 2:
        raise InputError("within-family estimation needs at least two families with siblings")
    return Families(codes=kept_codes.astype(np.int64), rows=rows, n_families=n_families,
                    n_singletons=int((sizes == 1).sum()))


@dataclass(frozen=True)
class WithinFamilyFit:
    """A within-family IV fit: the k-class fit on demeaned data and how the families were used."""

    fit: KClassFit
    n_families: int
    n_singletons_dropped: int
    n_samples_used: int
    first_stage: str
    n_folds: int | None = None
    cluster_se: float | None = None

    @property
    def estimate(self) -> float:
        return self.fit.estimate

    @property
    def se(self) -> float:
        return self.fit.se

    def ci(self, alpha: float = 0.05) -> tuple[float, float]:
        return self.fit.ci(alpha)

    def summary(self) -> str:
        lo, hi = self.ci()
        return (f"within-family IV ({self.first_stage}): {self.estimate:.4f} (SE {self.se:.4f}, "
                f"95% CI {lo:.4f} to {hi:.4f}); {self.n_families} families, {self.n_samples_used} samples, "
                f"{self.n_singletons_dropped} singleton(s) dropped")


def _demeaned(fam: Families, outcome, exposure, instruments, exog):
    n = np.asarray(outcome).ravel().shape[0]
    y = fam.demean(np.asarray(outcome, dtype=float).ravel())
    d = fam.demean(np.asarray(exposure, dtype=float).ravel())
    Z = fam.demean(np.asarray(instruments, dtype=float).reshape(n, -1))
    X = None
    if exog is not None:
        X = fam.demean(np.asarray(exog, dtype=float).reshape(n, -1))
        # Controls constant within every family (environment, ancestry, same-sex sibships' sex) vanish here.
        X = X[:, np.ptp(X, axis=0) > 1e-12]
        X = X if X.shape[1] else None
    return y, d, Z, X


def fit_within_family(
    outcome, exposure, instruments, families, exog=None, *, kappa="tsls"
) -> WithinFamilyFit:
    """k-class IV with family fixed effects on every instrument; SEs clustered by family.

    `exog`: covariates that vary within families (age, sex); anything constant
    within families (environment, ancestry PCs) is absorbed by the fixed effects.
    """
    n = np.asarray(outcome).ravel().shape[0]
    fam = family_structure(families, n)
    y, d, Z, X = _demeaned(fam, outcome, exposure, instruments, exog)
    fit = fit_kclass(y, d, Z, X, kappa=kappa, cov_type="cluster", clusters=fam.clusters, add_intercept=False)
    return WithinFamilyFit(fit=fit, n_families=fam.n_families, n_singletons_dropped=fam.n_singletons,
                           n_samples_used=int(fam.rows.size), first_stage=f"all instruments, {kappa}")


def family_folds(n_families: int, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold of each family (balanced, random): whole families go to one fold."""
    if n_folds < 2:
        raise InputError(f"cross-fitting needs at least 2 folds, got {n_folds}")
    if n_families < 2 * n_folds:
        raise InputError(f"{n_families} families are too few for {n_folds} folds")
    return rng.permutation(np.arange(n_families) % n_folds)


def _crossfit_score(Z: np.ndarray, d: np.ndarray, fold: np.ndarray, n_folds: int, ridge: float) -> np.ndarray:
    """Each fold's rows times first-stage weights fitted on the other folds."""
    score = np.empty(Z.shape[0])
    for f in range(n_folds):
        train, test = fold != f, fold == f
        A = Z[train]
        G = A.T @ A
        if ridge > 0:
            G = G + ridge * np.trace(G) / G.shape[0] * np.eye(G.shape[0])
        score[test] = Z[test] @ np.linalg.lstsq(G, A.T @ d[train], rcond=None)[0]
    return score


def fit_within_family_crossfit(
    outcome, exposure, instruments, families, exog=None, *, n_folds: int = 5, seed=0, ridge: float = 0.0,
    se: str = "jackknife", jackknife_groups: int = 20,
) -> WithinFamilyFit:
    """IV with family fixed effects on a cross-fitted within-family score; SEs clustered by family.

    For each fold of families, the first-stage weights (within-family
    regression of the exposure on every instrument, after the covariates;
    ridge-penalised by `ridge` times the mean Gram diagonal) are fitted on the
    other folds, and the fold's instrument is its demeaned genotypes times
    those weights. The IV fit then uses that one score for every row.

    `se`: "jackknife" (default) is the delete-a-group jackknife over
    `jackknife_groups` random groups of families, each replicate refitting the
    weights and the estimate. It accounts for the noise of the fitted weights,
    which the "cluster" SE (the cluster-robust 2SLS SE given the score) treats
    as fixed: on the sibship simulations the latter is 10-20% too small and
    covers about 91%, the jackknife 95% (docs/genetic_simulations.md). Both are
    reported (`cluster_se` in the fit). `seed` fixes folds and groups.
    """
    if se not in ("jackknife", "cluster"):
        raise InputError(f"se must be 'jackknife' or 'cluster', got {se!r}")
    n = np.asarray(outcome).ravel().shape[0]
    fam = family_structure(families, n)
    y, d, Z, X = _demeaned(fam, outcome, exposure, instruments, exog)
    rng = np.random.default_rng(seed)
    fold = family_folds(fam.n_families, n_folds, rng)[fam.codes]
    # Covariates partialled out of everything (FWL): the score is then orthogonal to them.
    if X is not None:
        basis = orthonormal_basis(X)
        Z, d, y = residualize(Z, basis), residualize(d[:, None], basis)[:, 0], residualize(y[:, None], basis)[:, 0]
    score = _crossfit_score(Z, d, fold, n_folds, ridge)
    fit = fit_kclass(y, d, score[:, None], None, kappa="tsls", cov_type="cluster", clusters=fam.clusters,
                     add_intercept=False)
    cluster_se = fit.se
    if se == "jackknife":
        if fam.n_families < 2 * jackknife_groups:
            raise InputError(f"{fam.n_families} families are too few for {jackknife_groups} jackknife groups")
        group = rng.permutation(np.arange(fam.n_families) % jackknife_groups)[fam.codes]
        reps = np.empty(jackknife_groups)
        for g in range(jackknife_groups):
            keep = group != g
            s = _crossfit_score(Z[keep], d[keep], fold[keep], n_folds, ridge)
            reps[g] = (s @ y[keep]) / (s @ d[keep])
        jk_se = float(np.sqrt((jackknife_groups - 1) / jackknife_groups * np.sum((reps - reps.mean()) ** 2)))
        cov = fit.cov.copy()
        cov[-1, -1] = jk_se**2
        fit = replace(fit, se=jk_se, cov=cov, cov_type="jackknife (families)")
    return WithinFamilyFit(fit=fit, n_families=fam.n_families, n_singletons_dropped=fam.n_singletons,
                           n_samples_used=int(fam.rows.size), first_stage="cross-fitted within-family score",
                           n_folds=n_folds, cluster_se=float(cluster_se))


def within_family_associations(
    Z, exposure, outcome, families, covariates=None, *, variant_names=None
) -> SummaryStatistics:
    """Per-variant within-family associations (a within-sibship GWAS), SEs clustered by family.

    Each variant's slope on exposure and on outcome with family fixed effects
    and the within-family covariates; the cluster-robust (CR0) SE sums each
    family's scores. Feed the result to `summary_mr.ivw`, `mr_egger`,
    `weighted_median`...: the within-family form of summary-statistic MR.
    """
    Z = np.asarray(Z, dtype=float)
    n = Z.shape[0]
    fam = family_structure(families, n)
    y, d, Zw, X = _demeaned(fam, outcome, exposure, Z, covariates)
    if X is not None:
        basis = orthonormal_basis(X)
        Zw, y, d = residualize(Zw, basis), residualize(y[:, None], basis)[:, 0], residualize(d[:, None], basis)[:, 0]
    sxx = np.einsum("ij,ij->j", Zw, Zw)
    tiny = sxx <= 1e-12 * max(1.0, float(sxx.max()))
    if tiny.any():
        raise InputError(f"{int(tiny.sum())} variant(s) do not vary within any family; drop them first")
    clusters = fam.clusters
    B = clusters.sums(Zw * Zw)  # (G, p) per-family x'x
    out = []
    for trait in (d, y):
        beta = (Zw.T @ trait) / sxx
        S = clusters.sums(Zw * trait[:, None]) - B * beta  # per-family score sums of x (t - b x)
        out.append((beta, np.sqrt(np.einsum("gj,gj->j", S, S)) / sxx))
    names = variant_names if variant_names is not None else tuple(f"iv{j + 1}" for j in range(Z.shape[1]))
    return SummaryStatistics(
        variant=tuple(names), beta_exposure=out[0][0], se_exposure=out[0][1], beta_outcome=out[1][0],
        se_outcome=out[1][1], n=int(fam.rows.size), adjusted_for=("family fixed effects",), cov_type="cluster",
    )


__all__ = [
    "Families", "WithinFamilyFit", "family_folds", "family_structure", "fit_within_family",
    "fit_within_family_crossfit", "within_family_associations",
]
