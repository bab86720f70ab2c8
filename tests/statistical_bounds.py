"""Two-sided acceptance bands for the Monte Carlo checks (coverage, size, bias, SE calibration).

Every band is an exact or asymptotic sampling band at level `LEVEL` around
the claimed value, so a correct estimator fails it with probability about
`LEVEL` per check (the checks are seeded, so in practice never), while a bias
of a few SEs or intervals 25% too narrow leave it by many band-widths. The
bounds are computed from the number of replications, not tuned to results.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

#: Two-sided level of every band: a correct method leaves it with probability 1 in 1000.
LEVEL = 1e-3


def rate_band(
    n: int, p: float, p_low: float | None = None, p_high: float | None = None, level: float = LEVEL
) -> tuple[float, float]:
    """Acceptance band for a rate out of `n` Bernoulli trials whose probability is `p`.

    `p_low` (below `p`) or `p_high` (above it) state a documented finite-sample
    departure: that end of the band is then the binomial band of `p_low` or
    `p_high`, the other end stays that of `p`.
    """
    lo = stats.binom.ppf(level / 2, n, p if p_low is None else p_low) / n
    hi = stats.binom.isf(level / 2, n, p if p_high is None else p_high) / n
    return float(lo), float(hi)


def assert_rate(
    hits, p: float, *, p_low: float | None = None, p_high: float | None = None, what: str = "rate", level: float = LEVEL
) -> float:
    """Assert that the share of True in `hits` lies in `rate_band(len(hits), p, p_low, p_high)`; return the share."""
    hits = np.asarray(hits, dtype=bool)
    lo, hi = rate_band(hits.size, p, p_low, p_high, level)
    rate = float(hits.mean())
    assert lo <= rate <= hi, f"{what} {rate:.3f} over {hits.size} replications outside [{lo:.3f}, {hi:.3f}]"
    return rate


def assert_unbiased(estimates, truth: float, *, slack: float = 0.0, level: float = LEVEL) -> float:
    """Mean error within `z * SD / sqrt(n)` (+ `slack`, a documented finite-sample bias) of zero.

    The SD is the Monte Carlo SD of the estimates, so the bound is in units of
    the estimator's own sampling error: a shift of one SE over 200 replications
    leaves it by a factor of about 4.
    """
    est = np.asarray(estimates, dtype=float)
    z = stats.norm.isf(level / 2)
    bound = z * est.std(ddof=1) / np.sqrt(est.size) + slack
    bias = float(est.mean() - truth)
    assert abs(bias) <= bound, f"mean bias {bias:+.4f} over {est.size} replications, bound +-{bound:.4f}"
    return bias


def sd_ratio_band(n: int, level: float = LEVEL) -> tuple[float, float]:
    """Band for (Monte Carlo SD of normal estimates) / (their true SD): chi-square with n - 1 df."""
    lo = np.sqrt(stats.chi2.ppf(level / 2, n - 1) / (n - 1))
    hi = np.sqrt(stats.chi2.isf(level / 2, n - 1) / (n - 1))
    return float(lo), float(hi)


def assert_se_calibrated(estimates, ses, *, tolerance: float = 0.0, level: float = LEVEL) -> float:
    """Monte Carlo SD of the estimates over the median reported SE within the chi-square band.

    `tolerance` widens the band on both sides by a stated relative amount (the
    SE itself varies between replications, and with few bootstrap draws it is
    noisy). Intervals 25% too narrow give a ratio of 1.33.
    """
    est = np.asarray(estimates, dtype=float)
    ratio = float(est.std(ddof=1) / np.median(np.asarray(ses, dtype=float)))
    lo, hi = sd_ratio_band(est.size, level)
    lo, hi = lo * (1 - tolerance), hi * (1 + tolerance)
    assert lo <= ratio <= hi, f"SD/SE {ratio:.3f} over {est.size} replications outside [{lo:.3f}, {hi:.3f}]"
    return ratio


def assert_uniform_pvalues(pvalues, *, level: float = LEVEL) -> float:
    """Kolmogorov-Smirnov test of uniformity of null p-values; returns the KS p-value."""
    p = float(stats.kstest(np.asarray(pvalues, dtype=float), "uniform").pvalue)
    assert p > level, f"null p-values not uniform: KS p = {p:.2g} over {len(pvalues)} replications"
    return p
