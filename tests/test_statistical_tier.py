"""The statistical tier that CI runs: bias, SE calibration and coverage of the invariant methods.

Each check replicates a small seeded design (the paper simulator) a few
hundred times through the registered method, exactly as a user runs it, and
compares the replications with two-sided bands from their sampling
distribution (`statistical_bounds`): coverage against binomial bands, mean
bias against the Monte Carlo SE, the Monte Carlo SD of the estimates against
the reported SE (chi-square band). A bias of a few SEs, intervals 25% too
narrow, or a pooled fit without its environment fixed effects fails them
(`benchmarks/mutation_check.py` injects each fault and records that this
file fails). The whole file stays well under two minutes on one core; the
long versions (1000+ replications, weak instruments) are the slow tests and
`benchmarks/coverage.py`.

The shortfalls allowed below are the ones the benchmarks document, not values
fitted to these seeds: cross-fitted 2SLS covers 0.92-0.93 at this size
(benchmarks/results/coverage.md, strong cells).
"""

from __future__ import annotations

import numpy as np
import pytest

from invariant_mr.methods.registry import MethodContext
from invariant_mr.pipeline import run_analysis
from invariant_mr.simulation import simulate_paper
from statistical_bounds import assert_rate, assert_se_calibrated, assert_unbiased, rate_band

THETA = 1.0


def oracle_tsls(sim) -> tuple[float, float]:
    """2SLS of Y on D with the true W, environment fixed effects and HC0 SE, written out in numpy.

    An independent reference for the efficiency check: it shares no code with
    the package's IV estimator.
    """
    d = sim.data
    dummies = (d.env_codes[:, None] == np.arange(len(d.env_levels))[None, :]).astype(float)
    # Residualise everything on the environment dummies (they include the intercept).
    coef = lambda M: np.linalg.lstsq(dummies, M, rcond=None)[0]  # noqa: E731
    resid = lambda M: M - dummies @ coef(M)  # noqa: E731
    y, x, W = resid(d.outcome), resid(d.exposure), resid(sim.W)
    xhat = W @ np.linalg.lstsq(W, x, rcond=None)[0]
    beta = float(xhat @ y / (xhat @ x))
    u = y - beta * x
    se = float(np.sqrt(np.sum(xhat**2 * u**2)) / (xhat @ xhat))
    return beta, se


def replicate(method: str, setting: str, reps: int, n_per_env: int, seed0: int, options: dict, n_envs: int = 2):
    """Pooled rows of `method` over `reps` seeded data sets, with the numpy oracle on the same data."""
    rows, oracle = [], []
    for r in range(reps):
        sim = simulate_paper(setting, n_envs=n_envs, n_per_env=n_per_env, seed=seed0 + r)
        ctx = MethodContext(seed=r, per_env=False, options=options)
        rows.append(run_analysis(sim.data, method, ctx).select(method, "pooled")[0])
        oracle.append(oracle_tsls(sim))
    return rows, np.array(oracle)


def answered(rows):
    """Estimates, SEs and coverage of the rows that have an interval (an abstaining fit has none)."""
    kept = [r for r in rows if r.ci_low is not None]
    est = np.array([r.estimate for r in kept])
    se = np.array([r.se for r in kept])
    covered = np.array([r.ci_low <= THETA <= r.ci_high for r in kept])
    return est, se, covered, np.array([r.ci_low is not None for r in rows])


def assert_abstains_rarely(has_interval, p: float = 0.01):
    """At most about `p` of the fits find no invariant direction (the benchmark: 0.000-0.006)."""
    _, hi = rate_band(has_interval.size, p)
    missing = 1 - float(np.mean(has_interval))
    assert missing <= hi, f"{missing:.3f} of fits abstained, more than {hi:.3f}"


# ---------------------------------------------------------------------------- invariant_linear
@pytest.fixture(scope="module")
def linear_bootstrap():
    # 50 refitting draws instead of the default 200 keep the check at ~25 s; the SE is then a
    # little noisier, which the calibration band below allows for (10% relative SD).
    opts = {"direction_bootstrap": "50", "diagnostic_permutations": 19}
    return replicate("invariant_linear", "linear", 200, 1000, 40_000, opts)


def test_invariant_linear_is_unbiased_and_as_efficient_as_the_oracle(linear_bootstrap):
    rows, oracle = linear_bootstrap
    est, se, _, has_interval = answered(rows)
    assert_abstains_rarely(has_interval)
    assert_unbiased(est, THETA)
    # The closed form reaches the oracle (true W) up to its directions' error: the SEs agree
    # within 15% (benchmarks/results/coverage.md: Wald lengths 0.093 vs 0.087). Dropping
    # the environment fixed effects from the pooled fit leaves the SE ~1.5x the oracle's.
    ratio = float(np.median(se / oracle[has_interval, 1]))
    assert 0.95 <= ratio <= 1.15, f"median SE ratio to the oracle {ratio:.3f}"
    # The learned instruments estimate what the oracle does: their difference is small next to the SE.
    gap = est - oracle[has_interval, 0]
    assert np.sqrt(np.mean(gap**2)) < 0.5 * np.median(se)


def test_invariant_linear_bootstrap_interval_covers(linear_bootstrap):
    est, se, covered, _ = answered(linear_bootstrap[0])
    assert_se_calibrated(est, se, tolerance=0.1)
    assert_rate(covered, 0.95, what="direction-bootstrap Wald coverage")


# ---------------------------------------------------------------------------- cross-fitted
@pytest.fixture(scope="module")
def linear_crossfit():
    return replicate("invariant_linear_crossfit", "linear", 200, 1000, 50_000, {"diagnostic_permutations": 19})


def test_crossfit_is_unbiased_calibrated_and_covers(linear_crossfit):
    rows, oracle = linear_crossfit
    est, se, covered, has_interval = answered(rows)
    assert_abstains_rarely(has_interval)
    assert_unbiased(est, THETA)
    assert_se_calibrated(est, se, tolerance=0.05)
    assert_rate(covered, 0.95, p_low=0.92, what="cross-fitted Wald coverage")
    # Half the rows learn each map, so the SE is close to, not below, the oracle's.
    ratio = float(np.median(se / oracle[has_interval, 1]))
    assert 0.95 <= ratio <= 1.15, f"median SE ratio to the oracle {ratio:.3f}"


# ---------------------------------------------------------------------------- invariant_polynomial
@pytest.fixture(scope="module")
def polynomial():
    # Degree-2 mixing, where every column of Z is confounded; 24 replications (~2 s each) is what
    # the CI budget allows: enough to see a bias of one SE, not a 25% error in the SE (the linear
    # checks above and the slow test of the polynomial learner cover that).
    opts = {"poly_degrees": "1,2", "poly_restarts": 2, "poly_bootstrap": 50, "diagnostic_permutations": 19}
    return replicate("invariant_polynomial", "poly2", 24, 800, 5000, opts)


def test_invariant_polynomial_is_unbiased_and_its_interval_is_not_too_narrow(polynomial):
    rows, oracle = polynomial
    est, se, covered, has_interval = answered(rows)
    # The abstention rule (a fold's estimate must not move with the number of directions kept, F >= 10)
    # may decline a small noise-free fit now and then; more than about 1 in 20 would be a regression.
    assert_abstains_rarely(has_interval, p=0.05)
    assert_unbiased(est, THETA)
    assert_se_calibrated(est, se, tolerance=0.1)
    assert_rate(covered, 0.95, what="invariant_polynomial Wald coverage")
    # The standardised errors are N(0, 1): their mean square has a chi-square band.
    from scipy import stats

    z2 = float(np.mean(((est - THETA) / se) ** 2))
    assert z2 <= stats.chi2.isf(1e-3, est.size) / est.size, f"mean squared z-score {z2:.2f}"


@pytest.mark.slow
def test_invariant_polynomial_coverage_long():
    """The long version (scheduled run): 200 replications, enough to see intervals 25% too narrow."""
    opts = {"poly_degrees": "1,2", "poly_restarts": 2, "poly_bootstrap": 100, "diagnostic_permutations": 19}
    rows, _ = replicate("invariant_polynomial", "poly2", 200, 800, 60_000, opts)
    est, se, covered, has_interval = answered(rows)
    assert_abstains_rarely(has_interval)
    assert_unbiased(est, THETA)
    assert_se_calibrated(est, se, tolerance=0.1)
    assert_rate(covered, 0.95, what="invariant_polynomial Wald coverage")


# ---------------------------------------------------------------------------- invariant_autoencoder
#: A setting where the autoencoder should work: linear mixing, an affine instrument head and the
#: relevance head on (as `test_autoencoder.test_recovers_w_under_linear_mixing`), short training.
AE_WORKS = {
    "hidden": 32, "epochs": 100, "warmup_epochs": 30, "batch_size": 128, "lr": 3e-3, "device": "cpu",
    "mmd_kernel": "rbf", "independence": "rbf", "lam_inv": 100.0, "lam_rel": 1.0, "linear_w": True,
    "invariance_permutations": 0, "diagnostic_permutations": 19,
}  # fmt: skip


def test_autoencoder_estimate_and_interval_where_it_should_work():
    """Linear mixing, 3 seeds: each 95% interval covers theta and the mean z-score is within 3/sqrt(3).

    The benchmark (paper_settings_neural.md, linear, n = 3000) has a bias of 0.024 against an SD
    of 0.011: the learned instruments leak some V. At n = 600 that bias is below one SE, so the
    intervals should cover; a shift of 2 SEs moves the mean z-score past the bound.
    """
    z = []
    for s in range(3):
        sim = simulate_paper("linear", n_envs=2, n_per_env=600, seed=300 + s)
        row = run_analysis(sim.data, "invariant_autoencoder", MethodContext(seed=s, per_env=False, options=AE_WORKS))
        (pooled,) = row.select("invariant_autoencoder", "pooled")
        assert pooled.ci_low <= THETA <= pooled.ci_high, pooled.summary()
        z.append((pooled.estimate - THETA) / pooled.se)
    assert abs(np.mean(z)) < 3 / np.sqrt(3), z


def test_autoencoder_documented_failure_on_polynomial_mixing():
    """Where it does not work: degree-2 mixing with the default MLP decoder.

    paper_settings_neural.md reports bias 0.086 (SD 0.006) and coverage 0.00 there: the learned
    hW keeps nonlinear functions of V. Pinned here so that a fix shows up as a failing test (and
    the docs get updated), and so that nobody reads a covering interval from this setting.
    """
    sim = simulate_paper("poly2", n_envs=2, n_per_env=600, seed=300)
    opts = {"hidden": 32, "epochs": 60, "device": "cpu", "invariance_permutations": 0, "diagnostic_permutations": 19}
    (pooled,) = run_analysis(sim.data, "invariant_autoencoder", MethodContext(seed=0, per_env=False, options=opts)).select(
        "invariant_autoencoder", "pooled"
    )
    assert pooled.estimate - THETA > 2.5 * pooled.se  # biased towards the confounded OLS direction
    assert not pooled.ci_low <= THETA <= pooled.ci_high
