"""The scipy.special tail probabilities equal scipy.stats' to the bit (they exist only to skip its import)."""

import numpy as np
import pytest
from scipy import stats

from invariant_mr.estimators import tail_probabilities as tp

X = np.array([-np.inf, -40.0, -8.5, -1.96, -0.3, 0.0, 1e-300, 0.5, 1.959963984540054, 3.1, 12.0, 39.0, 1e3, np.inf, np.nan])
Q = np.array([0.0, 1e-300, 1e-12, 0.025, 0.5, 0.95, 0.975, 1 - 1e-12, 1.0, np.nan])
DF = [0.5, 1, 2, 3.5, 77, 1e6]


def same(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


def test_normal_matches_scipy_stats_exactly():
    assert same(tp.norm_sf(X), stats.norm.sf(X))
    assert same(tp.norm_ppf(Q), stats.norm.ppf(Q))
    assert same(tp.norm_pdf(X), stats.norm.pdf(X))


@pytest.mark.parametrize("df", DF)
def test_t_and_chi2_match_scipy_stats_exactly(df):
    assert same(tp.t_sf(X, df), stats.t.sf(X, df))
    assert same(tp.t_ppf(Q, df), stats.t.ppf(Q, df))
    assert same(tp.chi2_sf(X, df), stats.chi2.sf(X, df))
    assert same(tp.chi2_ppf(Q, df), stats.chi2.ppf(Q, df))


def test_scalars_in_scalars_out_and_bad_df_is_nan():
    for ours, ref in [(tp.norm_sf(1.5), stats.norm.sf(1.5)), (tp.t_sf(2.0, 5), stats.t.sf(2.0, 5)),
                      (tp.chi2_sf(3.0, 2), stats.chi2.sf(3.0, 2)), (tp.chi2_ppf(0.95, 1), stats.chi2.ppf(0.95, 1))]:
        assert np.ndim(ours) == 0 and float(ours) == float(ref)
    assert np.isnan(tp.t_sf(1.0, 0)) and np.isnan(tp.chi2_sf(1.0, -1)) and np.isnan(tp.chi2_ppf(0.5, 0))
    assert same(tp.chi2_sf(X, np.array(DF)[:, None]), stats.chi2.sf(X, np.array(DF)[:, None]))
