"""Instrumental-variable estimation of a log odds ratio for a binary outcome.

Two estimators, both with a linear first stage (OLS of the exposure d on the
instruments Z and controls C) and a logistic second stage:

* two-stage residual inclusion (2SRI, a control function): logit of y on
  [1, C, d, r] with r = d - dhat the first-stage residual;
* two-stage predictor substitution (2SPS): logit of y on [1, C, dhat].

The reported effect is the coefficient of d (2SRI) or dhat (2SPS): a log odds
ratio per unit of exposure. What each one estimates differs; see
`docs/binary_outcomes.md`. In short: 2SRI is consistent for the log odds ratio
conditional on the confounding (conditional on the first-stage error) when the
outcome follows a logistic model in d and that error; 2SPS integrates the
first-stage error into the logistic link and, by non-collapsibility of the odds
ratio, is attenuated towards zero for that conditional OR, and is not the
population-averaged OR either. Both are zero when the causal effect is zero,
so both give valid tests of no effect.

Standard errors account for the estimated first stage: the two stages are
stacked estimating equations (an M-estimator), and the sandwich uses each
sample's influence function

    IF2_i = A22^-1 (psi2_i - A21 A11^-1 psi1_i),

with psi1, psi2 the first- and second-stage scores and A = -d(mean psi)/dtheta
(Newey & McFadden 1994, section 6; Terza 2008 for 2SRI). With `clusters`
(e.g. families) the influence functions are summed within clusters first.
Alternatively, a seeded nonparametric bootstrap resamples samples (or whole
clusters) and refits both stages.

The logistic fits are Newton-Raphson (IRLS) with step halving, in numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import special

from invariant_mr.errors import InputError
from invariant_mr.estimators.iv import Clusters, WaldInference, check_cov_type, independent_columns, score_outer

METHODS = ("2sri", "2sps")


# ----------------------------------------------------------------------------- logistic regression
def logistic_regression(
    X: np.ndarray, y: np.ndarray, *, max_iter: int = 100, tol: float = 1e-10
) -> tuple[np.ndarray, int]:
    """(coefficients, Newton iterations) of the logistic regression of y (0/1) on X (with its own intercept).

    Newton-Raphson on the log-likelihood with step halving; convergence when the
    largest Newton step is below `tol` (relative to the coefficients). Raises
    InputError when it does not converge, which with a binary outcome nearly
    always means (quasi-)complete separation: a finite maximum does not exist.
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    beta = np.zeros(X.shape[1])
    # Start at the intercept-only fit when there is an intercept column: fewer iterations.
    ll = _loglik(X, y, beta)
    for it in range(1, max_iter + 1):
        mu = special.expit(X @ beta)
        w = mu * (1 - mu)
        grad = X.T @ (y - mu)
        hess = (X * w[:, None]).T @ X
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError as exc:
            raise InputError("logistic regression: singular information matrix (separation or collinearity)") from exc
        t = 1.0
        while True:
            cand = beta + t * step
            ll_new = _loglik(X, y, cand)
            if ll_new >= ll - 1e-12 * abs(ll) or t < 1e-8:
                break
            t /= 2
        beta, ll = cand, ll_new
        if np.max(np.abs(t * step)) <= tol * max(1.0, float(np.max(np.abs(beta)))):
            return beta, it
    raise InputError(
        f"logistic regression did not converge in {max_iter} Newton steps: the outcome is (nearly) perfectly "
        "separated by the regressors, so the odds ratio is not estimable"
    )


def _loglik(X, y, beta) -> float:
    eta = X @ beta
    return float(np.sum(y * eta - np.logaddexp(0.0, eta)))


# ----------------------------------------------------------------------------- result
@dataclass(frozen=True)
class BinaryIVResult(WaldInference):
    """A fitted IV log odds ratio (immutable). `estimate` is the log OR per unit of exposure."""

    method: str
    estimate: float
    se: float
    se_type: str
    params: np.ndarray
    param_names: tuple[str, ...]
    cov: np.ndarray
    first_stage: np.ndarray
    first_stage_f: float
    n: int
    n_events: int
    n_instruments: int
    n_clusters: int | None = None
    n_bootstrap: int = 0
    seed: int | None = None
    bootstrap_failures: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("params", "cov", "first_stage"):
            arr = np.array(getattr(self, name), dtype=float)
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    @property
    def odds_ratio(self) -> float:
        return float(np.exp(self.estimate))

    @property
    def residual_coefficient(self) -> tuple[float, float] | None:
        """2SRI: (coefficient, SE) of the first-stage residual, a test of exposure endogeneity."""
        if "first_stage_residual" not in self.param_names:
            return None
        j = self.param_names.index("first_stage_residual")
        return float(self.params[j]), float(np.sqrt(self.cov[j, j]))

    def to_dict(self, alpha: float = 0.05) -> dict:
        lo, hi = self.ci(alpha)
        out = {
            "method": self.method,
            "estimand": "log odds ratio per unit of exposure",
            "estimate": self.estimate,
            "se": self.se,
            "se_type": self.se_type,
            "ci_low": lo,
            "ci_high": hi,
            "odds_ratio": self.odds_ratio,
            "or_ci_low": float(np.exp(lo)),
            "or_ci_high": float(np.exp(hi)),
            "pvalue": self.pvalue,
            "n": self.n,
            "n_events": self.n_events,
            "n_instruments": self.n_instruments,
            "first_stage_f": self.first_stage_f,
            "n_clusters": self.n_clusters,
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
            "bootstrap_failures": self.bootstrap_failures,
            **self.extra,
        }
        rc = self.residual_coefficient
        if rc is not None:
            out["residual_coefficient"], out["residual_se"] = rc
        return out

    def summary(self, alpha: float = 0.05) -> str:
        lo, hi = self.ci(alpha)
        name = {"2sri": "two-stage residual inclusion", "2sps": "two-stage predictor substitution"}[self.method]
        lines = [
            f"{name} ({self.method}), logistic second stage",
            f"  log OR {self.estimate:.4f} (SE {self.se:.4f}, {self.se_type}); "
            f"OR {self.odds_ratio:.4f} [{np.exp(lo):.4f}, {np.exp(hi):.4f}] at {100 * (1 - alpha):.0f}%; "
            f"p = {self.pvalue:.3g}",
            f"  n = {self.n} ({self.n_events} events), {self.n_instruments} instruments, "
            f"first-stage F = {self.first_stage_f:.1f}"
            + (f", {self.n_clusters} clusters" if self.n_clusters else ""),
        ]
        rc = self.residual_coefficient
        if rc is not None:
            lines.append(f"  first-stage residual: {rc[0]:.4f} (SE {rc[1]:.4f}); nonzero = exposure endogenous")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- estimation
@dataclass(frozen=True)
class _Design:
    W1: np.ndarray  # first-stage regressors [1, C, Z]
    C: np.ndarray  # [1, C]
    n_controls: int  # columns of C, intercept included


def _design(n, instruments, exog) -> _Design:
    cols = [np.ones((n, 1))]
    if exog is not None:
        cols.append(np.asarray(exog, dtype=float).reshape(n, -1))
    C = independent_columns(np.hstack(cols))
    Z = np.asarray(instruments, dtype=float).reshape(n, -1)
    return _Design(W1=np.hstack([C, Z]), C=C, n_controls=C.shape[1])


def _second_stage_design(method: str, C: np.ndarray, d: np.ndarray, dhat: np.ndarray) -> np.ndarray:
    if method == "2sri":
        return np.column_stack([C, d, d - dhat])
    return np.column_stack([C, dhat])


def _point(method, y, d, W1, C) -> tuple[np.ndarray, np.ndarray]:
    gamma, *_ = np.linalg.lstsq(W1, d, rcond=None)
    X2 = _second_stage_design(method, C, d, W1 @ gamma)
    beta, _ = logistic_regression(X2, y)
    return gamma, beta


def _influence(method, y, d, W1, C, gamma, beta) -> np.ndarray:
    """(n, len(beta)) influence functions of the second-stage coefficients (times n)."""
    n = y.shape[0]
    dhat = W1 @ gamma
    X2 = _second_stage_design(method, C, d, dhat)
    mu = special.expit(X2 @ beta)
    w = mu * (1 - mu)
    psi1 = W1 * (d - dhat)[:, None]
    psi2 = X2 * (y - mu)[:, None]
    A11 = W1.T @ W1 / n
    A22 = (X2 * w[:, None]).T @ X2 / n
    # A21 = -d(mean psi2)/d gamma'. The first stage enters through one column j of X2
    # (the residual r = d - W1 gamma for 2SRI, dhat = W1 gamma for 2SPS), with
    # d x_j / d gamma = sign * W1 (sign -1 for the residual, +1 for dhat).
    j = X2.shape[1] - 1
    sign = -1.0 if method == "2sri" else 1.0
    resid = y - mu
    A21 = -sign * (
        np.outer(np.eye(X2.shape[1])[j], W1.T @ resid) - beta[j] * (X2 * w[:, None]).T @ W1
    ) / n
    if1 = np.linalg.solve(A11, psi1.T).T
    return np.linalg.solve(A22, (psi2 - if1 @ A21.T).T).T


def fit_binary_iv(
    outcome,
    exposure,
    instruments,
    exog=None,
    *,
    method: str = "2sri",
    se: str = "sandwich",
    n_bootstrap: int = 500,
    seed: int | None = 0,
    clusters=None,
) -> BinaryIVResult:
    """IV log odds ratio of a binary `outcome` (0/1) per unit of `exposure`.

    method: "2sri" (residual inclusion) or "2sps" (predictor substitution).
    se: "sandwich" (stacked estimating equations, accounts for the first
    stage) or "bootstrap" (`n_bootstrap` seeded resamples refitting both
    stages; the SE is their standard deviation, and resamples in which the
    logistic fit does not converge are dropped and counted).
    clusters: one label per sample (e.g. family ID) to sum the influence
    functions within clusters (sandwich) or resample whole clusters (bootstrap).
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if se not in ("sandwich", "bootstrap"):
        raise InputError(f"se must be 'sandwich' or 'bootstrap', got {se!r}")
    y = np.asarray(outcome, dtype=float).ravel()
    d = np.asarray(exposure, dtype=float).ravel()
    n = y.shape[0]
    if d.shape[0] != n:
        raise InputError(f"exposure has {d.shape[0]} values for {n} outcomes")
    if not np.all(np.isfinite(y)) or not np.all(np.isin(y, (0.0, 1.0))):
        raise InputError("a binary outcome must be coded 0/1 with no missing values")
    n_events = int(y.sum())
    if n_events == 0 or n_events == n:
        raise InputError("the binary outcome has only one value: no odds ratio to estimate")
    if instruments is None:
        raise InputError("IV estimation of an odds ratio needs at least one instrument")
    _, groups = check_cov_type("cluster" if clusters is not None else "robust", clusters, n)
    des = _design(n, instruments, exog)
    m = des.W1.shape[1] - des.n_controls
    if np.linalg.matrix_rank(des.W1) < des.W1.shape[1]:
        raise InputError("the instruments are collinear with each other or with the controls")
    gamma, beta = _point(method, y, d, des.W1, des.C)
    fs_f = _first_stage_f(d, des, gamma, groups)
    names = tuple([f"control{j}" if j else "intercept" for j in range(des.n_controls)])
    names += ("exposure", "first_stage_residual") if method == "2sri" else ("predicted_exposure",)
    k_exp = des.n_controls
    if se == "sandwich":
        inf = _influence(method, y, d, des.W1, des.C, gamma, beta)
        cov = score_outer(inf, groups) / n**2
        cov = (cov + cov.T) / 2
        failures = 0
        n_boot = 0
        boot_seed = None
    else:
        n_boot = int(n_bootstrap)
        if n_boot < 2:
            raise InputError(f"the bootstrap needs at least 2 resamples, got {n_bootstrap}")
        draws, failures = _bootstrap(method, y, d, des, groups, n_boot, seed)
        if draws.shape[0] < 2:
            raise InputError("fewer than 2 bootstrap resamples gave a logistic fit (separation)")
        cov = np.cov(draws, rowvar=False)
        boot_seed = seed
    return BinaryIVResult(
        method=method,
        estimate=float(beta[k_exp]),
        se=float(np.sqrt(cov[k_exp, k_exp])),
        se_type=se if groups is None else f"{se} (clustered)",
        params=beta,
        param_names=names,
        cov=cov,
        first_stage=gamma,
        first_stage_f=fs_f,
        n=n,
        n_events=n_events,
        n_instruments=m,
        n_clusters=None if groups is None else groups.n_clusters,
        n_bootstrap=n_boot,
        seed=boot_seed,
        bootstrap_failures=failures,
    )


def _first_stage_f(d, des: _Design, gamma, groups: Clusters | None) -> float:
    """Robust (HC0 or clustered) Wald F of the instrument coefficients in the first stage."""
    W1 = des.W1
    u = d - W1 @ gamma
    bread = np.linalg.inv(W1.T @ W1)
    cov = bread @ score_outer(W1 * u[:, None], groups) @ bread
    sl = slice(des.n_controls, None)
    g = gamma[sl]
    m = g.shape[0]
    if groups is not None and groups.n_clusters <= m:
        return float("nan")
    return float(g @ np.linalg.solve(cov[sl, sl], g)) / m


def _bootstrap(method, y, d, des: _Design, groups: Clusters | None, n_boot: int, seed) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(seed)
    n = y.shape[0]
    if groups is not None:
        members = [np.flatnonzero(groups.codes == g) for g in range(groups.n_clusters)]
    draws, failures = [], 0
    for _ in range(n_boot):
        if groups is None:
            rows = rng.integers(0, n, n)
        else:
            rows = np.concatenate([members[g] for g in rng.integers(0, groups.n_clusters, groups.n_clusters)])
        try:
            _, b = _point(method, y[rows], d[rows], des.W1[rows], des.C[rows])
        except (InputError, np.linalg.LinAlgError):
            failures += 1
            continue
        draws.append(b)
    return np.asarray(draws), failures


__all__ = ["BinaryIVResult", "METHODS", "fit_binary_iv", "logistic_regression"]
