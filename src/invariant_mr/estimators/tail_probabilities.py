"""Normal, Student t and chi-squared tail probabilities and quantiles, from `scipy.special`.

Summary-statistic MR needs only these few functions, and importing `scipy.stats` for them
cost `invariant-mr mr` most of a second (it loads scipy.spatial, sparse, linalg and optimize).
`scipy.stats` computes each of them with the very `scipy.special` routine used here
(`norm.sf(x) = ndtr(-x)`, `t.sf(x, df) = stdtr(df, -x)`, `chi2.sf = chdtrc`,
`chi2.ppf(p, df) = 2 gammaincinv(df / 2, p)`), so the numbers are the same to the bit;
`tests/test_tail_probabilities.py` holds them to that. What the `scipy.stats` wrappers add on
top, and which is kept here: the chi-squared survival is 1 below its support, and a
degree of freedom that is not positive gives NaN.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

_SQRT_2PI = math.sqrt(2 * math.pi)


def _result(value):
    # scipy.stats returns a NumPy scalar for scalar input and an array otherwise; so do these.
    return value[()] if isinstance(value, np.ndarray) else value


def norm_sf(x):
    """P(Z > x) for a standard normal Z."""
    return _result(special.ndtr(-np.asarray(x, dtype=float)))


def norm_ppf(q):
    """The standard normal quantile."""
    return _result(special.ndtri(np.asarray(q, dtype=float)))


def norm_pdf(x):
    """The standard normal density."""
    x = np.asarray(x, dtype=float)
    return _result(np.exp(-(x**2) / 2.0) / _SQRT_2PI)


def _valid_df(df, value):
    df = np.asarray(df, dtype=float)
    return np.where(df > 0, value, np.nan)


def t_sf(x, df):
    """P(T > x) for Student's t on `df` degrees of freedom."""
    x, df = np.asarray(x, dtype=float), np.asarray(df, dtype=float)
    return _result(_valid_df(df, special.stdtr(df, -x)))


def _quantile(q, df, value, lower: float):
    # As scipy.stats: q = 0 and 1 give the ends of the support, q outside [0, 1] gives NaN.
    value = np.where(q == 0, lower, np.where(q == 1, np.inf, value))
    return _result(_valid_df(df, np.where((q >= 0) & (q <= 1), value, np.nan)))


def t_ppf(q, df):
    """The quantile of Student's t on `df` degrees of freedom."""
    q, df = np.asarray(q, dtype=float), np.asarray(df, dtype=float)
    with np.errstate(invalid="ignore"):
        return _quantile(q, df, special.stdtrit(df, q), -np.inf)


def chi2_sf(x, df):
    """P(X > x) for a chi-squared X on `df` degrees of freedom (1 for x < 0)."""
    x, df = np.asarray(x, dtype=float), np.asarray(df, dtype=float)
    with np.errstate(invalid="ignore"):
        value = np.where(x < 0, 1.0, special.chdtrc(df, np.maximum(x, 0.0)))
    return _result(_valid_df(df, np.where(np.isnan(x), np.nan, value)))


def chi2_ppf(p, df):
    """The quantile of a chi-squared distribution on `df` degrees of freedom."""
    p, df = np.asarray(p, dtype=float), np.asarray(df, dtype=float)
    with np.errstate(invalid="ignore"):
        return _quantile(p, df, 2 * special.gammaincinv(df / 2, p), 0.0)


__all__ = ["chi2_ppf", "chi2_sf", "norm_pdf", "norm_ppf", "norm_sf", "t_ppf", "t_sf"]
