"""k-class IV agrees with linearmodels to tight tolerances."""

import numpy as np
import pytest
from linearmodels.iv import IV2SLS, IVLIML

from invariant_mr.estimators.iv import fit_kclass


def _data(seed, n=400, p=4, q=2, hetero=True):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, p))
    X1 = rng.standard_normal((n, q))
    h = rng.standard_normal(n)
    d = Z @ rng.uniform(0.1, 0.5, p) + X1 @ rng.standard_normal(q) + h + rng.standard_normal(n)
    noise = rng.standard_normal(n) * ((1 + np.abs(Z[:, 0])) if hetero else 1)
    y = 0.5 * d + X1 @ rng.standard_normal(q) + h + noise
    return y, d, Z, X1


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("cov_type", ["robust", "unadjusted"])
@pytest.mark.parametrize("kappa, model", [("tsls", IV2SLS), ("liml", IVLIML)])
def test_matches_linearmodels(seed, cov_type, kappa, model):
    y, d, Z, X1 = _data(seed)
    exog = np.column_stack([np.ones(len(y)), X1])
    ref = model(y, exog, d[:, None], Z).fit(cov_type=cov_type)
    fit = fit_kclass(y, d, Z, X1, kappa=kappa, cov_type=cov_type)
    np.testing.assert_allclose(fit.params, ref.params.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.sqrt(np.diag(fit.cov)), ref.std_errors.to_numpy(), rtol=1e-6)
    if kappa == "liml":
        assert fit.kappa == pytest.approx(ref.kappa, rel=1e-8)
    if cov_type == "robust":
        # linearmodels reports the robust first-stage Wald chi2; ours is F = chi2 / m.
        wald = ref.first_stage.diagnostics["f.stat"].iloc[0]
        assert fit.first_stage_f * Z.shape[1] == pytest.approx(wald, rel=1e-6)


def test_fuller_matches_linearmodels():
    y, d, Z, X1 = _data(7)
    exog = np.column_stack([np.ones(len(y)), X1])
    ref = IVLIML(y, exog, d[:, None], Z, fuller=1).fit(cov_type="robust")
    fit = fit_kclass(y, d, Z, X1, kappa="fuller(1)")
    np.testing.assert_allclose(fit.params, ref.params.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(fit.se, ref.std_errors.iloc[-1], rtol=1e-6)


def test_ols_matches_linearmodels():
    y, d, _, X1 = _data(3)
    X = np.column_stack([np.ones(len(y)), X1, d])
    ref = IV2SLS(y, X, None, None).fit(cov_type="robust")
    fit = fit_kclass(y, d, None, X1, kappa="ols")
    np.testing.assert_allclose(fit.params, ref.params.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(fit.se, ref.std_errors.iloc[-1], rtol=1e-6)


def test_homoskedastic_first_stage_f_is_classical_partial_f():
    y, d, Z, X1 = _data(1, hetero=False)
    n, m, q = len(y), Z.shape[1], X1.shape[1] + 1
    restricted = np.column_stack([np.ones(n), X1])
    full = np.column_stack([restricted, Z])
    rss_r = np.sum((d - restricted @ np.linalg.lstsq(restricted, d, rcond=None)[0]) ** 2)
    rss_u = np.sum((d - full @ np.linalg.lstsq(full, d, rcond=None)[0]) ** 2)
    expected = ((rss_r - rss_u) / m) / (rss_u / (n - q - m))
    assert fit_kclass(y, d, Z, X1, cov_type="unadjusted").first_stage_f == pytest.approx(expected, rel=1e-9)


def test_redundant_controls_and_instruments_are_tolerated():
    y, d, Z, X1 = _data(2)
    ref = fit_kclass(y, d, Z, X1)
    dup = fit_kclass(y, d, np.column_stack([Z, Z[:, :1] * 2]), np.column_stack([X1, X1[:, 0] + 0, np.zeros(len(y))]))
    assert dup.estimate == pytest.approx(ref.estimate, rel=1e-10)
    assert dup.se == pytest.approx(ref.se, rel=1e-10)
    assert dup.n_instruments == Z.shape[1]


def test_exact_invariance_to_instrument_rescaling_and_rotation():
    y, d, Z, X1 = _data(4)
    rng = np.random.default_rng(0)
    A = rng.standard_normal((Z.shape[1], Z.shape[1]))
    a, b = fit_kclass(y, d, Z, X1), fit_kclass(y, d, Z @ A + 5.0, X1)
    assert a.estimate == pytest.approx(b.estimate, rel=1e-9)
    assert a.se == pytest.approx(b.se, rel=1e-9)


def test_orthonormal_basis_gram_route_and_qr_fallback_span_the_same_space():
    from invariant_mr.estimators.iv import orthonormal_basis

    rng = np.random.default_rng(12)
    M = rng.integers(0, 3, (2000, 60)).astype(float)
    B = orthonormal_basis(M)  # tall and well conditioned: the Gram/Cholesky route
    np.testing.assert_allclose(B.T @ B, np.eye(60), atol=1e-10)
    Q, _ = np.linalg.qr(M)
    np.testing.assert_allclose(B @ (B.T @ M), M, atol=1e-9)
    np.testing.assert_allclose(B @ B.T[:, :5], Q @ Q.T[:, :5], atol=1e-10)
    # A duplicated column: the pivoted QR drops it.
    D = np.hstack([M, M[:, :1]])
    assert orthonormal_basis(D).shape[1] == 60


def test_independent_columns_keeps_a_full_rank_tall_matrix_and_drops_duplicates():
    from invariant_mr.estimators.iv import independent_columns

    rng = np.random.default_rng(13)
    M = rng.standard_normal((1000, 40))
    assert independent_columns(M) is M  # full column rank: the Gram check skips the QR
    D = np.hstack([M, M[:, 3:4] + M[:, 7:8]])
    assert independent_columns(D).shape[1] == 40


def test_orthonormal_basis_gram_route_drops_exactly_collinear_directions():
    from invariant_mr.estimators.iv import orthonormal_basis

    rng = np.random.default_rng(14)
    M = rng.standard_normal((3000, 50))
    pcs = M @ np.linalg.svd(M, full_matrices=False)[2][:5].T  # residualising on these removes 5 directions
    R = M - pcs @ np.linalg.lstsq(pcs, M, rcond=None)[0]
    B = orthonormal_basis(R)
    assert B.shape[1] == 45
    np.testing.assert_allclose(B.T @ B, np.eye(45), atol=1e-9)
    np.testing.assert_allclose(B @ (B.T @ R), R, atol=1e-8)


def test_gram_route_centres_next_to_an_intercept_without_changing_the_span():
    from invariant_mr.estimators.iv import independent_columns, orthonormal_basis

    rng = np.random.default_rng(15)
    dosages = rng.binomial(2, 0.9, (4000, 60)).astype(float)  # large means: nearly collinear with 1
    M = np.hstack([np.ones((4000, 1)), dosages])
    assert independent_columns(M) is M
    B = orthonormal_basis(M)
    assert B.shape[1] == 61
    np.testing.assert_allclose(B.T @ B, np.eye(61), atol=1e-9)
    np.testing.assert_allclose(B @ (B.T @ M), M, atol=1e-8)  # spans the uncentred columns too


@pytest.mark.parametrize("shape", [(200, 6), (2000, 40)])
def test_independent_basis_matches_the_two_step_calls(shape):
    from invariant_mr.estimators.iv import independent_basis, independent_columns, orthonormal_basis

    rng = np.random.default_rng(16)
    M = rng.standard_normal(shape)
    for X in (M, np.hstack([M, M[:, :1] - M[:, 1:2]])):  # full rank (Gram route when wide), then QR
        cols, basis = independent_basis(X)
        np.testing.assert_array_equal(cols, independent_columns(X))
        ref = orthonormal_basis(independent_columns(X))
        assert basis.shape == ref.shape
        np.testing.assert_allclose(basis @ basis.T[:, :7], ref @ ref.T[:, :7], atol=1e-9)
